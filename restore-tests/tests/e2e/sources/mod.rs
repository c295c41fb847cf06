//! Sources beyond plain paths, against the real agent binary: model weights, SQLite, hooks.

mod daemon;
mod hooks;
mod models;
mod postgres;
mod sqlite;
mod vectors;

use std::path::Path;

use restore_tests::World;

/// Restore the newest snapshot to `to` and run the verifier on it; returns verify's output.
fn restore_and_verify(w: &World, to: &Path) -> std::process::Output {
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", to.to_str().unwrap()]);
    w.run(&["--json", "verify", "--vault", w.vault_str(), "--snapshot", "latest", to.to_str().unwrap()])
}

/// The verifier's JSON report, requiring it to pass.
fn verified(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "verify failed ({:?}):\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("verify --json")
}
