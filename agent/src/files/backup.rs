//! Backing up paths and sources into an opened vault: the one data path the CLI and the daemon
//! share. Order: pre-hook, capture each source (checks, staging copies), walk and store, commit,
//! post-hook (always, told whether the backup succeeded).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use tresor_vault::Vault;
use tresor_vault::backup::{BackupOptions, BackupSession};

use tresor_sources::capture::SourceOptions;
use tresor_sources::hooks;
use tresor_sources::spec::SourceSpec;

use crate::files;
use crate::progress::{Progress, human};

/// What to back up, for the CLI and the daemon alike.
pub struct BackupRequest {
    /// Absolute, de-duplicated roots.
    pub roots: Vec<PathBuf>,
    /// Sources other than plain paths.
    pub sources: Vec<SourceSpec>,
    /// Hooks, probes and the probe command (from the CLI or agent.toml).
    pub options: SourceOptions,
    /// Host name to record.
    pub host: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Read every file even if unchanged since the parent.
    pub force: bool,
    /// Asked right before the commit point.
    pub commit_guard: Option<tresor_vault::backup::CommitGuard>,
    /// Called every two seconds with bytes read and bytes new.
    pub progress: Option<Arc<dyn Fn(u64, u64) + Send + Sync>>,
    /// Show a terminal spinner.
    pub quiet: bool,
}

/// A committed backup.
pub struct BackupDone {
    /// Snapshot id.
    pub id: tresor_vault::ids::SnapshotId,
    /// Its manifest.
    pub manifest: tresor_vault::snapshot::Manifest,
    /// Files that could not be read.
    pub errors: Vec<files::walk::SourceError>,
}

/// Check and normalise the paths to back up.
pub fn backup_roots(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut roots = Vec::new();
    for p in paths {
        let abs = std::path::absolute(p).with_context(|| format!("bad path {}", p.display()))?;
        std::fs::symlink_metadata(&abs).with_context(|| format!("cannot back up {}", abs.display()))?;
        roots.push(abs);
    }
    roots.sort();
    roots.dedup();
    Ok(roots)
}

type Parent = Option<(tresor_vault::ids::SnapshotId, HashMap<Vec<u8>, tresor_vault::snapshot::Node>)>;

impl BackupRequest {
    /// What the manifest lists as backed up: the paths, then the sources as `KIND:SPEC`.
    fn items(&self) -> Vec<String> {
        let mut items: Vec<String> = self.roots.iter().map(|p| p.display().to_string()).collect();
        items.extend(self.sources.iter().map(|s| s.to_string()));
        items
    }

    /// The manifest's source kind: `files`, a source kind, or kinds joined by `+`.
    fn kind(&self) -> String {
        let mut kinds: Vec<&str> = Vec::new();
        let files = (!self.roots.is_empty()).then_some("files");
        for k in files.into_iter().chain(self.sources.iter().map(|s| s.kind.name())) {
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        kinds.join("+")
    }
}

/// The index, and the parent snapshot's tree: the newest snapshot of the same host and paths.
async fn load_index_and_parent(
    vault: &Arc<Vault>,
    cache: &Path,
    req: &BackupRequest,
) -> anyhow::Result<(Arc<tresor_vault::index::LocalIndex>, Parent)> {
    let index = vault.sync_index(cache).await?;
    let (items, kind) = (req.items(), req.kind());
    let mut parent = None;
    if !req.force {
        let snaps = vault.snapshots().await?;
        if let Some((id, Ok(m))) = snaps
            .into_iter()
            .rev()
            .find(|(_, m)| m.as_ref().is_ok_and(|m| m.host == req.host && m.paths == items && m.source == kind))
        {
            match vault.read_tree(&m, &index).await {
                Ok(nodes) => {
                    parent = Some((id, nodes.into_iter().map(|n| (n.path.clone(), n)).collect::<HashMap<_, _>>()))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "parent snapshot unreadable; reading every file")
                }
            }
        }
    }
    Ok((index, parent))
}

/// Back up `req` into an opened vault, between its hooks.
pub async fn backup_into(vault: Arc<Vault>, cache: &Path, req: BackupRequest) -> anyhow::Result<BackupDone> {
    let pre = match req.options.hooks.pre.clone() {
        Some(cmd) => run_hook("pre", cmd, &req, "").await,
        None => Ok(()),
    };
    let result = match pre {
        Ok(()) => capture_and_store(vault, cache, &req).await,
        Err(e) => Err(anyhow::Error::from(e).context("backup failed before reading anything; no snapshot was written")),
    };
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    let post = match req.options.hooks.post.clone() {
        Some(cmd) => run_hook("post", cmd, &req, outcome).await,
        None => Ok(()),
    };
    match (result, post) {
        // The snapshot stands; the failed post-hook is reported with it.
        (Ok(mut done), Err(e)) => {
            done.errors.push(files::walk::SourceError { path: "post-hook".into(), error: e.to_string() });
            Ok(done)
        }
        (Err(e), Err(p)) => Err(e.context(format!("and then {p}"))),
        (r, Ok(())) => r,
    }
}

async fn run_hook(
    which: &'static str,
    cmd: String,
    req: &BackupRequest,
    outcome: &str,
) -> Result<(), hooks::HookError> {
    let (timeout, items, outcome) = (req.options.hooks.timeout, req.items().join(" "), outcome.to_string());
    let shown = cmd.clone();
    tokio::task::spawn_blocking(move || {
        hooks::run(which, &cmd, timeout, &[("TRESOR_SOURCES", items.as_str()), ("TRESOR_RESULT", outcome.as_str())])
    })
    .await
    .unwrap_or_else(|e| Err(hooks::HookError::Spawn { which, cmd: shown, source: std::io::Error::other(e) }))
}

/// Add a streamed source's nodes to the walk's, once per path (their parents may be walked too).
fn merge_nodes(walked: &mut files::walk::WalkResult, nodes: Vec<tresor_vault::snapshot::Node>) {
    use tresor_vault::snapshot::NodeKind;
    let present: std::collections::HashSet<Vec<u8>> = {
        let incoming: std::collections::HashSet<&[u8]> = nodes.iter().map(|n| n.path.as_slice()).collect();
        walked.nodes.iter().filter(|n| incoming.contains(n.path.as_slice())).map(|n| n.path.clone()).collect()
    };
    for n in nodes.into_iter().filter(|n| !present.contains(&n.path)) {
        match n.kind {
            NodeKind::File => {
                walked.summary.files += 1;
                walked.summary.bytes += n.size;
            }
            NodeKind::Dir => walked.summary.dirs += 1,
            _ => walked.summary.others += 1,
        }
        walked.nodes.push(n);
    }
}

/// A staging directory removed when dropped, whatever happened.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn capture_and_store(vault: Arc<Vault>, cache: &Path, req: &BackupRequest) -> anyhow::Result<BackupDone> {
    let staging = Staging(cache.join("staging").join(hex::encode(rand::random::<[u8; 8]>())));
    let mut walk_roots: Vec<(PathBuf, PathBuf)> = req.roots.iter().map(|p| (p.clone(), p.clone())).collect();
    let mut records = Vec::new();
    for (i, spec) in req.sources.iter().enumerate().filter(|(_, s)| !tresor_sources::capture::is_streamed(s.kind)) {
        let (spec, dir, opts) = (spec.clone(), staging.0.join(i.to_string()), req.options.clone());
        let captured = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot make the staging directory {}", dir.display()))?;
            tresor_sources::capture::capture(&spec, &dir, &opts).map_err(anyhow::Error::from)
        })
        .await?
        .context("backup failed; no snapshot was written")?;
        walk_roots.extend(captured.roots);
        records.push(captured.record);
    }
    let result = store(vault, cache, req, walk_roots, records).await;
    drop(staging);
    result
}

async fn store(
    vault: Arc<Vault>,
    cache: &Path,
    req: &BackupRequest,
    walk_roots: Vec<(PathBuf, PathBuf)>,
    mut records: Vec<tresor_vault::snapshot::SourceRecord>,
) -> anyhow::Result<BackupDone> {
    // A garbage collection sweeping between the index load and the session start makes the
    // session refuse to start (its index could name deleted packs): load again and retry.
    let mut attempts = 0;
    let (session, parent) = loop {
        let (index, parent) = load_index_and_parent(&vault, cache, req).await?;
        let opts = BackupOptions {
            host: req.host.clone(),
            source: req.kind(),
            paths: req.items(),
            tags: req.tags.clone(),
            parent: parent.as_ref().map(|p| p.0),
            commit_guard: req.commit_guard.clone(),
            ..BackupOptions::default()
        };
        match BackupSession::start(vault.clone(), index, opts).await {
            Ok(s) => break (s, parent),
            Err(tresor_vault::Error::IndexChanged) if attempts < 3 => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    };
    let sink = session.sink();
    let progress_sink = sink.clone();
    let progress = Progress::start(req.quiet, move || {
        let s = progress_sink.stats();
        format!(
            "read {}  new {}  stored {}",
            human(s.bytes_read.load(Ordering::Relaxed)),
            human(s.bytes_new.load(Ordering::Relaxed)),
            human(s.bytes_stored.load(Ordering::Relaxed))
        )
    });
    let reporter = req.progress.clone().map(|report| {
        let sink = sink.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                let s = sink.stats();
                report(s.bytes_read.load(Ordering::Relaxed), s.bytes_new.load(Ordering::Relaxed));
            }
        })
    });
    let walked = tokio::task::spawn_blocking(move || {
        let parent_map = parent.as_ref().map(|p| &p.1);
        let r = files::walk::walk_and_store(&walk_roots, parent_map, &sink);
        drop(sink);
        r
    })
    .await?;
    if let Some(r) = reporter {
        r.abort();
    }
    let mut walked = match walked {
        Ok(w) => w,
        Err(e) => {
            session.abort().await;
            return Err(anyhow::Error::from(e).context("backup failed; no snapshot was written"));
        }
    };
    for spec in req.sources.iter().filter(|s| tresor_sources::capture::is_streamed(s.kind)) {
        let (sink, spec_text) = (session.sink(), spec.spec.clone());
        let opts = tresor_sources::postgres::PgOptions {
            probes: req.options.probes.clone(),
            logical: req.options.pg_dump,
            bindir: req.options.pg_bindir.clone(),
            ..Default::default()
        };
        let streamed =
            tokio::task::spawn_blocking(move || tresor_sources::postgres::backup(&spec_text, &opts, &sink)).await?;
        match streamed {
            Ok(pg) => {
                merge_nodes(&mut walked, pg.nodes);
                records.push(pg.record);
            }
            Err(e) => {
                session.abort().await;
                return Err(anyhow::Error::from(e).context(format!("{spec}: backup failed; no snapshot was written")));
            }
        }
    }
    for e in &walked.errors {
        tracing::warn!(path = %e.path, error = %e.error, "skipped");
    }
    let (id, manifest) = session
        .commit(walked.nodes, walked.summary, records)
        .await
        .context("backup failed; no snapshot was written")?;
    drop(progress);
    Ok(BackupDone { id, manifest, errors: walked.errors })
}
