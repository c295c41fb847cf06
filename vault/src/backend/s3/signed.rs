//! Requests `object_store` has no call for: PUTs with Object Lock headers and `Content-MD5`,
//! version listings, deletes by version id, bucket settings. They are signed with
//! `object_store`'s own SigV4 signer and credentials and sent through its HTTP client, so one set
//! of credentials, TLS settings and timeouts serves both (docs/decisions/0016).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use md5::Digest as _;
use object_store::ClientOptions;
use object_store::aws::{AmazonS3, AwsAuthorizer};
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};
use sha2::Digest as _;

use crate::backend::BackendError;

/// The storage's clock as seen in the `Date` of its answers: retain-until dates are computed
/// from it, not from this host's clock.
#[derive(Debug, Default)]
pub struct ServerClock {
    /// Seconds the storage's clock is ahead of ours (negative when behind); `i64::MIN` until
    /// the first answer.
    skew: AtomicI64,
}

impl ServerClock {
    pub fn new() -> Self {
        Self { skew: AtomicI64::new(i64::MIN) }
    }

    fn observe(&self, headers: &HeaderMap) {
        let Some(date) = headers.get(http::header::DATE).and_then(|v| v.to_str().ok()) else { return };
        if let Ok(at) = chrono::DateTime::parse_from_rfc2822(date) {
            let skew = at.timestamp().saturating_sub(chrono::Utc::now().timestamp());
            // A Date more than a day off is not believed (a forged one would lock objects for
            // ages in compliance mode): this host's clock is used until a sane one comes.
            if skew.abs() > MAX_SKEW_SECS {
                tracing::warn!(date, skew, "the storage's Date is more than a day from this host's clock; not used");
                return;
            }
            self.skew.store(skew, Ordering::Relaxed);
        }
    }

    /// The storage's time now, `None` before it has answered with a `Date`.
    pub fn now(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let skew = self.skew.load(Ordering::Relaxed);
        (skew != i64::MIN)
            .then(|| chrono::Utc::now() + chrono::Duration::seconds(skew.clamp(-MAX_SKEW_SECS, MAX_SKEW_SECS)))
    }
}

/// The largest answer read.
const MAX_BODY: u64 = 256 << 20;

/// The most the storage's clock may differ from ours and still be believed.
const MAX_SKEW_SECS: i64 = 86_400;

/// An answer: status, headers and the whole body (answers here are small XML documents).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The S3 error code of a failed request (`AccessDenied`, `NoSuchKey`...), if the body has one.
    pub fn error_code(&self) -> Option<String> {
        xml_field(&self.body, "Code")
    }

    /// The error as one line: status, code and message.
    pub fn describe(&self) -> String {
        let code = self.error_code().unwrap_or_default();
        let message = xml_field(&self.body, "Message").unwrap_or_default();
        format!("HTTP {} {code}: {message}", self.status.as_u16()).trim_end_matches([' ', ':']).to_string()
    }
}

/// The text of the first `<field>` element of a small XML document.
fn xml_field(body: &[u8], field: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find(&format!("<{field}>"))? + field.len() + 2;
    let end = text[start..].find(&format!("</{field}>"))? + start;
    Some(text[start..end].to_string())
}

/// The checksums of an upload's body, computed once (off the runtime for large bodies) however
/// often the upload is retried.
#[derive(Debug, Clone)]
pub struct Checksums {
    md5: [u8; 16],
    sha256: [u8; 32],
}

impl Checksums {
    pub fn of(body: &[u8]) -> Self {
        Self { md5: md5::Md5::digest(body).into(), sha256: sha2::Sha256::digest(body).into() }
    }
}

/// A signed request: the object key (relative to the bucket) or none for the bucket itself.
pub struct Request<'a> {
    method: Method,
    object: Option<&'a str>,
    query: Vec<(&'a str, String)>,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
    sha256: Option<[u8; 32]>,
}

impl<'a> Request<'a> {
    pub fn new(method: Method, object: Option<&'a str>) -> Self {
        Self { method, object, query: Vec::new(), headers: Vec::new(), body: Bytes::new(), sha256: None }
    }

    pub fn query(mut self, name: &'a str, value: impl Into<String>) -> Self {
        self.query.push((name, value.into()));
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// A body with the checksums every upload carries: `Content-MD5` (which locked buckets
    /// require), `x-amz-checksum-sha256` (which the server verifies) and the algorithm's name.
    pub fn checked_body(mut self, body: Bytes, sums: &Checksums) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        self.headers.push(("content-md5", b64.encode(sums.md5)));
        self.headers.push(("x-amz-checksum-sha256", b64.encode(sums.sha256)));
        self.headers.push(("x-amz-sdk-checksum-algorithm", "SHA256".into()));
        self.body = body;
        self.sha256 = Some(sums.sha256);
        self
    }
}

/// The signing client of one endpoint.
pub struct Signed {
    client: HttpClient,
    /// `http(s)://host[:port]/bucket` (path-style addressing, as `object_store` is configured).
    bucket_url: String,
    region: String,
    clock: Arc<ServerClock>,
}

impl Signed {
    pub fn new(
        endpoint: Option<&str>,
        bucket: &str,
        region: &str,
        options: &ClientOptions,
        clock: Arc<ServerClock>,
    ) -> Result<Self, BackendError> {
        let client = ReqwestConnector::default()
            .connect(options)
            .map_err(|e| BackendError::Other { key: bucket.into(), detail: format!("HTTP client: {e}") })?;
        let host = match endpoint {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => format!("https://s3.{region}.amazonaws.com"),
        };
        Ok(Self { client, bucket_url: format!("{host}/{}", encode(bucket, false)), region: region.into(), clock })
    }

    /// Sign `req` with the credentials `store` uses and send it. Network failures come back as
    /// `Transient`; any HTTP status comes back as a [`Reply`] for the caller to read.
    pub async fn send(&self, store: &AmazonS3, req: Request<'_>, what: &str) -> Result<Reply, BackendError> {
        let mut url = self.bucket_url.clone();
        if let Some(key) = req.object {
            url.push('/');
            url.push_str(&encode(key, true));
        }
        let query: Vec<String> =
            req.query.iter().map(|(k, v)| format!("{}={}", encode(k, false), encode(v, false))).collect();
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query.join("&"));
        }
        let head = req.method == Method::HEAD;
        let digest: [u8; 32] = req.sha256.unwrap_or_else(|| sha2::Sha256::digest(&req.body).into());
        let mut request = http::Request::builder()
            .method(req.method)
            .uri(url.as_str())
            .body(HttpRequestBody::from(req.body))
            .map_err(|e| other(what, &format!("bad request: {e}")))?;
        for (name, value) in &req.headers {
            let value = HeaderValue::from_str(value).map_err(|e| other(what, &format!("header {name}: {e}")))?;
            request.headers_mut().insert(HeaderName::from_static(name), value);
        }
        let credential = store
            .credentials()
            .get_credential()
            .await
            .map_err(|e| BackendError::PermissionDenied { key: what.into(), detail: format!("no credentials: {e}") })?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, Some(&digest))
            .map_err(|e| other(what, &format!("signing: {e}")))?;
        let response = self.client.execute(request).await.map_err(|e| transient(what, &e.to_string()))?;
        let (parts, body) = response.into_parts();
        // Answers here are small documents, or one object (a pack is at most 64 MiB).
        let length = parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if !head && length.is_some_and(|n| n > MAX_BODY) {
            return Err(other(
                what,
                &format!("the storage answered with {} bytes, more than {MAX_BODY}", length.unwrap_or(0)),
            ));
        }
        let body = body.bytes().await.map_err(|e| transient(what, &e.to_string()))?;
        self.clock.observe(&parts.headers);
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }
}

/// Map a failed answer for `key` to a backend error.
pub fn status_error(key: &str, reply: &Reply) -> BackendError {
    let detail = reply.describe();
    let code = reply.error_code().unwrap_or_default();
    match reply.status.as_u16() {
        404 if code == "NoSuchBucket" => BackendError::NoSuchLocation(key.into()),
        404 => BackendError::NotFound(key.into()),
        401 | 403 => BackendError::PermissionDenied { key: key.into(), detail },
        // 409 is a concurrent conditional write (retry), 429 and 5xx are the server's trouble;
        // 501 means the server lacks the call.
        409 | 429 | 500 | 502..=599 => transient(key, &detail),
        _ => other(key, &detail),
    }
}

/// Percent-encode for a URL path (`keep_slash`) or a query value: everything but the
/// characters SigV4 leaves unreserved.
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn other(key: &str, detail: &str) -> BackendError {
    BackendError::Other { key: key.to_string(), detail: detail.to_string() }
}

fn transient(key: &str, detail: &str) -> BackendError {
    BackendError::Transient { key: key.to_string(), detail: detail.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_encoded_as_sigv4_expects() {
        assert_eq!(encode("data/ab/cd-1.x~", true), "data/ab/cd-1.x~");
        assert_eq!(encode("a b/c+d", true), "a%20b/c%2Bd");
        assert_eq!(encode("a/b", false), "a%2Fb");
        assert_eq!(encode("ü", false), "%C3%BC");
    }

    #[test]
    fn error_replies_name_their_code() {
        let reply = Reply {
            status: StatusCode::FORBIDDEN,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"),
        };
        assert_eq!(reply.describe(), "HTTP 403 AccessDenied: Access Denied");
        assert!(matches!(status_error("k", &reply), BackendError::PermissionDenied { .. }));
        let empty = Reply { status: StatusCode::BAD_GATEWAY, headers: HeaderMap::new(), body: Bytes::new() };
        assert_eq!(empty.describe(), "HTTP 502");
        assert!(matches!(status_error("k", &empty), BackendError::Transient { .. }));
    }
}
