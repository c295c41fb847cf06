//! Storage backends. Objects are write-once (`create`); only session markers and the GC mark
//! are overwritten.
//!
//! Every backend passes the same conformance suite (`tests/backend_conformance.rs`).

pub mod local;
pub mod s3;

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

/// Result of a create-once write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object was written.
    New,
    /// An object of that name already existed and was left untouched.
    Existed,
}

/// A listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the vault root, `/`-separated.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// Object Lock retention mode. Governance can be lifted by an account with the right to bypass
/// it; compliance cannot be shortened by anyone, the account's root included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// `GOVERNANCE`.
    Governance,
    /// `COMPLIANCE`.
    Compliance,
}

impl LockMode {
    /// From S3's name (`GOVERNANCE`) or ours (`governance`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "governance" => Some(Self::Governance),
            "compliance" => Some(Self::Compliance),
            _ => None,
        }
    }

    /// S3's name.
    pub fn s3_name(self) -> &'static str {
        match self {
            Self::Governance => "GOVERNANCE",
            Self::Compliance => "COMPLIANCE",
        }
    }
}

/// The retention Tresor writes objects with: each is locked until the storage's time at the
/// write plus `seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Retention {
    /// Governance or compliance.
    pub mode: LockMode,
    /// How long from the write.
    pub seconds: u64,
}

/// What the storage keeps of replaced and deleted objects, as the probe found it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StorageVersioning {
    /// `enabled`, `suspended` or `off`.
    pub versioning: String,
    /// The bucket has Object Lock.
    pub object_lock: bool,
    /// The bucket's default retention: mode and days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_retention: Option<(LockMode, u32)>,
}

impl StorageVersioning {
    /// Replaced and deleted objects are kept as versions.
    pub fn keeps_versions(&self) -> bool {
        self.versioning != "off"
    }
}

impl std::fmt::Display for StorageVersioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "versioning {}", self.versioning)?;
        match (self.object_lock, self.default_retention) {
            (false, _) => write!(f, ", no Object Lock"),
            (true, None) => write!(f, ", Object Lock without a default retention"),
            (true, Some((mode, days))) => write!(f, ", Object Lock with a default retention of {days} days ({mode:?})"),
        }
    }
}

/// One version of an object, or a delete marker, in a versioned bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    /// Key relative to the vault root.
    pub key: String,
    /// The storage's version id.
    pub version_id: String,
    /// The current version of its key (what a plain read returns, or hides when a marker).
    pub latest: bool,
    /// A delete marker: hides the versions below it.
    pub delete_marker: bool,
    /// The entity tag (MD5 of a single-part upload).
    pub etag: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// When written, as the storage reports it.
    pub last_modified: String,
}

/// Backend errors. `Transient` ones may succeed when retried.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The object does not exist.
    #[error("{0}: object not found")]
    NotFound(String),
    /// The vault location itself does not exist.
    #[error("vault location {0} does not exist")]
    NoSuchLocation(String),
    /// Access was refused.
    #[error("{key}: permission denied: {detail}")]
    PermissionDenied {
        /// Key or location.
        key: String,
        /// Backend message.
        detail: String,
    },
    /// The local disk or target file system is full.
    #[error("{0}: no space left on the storage")]
    NoSpace(String),
    /// A retryable failure (network, 5xx) that persisted through retries.
    #[error("{key}: transient storage error: {detail}")]
    Transient {
        /// Key.
        key: String,
        /// Detail.
        detail: String,
    },
    /// The object ends before the requested range does (a cut-short object: damage).
    #[error("{key}: object shorter than requested range {range:?}")]
    ShortObject {
        /// Key.
        key: String,
        /// The range asked for.
        range: std::ops::Range<u64>,
    },
    /// The storage could not confirm that a write is durable (an fsync failed). Fatal: the
    /// write is not retried, since a retried fsync can succeed without the data being on disk.
    #[error("{key}: the storage could not make this change durable ({detail}); fatal, not retried")]
    NotDurable {
        /// Key.
        key: String,
        /// What failed.
        detail: String,
    },
    /// Object Lock keeps this version until its retention passes: nothing may delete it yet.
    #[error("{key}: kept by Object Lock ({detail}); it can be deleted once its retention passes")]
    Retained {
        /// Key.
        key: String,
        /// Mode and retain-until date.
        detail: String,
    },
    /// The storage keeps no versions, or cannot list them.
    #[error("{0}: the storage keeps no object versions")]
    NoVersions(String),
    /// Any other failure.
    #[error("{key}: {detail}")]
    Other {
        /// Key.
        key: String,
        /// Detail.
        detail: String,
    },
}

impl BackendError {
    /// Map a local I/O error for `key`.
    pub fn from_io(key: &str, e: &std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::NotFound => Self::NotFound(key.to_string()),
            std::io::ErrorKind::PermissionDenied => {
                Self::PermissionDenied { key: key.to_string(), detail: e.to_string() }
            }
            std::io::ErrorKind::StorageFull => Self::NoSpace(key.to_string()),
            _ => Self::Other { key: key.to_string(), detail: e.to_string() },
        }
    }
}

/// A place where a vault's objects live.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The location, for messages.
    fn location(&self) -> String;
    /// "local" or "s3".
    fn kind(&self) -> &'static str;
    /// Check that the location exists and is reachable.
    async fn check_location(&self) -> Result<(), BackendError>;
    /// Make the location ready for a new vault (a directory is created; a bucket must exist).
    async fn prepare_location(&self) -> Result<(), BackendError> {
        self.check_location().await
    }
    /// The capability probe found that the storage does not enforce create-once: look before
    /// every create from now on (best effort, a race window remains; see docs/SECURITY.md).
    fn check_before_create(&self) {}
    /// Write `bytes` under `key` unless it exists. Must be atomic: readers see all or nothing.
    async fn create(&self, key: &str, bytes: Bytes) -> Result<Created, BackendError>;
    /// Write or replace `key` atomically (session markers only).
    async fn overwrite(&self, key: &str, bytes: Bytes) -> Result<(), BackendError>;
    /// Read a whole object.
    async fn get(&self, key: &str) -> Result<Bytes, BackendError>;
    /// Read a byte range; the result is exactly `range.end - range.start` bytes or an error.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError>;
    /// Size of an object, `None` if absent.
    async fn size(&self, key: &str) -> Result<Option<u64>, BackendError>;
    /// All objects whose key starts with `prefix`, sorted by key. Errors are never turned into
    /// a short listing.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError>;
    /// Delete an object; deleting a missing object succeeds. Where the storage keeps versions,
    /// every version is deleted by its id; a version Object Lock still keeps fails the delete
    /// with [`BackendError::Retained`], except for rewritten objects (session markers, the GC
    /// mark, probes), which are then hidden under a delete marker until a later delete.
    async fn delete(&self, key: &str) -> Result<(), BackendError>;
    /// Why the storage cannot confirm that what it acknowledged is durable (a file system that
    /// refuses fsync), once found out; `None` while it confirms every write.
    fn durability_unverified(&self) -> Option<String> {
        None
    }
    /// Find out now whether the storage's sync calls work (a local probe file is fsynced with its
    /// directory); what it finds shows in [`Backend::durability_unverified`].
    async fn probe_durability(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// The endpoint that answered last, where the storage has several.
    fn endpoint(&self) -> Option<String> {
        None
    }
    /// The last failover between endpoints: which one failed, when and why.
    fn endpoint_failover(&self) -> Option<String> {
        None
    }
    /// Find out whether the storage keeps versions of replaced and deleted objects (S3 versioning)
    /// and locks them (Object Lock); `None` where it keeps nothing. Deletes of a backend that
    /// keeps versions remove every version by its id (see [`Backend::delete`]).
    async fn probe_versioning(&self) -> Result<Option<StorageVersioning>, BackendError> {
        Ok(None)
    }
    /// Write every later object (but the rewritten ones: session markers, the GC mark, probes)
    /// with this retention; `None`: only the bucket's default retention applies.
    fn set_retention(&self, _retention: Option<Retention>) {}
    /// The storage's clock now, as its answers tell it, where it has told it.
    fn storage_now(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        None
    }
    /// Every version and delete marker under `prefix`: each key's newest version first.
    async fn versions(&self, prefix: &str) -> Result<Vec<ObjectVersion>, BackendError> {
        Err(BackendError::NoVersions(prefix.to_string()))
    }
    /// Read one version of `key`.
    async fn get_version(&self, key: &str, _version_id: &str) -> Result<Bytes, BackendError> {
        Err(BackendError::NoVersions(key.to_string()))
    }
    /// Delete one version of `key` (or a delete marker) for good; [`BackendError::Retained`]
    /// while Object Lock keeps it.
    async fn delete_version(&self, key: &str, _version_id: &str) -> Result<(), BackendError> {
        Err(BackendError::NoVersions(key.to_string()))
    }
    /// Until when Object Lock keeps `version` of `key` (the current one when `None`; a legal
    /// hold counts as kept for good); `None` when nothing keeps it.
    async fn retained_until(
        &self,
        _key: &str,
        _version: Option<&str>,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, BackendError> {
        Ok(None)
    }
    /// Keep `version` of `key` (the current one when `None`) locked until `until` (never
    /// shortens a lock).
    async fn extend_retention(
        &self,
        key: &str,
        _version: Option<&str>,
        _retention: Retention,
        _until: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), BackendError> {
        Err(BackendError::NoVersions(key.to_string()))
    }
    /// Fail where storage has directories and the one `prefix` names is missing (a local vault
    /// whose `snapshots/` went away would otherwise list as empty). Object stores have no
    /// directories: always fine there.
    async fn require_prefix(&self, _prefix: &str) -> Result<(), BackendError> {
        Ok(())
    }
}

/// `now` plus `seconds` and one more (whole seconds, rounded up: never a moment short of a
/// retention), `None` past what a date can hold.
pub fn retain_from(now: chrono::DateTime<chrono::Utc>, seconds: u64) -> Option<chrono::DateTime<chrono::Utc>> {
    let secs = i64::try_from(seconds).ok()?.checked_add(1)?;
    now.checked_add_signed(chrono::Duration::try_seconds(secs)?)
}

/// Shared handle to a backend.
pub type DynBackend = Arc<dyn Backend>;

/// Open the backend named by a vault URL: a directory path, or `s3://bucket/prefix`.
pub fn from_url(url: &str) -> Result<DynBackend, BackendError> {
    from_url_with(url, None)
}

/// [`from_url`], an S3 URL with these `AWS_*` variables instead of the environment's (a second
/// site's own credentials).
pub fn from_url_with(url: &str, vars: Option<Vec<(String, String)>>) -> Result<DynBackend, BackendError> {
    if let Some(vars) = vars {
        if !url.starts_with("s3://") {
            return Err(BackendError::Other {
                key: url.into(),
                detail: "credentials are for s3:// vaults only".into(),
            });
        }
        return Ok(Arc::new(s3::S3Backend::from_vars(url, vars, s3::S3Options::default())?));
    }
    if url.trim().is_empty() {
        return Err(BackendError::Other { key: url.into(), detail: "vault URL is empty".into() });
    }
    if url.starts_with("s3://") {
        return Ok(Arc::new(s3::S3Backend::from_env(url, s3::S3Options::default())?));
    }
    if let Some(path) = url.strip_prefix("file://") {
        return Ok(Arc::new(local::LocalBackend::new(path.into())));
    }
    if url.contains("://") {
        return Err(BackendError::Other {
            key: url.into(),
            detail: "unknown URL scheme: use a directory path or s3://bucket/prefix".into(),
        });
    }
    Ok(Arc::new(local::LocalBackend::new(url.into())))
}
