//! Restore a snapshot's tree: the blocking tree writer of `tresor_sources::files` fed by the
//! vault's concurrent reads. Every file-system call goes through directory handles that never
//! follow a link (see `tresor_sources::files::beneath`).

use std::path::PathBuf;
use std::sync::Arc;

use tresor_sources::files::beneath::Dir;
use tresor_sources::files::restore::TreeWriter;
use tresor_sources::files::target::Landing;
use tresor_vault::Vault;
use tresor_vault::index::LocalIndex;
use tresor_vault::restore::{self, ChunkWriter, RestoreOptions};
use tresor_vault::snapshot::Node;

pub use tresor_sources::files::restore::{RestoreReport, select};

/// What names a restore's staging directory, so that only the same restore resumes it: 64 bits
/// of the snapshot id, and a hash of the `--include` selection when there is one.
pub fn restore_key(id: &tresor_vault::ids::SnapshotId, include: &[String]) -> String {
    let id = id.to_string();
    let mut key = id[..16.min(id.len())].to_string();
    if !include.is_empty() {
        let selection = blake3::hash(include.join("\0").as_bytes()).to_hex();
        key.push('-');
        key.push_str(&selection[..8]);
    }
    key
}

/// Restore `nodes` below the directory `root`. File-system work runs on blocking threads.
pub async fn restore_tree(
    vault: Arc<Vault>,
    index: Arc<LocalIndex>,
    nodes: Vec<Node>,
    root: Dir,
) -> anyhow::Result<RestoreReport> {
    let ix = index.clone();
    let (writer, plan) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let writer = TreeWriter::new(nodes, root)?;
        let plan = restore::plan(&ix, &writer.files())?;
        writer.expect(&plan)?;
        Ok((writer, plan))
    })
    .await??;
    tracing::debug!(fetches = plan.fetches.len(), bytes = plan.bytes, "restore planned");
    let writer = Arc::new(writer);
    let sink = writer.clone() as Arc<dyn ChunkWriter>;
    let counts = restore::execute(vault, plan, &RestoreOptions::default(), sink, Some(index)).await?;
    tracing::debug!("restore data written");
    let mut report = tokio::task::spawn_blocking(move || writer.complete()).await??;
    report.transient_retries = counts.transient_retries;
    Ok(report)
}

/// Where a restore goes, and how.
pub struct Destination {
    /// Opened following links: the operator's path above the target, or the host's restore root.
    pub base: PathBuf,
    /// The target below `base` (empty: `base` itself), walked without following a link.
    pub rel: PathBuf,
    /// Write into a non-empty target.
    pub force: bool,
    /// Names the staging directory, so only the same restore resumes it ([`restore_key`]).
    pub key: String,
    /// Move a staged restore with failed entries into place anyway (what could be restored is
    /// where it belongs; a re-run with force fills in the rest). Otherwise the staging directory
    /// waits for a re-run.
    pub place_partial: bool,
}

/// Restore `nodes` to `dest`. A new or empty target is written into a staging directory that
/// moves into place once every entry is restored; a non-empty one only with `force`. Returns the
/// report and whether the restore is still waiting in a staging directory.
pub async fn restore_to(
    vault: Arc<Vault>,
    index: Arc<LocalIndex>,
    nodes: Vec<Node>,
    dest: Destination,
) -> anyhow::Result<(RestoreReport, bool)> {
    let place_partial = dest.place_partial;
    let landing = tokio::task::spawn_blocking(move || -> anyhow::Result<Landing> {
        let dir = Dir::open_configured(&dest.base)?;
        Ok(Landing::prepare(dir, &dest.base, &dest.rel, dest.force, &dest.key)?)
    })
    .await??;
    let root = landing.root.dir(b"")?;
    let report = restore_tree(vault, index, nodes, root).await?;
    let waiting = landing.is_staged() && !report.failed.is_empty() && !place_partial;
    if !waiting {
        tokio::task::spawn_blocking(move || landing.finish()).await??;
    }
    Ok((report, waiting))
}
