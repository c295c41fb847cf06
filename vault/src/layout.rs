//! Object names inside a vault.

use crate::ids::{ObjectId, PackId, SessionId};

/// The config object.
pub const CONFIG: &str = "config";
/// Key slots.
pub const KEYS: &str = "keys/";
/// Packs.
pub const DATA: &str = "data/";
/// Index segments.
pub const INDEX: &str = "index/";
/// Snapshot manifests.
pub const SNAPSHOTS: &str = "snapshots/";
/// Prefixes that exist from `init` on, on storage that has directories: GC refuses to run when
/// one is missing (it would list as empty).
pub const REQUIRED: [&str; 3] = [SNAPSHOTS, INDEX, DATA];
/// Writer session markers (the only objects that are overwritten).
pub const SESSIONS: &str = "sessions/";
/// Controller-signed snapshot receipts (sealed object type 7, keyed by snapshot id).
pub const RECEIPTS: &str = "receipts/";
/// The mark of a two-phase garbage collection (overwritten by each GC run).
pub const GC_MARK: &str = "gc/mark";
/// Signed drill reports and the public key they verify with (sealed object type 9, write-once).
pub const REPORTS: &str = "reports/";
/// Signed audit-log checkpoints (sealed object type 9, write-once).
pub const AUDIT: &str = "audit/";
/// Objects GC set aside: session markers that did not open for a whole lease, under their
/// original names (`quarantine/sessions/<id>`); never deleted by Tresor.
pub const QUARANTINE: &str = "quarantine/";
/// Capability probes at init.
pub const PROBE: &str = "probe/";
/// Objects rewritten or removed by design in the normal run of things: no retention of their
/// own in a locked bucket, hidden (not kept) when deleted, and not reported as hidden by `check`.
const REWRITTEN: [&str; 3] = [SESSIONS, GC_MARK, PROBE];

/// Whether `key` is rewritten by design (see [`REWRITTEN`]).
pub fn rewritten(key: &str) -> bool {
    REWRITTEN.iter().any(|p| key.starts_with(p))
}

/// Key of a pack.
pub fn pack(id: &PackId) -> String {
    let h = id.to_hex();
    format!("{DATA}{}/{h}", &h[..2])
}

/// Key of an index segment.
pub fn segment(id: &ObjectId) -> String {
    format!("{INDEX}{id}")
}

/// Key of a snapshot manifest.
pub fn snapshot(id: &ObjectId) -> String {
    format!("{SNAPSHOTS}{id}")
}

/// Key of a snapshot's receipt.
pub fn receipt(snapshot: &ObjectId) -> String {
    format!("{RECEIPTS}{snapshot}")
}

/// Key of a signed document: `reports/NAME` or `audit/NAME`, NAME of 1-128 letters, digits,
/// '.', '-' or '_' (not starting with '.'). `None` for any other name.
pub fn document(name: &str) -> Option<String> {
    let (prefix, rest) = name.split_once('/')?;
    let ok_prefix = [REPORTS, AUDIT].iter().any(|p| p.strip_suffix('/') == Some(prefix));
    let ok_rest = (1..=128).contains(&rest.len())
        && !rest.starts_with('.')
        && rest.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    (ok_prefix && ok_rest).then(|| name.to_string())
}

/// Key of a session marker.
pub fn session(id: &SessionId) -> String {
    format!("{SESSIONS}{id}")
}

/// Key of a key slot.
pub fn key_slot(id: &str) -> String {
    format!("{KEYS}{id}")
}

/// The id part of a listed key (the last path component), parsed.
pub fn id_of<T: std::str::FromStr>(key: &str) -> Option<T> {
    key.rsplit('/').next().and_then(|s| s.parse().ok())
}
