//! Finding PostgreSQL's programs and running them: `psql` for queries, the rest for backups and
//! checks. Each run is bounded by a timeout and its stderr is kept for the error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::PgError;

/// A data directory's `PG_VERSION`, only when it is a plain major version ("15", "9.6"): the
/// file comes from the snapshot, and its text picks the directory programs are run from.
pub fn major_version(text: &str) -> Option<&str> {
    let v = text.trim();
    let plain =
        !v.is_empty() && v.len() <= 6 && v.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    plain.then_some(v)
}

/// The directory holding PostgreSQL's programs: the one the host configured, else `version`'s
/// under /usr/lib/postgresql when given and present (a data directory's PG_VERSION, used only
/// when it is a plain major version), else the newest there, else PATH.
pub fn bin_dir(configured: Option<&Path>, version: Option<&str>) -> Option<PathBuf> {
    if let Some(d) = configured {
        return Some(d.to_path_buf());
    }
    let root = Path::new("/usr/lib/postgresql");
    if let Some(v) = version.and_then(major_version) {
        let d = root.join(v).join("bin");
        if d.join("postgres").is_file() {
            return Some(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("pg_basebackup").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|v| v.1)
}

/// A program of that directory, or from PATH.
pub fn program(dir: Option<&Path>, name: &str) -> PathBuf {
    dir.map(|d| d.join(name)).filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from(name))
}

/// The first /etc/passwd entry (name:x:uid:gid:...) that `wanted` accepts, as (uid, gid).
fn passwd_ids(wanted: impl Fn(&str, u32) -> bool) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let (uid, gid) = (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
        wanted(f[0], uid).then_some((uid, gid))
    })
}

/// The uid and primary gid of user `name`.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    passwd_ids(|n, _| n == name)
}

/// The primary gid of `uid` (the uid itself when it has no entry).
pub(super) fn gid_of(uid: u32) -> u32 {
    passwd_ids(|_, u| u == uid).map_or(uid, |(_, gid)| gid)
}

/// Largest stdout kept from a PostgreSQL program (query answers, check reports); more is drained.
const MAX_OUTPUT: usize = 64 << 20;

/// Run to completion within `timeout`; returns stdout. A non-zero exit or a timeout is an error
/// naming `what` with the program's own words.
pub fn run(cmd: Command, what: &str, timeout: Duration) -> Result<String, PgError> {
    let done = crate::proc::run(cmd, timeout, MAX_OUTPUT)
        .map_err(|e| PgError::Tool { what: what.into(), why: e.to_string() })?;
    if !done.status.success() {
        // Some tools report what they found on stdout (pg_amcheck names each corrupt block there).
        let stdout = String::from_utf8_lossy(&done.stdout);
        let found: String = stdout.lines().filter(|l| !l.trim().is_empty()).take(5).collect::<Vec<_>>().join("; ");
        let mut why = done.status.to_string();
        for part in [done.stderr.trim(), found.trim()] {
            if !part.is_empty() {
                why.push_str(": ");
                why.push_str(part);
            }
        }
        return Err(PgError::Tool { what: what.into(), why });
    }
    Ok(String::from_utf8_lossy(&done.stdout).into_owned())
}

/// One query through `psql` (a command for it, with whatever box and user it runs in): rows of
/// fields (separated by the unit separator, so any text is safe).
pub fn query(mut psql: Command, conn: &[&str], sql: &str, timeout: Duration) -> Result<Vec<Vec<String>>, PgError> {
    psql.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-F", "\x1f", "-R", "\x1e"])
        .args(conn)
        .args(["-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGOPTIONS", format!("-c statement_timeout={}", timeout.as_millis()));
    let out = run(psql, &format!("query {}", short(sql)), timeout + Duration::from_secs(15))?;
    Ok(out
        .trim_end_matches(['\n', '\x1e'])
        .split('\x1e')
        .filter(|r| !r.is_empty())
        .map(|r| r.trim_start_matches('\n').split('\x1f').map(str::to_string).collect())
        .collect())
}

fn short(sql: &str) -> String {
    let s: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 80 { format!("{}...", s.chars().take(80).collect::<String>()) } else { s }
}

#[cfg(test)]
mod tests {
    use super::major_version;

    #[test]
    fn only_a_plain_major_version_picks_the_programs() {
        assert_eq!(major_version("15\n"), Some("15"));
        assert_eq!(major_version("9.6"), Some("9.6"));
        for bad in ["/tmp/evil", "../../tmp", "15/../../x", "", "1.", "150000000"] {
            assert_eq!(major_version(bad), None, "{bad:?}");
        }
    }
}
