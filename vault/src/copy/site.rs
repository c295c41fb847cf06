//! A copy's own site: its `config` (this storage's capabilities and Object Lock, the vault's id,
//! chunker and cipher) and the vault's key chain, mirrored from the source before any data moves.
//!
//! A copy is the same vault at another site (decision 0017): the same id, master keys, epochs
//! and slots, so the one escrow key file opens both. Only the config differs per site, so each
//! slot at the copy carries the MAC of the copy's config (made under the first epoch's key, which
//! the copier holds); the slot's wrapped key, binding and public key are the source's, unchanged.

use bytes::Bytes;

use crate::backend::{BackendError, Created, DynBackend, Retention};
use crate::config::VaultConfig;
use crate::epochs;
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
    /// Slots removed at the copy because the source no longer has them.
    pub slots_removed: usize,
    /// Slots the source removed that Object Lock still keeps at the copy (id: until when).
    pub slots_waiting: Vec<String>,
    /// Source slots not carried, with why (a slot whose maker never held the vault's key).
    pub slots_skipped: Vec<String>,
}

/// Make `dest` a site of `source`'s vault, or bring an existing one's keys up to date: the
/// config (first time only; `object_lock` applies then), then epoch records (so a slot removed at
/// the source is already left out of the newest epoch at the copy), then slots. A copy cut off
/// between its config and its slots does not open yet; the next run finishes it.
///
/// # Errors
/// `dest` holds another vault, its config was altered, it has a key epoch the source lacks (key
/// changes are made at the source), or storage fails.
pub async fn mirror(source: &Vault, dest: &DynBackend, object_lock: Option<Retention>) -> Result<SiteReport> {
    source.writable()?;
    let mut report = SiteReport::default();
    let config_bytes = match existing_config(source, dest, object_lock).await? {
        Some(bytes) => bytes,
        None => {
            let (capabilities, _) = crate::probe::probe_new(dest, object_lock).await?;
            let bytes = VaultConfig { capabilities, object_lock, ..source.config().clone() }.to_json();
            if dest.create(layout::CONFIG, Bytes::from(bytes.clone())).await? == Created::Existed {
                return Err(Error::Invalid(format!(
                    "{} was made into a vault by someone else while this copy started; nothing of it was changed",
                    dest.location()
                )));
            }
            report.created = true;
            bytes
        }
    };
    report.epochs_copied = mirror_epochs(source, dest).await?;
    let mac = source.first_master().derive().config_mac(&config_bytes);
    mirror_slots(source, dest, mac, &mut report).await?;
    Ok(report)
}

/// The copy's config bytes when it was made before; checks it is this vault's, unaltered.
async fn existing_config(source: &Vault, dest: &DynBackend, object_lock: Option<Retention>) -> Result<Option<Vec<u8>>> {
    dest.prepare_location().await?;
    let bytes = match dest.get(layout::CONFIG).await {
        Ok(b) => b.to_vec(),
        Err(BackendError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let config =
        VaultConfig::from_json(&bytes).map_err(|e| Error::integrity(format!("{} config", dest.location()), e))?;
    if config.vault_id != source.config().vault_id {
        return Err(Error::Invalid(format!(
            "{} holds vault {}, not a copy of vault {}; copies go to an empty location or to an earlier copy of the same vault",
            dest.location(),
            config.vault_id,
            source.config().vault_id
        )));
    }
    if object_lock.is_some() && object_lock != config.object_lock {
        return Err(Error::Invalid(format!(
            "the copy at {} was made with Object Lock {}; a copy's retention is set when it is made",
            dest.location(),
            config.object_lock.map_or("off".to_string(), |r| format!("{} s ({:?})", r.seconds, r.mode))
        )));
    }
    dest.set_retention(config.object_lock);
    if !config.capabilities.create_once {
        dest.check_before_create();
    }
    Ok(Some(bytes))
}

/// Copy the epoch records this source reaches; a record the copy holds must be byte-identical.
async fn mirror_epochs(source: &Vault, dest: &DynBackend) -> Result<usize> {
    let wanted = source.key_epoch();
    let theirs: std::collections::BTreeMap<String, u64> =
        dest.list(epochs::PREFIX).await?.into_iter().map(|i| (i.key, i.size)).collect();
    let mut copied = 0;
    for info in source.backend().list(epochs::PREFIX).await? {
        // A record beyond the epoch this source reached was never walked (it may be planted).
        if epochs::epoch_of(&info.key).is_none_or(|e| e > wanted) || info.size > epochs::MAX_RECORD_BYTES {
            continue;
        }
        let bytes = source.backend().get(&info.key).await?;
        if theirs.contains_key(&info.key) {
            if dest.get(&info.key).await? != bytes {
                return Err(Error::Invalid(format!(
                    "the copy's {} differs from the source's; key changes are made at the source, never at a copy",
                    info.key
                )));
            }
            continue;
        }
        if dest.create(&info.key, bytes).await? == Created::New {
            copied += 1;
        }
    }
    let newer = theirs.keys().filter_map(|k| epochs::epoch_of(k)).filter(|e| *e > wanted).max();
    if let Some(e) = newer {
        return Err(Error::Invalid(format!(
            "the copy has key epoch {e}, which this source slot does not reach (its newest is {wanted}); key changes are made at the source, never at a copy"
        )));
    }
    Ok(copied)
}

/// Carry the source's slots (each with the copy's config MAC) and remove the copy's slots the
/// source no longer has.
async fn mirror_slots(source: &Vault, dest: &DynBackend, mac: [u8; 32], report: &mut SiteReport) -> Result<()> {
    let ours = Vault::read_slots(source.backend()).await?;
    let theirs = Vault::read_slots(dest).await?;
    // The copy's slots carry the MAC of its config; none matching means it was altered (say, its
    // Object Lock taken out). Refused before any slot is written beside it. (No slots at all: a
    // copy cut off right after its config was made.)
    if !theirs.is_empty() && !theirs.iter().any(|t| t.config_mac == base64_of(&mac)) {
        return Err(Error::Key(crate::keys::KeyError::ConfigTampered));
    }
    let first = source.first_master().clone();
    let source_config = source.config_bytes().to_vec();
    for slot in &ours {
        if theirs.iter().any(|t| t.id == slot.id) {
            continue;
        }
        // Its config MAC proves its maker held the vault's first key; one planted at the source
        // by a writer without it is not vouched for at the copy.
        if slot.verify_config(&first, &source_config).is_err() {
            report.slots_skipped.push(format!(
                "{}: its config MAC does not verify under the vault's key (made without it, or damaged)",
                slot.id
            ));
            continue;
        }
        let carried = KeySlot { config_mac: base64_of(&mac), ..slot.clone() };
        if dest.create(&layout::key_slot(&slot.id), Bytes::from(carried.to_json())).await? == Created::New {
            report.slots_copied += 1;
        }
    }
    for slot in theirs.iter().filter(|t| !ours.iter().any(|o| o.id == t.id)) {
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
