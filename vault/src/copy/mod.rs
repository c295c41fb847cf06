//! Copy snapshots to a second site of the same vault (`tresor-agent copy`, decision 0017).
//!
//! ```text
//! site::mirror (config, epochs/, keys/) -> per snapshot, oldest first:
//!   plan: each chunk of its tree -> already indexed at the copy (reuse that pack)
//!                                 | else the source pack holding it (send it, or index it if there)
//!   source pack --get--> verify (name = BLAKE3 of bytes, directory, every blob opens)
//!       --announce, create--> copy pack, size checked      [at most `uploads` packs in flight]
//!   index segments for the new packs -> structure check at the copy
//!   -> commit point: the snapshot object, byte for byte -> its receipt
//! ```
//!
//! Every object keeps its name and bytes, so a run that was killed resumes where it stopped: a
//! pack already at the copy is not sent again, an uploaded pack the copy does not index yet is
//! verified there and indexed from its own directory. The copier announces itself at the copy
//! with a writer session marker (`announce.rs`), so a GC there neither deletes what it uploads nor
//! sweeps while it runs.

mod announce;
mod send;
pub mod site;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

pub use site::{SiteReport, mirror};

use crate::backend::{BackendError, Created};
use crate::crypto::ObjectType;
use crate::error::{Error, Result};
use crate::ids::{ChunkId, ObjectId, PackId, SnapshotId};
use crate::index::{LocalIndex, PackRef, Segment};
use crate::pack::PackEntry;
use crate::snapshot::{Manifest, Node};
use crate::vault::{Vault, cpu};
use crate::{layout, object};
use announce::Announcer;

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
    /// Selected snapshots the source no longer has (forgotten since they were chosen).
    pub gone: Vec<SnapshotId>,
    /// Every snapshot the copy holds after the run, each checked against its name there.
    pub held: Vec<SnapshotId>,
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
    /// Signed documents copied (drill reports, audit checkpoints), so the evidence outlives the
    /// first site.
    pub documents_copied: usize,
}

/// A snapshot a run could not copy.
#[derive(Debug, Clone)]
pub struct CopyFailure {
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// Why, in words.
    pub why: String,
    /// Damage was found (at the source, or at the copy), rather than the snapshot postponed.
    pub damage: bool,
}

/// Copy `opts.snapshots` (or all) from `source` to `dest`, which [`mirror`] made a site of the
/// same vault. `cache` is this host's cache root.
///
/// # Errors
/// Storage failures, a copy that is not of this vault, or a key slot that cannot write. A
/// snapshot that cannot be copied (damaged, a pack the copy's GC is about to delete) is reported
/// in [`CopyReport::failed`] and the others are copied.
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
    let wanted: Vec<SnapshotId> = match &opts.snapshots {
        None => source.snapshots().await?.into_iter().map(|(id, _)| id).collect(),
        Some(ids) => ids.clone(),
    };
    let mut report = CopyReport::default();
    let (mut held, garbage) = held_snapshots(dest).await?;
    let session = Announcer::start(dest, &opts.host, opts.uploads).await?;
    let result = async {
        let sizes: HashMap<PackId, u64> = source
            .backend()
            .list(layout::DATA)
            .await?
            .into_iter()
            .filter_map(|i| layout::id_of::<PackId>(&i.key).map(|p| (p, i.size)))
            .collect();
        let one = SnapshotCopy { source, dest, src_index: &src_index, cache, uploads: opts.uploads, sizes: &sizes };
        // The copy's packs, listed once and kept up to date as packs are sent: while our marker
        // is live no sweep runs there, and one that started before it is caught at each commit.
        let mut present: HashSet<PackId> =
            dest.backend().list(layout::DATA).await?.iter().filter_map(|i| layout::id_of(&i.key)).collect();
        for id in wanted {
            if held.contains(&id) {
                report.present += 1;
                continue;
            }
            if garbage.contains(&id) {
                let why = format!("the copy holds another object under {}; remove it there", layout::snapshot(&id));
                report.failed.push(CopyFailure { snapshot: id, why, damage: true });
                continue;
            }
            match one.run(id, &session, &mut present, &mut report).await {
                Ok(()) => {
                    report.copied.push(id);
                    held.insert(id);
                }
                Err(Error::SnapshotNotFound(_)) => report.gone.push(id),
                // An object it needs went away meanwhile (a GC at either site): it waits.
                Err(Error::Backend(BackendError::NotFound(key))) => {
                    let why = format!("{key} went away while the copy ran (a GC?); the next copy run tries again");
                    report.failed.push(CopyFailure { snapshot: id, why, damage: false });
                }
                Err(e @ (Error::Integrity { .. } | Error::Refused(_))) => {
                    tracing::warn!(snapshot = %id, error = %e, "snapshot not copied");
                    let damage = !matches!(e, Error::Refused(_));
                    report.failed.push(CopyFailure { snapshot: id, why: e.to_string(), damage });
                }
                Err(e) => return Err(e),
            }
        }
        report.receipts_copied += late_receipts(source, dest, &held).await?;
        report.documents_copied += documents(source, dest).await?;
        Ok(())
    }
    .await;
    session.finish().await;
    result?;
    report.held = held.into_iter().collect();
    report.held.sort();
    Ok(report)
}

/// The snapshots the copy holds, each read and checked against its name, and the names that
/// hold something else.
async fn held_snapshots(dest: &Vault) -> Result<(HashSet<SnapshotId>, HashSet<SnapshotId>)> {
    let (mut held, mut garbage) = (HashSet::new(), HashSet::new());
    for info in dest.backend().list(layout::SNAPSHOTS).await? {
        let Some(id) = layout::id_of::<SnapshotId>(&info.key) else { continue };
        match dest.backend().get(&info.key).await {
            Ok(bytes) if object::content_id(&bytes) == id => held.insert(id),
            Ok(_) => garbage.insert(id),
            Err(BackendError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
    }
    Ok((held, garbage))
}

/// One snapshot's copy.
struct SnapshotCopy<'a> {
    source: &'a Arc<Vault>,
    dest: &'a Arc<Vault>,
    src_index: &'a Arc<LocalIndex>,
    cache: &'a Path,
    uploads: usize,
    /// The source's packs by their listing: (id, bytes).
    sizes: &'a HashMap<PackId, u64>,
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

impl Plan {
    fn all(&self) -> impl Iterator<Item = &PackId> {
        self.reuse.iter().chain(&self.index_only).chain(&self.upload)
    }
}

impl SnapshotCopy<'_> {
    async fn run(
        &self,
        id: SnapshotId,
        session: &Announcer,
        present: &mut HashSet<PackId>,
        report: &mut CopyReport,
    ) -> Result<()> {
        let m = self.source.load_snapshot(&id).await?;
        let nodes = Arc::new(self.source.read_tree(&m, self.src_index).await?);
        let dest_index = self.dest.sync_index(self.cache).await?;
        // Read after our marker exists: a sweep that did not see it is still holding its mark.
        let mark = crate::session::marked_packs(self.dest).await?;
        let chunks: Vec<ChunkId> = m.tree.iter().chain(nodes.iter().flat_map(|n| n.chunks())).copied().collect();
        let (src, dst, pr, mk) = (self.src_index.clone(), dest_index.clone(), present.clone(), mark.clone());
        let plan = cpu(move || plan(&chunks, &src, &dst, &pr, &mk)).await??;
        report.packs_present += plan.reuse.len() + plan.index_only.len();
        session.depend_on(plan.reuse.iter().chain(&plan.index_only).copied()).await?;
        let mut new_packs: Vec<(PackRef, Vec<PackEntry>)> = Vec::new();
        for p in &plan.index_only {
            let dir = send::check_held(self.dest, *p).await?;
            new_packs.push((PackRef { id: *p, salt: dir.salt }, dir.entries));
        }
        let mut sent = futures::stream::iter(plan.upload.iter().copied())
            .map(|p| send::send_pack(self.source, self.dest, session, p, self.sizes.get(&p).copied()))
            .buffer_unordered(self.uploads.max(1));
        while let Some(done) = sent.next().await {
            let sent = done?;
            report.packs_copied += 1;
            report.bytes_copied += sent.bytes;
            report.chunks_verified += sent.entries.len() as u64;
            present.insert(sent.pack.id);
            new_packs.push((sent.pack, sent.entries));
        }
        drop(sent);
        self.dest.check_epoch().await?;
        for group in crate::backup::group_packs(&new_packs) {
            self.dest.write_segment(&Segment::from_packs(0, group)).await?;
            report.segments_written += 1;
        }
        self.commit(id, &m, nodes, &plan, &mark, session).await?;
        report.receipts_copied += copy_receipt(self.source, self.dest, &id).await?;
        Ok(())
    }

    /// Check the copy holds the whole snapshot, then write it (the commit point).
    async fn commit(
        &self,
        id: SnapshotId,
        m: &Manifest,
        nodes: Arc<Vec<Node>>,
        plan: &Plan,
        mark_at_plan: &HashSet<PackId>,
        session: &Announcer,
    ) -> Result<()> {
        let dest_index = self.dest.sync_index(self.cache).await?;
        // The files and the tree chunks, in one check (one listing of the copy's packs).
        let mut all = Arc::try_unwrap(nodes).unwrap_or_else(|shared| (*shared).clone());
        all.extend(m.tree.iter().map(|c| tree_node(*c)));
        let found = crate::check_snapshot::structure(self.dest, dest_index.clone(), Arc::new(all)).await?;
        if let Some((path, why)) = found.broken.first() {
            return Err(Error::integrity(
                format!("copy of snapshot {id}"),
                format!("{} entries would not restore at the copy, first {path}: {why}", found.broken.len()),
            ));
        }
        crate::failpoint::hit("copy-before-snapshot-put");
        self.still_there(id, plan, mark_at_plan, &dest_index).await?;
        session.fenced()?;
        self.dest.check_epoch().await?;
        let bytes = verified_object(self.source, &layout::snapshot(&id), &id).await?;
        if self.dest.backend().create(&layout::snapshot(&id), bytes).await? == Created::Existed {
            // Written meanwhile under its name: it must be this snapshot.
            let there = self.dest.backend().get(&layout::snapshot(&id)).await?;
            if object::content_id(&there) != id {
                return Err(Error::integrity(
                    format!("{} at the copy", layout::snapshot(&id)),
                    "another object was put under its name while the copy ran",
                ));
            }
        }
        // Past the commit point: a marker that keeps listing the snapshot's packs only delays a GC.
        if let Err(e) = session.committed().await {
            tracing::warn!(error = %e, "could not clear the copy's session marker after a commit");
        }
        Ok(())
    }

    /// Right before the commit point, as a backup does (`BackupSession::reused_still_there`): a
    /// sweep at the copy that started before our marker deletes only what its mark lists, and
    /// its mark stays until it is done. Unchanged mark and index: nothing was swept. Otherwise
    /// every needed pack must be there and unmarked.
    async fn still_there(
        &self,
        id: SnapshotId,
        plan: &Plan,
        mark_at_plan: &HashSet<PackId>,
        index: &LocalIndex,
    ) -> Result<()> {
        let mark = crate::session::marked_packs(self.dest).await?;
        if mark == *mark_at_plan && !index.is_stale(&self.dest.index_segment_ids().await?) {
            return Ok(());
        }
        for p in plan.all() {
            if mark.contains(p) || self.dest.backend().size(&layout::pack(p)).await?.is_none() {
                return Err(Error::Refused(format!(
                    "pack {p}, which snapshot {id} needs, is being collected by a GC at the copy; \
                     nothing was committed, and the next copy run sends it again"
                )));
            }
        }
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
        // Marked, present or not: a sweep of that mark may be deleting it now, or delete what
        // this run would send under its name.
        if mark.contains(&p) {
            return Err(Error::Refused(format!(
                "pack {p} is marked for deletion by a GC at the copy; the next copy run after that GC sends it again"
            )));
        } else if present.contains(&p) {
            plan.index_only.insert(p);
        } else {
            plan.upload.insert(p);
        }
    }
    plan.reuse.retain(|p| !plan.index_only.contains(p));
    Ok(plan)
}

/// An object named by its content, read and checked at the source.
async fn verified_object(source: &Vault, key: &str, id: &ObjectId) -> Result<Bytes> {
    let bytes = source.backend().get(key).await.map_err(|e| match e {
        BackendError::NotFound(_) => Error::SnapshotNotFound(id.to_hex()),
        e => e.into(),
    })?;
    if object::content_id(&bytes) != *id {
        return Err(Error::integrity(key.to_string(), "content does not match its name at the source"));
    }
    Ok(bytes)
}

/// Copy a snapshot's receipt, if the source has one that opens; returns how many were written.
async fn copy_receipt(source: &Vault, dest: &Vault, id: &SnapshotId) -> Result<usize> {
    copy_sealed(source, dest, &layout::receipt(id), ObjectType::Receipt).await
}

/// Copy one name-bound sealed object (a receipt, a signed document) as it is, if the source has
/// one that opens under its name and type; returns how many were written (0 or 1).
async fn copy_sealed(source: &Vault, dest: &Vault, key: &str, kind: ObjectType) -> Result<usize> {
    let bytes = match source.backend().get(key).await {
        Ok(b) => b,
        Err(BackendError::NotFound(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    if let Err(e) = object::open_named::<serde_bytes::ByteBuf>(source.keys(), kind, key, &bytes) {
        tracing::warn!(%key, error = %e, "sealed object at the source does not open; not copied");
        return Ok(0);
    }
    Ok(usize::from(dest.backend().create(key, bytes).await? == Created::New))
}

/// Receipts that reached the source after their snapshot was copied.
async fn late_receipts(source: &Vault, dest: &Vault, held: &HashSet<SnapshotId>) -> Result<usize> {
    let (theirs, ours) = (receipt_ids(dest).await?, receipt_ids(source).await?);
    let mut n = 0;
    for id in ours.iter().filter(|id| held.contains(id) && !theirs.contains(id)) {
        n += copy_receipt(source, dest, id).await?;
    }
    Ok(n)
}

async fn receipt_ids(v: &Vault) -> Result<HashSet<SnapshotId>> {
    let listed = v.backend().list(layout::RECEIPTS).await?;
    Ok(listed.iter().filter_map(|i| layout::id_of(&i.key)).collect())
}

/// Signed documents (`reports/`, `audit/`) the copy lacks, each opened at the source first.
async fn documents(source: &Vault, dest: &Vault) -> Result<usize> {
    let mut n = 0;
    for prefix in [layout::REPORTS, layout::AUDIT] {
        let theirs: HashSet<String> = dest.backend().list(prefix).await?.into_iter().map(|i| i.key).collect();
        for info in source.backend().list(prefix).await? {
            if theirs.contains(&info.key) || layout::document(&info.key).is_none() {
                continue;
            }
            n += copy_sealed(source, dest, &info.key, ObjectType::Document).await?;
        }
    }
    Ok(n)
}
