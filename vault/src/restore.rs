//! Restore planning and execution: which byte ranges of which packs to fetch, and where each chunk
//! goes. Writing files is the caller's business ([`ChunkWriter`]); the agent implements it.
//!
//! Blobs of one pack that lie close together are fetched with one ranged read (at most
//! [`MAX_FETCH`] bytes), fetches run [`RestoreOptions::fetches`] at a time, and decryption runs on
//! blocking threads. Every chunk is verified against its keyed id before it is written.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ids::ChunkId;
use crate::index::{IndexEntry, LocalIndex, PackRef};
use crate::snapshot::Extent;
use crate::vault::Vault;
use crate::{layout, pack};

/// Largest single ranged read.
pub const MAX_FETCH: u64 = 8 << 20;
/// Blobs closer than this are fetched together.
const MAX_GAP: u64 = 256 << 10;

/// Where one chunk's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkTarget {
    /// Caller's file number.
    pub file: usize,
    /// Byte offset in that file.
    pub offset: u64,
}

/// One ranged read and the blobs in it.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// The pack.
    pub pack: PackRef,
    /// Range start.
    pub start: u64,
    /// Range end (exclusive).
    pub end: u64,
    /// Blobs with their targets.
    pub blobs: Vec<(IndexEntry, Vec<ChunkTarget>)>,
}

/// A restore plan.
#[derive(Debug, Default)]
pub struct RestorePlan {
    /// Reads to do.
    pub fetches: Vec<Fetch>,
    /// Files that cannot be restored because a chunk is not indexed: (file, chunk).
    pub missing: Vec<(usize, ChunkId)>,
    /// Bytes that will be written.
    pub bytes: u64,
}

/// Plan the reads for `files`: (file number, extents). Blocking (index lookups).
pub fn plan(index: &LocalIndex, files: &[(usize, &[Extent])]) -> Result<RestorePlan> {
    let mut by_chunk: HashMap<ChunkId, (IndexEntry, Vec<ChunkTarget>)> = HashMap::new();
    let mut out = RestorePlan::default();
    for (file, extents) in files {
        for ext in *extents {
            let mut offset = ext.offset;
            for id in &ext.chunks {
                let entry = match by_chunk.get(id) {
                    Some((e, _)) => *e,
                    None => match index.lookup(id)? {
                        Some(e) => e,
                        None => {
                            out.missing.push((*file, *id));
                            break;
                        }
                    },
                };
                by_chunk.entry(*id).or_insert_with(|| (entry, Vec::new())).1.push(ChunkTarget { file: *file, offset });
                offset += u64::from(entry.blob.raw_len);
                out.bytes += u64::from(entry.blob.raw_len);
            }
        }
    }
    let mut by_pack: HashMap<crate::ids::PackId, Vec<(IndexEntry, Vec<ChunkTarget>)>> = HashMap::new();
    for (_, (e, t)) in by_chunk {
        by_pack.entry(e.pack.id).or_default().push((e, t));
    }
    let mut packs: Vec<_> = by_pack.into_iter().collect();
    packs.sort_by_key(|(id, _)| *id);
    for (_, mut blobs) in packs {
        blobs.sort_by_key(|(e, _)| e.blob.offset);
        let mut current: Option<Fetch> = None;
        for (e, t) in blobs {
            let (s, end) = (u64::from(e.blob.offset), u64::from(e.blob.offset) + u64::from(e.blob.stored_len));
            if let Some(f) = current.as_mut()
                && s >= f.end
                && s - f.end <= MAX_GAP
                && end - f.start <= MAX_FETCH
            {
                f.end = end;
                f.blobs.push((e, t));
                continue;
            }
            if let Some(f) = current.take() {
                out.fetches.push(f);
            }
            current = Some(Fetch { pack: e.pack, start: s, end, blobs: vec![(e, t)] });
        }
        if let Some(f) = current.take() {
            out.fetches.push(f);
        }
    }
    Ok(out)
}

/// Receives verified chunk data. Called from blocking threads.
pub trait ChunkWriter: Send + Sync + 'static {
    /// Write `data` at `target`.
    fn write(&self, target: ChunkTarget, data: &[u8]) -> std::io::Result<()>;
    /// A chunk for `target` could not be read or verified.
    fn failed(&self, target: ChunkTarget, chunk: ChunkId, error: &Error);
}

/// Restore tuning.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Ranged reads in flight.
    pub fetches: usize,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self { fetches: 4 }
    }
}

/// Counts of an executed plan.
#[derive(Debug, Default, Clone)]
pub struct RestoreCounts {
    /// Chunks written (each target counted).
    pub chunks_written: u64,
    /// Chunks that failed.
    pub chunks_failed: u64,
    /// Reads that failed once and succeeded when retried.
    pub transient_retries: u64,
}

/// A chunk that did not read where planned: its entry, targets and why.
type Failed = (IndexEntry, Vec<ChunkTarget>, String);

/// Chunks that did not read at their planned place: each is read from the other places the
/// index lists it at; only when none reads do its targets fail (with the first error).
async fn settle_failures(
    vault: &Arc<Vault>,
    index: Option<&Arc<LocalIndex>>,
    writer: &Arc<dyn ChunkWriter>,
    failed: Vec<Failed>,
) -> Result<RestoreCounts> {
    let mut c = RestoreCounts::default();
    for (entry, targets, why) in failed {
        let data = match index {
            Some(ix) => vault.read_chunk_elsewhere(ix, &entry, true).await?,
            None => None,
        };
        let w = writer.clone();
        c = tokio::task::spawn_blocking(move || -> Result<RestoreCounts> {
            let mut c = c;
            match data {
                Some(data) => {
                    for t in targets {
                        w.write(t, &data)
                            .map_err(|err| Error::io(format!("restore target (file #{})", t.file), err))?;
                        c.chunks_written += 1;
                    }
                }
                None => {
                    // The first place's error, word for word.
                    let err = Error::Invalid(why);
                    for t in targets {
                        w.failed(t, entry.id, &err);
                        c.chunks_failed += 1;
                    }
                }
            }
            Ok(c)
        })
        .await
        .map_err(|e| Error::Invalid(format!("restore task failed: {e}")))??;
    }
    Ok(c)
}

/// Fetch, verify and hand every planned chunk to `writer`. A damaged chunk fails only its targets.
/// Returns an error only when writing to the target fails (for example, the disk is full).
///
/// With `index`, a chunk whose planned place does not read is read from the other places the
/// index lists it at (a planted segment that shadows the genuine entry cannot stop a restore).
pub async fn execute(
    vault: Arc<Vault>,
    plan: RestorePlan,
    opts: &RestoreOptions,
    writer: Arc<dyn ChunkWriter>,
    index: Option<Arc<LocalIndex>>,
) -> Result<RestoreCounts> {
    let mut counts = RestoreCounts::default();
    let mut set = tokio::task::JoinSet::new();
    let mut fetches = plan.fetches.into_iter();
    loop {
        while set.len() < opts.fetches.max(1) {
            let Some(f) = fetches.next() else { break };
            let (vault, writer, index) = (vault.clone(), writer.clone(), index.clone());
            set.spawn(async move { run_fetch(vault, f, writer, index).await });
        }
        let Some(r) = set.join_next().await else {
            break;
        };
        let c = r.map_err(|e| Error::Invalid(format!("restore task failed: {e}")))??;
        counts.chunks_written += c.chunks_written;
        counts.chunks_failed += c.chunks_failed;
        counts.transient_retries += c.transient_retries;
    }
    Ok(counts)
}

async fn run_fetch(
    vault: Arc<Vault>,
    f: Fetch,
    writer: Arc<dyn ChunkWriter>,
    index: Option<Arc<LocalIndex>>,
) -> Result<RestoreCounts> {
    let key = layout::pack(&f.pack.id);
    let mut counts = RestoreCounts::default();
    // Failed fetches and failed verifications are retried separately: a flaky read must not use
    // up the re-read that tells a damaged transfer from damaged storage.
    let (mut fetches, mut reads_verified) = (0, 0);
    loop {
        fetches += 1;
        crate::failpoint::hit("restore-before-fetch");
        let bytes = match vault.backend().get_range(&key, f.start..f.end).await {
            Ok(b) => Some(b),
            Err(e) if fetches < 3 && matches!(e, crate::backend::BackendError::Transient { .. }) => {
                counts.transient_retries += 1;
                continue;
            }
            // A range reaching past the end of a cut-short pack still holds whole blobs before the
            // cut: read them one by one, so only the chunks really lost fail.
            Err(crate::backend::BackendError::ShortObject { .. }) if f.blobs.len() > 1 => {
                for (entry, targets) in f.blobs.iter().cloned() {
                    let start = u64::from(entry.blob.offset);
                    let single = Fetch {
                        pack: f.pack,
                        start,
                        end: start + u64::from(entry.blob.stored_len),
                        blobs: vec![(entry, targets)],
                    };
                    let c = Box::pin(run_fetch(vault.clone(), single, writer.clone(), index.clone())).await?;
                    counts.chunks_written += c.chunks_written;
                    counts.chunks_failed += c.chunks_failed;
                    counts.transient_retries += c.transient_retries;
                }
                return Ok(counts);
            }
            Err(e) => {
                let err = Error::from(e).to_string();
                let failed = f.blobs.iter().map(|(e, t)| (*e, t.clone(), err.clone())).collect();
                let c = settle_failures(&vault, index.as_ref(), &writer, failed).await?;
                counts.chunks_written += c.chunks_written;
                counts.chunks_failed += c.chunks_failed;
                return Ok(counts);
            }
        };
        let keys = vault.keys().clone();
        let (fc, w) = (f.clone(), writer.clone());
        reads_verified += 1;
        let last = reads_verified >= 2;
        let outcome = tokio::task::spawn_blocking(move || -> Result<(RestoreCounts, bool, Vec<Failed>)> {
            // Decrypt in the fetched buffer itself: raw chunks are then written without a copy.
            let mut bytes = bytes.unwrap_or_default().try_into_mut().unwrap_or_else(|b| bytes::BytesMut::from(&b[..]));
            let mut c = RestoreCounts::default();
            let mut decoded = Vec::with_capacity(fc.blobs.len());
            let mut rest: &mut [u8] = &mut bytes[..];
            let mut at = fc.start;
            for (e, _) in &fc.blobs {
                let (s, len) = (u64::from(e.blob.offset), e.blob.stored_len as usize);
                let loc = pack::BlobLocation { salt: e.pack.salt, counter: e.counter, entry: e.blob };
                // Blobs are sorted by offset and never overlap; a short read leaves them empty.
                let skip = (s.saturating_sub(at) as usize).min(rest.len());
                let tail = std::mem::take(&mut rest);
                let take = len.min(tail.len() - skip);
                let (blob, after) = tail[skip..].split_at_mut(take);
                rest = after;
                at = s + blob.len() as u64;
                decoded.push(pack::open_located_in_place(&keys, &loc, blob));
            }
            // One bad blob may be a damaged transfer: read the range again before calling it damage.
            if !last && decoded.iter().any(|d| d.is_err()) {
                return Ok((c, true, Vec::new()));
            }
            let mut failed = Vec::new();
            for ((e, targets), d) in fc.blobs.iter().zip(decoded) {
                match d {
                    Ok(data) => {
                        for t in targets {
                            w.write(*t, &data)
                                .map_err(|err| Error::io(format!("restore target (file #{})", t.file), err))?;
                            c.chunks_written += 1;
                        }
                    }
                    Err(err) => {
                        let err = Error::integrity(format!("chunk {} in pack {}", e.id, e.pack.id), err);
                        failed.push((*e, targets.clone(), err.to_string()));
                    }
                }
            }
            Ok((c, false, failed))
        })
        .await
        .map_err(|e| Error::Invalid(format!("restore task failed: {e}")))??;
        let (mut c, retry, failed) = outcome;
        if !failed.is_empty() {
            let more = settle_failures(&vault, index.as_ref(), &writer, failed).await?;
            c.chunks_written += more.chunks_written;
            c.chunks_failed += more.chunks_failed;
        }
        if retry {
            counts.transient_retries += 1;
            continue;
        }
        if reads_verified > 1 && c.chunks_failed == 0 {
            tracing::info!(pack = %f.pack.id, "pack range read again after a bad transfer; second read verified");
        }
        counts.chunks_written += c.chunks_written;
        counts.chunks_failed += c.chunks_failed;
        return Ok(counts);
    }
}
