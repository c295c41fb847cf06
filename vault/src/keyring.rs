//! How an opened slot reaches the vault's key epochs: down the links to the first, up the
//! grants to the newest it was given (decision 0014). `Vault::open` and `Vault::start_epoch` use it.

use crate::backend::DynBackend;
use crate::crypto::{FIRST_EPOCH, MasterKey, VaultKeys};
use crate::epochs::{self, EpochRecord};
use crate::error::{Error, Result};
use crate::keys::Unwrapped;

/// The epochs an opening slot reaches.
pub(crate) struct Chain {
    pub(crate) masters: Vec<(u32, MasterKey)>,
    pub(crate) stale: Option<String>,
}

pub(crate) fn keys_of(masters: &[(u32, MasterKey)]) -> VaultKeys {
    VaultKeys::with_epochs(&masters[0].1, &masters[1..])
}

/// Every epoch record, by epoch; one that does not parse is kept as its error.
pub(crate) async fn read_epoch_records(
    backend: &DynBackend,
    vault: &crate::ids::VaultId,
) -> Result<std::collections::BTreeMap<u32, std::result::Result<EpochRecord, String>>> {
    let mut out = std::collections::BTreeMap::new();
    for info in backend.list(epochs::PREFIX).await? {
        let Some(epoch) = epochs::epoch_of(&info.key) else {
            tracing::warn!(key = %info.key, "not an epoch record name; ignored");
            continue;
        };
        let record = if info.size > epochs::MAX_RECORD_BYTES {
            Err(format!("{} bytes, more than {}", info.size, epochs::MAX_RECORD_BYTES))
        } else {
            let bytes = backend.get(&info.key).await?;
            EpochRecord::from_json(&bytes, vault, &info.key).map_err(|e| e.to_string())
        };
        let _ = out.insert(epoch, record);
    }
    Ok(out)
}

/// From the slot's own epoch, down the links to the first epoch (every one must be there: older
/// data needs them), then up through the grants to this slot for as long as there are any. A
/// later epoch this slot cannot reach makes it read-only, with the reason.
pub(crate) fn walk_epochs(
    vault: &crate::ids::VaultId,
    slot_id: &str,
    opened: Unwrapped,
    records: &std::collections::BTreeMap<u32, std::result::Result<EpochRecord, String>>,
) -> Result<Chain> {
    let record = |epoch: u32| -> Result<&EpochRecord> {
        match records.get(&epoch) {
            Some(Ok(r)) => Ok(r),
            Some(Err(why)) => Err(Error::integrity(epochs::record_name(epoch), why)),
            None => Err(Error::integrity(
                epochs::record_name(epoch),
                "missing: the key slot's epoch needs it to reach older data",
            )),
        }
    };
    let Unwrapped { epoch: own_epoch, master, grant_secret } = opened;
    let mut below = Vec::new();
    let mut cur = master.clone();
    for epoch in (FIRST_EPOCH + 1..=own_epoch).rev() {
        let prev = record(epoch)?.open_previous(vault, &cur)?;
        below.push((epoch - 1, prev.clone()));
        cur = prev;
    }
    below.reverse();
    let mut masters = below;
    masters.push((own_epoch, master.clone()));
    let mut stale = None;
    let mut cur = master;
    let mut epoch = own_epoch;
    while let Some(next) = records.get(&(epoch + 1)) {
        let step = match (next, &grant_secret) {
            (Err(why), _) => Err(format!("epoch record {} is unreadable ({why})", epoch + 1)),
            (Ok(_), None) => {
                Err(format!("this key slot was made before key epochs and was not carried into epoch {}", epoch + 1))
            }
            (Ok(r), Some(secret)) => match r.open_grant(vault, slot_id, secret) {
                Ok(Some(key)) => r.verify(&cur).map(|()| key).map_err(|e| e.to_string()),
                Ok(None) => Err(format!("this key slot was left out of key epoch {} ({})", epoch + 1, r.reason)),
                Err(e) => Err(e.to_string()),
            },
        };
        match step {
            Ok(key) => {
                epoch += 1;
                masters.push((epoch, key.clone()));
                cur = key;
            }
            Err(why) => {
                stale = Some(why);
                break;
            }
        }
    }
    if stale.is_none()
        && let Some(newest) = records.keys().next_back().filter(|n| **n > epoch)
    {
        stale = Some(format!("epoch record {} is missing while {newest} exists", epoch + 1));
    }
    Ok(Chain { masters, stale })
}
