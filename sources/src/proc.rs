//! Running a program to completion within a time limit: the one mechanism behind hooks, probe
//! commands and PostgreSQL's programs. The program runs in its own process group, so a timeout
//! kills it with everything it started. Its stdout is kept up to a limit and the rest drained, its
//! stderr's tail is kept; both pipes are read on threads, so a chatty program never blocks on a
//! full pipe, and a background process left holding them cannot hold the caller either.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bytes of stderr kept (its end, where the reason usually is).
const STDERR_TAIL: usize = 8 * 1024;
/// How long output pipes are still read after the program exited (a background process it
/// started may hold them open).
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// A program that ran to its end.
#[derive(Debug)]
pub struct Finished {
    /// How it ended.
    pub status: ExitStatus,
    /// Its stdout, at most the limit given.
    pub stdout: Vec<u8>,
    /// The end of its stderr, trimmed.
    pub stderr: String,
}

/// Why a program did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It could not be started (or waited for).
    #[error("cannot start: {0}")]
    Spawn(#[from] std::io::Error),
    /// It ran past the limit and was killed with its process group.
    #[error("no answer within {} s; killed", .0.as_secs())]
    Timeout(Duration),
    /// Waiting for it failed; it was killed with its process group.
    #[error("waiting for it failed ({0}); killed")]
    Wait(std::io::Error),
}

/// What a child process is for; each kind sees only its own allow-list of the agent's
/// environment. Everything else (TRESOR_PASSWORD, AWS_* credentials, tokens, key paths) never
/// reaches a child: the agent's environment is cleared from every command it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildKind {
    /// A hook or probe command of this host's admin.
    Command,
    /// A PostgreSQL client connecting to the cluster being backed up (libpq's connection
    /// variables pass: a pass file or password is how the admin connects it).
    PgClient,
    /// A PostgreSQL program working on restored, untrusted data: the scratch server and the
    /// tools run against it. No connection variable or home directory of the agent passes.
    PgScratch,
}

/// Locale, time zone and search path: what any program needs to behave as on the command line.
const BASE: &[&str] =
    &["PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "LC_COLLATE", "LC_NUMERIC", "TZ"];
/// Where a command of the admin's may look for its own settings.
const USER: &[&str] = &["HOME", "USER", "LOGNAME", "TMPDIR"];
/// libpq's connection variables (https://www.postgresql.org/docs/current/libpq-envars.html).
const PG_CONNECTION: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGAPPNAME",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLCRL",
    "PGSSLCRLDIR",
    "PGSSLSNI",
    "PGREQUIRESSL",
    "PGSSLCOMPRESSION",
    "PGSSLMINPROTOCOLVERSION",
    "PGSSLMAXPROTOCOLVERSION",
    "PGGSSENCMODE",
    "PGKRBSRVNAME",
    "PGGSSLIB",
    "PGREQUIREAUTH",
    "PGCHANNELBINDING",
    "PGTARGETSESSIONATTRS",
    "PGLOADBALANCEHOSTS",
    "PGCONNECT_TIMEOUT",
    "PGCLIENTENCODING",
    "PGDATESTYLE",
    "PGTZ",
    "PGSYSCONFDIR",
    "PGLOCALEDIR",
    "HOME",
];
/// PATH when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The names of the agent's environment a child of `kind` receives.
pub fn allowed(kind: ChildKind) -> impl Iterator<Item = &'static str> {
    let extra: &[&str] = match kind {
        ChildKind::Command => USER,
        ChildKind::PgClient => PG_CONNECTION,
        ChildKind::PgScratch => &[],
    };
    BASE.iter().chain(extra).copied()
}

/// A command for `program` that starts from a cleared environment plus `kind`'s allow-list.
pub fn command(program: impl AsRef<std::ffi::OsStr>, kind: ChildKind) -> Command {
    let mut c = Command::new(program);
    c.env_clear();
    for name in allowed(kind) {
        if let Some(v) = std::env::var_os(name) {
            c.env(name, v);
        }
    }
    if std::env::var_os("PATH").is_none() {
        c.env("PATH", DEFAULT_PATH);
    }
    c
}

/// The last `chars` characters of `s`, for error messages.
pub fn tail(s: &str, chars: usize) -> &str {
    let start = s.char_indices().rev().nth(chars.saturating_sub(1)).map_or(0, |(i, _)| i);
    &s[start..]
}

fn kill_group(child: &mut Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Read a pipe to its end on a thread, keeping at most `keep` bytes (the first ones, or with
/// `tail` the last ones); the rest is drained so the writer never blocks.
fn reader<R: Read + Send + 'static>(pipe: Option<R>, keep: usize, tail: bool) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut p) = pipe {
            let mut buf = [0u8; 8192];
            while let Ok(n) = p.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if tail {
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > 2 * keep {
                        kept.drain(..kept.len() - keep);
                    }
                } else if kept.len() < keep {
                    kept.extend_from_slice(&buf[..n.min(keep - kept.len())]);
                }
            }
        }
        if tail && kept.len() > keep {
            kept.drain(..kept.len() - keep);
        }
        let _ = tx.send(kept);
    });
    rx
}

/// The end of a child's stderr, read on a thread, for programs whose stdout the caller streams
/// itself; [`stderr_of`] collects it.
pub fn stderr_tail(child: &mut Child) -> mpsc::Receiver<Vec<u8>> {
    reader(child.stderr.take(), STDERR_TAIL, true)
}

/// What [`stderr_tail`] read, once the child has exited.
pub fn stderr_of(rx: &mpsc::Receiver<Vec<u8>>) -> String {
    String::from_utf8_lossy(&rx.recv_timeout(PIPE_GRACE).unwrap_or_default()).trim().to_string()
}

/// Run `cmd` (stdin from /dev/null) until it exits or `timeout` passes; keep at most
/// `stdout_limit` bytes of its stdout. Blocking.
pub fn run(mut cmd: Command, timeout: Duration, stdout_limit: usize) -> Result<Finished, RunError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(if stdout_limit > 0 { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let out = reader(child.stdout.take(), stdout_limit, false);
    let err = stderr_tail(&mut child);
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(e) => {
                kill_group(&mut child);
                return Err(RunError::Wait(e));
            }
        }
        if started.elapsed() >= timeout {
            kill_group(&mut child);
            return Err(RunError::Timeout(timeout));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Finished { status, stdout: out.recv_timeout(PIPE_GRACE).unwrap_or_default(), stderr: stderr_of(&err) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", script]);
        c
    }

    /// Each kind of child, made to print its environment, sees only its allow-list: the test
    /// runner's own variables (NEXTEST_*, CARGO_*, and whatever secret the caller had) are gone.
    #[test]
    fn children_see_only_their_allow_list() {
        assert!(
            std::env::vars_os().any(|(k, _)| !allowed(ChildKind::Command).any(|a| k == a)),
            "the test needs a variable to hide"
        );
        for kind in [ChildKind::Command, ChildKind::PgClient, ChildKind::PgScratch] {
            let mut c = command("/usr/bin/env", kind);
            c.arg("-0").env("TRESOR_INDEX", "/set/by/tresor");
            let f = run(c, Duration::from_secs(10), 1 << 20).unwrap();
            let names: Vec<String> = f
                .stdout
                .split(|b| *b == 0)
                .filter(|v| !v.is_empty())
                .map(|v| String::from_utf8_lossy(v).split('=').next().unwrap_or_default().to_string())
                .collect();
            for n in &names {
                assert!(n == "TRESOR_INDEX" || allowed(kind).any(|a| a == n), "{kind:?} child saw {n}");
            }
            assert!(names.iter().any(|n| n == "PATH"), "{kind:?}: {names:?}");
        }
    }

    #[test]
    fn output_is_bounded_and_drained_and_timeouts_kill_the_group() {
        // 1 MiB on stdout and stderr each: kept to the limits, the rest drained (no block).
        let f = run(
            sh("head -c 1048576 /dev/zero; head -c 1048576 /dev/zero >&2; echo end >&2"),
            Duration::from_secs(30),
            100,
        )
        .unwrap();
        assert!(f.status.success());
        assert_eq!(f.stdout.len(), 100);
        assert!(f.stderr.ends_with("end") && f.stderr.len() <= STDERR_TAIL, "{}", f.stderr.len());
        let t = Instant::now();
        let e = run(sh("sleep 30 & sleep 30"), Duration::from_millis(300), 0).unwrap_err();
        assert!(matches!(e, RunError::Timeout(_)) && t.elapsed() < Duration::from_secs(10), "{e}");
        // A background process holding the pipes does not hold the caller past the grace time.
        let t = Instant::now();
        let f = run(sh("(sleep 30 >&2 &) ; echo done"), Duration::from_secs(30), 100).unwrap();
        assert_eq!(f.stdout, b"done\n");
        assert!(t.elapsed() < Duration::from_secs(10));
        assert!(matches!(
            run(Command::new("/nonexistent/program"), Duration::from_secs(1), 0),
            Err(RunError::Spawn(_))
        ));
    }
}
