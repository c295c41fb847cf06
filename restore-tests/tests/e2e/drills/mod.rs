//! Restore drills through the real controller and agent: every source kind passes on a good
//! snapshot, damage and missed targets FAIL naming what failed, reports are signed and stored
//! write-once, the audit log detects tampering offline, and an auditor can read everything and
//! change nothing, with tresorctl and with the web page in a real Chromium.

mod audit;
mod auditor;
mod failures;
mod kinds;
mod postgres;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use restore_tests::bin;
use restore_tests::plane::{Plane, VaultSpec};
use serde_json::Value;

/// One policy source: its name and its `paths` entries.
pub(crate) struct Src<'a>(pub &'a str, pub Vec<String>);

/// A policy named `drills` on agent gpu-01 and vault nas, with `extra` (drill tables) appended.
pub(crate) fn policy(sources: &[Src<'_>], extra: &str) -> String {
    let mut t = String::from(
        "name = \"drills\"\n[defaults]\nschedule = \"0 0 1 1 *\"\nrpo = \"26h\"\nretention = { keep_last = 1 }\n[[vault]]\nname = \"nas\"\nmaintainer = \"gpu-01\"\n",
    );
    for Src(name, paths) in sources {
        let paths: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
        t.push_str(&format!(
            "[[source]]\nagent = \"gpu-01\"\nname = \"{name}\"\nvault = \"nas\"\npaths = [{}]\n",
            paths.join(", ")
        ));
    }
    t.push_str(extra);
    t
}

/// A plane with agent gpu-01 on a folder vault `nas`; `agent_extra` goes into its agent.toml.
pub(crate) fn plane(controller_extra: &str, agent_extra: &str) -> (Plane, VaultSpec) {
    let mut p = Plane::start(controller_extra);
    let nas = p.folder_vault("nas", "nas", "gpu-01");
    p.add_agent_toml("gpu-01", std::slice::from_ref(&nas), &[], agent_extra);
    (p, nas)
}

/// Apply a policy, requiring success.
pub(crate) fn apply(p: &Plane, text: &str) {
    let out = p.apply_policy(text);
    assert!(out.status.success(), "policy refused: {}\n{text}", String::from_utf8_lossy(&out.stderr));
}

/// What `tresorctl drill run` gave: exit code, the report (JSON), and the wall time it took.
pub(crate) struct Ran {
    pub code: Option<i32>,
    pub report: Value,
    pub wall_s: f64,
    pub stderr: String,
}

/// `tresorctl --json drill run SELECTOR ARGS..`.
pub(crate) fn drill(p: &Plane, selector: &str, args: &[&str]) -> Ran {
    let started = Instant::now();
    let mut a = vec!["--json", "drill", "run", selector];
    a.extend_from_slice(args);
    let out = p.ctl(&a);
    let wall_s = started.elapsed().as_secs_f64();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drill run printed no report ({e}, exit {:?}):\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Ran { code: out.status.code(), report, wall_s, stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

/// The report's checks that FAILed.
/// The checks of a drill report that failed. A report without checks is itself a failure of the
/// test: "nothing failed" must not pass on a report that checked nothing.
pub(crate) fn failed_checks(report: &Value) -> Vec<&Value> {
    let checks = report["checks"].as_array().unwrap_or_else(|| panic!("a drill report without checks: {report}"));
    assert!(!checks.is_empty(), "a drill report that checked nothing: {report}");
    checks.iter().filter(|c| c["result"] == "FAIL").collect()
}

/// `tresor-agent documents --out DIR` on the vault with its own password: the signed documents as
/// an auditor with storage access gets them.
pub(crate) fn vault_documents(nas: &VaultSpec, out: &Path) -> Value {
    let o = Command::new(bin("tresor-agent"))
        .args(["--json", "documents", "--vault", &nas.url, "--password-file"])
        .arg(&nas.password_file)
        .arg("--out")
        .arg(out)
        .output()
        .expect("tresor-agent documents runs");
    assert!(o.status.success(), "documents failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("documents --json")
}

/// The controller's report-signing public key file.
pub(crate) fn pubkey(p: &Plane) -> PathBuf {
    p.state.join("report-signing.pub.pem")
}
