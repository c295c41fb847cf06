//! Chroma persistent directories: the HNSW segment files are copied first (again, until no file
//! changed while it was copied), then `chroma.sqlite3` through SQLite's online backup API. The
//! database is thus never older than the segments, and Chroma replays what the segments lack from
//! its own queue in the database when it opens the copy.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The database file of a persistent directory.
pub const DB: &str = "chroma.sqlite3";
/// Copies attempted before giving up on a directory that never holds still.
const ATTEMPTS: usize = 5;

fn is_db_file(name: &str) -> bool {
    name == DB || name.starts_with("chroma.sqlite3-")
}

/// Every segment file below `dir` with its (size, mtime, inode).
fn segment_files(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, (u64, i64, u64)>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let md = e.metadata()?;
            let rel = e.path().strip_prefix(dir).map(Path::to_path_buf).unwrap_or_default();
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() && !(d == dir && is_db_file(&e.file_name().to_string_lossy())) {
                out.insert(rel, (md.len(), md.mtime_nsec() + md.mtime() * 1_000_000_000, md.ino()));
            }
        }
    }
    Ok(out)
}

/// Copy the persistent directory `src` into the empty directory `dest`. Blocking.
pub fn copy_dir(src: &Path, dest: &Path) -> Result<(), String> {
    if !src.join(DB).is_file() {
        return Err(format!("{} has no {DB}: not a Chroma persistent directory", src.display()));
    }
    for attempt in 1..=ATTEMPTS {
        let before = segment_files(src).map_err(|e| format!("listing {}: {e}", src.display()))?;
        for rel in before.keys() {
            let to = dest.join(rel);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            std::fs::copy(src.join(rel), &to).map_err(|e| format!("copying {}: {e}", src.join(rel).display()))?;
        }
        let after = segment_files(src).map_err(|e| format!("listing {}: {e}", src.display()))?;
        if after == before {
            let db = crate::sqlite::copy(&src.join(DB), &dest.join(DB)).map_err(|e| e.to_string());
            return db;
        }
        tracing::info!(attempt, "Chroma segment files changed while copied; copying again");
        let _ = std::fs::remove_dir_all(dest);
        std::fs::create_dir_all(dest).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(format!(
        "the segment files of {} kept changing through {ATTEMPTS} copies: pause the writer with a pre-hook",
        src.display()
    ))
}
