//! Index segments: which pack holds each chunk.
//!
//! A segment is a sealed object (type 4) whose CBOR body is
//! `{v, generation, supersedes, packs: [{id, salt}], entries: bytes}`; `entries` is a sorted array of
//! fixed-width 54-byte records:
//! `chunk id[32] | pack index u32 | counter u32 | offset u32 | stored len u32 | raw len u32 | type u8 | codec u8`
//! (integers little-endian). `supersedes` lists segments this one replaces (compaction);
//! `generation` orders them.

use serde::{Deserialize, Serialize};

use crate::codec::Codec;
use crate::crypto::ObjectType;
use crate::ids::{ChunkId, PackId, SegmentId};
use crate::pack::PackEntry;

/// Width of one entry record.
pub const ENTRY_LEN: usize = 54;
/// Segments are cut at this many entries (about 7 MiB), so each one decodes in bounded memory.
pub const MAX_SEGMENT_ENTRIES: usize = 1 << 17;

/// A pack as referenced by a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRef {
    /// Pack id (its name).
    pub id: PackId,
    /// Pack salt (saves a header read before decrypting a blob).
    #[serde(with = "serde_bytes")]
    pub salt: [u8; 32],
}

/// Location of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// The chunk.
    pub id: ChunkId,
    /// Pack holding it.
    pub pack: PackRef,
    /// Position in the pack (nonce counter).
    pub counter: u32,
    /// Directory entry (offset, lengths, type, codec).
    pub blob: PackEntry,
}

#[derive(Serialize, Deserialize)]
struct SegmentBody {
    v: u32,
    generation: u64,
    #[serde(default)]
    supersedes: Vec<SegmentId>,
    packs: Vec<PackRef>,
    #[serde(with = "serde_bytes")]
    entries: Vec<u8>,
}

/// A decoded segment.
#[derive(Debug, Clone, Default)]
pub struct Segment {
    /// Ordering of segments (compaction writes a higher one).
    pub generation: u64,
    /// Segments this one replaces.
    pub supersedes: Vec<SegmentId>,
    /// Packs referenced.
    pub packs: Vec<PackRef>,
    /// Entries sorted by chunk id: (chunk, pack index, counter, directory entry).
    pub entries: Vec<(u32, u32, PackEntry)>,
}

impl Segment {
    /// Build a segment from packs and their directories.
    pub fn from_packs(generation: u64, packs: &[(PackRef, Vec<PackEntry>)]) -> Self {
        let mut entries = Vec::new();
        for (pi, (_, dir)) in packs.iter().enumerate() {
            for (counter, e) in dir.iter().enumerate() {
                entries.push((pi as u32, counter as u32, *e));
            }
        }
        entries.sort_by_key(|a| a.2.id);
        Self { generation, supersedes: Vec::new(), packs: packs.iter().map(|p| p.0).collect(), entries }
    }

    /// Iterate entries with their pack.
    pub fn iter(&self) -> impl Iterator<Item = IndexEntry> + '_ {
        self.entries.iter().map(|(p, c, e)| IndexEntry {
            id: e.id,
            pack: self.packs[*p as usize],
            counter: *c,
            blob: *e,
        })
    }

    /// CBOR body bytes (sealed by the caller).
    pub fn to_body(&self) -> impl Serialize {
        let mut raw = Vec::with_capacity(self.entries.len() * ENTRY_LEN);
        for (p, c, e) in &self.entries {
            encode_entry(&mut raw, e, *p, *c);
        }
        SegmentBody {
            v: 1,
            generation: self.generation,
            supersedes: self.supersedes.clone(),
            packs: self.packs.clone(),
            entries: raw,
        }
    }

    /// Decode a body opened from storage; every field is checked.
    pub fn from_cbor(body: &[u8]) -> Result<Self, String> {
        let b: SegmentBody = ciborium::from_reader(body).map_err(|e| format!("index segment body: {e}"))?;
        if b.v != 1 {
            return Err(format!("index segment version {} unknown", b.v));
        }
        if !b.entries.len().is_multiple_of(ENTRY_LEN) {
            return Err(format!("index segment entries have {} bytes, not a multiple of {ENTRY_LEN}", b.entries.len()));
        }
        let mut entries = Vec::with_capacity(b.entries.len() / ENTRY_LEN);
        let mut last: Option<ChunkId> = None;
        for rec in b.entries.chunks_exact(ENTRY_LEN) {
            let (p, c, e) = decode_entry(rec)?;
            if p as usize >= b.packs.len() {
                return Err(format!("index entry for chunk {} names pack #{p} of {}", e.id, b.packs.len()));
            }
            if last.is_some_and(|l| l > e.id) {
                return Err("index segment entries are not sorted".into());
            }
            last = Some(e.id);
            entries.push((p, c, e));
        }
        Ok(Self { generation: b.generation, supersedes: b.supersedes, packs: b.packs, entries })
    }
}

/// Append one fixed-width record.
pub fn encode_entry(out: &mut Vec<u8>, e: &PackEntry, pack: u32, counter: u32) {
    out.extend_from_slice(e.id.as_bytes());
    for v in [pack, counter, e.offset, e.stored_len, e.raw_len] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.push(e.kind as u8);
    out.push(e.codec as u8);
}

/// Decode one fixed-width record (exactly [`ENTRY_LEN`] bytes).
pub fn decode_entry(rec: &[u8]) -> Result<(u32, u32, PackEntry), String> {
    if rec.len() != ENTRY_LEN {
        return Err(format!("index record has {} bytes", rec.len()));
    }
    let u = |i: usize| u32::from_le_bytes(rec[i..i + 4].try_into().unwrap_or_default());
    let id = ChunkId::from_slice(&rec[..32]).unwrap_or_default();
    let kind = ObjectType::from_byte(rec[52])
        .filter(|k| matches!(k, ObjectType::DataChunk | ObjectType::TreeChunk))
        .ok_or_else(|| format!("index entry for chunk {id} has unknown type {}", rec[52]))?;
    let codec =
        Codec::from_byte(rec[53]).ok_or_else(|| format!("index entry for chunk {id} has unknown codec {}", rec[53]))?;
    Ok((u(32), u(36), PackEntry { kind, codec, id, offset: u(40), stored_len: u(44), raw_len: u(48) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = PackEntry> {
        (any::<[u8; 32]>(), any::<bool>(), any::<bool>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
            |(id, tree, z, offset, stored_len, raw_len)| PackEntry {
                kind: if tree { ObjectType::TreeChunk } else { ObjectType::DataChunk },
                codec: if z { Codec::Zstd } else { Codec::Raw },
                id: ChunkId(id),
                offset,
                stored_len,
                raw_len,
            },
        )
    }

    proptest! {
        #[test]
        fn segment_round_trip(packs in proptest::collection::vec((any::<[u8; 32]>(), proptest::collection::vec(entry(), 0..20)), 0..5), generation: u64) {
            let packs: Vec<_> = packs.into_iter().map(|(s, d)| (PackRef { id: PackId(s), salt: s }, d)).collect();
            let seg = Segment::from_packs(generation, &packs);
            let mut cbor = Vec::new();
            ciborium::into_writer(&seg.to_body(), &mut cbor).unwrap();
            let back = Segment::from_cbor(&cbor).unwrap();
            prop_assert_eq!(back.generation, generation);
            prop_assert_eq!(back.packs, seg.packs.clone());
            prop_assert_eq!(back.entries, seg.entries.clone());
        }

        #[test]
        fn garbage_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Segment::from_cbor(&bytes);
        }
    }
}
