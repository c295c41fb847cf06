//! Backing up paths into an opened vault: the one data path the CLI and the daemon share.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use tresor_vault::Vault;
use tresor_vault::backup::{BackupOptions, BackupSession};

use crate::files;
use crate::progress::{Progress, human};

/// What to back up, for the CLI and the daemon alike.
pub struct BackupRequest {
    /// Absolute, de-duplicated roots.
    pub roots: Vec<PathBuf>,
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

/// The index, and the parent snapshot's tree: the newest snapshot of the same host and paths.
async fn load_index_and_parent(
    vault: &Arc<Vault>,
    cache: &Path,
    req: &BackupRequest,
) -> anyhow::Result<(Arc<tresor_vault::index::LocalIndex>, Parent)> {
    let index = vault.sync_index(cache).await?;
    let path_strings: Vec<String> = req.roots.iter().map(|p| p.display().to_string()).collect();
    let mut parent = None;
    if !req.force {
        let snaps = vault.snapshots().await?;
        if let Some((id, Ok(m))) = snaps.into_iter().rev().find(|(_, m)| {
            m.as_ref().is_ok_and(|m| m.host == req.host && m.paths == path_strings && m.source == "files")
        }) {
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

/// Back up `req.roots` into an opened vault.
pub async fn backup_into(vault: Arc<Vault>, cache: &Path, req: BackupRequest) -> anyhow::Result<BackupDone> {
    // A garbage collection sweeping between the index load and the session start makes the
    // session refuse to start (its index could name deleted packs): load again and retry.
    let mut attempts = 0;
    let (session, parent) = loop {
        let (index, parent) = load_index_and_parent(&vault, cache, &req).await?;
        let opts = BackupOptions {
            host: req.host.clone(),
            paths: req.roots.iter().map(|p| p.display().to_string()).collect(),
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
    let walk_roots = req.roots.clone();
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
    let walked = match walked {
        Ok(w) => w,
        Err(e) => {
            session.abort().await;
            return Err(anyhow::Error::from(e).context("backup failed; no snapshot was written"));
        }
    };
    for e in &walked.errors {
        tracing::warn!(path = %e.path, error = %e.error, "skipped");
    }
    let (id, manifest) = session
        .commit(walked.nodes, walked.summary, Default::default())
        .await
        .context("backup failed; no snapshot was written")?;
    drop(progress);
    Ok(BackupDone { id, manifest, errors: walked.errors })
}
