//! Checks of one snapshot, for restore drills: its structure (every chunk of every file indexed,
//! in a pack that exists) and a cryptographic read of its packs (all, or a seeded sample), each
//! finding traced to the files it affects. Apart from `check`, which covers the whole vault.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::check::{ReadData, describe, read_pack, sample_score, sampled};
use crate::error::{Error, Result};
use crate::ids::{ChunkId, PackId};
use crate::index::LocalIndex;
use crate::layout;
use crate::snapshot::Node;
use crate::vault::Vault;

/// What the structure check found.
#[derive(Debug, Clone, Default)]
pub struct Structure {
    /// Files and other entries in the tree.
    pub nodes: u64,
    /// Distinct chunks referenced.
    pub chunks: u64,
    /// Distinct packs holding them.
    pub packs: usize,
    /// Entries that cannot be restored whole: (path, why), one per entry.
    pub broken: Vec<(String, String)>,
}

/// What the read check found.
#[derive(Debug, Clone, Default)]
pub struct ReadCheck {
    /// Packs read.
    pub packs_read: usize,
    /// Of the snapshot's packs.
    pub packs_total: usize,
    /// Blobs decrypted and hashed.
    pub chunks_verified: u64,
    /// Bytes read from storage.
    pub bytes_read: u64,
    /// The seed of a sample.
    pub seed: Option<u64>,
    /// Entries with a chunk that failed to decrypt or hash: (path, why), one per entry.
    pub damaged: Vec<(String, String)>,
    /// Packs whose first read failed and second read verified.
    pub transient: Vec<String>,
}

fn join_err(e: tokio::task::JoinError) -> Error {
    Error::Invalid(e.to_string())
}

/// Every chunk of every node indexed, and its pack present in `data/`.
///
/// # Errors
/// Storage or index failures (not findings: those are in the result).
pub async fn structure(vault: &Vault, index: Arc<LocalIndex>, nodes: Arc<Vec<Node>>) -> Result<Structure> {
    let present: HashSet<PackId> =
        vault.backend().list(layout::DATA).await?.iter().filter_map(|i| layout::id_of::<PackId>(&i.key)).collect();
    tokio::task::spawn_blocking(move || -> Result<Structure> {
        let mut s = Structure { nodes: nodes.len() as u64, ..Structure::default() };
        let mut seen: HashMap<ChunkId, Option<String>> = HashMap::new();
        let mut packs: HashSet<PackId> = HashSet::new();
        for n in nodes.iter() {
            let mut why = None;
            for c in n.chunks() {
                let problem = match seen.get(c) {
                    Some(p) => p.clone(),
                    None => {
                        let p = match index.lookup(c)? {
                            None => Some(format!("chunk {c} is not in the index")),
                            Some(e) => {
                                packs.insert(e.pack.id);
                                (!present.contains(&e.pack.id))
                                    .then(|| format!("pack {} holding chunk {c} is missing", e.pack.id))
                            }
                        };
                        let _ = seen.insert(*c, p.clone());
                        p
                    }
                };
                if why.is_none() {
                    why = problem;
                }
            }
            if let Some(w) = why {
                s.broken.push((n.display_path(), w));
            }
        }
        s.chunks = seen.len() as u64;
        s.packs = packs.len();
        Ok(s)
    })
    .await
    .map_err(join_err)?
}

/// Read the snapshot's packs (all, or the sample `read` names), decrypt and hash every blob, and
/// trace damage to files. A pack that fails is read once more; passing then, it is transient.
///
/// # Errors
/// Storage or index failures other than damage.
pub async fn read(
    vault: &Arc<Vault>,
    index: Arc<LocalIndex>,
    nodes: Arc<Vec<Node>>,
    read: ReadData,
) -> Result<ReadCheck> {
    let (idx, ns) = (index.clone(), nodes.clone());
    let by_pack: BTreeMap<PackId, BTreeSet<ChunkId>> = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut m: BTreeMap<PackId, BTreeSet<ChunkId>> = BTreeMap::new();
        for n in ns.iter() {
            for c in n.chunks() {
                if let Some(e) = idx.lookup(c)? {
                    m.entry(e.pack.id).or_default().insert(*c);
                }
            }
        }
        Ok(m)
    })
    .await
    .map_err(join_err)??;
    let mut out = ReadCheck { packs_total: by_pack.len(), ..ReadCheck::default() };
    let selected: Vec<PackId> = match read {
        ReadData::None => vec![],
        ReadData::All => by_pack.keys().copied().collect(),
        ReadData::Subset { percent, seed } => {
            out.seed = Some(seed);
            let mut s: Vec<PackId> = by_pack.keys().filter(|p| sampled(p, percent, seed)).copied().collect();
            // A share above zero reads at least one pack: the lowest-scoring one, same seed.
            if s.is_empty()
                && percent > 0.0
                && let Some(first) =
                    by_pack.keys().min_by(|a, b| sample_score(a, seed).total_cmp(&sample_score(b, seed)))
            {
                s.push(*first);
            }
            s
        }
    };
    let mut bad: HashMap<ChunkId, String> = HashMap::new();
    for id in selected {
        let mut outcome = read_pack(vault, &id).await;
        if outcome.as_ref().map_or(true, |o| !o.clean()) {
            let first = describe(&outcome);
            let again = read_pack(vault, &id).await;
            if again.as_ref().is_ok_and(|o| o.clean()) {
                out.transient.push(format!("{}: first read failed ({first}); second read verified", layout::pack(&id)));
            }
            outcome = again;
        }
        out.packs_read += 1;
        let wanted = by_pack.get(&id).cloned().unwrap_or_default();
        match outcome {
            Ok(o) => {
                out.chunks_verified += o.verified;
                out.bytes_read += o.bytes;
                let whole = o.fatal.clone().or_else(|| {
                    o.hash_mismatch.then(|| "the pack's content does not match its name (damaged or altered)".into())
                });
                for c in &wanted {
                    if let Some(why) = o.bad.get(c).cloned().or_else(|| whole.clone()) {
                        let _ = bad.insert(*c, format!("{}: {why}", layout::pack(&id)));
                    }
                }
            }
            Err(e) => {
                for c in &wanted {
                    let _ = bad.insert(*c, format!("{}: {e}", layout::pack(&id)));
                }
            }
        }
    }
    for n in nodes.iter() {
        if let Some(why) = n.chunks().find_map(|c| bad.get(c)) {
            out.damaged.push((n.display_path(), why.clone()));
        }
    }
    Ok(out)
}
