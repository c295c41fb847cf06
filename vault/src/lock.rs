//! Object Lock upkeep by the maintainer (docs/FORMAT.md, "Locked buckets"). Every live object's
//! lock is extended before it runs out; GC learns which doomed packs and index segments a lock
//! still keeps (they wait for a later run); old versions of rewritten objects (session markers,
//! the GC mark, probes) are removed once nothing keeps them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;

use crate::backend::{BackendError, DynBackend, ObjectVersion, Retention};
use crate::error::{Error, Result};
use crate::ids::{ObjectId, PackId};
use crate::layout;
use crate::vault::Vault;

/// Lock requests in flight at once during upkeep (unit: requests, each a HEAD or a PUT).
const IN_FLIGHT: usize = 8;

/// Maintenance interval assumed when the maintainer's schedule is not known (a manual run).
pub const ASSUMED_INTERVAL: Duration = Duration::from_secs(86_400);

/// The retention live objects are kept under: the vault's own (`init --object-lock`), else the
/// bucket's default retention; `None` where the storage locks nothing.
pub fn effective(vault: &Vault) -> Option<Retention> {
    if let Some(r) = vault.config().object_lock {
        return Some(r);
    }
    let v = vault.storage_versioning()?;
    let (mode, days) = v.default_retention.filter(|_| v.object_lock)?;
    Some(Retention { mode, seconds: u64::from(days) * 86_400 })
}

/// Refuse a retention that does not outlast GC's grace period plus the maintenance interval
/// (FM-34): a pack that turns live again (a backup reuses it) while its lock runs out would be
/// unprotected until the next run extends it.
pub fn check_covers(r: Retention, grace: Duration, interval: Duration) -> Result<()> {
    let needed = grace.as_secs().saturating_add(interval.as_secs());
    if r.seconds <= needed {
        return Err(Error::Invalid(format!(
            "the vault's Object Lock retention ({} s, {:?}) must be longer than the GC grace period ({} s) plus the maintenance interval ({} s): locks could run out between maintenance runs; lengthen the retention or run maintenance more often",
            r.seconds,
            r.mode,
            grace.as_secs(),
            interval.as_secs()
        )));
    }
    Ok(())
}

/// What extending locks did.
#[derive(Debug, Default)]
pub struct Extended {
    /// Objects whose lock was extended.
    pub extended: usize,
    /// Objects whose lock could not be read or extended, with why.
    pub errors: Vec<String>,
}

/// Extend the lock of every live object whose lock ends within `threshold`, to the storage's
/// time now plus the retention. Live: the config, epoch records, signed documents, the index
/// segments that index a live pack (one that indexes only dead ones would hold them past their
/// own lock; one that does not read counts as live), the key slots no epoch left out, every
/// snapshot's manifest and receipt but those being `forgotten` (a snapshot retention lets go is
/// no longer extended, so it can be forgotten once its lock passes), and `live_packs`. The lock
/// extended is each object's first version: what Tresor wrote, whatever was put on top of it.
pub async fn extend(
    vault: &Vault,
    live_packs: &BTreeSet<PackId>,
    forgotten: &BTreeSet<ObjectId>,
    r: Retention,
    threshold: Duration,
) -> Result<Extended> {
    let be = vault.backend();
    let mut out = Extended::default();
    let mut keys = vec![layout::CONFIG.to_string()];
    for prefix in [crate::epochs::PREFIX, layout::REPORTS, layout::AUDIT] {
        keys.extend(be.list(prefix).await?.into_iter().map(|i| i.key));
    }
    for info in be.list(layout::INDEX).await? {
        let Some(id) = layout::id_of::<ObjectId>(&info.key) else { continue };
        match vault.read_segment(&id).await {
            Ok(seg) if !seg.packs.iter().any(|p| live_packs.contains(&p.id)) => continue,
            Ok(_) => {}
            Err(e) => out.errors.push(format!("{}: does not read ({e}); its lock is extended all the same", info.key)),
        }
        keys.push(info.key);
    }
    let left_out = vault.left_out_slots().await?;
    let slots = be.list(layout::KEYS).await?.into_iter().map(|i| i.key);
    keys.extend(slots.filter(|k| !left_out.iter().any(|id| layout::key_slot(id) == *k)));
    for prefix in [layout::SNAPSHOTS, layout::RECEIPTS] {
        for s in be.list(prefix).await? {
            if !layout::id_of::<ObjectId>(&s.key).is_some_and(|id| forgotten.contains(&id)) {
                keys.push(s.key);
            }
        }
    }
    keys.extend(live_packs.iter().map(layout::pack));
    let firsts = first_versions(be).await?;
    let results: Vec<(String, std::result::Result<bool, BackendError>)> = futures::stream::iter(keys)
        .map(|key| {
            let first = firsts.as_ref().map(|f| f.get(&key).cloned());
            async move {
                let done = match first {
                    // Live, yet no version of it is left: say so, never pass it over.
                    Some(None) => Err(BackendError::NotFound(key.clone())),
                    Some(Some(v)) => extend_one(be, &key, Some(&v), r, threshold).await,
                    None => extend_one(be, &key, None, r, threshold).await,
                };
                (key, done)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    for (key, done) in results {
        match done {
            Ok(true) => out.extended += 1,
            Ok(false) => {}
            Err(e) => out.errors.push(format!("{key}: {e}")),
        }
    }
    Ok(out)
}

/// Each key's first version (what Tresor wrote) where the storage keeps versions; `None` where
/// it keeps none.
async fn first_versions(be: &DynBackend) -> Result<Option<BTreeMap<String, String>>> {
    let versions = match be.versions("").await {
        Ok(v) => v,
        Err(BackendError::NoVersions(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut firsts = BTreeMap::new();
    // Listed newest first within each key: the last real version listed is the first written.
    for v in versions.into_iter().filter(|v| !v.delete_marker) {
        firsts.insert(v.key, v.version_id);
    }
    Ok(Some(firsts))
}

/// Extend one object's lock if it ends within `threshold`; whether it was extended.
async fn extend_one(
    be: &DynBackend,
    key: &str,
    version: Option<&str>,
    r: Retention,
    threshold: Duration,
) -> std::result::Result<bool, BackendError> {
    let now = be.storage_now().unwrap_or_else(chrono::Utc::now);
    let soon =
        crate::backend::retain_from(now, threshold.as_secs()).unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    if be.retained_until(key, version).await?.is_some_and(|until| until > soon) {
        return Ok(false);
    }
    let until = crate::backend::retain_from(now, r.seconds).ok_or_else(|| BackendError::Other {
        key: key.to_string(),
        detail: format!("a retention of {} s runs past the end of time", r.seconds),
    })?;
    be.extend_retention(key, version, r, until).await.map(|()| true)
}

/// Which of `keys` a lock still keeps, and until when (a key that is gone is not kept).
pub async fn still_locked(
    be: &DynBackend,
    keys: Vec<String>,
) -> Result<BTreeMap<String, chrono::DateTime<chrono::Utc>>> {
    let results: Vec<(String, std::result::Result<_, BackendError>)> = futures::stream::iter(keys)
        .map(|key| async move {
            let until = be.retained_until(&key, None).await;
            (key, until)
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let mut out = BTreeMap::new();
    for (key, until) in results {
        match until {
            Ok(Some(u)) => {
                out.insert(key, u);
            }
            Ok(None) | Err(BackendError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Remove the old versions of rewritten objects (session markers, the GC mark, probes): every
/// version but the current one, and for an object hidden under a delete marker every version,
/// the marker last, once nothing below it is kept (else it would show a kept version again).
/// Returns how many old versions and delete markers were removed.
pub async fn clean_rewritten(be: &DynBackend) -> Result<usize> {
    let mut by_key: BTreeMap<String, Vec<ObjectVersion>> = BTreeMap::new();
    for prefix in [layout::SESSIONS, layout::GC_MARK, layout::PROBE] {
        for v in be.versions(prefix).await? {
            if layout::rewritten(&v.key) {
                by_key.entry(v.key.clone()).or_default().push(v);
            }
        }
    }
    let mut removed = 0;
    for (key, versions) in by_key {
        let hidden = versions.iter().any(|v| v.latest && v.delete_marker);
        let mut kept_any = false;
        let (markers, real): (Vec<_>, Vec<_>) = versions.iter().partition(|v| v.delete_marker);
        for v in real.iter().filter(|v| hidden || !v.latest) {
            match be.delete_version(&key, &v.version_id).await {
                Ok(()) => removed += 1,
                Err(BackendError::Retained { .. }) => kept_any = true,
                Err(e) => return Err(e.into()),
            }
        }
        for m in markers.iter().filter(|m| !(m.latest && kept_any)) {
            be.delete_version(&key, &m.version_id).await?;
            removed += 1;
        }
    }
    Ok(removed)
}
