//! Pre and post commands around a source's capture (make an application save its index, pause a
//! writer), run by `/bin/sh -c` through [`crate::proc`]: a hook that overruns is killed with its
//! whole process group, so a hung child cannot hold the backup.

use std::time::Duration;

/// A source's hooks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Run before the capture; a failure fails the job before anything is read.
    pub pre: Option<String>,
    /// Run after the capture, whatever happened (`TRESOR_RESULT` says what).
    pub post: Option<String>,
    /// Each hook is killed after this long.
    pub timeout: Duration,
}

/// A hook that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// It could not be started.
    #[error("{which}-hook `{cmd}` could not start: {source}")]
    Spawn {
        /// `pre` or `post`.
        which: &'static str,
        /// The command.
        cmd: String,
        /// Why.
        source: std::io::Error,
    },
    /// It exited non-zero or was killed by a signal.
    #[error("{which}-hook `{cmd}` failed ({status}){}", stderr_tail(.stderr))]
    Failed {
        /// `pre` or `post`.
        which: &'static str,
        /// The command.
        cmd: String,
        /// Exit status as text.
        status: String,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
    /// It ran past its timeout and was killed.
    #[error("{which}-hook `{cmd}` ran past its {} s timeout and was killed", .timeout.as_secs())]
    Timeout {
        /// `pre` or `post`.
        which: &'static str,
        /// The command.
        cmd: String,
        /// The limit.
        timeout: Duration,
    },
}

fn stderr_tail(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() { String::new() } else { format!(": {}", crate::proc::tail(s, 400)) }
}

/// Run one hook to completion or its timeout. `env` is added to its environment. Blocking.
pub fn run(which: &'static str, cmd: &str, timeout: Duration, env: &[(&str, &str)]) -> Result<(), HookError> {
    let mut c = crate::proc::command("/bin/sh", crate::proc::ChildKind::Command);
    c.arg("-c").arg(cmd).envs(env.iter().copied()).env("TRESOR_HOOK", which);
    let done = match crate::proc::run(c, timeout, 0) {
        Ok(f) => f,
        Err(crate::proc::RunError::Timeout(_)) => return Err(HookError::Timeout { which, cmd: cmd.into(), timeout }),
        Err(crate::proc::RunError::Spawn(source)) => return Err(HookError::Spawn { which, cmd: cmd.into(), source }),
        Err(e @ crate::proc::RunError::Wait(_)) => {
            return Err(HookError::Failed { which, cmd: cmd.into(), status: e.to_string(), stderr: String::new() });
        }
    };
    if done.status.success() {
        return Ok(());
    }
    Err(HookError::Failed { which, cmd: cmd.into(), status: done.status.to_string(), stderr: done.stderr })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn success_failure_and_timeout() {
        run("pre", "true", Duration::from_secs(10), &[]).unwrap();
        let e = run("pre", "echo nope >&2; exit 3", Duration::from_secs(10), &[]).unwrap_err().to_string();
        assert!(e.contains("exit status: 3") && e.contains("nope"), "{e}");
        let t = Instant::now();
        // The shell's child sleeps on after the shell is killed unless the group goes too.
        let e = run("pre", "sleep 30 & sleep 30", Duration::from_millis(300), &[]).unwrap_err().to_string();
        assert!(e.contains("timeout") && t.elapsed() < Duration::from_secs(10), "{e}");
        let e = run("post", "test \"$TRESOR_RESULT\" = ok", Duration::from_secs(10), &[("TRESOR_RESULT", "failed")]);
        assert!(e.is_err());
    }
}
