//! The S3 answers read for versioning and Object Lock: bucket settings and version listings.
//! Bytes from storage are hostile: anything malformed is an error naming the document.

use serde::Deserialize;

use crate::backend::{LockMode, ObjectVersion};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct VersioningConfiguration {
    status: Option<String>,
}

/// `Enabled`, `Suspended`, or `None` for a bucket that never had versioning.
pub fn versioning_status(body: &[u8]) -> Result<Option<String>, String> {
    let doc: VersioningConfiguration = parse(body, "VersioningConfiguration")?;
    Ok(doc.status.filter(|s| !s.is_empty()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ObjectLockConfiguration {
    object_lock_enabled: Option<String>,
    rule: Option<Rule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Rule {
    default_retention: Option<DefaultRetention>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct DefaultRetention {
    mode: Option<String>,
    days: Option<u32>,
    years: Option<u32>,
}

/// The bucket's Object Lock: enabled or not, and its default retention (mode and whole days).
pub fn object_lock(body: &[u8]) -> Result<(bool, Option<(LockMode, u32)>), String> {
    let doc: ObjectLockConfiguration = parse(body, "ObjectLockConfiguration")?;
    let enabled = doc.object_lock_enabled.as_deref() == Some("Enabled");
    let Some(d) = doc.rule.and_then(|r| r.default_retention) else { return Ok((enabled, None)) };
    let mode = match d.mode.as_deref() {
        Some(m) => LockMode::parse(m).ok_or_else(|| format!("ObjectLockConfiguration: unknown mode {m:?}"))?,
        None => return Err("ObjectLockConfiguration: a default retention without a mode".into()),
    };
    // S3 sends one of Days and Years; some servers send the other as 0.
    let days = d.days.unwrap_or(0).saturating_add(d.years.unwrap_or(0).saturating_mul(365));
    if days == 0 {
        return Err("ObjectLockConfiguration: a default retention without Days or Years".into());
    }
    // S3 allows up to 100 years; more is not a bucket's setting but damage.
    if days > 36_600 {
        return Err(format!("ObjectLockConfiguration: a default retention of {days} days is over 100 years"));
    }
    Ok((enabled, Some((mode, days))))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ListVersionsResult {
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_version_id_marker: Option<String>,
    version: Vec<Entry>,
    delete_marker: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    key: String,
    version_id: String,
    is_latest: bool,
    last_modified: String,
    #[serde(default)]
    e_tag: Option<String>,
    #[serde(default)]
    size: u64,
}

/// One page of a version listing: its versions (each key's newest first, as S3 lists them;
/// delete markers after a key's versions) and where the next page starts.
pub struct VersionPage {
    pub versions: Vec<ObjectVersion>,
    pub next: Option<(String, String)>,
}

pub fn version_page(body: &[u8]) -> Result<VersionPage, String> {
    let doc: ListVersionsResult = parse(body, "ListVersionsResult")?;
    let entry = |e: Entry, delete_marker: bool| ObjectVersion {
        key: e.key,
        version_id: e.version_id,
        latest: e.is_latest,
        delete_marker,
        etag: e.e_tag.map(|t| t.trim_matches('"').to_string()),
        size: e.size,
        last_modified: e.last_modified,
    };
    let mut versions: Vec<ObjectVersion> = doc.version.into_iter().map(|e| entry(e, false)).collect();
    versions.extend(doc.delete_marker.into_iter().map(|e| entry(e, true)));
    let next = match (doc.is_truncated, doc.next_key_marker, doc.next_version_id_marker) {
        (false, ..) => None,
        (true, Some(k), v) => Some((k, v.unwrap_or_default())),
        (true, None, _) => return Err("ListVersionsResult: truncated without a NextKeyMarker".into()),
    };
    Ok(VersionPage { versions, next })
}

fn parse<'de, T: Deserialize<'de>>(body: &'de [u8], what: &str) -> Result<T, String> {
    let text = std::str::from_utf8(body).map_err(|_| format!("{what}: not UTF-8"))?;
    quick_xml::de::from_str(text).map_err(|e| format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_settings_are_read() {
        let v = br#"<?xml version="1.0"?><VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>Enabled</Status></VersioningConfiguration>"#;
        assert_eq!(versioning_status(v).unwrap().as_deref(), Some("Enabled"));
        assert_eq!(versioning_status(b"<VersioningConfiguration/>").unwrap(), None);
        let lock = b"<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>COMPLIANCE</Mode><Years>2</Years></DefaultRetention></Rule></ObjectLockConfiguration>";
        assert_eq!(object_lock(lock).unwrap(), (true, Some((LockMode::Compliance, 730))));
        let bare = b"<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>";
        assert_eq!(object_lock(bare).unwrap(), (true, None));
        let ages = b"<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>GOVERNANCE</Mode><Years>4294967295</Years></DefaultRetention></Rule></ObjectLockConfiguration>";
        assert!(object_lock(ages).unwrap_err().contains("over 100 years"));
        for bad in [&b"<ObjectLockConfiguration><Rule><DefaultRetention><Mode>X</Mode><Days>1</Days></DefaultRetention></Rule></ObjectLockConfiguration>"[..], b"<ObjectLockConfiguration><Rule><DefaultRetention><Mode>GOVERNANCE</Mode></DefaultRetention></Rule></ObjectLockConfiguration>", b"\xff", b"<a"] {
            assert!(object_lock(bad).is_err());
        }
    }

    #[test]
    fn version_listings_are_read_with_markers_and_paging() {
        let page = br#"<ListVersionsResult><Name>b</Name><IsTruncated>true</IsTruncated><NextKeyMarker>k&amp;2</NextKeyMarker><NextVersionIdMarker>v9</NextVersionIdMarker>
<Version><Key>k&amp;1</Key><VersionId>v2</VersionId><IsLatest>false</IsLatest><LastModified>2026-01-01T00:00:01.000Z</LastModified><ETag>"abc"</ETag><Size>5</Size></Version>
<DeleteMarker><Key>k&amp;1</Key><VersionId>v3</VersionId><IsLatest>true</IsLatest><LastModified>2026-01-01T00:00:02.000Z</LastModified></DeleteMarker>
<Version><Key>k&amp;1</Key><VersionId>v1</VersionId><IsLatest>false</IsLatest><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>"abc"</ETag><Size>5</Size></Version>
</ListVersionsResult>"#;
        let p = version_page(page).unwrap();
        assert_eq!(p.next, Some(("k&2".to_string(), "v9".to_string())));
        let ids: Vec<(&str, bool, bool)> =
            p.versions.iter().map(|v| (v.version_id.as_str(), v.latest, v.delete_marker)).collect();
        assert_eq!(ids, [("v2", false, false), ("v1", false, false), ("v3", true, true)]);
        assert_eq!(p.versions[0].key, "k&1");
        assert_eq!(p.versions[0].etag.as_deref(), Some("abc"));
        assert!(version_page(b"<ListVersionsResult><IsTruncated>true</IsTruncated></ListVersionsResult>").is_err());
        assert!(version_page(b"<ListVersionsResult><Version><Key>k</Key></Version></ListVersionsResult>").is_err());
        assert!(version_page(b"<ListVersionsResult/>").unwrap().versions.is_empty());
    }
}
