//! A PostgreSQL drill: the base backup restores into the sandbox, a scratch server on a free port
//! recovers it and PostgreSQL's own checks pass; a page damaged in the cluster before the backup
//! makes the application check (pg_amcheck) FAIL, naming the table.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;

use restore_tests::pg::PgCluster;

use super::{Src, apply, drill, failed_checks, plane, policy};

#[test]
fn a_postgres_drill_passes_and_a_page_damaged_before_the_backup_fails_its_application_check() {
    let pg = PgCluster::start();
    pg.pgbench_init(2);
    let (p, _nas) = plane("", "");
    // The scratch server runs as postgres and must reach the sandbox below the agent's state.
    let state = p.agents["gpu-01"].state.clone();
    std::fs::create_dir_all(state.join("drills")).unwrap();
    for d in [p.dir.path(), state.as_path(), state.join("drills").as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    apply(&p, &policy(&[Src("db", vec![format!("postgres:{}", pg.conn())])], ""));
    p.ctl_ok(&["backup", "gpu-01/db"]);
    let r = drill(&p, "gpu-01/db", &[]);
    assert_eq!((r.code, r.report["verdict"].as_str()), (Some(0), Some("PASS")), "{:?}", failed_checks(&r.report));
    assert_eq!(r.report["source_kind"], "postgres");
    let checks = r.report["checks"].as_array().unwrap();
    for check in ["pg_verifybackup", "scratch server starts", "pg_amcheck", "pg_checksums"] {
        assert!(
            checks.iter().any(|c| c["level"] == "application" && c["check"] == check && c["result"] == "PASS"),
            "{check} passed in the sandbox: {checks:?}"
        );
    }

    // Damage a heap page while the server is down, with checksums off so nothing notices, and
    // back up the damaged cluster.
    let rel = pg.psql("SELECT pg_relation_filepath('pgbench_accounts')");
    pg.stop();
    pg.disable_checksums();
    let mut f = std::fs::OpenOptions::new().write(true).open(pg.data.join(&rel)).unwrap();
    f.seek(SeekFrom::Start(8192 * 3 + 200)).unwrap();
    f.write_all(b"tresor was here").unwrap();
    drop(f);
    pg.restart();
    p.ctl_ok(&["backup", "gpu-01/db"]);
    let r = drill(&p, "gpu-01/db", &[]);
    assert_eq!((r.code, r.report["verdict"].as_str()), (Some(5), Some("FAIL")), "{}", r.report);
    let fails = failed_checks(&r.report);
    assert!(fails.iter().all(|c| c["level"] == "application"), "storage is intact; the database is not: {fails:?}");
    assert!(
        fails
            .iter()
            .any(|c| c["check"] == "pg_amcheck"
                && format!("{}{}", c["subject"], c["detail"]).contains("pgbench_accounts")),
        "pg_amcheck names the damaged table: {fails:?}"
    );
}
