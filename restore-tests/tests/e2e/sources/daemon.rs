//! Sources run from the daemon: a policy lists `model:` and `sqlite:` beside a plain path, the
//! agent's own config holds the hooks, and `tresorctl backup` runs it all.

use restore_tests::World;

use super::{restore_and_verify, verified};
use restore_tests::plane::Plane;
use rusqlite::Connection;
use tresor_sources::model::synth;

#[test]
fn a_policy_with_sources_runs_from_the_daemon_with_the_agents_hooks() {
    let mut p = Plane::start("");
    let nas = p.folder_vault("nas", "nas", "gpu-01");
    let data = p.dir.path().join("data");
    std::fs::create_dir_all(data.join("models")).unwrap();
    let weights = synth::safetensors(&[("w", "BF16", vec![1024, 64], synth::bf16_weights(65_536, 3))]);
    std::fs::write(data.join("models/model.safetensors"), weights).unwrap();
    std::fs::write(data.join("notes.txt"), b"plain file").unwrap();
    let db = data.join("app.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);").unwrap();
    let hook_log = p.dir.path().join("hooks.log");
    let hooks = format!(
        "[sources.app]\npre_hook = \"echo pre >> {0}\"\npost_hook = \"echo post $TRESOR_RESULT >> {0}\"\nhook_timeout = \"1m\"\n",
        hook_log.display()
    );
    p.add_agent_toml("gpu-01", std::slice::from_ref(&nas), &[], &hooks);
    let policy = format!(
        "name = \"src\"\n[[vault]]\nname = \"nas\"\nmaintainer = \"gpu-01\"\n[[source]]\nagent = \"gpu-01\"\nname = \"app\"\nvault = \"nas\"\npaths = [\"{}\", \"model:{}\", \"sqlite:{}\"]\nschedule = \"0 0 1 1 *\"\n",
        data.join("notes.txt").display(),
        data.join("models").display(),
        db.display()
    );
    let out = p.apply_policy(&policy);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    p.ctl_ok(&["backup", "gpu-01/app"]);
    assert_eq!(std::fs::read_to_string(&hook_log).unwrap(), "pre\npost ok\n");

    // The snapshot, read with the vault's own password, carries both sources' records.
    let mut w = World::empty();
    w.url = nas.url.clone();
    w.password = std::fs::read_to_string(&nas.password_file).unwrap().trim_end().to_string();
    let snaps = w.json(&["snapshots", "--vault", w.vault_str()]);
    let snap = &snaps[0];
    assert_eq!(snap["source"], "files+model+sqlite", "{snap}");
    let v = verified(&restore_and_verify(&w, &w.path("restored")));
    assert_eq!(v["report"]["tensors"], 1, "{v}");
    let findings = v["report"]["findings"].as_array().unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f["check"] == "sqlite row count" && f["ok"] == true && f["detail"] == "3 rows, 3 recorded"),
        "{v}"
    );
}
