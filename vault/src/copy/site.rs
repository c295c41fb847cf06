//! A copy's own site: its `config` (this storage's capabilities and Object Lock, the vault's id,
//! chunker and cipher) and the vault's key chain, mirrored from the source before any data moves.
//!
//! A copy is the same vault at another site (decision 0017): the same id, master keys, epochs
//! and slots, so the one escrow key file opens both. Only the config differs per site, so each
//! slot at the copy carries the MAC of the copy's config (made under the first epoch's key, which
//! the copier holds); the slot's wrapped key, binding and public key are the source's, unchanged.
//!
//! Nothing read from either storage is copied on its word: epoch records must verify under the
//! keys this handle holds, slots must carry a config MAC only a key holder can make, and a slot
//! is removed at the copy only when a verified epoch record left it out.

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::backend::{BackendError, Created, DynBackend, Retention};
use crate::config::VaultConfig;
use crate::epochs::{self, EpochRecord};
use crate::error::{Error, Result};
use crate::keys::KeySlot;
use crate::layout;
use crate::vault::Vault;

/// What mirroring the site did.
#[derive(Debug, Clone, Default)]
pub struct SiteReport {
    /// The copy's config was written now (first copy to this location).
    pub created: bool,
    /// Epoch records written to the copy.
    pub epochs_copied: usize,
    /// Key slots written to the copy.
    pub slots_copied: usize,
    /// Slots removed at the copy because the source removed them (and left them out of a key epoch).
    pub slots_removed: usize,
    /// Slots the source removed that Object Lock still keeps at the copy (id: until when).
    pub slots_waiting: Vec<String>,
    /// Source slots not carried, with why (a slot whose maker never held the vault's key).
    pub slots_skipped: Vec<String>,
}

/// Make `dest` a second site of `source`'s vault, or bring an existing one's keys up to date:
/// the config (first time only; `object_lock` applies then), then epoch records (so a slot
/// removed at the source is already left out of the newest epoch at the copy), then slots. A
/// copy cut off between its config and its slots does not open yet; the next run finishes it.
///
/// # Errors
/// `dest` holds another vault or a config that is not this vault's (altered), it has a key epoch
/// the source lacks (key changes are made at the source), an epoch record of the source does not
/// verify, the source's slot listing lacks the opener's own slot (a short listing), or storage
/// fails.
pub async fn mirror(source: &Vault, dest: &DynBackend, object_lock: Option<Retention>) -> Result<SiteReport> {
    source.writable()?;
    let mut report = SiteReport::default();
    let (config_bytes, theirs) = match existing_config(source, dest, object_lock).await? {
        Some(found) => found,
        None => {
            let (capabilities, _) = crate::probe::probe_new(dest, object_lock).await?;
            let config = VaultConfig { capabilities, object_lock, second_site: true, ..source.config().clone() };
            let bytes = config.to_json();
            if dest.create(layout::CONFIG, Bytes::from(bytes.clone())).await? == Created::Existed {
                return Err(Error::Invalid(format!(
                    "{} was made into a vault by someone else while this copy started; nothing of it was changed",
                    dest.location()
                )));
            }
            report.created = true;
            (bytes, Vec::new())
        }
    };
    let (copied, left_out) = mirror_epochs(source, dest).await?;
    report.epochs_copied = copied;
    let mac = source.first_master().derive().config_mac(&config_bytes);
    mirror_slots(source, dest, (mac, &theirs), &left_out, &mut report).await?;
    Ok(report)
}

/// The copy's config bytes and key slots when it was made before. Everything but what belongs to
/// the site (its capabilities and Object Lock) must be the source's, and its slots must vouch for
/// it.
async fn existing_config(
    source: &Vault,
    dest: &DynBackend,
    object_lock: Option<Retention>,
) -> Result<Option<(Vec<u8>, Vec<KeySlot>)>> {
    dest.prepare_location().await?;
    let bytes = match dest.get(layout::CONFIG).await {
        Ok(b) => b.to_vec(),
        Err(BackendError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let theirs =
        VaultConfig::from_json(&bytes).map_err(|e| Error::integrity(format!("{} config", dest.location()), e))?;
    let ours = source.config();
    if theirs.vault_id != ours.vault_id {
        return Err(Error::Invalid(format!(
            "{} holds vault {}, not a copy of vault {}; copies go to an empty location or to an earlier copy of the same vault",
            dest.location(),
            theirs.vault_id,
            ours.vault_id
        )));
    }
    let site_free = VaultConfig {
        capabilities: ours.capabilities.clone(),
        object_lock: ours.object_lock,
        second_site: ours.second_site,
        ..theirs.clone()
    };
    let mut differ = differing_fields(&site_free, ours);
    if !theirs.second_site {
        differ.push("second_site".into());
    }
    if theirs.capabilities.backend != dest.kind() {
        differ.push("capabilities.backend".into());
    }
    if !differ.is_empty() {
        return Err(Error::integrity(
            format!("{} config", dest.location()),
            format!(
                "it is not a second site of this vault as copy makes one ({} differ: altered, or made by hand); nothing was copied",
                differ.join(", ")
            ),
        ));
    }
    // The copy's slots carry the MAC of its config; none matching means it was altered (say, its
    // Object Lock taken out). A copy without slots is accepted only while it holds nothing else
    // (cut off right after its config was made); slots hidden from a copy that holds data are
    // an attack on it, not a first run.
    let mac = base64_of(&source.first_master().derive().config_mac(&bytes));
    let slots = Vault::read_slots(dest).await?;
    if slots.is_empty() {
        for prefix in [layout::SNAPSHOTS, layout::INDEX, layout::DATA] {
            if !dest.list(prefix).await?.is_empty() {
                return Err(Error::integrity(
                    format!("{} keys/", dest.location()),
                    format!(
                        "the copy holds {prefix} but no key slot: its slots were removed or hidden; nothing was copied"
                    ),
                ));
            }
        }
    } else if !slots.iter().any(|t| t.config_mac == mac) {
        return Err(Error::Key(crate::keys::KeyError::ConfigTampered));
    }
    if object_lock.is_some() && object_lock != theirs.object_lock {
        return Err(Error::Invalid(format!(
            "the copy at {} was made with Object Lock {}; a copy's retention is set when it is made",
            dest.location(),
            theirs.object_lock.map_or("off".to_string(), |r| format!("{} s ({:?})", r.seconds, r.mode))
        )));
    }
    dest.set_retention(theirs.object_lock);
    if !theirs.capabilities.create_once {
        dest.check_before_create();
    }
    Ok(Some((bytes, slots)))
}

/// The top-level fields in which two configs differ, by name.
fn differing_fields(a: &VaultConfig, b: &VaultConfig) -> Vec<String> {
    let (a, b) = (serde_json::to_value(a).unwrap_or_default(), serde_json::to_value(b).unwrap_or_default());
    let keys: BTreeSet<&String> = a.as_object().into_iter().chain(b.as_object()).flat_map(|o| o.keys()).collect();
    keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
}

/// Copy the epoch records this source reaches, each verified under the previous epoch's key
/// before it is written; a record the copy holds must be the same record. Returns how many were
/// written and the slots the verified records left out.
async fn mirror_epochs(source: &Vault, dest: &DynBackend) -> Result<(usize, BTreeSet<String>)> {
    let reached = source.key_epoch();
    let vault = source.config().vault_id;
    let theirs: BTreeSet<String> = dest.list(epochs::PREFIX).await?.into_iter().map(|i| i.key).collect();
    if let Some(e) = theirs.iter().filter_map(|k| epochs::epoch_of(k)).filter(|e| *e > reached).max() {
        return Err(Error::Invalid(format!(
            "the copy has key epoch {e}, which the source's slot does not reach (its newest is {reached}); key changes are made at the source, never at a copy"
        )));
    }
    let (mut copied, mut left_out) = (0, BTreeSet::new());
    for epoch in (crate::crypto::FIRST_EPOCH + 1)..=reached {
        let name = epochs::record_name(epoch);
        let bytes = source.backend().get(&name).await?;
        let previous = source.master_of(epoch - 1).ok_or(Error::KeyEpoch(crate::crypto::EpochMissing(epoch - 1)))?;
        let record = verified_record(&bytes, &vault, &name, previous)
            .map_err(|e| Error::integrity(format!("the source's {name}"), e))?;
        left_out.extend(record.left_out.iter().cloned());
        if theirs.contains(&name) {
            let at_copy = dest.get(&name).await?;
            if verified_record(&at_copy, &vault, &name, previous).ok().as_ref() != Some(&record) {
                return Err(Error::Invalid(format!(
                    "the copy's {name} is not the source's; key changes are made at the source, never at a copy"
                )));
            }
            continue;
        }
        if bytes.len() as u64 > epochs::MAX_RECORD_BYTES {
            return Err(Error::integrity(format!("the source's {name}"), "larger than any epoch record"));
        }
        match dest.create(&name, bytes).await? {
            Created::New => copied += 1,
            // Written meanwhile (or missed by the listing): it must be the same record.
            Created::Existed => {
                let at_copy = dest.get(&name).await?;
                if verified_record(&at_copy, &vault, &name, previous).ok().as_ref() != Some(&record) {
                    return Err(Error::Invalid(format!(
                        "the copy's {name} is not the source's; key changes are made at the source, never at a copy"
                    )));
                }
            }
        }
    }
    Ok((copied, left_out))
}

fn verified_record(
    bytes: &[u8],
    vault: &crate::ids::VaultId,
    name: &str,
    previous: &crate::crypto::MasterKey,
) -> std::result::Result<EpochRecord, crate::keys::KeyError> {
    let record = EpochRecord::from_json(bytes, vault, name)?;
    record.verify(previous)?;
    Ok(record)
}

/// Carry the source's slots (each with the copy's config MAC) and remove the copy's slots the
/// source no longer lists and a verified epoch record left out.
async fn mirror_slots(
    source: &Vault,
    dest: &DynBackend,
    (mac, theirs): ([u8; 32], &[KeySlot]),
    left_out: &BTreeSet<String>,
    report: &mut SiteReport,
) -> Result<()> {
    let ours = Vault::read_slots(source.backend()).await?;
    if !ours.iter().any(|s| s.id == source.slot_id()) {
        return Err(Error::Invalid(format!(
            "the source's listing of keys/ lacks the slot this copy opened it with ({}): a short or failed listing; nothing of the copy's keys was changed",
            source.slot_id()
        )));
    }
    let first = source.first_master().clone();
    let source_config = source.config_bytes().to_vec();
    for slot in &ours {
        if theirs.iter().any(|t| t.id == slot.id) {
            continue;
        }
        // A version 2 slot's binding (its id, kind, epoch and public key under its epoch's key)
        // proves its maker held the vault's key; one planted at the source without it is not
        // vouched for at the copy. A version 1 slot has only the config MAC, which any reader of
        // a slot can copy; a planted one opens nothing (its wrapped key is not the vault's), and
        // no later epoch is ever granted to it.
        let vouched = match slot.epoch {
            Some(e) => source.master_of(e).is_some_and(|m| slot.bound_to(&source.config().vault_id, m)),
            None => slot.verify_config(&first, &source_config).is_ok(),
        };
        if !vouched {
            report.slots_skipped.push(format!(
                "{}: its binding does not verify under the vault's key (made without it, or damaged)",
                slot.id
            ));
            continue;
        }
        let carried = KeySlot { config_mac: base64_of(&mac), ..slot.clone() };
        if dest.create(&layout::key_slot(&slot.id), Bytes::from(carried.to_json())).await? == Created::New {
            report.slots_copied += 1;
        }
    }
    // Gone from the source's listing alone is not enough (a listing is unauthenticated): only a
    // slot a verified record left out goes.
    for slot in theirs.iter().filter(|t| left_out.contains(&t.id) && !ours.iter().any(|o| o.id == t.id)) {
        match dest.delete(&layout::key_slot(&slot.id)).await {
            Ok(()) => report.slots_removed += 1,
            Err(BackendError::NotFound(_)) => {}
            Err(BackendError::Retained { detail, .. }) => report.slots_waiting.push(format!("{}: {detail}", slot.id)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_fields_are_named() {
        let caps = crate::config::Capabilities {
            backend: "local".into(),
            create_once: true,
            delete: true,
            durability_unverified: None,
            versioning: None,
            probed_at: "2026-12-07T00:00:00Z".into(),
        };
        let a = VaultConfig::new(caps);
        assert!(differing_fields(&a, &a.clone()).is_empty());
        let b = VaultConfig { pack_target_size: a.pack_target_size * 2, second_site: true, ..a.clone() };
        assert_eq!(differing_fields(&a, &b), ["pack_target_size", "second_site"]);
    }
}
