//! Versions and Object Lock on S3: the bucket's settings, version listings, reads and deletes by
//! version id, and lock dates, all through signed requests (`signed.rs`).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Method;
use object_store::path::Path as StorePath;

use super::signed::{self, Reply, Request, status_error};
use super::{S3Backend, other, xml};
use crate::backend::{Backend, BackendError, ObjectVersion, Retention, StorageVersioning};

/// `req` for one version of its object, where one is named.
fn with_version<'a>(req: Request<'a>, version: Option<&str>) -> Request<'a> {
    match version {
        Some(v) => req.query("versionId", v),
        None => req,
    }
}

/// The most versions one listing returns (a vault of a petabyte has about 60 million packs;
/// each entry takes a few hundred bytes of memory).
const MAX_VERSIONS: usize = 20_000_000;

impl S3Backend {
    /// A listed key relative to the vault root; `None` outside the vault's prefix.
    fn relative(&self, full: &str) -> Option<String> {
        if self.prefix.is_empty() {
            return Some(full.to_string());
        }
        full.strip_prefix(&self.prefix).and_then(|r| r.strip_prefix('/')).map(str::to_string)
    }

    /// Versioning and Object Lock of the bucket; remembered for deletes and uploads.
    pub(super) async fn probe_versions(&self) -> Result<StorageVersioning, BackendError> {
        let bucket = self.bucket.clone();
        let reply = self.send(&bucket, || Request::new(Method::GET, None).query("versioning", "")).await?;
        let versioning = match reply.status.as_u16() {
            200 => xml::versioning_status(&reply.body).map_err(|e| other(&bucket, &e))?,
            // A server without versioning may not know the call at all.
            400 | 404 | 405 | 501 => None,
            _ => return Err(status_error(&bucket, &reply)),
        };
        let reply = self.send(&bucket, || Request::new(Method::GET, None).query("object-lock", "")).await?;
        let (object_lock, default_retention) = match reply.status.as_u16() {
            200 => xml::object_lock(&reply.body).map_err(|e| other(&bucket, &e))?,
            400 | 404 | 405 | 501 => (false, None),
            _ => return Err(status_error(&bucket, &reply)),
        };
        let found = StorageVersioning {
            versioning: versioning.map_or("off".to_string(), |v| v.to_ascii_lowercase()),
            object_lock,
            default_retention,
        };
        self.versioned.store(found.keeps_versions(), Ordering::Relaxed);
        self.locked.store(object_lock, Ordering::Relaxed);
        self.probed.store(true, Ordering::Relaxed);
        Ok(found)
    }

    /// Every version and delete marker under `prefix`, page by page.
    pub(super) async fn list_versions(&self, prefix: &str) -> Result<Vec<ObjectVersion>, BackendError> {
        let full = if self.prefix.is_empty() { prefix.to_string() } else { format!("{}/{prefix}", self.prefix) };
        let mut out = Vec::new();
        let mut next: Option<(String, String)> = None;
        let mut seen = std::collections::HashSet::new();
        loop {
            let reply = self
                .send(prefix, || {
                    let mut r = Request::new(Method::GET, None).query("versions", "").query("prefix", full.as_str());
                    if let Some((key, version)) = &next {
                        r = r.query("key-marker", key.as_str());
                        if !version.is_empty() {
                            r = r.query("version-id-marker", version.as_str());
                        }
                    }
                    r
                })
                .await?;
            match reply.status.as_u16() {
                200 => {}
                400 | 405 | 501 => return Err(BackendError::NoVersions(self.location())),
                _ => return Err(status_error(prefix, &reply)),
            }
            let page = xml::version_page(&reply.body).map_err(|e| other(prefix, &e))?;
            for mut v in page.versions {
                // Keys outside the vault's prefix (a hostile or confused server) are not ours.
                let Some(rel) = self.relative(&v.key) else { continue };
                v.key = rel;
                if v.key.starts_with(prefix) {
                    out.push(v);
                }
            }
            if out.len() > MAX_VERSIONS {
                return Err(other(prefix, &format!("the version listing goes on past {MAX_VERSIONS} entries")));
            }
            match page.next {
                // Pages go forward: key markers never go back, and within one key no version
                // marker comes twice (a server cycling between markers would list forever).
                Some(n) => {
                    let back = next.as_ref().is_some_and(|(k, _)| n.0 < *k);
                    if !seen.insert(n.clone()) || back {
                        return Err(other(prefix, "the version listing repeats or goes back to an earlier page"));
                    }
                    if next.as_ref().is_some_and(|(k, _)| *k != n.0) {
                        seen.retain(|(k, _)| *k == n.0);
                    }
                    next = Some(n);
                }
                None => break,
            }
        }
        Ok(out)
    }

    pub(super) async fn read_version(&self, key: &str, version_id: &str) -> Result<Bytes, BackendError> {
        let path = self.path(key)?;
        let reply =
            self.send(key, || Request::new(Method::GET, Some(path.as_ref())).query("versionId", version_id)).await?;
        match reply.status.as_u16() {
            200 => Ok(reply.body),
            _ => Err(status_error(key, &reply)),
        }
    }

    pub(super) async fn remove_version(&self, key: &str, version_id: &str) -> Result<(), BackendError> {
        let path = self.path(key)?;
        let reply =
            self.send(key, || Request::new(Method::DELETE, Some(path.as_ref())).query("versionId", version_id)).await?;
        match reply.status.as_u16() {
            200..=299 | 404 => Ok(()),
            403 => Err(self.refusal(key, &path, version_id, &reply).await),
            _ => Err(status_error(key, &reply)),
        }
    }

    /// The current version's retain-until date while it is in the future (a legal hold: forever).
    pub(super) async fn lock_of(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, BackendError> {
        let path = self.path(key)?;
        let head = self.send(key, || with_version(Request::new(Method::HEAD, Some(path.as_ref())), version)).await?;
        match head.status.as_u16() {
            200 => {}
            _ => return Err(status_error(key, &head)),
        }
        if head.header("x-amz-object-lock-legal-hold") == Some("ON") {
            return Ok(Some(chrono::DateTime::<chrono::Utc>::MAX_UTC));
        }
        let until = head.header("x-amz-object-lock-retain-until-date").map(str::to_string);
        let Some(until) = until else { return Ok(None) };
        let until = chrono::DateTime::parse_from_rfc3339(&until)
            .map_err(|e| other(key, &format!("retain-until date {until:?}: {e}")))?
            .with_timezone(&chrono::Utc);
        let now = self.clock.now().unwrap_or_else(chrono::Utc::now);
        Ok((until > now).then_some(until))
    }

    /// PUT `?retention` on `version` (the current one when `None`).
    pub(super) async fn lengthen_lock(
        &self,
        key: &str,
        version: Option<&str>,
        retention: Retention,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), BackendError> {
        let path = self.path(key)?;
        let body = Bytes::from(format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            retention.mode.s3_name(),
            until.format("%Y-%m-%dT%H:%M:%S.000Z")
        ));
        let sums = signed::Checksums::of(&body);
        let reply = self
            .send(key, || {
                let r = Request::new(Method::PUT, Some(path.as_ref())).query("retention", "");
                with_version(r, version).checked_body(body.clone(), &sums)
            })
            .await?;
        match reply.status.as_u16() {
            200..=299 => Ok(()),
            _ => Err(status_error(key, &reply)),
        }
    }

    /// Mode and retain-until date (storage time now plus the retention) for a write now.
    pub(super) fn retain_until(&self, key: &str) -> Result<Option<(&'static str, String)>, BackendError> {
        let Some(r) = *self.retention.lock().unwrap_or_else(|p| p.into_inner()) else { return Ok(None) };
        let now = self.clock.now().unwrap_or_else(|| {
            tracing::warn!("the storage has not told its time yet; retention counts from this host's clock");
            chrono::Utc::now()
        });
        let until = crate::backend::retain_from(now, r.seconds)
            .ok_or_else(|| other(key, &format!("a retention of {} s runs past the end of time", r.seconds)))?;
        Ok(Some((r.mode.s3_name(), until.format("%Y-%m-%dT%H:%M:%S.000Z").to_string())))
    }

    /// Every version of exactly `key`.
    pub(super) async fn versions_of(&self, key: &str) -> Result<Vec<ObjectVersion>, BackendError> {
        let mut all = self.list_versions(key).await?;
        all.retain(|v| v.key == key);
        Ok(all)
    }

    /// Why a refused delete of `version_id` was refused: Object Lock still keeping it (then
    /// [`BackendError::Retained`]) or the credentials.
    async fn refusal(&self, key: &str, path: &StorePath, version_id: &str, refused: &Reply) -> BackendError {
        let head =
            self.send(key, || Request::new(Method::HEAD, Some(path.as_ref())).query("versionId", version_id)).await;
        if let Ok(head) = head {
            let hold = head.header("x-amz-object-lock-legal-hold") == Some("ON");
            let until = head.header("x-amz-object-lock-retain-until-date").map(str::to_string);
            let mode = head.header("x-amz-object-lock-mode").unwrap_or("retention").to_string();
            // A lock that ended a moment ago (between the DELETE and this HEAD, or within the
            // error of our idea of the storage's time) still counts: "not yet" beats a failure.
            let recently = self.clock.now().unwrap_or_else(chrono::Utc::now) - chrono::Duration::minutes(5);
            let locked = until
                .as_deref()
                .and_then(|u| chrono::DateTime::parse_from_rfc3339(u).ok())
                .is_some_and(|u| u > recently);
            if hold || locked {
                let detail = match (hold, until) {
                    (true, _) => "legal hold".to_string(),
                    (false, until) => format!("{mode} until {}", until.unwrap_or_default()),
                };
                return BackendError::Retained {
                    key: key.to_string(),
                    detail: format!("version {version_id}: {detail}"),
                };
            }
        }
        status_error(key, refused)
    }
}
