//! Enrollment, a scheduled backup firing on its own, one-command restores, retention and GC,
//! with two agents, a local folder vault and a Garage vault.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use restore_tests::garage::Garage;
use restore_tests::plane::{Plane, VaultSpec, wait_for};
use restore_tests::{assert_same_tree, bin, random_file};

/// `tresor-agent --json check` on a vault opened with `password`.
pub fn check_vault(url: &str, password: &Path, env: &[(String, String)], read_data: bool) -> serde_json::Value {
    let mut c = Command::new(bin("tresor-agent"));
    c.args(["--json", "check", "--vault", url, "--password-file"]).arg(password).envs(env.iter().cloned());
    c.env("TRESOR_CACHE_DIR", std::env::temp_dir().join(format!("tresor-check-cache-{}", rand::random::<u32>())));
    if read_data {
        c.arg("--read-data");
    }
    let out = c.output().expect("check runs");
    assert!(
        out.status.success(),
        "check failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("check JSON")
}

fn policy(models: &Path, dumps: &Path, keep_last: u32) -> String {
    format!(
        r#"
name = "plane"
[defaults]
timezone = "Europe/Berlin"
rpo = "1h"

[[vault]]
name = "nas"
maintainer = "gpu-01"
gc_grace = "0s"

[[vault]]
name = "s3"
maintainer = "db-01"

[[source]]
agent = "gpu-01"
name = "models"
vault = "nas"
paths = ["{}"]
schedule = "0 0 1 1 *"
retention = {{ keep_last = {keep_last} }}

[[source]]
agent = "db-01"
name = "dumps"
vault = "s3"
paths = ["{}"]
schedule = "*/4 * * * * *"
"#,
        models.display(),
        dumps.display()
    )
}

#[test]
fn two_agents_schedule_restore_retention_and_gc() {
    let garage = Garage::start();
    let mut p = Plane::start("");
    let root = p.dir.path().to_path_buf();

    // Vaults: a folder vault both agents hold a key slot for, and a Garage vault for db-01.
    let nas = root.join("nas");
    std::fs::create_dir_all(&nas).unwrap();
    let nas_url = nas.to_str().unwrap().to_string();
    let (pw_gpu, pw_db_nas, pw_db_s3) =
        (p.password_file("gpu-nas"), p.password_file("db-nas"), p.password_file("db-s3"));
    p.init_vault(&nas_url, &pw_gpu, &[]);
    p.add_key(&nas_url, &pw_gpu, &pw_db_nas, &[]);
    let s3_url = garage.url("plane");
    p.init_vault(&s3_url, &pw_db_s3, &garage.env());
    let spec = |name: &str, url: &str, pw: &Path, env: Vec<(String, String)>| VaultSpec {
        name: name.into(),
        url: url.into(),
        password_file: pw.to_path_buf(),
        env,
    };
    p.add_agent("gpu-01", &[spec("nas", &nas_url, &pw_gpu, vec![])], &[]);
    p.add_agent(
        "db-01",
        &[spec("nas", &nas_url, &pw_db_nas, vec![]), spec("s3", &s3_url, &pw_db_s3, garage.env())],
        &[],
    );
    let agents = p.ctl_json(&["agents"]);
    assert_eq!(agents.as_array().unwrap().len(), 2, "{agents}");
    let health = p.ctl_ok(&["health"]);
    assert!(
        health.contains("tresor.v1.AgentService: SERVING") && health.contains("tresor.v1.AdminService: SERVING"),
        "{health}"
    );

    let models = root.join("src/models");
    let dumps = root.join("src/dumps");
    std::fs::create_dir_all(models.join("shared")).unwrap();
    std::fs::create_dir_all(&dumps).unwrap();
    random_file(&models.join("shared/base.bin"), 3 << 20, 1);
    random_file(&dumps.join("db.dump"), 1 << 20, 2);
    let applied = p.apply_policy(&policy(&models, &dumps, 100));
    assert!(applied.status.success(), "policy: {}", String::from_utf8_lossy(&applied.stderr));

    // The Garage source is scheduled every 4 s: it must fire on its own.
    wait_for("a scheduled backup of db-01/dumps", Duration::from_secs(90), || !p.snapshots("db-01/dumps").is_empty());

    // Four backups of the models, each with one file of its own.
    for i in 0..4u64 {
        if i > 0 {
            std::fs::remove_file(models.join(format!("own-{}.bin", i - 1))).unwrap();
        }
        random_file(&models.join(format!("own-{i}.bin")), 2 << 20, 100 + i);
        let out = p.ctl_ok(&["backup", "gpu-01/models"]);
        assert!(out.contains("saved"), "{out}");
    }
    let snaps = p.snapshots("gpu-01/models");
    assert_eq!(snaps.len(), 4, "{snaps:?}");
    let ids: Vec<String> = snaps.iter().map(|s| s["snapshot_id"].as_str().unwrap().to_string()).collect();
    assert!(snaps.iter().all(|s| s["committed_unix"].as_i64().is_some()), "every snapshot has a receipt");
    let receipts = std::fs::read_dir(nas.join("receipts")).unwrap().count();
    assert_eq!(receipts, 4, "each receipt is stored in the vault");

    // One-command restore, on the agent that made it and on the other one (its own key slot).
    let target = root.join("restored/here");
    let out = p.ctl_ok(&["restore", "gpu-01/models", "--to", target.to_str().unwrap()]);
    assert!(out.contains("restored snapshot") && out.contains(" s"), "{out}");
    assert_same_tree(&models, &target.join(models.strip_prefix("/").unwrap()));
    let elsewhere = root.join("restored/on-db");
    p.ctl_ok(&["restore", "gpu-01/models", "--to", elsewhere.to_str().unwrap(), "--on", "db-01"]);
    assert_same_tree(&models, &elsewhere.join(models.strip_prefix("/").unwrap()));
    // A non-empty target is refused without --force; a dry run writes nothing.
    let again = p.ctl(&["restore", "gpu-01/models", "--to", target.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(5), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"), "{}", String::from_utf8_lossy(&again.stderr));
    let dry = root.join("restored/dry");
    let out = p.ctl_ok(&[
        "restore",
        "gpu-01/models",
        "--to",
        dry.to_str().unwrap(),
        "--dry-run",
        "--snapshot",
        &ids[0][..10],
    ]);
    assert!(out.contains("would restore") && !dry.exists(), "{out}");

    // Retention: keep the newest two; prune forgets exactly the two oldest.
    assert!(p.apply_policy(&policy(&models, &dumps, 2)).status.success());
    let plan = p.ctl_json(&["prune", "nas", "--dry-run"]);
    let mut forget: Vec<String> =
        plan["forget"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    forget.sort();
    let mut expected = ids[..2].to_vec();
    expected.sort();
    assert_eq!(forget, expected, "retention forgets the two oldest");
    let first = p.ctl_json(&["prune", "nas"]);
    assert_eq!(first["forgotten"].as_array().unwrap().len(), 2, "{first}");
    assert!(first["packs_marked"].as_u64().unwrap() >= 2, "the forgotten snapshots' own packs are marked: {first}");
    let left: Vec<String> =
        p.snapshots("gpu-01/models").iter().map(|s| s["snapshot_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(left, ids[2..].to_vec());
    let manifests = std::fs::read_dir(nas.join("snapshots")).unwrap().count();
    assert_eq!(manifests, 2);

    // The second run sweeps the mark: the packs only the forgotten snapshots used are gone, and
    // nothing else: check finds no unreferenced pack and every chunk of the rest verifies.
    let second = p.ctl_json(&["prune", "nas"]);
    assert_eq!(second["packs_deleted"], first["packs_marked"], "{second}");
    // Each deleted pack is in the audit log with the prune that deleted it and why it could go.
    let log = p.ctl_json(&["audit", "show"]);
    let deletes: Vec<&serde_json::Value> =
        log.as_array().unwrap().iter().filter(|e| e["action"] == "gc.delete").collect();
    assert_eq!(deletes.len() as u64, second["packs_deleted"].as_u64().unwrap(), "{deletes:?}");
    assert!(
        deletes.iter().all(|e| {
            let reason = e["reason"].as_str().unwrap_or("");
            e["object"].as_str().unwrap_or("").contains("prune j-")
                && reason.contains("referenced by none of the 2 snapshots")
                && reason.contains("marked at")
        }),
        "{deletes:?}"
    );
    let report = check_vault(&nas_url, &pw_gpu, &[], true);
    assert_eq!(report["unreferenced_packs"], 0, "{report}");
    assert!(report["problems"].as_array().unwrap().is_empty(), "{report}");
    let older = root.join("restored/older");
    p.ctl_ok(&["restore", "gpu-01/models", "--to", older.to_str().unwrap(), "--snapshot", &ids[2]]);
    assert!(older.join(models.strip_prefix("/").unwrap()).join("own-2.bin").exists());

    // Restoring on an agent without a key slot for the vault says how to add one.
    let no_slot =
        p.ctl(&["restore", "db-01/dumps", "--to", root.join("restored/nope").to_str().unwrap(), "--on", "gpu-01"]);
    let why = String::from_utf8_lossy(&no_slot.stderr);
    assert_eq!(no_slot.status.code(), Some(1), "{why}");
    assert!(why.contains("agent gpu-01 cannot open vault \"s3\"") && why.contains("tresor-agent key add"), "{why}");

    // Status is clean and the scheduled source kept running on Garage.
    let status = p.ctl(&["--json", "status"]);
    assert_eq!(status.status.code(), Some(0), "{}", String::from_utf8_lossy(&status.stdout));
    wait_for("a second scheduled run on Garage", Duration::from_secs(60), || p.snapshots("db-01/dumps").len() >= 2);
    let s3_report = check_vault(&s3_url, &pw_db_s3, &garage.env(), false);
    assert!(s3_report["problems"].as_array().unwrap().is_empty(), "{s3_report}");
}
