//! Probe commands: an admin's program that answers the golden queries for an index Tresor cannot
//! search itself. It runs with `/bin/sh -c`, `TRESOR_INDEX` set to the index's path (the live one
//! at backup, the restored one at verify), and prints one JSON object:
//! `{"k": 10, "exact": false, "min_recall": 0.95, "results": [[[id, distance], ...], ...]}`,
//! the same queries in the same order each time. It is killed after its timeout.

use std::path::Path;
use std::time::Duration;

use super::Golden;

/// Why a probe command gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// It failed, hung or printed something else.
    #[error("probe command `{cmd}`: {why}")]
    Failed {
        /// The command.
        cmd: String,
        /// What happened.
        why: String,
    },
}

/// Largest answer kept (ids and distances for many queries fit easily); more is drained.
const MAX_OUTPUT: usize = 16 << 20;

/// Run the probe command on `index`. Blocking.
pub fn run(cmd: &str, index: &Path, timeout: Duration) -> Result<Golden, ProbeError> {
    let fail = |why: String| ProbeError::Failed { cmd: cmd.to_string(), why };
    let mut c = crate::proc::command("/bin/sh", crate::proc::ChildKind::Command);
    c.arg("-c").arg(cmd).env("TRESOR_INDEX", index);
    let done = crate::proc::run(c, timeout, MAX_OUTPUT).map_err(|e| fail(e.to_string()))?;
    if !done.status.success() {
        return Err(fail(format!("{}: {}", done.status, crate::proc::tail(&done.stderr, 400))));
    }
    let g: Golden = serde_json::from_slice(&done.stdout)
        .map_err(|e| fail(format!("its output is not the golden-query JSON ({e})")))?;
    if g.results.is_empty() {
        return Err(fail("it answered no queries".into()));
    }
    Ok(g)
}
