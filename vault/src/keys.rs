//! Key slots: a master key wrapped under an Argon2id key-encryption key.
//!
//! A slot is a small JSON object `keys/<slot-id>`. Each user or agent has its own slot; the escrow
//! slot is made at `init` from a random key file that the admin stores offline.
//!
//! Version 1 slots wrap the first epoch's master key. Version 2 slots (key epochs, decision 0014)
//! wrap the master key of the epoch current when the slot was made plus the slot's own X25519
//! secret; its public key lies in the slot, so whoever starts a later epoch can grant that epoch's
//! key to the slot without knowing its secret (`epochs.rs`).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{FIRST_EPOCH, MasterKey};
use crate::ids::VaultId;

/// The most memory a slot's KDF may ask for: 1 GiB.
pub const MAX_MEMORY_KIB: u32 = 1024 * 1024;
/// The fewest: 8 MiB.
pub const MIN_MEMORY_KIB: u32 = 8 * 1024;
/// The most passes.
pub const MAX_ITERATIONS: u32 = 10;
/// The most lanes.
pub const MAX_PARALLELISM: u32 = 4;

/// Argon2id parameters stored in a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Always "argon2id".
    pub algorithm: String,
    /// Argon2 version (0x13 = 19).
    pub version: u32,
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    /// Random salt, base64.
    pub salt: String,
}

impl KdfParams {
    /// The parameters `init` and `key add` write: 64 MiB, 3 passes, 1 lane.
    pub fn recommended() -> Self {
        let mut salt = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
        Self {
            algorithm: "argon2id".into(),
            version: 0x13,
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
            salt: B64.encode(salt),
        }
    }

    /// Refuse, before any work, parameters a planted slot could use to make every opener spend
    /// gigabytes or minutes (docs/SECURITY.md): at most 1 GiB, 10 passes, 4 lanes, at least
    /// 8 MiB and 1 pass.
    pub fn within_caps(&self) -> Result<(), KeyError> {
        if !(MIN_MEMORY_KIB..=MAX_MEMORY_KIB).contains(&self.memory_kib)
            || !(1..=MAX_ITERATIONS).contains(&self.iterations)
            || !(1..=MAX_PARALLELISM).contains(&self.parallelism)
        {
            return Err(KeyError::Malformed(format!(
                "KDF parameters beyond the caps (memory {} KiB of at most {MAX_MEMORY_KIB}, {} passes of at most {MAX_ITERATIONS}, {} lanes of at most {MAX_PARALLELISM}); refused without deriving",
                self.memory_kib, self.iterations, self.parallelism
            )));
        }
        Ok(())
    }

    /// Work an unwrap costs, in KiB-passes: slots are tried cheapest first.
    pub fn cost(&self) -> u64 {
        u64::from(self.memory_kib) * u64::from(self.iterations)
    }

    fn derive(&self, secret: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        if self.algorithm != "argon2id" || self.version != 0x13 {
            return Err(KeyError::Malformed(format!("unsupported KDF {} version {}", self.algorithm, self.version)));
        }
        self.within_caps()?;
        let salt = B64.decode(&self.salt).map_err(|e| KeyError::Malformed(format!("salt is not base64: {e}")))?;
        let params = argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| KeyError::Malformed(format!("KDF parameters rejected: {e}")))?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(secret, &salt, out.as_mut())
            .map_err(|e| KeyError::Malformed(format!("KDF failed: {e}")))?;
        Ok(out)
    }
}

/// What a slot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotKind {
    /// Unlocked by a password (a person or an agent's secret file).
    Password,
    /// Unlocked by the escrow key file made at init.
    Escrow,
}

/// One stored key slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySlot {
    /// Format of the slot object.
    pub version: u32,
    /// Slot id; also the object name under `keys/`.
    pub id: String,
    /// Password or escrow.
    pub kind: SlotKind,
    /// Free text: who holds it.
    pub label: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// KDF that turns the secret into the wrapping key.
    pub kdf: KdfParams,
    /// Version 1: base64(nonce(12) || AES-256-GCM(master key) || tag(16)); AAD = "tresor key
    /// slot v1" || vault id || slot id. Version 2: the plaintext is the epoch's master key ||
    /// the slot's X25519 secret; AAD = "tresor key slot v2" || vault id || slot id || epoch u32
    /// LE || public key.
    pub wrapped_key: String,
    /// base64 keyed-BLAKE3 MAC of the `config` object's bytes (under the first epoch's key),
    /// proving the config was not altered.
    pub config_mac: String,
    /// Version 2: the key epoch whose master key the slot wraps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
    /// Version 2: base64 X25519 public key that later epochs grant their master key to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Version 2: base64 keyed BLAKE3, under a key derived from the master key of `epoch`, of the
    /// vault id, slot id, kind, epoch and public key: proof that whoever made the slot held that
    /// epoch, checked before a new epoch is granted to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
}

/// What a slot opens to.
pub struct Unwrapped {
    /// The epoch of `master`.
    pub epoch: u32,
    /// That epoch's master key.
    pub master: MasterKey,
    /// Version 2 slots: the secret that opens later epochs' grants.
    pub grant_secret: Option<x25519_dalek::StaticSecret>,
}

/// Key-slot errors.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No slot accepted the secret.
    #[error("wrong password or key file: no key slot of this vault accepts it")]
    WrongSecret,
    /// The slot's bytes are not a valid slot.
    #[error("key slot is malformed: {0}")]
    Malformed(String),
    /// The slot unwrapped, but the vault config does not carry its MAC.
    #[error("the vault's config object was altered: its MAC does not match the key slot")]
    ConfigTampered,
    /// An escrow key file is not in the expected form.
    #[error("escrow key file is not valid: {0}")]
    BadKeyFile(String),
}

fn slot_aad(vault: &VaultId, slot_id: &str) -> Vec<u8> {
    let mut aad = b"tresor key slot v1".to_vec();
    aad.extend_from_slice(vault.as_bytes());
    aad.extend_from_slice(slot_id.as_bytes());
    aad
}

fn slot_aad_v2(vault: &VaultId, slot_id: &str, epoch: u32, public: &[u8; 32]) -> Vec<u8> {
    let mut aad = b"tresor key slot v2".to_vec();
    aad.extend_from_slice(vault.as_bytes());
    aad.extend_from_slice(slot_id.as_bytes());
    aad.extend_from_slice(&epoch.to_le_bytes());
    aad.extend_from_slice(public);
    aad
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    b
}

impl KeySlot {
    /// A version 2 slot for `secret` that opens epoch `epoch`'s `master` and every later epoch
    /// granted to it, with freshly salted recommended KDF parameters.
    pub fn wrap(
        vault: &VaultId,
        kind: SlotKind,
        label: &str,
        secret: &[u8],
        (epoch, master): (u32, &MasterKey),
        config_mac: [u8; 32],
    ) -> Result<Self, KeyError> {
        Self::wrap_with(vault, kind, label, secret, (epoch, master), config_mac, KdfParams::recommended())
    }

    /// Wrap with explicit KDF parameters.
    pub fn wrap_with(
        vault: &VaultId,
        kind: SlotKind,
        label: &str,
        secret: &[u8],
        (epoch, master): (u32, &MasterKey),
        config_mac: [u8; 32],
        kdf: KdfParams,
    ) -> Result<Self, KeyError> {
        let id = hex::encode(random::<8>());
        let grant_secret = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
        let public = x25519_dalek::PublicKey::from(&grant_secret).to_bytes();
        let mut plain = Zeroizing::new([0u8; 64]);
        plain[..32].copy_from_slice(master.expose());
        plain[32..].copy_from_slice(grant_secret.as_bytes());
        let aad = slot_aad_v2(vault, &id, epoch, &public);
        let wrapped = seal_under_kek(&*kdf.derive(secret)?, &aad, plain.as_ref())?;
        let binding = slot_binding(master, vault, &id, kind, epoch, &public);
        Ok(Self {
            version: 2,
            epoch: Some(epoch),
            public_key: Some(B64.encode(public)),
            binding: Some(B64.encode(binding)),
            ..Self::v1(id, kind, label, kdf, &wrapped, config_mac)
        })
    }

    /// A version 1 slot (written before key epochs), for tests of vaults made before them.
    pub fn wrap_v1(
        vault: &VaultId,
        kind: SlotKind,
        label: &str,
        secret: &[u8],
        master: &MasterKey,
        config_mac: [u8; 32],
        kdf: KdfParams,
    ) -> Result<Self, KeyError> {
        let id = hex::encode(random::<8>());
        let wrapped = seal_under_kek(&*kdf.derive(secret)?, &slot_aad(vault, &id), master.expose())?;
        Ok(Self::v1(id, kind, label, kdf, &wrapped, config_mac))
    }

    fn v1(id: String, kind: SlotKind, label: &str, kdf: KdfParams, wrapped: &[u8], config_mac: [u8; 32]) -> Self {
        Self {
            version: 1,
            id,
            kind,
            label: label.to_string(),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            kdf,
            wrapped_key: B64.encode(wrapped),
            config_mac: B64.encode(config_mac),
            epoch: None,
            public_key: None,
            binding: None,
        }
    }

    /// Parse a slot object.
    pub fn from_json(bytes: &[u8]) -> Result<Self, KeyError> {
        let slot: Self = serde_json::from_slice(bytes).map_err(|e| KeyError::Malformed(e.to_string()))?;
        match (slot.version, slot.epoch, slot.public_key.is_some()) {
            (1, None, false) if slot.binding.is_none() => {}
            (2, Some(e), true) if e >= FIRST_EPOCH && slot.binding.is_some() => {}
            (1 | 2, ..) => {
                return Err(KeyError::Malformed(format!(
                    "a version {} slot with the wrong fields for its version",
                    slot.version
                )));
            }
            (v, ..) => return Err(KeyError::Malformed(format!("unknown key slot version {v}"))),
        }
        Ok(slot)
    }

    /// Whether the slot was made by someone holding `master`, the key of the slot's own epoch
    /// (a planted slot, made without it, is never granted a new epoch).
    pub fn bound_to(&self, vault: &VaultId, master: &MasterKey) -> bool {
        let (Some(epoch), Some(public), Some(binding)) = (self.epoch, self.grant_public(), self.binding.as_deref())
        else {
            return false;
        };
        let want = slot_binding(master, vault, &self.id, self.kind, epoch, public.as_bytes());
        B64.decode(binding).is_ok_and(|b| b.as_slice() == want.as_slice())
    }

    /// The X25519 public key later epochs grant to (version 2 slots).
    pub fn grant_public(&self) -> Option<x25519_dalek::PublicKey> {
        let raw = B64.decode(self.public_key.as_deref()?).ok()?;
        let bytes: [u8; 32] = raw.try_into().ok()?;
        Some(x25519_dalek::PublicKey::from(bytes))
    }

    /// Serialise a slot object.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Unwrap the slot with `secret`; `WrongSecret` if it does not fit.
    pub fn unwrap(&self, vault: &VaultId, secret: &[u8]) -> Result<Unwrapped, KeyError> {
        let wrapped = B64
            .decode(&self.wrapped_key)
            .map_err(|e| KeyError::Malformed(format!("wrapped key is not base64: {e}")))?;
        let (plain_len, aad) = match (self.epoch, self.grant_public()) {
            (Some(epoch), Some(public)) => (64, slot_aad_v2(vault, &self.id, epoch, public.as_bytes())),
            _ if self.version == 1 => (32, slot_aad(vault, &self.id)),
            _ => return Err(KeyError::Malformed("version 2 slot without a valid public key".into())),
        };
        if wrapped.len() != 12 + plain_len + 16 {
            return Err(KeyError::Malformed(format!(
                "wrapped key has {} bytes, expected {}",
                wrapped.len(),
                12 + plain_len + 16
            )));
        }
        let kek = self.kdf.derive(secret)?;
        let cipher = Aes256Gcm::new(kek.as_ref().into());
        let plain = Zeroizing::new(
            cipher
                .decrypt(Nonce::from_slice(&wrapped[..12]), Payload { msg: &wrapped[12..], aad: &aad })
                .map_err(|_| KeyError::WrongSecret)?,
        );
        let master = MasterKey::from_slice(&plain[..32]).ok_or(KeyError::WrongSecret)?;
        let grant_secret = (plain.len() == 64).then(|| {
            let mut s = Zeroizing::new([0u8; 32]);
            s.copy_from_slice(&plain[32..]);
            x25519_dalek::StaticSecret::from(*s)
        });
        Ok(Unwrapped { epoch: self.epoch.unwrap_or(FIRST_EPOCH), master, grant_secret })
    }

    /// Check that `config_bytes` are the config this slot was made for.
    pub fn verify_config(&self, master: &MasterKey, config_bytes: &[u8]) -> Result<(), KeyError> {
        let expected = master.derive().config_mac(config_bytes);
        let stored = B64.decode(&self.config_mac).map_err(|_| KeyError::ConfigTampered)?;
        if stored.as_slice() == expected.as_slice() { Ok(()) } else { Err(KeyError::ConfigTampered) }
    }
}

fn slot_binding(
    master: &MasterKey,
    vault: &VaultId,
    id: &str,
    kind: SlotKind,
    epoch: u32,
    public: &[u8; 32],
) -> [u8; 32] {
    let key = blake3::derive_key("tresor 2026 slot binding", master.expose());
    let mut h = blake3::Hasher::new_keyed(&key);
    h.update(vault.as_bytes());
    h.update(&(id.len() as u32).to_le_bytes());
    h.update(id.as_bytes());
    h.update(&[match kind {
        SlotKind::Password => 1,
        SlotKind::Escrow => 2,
    }]);
    h.update(&epoch.to_le_bytes());
    h.update(public);
    *h.finalize().as_bytes()
}

fn seal_under_kek(kek: &[u8; 32], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, KeyError> {
    let nonce = random::<12>();
    let ct = Aes256Gcm::new(kek.into())
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
        .map_err(|_| KeyError::Malformed("wrapping failed".into()))?;
    let mut wrapped = nonce.to_vec();
    wrapped.extend_from_slice(&ct);
    Ok(wrapped)
}

/// First line of an escrow key file.
const ESCROW_HEADER: &str = "tresor-escrow-key-v1";

/// A random escrow secret, as stored in the offline key file.
pub struct EscrowKey {
    key: Zeroizing<[u8; 32]>,
    /// The vault the key file names, checked at open for a clear error.
    vault: Option<String>,
}

impl EscrowKey {
    /// A fresh random escrow secret.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, k.as_mut());
        Self { key: k, vault: None }
    }

    /// The key file's text.
    pub fn to_file_text(&self, vault: &VaultId) -> String {
        format!(
            "{ESCROW_HEADER}\nvault {vault}\n{}\n# Keep this file offline. With the storage location it restores every snapshot of the vault.\n",
            B64.encode(self.key.as_ref())
        )
    }

    /// Parse a key file.
    pub fn from_file_text(text: &str) -> Result<Self, KeyError> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
        if lines.next() != Some(ESCROW_HEADER) {
            return Err(KeyError::BadKeyFile(format!("first line must be {ESCROW_HEADER:?}")));
        }
        let vault = lines
            .next()
            .and_then(|l| l.strip_prefix("vault "))
            .ok_or_else(|| KeyError::BadKeyFile("second line must be \"vault <vault id>\"".into()))?
            .to_string();
        let key = lines.next().ok_or_else(|| KeyError::BadKeyFile("key line missing".into()))?;
        let raw = Zeroizing::new(B64.decode(key).map_err(|e| KeyError::BadKeyFile(format!("key is not base64: {e}")))?);
        if raw.len() != 32 {
            return Err(KeyError::BadKeyFile(format!("key has {} bytes, expected 32", raw.len())));
        }
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&raw);
        Ok(Self { key: k, vault: Some(vault) })
    }

    /// The vault id the key file names (`None` for a key not read from a file).
    pub fn vault(&self) -> Option<&str> {
        self.vault.as_deref()
    }

    /// The secret bytes fed to the KDF.
    pub fn secret(&self) -> &[u8] {
        self.key.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast_kdf() -> KdfParams {
        KdfParams { memory_kib: 8 * 1024, iterations: 1, ..KdfParams::recommended() }
    }

    #[test]
    fn wrap_unwrap_and_wrong_password() {
        let vault = VaultId::random();
        let master = MasterKey::generate();
        let slot =
            KeySlot::wrap_with(&vault, SlotKind::Password, "admin", b"pw", (3, &master), [0; 32], fast_kdf()).unwrap();
        let parsed = KeySlot::from_json(&slot.to_json()).unwrap();
        let opened = parsed.unwrap(&vault, b"pw").unwrap();
        assert_eq!((opened.epoch, opened.master.expose()), (3, master.expose()));
        let public = x25519_dalek::PublicKey::from(opened.grant_secret.as_ref().unwrap());
        assert_eq!(Some(public), parsed.grant_public());
        assert!(matches!(parsed.unwrap(&vault, b"nope"), Err(KeyError::WrongSecret)));
        assert!(matches!(parsed.unwrap(&VaultId::random(), b"pw"), Err(KeyError::WrongSecret)));
        // A swapped public key or epoch no longer unwraps: both are bound into the AAD.
        let mut swapped = parsed.clone();
        swapped.public_key =
            KeySlot::wrap_with(&vault, SlotKind::Password, "x", b"pw", (3, &master), [0; 32], fast_kdf())
                .unwrap()
                .public_key;
        assert!(matches!(swapped.unwrap(&vault, b"pw"), Err(KeyError::WrongSecret)));
        let mut later = parsed.clone();
        later.epoch = Some(4);
        assert!(matches!(later.unwrap(&vault, b"pw"), Err(KeyError::WrongSecret)));
    }

    #[test]
    fn a_slot_is_bound_to_the_key_of_its_epoch() {
        let vault = VaultId::random();
        let master = MasterKey::generate();
        let slot =
            KeySlot::wrap_with(&vault, SlotKind::Password, "a", b"pw", (2, &master), [0; 32], fast_kdf()).unwrap();
        let parsed = KeySlot::from_json(&slot.to_json()).unwrap();
        assert!(parsed.bound_to(&vault, &master));
        assert!(!parsed.bound_to(&vault, &MasterKey::generate()), "made without the epoch's key");
        assert!(!parsed.bound_to(&VaultId::random(), &master), "another vault's");
        let mut moved = parsed.clone();
        moved.epoch = Some(3);
        assert!(!moved.bound_to(&vault, &master), "the epoch is bound");
        let mut unbound = parsed.clone();
        unbound.binding = None;
        assert!(KeySlot::from_json(&unbound.to_json()).is_err(), "a version 2 slot needs its binding");
    }

    #[test]
    fn version_1_slots_still_open_to_the_first_epoch() {
        let vault = VaultId::random();
        let master = MasterKey::generate();
        let slot = KeySlot::wrap_v1(&vault, SlotKind::Escrow, "old", b"k", &master, [0; 32], fast_kdf()).unwrap();
        let parsed = KeySlot::from_json(&slot.to_json()).unwrap();
        let opened = parsed.unwrap(&vault, b"k").unwrap();
        assert_eq!((opened.epoch, opened.master.expose(), opened.grant_secret.is_none()), (1, master.expose(), true));
        let mut bad = parsed.clone();
        bad.epoch = Some(2);
        assert!(KeySlot::from_json(&bad.to_json()).is_err());
    }

    #[test]
    fn recommended_parameters_are_argon2id_64mib_3_passes() {
        let p = KdfParams::recommended();
        assert_eq!((p.algorithm.as_str(), p.memory_kib, p.iterations), ("argon2id", 65536, 3));
    }

    #[test]
    fn escrow_file_round_trip() {
        let k = EscrowKey::generate();
        let text = k.to_file_text(&VaultId::random());
        assert_eq!(EscrowKey::from_file_text(&text).unwrap().secret(), k.secret());
        assert!(EscrowKey::from_file_text("garbage").is_err());
    }
}
