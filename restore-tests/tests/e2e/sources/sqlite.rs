//! SQLite in WAL mode under a live writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use restore_tests::World;
use rusqlite::Connection;

use super::{restore_and_verify, verified};

/// A writer commits rows 1, 2, 3, ... in small transactions while the backup runs. The restored
/// copy passes the verifier, and holds exactly rows 1..=N with no gap, N at least every row
/// committed before the backup started.
#[test]
fn wal_database_under_a_writer_is_captured_consistently() {
    let w = World::new();
    let db = w.path("app/app.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let c = Connection::open(&db).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.execute_batch("CREATE TABLE events(id INTEGER PRIMARY KEY, body TEXT NOT NULL); CREATE TABLE meta(k TEXT);")
        .unwrap();
    c.execute("INSERT INTO meta VALUES ('v1')", []).unwrap();
    let (stop, committed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicI64::new(0)));
    let writer = {
        let (stop, committed, db) = (stop.clone(), committed.clone(), db.clone());
        std::thread::spawn(move || {
            let mut c = Connection::open(&db).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut next = 1i64;
            while !stop.load(Ordering::Relaxed) {
                let tx = c.transaction().unwrap();
                for _ in 0..20 {
                    tx.execute("INSERT INTO events(id, body) VALUES (?1, ?2)", (next, "x".repeat(200))).unwrap();
                    next += 1;
                }
                tx.commit().unwrap();
                committed.store(next - 1, Ordering::SeqCst);
            }
        })
    };
    restore_tests::plane::wait_for("20,000 committed rows", std::time::Duration::from_secs(120), || {
        committed.load(Ordering::SeqCst) >= 20_000 || writer.is_finished()
    });
    assert!(!writer.is_finished(), "the writer stopped early");
    let before = committed.load(Ordering::SeqCst);
    let b = w.json(&["backup", "--vault", w.vault_str(), "--source", &format!("sqlite:{}", db.display())]);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let recorded: i64 = b["manifest"]["sources"][0]["probes"]["rows.events"].as_str().unwrap().parse().unwrap();
    assert!(recorded >= before, "the copy has {recorded} rows; {before} were committed before the backup");

    let to = w.path("restored");
    let report = verified(&restore_and_verify(&w, &to));
    let checks = report["report"]["findings"].as_array().unwrap();
    assert!(checks.iter().any(|f| f["check"] == "sqlite integrity_check" && f["ok"] == true), "{report}");
    let restored = Connection::open(to.join(db.strip_prefix("/").unwrap())).unwrap();
    let (n, max): (i64, i64) =
        restored.query_row("SELECT count(*), max(id) FROM events", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!((n, max), (recorded, recorded), "rows 1..=N with no gap");
    assert!(!to.join(format!("{}-wal", db.strip_prefix("/").unwrap().display())).exists());
}

/// A path that is not a database, and one that does not exist: clear errors, nothing written.
#[test]
fn not_a_database_is_a_clear_error() {
    let w = World::new();
    let junk = w.path("junk.db");
    std::fs::write(&junk, vec![7u8; 8192]).unwrap();
    let out = w.run(&["backup", "--vault", w.vault_str(), "--source", &format!("sqlite:{}", junk.display())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("junk.db") && err.contains("not a readable SQLite database"), "{err}");
    let out = w.run(&["backup", "--vault", w.vault_str(), "--source", "sqlite:/nonexistent/x.db"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot read /nonexistent/x.db"), "{err}");
    assert!(w.snapshot_ids().is_empty());
}
