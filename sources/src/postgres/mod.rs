//! PostgreSQL: `pg_basebackup -D - -F t -X fetch` streamed straight into the chunker, unpacked
//! member by member so nightly backups dedup file by file; a replication slot holds the WAL the
//! backup needs until it is fetched. Probes recorded at backup: the WAL range and timeline of the
//! consistent point, the databases and their sizes, the checksum setting, and invariants an admin
//! gives as SQL. The verifier ([`verify`]) proves a restored data directory.

mod conf;
mod confine;
pub mod tools;
pub mod verify;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tresor_vault::backup::ChunkSink;
use tresor_vault::snapshot::{Extent, Node, NodeKind, SourceRecord};

use crate::proc::ChildKind;
use crate::tar::{EntryKind, TarReader};

/// Why a PostgreSQL backup or check failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A PostgreSQL program failed; `why` carries its own message.
    #[error("{what}: {why}")]
    Tool {
        /// What was being done.
        what: String,
        /// Why it failed.
        why: String,
    },
    /// The base backup stream is not a valid archive.
    #[error("the base backup stream: {0}")]
    Stream(#[from] crate::tar::TarError),
    /// Storing into the vault failed.
    #[error("storing the base backup: {0}")]
    Store(#[from] tresor_vault::Error),
}

/// How a PostgreSQL source is captured.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Invariants: each query returns one row whose columns must all be equal (or one `t`).
    pub probes: Vec<String>,
    /// Limit for each query.
    pub query_timeout: Duration,
    /// Also take a logical `pg_dump -Fc` of every database (and the globals), streamed.
    pub logical: bool,
    /// PostgreSQL's programs (default: the newest under /usr/lib/postgresql).
    pub bindir: Option<PathBuf>,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self { probes: Vec::new(), query_timeout: Duration::from_secs(300), logical: false, bindir: None }
    }
}

/// A captured cluster: its nodes for the tree and its record for the manifest.
pub struct PgCaptured {
    /// The data directory's nodes (ancestors first).
    pub nodes: Vec<Node>,
    /// The source record.
    pub record: SourceRecord,
}

/// Whether one probe row holds: all columns equal, or a single true.
pub fn probe_holds(row: &[String]) -> bool {
    match row {
        [one] => one == "t",
        [first, rest @ ..] => rest.iter().all(|v| v == first),
        [] => false,
    }
}

/// Keep at most this much of the backup manifest in memory to read its WAL range.
const MAX_MANIFEST: u64 = 256 << 20;

/// Back up the cluster `conn` (a libpq connection string) into `sink`. Blocking.
pub fn backup(spec: &str, opts: &PgOptions, sink: &ChunkSink) -> Result<PgCaptured, PgError> {
    let bin = tools::bin_dir(opts.bindir.as_deref(), None);
    let psql = || crate::proc::command(tools::program(bin.as_deref(), "psql"), ChildKind::PgClient);
    let conn = ["-d", spec];
    let t = opts.query_timeout;
    let facts = tools::query(
        psql(),
        &conn,
        "SELECT current_setting('data_directory'), current_setting('server_version_num'), current_setting('data_checksums'), current_database(), (SELECT rolname FROM pg_roles WHERE oid = 10)",
        t,
    )?;
    let [datadir, version, checksums, dbname, superuser] = facts.first().map(|r| r.as_slice()).unwrap_or_default()
    else {
        return Err(PgError::Tool { what: "reading the server's settings".into(), why: "unexpected answer".into() });
    };
    let (datadir, dbname) = (datadir.clone(), dbname.clone());
    let mut probes = BTreeMap::new();
    probes.insert("server_version_num".into(), version.clone());
    probes.insert("data_checksums".into(), checksums.clone());
    probes.insert("dbname".into(), dbname);
    // The bootstrap superuser: a restored copy's scratch server is reached as it, whatever
    // operating-system user the server runs as.
    probes.insert("superuser".into(), superuser.clone());
    let dbs = tools::query(
        psql(),
        &conn,
        "SELECT datname, pg_database_size(datname) FROM pg_database WHERE datallowconn ORDER BY datname",
        t,
    )?;
    probes.insert("databases".into(), dbs.iter().map(|r| r[0].clone()).collect::<Vec<_>>().join(","));
    for r in &dbs {
        probes.insert(format!("db_size.{}", r[0]), r.get(1).cloned().unwrap_or_default());
    }
    for (i, sql) in opts.probes.iter().enumerate() {
        let rows = tools::query(psql(), &conn, sql, t)?;
        let held = rows.len() == 1 && probe_holds(&rows[0]);
        if !held {
            tracing::warn!(probe = %sql, answer = ?rows, "a probe does not hold on the live database");
        }
        probes.insert(format!("probe.{i}"), sql.clone());
    }
    // The slot keeps the server from recycling WAL the backup needs before -X fetch takes it.
    let slot = format!("tresor_{}", hex::encode(rand::random::<[u8; 6]>()));
    tools::query(psql(), &conn, &format!("SELECT pg_create_physical_replication_slot('{slot}', true, false)"), t)?;
    let streamed = stream(bin.as_deref(), spec, &datadir, sink, &mut probes);
    if let Err(e) = tools::query(psql(), &conn, &format!("SELECT pg_drop_replication_slot('{slot}')"), t) {
        tracing::warn!(slot = %slot, error = %e, "could not drop the backup's replication slot; drop it by hand");
    }
    let mut nodes = streamed?;
    if opts.logical {
        let names: Vec<String> = dbs.iter().map(|r| r[0].clone()).filter(|d| d != "template1").collect();
        let dir = logical_dir(&datadir);
        nodes.extend(dump_all(bin.as_deref(), spec, &names, &dir, sink)?);
        probes.insert("pg_dump_dir".into(), dir);
    }
    Ok(PgCaptured {
        nodes,
        record: SourceRecord { kind: "postgres".into(), spec: spec.to_string(), paths: vec![datadir], probes },
    })
}

/// Run a PostgreSQL program whose stdout `consume` reads as it comes; a consumer that fails kills
/// the program. The program's own failure (with its stderr) comes first, then the consumer's.
fn streamed<T>(
    bin: Option<&Path>,
    program: &str,
    args: &[&str],
    what: &str,
    consume: impl FnOnce(std::process::ChildStdout) -> Result<T, PgError>,
) -> Result<T, PgError> {
    let tool = |why: String| PgError::Tool { what: what.into(), why };
    let mut child = crate::proc::command(tools::program(bin, program), crate::proc::ChildKind::PgClient)
        .args(args)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tool(format!("cannot start: {e}")))?;
    let err = crate::proc::stderr_tail(&mut child);
    let out = child.stdout.take().ok_or_else(|| tool("no stdout".into()))?;
    let result = consume(out);
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| tool(e.to_string()))?;
    if !status.success() {
        return Err(tool(format!("{status}: {}", crate::proc::stderr_of(&err))));
    }
    result
}

fn stream(
    bin: Option<&Path>,
    spec: &str,
    datadir: &str,
    sink: &ChunkSink,
    probes: &mut BTreeMap<String, String>,
) -> Result<Vec<Node>, PgError> {
    let args =
        ["-d", spec, "-D", "-", "-F", "t", "-X", "fetch", "-c", "fast", "--manifest-checksums=SHA256", "-l", "tresor"];
    let nodes = streamed(bin, "pg_basebackup", &args, "pg_basebackup", |out| {
        unpack(std::io::BufReader::with_capacity(1 << 20, out), datadir, sink, probes)
    })?;
    if !probes.contains_key("end_lsn") {
        return Err(PgError::Tool {
            what: "pg_basebackup".into(),
            why: "the stream had no backup_manifest with a WAL range".into(),
        });
    }
    Ok(nodes)
}

/// Turn the archive into nodes below `datadir`, storing each file's bytes as they stream by.
fn unpack<R: Read>(
    r: R,
    datadir: &str,
    sink: &ChunkSink,
    probes: &mut BTreeMap<String, String>,
) -> Result<Vec<Node>, PgError> {
    let root = PathBuf::from(datadir);
    let rel = |p: &Path| p.to_string_lossy().trim_start_matches('/').as_bytes().to_vec();
    let mut nodes = ancestors(&root);
    let mut tar = TarReader::new(r);
    let root_at = nodes.len();
    nodes.push(Node::dir(rel(&root), 0o700, 0, 0, 0));
    while let Some(e) = tar.next_entry()? {
        let path = rel(&root.join(&e.path));
        let mtime_ns = e.mtime.saturating_mul(1_000_000_000);
        if nodes.len() == root_at + 1 {
            // The archive has no entry for the data directory itself: it takes the first member's owner.
            let r = &mut nodes[root_at];
            (r.uid, r.gid, r.mtime_ns) = (e.uid, e.gid, mtime_ns);
        }
        let node = match e.kind {
            EntryKind::Dir => Node::dir(path, e.mode, e.uid, e.gid, mtime_ns),
            EntryKind::Symlink => Node {
                kind: NodeKind::Symlink,
                mode: 0o120777,
                target: e.link.clone().map(String::into_bytes),
                ..Node::dir(path, 0, e.uid, e.gid, mtime_ns)
            },
            EntryKind::File => {
                let stored = if e.path == "backup_manifest" {
                    if e.size > MAX_MANIFEST {
                        return Err(PgError::Tool {
                            what: "pg_basebackup".into(),
                            why: format!(
                                "its backup_manifest has {} bytes; Tresor reads at most {MAX_MANIFEST} to find the WAL range",
                                e.size
                            ),
                        });
                    }
                    let mut buf = Vec::with_capacity(e.size as usize);
                    tar.data().read_to_end(&mut buf).map_err(crate::tar::TarError::Io)?;
                    read_wal_range(&buf, probes);
                    sink.store_stream(&buf[..])?
                } else {
                    sink.store_stream(tar.data())?
                };
                if stored.len != e.size {
                    return Err(crate::tar::TarError::Malformed {
                        after: e.path.clone(),
                        why: "member cut short".into(),
                    }
                    .into());
                }
                // pg_basebackup adds backup_manifest itself, with made-up owner ids (2048:1024):
                // it belongs to the cluster's owner like every other file.
                let (uid, gid) =
                    if e.path == "backup_manifest" { (nodes[root_at].uid, nodes[root_at].gid) } else { (e.uid, e.gid) };
                Node {
                    kind: NodeKind::File,
                    mode: 0o100000 | e.mode,
                    size: e.size,
                    extents: vec![Extent { offset: 0, chunks: stored.chunks }],
                    hash: Some(stored.hash.to_vec()),
                    ..Node::dir(path, 0, uid, gid, mtime_ns)
                }
            }
        };
        nodes.push(node);
    }
    Ok(nodes)
}

fn read_wal_range(manifest: &[u8], probes: &mut BTreeMap<String, String>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(manifest) else { return };
    if let Some(r) = v.get("WAL-Ranges").and_then(|w| w.as_array()).and_then(|a| a.last()) {
        for (key, field) in [("timeline", "Timeline"), ("start_lsn", "Start-LSN"), ("end_lsn", "End-LSN")] {
            if let Some(x) = r.get(field) {
                probes.insert(key.into(), x.as_str().map_or_else(|| x.to_string(), str::to_string));
            }
        }
    }
}

/// The data directory's parents, as they are on this host, or plain root-owned directories when
/// the cluster is remote.
fn ancestors(root: &Path) -> Vec<Node> {
    let mut list: Vec<&Path> = root.ancestors().skip(1).filter(|a| a.as_os_str() != "/").collect();
    list.reverse();
    list.into_iter()
        .map(|a| {
            let rel = a.to_string_lossy().trim_start_matches('/').as_bytes().to_vec();
            match std::fs::metadata(a) {
                Ok(md) => {
                    use std::os::unix::fs::MetadataExt;
                    Node::dir(rel, md.mode(), md.uid(), md.gid(), md.mtime() * 1_000_000_000)
                }
                Err(_) => Node::dir(rel, 0o755, 0, 0, 0),
            }
        })
        .collect()
}

/// Where the logical dumps of a cluster sit in the tree (beside nothing on disk).
pub fn logical_dir(datadir: &str) -> String {
    format!("/tresor-sources/postgres/{}/pg_dump", datadir.trim_matches('/').replace('/', "_"))
}

/// The connection string `spec` pointed at database `db`.
fn with_dbname(spec: &str, db: &str) -> String {
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        let (head, query) = spec.split_once('?').map_or((spec, None), |(h, q)| (h, Some(q)));
        let authority_end = head.find("://").map_or(0, |i| i + 3);
        let base = match head[authority_end..].find('/') {
            Some(slash) => &head[..authority_end + slash],
            None => head,
        };
        let encoded: String = db
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        format!("{base}/{encoded}{}", query.map(|q| format!("?{q}")).unwrap_or_default())
    } else {
        format!("{spec} dbname='{}'", db.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// `pg_dumpall --globals-only` and `pg_dump -Fc` of each database, streamed into the sink.
fn dump_all(bin: Option<&Path>, spec: &str, dbs: &[String], dir: &str, sink: &ChunkSink) -> Result<Vec<Node>, PgError> {
    let root = PathBuf::from(dir);
    let rel = |p: &Path| p.to_string_lossy().trim_start_matches('/').as_bytes().to_vec();
    let mut nodes = ancestors(&root);
    nodes.push(Node::dir(rel(&root), 0o700, 0, 0, 0));
    let mut jobs = vec![(
        "globals.sql".to_string(),
        "pg_dumpall",
        vec!["--globals-only".to_string(), "-d".into(), spec.to_string()],
    )];
    for db in dbs {
        jobs.push((format!("{db}.dump"), "pg_dump", vec!["-Fc".into(), "-d".into(), with_dbname(spec, db)]));
    }
    for (file, program, args) in jobs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let stored =
            streamed(bin, program, &args, &format!("{program} for {file}"), |out| Ok(sink.store_stream(out)?))?;
        nodes.push(Node {
            kind: NodeKind::File,
            mode: 0o100600,
            size: stored.len,
            extents: vec![Extent { offset: 0, chunks: stored.chunks }],
            hash: Some(stored.hash.to_vec()),
            mtime_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
            ..Node::dir(rel(&root.join(&file)), 0, 0, 0, 0)
        });
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbname_goes_into_either_form_of_connection_string() {
        assert_eq!(with_dbname("host=/run/pg port=5432", "app"), "host=/run/pg port=5432 dbname='app'");
        assert_eq!(
            with_dbname("postgresql://u@h:5432/postgres?sslmode=require", "my db"),
            "postgresql://u@h:5432/my%20db?sslmode=require"
        );
        assert_eq!(with_dbname("postgres://h", "x"), "postgres://h/x");
        assert!(probe_holds(&["5".into(), "5".into(), "5".into()]));
        assert!(!probe_holds(&["5".into(), "6".into()]));
        assert!(probe_holds(&["t".into()]) && !probe_holds(&["f".into()]));
    }
}
