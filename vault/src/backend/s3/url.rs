//! Vault URLs on S3: `s3://bucket/prefix`, optionally with the endpoints of a cluster
//! (`?endpoint=URL&endpoint=URL`).

use super::other;
use crate::backend::BackendError;

/// Add the endpoints of `list` (comma-separated URLs) to `out`, once each; errors name `source`
/// (the vault URL or the variable the list came from).
pub(super) fn push_endpoints(list: &str, source: &str, out: &mut Vec<String>) -> Result<(), BackendError> {
    for e in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(other(source, &format!("endpoint {e:?} must start with http:// or https://")));
        }
        let e = e.trim_end_matches('/');
        if !out.iter().any(|known| known == e) {
            out.push(e.to_string());
        }
    }
    Ok(())
}

/// Split `s3://bucket/prefix?endpoint=URL&endpoint=URL` into the URL without its query and the
/// endpoints it lists (each `endpoint=` may also hold several, separated by commas).
pub(super) fn split_endpoints(url: &str) -> Result<(&str, Vec<String>), BackendError> {
    let Some((base, query)) = url.split_once('?') else { return Ok((url, Vec::new())) };
    let mut endpoints = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let Some(value) = param.strip_prefix("endpoint=") else {
            return Err(other(url, &format!("unknown URL parameter {param:?}: only endpoint=URL is known")));
        };
        push_endpoints(value, url, &mut endpoints)?;
    }
    if endpoints.is_empty() {
        return Err(other(url, "the URL's query names no endpoint (endpoint=http://host:port)"));
    }
    Ok((base, endpoints))
}

/// Split `s3://bucket/prefix` into bucket and prefix (without surrounding slashes); a query of
/// endpoints is left out.
pub fn parse_url(url: &str) -> Result<(String, String), BackendError> {
    parse_base(split_endpoints(url)?.0)
}

/// [`parse_url`] of a URL without its query.
pub(super) fn parse_base(url: &str) -> Result<(String, String), BackendError> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| other(url, "an S3 vault URL starts with s3://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(other(url, "the S3 vault URL names no bucket (s3://bucket/prefix)"));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == "." || p == "..") {
        return Err(other(url, "the prefix must not contain . or .. components"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_come_from_the_url_query() {
        let (base, e) = split_endpoints("s3://b/p?endpoint=http://a:1&endpoint=http://b:2,https://c:3/").unwrap();
        assert_eq!(base, "s3://b/p");
        assert_eq!(e, ["http://a:1", "http://b:2", "https://c:3"]);
        assert_eq!(parse_url("s3://b/p/q?endpoint=http://a:1").unwrap(), ("b".into(), "p/q".into()));
        assert!(split_endpoints("s3://b/p").unwrap().1.is_empty());
        for bad in ["s3://b?endpont=http://a", "s3://b?endpoint=ftp://a", "s3://b?", "s3://b?endpoint="] {
            assert!(split_endpoints(bad).is_err(), "{bad}");
        }
        // The same endpoint twice is listed once.
        assert_eq!(split_endpoints("s3://b?endpoint=http://a:1&endpoint=http://a:1").unwrap().1.len(), 1);
    }
}
