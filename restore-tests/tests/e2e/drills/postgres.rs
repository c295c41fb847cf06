//! A PostgreSQL drill: the base backup restores into the sandbox, a scratch server on a free port
//! recovers it and PostgreSQL's own checks pass; a page damaged in the cluster before the backup
//! makes the application check (pg_amcheck) FAIL, naming the table.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

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

/// A cluster set up to attack whoever drills its snapshot (issue 13): `ALTER SYSTEM` sets an
/// archive command, a restore command and a preload library that does not exist; an event trigger
/// runs a program on any DDL (pg_amcheck creates its extension); the source host recorded a probe
/// that runs a program. The drill runs on another host that trusts only a probe reading the
/// server's own environment and a probe trying the sandbox agent's password file. Nothing runs:
/// the marker directory stays empty, the untrusted probe is the one FAIL, the scratch server
/// starts despite the preload library, and it sees none of the agent's secrets. A second snapshot
/// whose PG_VERSION is an absolute path is not started at all.
#[test]
fn a_hostile_postgres_snapshot_runs_nothing_in_a_drill() {
    let pg = PgCluster::start();
    let marks = tempfile::Builder::new().prefix("tresor-marks-").tempdir().unwrap();
    // Writable by anyone: had any command run, as whichever user, its mark would be here.
    std::fs::set_permissions(marks.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mark = |name: &str| marks.path().join(name).display().to_string();
    pg.psql(
        "CREATE FUNCTION can_read(p text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_read_file(p); RETURN true; EXCEPTION WHEN others THEN RETURN false; END $$",
    );
    pg.psql(&format!(
        "CREATE FUNCTION evil() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN COPY (SELECT 1) TO PROGRAM 'touch {}'; END $$",
        mark("event-trigger")
    ));
    // An index whose expression runs a program in any copy of this cluster (another port):
    // pg_amcheck evaluates it as a superuser of the scratch server. The box lets it write only in
    // the copy (its working directory), as the scratch user, without a network.
    pg.psql("CREATE TABLE boxed(x int)");
    pg.psql("INSERT INTO boxed VALUES (1), (2)");
    // (COPY is refused in the immutable function an index needs, not in a volatile one it calls.)
    pg.psql(&format!(
        "CREATE FUNCTION shell() RETURNS void LANGUAGE plpgsql AS $$ BEGIN IF current_setting('port')::int <> {port} THEN COPY (SELECT 1) TO PROGRAM 'id -u > boxed-uid; touch {mark} 2> boxed-touch; grep -c : /proc/net/dev > boxed-net; exit 0'; END IF; END $$",
        port = pg.port,
        mark = mark("index-expression")
    ));
    pg.psql("CREATE FUNCTION boxed(x int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN PERFORM public.shell(); RETURN x; END $$");
    pg.psql("CREATE INDEX boxed_idx ON boxed (boxed(x))");
    // Last: from here on any DDL in this cluster, or in a copy of it, runs the program.
    pg.psql("CREATE EVENT TRIGGER evil ON ddl_command_start EXECUTE FUNCTION evil()");
    for (name, value) in [
        ("archive_mode", "on".to_string()),
        ("archive_command", format!("touch {}", mark("archive"))),
        ("restore_command", format!("touch {}", mark("restore"))),
        ("shared_preload_libraries", "tresor_no_such_library".to_string()),
    ] {
        pg.psql(&format!("ALTER SYSTEM SET {name} = '{value}'"));
    }

    let (mut p, nas) = plane("", "");
    let sandbox_password = p.password_file("drill-01");
    p.add_key(&nas.url, &nas.password_file, &sandbox_password, &[]);
    std::fs::set_permissions(&sandbox_password, std::fs::Permissions::from_mode(0o600)).unwrap();
    let environ = "SELECT position('aws-canary'::bytea in pg_read_binary_file('/proc/self/environ')) = 0";
    let secret = format!("SELECT NOT can_read('{}')", sandbox_password.display());
    let evil = format!("COPY (SELECT 1) TO PROGRAM 'touch {}'", mark("probe"));
    // The source host recorded all three probes; the sandbox host trusts two.
    let source_toml = format!("[sources.db]\nprobes = [{environ:?}, {secret:?}, {evil:?}]\n");
    p.kill_agent("gpu-01");
    let config = p.dir.path().join("agent-gpu-01.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&source_toml);
    std::fs::write(&config, text).unwrap();
    p.start_agent("gpu-01");
    p.wait_connected("gpu-01");
    let own_slot = restore_tests::plane::VaultSpec { password_file: sandbox_password.clone(), ..nas.clone() };
    // The sandbox host names its PostgreSQL programs itself.
    p.agent_settings = format!("pg_bindir = {:?}\n", restore_tests::pg::bin_dir().display().to_string());
    p.add_agent_toml(
        "drill-01",
        &[own_slot],
        &[("AWS_SECRET_ACCESS_KEY", "aws-canary"), ("TRESOR_PASSWORD", "aws-canary")],
        &format!("[sources.db]\nprobes = [{environ:?}, {secret:?}]\n"),
    );
    p.agent_settings.clear();
    // The scratch server runs as the scratch user and must reach the sandbox below the agent's state.
    let state = p.agents["drill-01"].state.clone();
    for d in [p.dir.path(), state.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let plan = "[[drill]]\nname = \"db\"\nsource = \"gpu-01/db\"\nsandbox_agent = \"drill-01\"\nschedule = \"0 4 * * 0\"\nrto = \"1h\"\nkeep = true\n";
    apply(&p, &policy(&[Src("db", vec![format!("postgres:{}", pg.conn())])], plan));
    p.ctl_ok(&["backup", "gpu-01/db"]);
    // The evil probe ran on the live cluster at backup, as the source host asked; nothing else did.
    let at_backup: Vec<_> = std::fs::read_dir(marks.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(at_backup, ["probe"], "the live cluster ran only the source host's own probe");
    std::fs::remove_file(marks.path().join("probe")).unwrap();

    let r = drill(&p, "gpu-01/db", &[]);
    let marks_left: Vec<_> = std::fs::read_dir(marks.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(marks_left.is_empty(), "a command of the snapshot ran in the drill: {marks_left:?}");
    assert_eq!((r.code, r.report["verdict"].as_str()), (Some(5), Some("FAIL")), "{}", r.report);
    let fails = failed_checks(&r.report);
    assert!(
        fails.len() == 1 && fails[0]["detail"].as_str().unwrap_or("").contains("not trusted, not run"),
        "only the untrusted probe fails: {fails:?}"
    );
    let checks = r.report["checks"].as_array().unwrap();
    let passed = |check: &str, text: &str| {
        checks.iter().any(|c| {
            c["check"] == check && c["result"] == "PASS" && format!("{}{}", c["subject"], c["detail"]).contains(text)
        })
    };
    assert!(passed("scratch server starts", ""), "the preload library was overridden: {checks:?}");
    assert!(passed("event triggers disabled", "postgres.evil"), "{checks:?}");
    assert!(passed("postgres probe", "environ"), "the scratch server sees no secret: {checks:?}");
    assert!(passed("postgres probe", "can_read"), "nor the sandbox agent's password file: {checks:?}");
    // The index expression did run, in the box: as the scratch user, its write outside the copy
    // refused, with no network but a loopback.
    let kept = std::path::Path::new(r.report["sandbox"].as_str().unwrap().trim_start_matches("drill-01:")).to_owned();
    let copy = kept.join(pg.data.strip_prefix("/").unwrap());
    let said = |f: &str| {
        std::fs::read_to_string(copy.join(f)).unwrap_or_else(|e| {
            let names: Vec<_> =
                std::fs::read_dir(&copy).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
            panic!("{f} in the copy {}: {e}; it holds {names:?}; checks {checks:?}", copy.display())
        })
    };
    let nobody = restore_tests::pg::uid_of("nobody");
    // The sandbox is private: 0700, the scratch user's (its server must reach the copy).
    let md = std::fs::metadata(&kept).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o700, nobody), "the sandbox is the scratch user's alone");
    assert_eq!(said("boxed-uid").trim(), nobody.to_string(), "run as the scratch user");
    assert!(said("boxed-touch").contains("Read-only file system"), "{}", said("boxed-touch"));
    assert_eq!(said("boxed-net").trim(), "1", "only a loopback interface in the box");
    std::fs::remove_dir_all(&kept).unwrap();

    // PG_VERSION naming a directory elsewhere: nothing is started from it.
    std::fs::write(pg.data.join("PG_VERSION"), "/tmp/evil\n").unwrap();
    p.ctl_ok(&["backup", "gpu-01/db"]);
    std::fs::remove_file(marks.path().join("probe")).unwrap();
    let r = drill(&p, "gpu-01/db", &[]);
    let fails = failed_checks(&r.report);
    assert!(
        fails
            .iter()
            .any(|c| c["detail"].as_str().unwrap_or("").contains("is not a PostgreSQL major version; not started")),
        "{fails:?}"
    );
    assert!(std::fs::read_dir(marks.path()).unwrap().next().is_none(), "still nothing ran");
}
