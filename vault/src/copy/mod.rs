//! Copy snapshots to a second site of the same vault (`tresor-agent copy`, decision 0017).
//!
//! ```text
//! site::mirror (config, epochs/, keys/) -> per snapshot, oldest first:
//!   plan: each chunk of its tree -> already indexed at the copy (reuse that pack)
//!                                 | else the source pack holding it (copy it, or index it if there)
//!   source pack --get--> verify (name = BLAKE3 of bytes, directory, every blob opens)
//!       --create--> copy pack, size checked      [at most `uploads` packs in flight]
//!   index segments for the new packs -> structure check at the copy
//!   -> commit point: the snapshot object, byte for byte -> its receipt
//! ```
//!
//! Every object keeps its name and bytes, so a run that was killed resumes where it stopped: a
//! pack already at the copy is not sent again, an uploaded pack the copy does not index yet is
//! indexed from its own directory. The copier announces itself at the copy with a writer session
//! marker, so a GC there neither deletes what it uploads nor sweeps while it runs.

pub mod site;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

pub use site::{SiteReport, mirror};

use crate::backend::{BackendError, Created};
use crate::crypto::{ObjectType, VaultKeys};
use crate::error::{Error, Result};
use crate::ids::{ChunkId, PackId, SessionId, SnapshotId};
use crate::index::{LocalIndex, PackRef, Segment};
use crate::pack::PackEntry;
use crate::session::{SESSION_LIVE_SECS, SessionMarker};
use crate::snapshot::Node;
use crate::vault::{Vault, cpu};
use crate::{layout, object, pack};

/// What to copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Snapshots to copy, oldest first; `None`: every snapshot of the source (`Some` of none:
    /// only the keys and receipts of snapshots the copy holds).
    pub snapshots: Option<Vec<SnapshotId>>,
    /// Host named in the copy's session marker.
    pub host: String,
    /// Packs in flight at once (each held whole in memory: at most the pack target size plus
    /// one chunk).
    pub uploads: usize,
}

/// What a copy run did.
#[derive(Debug, Clone, Default)]
pub struct CopyReport {
    /// Snapshots copied now, oldest first.
    pub copied: Vec<SnapshotId>,
    /// Selected snapshots the copy already held.
    pub present: usize,
    /// Snapshots that could not be copied (the others were).
    pub failed: Vec<CopyFailure>,
    /// Packs sent to the copy.
    pub packs_copied: usize,
    /// Packs the copied snapshots need that the copy already held.
    pub packs_present: usize,
    /// Bytes sent to the copy (packs).
    pub bytes_copied: u64,
    /// Blobs decrypted and hashed at the source before they were sent.
    pub chunks_verified: u64,
    /// Index segments written at the copy.
    pub segments_written: usize,
    /// Receipts copied (with their snapshots or after them).
    pub receipts_copied: usize,
}

/// A snapshot a run could not copy.
#[derive(Debug, Clone)]
pub struct CopyFailure {
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// Why, in words.
    pub why: String,
    /// It is damaged at the source (or would not restore at the copy), rather than postponed.
    pub damage: bool,
}

/// Copy `opts.snapshots` (or all) from `source` to `dest`, which [`mirror`] made a site of the
/// same vault. `cache` is this host's cache root.
///
/// # Errors
/// Storage failures, a copy that is not of this vault, or a key slot that cannot write. A
/// snapshot that cannot be copied (damaged at the source, a pack the copy's GC is about to
/// delete) is reported in [`CopyReport::failed`] and the others are copied.
pub async fn run(source: &Arc<Vault>, dest: &Arc<Vault>, cache: &Path, opts: &CopyOptions) -> Result<CopyReport> {
    if source.config().vault_id != dest.config().vault_id {
        return Err(Error::Invalid(format!(
            "{} holds vault {}, not a copy of vault {}",
            dest.backend().location(),
            dest.config().vault_id,
            source.config().vault_id
        )));
    }
    dest.writable()?;
    dest.check_epoch().await?;
    let src_index = source.sync_index(cache).await?;
    let dest_cache = copy_cache(cache, &dest.backend().location());
    let there: HashSet<SnapshotId> = listed_ids(dest, layout::SNAPSHOTS).await?;
    let wanted: Vec<SnapshotId> = match &opts.snapshots {
        None => source.snapshots().await?.into_iter().map(|(id, _)| id).collect(),
        Some(ids) => ids.clone(),
    };
    let mut report = CopyReport::default();
    let mut session = Announcer::start(dest, &opts.host).await?;
    for id in wanted {
        if there.contains(&id) {
            report.present += 1;
            continue;
        }
        let one = SnapshotCopy { source, dest, src_index: &src_index, dest_cache: &dest_cache, uploads: opts.uploads };
        match one.run(id, &mut session, &mut report).await {
            Ok(()) => report.copied.push(id),
            Err(e @ (Error::Integrity { .. } | Error::SnapshotNotFound(_) | Error::Refused(_))) => {
                tracing::warn!(snapshot = %id, error = %e, "snapshot not copied");
                let damage = !matches!(e, Error::Refused(_));
                report.failed.push(CopyFailure { snapshot: id, why: e.to_string(), damage });
            }
            Err(e) => {
                session.finish().await;
                return Err(e);
            }
        }
    }
    report.receipts_copied += late_receipts(source, dest).await?;
    session.finish().await;
    Ok(report)
}

/// Where the copy's local index lives: apart from the source's, which has the same vault id.
fn copy_cache(cache: &Path, location: &str) -> PathBuf {
    cache.join("copies").join(&blake3::hash(location.as_bytes()).to_hex()[..16])
}

async fn listed_ids(vault: &Vault, prefix: &str) -> Result<HashSet<SnapshotId>> {
    Ok(vault.backend().list(prefix).await?.iter().filter_map(|i| layout::id_of(&i.key)).collect())
}

/// One snapshot's copy.
struct SnapshotCopy<'a> {
    source: &'a Arc<Vault>,
    dest: &'a Arc<Vault>,
    src_index: &'a Arc<LocalIndex>,
    dest_cache: &'a Path,
    uploads: usize,
}

/// Where each pack a snapshot needs comes from.
#[derive(Default)]
struct Plan {
    /// Packs at the copy whose index entries cover chunks of the snapshot.
    reuse: BTreeSet<PackId>,
    /// Packs at the copy, not yet indexed there (a copy cut off before its segments).
    index_only: BTreeSet<PackId>,
    /// Packs to send.
    upload: BTreeSet<PackId>,
}

impl SnapshotCopy<'_> {
    async fn run(&self, id: SnapshotId, session: &mut Announcer<'_>, report: &mut CopyReport) -> Result<()> {
        let m = self.source.load_snapshot(&id).await?;
        let nodes = Arc::new(self.source.read_tree(&m, self.src_index).await?);
        let dest_index = self.dest.sync_index(self.dest_cache).await?;
        // Read after our marker exists: a sweep that did not see it is still holding its mark.
        let mark = crate::session::marked_packs(self.dest).await?;
        let present: HashSet<PackId> = self.dest_packs().await?;
        let chunks: Vec<ChunkId> = m.tree.iter().chain(nodes.iter().flat_map(|n| n.chunks())).copied().collect();
        let (src, dst, pr, mk) = (self.src_index.clone(), dest_index.clone(), present.clone(), mark.clone());
        let plan = cpu(move || plan(&chunks, &src, &dst, &pr, &mk)).await??;
        report.packs_present += plan.reuse.len() + plan.index_only.len();
        session.depend_on(plan.reuse.iter().chain(&plan.index_only).copied()).await;
        let mut new_packs: Vec<(PackRef, Vec<PackEntry>)> = Vec::new();
        for p in &plan.index_only {
            let dir = self.dest.read_pack_directory(p).await?;
            new_packs.push((PackRef { id: *p, salt: dir.salt }, dir.entries));
        }
        let mut sent = futures::stream::iter(plan.upload.iter().copied())
            .map(|p| send_pack(self.source, self.dest, p))
            .buffer_unordered(self.uploads.max(1));
        while let Some(done) = sent.next().await {
            let sent = done?;
            report.packs_copied += 1;
            report.bytes_copied += sent.bytes;
            report.chunks_verified += sent.entries.len() as u64;
            session.uploaded(sent.pack).await;
            new_packs.push((sent.pack, sent.entries));
        }
        self.dest.check_epoch().await?;
        for group in crate::backup::group_packs(&new_packs) {
            self.dest.write_segment(&Segment::from_packs(0, group)).await?;
            report.segments_written += 1;
        }
        self.commit(id, &m, nodes, &plan, session, report).await
    }

    async fn dest_packs(&self) -> Result<HashSet<PackId>> {
        let listing = self.dest.backend().list(layout::DATA).await?;
        Ok(listing.iter().filter_map(|i| layout::id_of::<PackId>(&i.key)).collect())
    }

    /// Check the copy holds the whole snapshot, then write it (the commit point) and its receipt.
    async fn commit(
        &self,
        id: SnapshotId,
        m: &crate::snapshot::Manifest,
        nodes: Arc<Vec<Node>>,
        plan: &Plan,
        session: &mut Announcer<'_>,
        report: &mut CopyReport,
    ) -> Result<()> {
        let dest_index = self.dest.sync_index(self.dest_cache).await?;
        let tree = Arc::new(m.tree.iter().map(|c| tree_node(*c)).collect::<Vec<Node>>());
        for part in [nodes, tree] {
            let found = crate::check_snapshot::structure(self.dest, dest_index.clone(), part).await?;
            if let Some((path, why)) = found.broken.first() {
                return Err(Error::integrity(
                    format!("copy of snapshot {id}"),
                    format!("{} entries would not restore at the copy, first {path}: {why}", found.broken.len()),
                ));
            }
        }
        crate::failpoint::hit("copy-before-snapshot-put");
        // A sweep at the copy that started before our marker deletes only what its mark lists,
        // and its mark stays until it is done: a needed pack not in the mark now, and there, stays.
        let mark = crate::session::marked_packs(self.dest).await?;
        for p in plan.reuse.iter().chain(&plan.index_only).chain(&plan.upload) {
            if mark.contains(p) || self.dest.backend().size(&layout::pack(p)).await?.is_none() {
                return Err(Error::Refused(format!(
                    "pack {p}, which snapshot {id} needs, is being collected by a GC at the copy; \
                     nothing was committed, and the next copy run sends it again"
                )));
            }
        }
        session.fenced()?;
        self.dest.check_epoch().await?;
        let bytes = verified_object(self.source, &layout::snapshot(&id), &id).await?;
        self.dest.backend().create(&layout::snapshot(&id), bytes).await?;
        session.committed().await;
        report.receipts_copied += copy_receipt(self.source, self.dest, &id).await?;
        Ok(())
    }
}

/// A node standing for one tree chunk, so the structure check covers the tree itself.
fn tree_node(c: ChunkId) -> Node {
    let mut n = Node::dir(format!("(tree chunk {c})").into_bytes(), 0, 0, 0, 0);
    n.extents = vec![crate::snapshot::Extent { offset: 0, chunks: vec![c] }];
    n
}

/// For each chunk: indexed at the copy in a pack that is there and not marked, or else in the
/// source pack the source's index places it in.
fn plan(
    chunks: &[ChunkId],
    src: &LocalIndex,
    dst: &LocalIndex,
    present: &HashSet<PackId>,
    mark: &HashSet<PackId>,
) -> Result<Plan> {
    let mut plan = Plan::default();
    let mut need = BTreeSet::new();
    let mut seen = HashSet::new();
    for c in chunks {
        if !seen.insert(*c) {
            continue;
        }
        if let Some(e) = dst.lookup(c)?
            && present.contains(&e.pack.id)
            && !mark.contains(&e.pack.id)
        {
            plan.reuse.insert(e.pack.id);
            continue;
        }
        let e = src.lookup(c)?.ok_or_else(|| {
            Error::integrity(format!("chunk {c}"), "the snapshot needs it and the source's index does not list it")
        })?;
        need.insert(e.pack.id);
    }
    for p in need {
        if !present.contains(&p) {
            plan.upload.insert(p);
        } else if mark.contains(&p) {
            return Err(Error::Refused(format!(
                "pack {p} is at the copy but its GC marked it for deletion; the next copy run after that GC sends it again"
            )));
        } else {
            plan.index_only.insert(p);
        }
    }
    plan.reuse.retain(|p| !plan.index_only.contains(p));
    Ok(plan)
}

struct Sent {
    pack: PackRef,
    entries: Vec<PackEntry>,
    bytes: u64,
}

/// Read a pack at the source, verify it whole, create it at the copy and check its size there.
async fn send_pack(source: &Vault, dest: &Vault, id: PackId) -> Result<Sent> {
    let key = layout::pack(&id);
    let (bytes, dir) = fetch_verified(source, id).await?;
    let len = bytes.len() as u64;
    dest.backend().create(&key, bytes).await?;
    crate::failpoint::hit("copy-after-pack-put");
    match dest.backend().size(&key).await? {
        Some(n) if n == len => {}
        other => {
            return Err(Error::integrity(
                format!("pack {id} at the copy"),
                format!(
                    "{} after it was written, expected {len} bytes",
                    other.map_or("missing".into(), |n| format!("{n} bytes"))
                ),
            ));
        }
    }
    Ok(Sent { pack: PackRef { id, salt: dir.salt }, entries: dir.entries, bytes: len })
}

/// A pack read from the source and verified whole; one that fails is read once more (a bit
/// flipped in transit is not damage).
async fn fetch_verified(source: &Vault, id: PackId) -> Result<(Bytes, pack::PackDirectory)> {
    let mut first = None;
    for _ in 0..2 {
        let bytes = source.backend().get(&layout::pack(&id)).await?;
        let (keys, b) = (source.keys().clone(), bytes.clone());
        match cpu(move || verify_pack(&keys, &id, &b)).await? {
            Ok(dir) => return Ok((bytes, dir)),
            Err(why) => {
                first.get_or_insert(why);
            }
        }
    }
    Err(Error::integrity(format!("pack {id} at the source"), first.unwrap_or_default()))
}

/// The pack's name is the BLAKE3 of its bytes, its directory opens and every blob decrypts and
/// hashes to its chunk id.
fn verify_pack(keys: &VaultKeys, id: &PackId, bytes: &[u8]) -> std::result::Result<pack::PackDirectory, String> {
    if *blake3::hash(bytes).as_bytes() != id.0 {
        return Err("its content does not match its name (damaged or altered)".into());
    }
    let dir = pack::read_directory_full(keys, bytes).map_err(|e| e.to_string())?;
    for (e, res) in pack::open_all(keys, &dir, bytes) {
        res.map_err(|err| format!("chunk {}: {err}", e.id))?;
    }
    Ok(dir)
}

/// An object named by its content, read and checked at the source.
async fn verified_object(source: &Vault, key: &str, id: &crate::ids::ObjectId) -> Result<Bytes> {
    let bytes = source.backend().get(key).await?;
    if object::content_id(&bytes) != *id {
        return Err(Error::integrity(key.to_string(), "content does not match its name at the source"));
    }
    Ok(bytes)
}

/// Copy a snapshot's receipt, if the source has one that opens; returns how many were written.
async fn copy_receipt(source: &Vault, dest: &Vault, id: &SnapshotId) -> Result<usize> {
    let key = layout::receipt(id);
    let bytes = match source.backend().get(&key).await {
        Ok(b) => b,
        Err(BackendError::NotFound(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    if let Err(e) = object::open_named::<serde_bytes::ByteBuf>(source.keys(), ObjectType::Receipt, &key, &bytes) {
        tracing::warn!(%key, error = %e, "receipt at the source does not open; not copied");
        return Ok(0);
    }
    Ok(usize::from(dest.backend().create(&key, bytes).await? == Created::New))
}

/// Receipts that reached the source after their snapshot was copied.
async fn late_receipts(source: &Vault, dest: &Vault) -> Result<usize> {
    let theirs = listed_ids(dest, layout::RECEIPTS).await?;
    let snapshots = listed_ids(dest, layout::SNAPSHOTS).await?;
    let ours = listed_ids(source, layout::RECEIPTS).await?;
    let mut n = 0;
    for id in ours.iter().filter(|id| snapshots.contains(id) && !theirs.contains(id)) {
        n += copy_receipt(source, dest, id).await?;
    }
    Ok(n)
}

/// How often the copier rewrites its marker while packs go up.
const MARKER_REFRESH: Duration = Duration::from_secs(60);

/// The copier's writer session marker at the copy: the packs it sent and not yet indexed (a GC
/// keeps them, a later run adopts them) and the packs the snapshot in progress depends on.
struct Announcer<'a> {
    vault: &'a Vault,
    id: SessionId,
    marker: SessionMarker,
    written: Instant,
}

impl<'a> Announcer<'a> {
    async fn start(vault: &'a Vault, host: &str) -> Result<Self> {
        let now = crate::clock::now().to_rfc3339();
        let marker = SessionMarker {
            v: 1,
            host: host.to_string(),
            pid: std::process::id(),
            started: now.clone(),
            refreshed: now,
            ..SessionMarker::default()
        };
        let id = SessionId::random();
        crate::backup::write_marker(vault, &id, &marker).await?;
        Ok(Self { vault, id, marker, written: Instant::now() })
    }

    async fn depend_on(&mut self, packs: impl Iterator<Item = PackId>) {
        self.marker.reused = packs.collect::<BTreeSet<_>>().into_iter().collect();
        self.write().await;
    }

    async fn uploaded(&mut self, pack: PackRef) {
        self.marker.packs.push(pack);
        if self.written.elapsed() >= MARKER_REFRESH {
            self.write().await;
        }
    }

    /// The snapshot is in: its packs are indexed and referenced.
    async fn committed(&mut self) {
        self.marker.packs.clear();
        self.marker.reused.clear();
        self.write().await;
    }

    async fn write(&mut self) {
        self.marker.refreshed = crate::clock::now().to_rfc3339();
        match crate::backup::write_marker(self.vault, &self.id, &self.marker).await {
            Ok(()) => self.written = Instant::now(),
            Err(e) => tracing::warn!(error = %e, "could not refresh the copy's session marker"),
        }
    }

    /// Refuse to commit when the marker went unrefreshed so long that a GC may take it for dead.
    fn fenced(&self) -> Result<()> {
        let quiet = self.written.elapsed().as_secs();
        if quiet as i64 > SESSION_LIVE_SECS - 120 {
            return Err(Error::Invalid(format!(
                "commit refused: the copy's session marker was last written {quiet} s ago, so a GC there may have taken it for dead; run the copy again"
            )));
        }
        Ok(())
    }

    async fn finish(self) {
        if let Err(e) = self.vault.backend().delete(&layout::session(&self.id)).await {
            tracing::warn!(error = %e, "could not remove the copy's session marker");
        }
    }
}
