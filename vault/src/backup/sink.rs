//! Chunking and dedup: the handle reader threads feed streams through, and the byte budget that
//! bounds the chunk queue.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::chunker::Chunker;
use crate::codec;
use crate::crypto::ObjectType;
use crate::error::{Error, Result};
use crate::ids::ChunkId;

use super::{ChunkJob, Shared, Stats};

/// Bytes-counted admission to the chunk queue.
pub(super) struct ByteBudget {
    pub(super) used: Mutex<usize>,
    pub(super) cv: Condvar,
    pub(super) cap: usize,
}

impl ByteBudget {
    pub(super) fn acquire(&self, n: usize, failed: &AtomicBool) -> bool {
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

    pub(super) fn release(&self, n: usize) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(n);
        self.cv.notify_all();
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
    pub(super) shared: Arc<Shared>,
    pub(super) tx: crossbeam_channel::Sender<ChunkJob>,
}

impl ChunkSink {
    /// Chunk a stream and queue its new chunks. Blocking: call from a blocking thread.
    pub fn store_stream<R: Read>(&self, reader: R) -> Result<StoredStream> {
        self.store_kind(reader, ObjectType::DataChunk)
    }

    pub(super) fn store_kind<R: Read>(&self, reader: R, kind: ObjectType) -> Result<StoredStream> {
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
