//! The audit log: every control-plane action as a hash-chained entry (`tresor_report::audit`) in
//! the catalog, and signed checkpoints of its head. Checkpoints are also sent to every vault's
//! maintainer and stored there write-once (`audit/<seq>.json`), where the controller cannot
//! rewrite them: a log changed and re-chained afterwards no longer meets them.

use std::sync::Mutex;

use serde_json::Value;
use tresor_report::audit::{Event, next_entry};

use crate::catalog::Catalog;
use crate::error::{Error, Result};

/// Entries per page of GetAuditLog (each is well under 1 KiB, so a page stays far below the
/// message limit).
pub const AUDIT_PAGE: usize = 2000;

/// `ok`, `refused` (not allowed) or `failed`.
pub const OK: &str = "ok";
/// See [`OK`].
pub const REFUSED: &str = "refused";
/// See [`OK`].
pub const FAILED: &str = "failed";

/// RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Appends entries one at a time, each chained to the last.
pub struct AuditLog {
    // Serialises appends: read the head, hash, insert (synchronous code only).
    append: Mutex<()>,
}

fn corrupt(key: &[u8], e: impl std::fmt::Display) -> Error {
    Error::Corrupt { key: format!("audit/{}", String::from_utf8_lossy(key)), detail: e.to_string() }
}

impl AuditLog {
    /// The log over the catalog's `audit` tree.
    pub fn new() -> Self {
        Self { append: Mutex::new(()) }
    }

    /// Append one entry; returns it.
    ///
    /// # Errors
    /// sled failed, or the head entry is damaged (the chain cannot go on from it).
    pub fn append(&self, cat: &Catalog, e: &Event) -> Result<Value> {
        let _g = self.append.lock().unwrap_or_else(|p| p.into_inner());
        let head = Self::head(cat)?;
        let entry = next_entry(head.as_ref(), e).map_err(|err| corrupt(b"head", err))?;
        let seq = entry.get("seq").and_then(Value::as_u64).unwrap_or(0);
        let _ = cat.audit.insert(seq.to_be_bytes(), serde_json::to_vec(&entry).unwrap_or_default())?;
        Ok(entry)
    }

    /// The newest entry.
    ///
    /// # Errors
    /// sled failed or the entry is damaged.
    pub fn head(cat: &Catalog) -> Result<Option<Value>> {
        match cat.audit.last()? {
            Some((k, v)) => Ok(Some(serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` entries from `from`.
    ///
    /// # Errors
    /// sled failed or an entry is not JSON.
    pub fn entries(cat: &Catalog, from: u64, limit: usize) -> Result<Vec<Value>> {
        cat.audit
            .range(from.to_be_bytes()..)
            .take(limit)
            .map(|r| {
                let (k, v) = r?;
                serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))
            })
            .collect()
    }

    /// Keep a signed checkpoint.
    ///
    /// # Errors
    /// sled failed.
    pub fn put_checkpoint(cat: &Catalog, seq: u64, c: &Value) -> Result<()> {
        let _ = cat.audit_checkpoints.insert(seq.to_be_bytes(), serde_json::to_vec(c).unwrap_or_default())?;
        Ok(())
    }

    /// Every checkpoint, oldest first.
    ///
    /// # Errors
    /// sled failed or a checkpoint is not JSON.
    pub fn checkpoints(cat: &Catalog) -> Result<Vec<Value>> {
        cat.audit_checkpoints
            .iter()
            .map(|r| {
                let (k, v) = r?;
                serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))
            })
            .collect()
    }

    /// The newest checkpoint and its position.
    ///
    /// # Errors
    /// sled failed or the checkpoint is not JSON.
    pub fn newest_checkpoint(cat: &Catalog) -> Result<Option<(u64, Value)>> {
        let Some((k, v)) = cat.audit_checkpoints.last()? else { return Ok(None) };
        Ok(Some((checkpoint_seq(&k)?, serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?)))
    }

    /// The sequence number of the newest checkpoint.
    ///
    /// # Errors
    /// sled failed, or the key is not a position.
    pub fn last_checkpoint_seq(cat: &Catalog) -> Result<Option<u64>> {
        cat.audit_checkpoints.last()?.map(|(k, _)| checkpoint_seq(&k)).transpose()
    }
}

/// A checkpoint's key: its position, big-endian.
fn checkpoint_seq(k: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(k).map(u64::from_be_bytes).map_err(|e| corrupt(k, e))
}

impl Default for AuditLog {
    fn default() -> Self {
        Self::new()
    }
}

/// The name of a checkpoint document in a vault.
pub fn checkpoint_name(seq: u64) -> String {
    format!("audit/checkpoint-{seq:020}.json")
}

/// Whether a document name is one [`checkpoint_name`] makes.
pub fn is_checkpoint_name(name: &str) -> bool {
    name.strip_prefix("audit/checkpoint-")
        .and_then(|rest| rest.strip_suffix(".json"))
        .is_some_and(|digits| digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_are_recognised_and_nothing_else_is() {
        assert!(is_checkpoint_name(&checkpoint_name(0)) && is_checkpoint_name(&checkpoint_name(u64::MAX)));
        for other in ["reports/d-1.json", "audit/checkpoint-1.json", "audit/checkpoint-0000000000000000000x.json", ""] {
            assert!(!is_checkpoint_name(other), "{other}");
        }
    }

    fn event(action: &str) -> Event {
        Event {
            time: now_rfc3339(),
            actor: "admin:0123456789ab".into(),
            action: action.into(),
            object: "policy p".into(),
            outcome: OK.into(),
            reason: String::new(),
        }
    }

    #[test]
    fn appends_chain_from_the_first_entry_and_pages_from_any_position() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let log = AuditLog::new();
        for a in ["enroll", "policy.apply", "backup", "drill"] {
            let _ = log.append(&cat, &event(a)).unwrap();
        }
        let all = AuditLog::entries(&cat, 0, usize::MAX).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0]["prev"], tresor_report::audit::GENESIS);
        for w in all.windows(2) {
            assert_eq!(w[1]["prev"], w[0]["hash"]);
        }
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let status = tresor_report::audit::verify(&all, &[], &key.verifying_key()).unwrap();
        assert_eq!(status.entries, 4);
        let page = AuditLog::entries(&cat, 2, 1).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0]["action"], "backup");
        assert_eq!(AuditLog::head(&cat).unwrap().unwrap()["seq"], 3);
        // Reopened, the chain goes on from its head.
        drop(cat);
        let cat = Catalog::open(dir.path()).unwrap();
        let e = AuditLog::new().append(&cat, &event("restore")).unwrap();
        assert_eq!((e["seq"].as_u64(), &e["prev"]), (Some(4), &all[3]["hash"]));
        assert_eq!(checkpoint_name(7), "audit/checkpoint-00000000000000000007.json");
    }
}
