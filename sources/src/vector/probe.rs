//! Probe commands: an admin's program that answers the golden queries for an index Tresor cannot
//! search itself. It runs with `/bin/sh -c`, `TRESOR_INDEX` set to the index's path (the live one
//! at backup, the restored one at verify), and prints one JSON object:
//! `{"k": 10, "exact": false, "min_recall": 0.95, "results": [[[id, distance], ...], ...]}`,
//! the same queries in the same order each time. It is killed after its timeout.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Largest answer read (ids and distances for many queries fit easily).
const MAX_OUTPUT: u64 = 16 << 20;

/// Run the probe command on `index`. Blocking.
pub fn run(cmd: &str, index: &Path, timeout: Duration) -> Result<Golden, ProbeError> {
    let fail = |why: String| ProbeError::Failed { cmd: cmd.to_string(), why };
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("TRESOR_INDEX", index)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(p) = out.as_mut() {
            let _ = p.take(MAX_OUTPUT).read_to_end(&mut b);
        }
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(p) = err.as_mut() {
            let _ = p.take(64 << 10).read_to_end(&mut b);
        }
        String::from_utf8_lossy(&b)
            .trim()
            .chars()
            .rev()
            .take(400)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<String>()
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() >= timeout => {
                if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                let _ = child.wait();
                return Err(fail(format!("no answer within {} s; killed", timeout.as_secs())));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    let (stdout, stderr) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    if !status.success() {
        return Err(fail(format!("{status}: {stderr}")));
    }
    let g: Golden =
        serde_json::from_slice(&stdout).map_err(|e| fail(format!("its output is not the golden-query JSON ({e})")))?;
    if g.results.is_empty() {
        return Err(fail("it answered no queries".into()));
    }
    Ok(g)
}

use std::os::unix::process::CommandExt;
