//! Packs: many encrypted chunks in one object, with an encrypted directory at the end.
//!
//! ```text
//! "TRSRPK01" | salt[32] | blob_0 | ... | blob_n-1 | sealed directory | dir_len u32 LE | "TRSRPKND"
//! blob_i    = AES-256-GCM(pack key, nonce = counter(i), aad = ver|type|codec|chunk id, encoded chunk)
//! directory = AES-256-GCM(pack key, nonce = counter(2^64-1), aad = ver|3|0|salt, count u32 | entries)
//! entry     = type u8 | codec u8 | chunk id[32] | stored len u32 | raw len u32      (42 bytes)
//! ```
//! The pack's name is the unkeyed BLAKE3 of all its bytes, so `check` can verify a pack without a key.

use crate::codec::{self, Codec};
use crate::crypto::{self, FORMAT_VERSION, ObjectType, SealKey, TAG_LEN, VaultKeys};
use crate::ids::{ChunkId, PackId};

/// First bytes of every pack.
pub const PACK_MAGIC: &[u8; 8] = b"TRSRPK01";
/// Last bytes of every pack.
pub const PACK_END_MAGIC: &[u8; 8] = b"TRSRPKND";
/// Bytes before the first blob.
pub const HEADER_LEN: usize = 8 + 32;
/// Bytes after the sealed directory.
pub const FOOTER_LEN: usize = 4 + 8;
const ENTRY_LEN: usize = 42;
/// Directory nonce counter; blob counters never reach it.
const DIRECTORY_COUNTER: u64 = u64::MAX;
/// A pack never holds more blobs than this (keeps a crafted directory from asking for huge memory).
pub const MAX_BLOBS: u32 = 1 << 20;

/// One blob as listed in a pack's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// Data or tree chunk.
    pub kind: ObjectType,
    /// How the plaintext was encoded.
    pub codec: Codec,
    /// Keyed BLAKE3 of the plaintext.
    pub id: ChunkId,
    /// Byte offset of the sealed blob in the pack.
    pub offset: u32,
    /// Sealed length (encoded length + tag).
    pub stored_len: u32,
    /// Plaintext length.
    pub raw_len: u32,
}

/// Errors reading a pack or blob; the bytes come from storage and are untrusted.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The pack's framing is wrong.
    #[error("pack is malformed: {0}")]
    Malformed(String),
    /// Decryption failed.
    #[error("{0} in pack {1}")]
    Auth(crypto::AuthError, String),
    /// Sealed under a key epoch the opener does not hold.
    #[error("pack {0}")]
    Epoch(#[from] crypto::EpochMissing),
    /// Decoding failed.
    #[error("chunk {id} does not decode: {source}")]
    Codec {
        /// The chunk.
        id: ChunkId,
        /// Why.
        source: codec::CodecError,
    },
    /// Decrypted and decoded, but the content does not hash to its id.
    #[error("chunk {0} content does not match its id")]
    IdMismatch(ChunkId),
    /// The chunk failed the check right after encryption (RAM bit flip or codec bug).
    #[error("chunk {0} failed verification after encryption (memory or codec fault); nothing was committed")]
    VerifyAfterEncrypt(ChunkId),
}

/// Builds one pack in memory.
pub struct PackBuilder {
    salt: [u8; 32],
    key: SealKey,
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl PackBuilder {
    /// An empty pack with a fresh salt.
    pub fn new(keys: &VaultKeys, capacity: usize) -> Self {
        Self::with_salt(keys, keys.fresh_salt(), capacity)
    }

    /// An empty pack with a given salt (golden vectors).
    pub fn with_salt(keys: &VaultKeys, salt: [u8; 32], capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(PACK_MAGIC);
        buf.extend_from_slice(&salt);
        // The salt comes from `fresh_salt` (the current epoch, which the keys hold) or a golden
        // vector of epoch 1; a salt of an epoch the keys lack would be a caller's bug.
        let key = keys.pack_key(&salt).unwrap_or_else(|e| unreachable!("new pack under an epoch not held: {e}"));
        Self { salt, key, buf, entries: Vec::new() }
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes the finished pack will have with one more blob of `encoded_len` bytes: blobs, tag,
    /// directory entries and footer included.
    pub fn len_with(&self, encoded_len: usize) -> usize {
        self.buf.len() + encoded_len + TAG_LEN + (self.entries.len() + 1) * ENTRY_LEN + 4 + TAG_LEN + FOOTER_LEN
    }

    /// Whether the pack can take another blob under the reader's limit.
    pub fn has_room_for_blob(&self) -> bool {
        self.entries.len() < MAX_BLOBS as usize
    }

    /// Whether no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pack's salt.
    pub fn salt(&self) -> &[u8; 32] {
        &self.salt
    }

    /// Number of blobs.
    pub fn blob_count(&self) -> usize {
        self.entries.len()
    }

    /// Encrypt and append one encoded chunk, then decrypt and decode it again and check its id,
    /// which catches memory bit flips and codec bugs before anything is uploaded.
    pub fn add(
        &mut self,
        keys: &VaultKeys,
        kind: ObjectType,
        id: ChunkId,
        codec: Codec,
        encoded: &[u8],
        raw_len: usize,
    ) -> Result<(), PackError> {
        let counter = self.entries.len() as u64;
        let offset = self.buf.len();
        let aad = crypto::blob_aad(kind, codec as u8, &id);
        self.key.seal_append(&crypto::counter_nonce(counter), &aad, encoded, &mut self.buf);
        if crate::failpoint::is_armed("flip-after-encrypt") {
            self.buf[offset] ^= 0x04;
        }
        let entry = PackEntry {
            kind,
            codec,
            id,
            offset: offset as u32,
            stored_len: (self.buf.len() - offset) as u32,
            raw_len: raw_len as u32,
        };
        let check = open_blob(keys, &self.salt, counter, &entry, &self.buf[offset..]);
        if check.is_err() {
            self.buf.truncate(offset);
            return Err(PackError::VerifyAfterEncrypt(id));
        }
        self.entries.push(entry);
        Ok(())
    }

    /// Close the pack: append the sealed directory and footer. Returns the id, bytes and entries.
    pub fn finish(mut self) -> (PackId, Vec<u8>, Vec<PackEntry>) {
        let mut dir = Vec::with_capacity(4 + self.entries.len() * ENTRY_LEN);
        dir.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            dir.push(e.kind as u8);
            dir.push(e.codec as u8);
            dir.extend_from_slice(e.id.as_bytes());
            dir.extend_from_slice(&e.stored_len.to_le_bytes());
            dir.extend_from_slice(&e.raw_len.to_le_bytes());
        }
        let start = self.buf.len();
        self.key.seal_append(
            &crypto::counter_nonce(DIRECTORY_COUNTER),
            &directory_aad(&self.salt),
            &dir,
            &mut self.buf,
        );
        let dir_len = (self.buf.len() - start) as u32;
        self.buf.extend_from_slice(&dir_len.to_le_bytes());
        self.buf.extend_from_slice(PACK_END_MAGIC);
        let id = PackId(*blake3::hash(&self.buf).as_bytes());
        (id, self.buf, self.entries)
    }
}

fn directory_aad(salt: &[u8; 32]) -> Vec<u8> {
    let mut aad = vec![FORMAT_VERSION, ObjectType::PackDirectory as u8, 0];
    aad.extend_from_slice(salt);
    aad
}

/// Decrypt, decode and verify a blob in its own buffer; a raw chunk comes back borrowed.
fn open_blob_in_place<'a>(
    keys: &VaultKeys,
    salt: &[u8; 32],
    counter: u64,
    e: &PackEntry,
    sealed: &'a mut [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, PackError> {
    let key = keys.pack_key(salt)?;
    let aad = crypto::blob_aad(e.kind, e.codec as u8, &e.id);
    let encoded = key
        .open_in_place(&crypto::counter_nonce(counter), &aad, sealed)
        .map_err(|a| PackError::Auth(a, format!("blob of chunk {}", e.id)))?;
    let plain = match e.codec {
        Codec::Raw if encoded.len() == e.raw_len as usize => std::borrow::Cow::Borrowed(encoded),
        codec => std::borrow::Cow::Owned(
            codec::decode(codec, encoded, e.raw_len as usize)
                .map_err(|source| PackError::Codec { id: e.id, source })?,
        ),
    };
    if keys.chunk_id(&plain) != e.id {
        return Err(PackError::IdMismatch(e.id));
    }
    Ok(plain)
}

/// Like [`open_blob_in_place`] on a copy of `sealed`.
fn open_blob(
    keys: &VaultKeys,
    salt: &[u8; 32],
    counter: u64,
    e: &PackEntry,
    sealed: &[u8],
) -> Result<Vec<u8>, PackError> {
    let mut buf = sealed.to_vec();
    open_blob_in_place(keys, salt, counter, e, &mut buf).map(std::borrow::Cow::into_owned)
}

/// Like [`open_located`], decrypting where the bytes lie: a raw chunk comes back borrowed from
/// `sealed`, without a copy.
pub fn open_located_in_place<'a>(
    keys: &VaultKeys,
    loc: &BlobLocation,
    sealed: &'a mut [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, PackError> {
    check_located_len(loc, sealed.len())?;
    open_blob_in_place(keys, &loc.salt, u64::from(loc.counter), &loc.entry, sealed)
}

fn check_located_len(loc: &BlobLocation, len: usize) -> Result<(), PackError> {
    if len != loc.entry.stored_len as usize {
        return Err(PackError::Malformed(format!(
            "blob of chunk {} has {len} bytes, expected {}",
            loc.entry.id, loc.entry.stored_len
        )));
    }
    Ok(())
}

/// Everything needed to decrypt one blob read by a ranged GET.
#[derive(Debug, Clone, Copy)]
pub struct BlobLocation {
    /// Pack salt (read from the pack header, also kept in the index).
    pub salt: [u8; 32],
    /// Position of the blob in its pack (its nonce counter).
    pub counter: u32,
    /// Directory entry.
    pub entry: PackEntry,
}

/// Decrypt, decode and verify one blob.
pub fn open_located(keys: &VaultKeys, loc: &BlobLocation, sealed: &[u8]) -> Result<Vec<u8>, PackError> {
    check_located_len(loc, sealed.len())?;
    open_blob(keys, &loc.salt, u64::from(loc.counter), &loc.entry, sealed)
}

/// The parsed tail of a pack: its salt and directory.
#[derive(Debug, Clone)]
pub struct PackDirectory {
    /// The salt from the header.
    pub salt: [u8; 32],
    /// Entries in blob order; entry i has nonce counter i.
    pub entries: Vec<PackEntry>,
}

/// Number of bytes to read from the end of a pack to get its footer.
pub const fn footer_len() -> usize {
    FOOTER_LEN
}

/// Parse the footer: the sealed directory's length.
pub fn parse_footer(footer: &[u8], pack_len: u64) -> Result<u32, PackError> {
    if footer.len() != FOOTER_LEN || &footer[4..] != PACK_END_MAGIC {
        return Err(PackError::Malformed("end magic missing (truncated pack?)".into()));
    }
    let dir_len = u32::from_le_bytes(footer[..4].try_into().unwrap_or_default());
    if u64::from(dir_len) + (HEADER_LEN + FOOTER_LEN) as u64 > pack_len || (dir_len as usize) < TAG_LEN + 4 {
        return Err(PackError::Malformed(format!(
            "directory length {dir_len} does not fit a pack of {pack_len} bytes"
        )));
    }
    Ok(dir_len)
}

/// Parse a whole pack's directory (the pack's bytes in full, or `header || tail` from ranged reads).
pub fn read_directory(
    keys: &VaultKeys,
    header: &[u8],
    sealed_dir: &[u8],
    pack_len: u64,
) -> Result<PackDirectory, PackError> {
    if header.len() < HEADER_LEN || &header[..8] != PACK_MAGIC {
        return Err(PackError::Malformed("pack magic missing".into()));
    }
    let salt: [u8; 32] = header[8..HEADER_LEN].try_into().unwrap_or_default();
    let key = keys.pack_key(&salt)?;
    let dir = key
        .open(&crypto::counter_nonce(DIRECTORY_COUNTER), &directory_aad(&salt), sealed_dir)
        .map_err(|a| PackError::Auth(a, "directory".into()))?;
    if dir.len() < 4 {
        return Err(PackError::Malformed("directory too short".into()));
    }
    let count = u32::from_le_bytes(dir[..4].try_into().unwrap_or_default());
    if count > MAX_BLOBS || dir.len() != 4 + count as usize * ENTRY_LEN {
        return Err(PackError::Malformed(format!("directory lists {count} blobs in {} bytes", dir.len())));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut offset = HEADER_LEN as u64;
    let blobs_end = pack_len - (FOOTER_LEN + sealed_dir.len()) as u64;
    for rec in dir[4..].chunks_exact(ENTRY_LEN) {
        let kind = ObjectType::from_byte(rec[0])
            .filter(|k| matches!(k, ObjectType::DataChunk | ObjectType::TreeChunk))
            .ok_or_else(|| PackError::Malformed(format!("unknown blob type {}", rec[0])))?;
        let codec =
            Codec::from_byte(rec[1]).ok_or_else(|| PackError::Malformed(format!("unknown codec {}", rec[1])))?;
        let id = ChunkId::from_slice(&rec[2..34]).unwrap_or_default();
        let stored_len = u32::from_le_bytes(rec[34..38].try_into().unwrap_or_default());
        let raw_len = u32::from_le_bytes(rec[38..42].try_into().unwrap_or_default());
        if offset + u64::from(stored_len) > blobs_end {
            return Err(PackError::Malformed(format!("blob of chunk {id} runs past the directory")));
        }
        entries.push(PackEntry { kind, codec, id, offset: offset as u32, stored_len, raw_len });
        offset += u64::from(stored_len);
    }
    if offset != blobs_end {
        return Err(PackError::Malformed("blobs do not fill the pack".into()));
    }
    Ok(PackDirectory { salt, entries })
}

/// Parse a directory from a complete pack held in memory.
pub fn read_directory_full(keys: &VaultKeys, pack: &[u8]) -> Result<PackDirectory, PackError> {
    if pack.len() < HEADER_LEN + FOOTER_LEN {
        return Err(PackError::Malformed(format!("pack has only {} bytes", pack.len())));
    }
    let dir_len = parse_footer(&pack[pack.len() - FOOTER_LEN..], pack.len() as u64)? as usize;
    let dir_start = pack.len() - FOOTER_LEN - dir_len;
    read_directory(keys, &pack[..HEADER_LEN], &pack[dir_start..pack.len() - FOOTER_LEN], pack.len() as u64)
}

/// Decrypt every blob of a complete pack, in order.
pub fn open_all<'a>(
    keys: &'a VaultKeys,
    dir: &'a PackDirectory,
    pack: &'a [u8],
) -> impl Iterator<Item = (PackEntry, Result<Vec<u8>, PackError>)> + 'a {
    dir.entries.iter().enumerate().map(move |(i, e)| {
        let sealed = &pack[e.offset as usize..(e.offset + e.stored_len) as usize];
        (*e, open_blob(keys, &dir.salt, i as u64, e, sealed))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use proptest::prelude::*;

    fn keys() -> VaultKeys {
        MasterKey::from_bytes([42; 32]).derive()
    }

    #[test]
    fn build_and_read_back() {
        let k = keys();
        let mut b = PackBuilder::new(&k, 1024);
        let mut ids = vec![];
        for i in 0..5u8 {
            let data = vec![i; 1000 + i as usize];
            let id = k.chunk_id(&data);
            let (codec, enc) = codec::encode(&data, 3);
            b.add(&k, ObjectType::DataChunk, id, codec, &enc, data.len()).unwrap();
            ids.push((id, data));
        }
        let (pid, bytes, entries) = b.finish();
        assert_eq!(pid.0, *blake3::hash(&bytes).as_bytes());
        let dir = read_directory_full(&k, &bytes).unwrap();
        assert_eq!(dir.entries, entries);
        for ((e, plain), (id, data)) in open_all(&k, &dir, &bytes).zip(ids) {
            assert_eq!(e.id, id);
            assert_eq!(plain.unwrap(), data);
        }
    }

    proptest! {
        #[test]
        fn mutated_packs_never_panic(flip in any::<usize>(), cut in any::<usize>()) {
            let k = keys();
            let mut b = PackBuilder::new(&k, 1024);
            let data = b"some chunk".repeat(50);
            b.add(&k, ObjectType::DataChunk, k.chunk_id(&data), Codec::Raw, &data, data.len()).unwrap();
            let (_, mut bytes, _) = b.finish();
            let i = flip % bytes.len();
            bytes[i] ^= 0x80;
            if let Ok(dir) = read_directory_full(&k, &bytes) {
                for (_, r) in open_all(&k, &dir, &bytes) { let _ = r; }
            }
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = read_directory_full(&k, &bytes);
        }
    }
}
