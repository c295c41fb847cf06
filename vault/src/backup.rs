//! The backup data path: chunk, hash, dedup, encode, encrypt, pack, upload, then commit.
//!
//! ```text
//! callers' reader threads          pack workers (blocking)           uploader (async task)
//! read -> CDC -> keyed BLAKE3 ->   compress -> encrypt -> verify ->   put packs (N in flight)
//! dedup (index + pending set)  ==> own open pack (<= target size) ==> session marker refresh
//!        [chunk queue: bounded in bytes]       [pack queue: 1 pack]
//! commit: tree chunks -> drain -> index segments -> manifest (the one commit point)
//! ```
//! Every queue is bounded (docs/ARCHITECTURE.md lists the bounds), CPU work runs on blocking
//! threads, and storage I/O is async.

use std::collections::HashSet;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::chunker::Chunker;
use crate::codec;
use crate::crypto::{ObjectType, VaultKeys};
use crate::error::{Error, Result};
use crate::ids::{ChunkId, PackId, SessionId, SnapshotId};
use crate::index::{LocalIndex, MAX_SEGMENT_ENTRIES, PackRef, Segment};
use crate::pack::{PackBuilder, PackEntry};
pub use crate::session::{CommitGuard, SessionMarker};
use crate::snapshot::{Manifest, Node, Summary, encode_tree};
use crate::vault::Vault;
use crate::{failpoint, layout, object};

/// Tuning of one backup run.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Host name recorded in the manifest.
    pub host: String,
    /// Source kind ("files").
    pub source: String,
    /// Paths as given.
    pub paths: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Parent snapshot used for change detection.
    pub parent: Option<SnapshotId>,
    /// zstd level.
    pub compression_level: i32,
    /// Pack workers (compress + encrypt threads).
    pub workers: usize,
    /// Pack uploads in flight.
    pub uploads: usize,
    /// Bound of the chunk queue, in bytes of plaintext.
    pub queue_bytes: usize,
    /// Asked right before the commit point (the manifest put); an error aborts the commit. The
    /// agent daemon uses it to fence itself when its job lease has lapsed.
    pub commit_guard: Option<CommitGuard>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Self {
            host: String::new(),
            source: "files".into(),
            paths: Vec::new(),
            tags: Vec::new(),
            parent: None,
            compression_level: 3,
            workers: cores.clamp(1, 8),
            uploads: 2,
            queue_bytes: 24 << 20,
            commit_guard: None,
        }
    }
}

/// Live counters of a run, readable while it works.
#[derive(Debug, Default)]
pub struct Stats {
    /// Bytes read from sources.
    pub bytes_read: AtomicU64,
    /// Chunks new to the vault.
    pub chunks_new: AtomicU64,
    /// Plaintext bytes of new chunks.
    pub bytes_new: AtomicU64,
    /// Bytes of packs uploaded.
    pub bytes_stored: AtomicU64,
    /// Packs uploaded.
    pub packs: AtomicU64,
}

/// Bytes-counted admission to the chunk queue.
struct ByteBudget {
    used: Mutex<usize>,
    cv: Condvar,
    cap: usize,
}

impl ByteBudget {
    fn acquire(&self, n: usize, failed: &AtomicBool) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used > 0 && *used + n > self.cap {
            if failed.load(Ordering::Relaxed) {
                return false;
            }
            used =
                self.cv.wait_timeout(used, std::time::Duration::from_millis(200)).unwrap_or_else(|p| p.into_inner()).0;
        }
        *used += n;
        true
    }

    fn release(&self, n: usize) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(n);
        self.cv.notify_all();
    }
}

struct ChunkJob {
    kind: ObjectType,
    id: ChunkId,
    data: Vec<u8>,
    hint: codec::Hint,
}

struct FinishedPack {
    id: PackId,
    salt: [u8; 32],
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
}

struct Shared {
    vault: Arc<Vault>,
    keys: Arc<VaultKeys>,
    index: Arc<LocalIndex>,
    pending: Mutex<HashSet<ChunkId>>,
    reused: Mutex<HashSet<PackId>>,
    budget: ByteBudget,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    stats: Stats,
    level: i32,
    /// Packs marked by a garbage collection: never deduplicated against.
    avoid: HashSet<PackId>,
    /// The directories of reused packs: a reuse must be what the pack really holds.
    packs: crate::reused::ReusedPacks,
    /// When this session's marker was last written successfully (see `gc`: a writer whose marker
    /// may look dead to a collector must not commit).
    marker_ok: Mutex<Instant>,
}

impl Shared {
    fn fail(&self, msg: String) {
        self.failed.store(true, Ordering::SeqCst);
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(msg);
        self.budget.cv.notify_all();
    }

    fn failure(&self) -> String {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "backup pipeline stopped".into())
    }
}

/// What storing one stream produced.
#[derive(Debug, Clone)]
pub struct StoredStream {
    /// Chunk ids in order.
    pub chunks: Vec<ChunkId>,
    /// Bytes read.
    pub len: u64,
    /// BLAKE3 of the stream.
    pub hash: [u8; 32],
}

/// One range of a stream that is chunked on its own (see [`ChunkSink::store_spans`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Bytes in the range.
    pub len: u64,
    /// How its chunks are best encoded.
    pub hint: codec::Hint,
}

/// A cloneable handle that reader threads use to feed data into the session.
#[derive(Clone)]
pub struct ChunkSink {
    shared: Arc<Shared>,
    tx: crossbeam_channel::Sender<ChunkJob>,
}

impl ChunkSink {
    /// Chunk a stream and queue its new chunks. Blocking: call from a blocking thread.
    pub fn store_stream<R: Read>(&self, reader: R) -> Result<StoredStream> {
        self.store_kind(reader, ObjectType::DataChunk)
    }

    fn store_kind<R: Read>(&self, reader: R, kind: ObjectType) -> Result<StoredStream> {
        let mut out = StoredStream { chunks: Vec::new(), len: 0, hash: [0; 32] };
        let mut hasher = blake3::Hasher::new();
        out.len = self.chunk_into(reader, kind, codec::Hint::Generic, &mut hasher, &mut out.chunks)?;
        out.hash = *hasher.finalize().as_bytes();
        Ok(out)
    }

    /// CDC over `reader`: hash every chunk into `whole`, emit it, append its id. Returns the bytes.
    fn chunk_into<R: Read>(
        &self,
        reader: R,
        kind: ObjectType,
        hint: codec::Hint,
        whole: &mut blake3::Hasher,
        chunks: &mut Vec<ChunkId>,
    ) -> Result<u64> {
        let s = &self.shared;
        let mut chunker = Chunker::new(reader, &s.vault.config().chunker, s.keys.chunker_seed);
        let mut len = 0u64;
        while let Some(chunk) = chunker.next_chunk().map_err(|e| Error::io("source stream", e))? {
            whole.update(chunk);
            len += chunk.len() as u64;
            chunks.push(self.emit(chunk, kind, hint)?);
        }
        Ok(len)
    }

    /// Store a stream cut into spans first (a file header, each tensor): no chunk crosses a span
    /// boundary, so a changed tensor never changes its neighbours' chunks. A span up to the
    /// chunker's maximum is one chunk; a larger one is cut by CDC from its own start. Blocking:
    /// call from a blocking thread.
    pub fn store_spans<R: Read>(&self, mut reader: R, spans: &[Span]) -> Result<StoredStream> {
        let max = u64::from(self.shared.vault.config().chunker.max_size);
        let mut whole = blake3::Hasher::new();
        let mut out = StoredStream { chunks: Vec::new(), len: 0, hash: [0; 32] };
        let mut small = Vec::new();
        for (i, span) in spans.iter().enumerate() {
            let mut take = (&mut reader).take(span.len);
            let got = if span.len <= max {
                small.clear();
                take.read_to_end(&mut small).map_err(|e| Error::io("source stream", e))?;
                if !small.is_empty() {
                    whole.update(&small);
                    out.chunks.push(self.emit(&small, ObjectType::DataChunk, span.hint)?);
                }
                small.len() as u64
            } else {
                self.chunk_into(take, ObjectType::DataChunk, span.hint, &mut whole, &mut out.chunks)?
            };
            out.len += got;
            if got != span.len {
                return Err(Error::io(
                    "source stream",
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("span #{i} ended after {got} of {} bytes (the file changed while read?)", span.len),
                    ),
                ));
            }
        }
        out.hash = *whole.finalize().as_bytes();
        Ok(out)
    }

    /// Hash one chunk, and queue it unless the vault or this run already has it.
    fn emit(&self, chunk: &[u8], kind: ObjectType, hint: codec::Hint) -> Result<ChunkId> {
        let s = &self.shared;
        if s.failed.load(Ordering::Relaxed) {
            return Err(Error::Invalid(s.failure()));
        }
        // Counters are about source data; tree metadata is not counted.
        let data_kind = kind == ObjectType::DataChunk;
        if data_kind {
            s.stats.bytes_read.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let id = s.keys.chunk_id(chunk);
        if self.known(&id)? {
            return Ok(id);
        }
        let data = chunk.to_vec();
        if !s.budget.acquire(data.len(), &s.failed) {
            return Err(Error::Invalid(s.failure()));
        }
        if data_kind {
            s.stats.chunks_new.fetch_add(1, Ordering::Relaxed);
            s.stats.bytes_new.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        if self.tx.send(ChunkJob { kind, id, data, hint }).is_err() {
            return Err(Error::Invalid(s.failure()));
        }
        Ok(id)
    }

    /// True when the chunk is already stored or queued; otherwise marks it pending.
    fn known(&self, id: &ChunkId) -> Result<bool> {
        let s = &self.shared;
        if let Some(e) = s.index.lookup(id)?
            && !s.avoid.contains(&e.pack.id)
            && s.packs.holds(&e)?
        {
            s.reused.lock().unwrap_or_else(|p| p.into_inner()).insert(e.pack.id);
            return Ok(true);
        }
        let mut pending = s.pending.lock().unwrap_or_else(|p| p.into_inner());
        Ok(!pending.insert(*id))
    }

    /// Whether all chunks are indexed (so a file's chunk list from the parent can be reused).
    /// Records the packs as reused. Blocking.
    pub fn reuse(&self, ids: &[ChunkId]) -> Result<bool> {
        let s = &self.shared;
        let mut packs = Vec::with_capacity(ids.len());
        for id in ids {
            match s.index.lookup(id)? {
                Some(e) if !s.avoid.contains(&e.pack.id) && s.packs.holds(&e)? => packs.push(e.pack.id),
                _ => return Ok(false),
            }
        }
        s.reused.lock().unwrap_or_else(|p| p.into_inner()).extend(packs);
        Ok(true)
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }
}

/// Packs with their directories, as uploaded or adopted.
type PackList = Vec<(PackRef, Vec<PackEntry>)>;

/// One backup run, from start to commit.
pub struct BackupSession {
    shared: Arc<Shared>,
    sink: Option<ChunkSink>,
    workers: Vec<JoinHandle<Result<()>>>,
    uploader: JoinHandle<Result<PackList>>,
    adopted: PackList,
    adopted_markers: Vec<(String, String)>,
    id: SessionId,
    opts: BackupOptions,
    started: chrono::DateTime<chrono::Utc>,
    clock: Instant,
}

impl BackupSession {
    /// Start a session: announce it, adopt packs of crashed sessions, start workers and uploader.
    pub async fn start(vault: Arc<Vault>, index: Arc<LocalIndex>, opts: BackupOptions) -> Result<Self> {
        vault.check_epoch().await?;
        let id = SessionId::random();
        let started = crate::clock::now();
        let keys = vault.keys().clone();
        let marker = SessionMarker {
            v: 1,
            host: opts.host.clone(),
            pid: std::process::id(),
            started: started.to_rfc3339(),
            refreshed: started.to_rfc3339(),
            ..Default::default()
        };
        write_marker(&vault, &id, &marker).await?;
        // Read the GC mark only after our marker exists: a sweep that missed our marker started
        // before this read, and its mark is still in place for us to see.
        let avoid: HashSet<PackId> = crate::session::marked_packs(&vault).await?;
        // A sweep that finished between the caller's index load and our marker deleted the
        // segments it compacted: the loaded index may name deleted packs. Detect it, start again.
        if index.is_stale(&vault.index_segment_ids().await?) {
            let _ = vault.backend().delete(&layout::session(&id)).await;
            return Err(Error::IndexChanged);
        }
        let packdirs = index.dir().parent().map(|d| d.join("packdirs"));
        let shared = Arc::new(Shared {
            vault: vault.clone(),
            keys,
            index,
            pending: Mutex::new(HashSet::new()),
            reused: Mutex::new(HashSet::new()),
            budget: ByteBudget {
                used: Mutex::new(0),
                cv: Condvar::new(),
                cap: opts.queue_bytes.max(vault.config().chunker.max_size as usize),
            },
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            stats: Stats::default(),
            level: opts.compression_level,
            avoid,
            packs: crate::reused::ReusedPacks::new(vault.clone(), packdirs),
            marker_ok: Mutex::new(Instant::now()),
        });
        let (adopted, adopted_markers) = adopt_orphans(&vault, &shared.index, &id, &shared.avoid).await?;
        {
            let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (_, entries) in &adopted {
                pending.extend(entries.iter().map(|e| e.id));
            }
        }
        let (tx, rx) = crossbeam_channel::bounded::<ChunkJob>(64);
        let (pack_tx, pack_rx) = mpsc::channel::<FinishedPack>(1);
        let workers = (0..opts.workers.max(1))
            .map(|_| {
                let (shared, rx, pack_tx) = (shared.clone(), rx.clone(), pack_tx.clone());
                tokio::task::spawn_blocking(move || {
                    let r = pack_worker(&shared, &rx, &pack_tx);
                    if let Err(e) = &r {
                        shared.fail(e.to_string());
                    }
                    r
                })
            })
            .collect();
        drop(pack_tx);
        let uploader = tokio::spawn(uploader(shared.clone(), pack_rx, id, marker, opts.uploads.max(1)));
        Ok(Self {
            sink: Some(ChunkSink { shared: shared.clone(), tx }),
            shared,
            workers,
            uploader,
            adopted,
            adopted_markers,
            id,
            opts,
            started,
            clock: Instant::now(),
        })
    }

    /// The handle for reader threads.
    pub fn sink(&self) -> ChunkSink {
        self.sink.clone().unwrap_or_else(|| unreachable!("sink taken only by commit"))
    }

    /// This session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Store the tree, wait for every pack, write the index, then the manifest (with the records
    /// of the sources other than plain paths this run captured).
    pub async fn commit(
        mut self,
        nodes: Vec<Node>,
        mut summary: Summary,
        sources: Vec<crate::snapshot::SourceRecord>,
    ) -> Result<(SnapshotId, Manifest)> {
        let sink = self.sink.take().ok_or_else(|| Error::Invalid("session already committed".into()))?;
        let tree_bytes = encode_tree(&nodes);
        let tree = tokio::task::spawn_blocking(move || {
            let r = sink.store_kind(&tree_bytes[..], ObjectType::TreeChunk);
            drop(sink);
            r
        })
        .await
        .map_err(|e| Error::Invalid(format!("tree task failed: {e}")))??;
        let mut first_err = None;
        for w in self.workers.drain(..) {
            if let Err(e) = w.await.map_err(|e| Error::Invalid(format!("pack worker failed: {e}"))).and_then(|r| r) {
                first_err.get_or_insert(e);
            }
        }
        let uploaded = (&mut self.uploader).await.map_err(|e| Error::Invalid(format!("uploader failed: {e}")))?;
        if let Some(e) = first_err {
            return Err(e);
        }
        let mut packs = uploaded?;
        packs.append(&mut self.adopted);
        let vault = self.shared.vault.clone();
        // A key epoch that began while this session ran (a slot removed or revoked) means its
        // packs are sealed under the older epoch: commit nothing, so none of it is referenced.
        vault.check_epoch().await?;
        for group in group_packs(&packs) {
            let seg = Segment::from_packs(0, group);
            vault.write_segment(&seg).await?;
            failpoint::hit("after-index-put");
        }
        let st = &self.shared.stats;
        summary.bytes_read = st.bytes_read.load(Ordering::Relaxed);
        summary.chunks_new = st.chunks_new.load(Ordering::Relaxed);
        summary.bytes_new = st.bytes_new.load(Ordering::Relaxed);
        summary.bytes_stored = st.bytes_stored.load(Ordering::Relaxed);
        summary.duration_ms = self.clock.elapsed().as_millis() as u64;
        let manifest = Manifest {
            v: 1,
            time: self.started.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            host: self.opts.host.clone(),
            source: self.opts.source.clone(),
            paths: self.opts.paths.clone(),
            tags: self.opts.tags.clone(),
            tree: tree.chunks,
            tree_nodes: nodes.len() as u64,
            summary,
            session: self.id,
            parent: self.opts.parent,
            probes: Default::default(),
            sources,
        };
        let (sid, bytes) = object::seal(vault.keys(), ObjectType::Snapshot, &manifest);
        failpoint::hit("before-manifest-put");
        if let Err(e) = self.reused_still_there(&vault).await {
            abandon_marker(&vault, &self.id, packs.iter().map(|p| p.0).collect()).await;
            return Err(e);
        }
        let quiet = self.shared.marker_ok.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
        if quiet.as_secs() as i64 > crate::session::SESSION_LIVE_SECS - 120 {
            return Err(Error::Invalid(format!(
                "commit refused: this session's marker was last refreshed {} s ago, so a garbage collection may have \
                 taken the session for dead; nothing was committed (run the backup again)",
                quiet.as_secs()
            )));
        }
        if let Some(guard) = &self.opts.commit_guard
            && let Err(why) = (guard.0)()
        {
            abandon_marker(&vault, &self.id, packs.iter().map(|p| p.0).collect()).await;
            return Err(Error::Invalid(format!("commit refused: {why}; nothing was committed")));
        }
        // Once more right before the commit point: an epoch that began while the segments went
        // up leaves them unreferenced, never committed.
        vault.check_epoch().await?;
        vault.backend().create(&layout::snapshot(&sid), Bytes::from(bytes)).await?;
        // After the commit point: cleanup failures only leave markers behind, never damage.
        if let Err(e) = vault.backend().delete(&layout::session(&self.id)).await {
            tracing::warn!(error = %e, "could not remove the session marker");
        }
        let cutoff = crate::clock::now() - chrono::Duration::hours(MARKER_STALE_HOURS);
        for (key, refreshed) in &self.adopted_markers {
            let old = chrono::DateTime::parse_from_rfc3339(refreshed).map(|t| t < cutoff).unwrap_or(true);
            if old {
                let _ = vault.backend().delete(key).await;
            }
        }
        Ok((sid, manifest))
    }

    /// Right before the commit point: if a garbage collection rewrote the index since this run
    /// loaded it (a sweep that did not see this session: its listing missed the marker, or it
    /// judged it dead), or the mark is not the one read at the start, every pack this run
    /// deduplicated against must still be there, or nothing is committed. One read of `gc/mark`
    /// and one listing of `index/` when nothing changed; one HEAD per reused pack when something
    /// did.
    async fn reused_still_there(&self, vault: &Vault) -> Result<()> {
        // The mark is read again too: on storage where an overwrite shows late, the one read at
        // the start may have been old, and this run may have deduplicated against marked packs.
        let mark: HashSet<PackId> = crate::session::marked_packs(vault).await?;
        if mark == self.shared.avoid && !self.shared.index.is_stale(&vault.index_segment_ids().await?) {
            return Ok(());
        }
        let reused: Vec<PackId> =
            self.shared.reused.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        for p in reused {
            if vault.backend().size(&layout::pack(&p)).await?.is_none() {
                return Err(Error::Invalid(format!(
                    "commit refused: pack {p}, which this backup deduplicated against, was deleted by a garbage collection that ran meanwhile; nothing was committed (run the backup again)"
                )));
            }
        }
        Ok(())
    }

    /// Stop without committing (the caller hit an error). Workers are drained; uploaded packs stay
    /// announced in the session marker for the next run to adopt.
    pub async fn abort(mut self) {
        self.shared.fail("backup aborted".into());
        self.sink.take();
        for w in self.workers.drain(..) {
            let _ = w.await;
        }
        // Only when the uploader can say what it uploaded; otherwise the marker it kept stays.
        if let Ok(Ok(uploaded)) = (&mut self.uploader).await {
            let mut packs: Vec<PackRef> = uploaded.iter().map(|p| p.0).collect();
            packs.extend(self.adopted.iter().map(|p| p.0));
            abandon_marker(&self.shared.vault, &self.id, packs).await;
        }
    }
}

/// Mark a session that will never commit as abandoned: its marker keeps announcing its packs for
/// the next backup to adopt, but with a refresh time of the epoch, so garbage collection does not
/// wait for it and adopters take it at once.
async fn abandon_marker(vault: &Vault, id: &SessionId, packs: Vec<PackRef>) {
    let marker = SessionMarker {
        v: 1,
        host: String::new(),
        pid: std::process::id(),
        started: crate::session::ABANDONED.into(),
        refreshed: crate::session::ABANDONED.into(),
        packs,
        reused: Vec::new(),
    };
    if let Err(e) = write_marker(vault, id, &marker).await {
        tracing::warn!(error = %e, "could not mark the session abandoned; garbage collection waits for its marker to age");
    }
}

pub(crate) fn group_packs(packs: &[(PackRef, Vec<PackEntry>)]) -> Vec<&[(PackRef, Vec<PackEntry>)]> {
    let mut groups = Vec::new();
    let (mut start, mut count) = (0, 0);
    for (i, (_, e)) in packs.iter().enumerate() {
        if count > 0 && count + e.len() > MAX_SEGMENT_ENTRIES {
            groups.push(&packs[start..i]);
            start = i;
            count = 0;
        }
        count += e.len();
    }
    if start < packs.len() {
        groups.push(&packs[start..]);
    }
    groups
}

/// Each worker keeps tree and data chunks in separate packs (as restic does): tree packs stay small,
/// so reading a snapshot's tree never fetches file data, and damage to a data pack cannot take a
/// snapshot's whole tree with it.
fn pack_worker(s: &Shared, rx: &crossbeam_channel::Receiver<ChunkJob>, out: &mpsc::Sender<FinishedPack>) -> Result<()> {
    let target = s.vault.config().pack_target_size as usize;
    let mut builders: [Option<PackBuilder>; 2] = [None, None];
    let flush = |b: PackBuilder| -> Result<()> {
        let salt = *b.salt();
        let (id, bytes, entries) = b.finish();
        out.blocking_send(FinishedPack { id, salt, bytes, entries }).map_err(|_| Error::Invalid(s.failure()))
    };
    for job in rx.iter() {
        if s.failed.load(Ordering::Relaxed) {
            s.budget.release(job.data.len());
            return Err(Error::Invalid(s.failure()));
        }
        let (codec, encoded) = codec::encode_hinted(&job.data, s.level, job.hint);
        let slot = &mut builders[usize::from(job.kind == ObjectType::TreeChunk)];
        if slot.as_ref().is_some_and(|b| b.len_with(encoded.len()) > target || !b.has_room_for_blob())
            && let Some(b) = slot.take()
        {
            flush(b)?;
        }
        let b = slot.get_or_insert_with(|| PackBuilder::new(&s.keys, target + 4096));
        let added = b.add(&s.keys, job.kind, job.id, codec, &encoded, job.data.len());
        s.budget.release(job.data.len());
        added?;
    }
    for b in builders.into_iter().flatten().filter(|b| !b.is_empty()) {
        flush(b)?;
    }
    Ok(())
}

async fn uploader(
    s: Arc<Shared>,
    mut rx: mpsc::Receiver<FinishedPack>,
    session: SessionId,
    mut marker: SessionMarker,
    concurrency: usize,
) -> Result<Vec<(PackRef, Vec<PackEntry>)>> {
    let mut done = Vec::new();
    let mut inflight = tokio::task::JoinSet::new();
    let mut failure: Option<Error> = None;
    // A failed put names its pack, so the marker stops announcing it: a pack whose durability
    // was never confirmed is not adopted by a later run.
    type Put = (PackId, Result<(PackRef, Vec<PackEntry>, u64)>);
    let finish_one = |r: std::result::Result<Put, tokio::task::JoinError>, done: &mut Vec<_>| match r {
        Ok((_, Ok((p, e, n)))) => {
            s.stats.bytes_stored.fetch_add(n, Ordering::Relaxed);
            s.stats.packs.fetch_add(1, Ordering::Relaxed);
            done.push((p, e));
            None
        }
        Ok((id, Err(e))) => Some((Some(id), e)),
        Err(e) => Some((None, Error::Invalid(format!("upload task failed: {e}")))),
    };
    // A live session keeps its marker fresh even while no pack is finished (a slow reader, a
    // long tree walk), so no other session takes it for crashed.
    let mut keepalive = tokio::time::interval(MARKER_REFRESH);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = keepalive.tick() => refresh_marker(&s, &session, &mut marker).await,
            Some(r) = inflight.join_next(), if !inflight.is_empty() => {
                if let Some((id, e)) = finish_one(r, &mut done) {
                    s.fail(format!("pack upload failed: {e}"));
                    unannounce(&s, &session, &mut marker, id).await;
                    failure.get_or_insert(e);
                }
            }
            next = rx.recv(), if inflight.len() < concurrency => {
                let Some(p) = next else { break };
                if failure.is_some() { continue; }
                // Announce the pack before it exists, so a crash right after the put still
                // leaves it adoptable by the next run.
                marker.packs.push(PackRef { id: p.id, salt: p.salt });
                refresh_marker(&s, &session, &mut marker).await;
                let vault = s.vault.clone();
                inflight.spawn(async move {
                    let n = p.bytes.len() as u64;
                    let put = vault.backend().create(&layout::pack(&p.id), Bytes::from(p.bytes)).await;
                    if let Err(e) = put {
                        return (p.id, Err(e.into()));
                    }
                    failpoint::hit("after-pack-put");
                    (p.id, Ok((PackRef { id: p.id, salt: p.salt }, p.entries, n)))
                });
            }
        }
    }
    while let Some(r) = inflight.join_next().await {
        if let Some((id, e)) = finish_one(r, &mut done) {
            unannounce(&s, &session, &mut marker, id).await;
            failure.get_or_insert(e);
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// How often a running session rewrites its marker; adopters treat markers older than
/// [`MARKER_STALE_HOURS`] as crashed.
const MARKER_REFRESH: Duration = Duration::from_secs(300);
const MARKER_STALE_HOURS: i64 = 1;

/// Stop announcing a pack whose put failed: its durability was never confirmed, so no later run
/// may adopt it.
async fn unannounce(s: &Shared, session: &SessionId, marker: &mut SessionMarker, failed: Option<PackId>) {
    if let Some(id) = failed {
        marker.packs.retain(|p| p.id != id);
        refresh_marker(s, session, marker).await;
    }
}

async fn refresh_marker(s: &Shared, session: &SessionId, marker: &mut SessionMarker) {
    marker.refreshed = crate::clock::now().to_rfc3339();
    marker.reused = s.reused.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
    // A failed refresh loses only the adoption hint for a crash; the backup itself goes on
    // (unless refreshes fail so long that the commit fences itself).
    match write_marker(&s.vault, session, marker).await {
        Ok(()) => *s.marker_ok.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now(),
        Err(e) => tracing::warn!(error = %e, "could not refresh the session marker"),
    }
}

pub(crate) async fn write_marker(vault: &Vault, id: &SessionId, marker: &SessionMarker) -> Result<()> {
    let key = layout::session(id);
    let bytes = object::seal_named(vault.keys(), ObjectType::Session, &key, marker);
    vault.backend().overwrite(&key, Bytes::from(bytes)).await?;
    Ok(())
}

type Adopted = (Vec<(PackRef, Vec<PackEntry>)>, Vec<(String, String)>);

/// Packs announced by sessions that never committed are indexed by this run instead of being
/// uploaded again; a crashed backup thus costs little more than the data in flight.
async fn adopt_orphans(
    vault: &Vault,
    index: &Arc<LocalIndex>,
    own: &SessionId,
    avoid: &HashSet<PackId>,
) -> Result<Adopted> {
    let mut adopted = Vec::new();
    let mut markers = Vec::new();
    let mut seen = HashSet::new();
    for info in vault.backend().list(layout::SESSIONS).await? {
        if info.key == layout::session(own) {
            continue;
        }
        let Ok(bytes) = vault.backend().get(&info.key).await else {
            continue;
        };
        let marker: SessionMarker = match object::open_named(vault.keys(), ObjectType::Session, &info.key, &bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(key = %info.key, error = %e, "ignoring unreadable session marker");
                continue;
            }
        };
        for p in &marker.packs {
            if !seen.insert(p.id) || avoid.contains(&p.id) {
                continue;
            }
            match vault.read_pack_directory(&p.id).await {
                Ok(dir) => {
                    // Index lookups read files: off the runtime.
                    let (ix, ids): (Arc<LocalIndex>, Vec<ChunkId>) =
                        (index.clone(), dir.entries.iter().map(|e| e.id).collect());
                    let all_indexed = tokio::task::spawn_blocking(move || -> Result<bool> {
                        for id in &ids {
                            if !ix.contains(id)? {
                                return Ok(false);
                            }
                        }
                        Ok(true)
                    })
                    .await
                    .map_err(|e| Error::Invalid(format!("index task failed: {e}")))??;
                    if !all_indexed {
                        adopted.push((PackRef { id: p.id, salt: dir.salt }, dir.entries));
                    }
                }
                Err(e) => {
                    tracing::warn!(pack = %p.id, error = %e, "announced pack unusable; not adopted")
                }
            }
        }
        markers.push((info.key.clone(), marker.refreshed.clone()));
    }
    if !adopted.is_empty() {
        tracing::info!(packs = adopted.len(), "adopting packs of interrupted backups");
    }
    Ok((adopted, markers))
}
