//! What storage guarantees, found out before a vault (or a copy of one) is made there.

use bytes::Bytes;

use crate::backend::{Created, DynBackend, Retention, StorageVersioning};
use crate::config::Capabilities;
use crate::error::{Error, Result};
use crate::layout;

/// Probe storage about to hold a new vault (or a copy of one): versioning and Object Lock first
/// (a locked bucket refuses uploads without the headers it needs), then what it guarantees.
/// Leaves the backend set up to write with `object_lock`.
pub(crate) async fn probe_new(
    backend: &DynBackend,
    object_lock: Option<Retention>,
) -> Result<(Capabilities, Option<StorageVersioning>)> {
    let versioning = backend.probe_versioning().await?;
    if let Some(r) = object_lock {
        if !versioning.as_ref().is_some_and(|v| v.object_lock) {
            return Err(Error::Invalid(format!(
                "--object-lock needs a bucket with Object Lock enabled; {} has {}",
                backend.location(),
                versioning.as_ref().map_or("no object versions (not S3)".to_string(), |v| v.to_string())
            )));
        }
        crate::config::check_retention(&r).map_err(Error::Invalid)?;
        backend.set_retention(Some(r));
    }
    let mut capabilities = probe(backend).await?;
    capabilities.versioning = versioning.clone();
    if !capabilities.create_once {
        backend.check_before_create();
    }
    Ok((capabilities, versioning))
}

/// Find out what the backend guarantees: is a second create of the same name refused, and may
/// these credentials delete?
async fn probe(backend: &DynBackend) -> Result<Capabilities> {
    let key = format!("{}{}", layout::PROBE, crate::ids::SessionId::random());
    backend.create(&key, Bytes::from_static(b"probe 1")).await?;
    let second = backend.create(&key, Bytes::from_static(b"probe 2")).await?;
    let kept_first = backend.get(&key).await?.as_ref() == b"probe 1";
    let create_once = second == Created::Existed && kept_first;
    let delete = backend.delete(&key).await.is_ok() && backend.size(&key).await?.is_none();
    backend.probe_durability().await?;
    Ok(Capabilities {
        backend: backend.kind().to_string(),
        create_once,
        delete,
        durability_unverified: backend.durability_unverified(),
        versioning: None,
        probed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}
