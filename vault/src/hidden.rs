//! Objects hidden or replaced in a bucket that keeps versions. Whoever may write and delete can
//! put a delete marker over an object or a new version on top of it; neither destroys the
//! versions below, which Object Lock keeps. Tresor itself never does either to its write-once
//! objects (its deletes remove versions by id), so every such object is someone else's doing:
//! [`find`] names them, [`recover`] makes each one's first version current again.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::backend::{BackendError, DynBackend, ObjectVersion};
use crate::layout;

/// How an object was hidden.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenBy {
    /// A delete marker is its current version: plain reads and listings no longer see it.
    DeleteMarker,
    /// A version with other content is current: reads return that.
    Replaced,
}

/// A write-once object whose current version is not the one Tresor wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HiddenObject {
    /// Key relative to the vault root.
    pub key: String,
    /// How.
    pub by: HiddenBy,
    /// When the current version (marker or replacement) was written, as the storage says.
    pub since: String,
    /// The first version: what Tresor wrote, and what [`recover`] makes current again.
    pub original: String,
}

impl std::fmt::Display for HiddenObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.by {
            HiddenBy::DeleteMarker => "hidden under a delete marker",
            HiddenBy::Replaced => "replaced by a version with other content",
        };
        write!(f, "{how} since {}; its first version {} is intact", self.since, self.original)
    }
}

/// The write-once objects of the vault whose current version is a delete marker, or a version
/// other than the first. Rewritten objects (session markers, the GC mark, probes) are left out.
pub async fn find(backend: &DynBackend) -> Result<Vec<HiddenObject>, BackendError> {
    let mut by_key: BTreeMap<String, Vec<ObjectVersion>> = BTreeMap::new();
    for v in backend.versions("").await? {
        if !layout::rewritten(&v.key) {
            by_key.entry(v.key.clone()).or_default().push(v);
        }
    }
    let mut out = Vec::new();
    for (key, versions) in by_key {
        match hidden(key, &versions) {
            Some(Suspect::Hidden(h)) => out.push(h),
            Some(Suspect::Compare { hidden, latest }) => {
                // ETags that are not plain MD5s (multipart, SSE-KMS) say nothing: compare bytes.
                let now = backend.get_version(&hidden.key, &latest).await?;
                let first = backend.get_version(&hidden.key, &hidden.original).await?;
                if blake3::hash(&now) != blake3::hash(&first) {
                    out.push(hidden);
                }
            }
            None => {}
        }
    }
    Ok(out)
}

/// What one key's versions say.
#[derive(Debug, PartialEq, Eq)]
enum Suspect {
    /// Hidden for sure.
    Hidden(HiddenObject),
    /// Replaced, unless the current version (`latest`) has the first one's bytes.
    Compare { hidden: HiddenObject, latest: String },
}

/// Whether one key's versions (each newest first, as listed) show it hidden.
fn hidden(key: String, versions: &[ObjectVersion]) -> Option<Suspect> {
    let latest = versions.iter().find(|v| v.latest)?;
    // Listed newest first: the last real version is the first one written.
    let original = versions.iter().rev().find(|v| !v.delete_marker)?;
    let found =
        |by| HiddenObject { key, by, since: latest.last_modified.clone(), original: original.version_id.clone() };
    if latest.delete_marker {
        return Some(Suspect::Hidden(found(HiddenBy::DeleteMarker)));
    }
    if latest.version_id == original.version_id {
        return None;
    }
    let plain_md5 = |e: &Option<String>| e.as_deref().is_some_and(|e| e.len() == 32 && !e.contains('-'));
    if latest.size != original.size {
        Some(Suspect::Hidden(found(HiddenBy::Replaced)))
    } else if plain_md5(&latest.etag) && plain_md5(&original.etag) {
        (latest.etag != original.etag).then(|| Suspect::Hidden(found(HiddenBy::Replaced)))
    } else {
        let latest = latest.version_id.clone();
        Some(Suspect::Compare { hidden: found(HiddenBy::Replaced), latest })
    }
}

/// Make the first version of each hidden object current again, the config first (nothing
/// opens without it): its bytes are read and written back as a new version, with the vault's
/// retention. Returns what was brought back; the markers and replacements stay below as history.
pub async fn recover(backend: &DynBackend, hidden: &[HiddenObject]) -> Result<Vec<String>, BackendError> {
    // The vault's retention, from its first config (read without a key: it is plain JSON).
    let hidden_config = hidden.iter().find(|h| h.key == layout::CONFIG);
    let config = match hidden_config {
        Some(h) => backend.get_version(layout::CONFIG, &h.original).await,
        None => backend.get(layout::CONFIG).await,
    };
    match config.as_ref().map(|b| crate::config::VaultConfig::from_json(b)) {
        Ok(Ok(c)) => backend.set_retention(c.object_lock),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "the config does not read; objects come back without the vault's own retention")
        }
        Err(e) => tracing::warn!(error = %e, "no config; objects come back without the vault's own retention"),
    }
    let mut order: Vec<&HiddenObject> = hidden.iter().collect();
    order.sort_by_key(|h| (h.key != layout::CONFIG, h.key.clone()));
    let mut done = Vec::new();
    // The hidden config's first version was read above: not twice.
    let mut first_config = if hidden_config.is_some() { config.ok() } else { None };
    for h in order {
        let bytes = match first_config.take().filter(|_| h.key == layout::CONFIG) {
            Some(b) => b,
            None => backend.get_version(&h.key, &h.original).await?,
        };
        backend.overwrite(&h.key, bytes).await?;
        done.push(h.key.clone());
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: &str, latest: bool, marker: bool, etag: &str) -> ObjectVersion {
        ObjectVersion {
            key: "snapshots/x".into(),
            version_id: id.into(),
            latest,
            delete_marker: marker,
            etag: (!marker).then(|| etag.to_string()),
            size: if marker { 0 } else { 10 },
            last_modified: format!("t-{id}"),
        }
    }

    fn sure(s: Option<Suspect>) -> HiddenObject {
        match s {
            Some(Suspect::Hidden(h)) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn markers_and_replacements_are_found_and_the_first_version_named() {
        let k = || "snapshots/x".to_string();
        let (a, b) = ("a".repeat(32), "b".repeat(32));
        assert_eq!(hidden(k(), &[v("1", true, false, &a)]), None);
        let marked = sure(hidden(k(), &[v("1", false, false, &a), v("2", true, true, "")]));
        assert_eq!((marked.by, marked.original.as_str(), marked.since.as_str()), (HiddenBy::DeleteMarker, "1", "t-2"));
        let replaced = sure(hidden(k(), &[v("3", true, false, &b), v("1", false, false, &a)]));
        assert_eq!((replaced.by, replaced.original.as_str()), (HiddenBy::Replaced, "1"));
        // Brought back: the current version has the first one's content again.
        assert_eq!(hidden(k(), &[v("4", true, false, &a), v("3", false, false, &b), v("1", false, false, &a)]), None);
        // Nothing but markers: nothing to bring back.
        assert_eq!(hidden(k(), &[v("2", true, true, "")]), None);
        // A multipart ETag says nothing about the bytes: they are compared.
        let multipart = hidden(k(), &[v("4", true, false, &a), v("1", false, false, "abc-3")]);
        assert!(matches!(multipart, Some(Suspect::Compare { ref latest, .. }) if latest == "4"), "{multipart:?}");
    }
}
