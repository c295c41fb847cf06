//! `check`: structure (every referenced chunk indexed, every indexed pack present) and, on request,
//! a cryptographic read of all packs or a seeded sample. Damage is traced to the snapshots and files
//! it affects. A read that fails once and passes when repeated is reported as transient, not damage.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ids::{ChunkId, ObjectId, PackId};
use crate::index::LocalIndex;
use crate::vault::Vault;
use crate::{layout, pack};

/// How much data to read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    /// Structure only.
    None,
    /// Every pack.
    All,
    /// A sample: each pack is read with this probability, chosen by a seeded hash of its id.
    Subset {
        /// Percent of packs, 0-100.
        percent: f64,
        /// Seed (printed so a run can be repeated).
        seed: u64,
    },
}

impl ReadData {
    /// The read a share asks for: none at 0 % or below, all at 100 % or above, else a sample
    /// drawn with `seed`.
    pub fn from_percent(percent: f64, seed: u64) -> Self {
        match percent {
            p if p <= 0.0 => Self::None,
            p if p >= 100.0 => Self::All,
            p => Self::Subset { percent: p, seed },
        }
    }
}

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// What is affected (object key, chunk).
    pub object: String,
    /// What is wrong.
    pub detail: String,
}

/// Damage as seen from one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedSnapshot {
    /// Snapshot id.
    pub snapshot: String,
    /// Snapshot time.
    pub time: String,
    /// Files with missing or damaged chunks (display paths); the tree itself if unreadable.
    pub files: Vec<String>,
}

/// Result of a check.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Snapshots examined.
    pub snapshots: usize,
    /// Index segments read.
    pub index_segments: usize,
    /// Packs listed.
    pub packs: usize,
    /// Packs read in full.
    pub packs_read: usize,
    /// Chunks decrypted and verified.
    pub chunks_verified: u64,
    /// Bytes downloaded for the read.
    pub bytes_read: u64,
    /// Seed used for a subset read.
    pub seed: Option<u64>,
    /// Packs no index lists (left by interrupted backups; not an error).
    pub unreferenced_packs: usize,
    /// Errors: the vault is damaged.
    pub problems: Vec<Problem>,
    /// Reads that failed once and verified on the second try.
    pub transient: Vec<Problem>,
    /// Snapshots affected by damage, with their files.
    pub damaged_snapshots: Vec<DamagedSnapshot>,
    /// Write-once objects hidden under a delete marker or replaced (in a bucket that keeps
    /// versions); each is also a problem. `recover-hidden` brings them back.
    pub hidden: Vec<crate::hidden::HiddenObject>,
    /// What the check could not look at, and why (not damage).
    pub notes: Vec<String>,
}

impl CheckReport {
    /// No damage found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.damaged_snapshots.is_empty()
    }
}

/// Whether a pack is in the sample.
pub fn sampled(id: &PackId, percent: f64, seed: u64) -> bool {
    sample_score(id, seed) < percent
}

/// Where a pack falls in a seeded sample, 0-100: it is read when its score is below the percent.
pub fn sample_score(id: &PackId, seed: u64) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(id.as_bytes());
    let v = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or_default());
    (v as f64 / u64::MAX as f64) * 100.0
}

/// Run a check. `scratch` is an empty directory for a private index cache built from the vault
/// (the agent's own cache is not trusted for this).
pub async fn run(vault: Arc<Vault>, read: ReadData, scratch: &std::path::Path) -> Result<CheckReport> {
    // A slot left out of the newest key epoch cannot open what was written since, and would
    // report all of it as damage.
    if let Err(Error::StaleEpoch(why)) = vault.writable() {
        return Err(Error::Invalid(format!(
            "check needs a key slot that reaches the vault's newest key epoch, so nothing it cannot open is taken for damage ({why})"
        )));
    }
    let mut report = CheckReport::default();
    let be = vault.backend().clone();
    if vault.storage_versioning().is_some_and(|v| v.keeps_versions()) {
        match crate::hidden::find(&be).await {
            Ok(hidden) => {
                for h in &hidden {
                    report.problems.push(Problem {
                        object: h.key.clone(),
                        detail: format!("{h}: run `tresor-agent recover-hidden` to bring it back"),
                    });
                }
                report.hidden = hidden;
            }
            Err(e) => report.notes.push(format!("hidden objects not looked for: the versions do not list ({e})")),
        }
    }
    let pack_list = be.list(layout::DATA).await?;
    let packs: HashMap<PackId, u64> =
        pack_list.iter().filter_map(|i| layout::id_of::<PackId>(&i.key).map(|id| (id, i.size))).collect();
    report.packs = packs.len();
    for i in &pack_list {
        if layout::id_of::<PackId>(&i.key).is_none_or(|id| layout::pack(&id) != i.key) {
            report.problems.push(Problem { object: i.key.clone(), detail: "unexpected object in data/".into() });
        }
    }

    // Index: a private cache built only from segments that verify.
    let mut index = LocalIndex::open(scratch)?;
    let mut indexed_packs: HashSet<PackId> = HashSet::new();
    let mut missing_packs: HashSet<PackId> = HashSet::new();
    for info in be.list(layout::INDEX).await? {
        let Some(id) = layout::id_of::<ObjectId>(&info.key) else {
            report.problems.push(Problem { object: info.key.clone(), detail: "unexpected object in index/".into() });
            continue;
        };
        match vault.read_segment(&id).await {
            Ok(seg) => {
                report.index_segments += 1;
                for p in &seg.packs {
                    indexed_packs.insert(p.id);
                    if !packs.contains_key(&p.id) && missing_packs.insert(p.id) {
                        report.problems.push(Problem {
                            object: layout::pack(&p.id),
                            detail: format!("pack listed by index segment {id} is missing"),
                        });
                    }
                }
                index = tokio::task::spawn_blocking(move || {
                    let mut index = index;
                    index.add_segment(id, &seg).map(|()| index)
                })
                .await
                .map_err(|e| Error::Invalid(e.to_string()))??;
            }
            Err(e) => report
                .problems
                .push(Problem { object: info.key.clone(), detail: format!("index segment unreadable: {e}") }),
        }
    }
    report.unreferenced_packs = packs.keys().filter(|p| !indexed_packs.contains(p)).count();

    // Read data.
    let mut damaged_packs: HashSet<PackId> = HashSet::new();
    let mut damaged_chunks: HashSet<ChunkId> = HashSet::new();
    let selected: Vec<PackId> = match read {
        ReadData::None => Vec::new(),
        ReadData::All => indexed_packs.iter().filter(|p| packs.contains_key(p)).copied().collect(),
        ReadData::Subset { percent, seed } => {
            report.seed = Some(seed);
            indexed_packs.iter().filter(|p| packs.contains_key(p) && sampled(p, percent, seed)).copied().collect()
        }
    };
    let mut selected = selected;
    selected.sort();
    // What each read pack's own directory holds at each position (the first 8 bytes of the chunk
    // id), to hold the index's claims against afterwards.
    let mut directories: HashMap<PackId, Vec<u64>> = HashMap::new();
    for id in selected {
        let mut outcome = read_pack(&vault, &id).await;
        if outcome.as_ref().is_ok_and(|o| !o.clean()) || outcome.is_err() {
            let first = describe(&outcome);
            let again = read_pack(&vault, &id).await;
            if again.as_ref().is_ok_and(PackRead::clean) {
                report.transient.push(Problem {
                    object: layout::pack(&id),
                    detail: format!("first read failed ({first}); second read verified"),
                });
            }
            outcome = again;
        }
        report.packs_read += 1;
        match outcome {
            Ok(mut o) => {
                report.chunks_verified += o.verified;
                report.bytes_read += o.bytes;
                if o.fatal.is_none() {
                    let _ = directories.insert(id, std::mem::take(&mut o.directory));
                }
                if o.hash_mismatch {
                    report.problems.push(Problem {
                        object: layout::pack(&id),
                        detail: "pack content does not match its name (damaged or altered)".into(),
                    });
                }
                if let Some(f) = o.fatal {
                    damaged_packs.insert(id);
                    report.problems.push(Problem { object: layout::pack(&id), detail: f });
                }
                for (chunk, why) in o.bad {
                    damaged_chunks.insert(chunk);
                    report
                        .problems
                        .push(Problem { object: format!("{} chunk {chunk}", layout::pack(&id)), detail: why });
                }
            }
            Err(e) => {
                damaged_packs.insert(id);
                report.problems.push(Problem { object: layout::pack(&id), detail: e.to_string() });
            }
        }
    }

    if !directories.is_empty() {
        false_entries(&vault, &directories, &mut report).await?;
    }

    // A pack whose directory is unreadable (truncated, say) may still hold good blobs: try each
    // blob the index lists, so damage is traced to the chunks actually lost.
    if !damaged_packs.is_empty() {
        salvage(&vault, &mut damaged_packs, &mut damaged_chunks, &mut report).await?;
    }

    // Snapshots: every chunk indexed, in a present pack, not damaged.
    let index = Arc::new(index);
    let unusable: HashSet<PackId> = missing_packs.union(&damaged_packs).copied().collect();
    for (sid, manifest) in vault.snapshots().await? {
        report.snapshots += 1;
        let m = match manifest {
            Ok(m) => m,
            Err(e) => {
                report.problems.push(Problem { object: layout::snapshot(&sid), detail: e });
                continue;
            }
        };
        let mut files = BTreeSet::new();
        match vault.read_tree(&m, &index).await {
            Err(e) => {
                files.insert(format!("(tree unreadable: {e})"));
            }
            Ok(nodes) => {
                let (idx, unusable, damaged) = (index.clone(), unusable.clone(), damaged_chunks.clone());
                let bad = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
                    let mut bad = Vec::new();
                    let mut memo: HashMap<ChunkId, bool> = HashMap::new();
                    for n in &nodes {
                        for c in n.chunks() {
                            let ok = match memo.get(c) {
                                Some(ok) => *ok,
                                None => {
                                    let ok = !damaged.contains(c)
                                        && idx.lookup(c)?.is_some_and(|e| !unusable.contains(&e.pack.id));
                                    memo.insert(*c, ok);
                                    ok
                                }
                            };
                            if !ok {
                                bad.push(n.display_path());
                                break;
                            }
                        }
                    }
                    Ok(bad)
                })
                .await
                .map_err(|e| Error::Invalid(e.to_string()))??;
                files.extend(bad);
            }
        }
        if !files.is_empty() {
            report.damaged_snapshots.push(DamagedSnapshot {
                snapshot: sid.to_hex(),
                time: m.time.clone(),
                files: files.into_iter().collect(),
            });
        }
    }
    let reread = vault.transient_reads();
    if reread > 0 {
        report.transient.push(Problem {
            object: "index segments, snapshots and tree chunks".into(),
            detail: format!("{reread} read(s) failed verification once; second read verified"),
        });
    }
    Ok(report)
}

pub(crate) struct PackRead {
    pub(crate) verified: u64,
    pub(crate) bytes: u64,
    pub(crate) bad: BTreeMap<ChunkId, String>,
    /// The directory is unreadable: every chunk of the pack is lost.
    pub(crate) fatal: Option<String>,
    /// The bytes do not hash to the pack's name.
    pub(crate) hash_mismatch: bool,
    /// The first 8 bytes of the chunk id at each position of the directory.
    pub(crate) directory: Vec<u64>,
}

impl PackRead {
    pub(crate) fn clean(&self) -> bool {
        self.bad.is_empty() && self.fatal.is_none() && !self.hash_mismatch
    }
}

pub(crate) fn describe(r: &Result<PackRead>) -> String {
    match r {
        Ok(o) => o
            .fatal
            .clone()
            .or_else(|| o.bad.values().next().cloned())
            .unwrap_or_else(|| "content does not match its name".into()),
        Err(e) => e.to_string(),
    }
}

pub(crate) async fn read_pack(vault: &Arc<Vault>, id: &PackId) -> Result<PackRead> {
    let bytes = vault.backend().get(&layout::pack(id)).await?;
    let keys = vault.keys().clone();
    let id = *id;
    tokio::task::spawn_blocking(move || {
        let hash_mismatch = *blake3::hash(&bytes).as_bytes() != id.0;
        let mut r = PackRead {
            verified: 0,
            bytes: bytes.len() as u64,
            bad: BTreeMap::new(),
            fatal: None,
            hash_mismatch,
            directory: Vec::new(),
        };
        match pack::read_directory_full(&keys, &bytes) {
            Err(e) => r.fatal = Some(e.to_string()),
            Ok(dir) => {
                r.directory = dir.entries.iter().map(|e| e.id.prefix()).collect();
                for (e, res) in pack::open_all(&keys, &dir, &bytes) {
                    match res {
                        Ok(_) => r.verified += 1,
                        Err(err) => {
                            r.bad.insert(e.id, err.to_string());
                        }
                    }
                }
            }
        }
        r
    })
    .await
    .map_err(|e| Error::Invalid(e.to_string()))
}

/// Name every index entry that places a chunk in a read pack at a position where the pack's own
/// directory holds another chunk (or none): a planted or damaged segment, which would make
/// restores fail and could make GC delete the pack that really holds the chunk.
async fn false_entries(vault: &Arc<Vault>, dirs: &HashMap<PackId, Vec<u64>>, report: &mut CheckReport) -> Result<()> {
    for info in vault.backend().list(layout::INDEX).await? {
        let Some(id) = layout::id_of::<ObjectId>(&info.key) else { continue };
        // Unreadable segments were reported above.
        let Ok(seg) = vault.read_segment(&id).await else { continue };
        let mut wrong = 0usize;
        let mut first = None;
        for e in seg.iter() {
            let Some(dir) = dirs.get(&e.pack.id) else { continue };
            if dir.get(e.counter as usize) != Some(&e.id.prefix()) {
                wrong += 1;
                first.get_or_insert((e.id, e.pack.id, e.counter));
            }
        }
        if let Some((chunk, pack, counter)) = first {
            report.problems.push(Problem {
                object: info.key.clone(),
                detail: format!(
                    "index segment places {wrong} chunk(s) where their pack does not hold them (first: chunk {chunk} in pack {pack} blob {counter}): planted or damaged"
                ),
            });
        }
    }
    Ok(())
}

/// Re-read the index for packs with an unreadable directory and verify their blobs one by one.
async fn salvage(
    vault: &Arc<Vault>,
    damaged_packs: &mut HashSet<PackId>,
    damaged_chunks: &mut HashSet<ChunkId>,
    report: &mut CheckReport,
) -> Result<()> {
    let mut listed: HashMap<PackId, Vec<crate::index::IndexEntry>> = HashMap::new();
    for info in vault.backend().list(layout::INDEX).await? {
        let Some(id) = layout::id_of::<ObjectId>(&info.key) else { continue };
        let Ok(seg) = vault.read_segment(&id).await else { continue };
        for e in seg.iter().filter(|e| damaged_packs.contains(&e.pack.id)) {
            listed.entry(e.pack.id).or_default().push(e);
        }
    }
    for (pack_id, entries) in listed {
        let Ok(bytes) = vault.backend().get(&layout::pack(&pack_id)).await else { continue };
        let keys = vault.keys().clone();
        let bad: Vec<ChunkId> = tokio::task::spawn_blocking(move || {
            entries
                .iter()
                .filter(|e| {
                    let (s, n) = (e.blob.offset as usize, e.blob.stored_len as usize);
                    let loc = pack::BlobLocation { salt: e.pack.salt, counter: e.counter, entry: e.blob };
                    bytes.get(s..s + n).is_none_or(|sealed| pack::open_located(&keys, &loc, sealed).is_err())
                })
                .map(|e| e.id)
                .collect()
        })
        .await
        .map_err(|e| Error::Invalid(e.to_string()))?;
        for c in &bad {
            report.problems.push(Problem {
                object: format!("{} chunk {c}", layout::pack(&pack_id)),
                detail: "blob unreadable".into(),
            });
        }
        damaged_chunks.extend(bad);
        damaged_packs.remove(&pack_id);
    }
    Ok(())
}
