//! Key epochs: a record per epoch after the first, `epochs/<epoch as 10 digits>`.
//!
//! A record carries the new epoch's master key granted to every carried slot (X25519 to the
//! slot's public key, then AES-256-GCM), the previous epoch's master key sealed under the new
//! one (so any later epoch reaches every older one), and a MAC under the previous epoch's key (so
//! only someone who held that epoch could have written it). A slot left out of a record, or one
//! made before key epochs, reads every epoch up to the one before that record and nothing
//! written after it. Decision 0014 gives the reasons and the limits.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::crypto::{MasterKey, SealKey, counter_nonce};
use crate::ids::VaultId;
use crate::keys::KeyError;

/// Where epoch records live.
pub const PREFIX: &str = "epochs/";
/// The largest epoch record read (a grant is ~100 bytes; thousands of slots fit).
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

/// Name of an epoch's record.
pub fn record_name(epoch: u32) -> String {
    format!("{PREFIX}{epoch:010}")
}

/// The epoch a record name stands for.
pub fn epoch_of(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(PREFIX)?;
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// One stored epoch record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EpochRecord {
    /// Record format, 1.
    pub version: u32,
    /// The vault.
    pub vault: String,
    /// This epoch (2 or later).
    pub epoch: u32,
    /// RFC 3339 time it began (information only).
    pub created: String,
    /// Why it began: "master key rotated", "slot X removed", "agent N revoked".
    pub reason: String,
    /// The slots it was not granted to, by id (removed or revoked, or made before key epochs).
    pub left_out: Vec<String>,
    /// base64(nonce(12) || AES-256-GCM(link key of this epoch, previous epoch's master key)).
    pub previous: String,
    /// Per slot id: base64(ephemeral X25519 public(32) || AES-256-GCM(grant key, this epoch's master key)).
    pub grants: BTreeMap<String, String>,
    /// base64 keyed BLAKE3 of the record with `proof` empty, under the previous epoch's proof key.
    pub proof: String,
}

fn link_key(master: &MasterKey) -> SealKey {
    SealKey::new(&blake3::derive_key("tresor 2026 epoch link", master.expose()))
}

fn link_aad(vault: &VaultId, epoch: u32) -> Vec<u8> {
    let mut aad = b"tresor epoch link v1".to_vec();
    aad.extend_from_slice(vault.as_bytes());
    aad.extend_from_slice(&epoch.to_le_bytes());
    aad
}

fn grant_key(shared: &[u8; 32], ephemeral: &PublicKey, slot: &PublicKey) -> SealKey {
    let mut material = Zeroizing::new(Vec::with_capacity(96));
    material.extend_from_slice(shared);
    material.extend_from_slice(ephemeral.as_bytes());
    material.extend_from_slice(slot.as_bytes());
    SealKey::new(&blake3::derive_key("tresor 2026 epoch grant", &material))
}

fn grant_aad(vault: &VaultId, epoch: u32, slot_id: &str) -> Vec<u8> {
    let mut aad = b"tresor epoch grant v1".to_vec();
    aad.extend_from_slice(vault.as_bytes());
    aad.extend_from_slice(&epoch.to_le_bytes());
    aad.extend_from_slice(slot_id.as_bytes());
    aad
}

fn malformed(epoch: u32, what: impl std::fmt::Display) -> KeyError {
    KeyError::Malformed(format!("epoch record {epoch}: {what}"))
}

impl EpochRecord {
    /// Begin epoch `epoch` with master key `new`, linked to the previous epoch's `previous`, and
    /// granted to `slots` (id and public key).
    pub fn begin(
        vault: &VaultId,
        epoch: u32,
        (previous, new): (&MasterKey, &MasterKey),
        slots: &[(String, PublicKey)],
        left_out: Vec<String>,
        reason: &str,
    ) -> Self {
        let mut nonce = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let mut sealed_previous = nonce.to_vec();
        link_key(new).seal_append(&nonce, &link_aad(vault, epoch), previous.expose(), &mut sealed_previous);
        let grants = slots
            .iter()
            .map(|(id, public)| {
                let ephemeral = StaticSecret::random_from_rng(rand::rngs::OsRng);
                let ephemeral_public = PublicKey::from(&ephemeral);
                let shared = ephemeral.diffie_hellman(public);
                let mut out = ephemeral_public.as_bytes().to_vec();
                // One fresh ephemeral key per grant, so each grant key seals one message: nonce 0.
                grant_key(shared.as_bytes(), &ephemeral_public, public).seal_append(
                    &counter_nonce(0),
                    &grant_aad(vault, epoch, id),
                    new.expose(),
                    &mut out,
                );
                (id.clone(), B64.encode(out))
            })
            .collect();
        let mut record = Self {
            version: 1,
            vault: vault.to_string(),
            epoch,
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            reason: reason.to_string(),
            left_out,
            previous: B64.encode(sealed_previous),
            grants,
            proof: String::new(),
        };
        record.proof = B64.encode(record.mac(previous));
        record
    }

    fn mac(&self, previous: &MasterKey) -> [u8; 32] {
        let unsigned = Self { proof: String::new(), ..self.clone() };
        let key = blake3::derive_key("tresor 2026 epoch proof", previous.expose());
        *blake3::keyed_hash(&key, &serde_json::to_vec(&unsigned).unwrap_or_default()).as_bytes()
    }

    /// Parse a record read from `name` in `vault`: its fields must match the name and vault.
    pub fn from_json(bytes: &[u8], vault: &VaultId, name: &str) -> Result<Self, KeyError> {
        let epoch = epoch_of(name).unwrap_or(0);
        let record: Self = serde_json::from_slice(bytes).map_err(|e| malformed(epoch, e))?;
        if record.version != 1 {
            return Err(malformed(epoch, format_args!("unknown version {}", record.version)));
        }
        if record.epoch != epoch || record.epoch < 2 {
            return Err(malformed(epoch, format_args!("names epoch {} under {name}", record.epoch)));
        }
        if record.vault != vault.to_string() {
            return Err(malformed(epoch, format_args!("belongs to vault {}", record.vault)));
        }
        Ok(record)
    }

    /// Serialise.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// This epoch's master key, from the grant to slot `slot_id`; `None` if the slot was not
    /// granted this epoch.
    pub fn open_grant(
        &self,
        vault: &VaultId,
        slot_id: &str,
        secret: &StaticSecret,
    ) -> Result<Option<MasterKey>, KeyError> {
        let Some(grant) = self.grants.get(slot_id) else {
            return Ok(None);
        };
        let raw = B64.decode(grant).map_err(|e| malformed(self.epoch, e))?;
        if raw.len() != 32 + 32 + crate::crypto::TAG_LEN {
            return Err(malformed(self.epoch, "grant of the wrong length"));
        }
        let ephemeral = PublicKey::from(<[u8; 32]>::try_from(&raw[..32]).unwrap_or_default());
        let shared = secret.diffie_hellman(&ephemeral);
        if !shared.was_contributory() {
            return Err(malformed(self.epoch, "grant with a low-order ephemeral key"));
        }
        let own = PublicKey::from(secret);
        let plain = Zeroizing::new(
            grant_key(shared.as_bytes(), &ephemeral, &own)
                .open(&counter_nonce(0), &grant_aad(vault, self.epoch, slot_id), &raw[32..])
                .map_err(|_| malformed(self.epoch, format_args!("the grant to slot {slot_id} does not open")))?,
        );
        Ok(MasterKey::from_slice(&plain))
    }

    /// The previous epoch's master key, from this epoch's; the record's proof must verify under
    /// it, so a record written by someone who never held the previous epoch is refused.
    pub fn open_previous(&self, vault: &VaultId, this: &MasterKey) -> Result<MasterKey, KeyError> {
        let raw = B64.decode(&self.previous).map_err(|e| malformed(self.epoch, e))?;
        if raw.len() != 12 + 32 + crate::crypto::TAG_LEN {
            return Err(malformed(self.epoch, "link of the wrong length"));
        }
        let nonce: [u8; 12] = raw[..12].try_into().unwrap_or_default();
        let plain = Zeroizing::new(
            link_key(this)
                .open(&nonce, &link_aad(vault, self.epoch), &raw[12..])
                .map_err(|_| malformed(self.epoch, "the link to the previous epoch does not open"))?,
        );
        let previous =
            MasterKey::from_slice(&plain).ok_or_else(|| malformed(self.epoch, "link of the wrong length"))?;
        self.verify(&previous)?;
        Ok(previous)
    }

    /// Check the proof under the previous epoch's master key.
    pub fn verify(&self, previous: &MasterKey) -> Result<(), KeyError> {
        let stored = B64.decode(&self.proof).map_err(|e| malformed(self.epoch, e))?;
        if stored.as_slice() != self.mac(previous).as_slice() {
            return Err(malformed(
                self.epoch,
                "its proof does not verify under the previous epoch's key (written by someone who never held it, or altered)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> (StaticSecret, PublicKey) {
        let s = StaticSecret::random_from_rng(rand::rngs::OsRng);
        let p = PublicKey::from(&s);
        (s, p)
    }

    #[test]
    fn granted_slots_open_the_epoch_and_reach_the_previous_one() {
        let vault = VaultId::random();
        let (old, new) = (MasterKey::generate(), MasterKey::generate());
        let (kept, kept_pub) = slot();
        let (dropped, _) = slot();
        let record = EpochRecord::begin(&vault, 2, (&old, &new), &[("k".into(), kept_pub)], vec!["d".into()], "test");
        let parsed = EpochRecord::from_json(&record.to_json(), &vault, &record_name(2)).unwrap();
        let opened = parsed.open_grant(&vault, "k", &kept).unwrap().unwrap();
        assert_eq!(opened.expose(), new.expose());
        assert_eq!(parsed.open_previous(&vault, &opened).unwrap().expose(), old.expose());
        assert!(parsed.open_grant(&vault, "d", &dropped).unwrap().is_none(), "a left-out slot has no grant");
        // The kept slot's grant does not open with another slot's secret.
        let mut stolen = parsed.clone();
        stolen.grants.insert("d".into(), stolen.grants["k"].clone());
        assert!(stolen.open_grant(&vault, "d", &dropped).is_err());
        // Records are bound to their name and vault.
        assert!(EpochRecord::from_json(&record.to_json(), &vault, &record_name(3)).is_err());
        assert!(EpochRecord::from_json(&record.to_json(), &VaultId::random(), &record_name(2)).is_err());
    }

    #[test]
    fn a_record_forged_without_the_previous_key_is_refused() {
        let vault = VaultId::random();
        let (real_previous, forged_new) = (MasterKey::generate(), MasterKey::generate());
        let guessed_previous = MasterKey::generate();
        let (s, p) = slot();
        let forged = EpochRecord::begin(&vault, 3, (&guessed_previous, &forged_new), &[("k".into(), p)], vec![], "x");
        let opened = forged.open_grant(&vault, "k", &s).unwrap().unwrap();
        // The forger's link opens to its own guess, and its proof verifies only under that guess.
        assert!(forged.verify(&real_previous).is_err());
        assert_eq!(forged.open_previous(&vault, &opened).unwrap().expose(), guessed_previous.expose());
        let mut altered = forged.clone();
        altered.reason = "changed".into();
        assert!(altered.verify(&guessed_previous).is_err());
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(record_name(2), "epochs/0000000002");
        assert_eq!(epoch_of(&record_name(4_000_000_000)), Some(4_000_000_000));
        assert_eq!(epoch_of("epochs/2"), None);
        assert_eq!(epoch_of("epochs/000000000x"), None);
    }
}
