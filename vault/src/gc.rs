//! Garbage collection in two phases, safe against concurrent writers.
//!
//! **Mark**: packs no snapshot references (and no writer session announced) are recorded in
//! `gc/mark` with the time. **Sweep**, at a later run once the mark is older than the grace
//! period: if no writer session is live, the marked packs still unreferenced are removed from the
//! index (segments are rewritten, which also compacts them) and only then deleted.
//!
//! Why this is safe:
//! - a writer that started before the mark and commits before the sweep: the sweep recomputes
//!   references from the snapshots, so its packs are kept;
//! - a writer still running at sweep time keeps its session marker fresh: the sweep is postponed.
//!   "Fresh" is judged without the writer's clock: a marker is live until this maintainer has
//!   seen the very same bytes for a whole lease ([`SESSION_LIVE_SECS`]) by its own clock (a
//!   running writer rewrites its marker every 5 minutes, each time with a new salt, so its bytes
//!   change), and the grace period counts from when this maintainer first saw the mark;
//! - a writer that starts after the mark reads `gc/mark` after writing its own marker and does not
//!   deduplicate against marked packs;
//! - a writer that was stopped so long that its marker looks dead fences itself: it refuses to
//!   commit once its own marker has not been refreshed within [`SESSION_LIVE_SECS`] minus a margin.
//!
//! - an index segment planted by a key holder that maps live chunks to another pack (so the pack
//!   that really holds them looks unreferenced): before the sweep deletes a pack, its own
//!   directory is read, and a live chunk it holds is looked up where the index claims it; unless
//!   that blob decrypts and hashes to the chunk, the pack is kept and the segment named.
//!
//! Any listing error, an unreadable snapshot, or a listing that lacks a pack a snapshot needs
//! aborts the run before anything is deleted. A session marker that does not open blocks sweeps
//! for one lease, then is moved to `quarantine/` (kept, never deleted) and reported.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::backend::BackendError;
use crate::crypto::ObjectType;
use crate::error::{Error, Result};
use crate::ids::{ChunkId, ObjectId, PackId};
use crate::index::segment::{MAX_SEGMENT_ENTRIES, PackRef};
use crate::index::{IndexEntry, Segment};
use crate::pack::PackEntry;
use crate::session::{ABANDONED, CommitGuard, GcMark, SESSION_LIVE_SECS, SessionMarker};
use crate::vault::Vault;
use crate::{layout, object};

/// What a run may do.
#[derive(Clone, Default)]
pub struct GcOptions {
    /// The mark must be at least this old before its packs are deleted.
    pub grace: Duration,
    /// Asked before anything is deleted; an error aborts the run.
    pub guard: Option<CommitGuard>,
    /// Snapshots the maintainer knows exist (receipted, or recorded by this host, minus those
    /// it forgot): a listing without any of them aborts the run.
    pub expected: BTreeSet<ObjectId>,
    /// Snapshots being let go (forgotten in this run, or refused as still locked and to be
    /// forgotten later): their locks are not extended.
    pub forgotten: BTreeSet<ObjectId>,
    /// How often the maintainer runs; zero when not known ([`crate::lock::ASSUMED_INTERVAL`]
    /// is assumed). In a locked vault, locks ending within the grace period plus this are
    /// extended, and a retention not longer than both is refused (FM-34).
    pub maintenance_interval: Duration,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Snapshots whose references were counted.
    pub snapshots: usize,
    /// Packs listed.
    pub packs: usize,
    /// Packs no snapshot references.
    pub unreferenced: usize,
    /// Packs recorded in a new mark.
    pub packs_marked: usize,
    /// Packs deleted by the sweep.
    pub packs_deleted: usize,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Index segments rewritten into fewer.
    pub segments_compacted: usize,
    /// Why a due sweep did not run.
    pub postponed: Option<String>,
    /// Marked packs the sweep kept, and why: a live chunk the index places elsewhere, where it
    /// does not read, or a directory that does not read.
    pub kept: Vec<String>,
    /// Index segments that place a live chunk in a pack that does not hold it (planted or
    /// damaged); `check` and an alert should follow.
    pub false_index_entries: Vec<String>,
    /// A sweep ran in this run.
    pub swept: bool,
    /// Session markers that did not open for a whole lease, moved to `quarantine/`, with why.
    pub quarantined: Vec<String>,
    /// Each pack deleted, with why it could go: for the audit log.
    pub deleted: Vec<String>,
    /// Doomed packs that Object Lock (on them or on a segment indexing them) still keeps, with
    /// until when: not a finding, a later run deletes them.
    pub waiting: Vec<String>,
    /// Live objects whose Object Lock was extended.
    pub locks_extended: usize,
    /// Live objects whose lock could not be read or extended, with why (alerted).
    pub lock_errors: Vec<String>,
    /// Session markers unchanged for a day (their writers could not delete them) removed.
    pub stale_markers_removed: usize,
    /// Old versions of rewritten objects (session markers, the mark) removed.
    pub old_versions_removed: usize,
    /// The snapshots listed (for the caller's record of what to expect next time).
    #[serde(skip)]
    pub listed_snapshots: BTreeSet<ObjectId>,
}

/// What this maintainer saw of session markers and the mark, by its own clock: per object, the
/// BLAKE3 of its bytes and when it first saw those bytes. Kept in the maintainer's cache
/// (`<cache>/<vault id>/gc-observed.json`); lost or damaged, everything looks new, which only
/// postpones sweeps.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
struct Observations {
    seen: BTreeMap<String, (String, i64)>,
}

impl Observations {
    fn path(vault: &Vault, cache: &Path) -> std::path::PathBuf {
        vault.cache_dir(cache).join("gc-observed.json")
    }

    async fn load(path: &Path) -> Self {
        let path = path.to_path_buf();
        let read = tokio::task::spawn_blocking(move || std::fs::read(path)).await;
        read.ok().and_then(Result::ok).and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    async fn save(&self, path: &Path) -> Result<()> {
        let (path, bytes) = (path.to_path_buf(), serde_json::to_vec(self).unwrap_or_default());
        tokio::task::spawn_blocking(move || {
            crate::localfile::write_atomic(&path, &bytes).map_err(|e| Error::io(path.display(), e))
        })
        .await
        .map_err(|e| Error::Invalid(format!("cache write task failed: {e}")))?
    }

    /// Note `bytes` at `key` now; returns for how many seconds these same bytes have been seen.
    fn unchanged_for(&mut self, key: &str, bytes: &[u8], now: i64) -> u64 {
        let hash = blake3::hash(bytes).to_hex().to_string();
        match self.seen.get(key) {
            // `since` comes from a file: no arithmetic on it may overflow.
            Some((h, since)) if *h == hash => now.saturating_sub(*since).max(0) as u64,
            _ => {
                let _ = self.seen.insert(key.to_string(), (hash, now));
                0
            }
        }
    }
}

/// A marker a session wrote when it gave up (it will never commit): not a live writer.
fn abandoned(m: &SessionMarker) -> bool {
    m.refreshed == ABANDONED && m.started == ABANDONED
}

fn guard(opts: &GcOptions) -> Result<()> {
    match &opts.guard {
        Some(g) => (g.0)().map_err(|why| Error::Invalid(format!("GC stopped before deleting anything: {why}"))),
        None => Ok(()),
    }
}

/// Session markers: (live ones, packs announced by recent ones). Liveness is judged by how long
/// this maintainer has seen a marker unchanged, never by the time the writer wrote into it. A
/// marker that does not open blocks sweeps for a lease, then goes to `quarantine/`.
async fn sessions(
    vault: &Vault,
    seen: &mut Observations,
    report: &mut GcReport,
) -> Result<(Vec<String>, HashSet<PackId>)> {
    let now = crate::clock::now().timestamp();
    let lease = SESSION_LIVE_SECS as u64;
    let mut live = Vec::new();
    let mut announced = HashSet::new();
    let mut listed = HashSet::new();
    for info in vault.backend().list(layout::SESSIONS).await? {
        let bytes = match vault.backend().get(&info.key).await {
            Ok(b) => b,
            Err(BackendError::NotFound(_)) => continue, // finished meanwhile
            Err(e) => return Err(e.into()),
        };
        listed.insert(info.key.clone());
        let same_for = seen.unchanged_for(&info.key, &bytes, now);
        let m = match object::open_named::<SessionMarker>(vault.keys(), ObjectType::Session, &info.key, &bytes) {
            Ok(m) => m,
            Err(e) if same_for < lease => {
                // Cannot tell yet: treat as live, never as dead, for one lease.
                live.push(format!(
                    "{} (unreadable marker, {same_for} s of {lease} s before it is quarantined: {e})",
                    info.key
                ));
                continue;
            }
            Err(e) => {
                quarantine(vault, &info.key, &bytes).await?;
                report.quarantined.push(format!(
                    "{} did not open for {same_for} s ({e}); moved to quarantine/{}",
                    info.key, info.key
                ));
                continue;
            }
        };
        if abandoned(&m) {
            // It will never commit: neither waited for nor protecting its packs (the next
            // backup adopts them if they are still there).
            continue;
        }
        if same_for < lease {
            announced.extend(m.reused.iter().copied());
            live.push(format!("{} on {} (rewritten within the last {lease} s)", info.key, m.host));
        }
        if same_for < 24 * 3600 {
            announced.extend(m.packs.iter().map(|p| p.id));
        } else {
            // Unchanged for a day: its writer is long gone (it fences itself after 13 minutes
            // without a rewrite). Writers without delete rights leave theirs behind.
            match vault.backend().delete(&info.key).await {
                Ok(()) => report.stale_markers_removed += 1,
                Err(e) => tracing::warn!(key = %info.key, error = %e, "could not remove a stale session marker"),
            }
        }
    }
    seen.seen.retain(|k, _| !k.starts_with(layout::SESSIONS) || listed.contains(k));
    Ok((live, announced))
}

/// Keep a session marker that does not open under `quarantine/` (create-once), then remove it
/// from `sessions/`, so it neither blocks GC forever nor is lost.
async fn quarantine(vault: &Vault, key: &str, bytes: &Bytes) -> Result<()> {
    let to = format!("{}{key}", layout::QUARANTINE);
    let _ = vault.backend().create(&to, bytes.clone()).await?;
    match vault.backend().delete(key).await {
        Ok(()) | Err(BackendError::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Packs the snapshots reference, through the index; and for every live chunk in `watch` (the
/// chunks of packs about to be swept), where the index places it.
async fn referenced(
    vault: &Arc<Vault>,
    cache: &Path,
    watch: &HashMap<ChunkId, Vec<PackId>>,
    expected: &BTreeSet<ObjectId>,
    report: &mut GcReport,
) -> Result<(HashSet<PackId>, HashMap<ChunkId, IndexEntry>)> {
    for prefix in layout::REQUIRED {
        vault.backend().require_prefix(prefix).await.map_err(|e| {
            Error::Invalid(format!(
                "GC deletes nothing: {e}; a vault's {prefix} never goes away on its own (run `check`)"
            ))
        })?;
    }
    let index = vault.sync_index(cache).await?;
    let mut packs = HashSet::new();
    let mut placed = HashMap::new();
    let snapshots = vault.snapshots().await?;
    report.listed_snapshots = snapshots.iter().map(|(id, _)| *id).collect();
    let missing: Vec<String> = expected.difference(&report.listed_snapshots).map(ToString::to_string).collect();
    if !missing.is_empty() {
        return Err(Error::SnapshotsMissing(missing));
    }
    for (id, m) in snapshots {
        let m = m.map_err(|e| {
            Error::Invalid(format!("snapshot {id} is unreadable ({e}); GC refuses to run until `check` is clean"))
        })?;
        let nodes = vault.read_tree(&m, &index).await?;
        for c in m.tree.iter().chain(nodes.iter().flat_map(|n| n.chunks())) {
            let e = index.lookup(c)?.ok_or_else(|| {
                Error::Invalid(format!("snapshot {id} references chunk {c} that no index segment lists; GC refuses to run until `check` is clean"))
            })?;
            packs.insert(e.pack.id);
            if watch.contains_key(c) {
                let _ = placed.insert(*c, e);
            }
        }
        report.snapshots += 1;
    }
    Ok((packs, placed))
}

/// The chunks each marked pack's own directory lists; packs whose directory does not read are
/// returned apart (they are not deleted: what they hold cannot be known).
async fn marked_chunks(
    vault: &Vault,
    packs: &[PackId],
) -> Result<(HashMap<ChunkId, Vec<PackId>>, BTreeMap<PackId, String>)> {
    let mut chunks: HashMap<ChunkId, Vec<PackId>> = HashMap::new();
    let mut unreadable = BTreeMap::new();
    for p in packs {
        match vault.read_pack_directory(p).await {
            Ok(dir) => {
                for e in dir.entries {
                    chunks.entry(e.id).or_default().push(*p);
                }
            }
            Err(Error::Backend(BackendError::NotFound(_))) => {}
            Err(e @ Error::Integrity { .. }) => {
                let _ = unreadable.insert(*p, e.to_string());
            }
            Err(e) => return Err(e),
        }
    }
    Ok((chunks, unreadable))
}

/// Of the `doomed` packs, those that must stay: a live chunk in one of them that the index
/// places in a pack where it does not read. Names the segments holding each false entry.
async fn still_needed(
    vault: &Vault,
    doomed: &BTreeSet<PackId>,
    watch: &HashMap<ChunkId, Vec<PackId>>,
    placed: &HashMap<ChunkId, IndexEntry>,
    report: &mut GcReport,
) -> Result<BTreeSet<PackId>> {
    let mut keep = BTreeSet::new();
    let mut lies: Vec<IndexEntry> = Vec::new();
    for (c, e) in placed {
        let holders: Vec<PackId> = watch.get(c).into_iter().flatten().filter(|p| doomed.contains(p)).copied().collect();
        if holders.is_empty() {
            continue;
        }
        match vault.read_chunk(e).await {
            Ok(_) => {}
            Err(Error::Integrity { .. }) => {
                for p in &holders {
                    if keep.insert(*p) {
                        report.kept.push(format!(
                            "pack {p}: holds live chunk {c}, which the index places in pack {} where it does not read",
                            e.pack.id
                        ));
                    }
                }
                lies.push(*e);
            }
            Err(other) => return Err(other),
        }
    }
    if !lies.is_empty() {
        for info in vault.backend().list(layout::INDEX).await? {
            let Some(id) = layout::id_of::<ObjectId>(&info.key) else { continue };
            let Ok(seg) = vault.read_segment(&id).await else { continue };
            for l in &lies {
                if seg.iter().any(|x| x.id == l.id && x.pack.id == l.pack.id && x.counter == l.counter) {
                    report.false_index_entries.push(format!(
                        "index segment {id} places chunk {} in pack {} (blob {}), where it does not read",
                        l.id, l.pack.id, l.counter
                    ));
                }
            }
        }
    }
    Ok(keep)
}

/// One GC run: sweep a mark that is old enough, then mark what is unreferenced now.
///
/// # Errors
/// Listing errors, unreadable snapshots, implausible listings, or a failed guard: in each case
/// nothing has been deleted.
pub async fn run(vault: Arc<Vault>, cache: &Path, opts: &GcOptions) -> Result<GcReport> {
    // GC rewrites index segments and the mark; a stale slot would seal them under an old epoch.
    vault.check_epoch().await?;
    let interval =
        if opts.maintenance_interval.is_zero() { crate::lock::ASSUMED_INTERVAL } else { opts.maintenance_interval };
    let lock = crate::lock::effective(&vault);
    if let Some(r) = lock {
        crate::lock::check_covers(r, opts.grace, interval)?;
    }
    let mut report = GcReport::default();
    let observed_at = Observations::path(&vault, cache);
    let mut seen = Observations::load(&observed_at).await;
    let now = crate::clock::now().timestamp();
    let mark = crate::session::read_mark_bytes(&vault)
        .await?
        .map(|(mark, bytes)| (mark, seen.unchanged_for(layout::GC_MARK, &bytes, now)));
    // Sessions first: a writer that commits after this listing has its snapshot in the listing
    // below; one that is live now postpones the sweep.
    let (live, announced) = sessions(&vault, &mut seen, &mut report).await?;
    seen.save(&observed_at).await?;
    // A sweep that is due reads the marked packs' directories first, so the walk below can say
    // where the index places each live chunk they hold.
    let due = mark.as_ref().is_some_and(|(_, age)| *age >= opts.grace.as_secs() && live.is_empty());
    let (watch, unreadable) = match (&mark, due) {
        (Some((m, _)), true) => marked_chunks(&vault, &m.packs).await?,
        _ => (HashMap::new(), BTreeMap::new()),
    };
    let (refs, placed) = referenced(&vault, cache, &watch, &opts.expected, &mut report).await?;
    let listing = vault.backend().list(layout::DATA).await?;
    let listed: std::collections::HashMap<PackId, u64> =
        listing.iter().filter_map(|i| layout::id_of::<PackId>(&i.key).map(|id| (id, i.size))).collect();
    report.packs = listed.len();
    let missing = refs.iter().filter(|p| !listed.contains_key(p)).count();
    if missing > 0 {
        return Err(Error::Invalid(format!(
            "implausible pack listing: {missing} packs that snapshots need are not listed; GC deletes nothing (run `check`)"
        )));
    }
    let unreferenced: BTreeSet<PackId> =
        listed.keys().filter(|p| !refs.contains(p) && !announced.contains(p)).copied().collect();
    report.unreferenced = unreferenced.len();
    if let Some(r) = lock {
        let live: BTreeSet<PackId> = refs.iter().copied().collect();
        let done = crate::lock::extend(&vault, &live, &opts.forgotten, r, opts.grace.saturating_add(interval)).await?;
        report.locks_extended = done.extended;
        report.lock_errors = done.errors;
    }
    let versioned = vault.storage_versioning().is_some_and(|v| v.keeps_versions());

    if let Some((mark, age)) = mark {
        if age < opts.grace.as_secs() {
            report.postponed = Some(format!(
                "this maintainer has seen the mark for {age} s; packs are deleted {} s after that",
                opts.grace.as_secs()
            ));
            return Ok(report);
        }
        if !live.is_empty() {
            report.postponed = Some(format!("writer sessions are live: {}", live.join(", ")));
            return Ok(report);
        }
        let mut doomed: BTreeSet<PackId> = mark.packs.iter().filter(|p| unreferenced.contains(p)).copied().collect();
        for (p, why) in &unreadable {
            if doomed.remove(p) {
                report.kept.push(format!("pack {p}: its directory does not read ({why}); not deleted unseen"));
            }
        }
        let keep = still_needed(&vault, &doomed, &watch, &placed, &mut report).await?;
        report.swept = true;
        doomed.retain(|p| !keep.contains(p));
        if lock.is_some() {
            let keys = doomed.iter().map(layout::pack).collect();
            for (key, until) in crate::lock::still_locked(vault.backend(), keys).await? {
                if let Some(p) = layout::id_of::<PackId>(&key).filter(|p| doomed.remove(p)) {
                    report
                        .waiting
                        .push(format!("pack {p}: Object Lock keeps it until {until}; a later run deletes it"));
                }
            }
        }
        // Compacted segments and the next mark are sealed: not under an epoch that ended meanwhile.
        vault.check_epoch().await?;
        guard(opts)?;
        if !doomed.is_empty() {
            report.segments_compacted = if lock.is_some() {
                compact_locked(&vault, &mut doomed, &mut report).await?
            } else {
                compact_index(&vault, &doomed).await?
            };
            // Live chunks each doomed pack holds (read where the index places them), for the audit.
            let mut held: HashMap<PackId, usize> = HashMap::new();
            for p in placed.keys().filter_map(|c| watch.get(c)).flatten() {
                *held.entry(*p).or_default() += 1;
            }
            for p in &doomed.clone() {
                guard(opts)?;
                crate::failpoint::hit("gc-before-pack-delete");
                match vault.backend().delete(&layout::pack(p)).await {
                    Ok(()) => {}
                    // Out of the index already: an unreferenced pack a later run deletes.
                    Err(BackendError::Retained { detail, .. }) => {
                        doomed.remove(p);
                        report
                            .waiting
                            .push(format!("pack {p}: Object Lock keeps it ({detail}); a later run deletes it"));
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
                report.packs_deleted += 1;
                let bytes = listed.get(p).copied().unwrap_or(0);
                report.bytes_freed += bytes;
                report.deleted.push(format!(
                    "pack {p} ({bytes} bytes): marked at {}; referenced by none of the {} snapshots; in no live writer's marker; its directory read: {} live chunk(s) in it, each read and verified where the index places it",
                    mark.marked_at,
                    report.snapshots,
                    held.get(p).copied().unwrap_or(0)
                ));
            }
        }
        crate::failpoint::hit("gc-before-mark-delete");
        vault.backend().delete(layout::GC_MARK).await?;
        let unreferenced: BTreeSet<PackId> = unreferenced.difference(&doomed).copied().collect();
        write_mark(&vault, &unreferenced, &mut report, &mut seen).await?;
        seen.save(&observed_at).await?;
    } else {
        vault.check_epoch().await?;
        write_mark(&vault, &unreferenced, &mut report, &mut seen).await?;
        seen.save(&observed_at).await?;
    }
    if versioned {
        report.old_versions_removed = crate::lock::clean_rewritten(vault.backend()).await?;
    }
    Ok(report)
}

/// Write a new mark; the grace period counts from now, by this maintainer's clock.
async fn write_mark(
    vault: &Vault,
    packs: &BTreeSet<PackId>,
    report: &mut GcReport,
    seen: &mut Observations,
) -> Result<()> {
    if packs.is_empty() {
        return Ok(());
    }
    let now = crate::clock::now();
    let mark = GcMark { v: 1, marked_at: now.to_rfc3339(), packs: packs.iter().copied().collect() };
    let bytes = object::seal_named(vault.keys(), ObjectType::GcMark, layout::GC_MARK, &mark);
    let _ = seen.unchanged_for(layout::GC_MARK, &bytes, now.timestamp());
    vault.backend().overwrite(layout::GC_MARK, Bytes::from(bytes)).await?;
    crate::failpoint::hit("gc-after-mark");
    report.packs_marked = packs.len();
    Ok(())
}

/// Rewrite the index without the entries of `doomed` packs, into as few segments as fit; the
/// new segments are written before the old ones are deleted, so a crash leaves duplicates (which
/// readers tolerate), never a gap.
async fn compact_index(vault: &Vault, doomed: &BTreeSet<PackId>) -> Result<usize> {
    let old: Vec<ObjectId> =
        vault.backend().list(layout::INDEX).await?.iter().filter_map(|i| layout::id_of(&i.key)).collect();
    let mut segments = Vec::with_capacity(old.len());
    for id in &old {
        segments.push(vault.read_segment(id).await?);
    }
    let mut written = HashSet::new();
    for seg in compacted(&segments, &old, doomed) {
        written.insert(vault.write_segment(&seg).await?);
        crate::failpoint::hit("gc-after-segment-write");
    }
    for id in &old {
        if !written.contains(id) {
            vault.backend().delete(&layout::segment(id)).await?;
            crate::failpoint::hit("gc-after-segment-delete");
        }
    }
    Ok(old.len())
}

/// [`compact_index`] in a locked vault: only the segments that index a doomed pack are
/// rewritten (a rewrite would lock the others anew). A segment a lock still keeps cannot go, so
/// the doomed packs it indexes are kept for a later run.
async fn compact_locked(vault: &Vault, doomed: &mut BTreeSet<PackId>, report: &mut GcReport) -> Result<usize> {
    let mut touched: Vec<(ObjectId, Segment)> = Vec::new();
    for info in vault.backend().list(layout::INDEX).await? {
        let Some(id) = layout::id_of::<ObjectId>(&info.key) else { continue };
        let seg = vault.read_segment(&id).await?;
        if seg.packs.iter().any(|p| doomed.contains(&p.id)) {
            touched.push((id, seg));
        }
    }
    let keys = touched.iter().map(|(id, _)| layout::segment(id)).collect();
    let held = crate::lock::still_locked(vault.backend(), keys).await?;
    touched.retain(|(id, seg)| {
        let Some(until) = held.get(&layout::segment(id)) else { return true };
        for p in seg.packs.iter().filter(|p| doomed.remove(&p.id)) {
            report.waiting.push(format!(
                "pack {}: indexed by segment {id}, which Object Lock keeps until {until}; a later run deletes it",
                p.id
            ));
        }
        false
    });
    if doomed.is_empty() {
        return Ok(0);
    }
    let (old, segments): (Vec<ObjectId>, Vec<Segment>) = touched.into_iter().unzip();
    let mut written = HashSet::new();
    for seg in compacted(&segments, &old, doomed) {
        written.insert(vault.write_segment(&seg).await?);
        crate::failpoint::hit("gc-after-segment-write");
    }
    for (id, seg) in old.iter().zip(&segments).filter(|(id, _)| !written.contains(*id)) {
        match vault.backend().delete(&layout::segment(id)).await {
            Ok(()) => {}
            // An older version still kept (a legal hold, a lock set by someone else): the
            // segment stays, and with it every doomed pack it indexes.
            Err(BackendError::Retained { detail, .. }) => {
                for p in seg.packs.iter().filter(|p| doomed.remove(&p.id)) {
                    report.waiting.push(format!("pack {}: indexed by segment {id}, kept ({detail})", p.id));
                }
            }
            Err(e) => return Err(e.into()),
        }
        crate::failpoint::hit("gc-after-segment-delete");
    }
    Ok(old.len())
}

/// The index `segments` (named `old`) without the entries of `doomed` packs, in as few segments
/// as fit `MAX_SEGMENT_ENTRIES` (a pack's entries are never split), each sorted by chunk id. A
/// pack indexed twice, or one blob listed twice, comes out once.
pub fn compacted(segments: &[Segment], old: &[ObjectId], doomed: &BTreeSet<PackId>) -> Vec<Segment> {
    // Per pack, its entries by nonce counter (a pack indexed twice collapses to one).
    let mut kept: BTreeMap<PackId, (PackRef, BTreeMap<u32, PackEntry>)> = BTreeMap::new();
    let mut generation = 0;
    for seg in segments {
        generation = generation.max(seg.generation);
        for (pack_ix, counter, entry) in &seg.entries {
            let Some(pack) = seg.packs.get(*pack_ix as usize) else { continue };
            if !doomed.contains(&pack.id) {
                let _ = kept.entry(pack.id).or_insert_with(|| (*pack, BTreeMap::new())).1.insert(*counter, *entry);
            }
        }
    }
    let fresh = || Segment { generation: generation + 1, supersedes: old.to_vec(), ..Segment::default() };
    let mut segments = vec![fresh()];
    for (pack, entries) in kept.into_values() {
        if segments
            .last()
            .is_some_and(|cur| !cur.entries.is_empty() && cur.entries.len() + entries.len() > MAX_SEGMENT_ENTRIES)
        {
            segments.push(fresh());
        }
        let Some(cur) = segments.last_mut() else { continue };
        let ix = cur.packs.len() as u32;
        cur.packs.push(pack);
        cur.entries.extend(entries.into_iter().map(|(counter, e)| (ix, counter, e)));
    }
    for seg in &mut segments {
        seg.entries.sort_by_key(|a| a.2.id);
    }
    segments.into_iter().filter(|s| !s.packs.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use proptest::prelude::*;

    fn entry(id: u8, n: u8, offset: u32) -> PackEntry {
        let mut chunk = [0u8; 32];
        chunk[0] = id;
        chunk[1] = n;
        PackEntry {
            id: ChunkId(chunk),
            kind: ObjectType::DataChunk,
            codec: Codec::Raw,
            offset,
            stored_len: 100,
            raw_len: 84,
        }
    }

    proptest! {
        /// Compaction keeps exactly the (chunk, pack, blob) entries of live packs, each once,
        /// drops every entry of a doomed pack, never splits a pack, and keeps segments within
        /// their size unless one pack alone is larger.
        #[test]
        fn compaction_keeps_every_live_entry_once_and_no_doomed_one(
            layout in proptest::collection::vec(
                proptest::collection::vec((0u8..6, 0u8..40), 0..30), 1..6),
            doomed_mask in any::<u8>(),
        ) {
            let pack = |p: u8| PackRef { id: PackId([p; 32]), salt: [p; 32] };
            let segments: Vec<Segment> = layout.iter().map(|seg| {
                let mut s = Segment::default();
                for (p, n) in seg {
                    let ix = match s.packs.iter().position(|r| r.id == pack(*p).id) {
                        Some(i) => i,
                        None => { s.packs.push(pack(*p)); s.packs.len() - 1 }
                    };
                    s.entries.push((ix as u32, u32::from(*n), entry(*p, *n, u32::from(*n) * 100)));
                }
                s
            }).collect();
            let doomed: BTreeSet<PackId> = (0u8..6).filter(|p| doomed_mask & (1 << p) != 0).map(|p| pack(p).id).collect();
            let flat = |segs: &[Segment]| -> Vec<(ChunkId, PackId, u32, u32)> {
                let mut v: Vec<_> = segs.iter().flat_map(|s| s.iter().map(|e| (e.id, e.pack.id, e.counter, e.blob.offset))).collect();
                v.sort();
                v
            };
            let mut want = flat(&segments);
            want.retain(|e| !doomed.contains(&e.1));
            want.dedup();
            let out = compacted(&segments, &[], &doomed);
            prop_assert_eq!(flat(&out), want);
            for s in &out {
                prop_assert!(s.entries.windows(2).all(|w| w[0].2.id <= w[1].2.id), "sorted by chunk id");
                let mut seen = BTreeSet::new();
                prop_assert!(s.packs.iter().all(|p| seen.insert(p.id)), "a pack once per segment");
                prop_assert!(s.entries.len() <= MAX_SEGMENT_ENTRIES || s.packs.len() == 1);
            }
            let packs_in = |p: &PackId| out.iter().filter(|s| s.packs.iter().any(|r| r.id == *p)).count();
            for p in (0u8..6).map(|p| pack(p).id) {
                prop_assert!(packs_in(&p) <= 1, "a pack is never split across segments");
            }
        }
    }
}
