//! The vault's keys and its one cipher interface.
//!
//! One random 32-byte master key per vault; every working key is derived from it with BLAKE3's
//! `derive_key`, each under its own context string. Packs and sealed objects carry a random 32-byte
//! salt; their AES-256-GCM key is `keyed_hash(root, salt)`, so each key encrypts one pack (counter
//! nonces, one per blob) or one object (a single message), far inside GCM's per-key limits.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::ids::ChunkId;

/// Version byte bound into every AAD.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes the AEAD adds to every message.
pub const TAG_LEN: usize = 16;

/// The kinds of encrypted things; the byte is bound into the AAD so one kind can never be
/// accepted as another (borg CVE-2016-10099 / CVE-2023-36811 class).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjectType {
    /// A chunk of file or stream data inside a pack.
    DataChunk = 1,
    /// A chunk of a snapshot's tree stream inside a pack.
    TreeChunk = 2,
    /// The directory at the end of a pack.
    PackDirectory = 3,
    /// An index segment.
    IndexSegment = 4,
    /// A snapshot manifest.
    Snapshot = 5,
    /// A writer session marker.
    Session = 6,
    /// A controller-signed snapshot receipt (written by the agent daemon).
    Receipt = 7,
    /// The mark of a two-phase garbage collection (`gc/mark`).
    GcMark = 8,
    /// A controller-signed document stored write-once: a drill report, an audit checkpoint, the
    /// report-signing public key (`reports/`, `audit/`).
    Document = 9,
}

impl ObjectType {
    /// Decode the byte stored in a pack entry or object header.
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::DataChunk,
            2 => Self::TreeChunk,
            3 => Self::PackDirectory,
            4 => Self::IndexSegment,
            5 => Self::Snapshot,
            6 => Self::Session,
            7 => Self::Receipt,
            8 => Self::GcMark,
            9 => Self::Document,
            _ => return None,
        })
    }
}

/// Decryption failed: wrong key, or the bytes or their context were changed.
#[derive(Debug, thiserror::Error)]
#[error("authentication failed (wrong key, or data or its context was altered)")]
pub struct AuthError;

/// The random master key of a vault. Never stored unwrapped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> Self {
        let mut k = Self([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k.0);
        k
    }

    /// From raw bytes (in golden tests and fixtures).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// From an unwrapped key slot's plaintext, copied straight into the zeroized key (no plain
    /// copy on the way); `None` unless it is 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut k = Self([0u8; 32]);
        (bytes.len() == 32).then(|| {
            k.0.copy_from_slice(bytes);
            k
        })
    }

    /// Raw bytes, for wrapping into a key slot.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// All working keys of the vault.
    pub fn derive(&self) -> VaultKeys {
        VaultKeys {
            chunk_id: blake3::derive_key("tresor 2026 v1 chunk id", &self.0),
            pack_root: blake3::derive_key("tresor 2026 v1 pack key", &self.0),
            object_root: blake3::derive_key("tresor 2026 v1 object key", &self.0),
            config_mac: blake3::derive_key("tresor 2026 v1 config mac", &self.0),
            chunker_seed: {
                let k = blake3::derive_key("tresor 2026 v1 chunker seed", &self.0);
                u64::from_le_bytes(k[..8].try_into().unwrap_or([0; 8]))
            },
        }
    }
}

/// Keys derived from the master key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct VaultKeys {
    chunk_id: [u8; 32],
    pack_root: [u8; 32],
    object_root: [u8; 32],
    config_mac: [u8; 32],
    /// Seed for the chunker's gear table, so chunk boundaries do not reveal known content.
    pub chunker_seed: u64,
}

impl VaultKeys {
    /// The chunk id: keyed BLAKE3, so storage cannot confirm known content.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.chunk_id, plaintext).as_bytes())
    }

    /// The key of one pack, from the pack's salt.
    pub fn pack_key(&self, salt: &[u8; 32]) -> SealKey {
        SealKey::new(blake3::keyed_hash(&self.pack_root, salt).as_bytes())
    }

    /// The key of one sealed object, from the object's salt.
    pub fn object_key(&self, salt: &[u8; 32]) -> SealKey {
        SealKey::new(blake3::keyed_hash(&self.object_root, salt).as_bytes())
    }

    /// MAC binding the vault config to the key slots.
    pub fn config_mac(&self, config_bytes: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.config_mac, config_bytes).as_bytes()
    }
}

/// The AAD of a blob inside a pack: format version, object type, codec and chunk id.
pub fn blob_aad(kind: ObjectType, codec: u8, id: &ChunkId) -> [u8; 35] {
    let mut aad = [0u8; 35];
    aad[0] = FORMAT_VERSION;
    aad[1] = kind as u8;
    aad[2] = codec;
    aad[3..].copy_from_slice(id.as_bytes());
    aad
}

/// Counter nonce: four zero bytes then the big-endian counter.
pub fn counter_nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// An AES-256-GCM key. The single place the cipher crate is used, so it can be swapped.
pub struct SealKey(Aes256Gcm);

impl SealKey {
    /// From 32 raw key bytes.
    pub fn new(key: &[u8; 32]) -> Self {
        Self(Aes256Gcm::new(key.into()))
    }

    /// Encrypt `plaintext` and append ciphertext then tag to `out`.
    pub fn seal_append(&self, nonce: &[u8; 12], aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, &mut out[start..])
            // aes-gcm fails only for messages over 64 GiB; chunks and objects are far smaller.
            .unwrap_or_else(|_| unreachable!("AES-GCM message length limit exceeded"));
        out.extend_from_slice(&tag);
    }

    /// Encrypt into a new buffer.
    pub fn seal(&self, nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        self.seal_append(nonce, aad, plaintext, &mut out);
        out
    }

    /// Decrypt and authenticate `ciphertext || tag` where it lies; returns the plaintext, the
    /// front of `sealed`. Saves a copy on the restore path.
    pub fn open_in_place<'a>(&self, nonce: &[u8; 12], aad: &[u8], sealed: &'a mut [u8]) -> Result<&'a [u8], AuthError> {
        if sealed.len() < TAG_LEN {
            return Err(AuthError);
        }
        let (ct, tag) = sealed.split_at_mut(sealed.len() - TAG_LEN);
        self.0
            .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, ct, Tag::from_slice(tag))
            .map_err(|_| AuthError)?;
        Ok(ct)
    }

    /// Decrypt and authenticate `ciphertext || tag` into a new buffer.
    pub fn open(&self, nonce: &[u8; 12], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, AuthError> {
        let mut buf = sealed.to_vec();
        let len = self.open_in_place(nonce, aad, &mut buf)?.len();
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_rejects_changed_aad_or_bytes() {
        let key = SealKey::new(&[7u8; 32]);
        let id = ChunkId([1; 32]);
        let sealed = key.seal(&counter_nonce(3), &blob_aad(ObjectType::DataChunk, 0, &id), b"hello");
        assert_eq!(key.open(&counter_nonce(3), &blob_aad(ObjectType::DataChunk, 0, &id), &sealed).unwrap(), b"hello");
        assert!(key.open(&counter_nonce(3), &blob_aad(ObjectType::TreeChunk, 0, &id), &sealed).is_err());
        assert!(key.open(&counter_nonce(4), &blob_aad(ObjectType::DataChunk, 0, &id), &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert!(key.open(&counter_nonce(3), &blob_aad(ObjectType::DataChunk, 0, &id), &flipped).is_err());
        assert!(key.open(&counter_nonce(3), &[], &sealed[..3]).is_err());
    }
}
