//! Pre and post commands around a source's capture (make an application save its index, pause a
//! writer), run by `/bin/sh -c` with a timeout. A hook that overruns is killed with its whole
//! process group, so a hung child cannot hold the backup.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    if s.is_empty() {
        return String::new();
    }
    let start = s.char_indices().rev().nth(400).map_or(0, |(i, _)| i);
    format!(": {}", &s[start..])
}

/// Run one hook to completion or its timeout. `env` is added to its environment. Blocking.
pub fn run(which: &'static str, cmd: &str, timeout: Duration, env: &[(&str, &str)]) -> Result<(), HookError> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().copied())
        .env("TRESOR_HOOK", which)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group: a timeout kills the shell and everything it started.
        .process_group(0)
        .spawn()
        .map_err(|source| HookError::Spawn { which, cmd: cmd.into(), source })?;
    // Drain stderr on a thread so a chatty hook cannot block on a full pipe.
    let mut pipe = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = pipe.as_mut() {
            let _ = p.take(64 * 1024).read_to_end(&mut buf);
            let _ = std::io::copy(p, &mut std::io::sink());
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) if started.elapsed() >= timeout => {
                if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                break Err(HookError::Timeout { which, cmd: cmd.into(), timeout });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(source) => break Err(HookError::Spawn { which, cmd: cmd.into(), source }),
        }
    };
    let status = status?;
    let stderr = reader.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    Err(HookError::Failed { which, cmd: cmd.into(), status: status.to_string(), stderr })
}

#[cfg(test)]
mod tests {
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
