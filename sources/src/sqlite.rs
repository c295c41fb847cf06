//! SQLite: captured through the online backup API, so a database in WAL mode under a live writer
//! is copied as of one transaction; probes are the row counts of the copy. The verifier runs
//! `PRAGMA integrity_check` and compares the counts.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::report::Report;

/// How long the online backup waits for other connections' locks.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// Why a capture or check failed.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    /// SQLite said no.
    #[error("{path}: {what}: {source}")]
    Sqlite {
        /// Database.
        path: String,
        /// What was being done.
        what: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The copy is damaged, or could not be made.
    #[error("{path}: {report}")]
    Damaged {
        /// Database.
        path: String,
        /// SQLite's report.
        report: String,
    },
}

fn err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(rusqlite::Error) -> SqliteError + 'a {
    move |source| SqliteError::Sqlite { path: path.display().to_string(), what, source }
}

/// Copy `db` into `dest` (a new file) with the online backup API in one step, then check the copy
/// and count its rows. Returns the probes to record. Blocking.
pub fn capture(db: &Path, dest: &Path) -> Result<BTreeMap<String, String>, SqliteError> {
    copy(db, dest)?;
    inspect(dest)
}

/// Copy `db` into `dest` (a new file) with the online backup API in one step. Blocking.
pub fn copy(db: &Path, dest: &Path) -> Result<(), SqliteError> {
    // Read-only and never created: a mistyped path is an error, not a new empty database.
    let src = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(err(db, "cannot open the database"))?;
    src.busy_timeout(Duration::from_secs(30)).map_err(err(db, "busy timeout"))?;
    // Touch the schema now, so "not a database" is reported as such rather than by the backup.
    src.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))
        .map_err(err(db, "not a readable SQLite database"))?;
    let mut dst = Connection::open(dest).map_err(err(dest, "cannot create the copy"))?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst).map_err(err(db, "starting the online backup"))?;
        // All pages in one step: the copy is taken under one read transaction, so writers in other
        // connections cannot make it restart forever.
        let started = std::time::Instant::now();
        loop {
            use rusqlite::backup::StepResult;
            match backup.step(-1).map_err(err(db, "online backup"))? {
                StepResult::Done => break,
                // Another connection holds a lock: wait, within reason.
                StepResult::More | StepResult::Busy | StepResult::Locked if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    return Err(SqliteError::Damaged {
                        path: db.display().to_string(),
                        report: format!(
                            "the online backup could not finish within {} s (database locked)",
                            LOCK_WAIT.as_secs()
                        ),
                    });
                }
            }
        }
    }
    // The copy stands alone: no WAL beside it.
    dst.pragma_update(None, "journal_mode", "DELETE").map_err(err(dest, "journal mode"))?;
    Ok(())
}

/// Check a database and count its rows: the probes a restored copy must match. Blocking.
pub fn inspect(path: &Path) -> Result<BTreeMap<String, String>, SqliteError> {
    let (dst, dest) = (
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(err(path, "cannot open the copy"))?,
        path,
    );
    integrity(&dst, dest)?;
    let mut probes = BTreeMap::new();
    for (table, rows) in row_counts(&dst, dest)? {
        probes.insert(format!("rows.{table}"), rows.to_string());
    }
    let user_version: i64 =
        dst.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(err(dest, "user_version"))?;
    probes.insert("user_version".into(), user_version.to_string());
    Ok(probes)
}

fn integrity(c: &Connection, path: &Path) -> Result<(), SqliteError> {
    let mut stmt = c.prepare("PRAGMA integrity_check").map_err(err(path, "integrity_check"))?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .map_err(err(path, "integrity_check"))?
        .collect::<Result<_, _>>()
        .map_err(err(path, "integrity_check"))?;
    if lines != ["ok"] {
        return Err(SqliteError::Damaged {
            path: path.display().to_string(),
            report: format!("integrity_check says: {}", lines.join("; ")),
        });
    }
    Ok(())
}

fn row_counts(c: &Connection, path: &Path) -> Result<BTreeMap<String, i64>, SqliteError> {
    let mut stmt = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .map_err(err(path, "listing tables"))?;
    let tables: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .map_err(err(path, "listing tables"))?
        .collect::<Result<_, _>>()
        .map_err(err(path, "listing tables"))?;
    let mut counts = BTreeMap::new();
    for t in tables {
        let quoted = format!("\"{}\"", t.replace('"', "\"\""));
        let n: i64 = c
            .query_row(&format!("SELECT count(*) FROM {quoted}"), [], |r| r.get(0))
            .map_err(err(path, "counting rows"))?;
        counts.insert(t, n);
    }
    Ok(counts)
}

/// Check a restored database against the probes recorded at backup. Blocking.
pub fn verify(db: &Path, probes: &BTreeMap<String, String>, report: &mut Report) {
    let shown = db.display().to_string();
    // The same inspection as at backup: integrity first, then every table's rows and user_version.
    let now = match inspect(db) {
        Ok(now) => {
            report.push(&shown, "sqlite integrity_check", true, "ok");
            now
        }
        Err(e) => return report.push(&shown, "sqlite integrity_check", false, e.to_string()),
    };
    for (key, want) in probes {
        let got = now.get(key).map(String::as_str);
        if let Some(table) = key.strip_prefix("rows.") {
            report.push(
                format!("{shown} table {table}"),
                "sqlite row count",
                got == Some(want.as_str()),
                format!("{} rows, {want} recorded", got.unwrap_or("no table:")),
            );
        } else if key == "user_version" {
            report.push(
                &shown,
                "sqlite user_version",
                got == Some(want.as_str()),
                format!("{}, {want} recorded", got.unwrap_or("?")),
            );
        }
    }
}
