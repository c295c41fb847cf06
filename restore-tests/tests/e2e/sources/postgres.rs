//! PostgreSQL: a real scratch cluster with checksums, filled by pgbench and under pgbench load
//! during the backup; restored, started, checked; then damaged, and bad connections.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;

use restore_tests::World;
use restore_tests::pg::{PASSWORD, PGBENCH_INVARIANT, PgCluster};

use super::{verified, verify};

fn restore_to(w: &World, name: &str) -> std::path::PathBuf {
    let to = w.path(name);
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", to.to_str().unwrap()]);
    // The scratch server runs as postgres and must reach the restored directory (a restore's
    // target is 0700 until its owner opens it).
    for d in [w.dir.path(), to.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    to
}

#[test]
fn a_cluster_under_pgbench_load_restores_starts_and_verifies_and_a_damaged_page_fails() {
    let pg = PgCluster::start();
    pg.pgbench_init(4);
    let w = World::new();
    let mut load = pg.pgbench_load(2, 120);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let history = || pg.psql("SELECT count(*) FROM pgbench_history").parse::<u64>().unwrap();
    let before = history();
    let spec = format!("postgres:{}", pg.conn());
    let b = w.json(&["backup", "--vault", w.vault_str(), "--source", &spec, "--probe", PGBENCH_INVARIANT, "--pg-dump"]);
    let after = history();
    let _ = load.kill();
    let _ = load.wait();
    assert!(after > before, "the load committed transactions while the backup ran ({before} then {after})");
    let probes = &b["manifest"]["sources"][0]["probes"];
    assert_eq!(probes["data_checksums"], "on", "{probes}");
    assert!(probes["end_lsn"].as_str().is_some_and(|l| l.contains('/')), "{probes}");

    let to = restore_to(&w, "restored");
    let datadir = to.join(pg.data.strip_prefix("/").unwrap());
    let md = std::fs::metadata(&datadir).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o700);
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&md),
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&pg.data).unwrap())
    );
    let v = verified(&verify(&w, &to, true, &["--probe", PGBENCH_INVARIANT]));
    let findings = v["report"]["findings"].as_array().unwrap();
    for check in [
        "pg_verifybackup",
        "scratch server starts",
        "pg_amcheck",
        "postgres probe",
        "databases",
        "pg_checksums",
        "pg_dump archive",
    ] {
        assert!(findings.iter().any(|f| f["check"] == check && f["ok"] == true), "{check} missing or failed: {v}");
    }

    // The probe recorded in the snapshot runs only when this host trusts it (a fresh copy: a
    // verified one has been started and recovered).
    let to3 = restore_to(&w, "untrusted");
    let untrusted = verify(&w, &to3, true, &[]);
    let u: serde_json::Value = serde_json::from_slice(&untrusted.stdout).unwrap();
    let probe = u["report"]["findings"].as_array().unwrap().iter().find(|f| f["check"] == "postgres probe").cloned();
    assert!(
        probe
            .as_ref()
            .is_some_and(|f| f["ok"] == false && f["detail"].as_str().unwrap_or("").contains("not trusted, not run")),
        "{probe:?}"
    );
    assert_eq!(untrusted.status.code(), Some(13), "an untrusted probe fails the verify");

    // A damaged page in a second restored copy: the verifier fails.
    let rel = pg.psql("SELECT pg_relation_filepath('pgbench_accounts')");
    let to2 = restore_to(&w, "damaged");
    let file = to2.join(pg.data.strip_prefix("/").unwrap()).join(&rel);
    let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.seek(SeekFrom::Start(8192 * 3 + 200)).unwrap();
    f.write_all(b"tresor was here").unwrap();
    drop(f);
    let out = verify(&w, &to2, false, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(13), "{text}{}", String::from_utf8_lossy(&out.stderr));
    // PostgreSQL's own check names the damaged relation file; the copy is then not started.
    let named = text.lines().any(|l| l.contains("(pg_verifybackup)") && l.contains(&rel));
    assert!(named, "pg_verifybackup must name {rel}: {text}");
}

#[test]
fn a_stopped_server_and_wrong_credentials_fail_cleanly() {
    let pg = PgCluster::start();
    let w = World::new();
    let data = w.path("plain");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), b"keep me").unwrap();
    w.backup(&[&data]);
    let before = w.snapshot_ids();

    let wrong =
        format!("postgres:host=127.0.0.1 port={} user=postgres password=not-{PASSWORD} dbname=postgres", pg.port);
    let out = w.run(&["backup", "--vault", w.vault_str(), "--source", &wrong]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(err.contains("no snapshot was written"), "{err}");

    pg.stop();
    let out = w.run(&["backup", "--vault", w.vault_str(), "--source", &format!("postgres:{}", pg.conn())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No such file or directory") || err.contains("could not connect"), "{err}");
    assert_eq!(w.snapshot_ids(), before, "earlier snapshots untouched");
    let to = w.path("r");
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", to.to_str().unwrap()]);
    assert_eq!(std::fs::read(to.join(data.strip_prefix("/").unwrap()).join("f")).unwrap(), b"keep me");
}
