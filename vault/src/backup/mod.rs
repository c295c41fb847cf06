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
//! threads, and storage I/O is async. One job per file: `sink` (chunking and dedup), `workers`
//! (pack workers), `upload` (the uploader and the session marker), `commit` (session start and
//! commit), `adopt` (packs of crashed sessions).

mod adopt;
mod commit;
mod sink;
mod upload;
mod workers;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::codec;
use crate::crypto::{ObjectType, VaultKeys};
use crate::ids::{ChunkId, PackId, SnapshotId};
use crate::index::{LocalIndex, PackRef};
use crate::pack::PackEntry;
use crate::vault::Vault;

pub use crate::session::{CommitGuard, SessionMarker};
pub use commit::BackupSession;
pub(crate) use commit::group_packs;
use sink::ByteBudget;
pub use sink::{ChunkSink, Span, StoredStream};
pub(crate) use upload::write_marker;

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

/// Packs with their directories, as uploaded or adopted.
type PackList = Vec<(PackRef, Vec<PackEntry>)>;
