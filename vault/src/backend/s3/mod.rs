//! S3-compatible object storage through `object_store`, and through [`signed`] requests for
//! what it has no call for (uploads with Object Lock headers, versions, bucket settings).
//!
//! Create-once is a conditional PUT (`If-None-Match: *`); whether the server honours it is found
//! out by the capability probe at `init` and recorded in the vault config. Every upload carries
//! `Content-MD5` (which locked buckets require) and a SHA-256 checksum the server verifies.
//! `object_store` retries 5xx answers and broken connections with exponential backoff; reads are
//! retried once more here when a body breaks off mid-transfer, signed requests here.
//!
//! In a bucket that keeps versions, a delete removes every version of the key by its id (no
//! delete markers are left behind by Tresor), and Object Lock makes that fail while a version is
//! retained; see docs/FORMAT.md, "Locked buckets".
//!
//! A vault URL may name several endpoints of one cluster
//! (`s3://bucket/prefix?endpoint=http://a:3900&endpoint=http://b:3900`): every request goes to
//! the current one, and a connection error or 5xx that outlasts `object_store`'s retries (kept
//! short when there are several) moves the backend on to the next, where it stays.

mod signed;
mod url;
mod versions;
pub mod xml;

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http::Method;
use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutPayload, RetryConfig,
};

use self::signed::{Reply, Request, ServerClock, Signed, status_error};
pub use self::url::parse_url;
use self::url::{parse_base, push_endpoints, split_endpoints};
use super::{Backend, BackendError, Created, ObjectInfo, ObjectVersion, Retention, StorageVersioning};
use crate::layout;

/// Tuning of the S3 backend.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Objects larger than this are uploaded in parts.
    pub multipart_threshold: usize,
    /// Size of one part.
    pub part_size: usize,
    /// Parts uploaded at once for one object.
    pub parts_in_flight: usize,
    /// Attempts per read (each attempt already includes `object_store`'s own retries).
    pub read_attempts: u32,
    /// Requests retried by `object_store` before an error is returned.
    pub max_retries: usize,
}

impl Default for S3Options {
    fn default() -> Self {
        Self { multipart_threshold: 32 << 20, part_size: 8 << 20, parts_in_flight: 3, read_attempts: 3, max_retries: 6 }
    }
}

/// One endpoint of the storage and the clients for it.
struct Endpoint {
    /// As given; `None` for the AWS default.
    url: Option<String>,
    store: Arc<AmazonS3>,
    signed: Arc<Signed>,
}

/// The largest object S3 takes in one PUT. In a locked bucket every object goes up in one PUT
/// (packs are at most 64 MiB), so each carries its `Content-MD5` and retention.
const SINGLE_PUT_MAX: usize = 5 << 30;

/// Requests `object_store` retries on one endpoint before the backend moves on to the next.
const RETRIES_BEFORE_FAILOVER: usize = 2;
/// Rounds over every endpoint before a request fails, a pause between them (a whole cluster
/// answering 503 for a few seconds is ridden out as one endpoint's longer retries would).
const FAILOVER_ROUNDS: usize = 3;

/// A vault under `s3://bucket/prefix`.
pub struct S3Backend {
    endpoints: Vec<Endpoint>,
    /// Index into `endpoints` of the one requests go to.
    current: AtomicUsize,
    /// The last failover, for `status` and alerts.
    failover: Mutex<Option<String>>,
    bucket: String,
    prefix: String,
    opts: S3Options,
    /// Set once the server answered a conditional PUT with "not implemented".
    no_conditional_put: AtomicBool,
    /// Set when the probe found that the server ignores conditional PUTs.
    look_first: AtomicBool,
    /// Set when the probe found that the bucket keeps versions: deletes go by version id.
    versioned: AtomicBool,
    /// Set when the probe found Object Lock on the bucket: no multipart uploads.
    locked: AtomicBool,
    /// Set once the probe answered: until then a delete cannot know how to delete.
    probed: AtomicBool,
    /// The retention later creates are written with.
    retention: Mutex<Option<Retention>>,
    /// The storage's time, from the `Date` of its answers.
    clock: Arc<ServerClock>,
}

impl S3Backend {
    /// Open `s3://bucket/prefix` with endpoint, region and credentials from the `AWS_*` variables.
    pub fn from_env(url: &str, opts: S3Options) -> Result<Self, BackendError> {
        Self::from_vars(url, std::env::vars(), opts)
    }

    /// Open `s3://bucket/prefix` with the given `AWS_*` variables (tests pass their own). The
    /// endpoints come from the URL's query, else from `AWS_ENDPOINT_URL` (commas separate
    /// several), else the AWS default.
    pub fn from_vars(
        url: &str,
        vars: impl IntoIterator<Item = (String, String)>,
        opts: S3Options,
    ) -> Result<Self, BackendError> {
        let (base, mut urls) = split_endpoints(url)?;
        let (bucket, prefix) = parse_base(base)?;
        let vars: Vec<(String, String)> = vars.into_iter().filter(|(k, _)| k.starts_with("AWS_")).collect();
        let var = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(k, v)| (k.clone(), v.clone()));
        if urls.is_empty()
            && let Some((name, list)) = var("AWS_ENDPOINT_URL").or_else(|| var("AWS_ENDPOINT"))
        {
            push_endpoints(&list, &name, &mut urls)?;
        }
        let retries = if urls.len() > 1 { opts.max_retries.min(RETRIES_BEFORE_FAILOVER) } else { opts.max_retries };
        let region =
            var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")).map_or("us-east-1".to_string(), |(_, r)| r);
        let clock = Arc::new(ServerClock::new());
        let build = |endpoint: Option<&str>| -> Result<Endpoint, BackendError> {
            let mut builder = AmazonS3Builder::new();
            for (k, v) in &vars {
                if let Ok(key) = k.to_ascii_lowercase().parse() {
                    builder = builder.with_config(key, v);
                }
            }
            builder = builder.with_bucket_name(&bucket);
            if let Some(e) = endpoint {
                builder = builder.with_endpoint(e);
            }
            if var("AWS_REGION").is_none() && var("AWS_DEFAULT_REGION").is_none() {
                builder = builder.with_region("us-east-1");
            }
            let plain_http = endpoint.is_some_and(|e| e.starts_with("http://"));
            let client = ClientOptions::new()
                .with_allow_http(plain_http)
                .with_connect_timeout(Duration::from_secs(10))
                .with_timeout(Duration::from_secs(300));
            let signed = Signed::new(endpoint, &bucket, &region, &client, clock.clone())?;
            let store = builder
                .with_allow_http(plain_http)
                .with_checksum_algorithm(Checksum::SHA256)
                .with_retry(RetryConfig {
                    backoff: BackoffConfig {
                        init_backoff: Duration::from_millis(100),
                        max_backoff: Duration::from_secs(5),
                        base: 2.0,
                    },
                    max_retries: retries,
                    retry_timeout: Duration::from_secs(180),
                })
                .with_client_options(client)
                .build()
                .map_err(|e| other(url, &format!("S3 configuration: {e}")))?;
            Ok(Endpoint { url: endpoint.map(str::to_string), store: Arc::new(store), signed: Arc::new(signed) })
        };
        let endpoints = if urls.is_empty() {
            vec![build(None)?]
        } else {
            urls.iter().map(|u| build(Some(u))).collect::<Result<_, BackendError>>()?
        };
        Ok(Self {
            endpoints,
            current: AtomicUsize::new(0),
            failover: Mutex::new(None),
            bucket,
            prefix,
            opts,
            no_conditional_put: AtomicBool::new(false),
            look_first: AtomicBool::new(false),
            versioned: AtomicBool::new(false),
            locked: AtomicBool::new(false),
            probed: AtomicBool::new(false),
            retention: Mutex::new(None),
            clock,
        })
    }

    /// Run one request on the current endpoint; on a connection error or 5xx, on the next ones in
    /// turn. The one that answers becomes current.
    async fn on_endpoints<T, F, Fut>(&self, key: &str, op: F) -> Result<T, BackendError>
    where
        F: Fn(Arc<AmazonS3>) -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        self.on_each_endpoint(key, |e| op(e.store.clone())).await
    }

    /// Send a signed request through the current endpoint (failing over as
    /// [`Self::on_endpoints`] does); a 5xx answer counts as a failure of the endpoint.
    async fn send<'r>(&self, key: &str, req: impl Fn() -> Request<'r>) -> Result<Reply, BackendError> {
        let attempts = if self.endpoints.len() > 1 {
            1
        } else {
            // Signed requests have no retries of object_store's beneath them.
            u32::try_from(self.opts.max_retries).unwrap_or(6) + 1
        };
        self.retry_n("request", key, attempts, || {
            self.on_each_endpoint(key, |e| {
                let request = req();
                async move {
                    let reply = e.signed.send(&e.store, request, key).await?;
                    match reply.status.as_u16() {
                        // 501 is an answer (the server lacks the call), not a passing failure.
                        409 | 429 | 500 | 502..=599 => Err(status_error(key, &reply)),
                        _ => Ok(reply),
                    }
                }
            })
        })
        .await
    }

    async fn on_each_endpoint<'e, T, F, Fut>(&'e self, key: &str, op: F) -> Result<T, BackendError>
    where
        F: Fn(&'e Endpoint) -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        let tries = if n > 1 { n * FAILOVER_ROUNDS } else { 1 };
        for i in 0..tries {
            if i > 0 && i % n == 0 {
                tokio::time::sleep(Duration::from_millis(500 * (i / n) as u64)).await;
            }
            let at = (start + i) % n;
            match op(&self.endpoints[at]).await {
                Err(e @ BackendError::Transient { .. }) if n > 1 => {
                    // Several endpoints are all named in the URL.
                    let name = |i: usize| self.endpoints[i % n].url.as_deref().unwrap_or_default();
                    let (failed, next) = (name(at), name(at + 1));
                    tracing::warn!(key, endpoint = %failed, next = %next, error = %e, "storage endpoint failed; trying the next");
                    let when = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    *self.failover.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(format!("endpoint {failed} failed at {when} ({e}); moved on to {next}"));
                    self.current.store((at + 1) % n, Ordering::Relaxed);
                    last = Some(e);
                }
                r => return r,
            }
        }
        Err(last.unwrap_or_else(|| transient(key, "no storage endpoint answered")))
    }

    fn path(&self, key: &str) -> Result<StorePath, BackendError> {
        if key.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
            return Err(other(key, "object key has an empty, . or .. component"));
        }
        let full = if self.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.prefix) };
        StorePath::parse(&full).map_err(|e| other(key, &e.to_string()))
    }

    fn key_of(&self, path: &StorePath) -> String {
        let s = path.as_ref();
        if self.prefix.is_empty() {
            s.to_string()
        } else {
            s.strip_prefix(&self.prefix).and_then(|r| r.strip_prefix('/')).unwrap_or(s).to_string()
        }
    }

    async fn put_once(&self, key: &str, path: &StorePath, bytes: Bytes) -> Result<Created, BackendError> {
        if self.look_first.load(Ordering::Relaxed) && self.size(key).await?.is_some() {
            return Ok(Created::Existed);
        }
        let sums = checksums(&bytes).await;
        if !self.no_conditional_put.load(Ordering::Relaxed) {
            match self.put_signed(key, path, &bytes, &sums, true).await? {
                Some(created) => return Ok(created),
                None => {
                    tracing::warn!(bucket = %self.bucket, "server does not implement conditional PUT; create-once is best effort");
                    self.no_conditional_put.store(true, Ordering::Relaxed);
                }
            }
        }
        // Unconditional: the init probe then sees a second create win, records that storage does
        // not enforce create-once, and the vault turns on `look_first` for every later create.
        self.put_signed(key, path, &bytes, &sums, false).await?;
        Ok(Created::New)
    }

    /// Upload `bytes` to `key` in one signed PUT, create-once (`If-None-Match: *`) when
    /// `conditional`, with the vault's retention unless the key is rewritten by design. `None`
    /// when the server does not implement conditional PUTs.
    async fn put_signed(
        &self,
        key: &str,
        path: &StorePath,
        bytes: &Bytes,
        sums: &signed::Checksums,
        conditional: bool,
    ) -> Result<Option<Created>, BackendError> {
        let lock = if layout::rewritten(key) { None } else { self.retain_until(key)? };
        let reply = self
            .send(key, || {
                let mut r = Request::new(Method::PUT, Some(path.as_ref())).checked_body(bytes.clone(), sums);
                if conditional {
                    r = r.header("if-none-match", "*");
                }
                if let Some((mode, until)) = &lock {
                    r = r.header("x-amz-object-lock-mode", *mode).header("x-amz-object-lock-retain-until-date", until);
                }
                r
            })
            .await?;
        match reply.status.as_u16() {
            200..=299 => Ok(Some(Created::New)),
            412 if conditional => Ok(Some(Created::Existed)),
            501 if conditional => Ok(None),
            _ => Err(status_error(key, &reply)),
        }
    }

    /// Large objects go up in parts. A multipart upload cannot be conditional, so the object is
    /// looked up first; objects this large are packs, named by their content, so a racing writer
    /// can only write the same bytes.
    async fn put_parts(&self, key: &str, path: &StorePath, bytes: Bytes) -> Result<Created, BackendError> {
        // Starting and completing a multipart upload are POSTs, which object_store does not
        // retry; the whole upload is retried instead (a completed one is then found by HEAD).
        // On another endpoint the upload starts over: an upload id need not be known cluster-wide.
        self.retry("multipart upload", key, || {
            self.on_endpoints(key, |store| self.put_parts_once(store, key, path, bytes.clone()))
        })
        .await
    }

    async fn put_parts_once(
        &self,
        store: Arc<AmazonS3>,
        key: &str,
        path: &StorePath,
        bytes: Bytes,
    ) -> Result<Created, BackendError> {
        if head(&store, key, path).await?.is_some() {
            return Ok(Created::Existed);
        }
        let mut upload =
            store.put_multipart_opts(path, PutMultipartOptions::default()).await.map_err(|e| map_err(key, e))?;
        let step = self.opts.part_size.max(5 << 20);
        let parts: Vec<_> = (0..bytes.len())
            .step_by(step)
            .map(|s| upload.put_part(PutPayload::from(bytes.slice(s..(s + step).min(bytes.len())))))
            .collect();
        let sent: Result<Vec<()>, _> =
            futures::stream::iter(parts).buffered(self.opts.parts_in_flight.max(1)).try_collect().await;
        let done = match sent {
            Ok(_) => upload.complete().await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            // A completion whose answer was lost is retried by object_store and then fails with
            // NoSuchUpload although the object exists: look before calling it a failure.
            if head(&store, key, path).await.ok().flatten() == Some(bytes.len() as u64) {
                return Ok(Created::New);
            }
            let _ = upload.abort().await;
            return Err(match map_err(key, e) {
                BackendError::NotFound(_) => transient(key, "multipart upload vanished before completion"),
                other => other,
            });
        }
        Ok(Created::New)
    }

    /// Run `op` (a read, or a whole multipart upload), trying again when the failure may be
    /// passing (a broken-off body, a 5xx that outlasted `object_store`'s own retries). With
    /// several endpoints, [`Self::on_endpoints`]' rounds are the retries: no second loop on top.
    async fn retry<T, F, Fut>(&self, what: &str, key: &str, op: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        let attempts = if self.endpoints.len() > 1 { 1 } else { self.opts.read_attempts };
        self.retry_n(what, key, attempts, op).await
    }

    /// [`Self::retry`] with `attempts` in all.
    async fn retry_n<T, F, Fut>(&self, what: &str, key: &str, attempts: u32, mut op: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op().await {
                Err(BackendError::Transient { detail, .. }) if attempt < attempts => {
                    tracing::warn!(key, attempt, %detail, "storage {what} failed; retrying");
                    tokio::time::sleep(Duration::from_millis((200u64 << attempt.min(5)).min(5_000))).await;
                }
                r => return r,
            }
        }
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn kind(&self) -> &'static str {
        "s3"
    }

    fn endpoint(&self) -> Option<String> {
        self.endpoints[self.current.load(Ordering::Relaxed) % self.endpoints.len()].url.clone()
    }

    fn endpoint_failover(&self) -> Option<String> {
        self.failover.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn check_location(&self) -> Result<(), BackendError> {
        let prefix = if self.prefix.is_empty() { None } else { Some(StorePath::from(self.prefix.as_str())) };
        let location = self.location();
        self.retry("read", &location, || {
            self.on_endpoints(&location, |store| {
                let (prefix, location) = (prefix.clone(), location.clone());
                async move {
                    match store.list_with_delimiter(prefix.as_ref()).await {
                        Ok(_) => Ok(()),
                        Err(object_store::Error::NotFound { .. }) => Err(BackendError::NoSuchLocation(location)),
                        Err(e) => Err(map_err(&location, e)),
                    }
                }
            })
        })
        .await
    }

    fn check_before_create(&self) {
        self.look_first.store(true, Ordering::Relaxed);
    }

    async fn create(&self, key: &str, bytes: Bytes) -> Result<Created, BackendError> {
        let path = self.path(key)?;
        let threshold =
            if self.locked.load(Ordering::Relaxed) { SINGLE_PUT_MAX } else { self.opts.multipart_threshold };
        if bytes.len() > threshold {
            self.put_parts(key, &path, bytes).await
        } else {
            self.put_once(key, &path, bytes).await
        }
    }

    async fn overwrite(&self, key: &str, bytes: Bytes) -> Result<(), BackendError> {
        let path = self.path(key)?;
        let sums = checksums(&bytes).await;
        self.put_signed(key, &path, &bytes, &sums, false).await.map(|_| ())
    }

    async fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        let path = self.path(key)?;
        self.retry("read", key, || {
            self.on_endpoints(key, |store| {
                let path = &path;
                async move {
                    let r = store.get(path).await.map_err(|e| map_err(key, e))?;
                    let expected = r.meta.size;
                    let bytes = r.bytes().await.map_err(|e| map_err(key, e))?;
                    if bytes.len() as u64 != expected {
                        return Err(transient(key, &format!("body has {} bytes, object has {expected}", bytes.len())));
                    }
                    Ok(bytes)
                }
            })
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        let path = self.path(key)?;
        let want = range.end.saturating_sub(range.start);
        if want == 0 {
            return Ok(Bytes::new());
        }
        self.retry("read", key, || {
            self.on_endpoints(key, |store| {
                let (path, range) = (&path, range.clone());
                async move {
                    match store.get_range(path, range.clone()).await {
                        Ok(b) if b.len() as u64 == want => Ok(b),
                        Ok(b) => {
                            // Either the object is shorter than the range (damage) or the transfer broke off.
                            match store.head(path).await {
                                Ok(meta) if meta.size < range.end => {
                                    Err(BackendError::ShortObject { key: key.to_string(), range })
                                }
                                _ => Err(transient(key, &format!("range {range:?}: got {} of {want} bytes", b.len()))),
                            }
                        }
                        Err(e) if is_range_error(&e) => Err(BackendError::ShortObject { key: key.to_string(), range }),
                        Err(e) => Err(map_err(key, e)),
                    }
                }
            })
        })
        .await
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, BackendError> {
        let path = self.path(key)?;
        let path = &path;
        self.retry("read", key, || self.on_endpoints(key, |store| async move { head(&store, key, path).await })).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        // object_store lists by whole path segments; our prefixes end with `/`.
        let dir = prefix.trim_end_matches('/');
        let path = if dir.is_empty() {
            (!self.prefix.is_empty()).then(|| StorePath::from(self.prefix.as_str()))
        } else {
            Some(self.path(dir)?)
        };
        self.retry("read", prefix, || {
            self.on_endpoints(prefix, |store| {
                let path = &path;
                async move {
                    let mut out: Vec<ObjectInfo> = store
                        .list(path.as_ref())
                        .map_ok(|m| ObjectInfo { key: self.key_of(&m.location), size: m.size })
                        .try_collect()
                        .await
                        .map_err(|e| map_err(prefix, e))?;
                    out.retain(|o| o.key.starts_with(prefix));
                    out.sort_by(|a, b| a.key.cmp(&b.key));
                    Ok(out)
                }
            })
        })
        .await
    }

    async fn probe_versioning(&self) -> Result<Option<StorageVersioning>, BackendError> {
        self.probe_versions().await.map(Some)
    }

    fn set_retention(&self, retention: Option<Retention>) {
        *self.retention.lock().unwrap_or_else(|p| p.into_inner()) = retention;
    }

    fn storage_now(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.clock.now()
    }

    async fn versions(&self, prefix: &str) -> Result<Vec<ObjectVersion>, BackendError> {
        self.list_versions(prefix).await
    }

    async fn get_version(&self, key: &str, version_id: &str) -> Result<Bytes, BackendError> {
        self.read_version(key, version_id).await
    }

    async fn delete_version(&self, key: &str, version_id: &str) -> Result<(), BackendError> {
        self.remove_version(key, version_id).await
    }

    async fn retained_until(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, BackendError> {
        self.lock_of(key, version).await
    }

    async fn extend_retention(
        &self,
        key: &str,
        version: Option<&str>,
        retention: Retention,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), BackendError> {
        self.lengthen_lock(key, version, retention, until).await
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let path = self.path(key)?;
        // A plain delete in a bucket that keeps versions would leave a delete marker that
        // `check` takes for an attacker's: never delete without knowing which kind it is.
        if !self.probed.load(Ordering::Relaxed) {
            self.probe_versions().await?;
        }
        if self.versioned.load(Ordering::Relaxed) {
            let mut kept = None;
            for v in self.versions_of(key).await? {
                match self.delete_version(key, &v.version_id).await {
                    Ok(()) => {}
                    Err(e @ BackendError::Retained { .. }) => kept = Some(e),
                    Err(e) => return Err(e),
                }
            }
            match kept {
                None => return Ok(()),
                Some(e) if !layout::rewritten(key) => return Err(e),
                // A rewritten object still retained is hidden below, under a delete marker.
                Some(_) => {}
            }
        }
        self.on_endpoints(key, |store| {
            let path = &path;
            async move {
                match store.delete(path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(map_err(key, e)),
                }
            }
        })
        .await
    }
}

/// The checksums of an upload, computed off the runtime when the body is large.
async fn checksums(bytes: &Bytes) -> signed::Checksums {
    if bytes.len() < 256 << 10 {
        return signed::Checksums::of(bytes);
    }
    let body = bytes.clone();
    match tokio::task::spawn_blocking(move || signed::Checksums::of(&body)).await {
        Ok(sums) => sums,
        Err(_) => signed::Checksums::of(bytes),
    }
}

/// The size of the object at `path`, `None` if absent.
async fn head(store: &AmazonS3, key: &str, path: &StorePath) -> Result<Option<u64>, BackendError> {
    match store.head(path).await {
        Ok(m) => Ok(Some(m.size)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(map_err(key, e)),
    }
}

fn other(key: &str, detail: &str) -> BackendError {
    BackendError::Other { key: key.to_string(), detail: detail.to_string() }
}

fn transient(key: &str, detail: &str) -> BackendError {
    BackendError::Transient { key: key.to_string(), detail: detail.to_string() }
}

/// The whole error chain as one line: `object_store` keeps the useful part in the sources.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

fn is_range_error(e: &object_store::Error) -> bool {
    let text = chain(e);
    text.contains("416") || text.contains("InvalidRange") || text.contains("Wanted range")
}

/// A failure of the network or of the server (5xx, reset, timeout) may pass; anything else is
/// reported as it is.
fn is_passing(e: &object_store::Error, text: &str) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = cur {
        if let Some(h) = s.downcast_ref::<object_store::client::HttpError>() {
            use object_store::client::HttpErrorKind as K;
            if matches!(h.kind(), K::Connect | K::Request | K::Timeout | K::Interrupted | K::Decode) {
                return true;
            }
        }
        cur = s.source();
    }
    text.contains("status code: 5") || text.contains("error decoding response body") || text.contains("connection")
}

fn map_err(key: &str, e: object_store::Error) -> BackendError {
    if let object_store::Error::NotFound { .. } = e {
        return BackendError::NotFound(key.to_string());
    }
    let text = chain(&e);
    match &e {
        _ if text.contains("NoSuchBucket") => BackendError::NoSuchLocation(key.to_string()),
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            BackendError::PermissionDenied { key: key.to_string(), detail: text }
        }
        _ if is_passing(&e, &text) => transient(key, &text),
        _ => other(key, &text),
    }
}
