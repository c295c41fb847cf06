//! Sources beyond plain paths, against the real agent binary: model weights, SQLite, PostgreSQL,
//! vector indexes, hooks, and sources run from the daemon.

mod daemon;
mod hooks;
mod models;
mod postgres;
mod sqlite;
mod vectors;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;

use restore_tests::{World, test_deps};

/// `tresor-agent verify` of the newest snapshot restored at `to`, with `extra` options; `json` asks
/// for the JSON report.
pub(crate) fn verify(w: &World, to: &Path, json: bool, extra: &[&str]) -> Output {
    let mut a = if json { vec!["--json"] } else { Vec::new() };
    a.extend(["verify", "--vault", w.vault_str(), "--snapshot", "latest"]);
    a.extend_from_slice(extra);
    a.push(to.to_str().unwrap());
    w.run(&a)
}

/// Restore the newest snapshot to `to` and run the verifier on it (JSON); returns its output.
pub(crate) fn restore_and_verify(w: &World, to: &Path) -> Output {
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", to.to_str().unwrap()]);
    verify(w, to, true, &[])
}

/// The verifier's JSON report, requiring it to pass.
pub(crate) fn verified(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "verify failed ({:?}):\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("verify --json")
}

/// The test venv's Python.
pub(crate) fn python() -> PathBuf {
    test_deps().join("venv/bin/python")
}

/// A script of `restore-tests/py`.
pub(crate) fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py").join(name)
}

/// Run the test venv's Python with `args`, requiring success.
pub(crate) fn run_py<S: AsRef<OsStr>>(args: &[S]) {
    let out = std::process::Command::new(python()).args(args).output().expect("python runs");
    assert!(
        out.status.success(),
        "python {:?} failed: {}",
        args.iter().map(|a| a.as_ref().to_owned()).collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
}
