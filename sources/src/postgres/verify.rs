//! Proving a restored PostgreSQL data directory: `pg_verifybackup` against its manifest, a scratch
//! server on a free port started on it (as the directory's owner, reachable only through a private
//! socket, with a trust-only hba file of our own), `pg_amcheck` on every database once recovery
//! has ended, the recorded probes, then a clean stop and `pg_checksums --check` on the stopped copy.
//! Every one of these programs runs boxed (`confine`): the copy is the snapshot's, and whatever
//! the server runs on its behalf may write only to the copy.
//!
//! The restored directory is started, so it leaves this check recovered (as it would on its
//! first real start).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::confine::confined;
use super::probe_holds;
use super::tools::{self, major_version, program};
use crate::report::Report;

const STEP_TIMEOUT: Duration = Duration::from_secs(600);

/// Settings of a restored cluster that could run a program, load a library, reach another
/// server or write outside the scratch directory: (name, the value the scratch server is started
/// with instead, the first major version that has the setting).
const HOSTILE_SETTINGS: &[(&str, &str, u32)] = &[
    ("archive_mode", "off", 12),
    ("archive_command", "''", 12),
    ("archive_library", "''", 15),
    ("restore_command", "''", 12),
    ("archive_cleanup_command", "''", 12),
    ("recovery_end_command", "''", 12),
    ("shared_preload_libraries", "''", 12),
    ("session_preload_libraries", "''", 12),
    ("local_preload_libraries", "''", 12),
    ("dynamic_library_path", "'$libdir'", 12),
    ("jit", "off", 12),
    ("ssl", "off", 12),
    ("ssl_passphrase_command", "''", 12),
    ("primary_conninfo", "''", 12),
    ("primary_slot_name", "''", 12),
    ("logging_collector", "off", 12),
    ("external_pid_file", "''", 12),
];

/// Check the logical dumps below `dir` with `pg_restore --list` (the archive's table of contents
/// must read whole). Blocking.
pub fn verify_dumps(dir: &Path, bindir: Option<&Path>, report: &mut Report) {
    let shown = dir.display().to_string();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return report.push(&shown, "pg_dump archives", false, "missing");
    };
    let bin = tools::bin_dir(bindir, None);
    // The archives are untrusted bytes: read by their owner (in a drill, the scratch user), not root.
    let owner = std::fs::metadata(dir).map(|m| m.uid()).ok();
    for e in rd.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "dump")) {
        let mut c = confined(&program(bin.as_deref(), "pg_restore"), owner, &[]);
        c.arg("--list").arg(e.path());
        let subject = e.path().display().to_string();
        match tools::run(c, "pg_restore --list", STEP_TIMEOUT) {
            Ok(out) => report.push(
                &subject,
                "pg_dump archive",
                true,
                format!("{} entries", out.lines().filter(|l| !l.starts_with(';') && !l.is_empty()).count()),
            ),
            Err(err) => report.push(&subject, "pg_dump archive", false, err.to_string()),
        }
    }
}

/// Check the data directory `dir` against `probes` recorded at backup. Blocking.
pub fn verify(
    dir: &Path,
    probes: &BTreeMap<String, String>,
    trusted: &[String],
    bindir: Option<&Path>,
    report: &mut Report,
) {
    let shown = dir.display().to_string();
    let owner = match std::fs::metadata(dir) {
        Ok(md) => md.uid(),
        Err(e) => return report.push(&shown, "postgres data directory", false, e.to_string()),
    };
    // Read inside the copy only: a PG_VERSION that is a link to this host's files (or a pipe)
    // must not put their first bytes into a report any key holder can read.
    let text = match crate::files::beneath::Dir::open_configured(dir)
        .map_err(|e| e.to_string())
        .and_then(|copy| super::conf::read_in_copy(&copy, "PG_VERSION", 64))
    {
        Ok(t) => t.unwrap_or_default(),
        Err(e) => {
            return report.push(&shown, "postgres data directory", false, format!("its PG_VERSION: {e}; not started"));
        }
    };
    let Some(version) = major_version(&text) else {
        let shown_text: String = text.chars().take(40).collect();
        return report.push(
            &shown,
            "postgres data directory",
            false,
            format!("its PG_VERSION {shown_text:?} is not a PostgreSQL major version; not started"),
        );
    };
    let Some(bin) = tools::bin_dir(bindir, Some(version)) else {
        return report.push(
            &shown,
            "postgres programs",
            false,
            "no PostgreSQL installation found under /usr/lib/postgresql",
        );
    };
    let bin = Some(bin.as_path());
    // Run by the data's owner; a copy made before backup_manifest got the cluster's owner
    // (it carried pg_basebackup's made-up ids) is read as before.
    // The manifest itself, never what a link at its name points to (read as root, a host file's
    // bytes could surface in pg_verifybackup's parse errors).
    let manifest_owner = match std::fs::symlink_metadata(dir.join("backup_manifest")) {
        Ok(md) if md.is_file() => Some(md.uid()),
        Ok(_) => {
            return report.push(&shown, "pg_verifybackup", false, "backup_manifest is not a regular file; not started");
        }
        Err(_) => None,
    };
    let reader = if manifest_owner == Some(owner) { Some(owner) } else { None };
    let mut c = confined(&program(bin, "pg_verifybackup"), reader, &[]);
    c.arg(dir);
    match tools::run(c, "pg_verifybackup", STEP_TIMEOUT) {
        Ok(out) => report.push(&shown, "pg_verifybackup", true, out.trim().to_string()),
        Err(e) => {
            // A copy that fails its own manifest is not started.
            report.push(&shown, "pg_verifybackup", false, e.to_string());
            return report.push(&shown, "scratch server starts", false, "not tried: the copy fails pg_verifybackup");
        }
    }
    let scratch = match Scratch::start(
        dir,
        bin,
        owner,
        version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0),
        probes.get("superuser").map_or("postgres", String::as_str),
    ) {
        Ok(s) => s,
        Err(e) => return report.push(&shown, "scratch server starts", false, e),
    };
    report.push(&shown, "scratch server starts", true, format!("recovered and promoted on port {}", scratch.port));
    scratch.checks(probes, trusted, report, &shown);
    let stopped = scratch.stop();
    report.push(&shown, "scratch server stops cleanly", stopped.is_ok(), stopped.err().unwrap_or_default());
    if probes.get("data_checksums").map(String::as_str) == Some("on") {
        let mut c = confined(&program(bin, "pg_checksums"), Some(owner), &[]);
        c.args(["--check", "-D"]).arg(dir);
        match tools::run(c, "pg_checksums --check", STEP_TIMEOUT) {
            Ok(out) => report.push(&shown, "pg_checksums", true, last_lines(&out)),
            Err(e) => report.push(&shown, "pg_checksums", false, e.to_string()),
        }
    } else {
        report.push(&shown, "pg_checksums", true, "data checksums are off in this cluster; nothing to check");
    }
}

fn last_lines(s: &str) -> String {
    s.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("; ")
}

/// A server started on a restored copy, stopped on drop if not before.
struct Scratch<'a> {
    dir: &'a Path,
    bin: Option<&'a Path>,
    owner: u32,
    port: u16,
    /// The cluster's bootstrap superuser, as recorded at backup ("postgres" for older snapshots).
    superuser: String,
    sock: tempfile::TempDir,
    running: bool,
}

impl<'a> Scratch<'a> {
    fn start(dir: &'a Path, bin: Option<&'a Path>, owner: u32, major: u32, superuser: &str) -> Result<Self, String> {
        // pg_ctl hands the data directory and these options to a shell, inside double quotes.
        let shown = dir.display().to_string();
        if shown.contains(['"', '$', '`', '\\', '\'', '\n']) {
            return Err(format!("not started: its path {shown:?} holds a character pg_ctl would pass to a shell"));
        }
        if let Some(why) = super::conf::foreign_include(dir) {
            return Err(format!("not started: {why}"));
        }
        let sock = tempfile::Builder::new().prefix("tresor-pg-").tempdir().map_err(|e| e.to_string())?;
        let chown = |p: &Path| rustix::fs::chown(p, Some(rustix::process::Uid::from_raw(owner)), None);
        chown(sock.path()).map_err(|e| format!("socket directory: {e}"))?;
        let hba = sock.path().join("hba.conf");
        std::fs::write(&hba, "local all all trust\nlocal replication all trust\n").map_err(|e| e.to_string())?;
        let ident = sock.path().join("ident.conf");
        std::fs::write(&ident, "").map_err(|e| e.to_string())?;
        // A data directory whose configuration lived elsewhere (Debian's /etc/postgresql) starts
        // with defaults.
        super::conf::default_conf(dir, owner)?;
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let log = sock.path().join("server.log");
        // The restored configuration is the snapshot's, which any key holder can write: every
        // setting that names a program, a library or a connection is overridden here (the
        // command line beats any file, included ones too); an include is
        // read, so it must stay inside the copy (conf::foreign_include).
        let mut opts = format!(
            "-p {port} -k '{}' -c listen_addresses='' -c data_directory='{shown}' -c hba_file='{}' -c ident_file='{}' -c hot_standby=on -c max_wal_senders=2",
            sock.path().display(),
            hba.display(),
            ident.display()
        );
        for (name, value, _) in HOSTILE_SETTINGS.iter().filter(|(_, _, since)| major >= *since) {
            opts.push_str(&format!(" -c {name}={value}"));
        }
        // Boxed: it may write only to the copy and its own socket directory.
        let mut c = confined(&program(bin, "pg_ctl"), Some(owner), &[dir, sock.path()]);
        c.args(["start", "-w", "-t", "600", "-D"]).arg(dir).arg("-l").arg(&log).args(["-o", &opts]);
        let mut s = Self { dir, bin, owner, port, superuser: superuser.to_string(), sock, running: true };
        if let Err(e) = tools::run(c, "pg_ctl start", STEP_TIMEOUT) {
            s.running = false;
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "{e}; server log: {}",
                last_lines(&tail.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
            ));
        }
        // Recovery must have ended before anything is checked.
        let started = Instant::now();
        loop {
            match s.query("postgres", "SELECT pg_is_in_recovery()") {
                Ok(r) if r.first().and_then(|r| r.first()).map(String::as_str) == Some("f") => break,
                _ if started.elapsed() > STEP_TIMEOUT => return Err("still in recovery after 600 s".into()),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        Ok(s)
    }

    fn query(&self, db: &str, sql: &str) -> Result<Vec<Vec<String>>, super::PgError> {
        let user = self.superuser.replace('\\', "\\\\").replace('\'', "\\'");
        let conn = format!("host={} port={} dbname={db} user='{user}'", self.sock.path().display(), self.port);
        tools::query(self.tool("psql"), &["-d", &conn], sql, STEP_TIMEOUT)
    }

    /// One of PostgreSQL's programs, boxed, as the copy's owner, writing nowhere.
    fn tool(&self, name: &str) -> std::process::Command {
        confined(&program(self.bin, name), Some(self.owner), &[])
    }

    /// Disable the copy's event triggers before anything runs DDL in it (`pg_amcheck` creates its
    /// extension): they are the snapshot's code, and would run as a superuser. Altering an event
    /// trigger fires none.
    fn disable_event_triggers(&self, report: &mut Report, shown: &str) {
        let dbs = match self.query("postgres", "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname") {
            Ok(rows) => rows.into_iter().filter_map(|r| r.into_iter().next()).collect::<Vec<_>>(),
            Err(e) => return report.push(shown, "event triggers disabled", false, e.to_string()),
        };
        let mut disabled = Vec::new();
        for db in &dbs {
            let names = match self.query(db, "SELECT evtname FROM pg_event_trigger WHERE evtenabled <> 'D'") {
                Ok(rows) => rows.into_iter().filter_map(|r| r.into_iter().next()).collect::<Vec<_>>(),
                Err(e) => return report.push(shown, "event triggers disabled", false, format!("{db}: {e}")),
            };
            for name in names {
                let sql = format!("ALTER EVENT TRIGGER \"{}\" DISABLE", name.replace('"', "\"\""));
                if let Err(e) = self.query(db, &sql) {
                    return report.push(shown, "event triggers disabled", false, format!("{db}.{name}: {e}"));
                }
                disabled.push(format!("{db}.{name}"));
            }
        }
        if !disabled.is_empty() {
            let detail =
                format!("{} disabled in the scratch copy before any check: {}", disabled.len(), disabled.join(", "));
            report.push(shown, "event triggers disabled", true, detail);
        }
    }

    fn checks(&self, probes: &BTreeMap<String, String>, trusted: &[String], report: &mut Report, shown: &str) {
        self.disable_event_triggers(report, shown);
        let mut c = self.tool("pg_amcheck");
        c.args([
            "--all",
            "--install-missing",
            // Every table and each of its btree indexes ("--no-dependent-indexes" with --all
            // would check no index at all).
            "--heapallindexed",
            "-U",
            &self.superuser,
            "-h",
        ])
        .arg(self.sock.path())
        .args(["-p", &self.port.to_string()]);
        match tools::run(c, "pg_amcheck", STEP_TIMEOUT) {
            Ok(out) => report.push(
                shown,
                "pg_amcheck",
                true,
                if out.trim().is_empty() { "no corruption found".into() } else { last_lines(&out) },
            ),
            Err(e) => report.push(shown, "pg_amcheck", false, e.to_string()),
        }
        match self
            .query("postgres", "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE datallowconn")
        {
            Ok(r) => {
                let got = r.first().and_then(|r| r.first()).cloned().unwrap_or_default();
                let want = probes.get("databases").cloned().unwrap_or_default();
                report.push(shown, "databases", got == want, format!("{got} (recorded {want})"));
            }
            Err(e) => report.push(shown, "databases", false, e.to_string()),
        }
        let db = probes.get("dbname").map_or("postgres", String::as_str);
        for (key, sql) in probes.iter().filter(|(k, _)| k.starts_with("probe.")) {
            if !trusted.iter().any(|t| t.trim() == sql.trim()) {
                let why = format!(
                    "not trusted, not run: {sql:?} is recorded in the snapshot but is not among this host's probes (agent.toml [sources.NAME] probes, or verify --probe); a snapshot cannot make the verifier run SQL"
                );
                report.push(format!("{shown} {key}"), "postgres probe", false, why);
                continue;
            }
            match self.query(db, sql) {
                Ok(rows) => {
                    let held = rows.len() == 1 && probe_holds(&rows[0]);
                    report.push(format!("{shown} {key}"), "postgres probe", held, format!("{sql} -> {rows:?}"));
                }
                Err(e) => report.push(format!("{shown} {key}"), "postgres probe", false, e.to_string()),
            }
        }
    }

    fn stop(mut self) -> Result<(), String> {
        self.running = false;
        let mut c = self.tool("pg_ctl");
        c.args(["stop", "-w", "-m", "fast", "-D"]).arg(self.dir);
        tools::run(c, "pg_ctl stop", STEP_TIMEOUT).map(|_| ()).map_err(|e| e.to_string())
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if self.running {
            let mut c = self.tool("pg_ctl");
            c.args(["stop", "-m", "immediate", "-D"]).arg(self.dir);
            let _ = tools::run(c, "pg_ctl stop", STEP_TIMEOUT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hostile copy's PG_VERSION or backup_manifest is a link to a file of this host: neither
    /// is read through, and nothing of the file reaches the report.
    #[test]
    fn files_of_the_copy_linked_to_this_host_are_not_read_through() {
        let host = tempfile::tempdir().unwrap();
        let secret = host.path().join("secret");
        std::fs::write(&secret, "15 canary-of-this-host").unwrap();
        let copy = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&secret, copy.path().join("PG_VERSION")).unwrap();
        let mut report = Report::default();
        verify(copy.path(), &BTreeMap::new(), &[], None, &mut report);
        let text = format!("{:?}", report.findings);
        assert!(!report.ok() && !text.contains("canary"), "{text}");
        assert!(text.contains("its PG_VERSION"), "{text}");

        std::fs::remove_file(copy.path().join("PG_VERSION")).unwrap();
        std::fs::write(copy.path().join("PG_VERSION"), "15\n").unwrap();
        std::os::unix::fs::symlink(&secret, copy.path().join("backup_manifest")).unwrap();
        let mut report = Report::default();
        verify(copy.path(), &BTreeMap::new(), &[], None, &mut report);
        let text = format!("{:?}", report.findings);
        assert!(text.contains("backup_manifest is not a regular file") && !text.contains("canary"), "{text}");
    }
}
