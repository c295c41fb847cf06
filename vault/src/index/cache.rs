//! The agent's local copy of the vault index: immutable sorted runs on disk, looked up with `pread`.
//!
//! Memory does not grow with the vault's size in entries: each run keeps in RAM only the 8-byte key
//! prefix of every 4 KiB block (0.15 bytes per entry); everything else is read from the file on
//! demand (and served by the page cache). The cache is rebuilt from the vault whenever it is missing,
//! unreadable, or the vault lost a segment it had merged. It holds no secrets beyond chunk ids and
//! pack locations, which storage can see anyway.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::segment::{ENTRY_LEN, IndexEntry, PackRef, Segment, decode_entry, encode_entry};
use crate::ids::{ChunkId, PackId, SegmentId};

/// Records per lookup block (4,050 bytes).
const BLOCK_ENTRIES: usize = 75;
const BLOCK_BYTES: usize = BLOCK_ENTRIES * ENTRY_LEN;
/// Runs are merged into one when there are more than this many.
const MAX_RUNS: usize = 8;
const PACK_RECORD: usize = 64;

/// Errors of the local index cache (local disk only).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Local I/O failed.
    #[error("index cache {path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A cache file is damaged; the caller rebuilds.
    #[error("index cache is damaged: {0}")]
    Damaged(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_path_buf(), source }
}

#[derive(Serialize, Deserialize, Default)]
struct State {
    segments: BTreeSet<SegmentId>,
    runs: Vec<RunState>,
    packs: u64,
}

#[derive(Serialize, Deserialize, Clone)]
struct RunState {
    file: String,
    entries: u64,
}

struct Run {
    file: File,
    entries: u64,
    fence: Vec<[u8; 8]>,
}

/// The local index of one vault.
pub struct LocalIndex {
    dir: PathBuf,
    state: State,
    runs: Vec<Run>,
    packs: File,
}

impl LocalIndex {
    /// The directory this cache lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Open (or create empty) the cache in `dir`. A damaged cache is wiped and starts empty.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        match Self::open_existing(dir) {
            Ok(ix) => Ok(ix),
            Err(e) => {
                tracing::warn!(error = %e, "index cache unusable; rebuilding");
                Self::wipe(dir)?;
                Self::open_existing(dir)
            }
        }
    }

    fn wipe(dir: &Path) -> Result<(), CacheError> {
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let p = entry.map_err(io(dir))?.path();
            if p.is_file() {
                std::fs::remove_file(&p).map_err(io(&p))?;
            }
        }
        Ok(())
    }

    fn open_existing(dir: &Path) -> Result<Self, CacheError> {
        let state_path = dir.join("state.json");
        let state: State = match std::fs::read(&state_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| CacheError::Damaged(format!("state.json: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => {
                return Err(CacheError::Io { path: state_path, source: e });
            }
        };
        let packs_path = dir.join("packs.tbl");
        let packs =
            OpenOptions::new().read(true).append(true).create(true).open(&packs_path).map_err(io(&packs_path))?;
        let have = packs.metadata().map_err(io(&packs_path))?.len();
        let recorded = state.packs * PACK_RECORD as u64;
        if have < recorded {
            return Err(CacheError::Damaged("pack table shorter than recorded".into()));
        }
        // Records past the saved state come from an add that never reached save_state; new
        // records are numbered from the saved count, so the table must end there.
        if have > recorded {
            packs.set_len(recorded).map_err(io(&packs_path))?;
        }
        let mut runs = Vec::new();
        for r in &state.runs {
            runs.push(load_run(&dir.join(&r.file), r.entries)?);
        }
        Ok(Self { dir: dir.to_path_buf(), state, runs, packs })
    }

    /// Whether this index was built from a segment that `listed` (the vault's segments now) no
    /// longer has: a garbage collection compacted it away, or the vault lost it.
    pub fn is_stale(&self, listed: &BTreeSet<SegmentId>) -> bool {
        self.merged_segments().iter().any(|s| !listed.contains(s))
    }

    /// Segment ids already merged.
    pub fn merged_segments(&self) -> &BTreeSet<SegmentId> {
        &self.state.segments
    }

    /// Entries across runs (duplicates counted).
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|r| r.entries).sum()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of RAM held for lookups (fence arrays), for the memory budget.
    pub fn resident_bytes(&self) -> usize {
        self.runs.iter().map(|r| r.fence.len() * 8).sum()
    }

    /// Drop everything (the vault lost a merged segment, so entries may be stale).
    pub fn reset(&mut self) -> Result<(), CacheError> {
        self.runs.clear();
        Self::wipe(&self.dir)?;
        *self = Self::open_existing(&self.dir)?;
        Ok(())
    }

    /// Add a segment's entries as a new run and record it as merged.
    pub fn add_segment(&mut self, id: SegmentId, seg: &Segment) -> Result<(), CacheError> {
        if self.state.segments.contains(&id) {
            return Ok(());
        }
        let base = self.state.packs as u32;
        let mut table = Vec::with_capacity(seg.packs.len() * PACK_RECORD);
        for p in &seg.packs {
            table.extend_from_slice(p.id.as_bytes());
            table.extend_from_slice(&p.salt);
        }
        let packs_path = self.dir.join("packs.tbl");
        self.packs.write_all(&table).map_err(io(&packs_path))?;
        let name = format!("run-{}.idx", hex::encode(&SegmentId::random().0[..8]));
        let path = self.dir.join(&name);
        let mut w = BufWriter::new(File::create(&path).map_err(io(&path))?);
        let mut rec = Vec::with_capacity(ENTRY_LEN);
        for (p, c, e) in &seg.entries {
            rec.clear();
            encode_entry(&mut rec, e, base + p, *c);
            w.write_all(&rec).map_err(io(&path))?;
        }
        w.flush().map_err(io(&path))?;
        drop(w);
        self.runs.push(load_run(&path, seg.entries.len() as u64)?);
        self.state.runs.push(RunState { file: name, entries: seg.entries.len() as u64 });
        self.state.packs += seg.packs.len() as u64;
        self.state.segments.insert(id);
        if self.runs.len() > MAX_RUNS {
            self.merge_runs()?;
        }
        self.save_state()
    }

    fn save_state(&self) -> Result<(), CacheError> {
        let tmp = self.dir.join("state.json.tmp");
        let bytes = serde_json::to_vec(&self.state).map_err(|e| CacheError::Damaged(e.to_string()))?;
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, self.dir.join("state.json")).map_err(io(&tmp))
    }

    /// k-way merge of all runs into one, streaming with one buffer per run.
    fn merge_runs(&mut self) -> Result<(), CacheError> {
        let name = format!("run-{}.idx", hex::encode(&SegmentId::random().0[..8]));
        let path = self.dir.join(&name);
        let mut w = BufWriter::new(File::create(&path).map_err(io(&path))?);
        let mut readers = Vec::new();
        let mut heads: Vec<Option<[u8; ENTRY_LEN]>> = Vec::new();
        for r in &self.state.runs {
            let p = self.dir.join(&r.file);
            let mut rd = BufReader::with_capacity(64 * 1024, File::open(&p).map_err(io(&p))?);
            heads.push(read_record(&mut rd, &p)?);
            readers.push((rd, p));
        }
        let mut count = 0u64;
        let mut last: Option<[u8; 32]> = None;
        while let Some(i) = (0..heads.len()).filter(|i| heads[*i].is_some()).min_by_key(|i| heads[*i].map(|h| key(&h)))
        {
            let rec = heads[i].take().unwrap_or([0; ENTRY_LEN]);
            if last != Some(key(&rec)) {
                w.write_all(&rec).map_err(io(&path))?;
                count += 1;
                last = Some(key(&rec));
            }
            let (rd, p) = &mut readers[i];
            heads[i] = read_record(rd, p)?;
        }
        w.flush().map_err(io(&path))?;
        drop(w);
        let old: Vec<String> = self.state.runs.iter().map(|r| r.file.clone()).collect();
        self.runs = vec![load_run(&path, count)?];
        self.state.runs = vec![RunState { file: name, entries: count }];
        self.save_state()?;
        for f in old {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        Ok(())
    }

    /// Whether the chunk is indexed.
    pub fn contains(&self, id: &ChunkId) -> Result<bool, CacheError> {
        Ok(!self.find(id, true)?.is_empty())
    }

    /// Where the chunk is stored, if indexed (the newest run that lists it).
    pub fn lookup(&self, id: &ChunkId) -> Result<Option<IndexEntry>, CacheError> {
        match self.find(id, true)?.into_iter().next() {
            Some(found) => self.entry(id, found).map(Some),
            None => Ok(None),
        }
    }

    /// Every place a run lists the chunk at, newest first: a reader whose first choice does not
    /// read (a planted or damaged segment) tries the others.
    pub fn lookup_all(&self, id: &ChunkId) -> Result<Vec<IndexEntry>, CacheError> {
        let mut out: Vec<IndexEntry> = Vec::new();
        for found in self.find(id, false)? {
            let e = self.entry(id, found)?;
            if !out.iter().any(|o| o.pack.id == e.pack.id && o.blob.offset == e.blob.offset) {
                out.push(e);
            }
        }
        Ok(out)
    }

    fn entry(
        &self,
        id: &ChunkId,
        (pack, counter, blob): (u32, u32, crate::pack::PackEntry),
    ) -> Result<IndexEntry, CacheError> {
        let mut rec = [0u8; PACK_RECORD];
        let p = self.dir.join("packs.tbl");
        self.packs.read_exact_at(&mut rec, u64::from(pack) * PACK_RECORD as u64).map_err(io(&p))?;
        let pack = PackRef {
            id: PackId::from_slice(&rec[..32]).unwrap_or_default(),
            salt: rec[32..].try_into().unwrap_or_default(),
        };
        Ok(IndexEntry { id: *id, pack, counter, blob })
    }

    fn find(&self, id: &ChunkId, first_only: bool) -> Result<Vec<(u32, u32, crate::pack::PackEntry)>, CacheError> {
        let prefix: [u8; 8] = id.0[..8].try_into().unwrap_or_default();
        let mut block = vec![0u8; BLOCK_BYTES];
        let mut out = Vec::new();
        for run in self.runs.iter().rev() {
            let lo = run.fence.partition_point(|f| *f < prefix).saturating_sub(1);
            let hi = run.fence.partition_point(|f| *f <= prefix);
            for b in lo..hi.max(lo + 1).min(run.fence.len()) {
                let first = b as u64 * BLOCK_ENTRIES as u64;
                let n = (run.entries - first).min(BLOCK_ENTRIES as u64) as usize;
                let buf = &mut block[..n * ENTRY_LEN];
                run.file
                    .read_exact_at(buf, first * ENTRY_LEN as u64)
                    .map_err(|e| CacheError::Damaged(e.to_string()))?;
                let found =
                    buf.chunks_exact(ENTRY_LEN).collect::<Vec<_>>().binary_search_by(|r| r[..32].cmp(&id.0[..]));
                if let Ok(i) = found {
                    let rec = &buf[i * ENTRY_LEN..(i + 1) * ENTRY_LEN];
                    out.push(decode_entry(rec).map_err(CacheError::Damaged)?);
                    if first_only {
                        return Ok(out);
                    }
                    break;
                }
            }
        }
        Ok(out)
    }
}

fn key(rec: &[u8; ENTRY_LEN]) -> [u8; 32] {
    rec[..32].try_into().unwrap_or_default()
}

fn read_record(rd: &mut BufReader<File>, p: &Path) -> Result<Option<[u8; ENTRY_LEN]>, CacheError> {
    let mut rec = [0u8; ENTRY_LEN];
    match rd.read_exact(&mut rec) {
        Ok(()) => Ok(Some(rec)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(CacheError::Io { path: p.to_path_buf(), source: e }),
    }
}

fn load_run(path: &Path, entries: u64) -> Result<Run, CacheError> {
    let file = File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    if len != entries * ENTRY_LEN as u64 {
        return Err(CacheError::Damaged(format!(
            "{} has {len} bytes, expected {}",
            path.display(),
            entries * ENTRY_LEN as u64
        )));
    }
    let blocks = entries.div_ceil(BLOCK_ENTRIES as u64);
    let mut fence = Vec::with_capacity(blocks as usize);
    let mut k = [0u8; 8];
    for b in 0..blocks {
        file.read_exact_at(&mut k, b * BLOCK_BYTES as u64).map_err(io(path))?;
        fence.push(k);
    }
    Ok(Run { file, entries, fence })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::crypto::ObjectType;
    use crate::pack::PackEntry;

    fn seg(ids: &[ChunkId], salt: u8) -> Segment {
        let dir: Vec<PackEntry> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| PackEntry {
                kind: ObjectType::DataChunk,
                codec: Codec::Raw,
                id: *id,
                offset: i as u32,
                stored_len: 5,
                raw_len: 3,
            })
            .collect();
        Segment::from_packs(0, &[(PackRef { id: PackId([salt; 32]), salt: [salt; 32] }, dir)])
    }

    #[test]
    fn lookups_across_runs_merges_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ix = LocalIndex::open(tmp.path()).unwrap();
        let mut all = Vec::new();
        for s in 0..12u8 {
            let ids: Vec<ChunkId> = (0..500).map(|_| ChunkId::random()).collect();
            ix.add_segment(SegmentId::random(), &seg(&ids, s)).unwrap();
            all.push((s, ids));
        }
        assert!(ix.runs.len() <= MAX_RUNS);
        let ix = LocalIndex::open(tmp.path()).unwrap();
        for (s, ids) in &all {
            for id in ids {
                let e = ix.lookup(id).unwrap().expect("indexed");
                assert_eq!(e.pack.id, PackId([*s; 32]));
            }
        }
        assert!(!ix.contains(&ChunkId::random()).unwrap());
        assert_eq!(ix.len(), 12 * 500);
    }

    #[test]
    fn damaged_state_is_rebuilt_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ix = LocalIndex::open(tmp.path()).unwrap();
        ix.add_segment(SegmentId::random(), &seg(&[ChunkId::random()], 1)).unwrap();
        std::fs::write(tmp.path().join("state.json"), b"{garbage").unwrap();
        let ix = LocalIndex::open(tmp.path()).unwrap();
        assert!(ix.is_empty());
    }
}
