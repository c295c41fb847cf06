//! The vault's keys and its one cipher interface.
//!
//! One random 32-byte master key per vault; every working key is derived from it with BLAKE3's
//! `derive_key`, each under its own context string. Packs and sealed objects carry a random 32-byte
//! salt; their AES-256-GCM key is `keyed_hash(root, salt)`, so each key encrypts one pack (counter
//! nonces, one per blob) or one object (a single message), far inside GCM's per-key limits.
//!
//! Key epochs (docs/decisions/0014): removing a slot or `key rotate --master` starts a new epoch
//! with a new random master key. New packs and objects are sealed under the newest epoch's keys,
//! and their salt names the epoch (`EPOCH_SALT_TAG | epoch u32 LE | 20 random bytes`); epoch 1 is
//! the key made at init and keeps fully random salts, so a vault that never rotated is written
//! exactly as before. The chunk-id key, chunker seed and config MAC stay those of epoch 1, so
//! deduplication spans epochs.

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

    /// All working keys of a vault that has only its first epoch (the master key made at init).
    pub fn derive(&self) -> VaultKeys {
        VaultKeys {
            chunk_id: blake3::derive_key("tresor 2026 v1 chunk id", &self.0),
            config_mac: blake3::derive_key("tresor 2026 v1 config mac", &self.0),
            chunker_seed: {
                let k = blake3::derive_key("tresor 2026 v1 chunker seed", &self.0);
                u64::from_le_bytes(k[..8].try_into().unwrap_or([0; 8]))
            },
            epochs: vec![self.epoch_keys(FIRST_EPOCH)],
        }
    }

    fn epoch_keys(&self, epoch: u32) -> EpochKeys {
        EpochKeys {
            epoch,
            pack_root: blake3::derive_key("tresor 2026 v1 pack key", &self.0),
            object_root: blake3::derive_key("tresor 2026 v1 object key", &self.0),
        }
    }
}

/// The epoch of the master key made at init.
pub const FIRST_EPOCH: u32 = 1;
/// The first 8 bytes of a salt that names its key epoch (epochs after the first).
pub const EPOCH_SALT_TAG: [u8; 8] = *b"TRSREPCH";

/// The epoch a salt names: tagged salts carry it, every other salt is of the first epoch.
pub fn salt_epoch(salt: &[u8; 32]) -> u32 {
    if salt[..8] == EPOCH_SALT_TAG { u32::from_le_bytes([salt[8], salt[9], salt[10], salt[11]]) } else { FIRST_EPOCH }
}

/// A pack or object sealed under a key epoch the opener does not hold.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "written under key epoch {0}, which the key slot that opened this vault does not reach (a slot removed or revoked before that epoch began)"
)]
pub struct EpochMissing(pub u32);

#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct EpochKeys {
    epoch: u32,
    pack_root: [u8; 32],
    object_root: [u8; 32],
}

/// Keys derived from the master keys of every epoch the opener reaches.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct VaultKeys {
    chunk_id: [u8; 32],
    config_mac: [u8; 32],
    /// Seed for the chunker's gear table, so chunk boundaries do not reveal known content.
    pub chunker_seed: u64,
    /// Every reachable epoch, ascending; the last is the one new data is written under.
    epochs: Vec<EpochKeys>,
}

impl VaultKeys {
    /// The keys of a vault whose epochs after the first have master keys `later` (ascending,
    /// each with its epoch number). `first` is epoch 1's master key, which fixes the chunk ids.
    pub fn with_epochs(first: &MasterKey, later: &[(u32, MasterKey)]) -> Self {
        let mut keys = first.derive();
        for (epoch, master) in later {
            keys.epochs.push(master.epoch_keys(*epoch));
        }
        keys.epochs.sort_by_key(|e| e.epoch);
        keys
    }

    /// The epoch new packs and objects are sealed under.
    pub fn current_epoch(&self) -> u32 {
        self.epochs.last().map_or(FIRST_EPOCH, |e| e.epoch)
    }

    /// A fresh salt for a new pack or object, naming the current epoch (epoch 1: all random).
    pub fn fresh_salt(&self) -> [u8; 32] {
        let mut salt = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
        let epoch = self.current_epoch();
        if epoch != FIRST_EPOCH {
            salt[..8].copy_from_slice(&EPOCH_SALT_TAG);
            salt[8..12].copy_from_slice(&epoch.to_le_bytes());
        }
        salt
    }

    fn epoch(&self, salt: &[u8; 32]) -> Result<&EpochKeys, EpochMissing> {
        let epoch = salt_epoch(salt);
        self.epochs.iter().find(|e| e.epoch == epoch).ok_or(EpochMissing(epoch))
    }

    /// The chunk id: keyed BLAKE3, so storage cannot confirm known content.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.chunk_id, plaintext).as_bytes())
    }

    /// The key of one pack, from the pack's salt (which names its epoch).
    pub fn pack_key(&self, salt: &[u8; 32]) -> Result<SealKey, EpochMissing> {
        Ok(SealKey::new(blake3::keyed_hash(&self.epoch(salt)?.pack_root, salt).as_bytes()))
    }

    /// The key of one sealed object, from the object's salt (which names its epoch).
    pub fn object_key(&self, salt: &[u8; 32]) -> Result<SealKey, EpochMissing> {
        Ok(SealKey::new(blake3::keyed_hash(&self.epoch(salt)?.object_root, salt).as_bytes()))
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

    #[test]
    fn salts_name_their_epoch_and_only_held_epochs_open() {
        let first = MasterKey::from_bytes([1; 32]);
        let only_first = first.derive();
        let salt = only_first.fresh_salt();
        assert_eq!(salt_epoch(&salt), FIRST_EPOCH);
        let both = VaultKeys::with_epochs(&first, &[(2, MasterKey::from_bytes([2; 32]))]);
        let new_salt = both.fresh_salt();
        assert_eq!((both.current_epoch(), salt_epoch(&new_salt)), (2, 2));
        assert_eq!(&new_salt[..8], b"TRSREPCH");
        assert!(both.pack_key(&salt).is_ok() && both.object_key(&new_salt).is_ok());
        assert!(matches!(only_first.pack_key(&new_salt), Err(EpochMissing(2))));
        // Dedup spans epochs: the chunk id does not depend on the epoch.
        assert_eq!(only_first.chunk_id(b"x"), both.chunk_id(b"x"));
        // Epoch 1's keys are unchanged by later epochs (vaults written before epochs still open).
        let sealed = only_first.pack_key(&salt).unwrap().seal(&counter_nonce(0), b"", b"hi");
        assert_eq!(both.pack_key(&salt).unwrap().open(&counter_nonce(0), b"", &sealed).unwrap(), b"hi");
    }
}
