//! What writers and the garbage collector agree on: the writer session marker, the GC mark, how
//! long a marker counts as live, and the guard a writer asks before its commit point.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::BackendError;
use crate::crypto::ObjectType;
use crate::error::{Error, Result};
use crate::ids::PackId;
use crate::index::segment::PackRef;
use crate::vault::Vault;
use crate::{layout, object};

/// Asked right before a commit point (see `BackupOptions::commit_guard`); an error aborts it.
#[derive(Clone)]
pub struct CommitGuard(pub Arc<dyn Fn() -> std::result::Result<(), String> + Send + Sync>);

impl std::fmt::Debug for CommitGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitGuard")
    }
}

/// A writer session marker: announces a running backup and the packs it wrote or reuses, so that
/// garbage collection can leave them alone, and so a later run can adopt packs of a crashed one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionMarker {
    /// Marker format version.
    pub v: u32,
    /// Host.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// RFC 3339 start.
    pub started: String,
    /// RFC 3339 time of the last refresh.
    pub refreshed: String,
    /// Packs this session is uploading or uploaded, not yet in an index segment.
    pub packs: Vec<PackRef>,
    /// Packs holding chunks this session deduplicated against.
    #[serde(default)]
    pub reused: Vec<PackId>,
}

/// A session marker a maintainer has seen rewritten within this many seconds (by its own clock)
/// counts as a live writer; a writer fences itself when it could not rewrite its marker for
/// this long minus a margin (by its monotonic clock).
pub const SESSION_LIVE_SECS: i64 = 15 * 60;

/// `started` and `refreshed` of a session that gave up and will never commit.
pub const ABANDONED: &str = "1970-01-01T00:00:00Z";

/// The mark of a GC run (sealed object type 8 at `gc/mark`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcMark {
    /// Format version.
    pub v: u32,
    /// RFC 3339 time of the mark.
    pub marked_at: String,
    /// Packs no snapshot referenced at that time.
    pub packs: Vec<PackId>,
}

/// Read `gc/mark`, if there is one.
///
/// # Errors
/// Storage errors, or a mark that does not open.
pub async fn read_mark(vault: &Vault) -> Result<Option<GcMark>> {
    Ok(read_mark_bytes(vault).await?.map(|(mark, _)| mark))
}

/// The packs the current `gc/mark` lists (none without a mark).
pub async fn marked_packs(vault: &Vault) -> Result<std::collections::HashSet<crate::ids::PackId>> {
    Ok(read_mark(vault).await?.map(|m| m.packs.into_iter().collect()).unwrap_or_default())
}

/// `gc/mark` and its stored bytes, if there is one.
pub(crate) async fn read_mark_bytes(vault: &Vault) -> Result<Option<(GcMark, bytes::Bytes)>> {
    match vault.backend().get(layout::GC_MARK).await {
        Ok(bytes) => object::open_named::<GcMark>(vault.keys(), ObjectType::GcMark, layout::GC_MARK, &bytes)
            .map(|m| Some((m, bytes)))
            .map_err(|e| Error::integrity("gc/mark", e)),
        Err(BackendError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
