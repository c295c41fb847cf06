//! A backup session from start to commit: announce it, adopt packs of crashed sessions, start
//! workers and uploader, then store the tree, write the index and the manifest (the commit point).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::crypto::ObjectType;
use crate::error::{Error, Result};
use crate::ids::{PackId, SessionId, SnapshotId};
use crate::index::{LocalIndex, MAX_SEGMENT_ENTRIES, PackRef, Segment};
use crate::pack::PackEntry;
use crate::snapshot::{Manifest, Node, Summary, encode_tree};
use crate::vault::Vault;
use crate::{failpoint, layout, object};

use super::adopt::adopt_orphans;
use super::sink::{ByteBudget, ChunkSink};
use super::upload::{MARKER_STALE_HOURS, uploader, write_marker};
use super::workers::pack_worker;
use super::{BackupOptions, ChunkJob, FinishedPack, PackList, Shared, Stats};
use crate::session::SessionMarker;

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
