//! Packs announced by sessions that never committed, adopted by the next run.

use std::collections::HashSet;
use std::sync::Arc;

use crate::crypto::ObjectType;
use crate::error::{Error, Result};
use crate::ids::{ChunkId, PackId, SessionId};
use crate::index::{LocalIndex, PackRef};
use crate::pack::PackEntry;
use crate::vault::Vault;
use crate::{layout, object};

use crate::session::SessionMarker;

pub(super) type Adopted = (Vec<(PackRef, Vec<PackEntry>)>, Vec<(String, String)>);

/// Packs announced by sessions that never committed are indexed by this run instead of being
/// uploaded again; a crashed backup thus costs little more than the data in flight.
pub(super) async fn adopt_orphans(
    vault: &Vault,
    index: &Arc<LocalIndex>,
    own: &SessionId,
    avoid: &HashSet<PackId>,
) -> Result<Adopted> {
    let mut adopted = Vec::new();
    let mut markers = Vec::new();
    let mut seen = HashSet::new();
    for info in vault.backend().list(layout::SESSIONS).await? {
        if info.key == layout::session(own) {
            continue;
        }
        let Ok(bytes) = vault.backend().get(&info.key).await else {
            continue;
        };
        let marker: SessionMarker = match object::open_named(vault.keys(), ObjectType::Session, &info.key, &bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(key = %info.key, error = %e, "ignoring unreadable session marker");
                continue;
            }
        };
        for p in &marker.packs {
            if !seen.insert(p.id) || avoid.contains(&p.id) {
                continue;
            }
            match vault.read_pack_directory(&p.id).await {
                Ok(dir) => {
                    // Index lookups read files: off the runtime.
                    let (ix, ids): (Arc<LocalIndex>, Vec<ChunkId>) =
                        (index.clone(), dir.entries.iter().map(|e| e.id).collect());
                    let all_indexed = tokio::task::spawn_blocking(move || -> Result<bool> {
                        for id in &ids {
                            if !ix.contains(id)? {
                                return Ok(false);
                            }
                        }
                        Ok(true)
                    })
                    .await
                    .map_err(|e| Error::Invalid(format!("index task failed: {e}")))??;
                    if !all_indexed {
                        adopted.push((PackRef { id: p.id, salt: dir.salt }, dir.entries));
                    }
                }
                Err(e) => {
                    tracing::warn!(pack = %p.id, error = %e, "announced pack unusable; not adopted")
                }
            }
        }
        markers.push((info.key.clone(), marker.refreshed.clone()));
    }
    if !adopted.is_empty() {
        tracing::info!(packs = adopted.len(), "adopting packs of interrupted backups");
    }
    Ok((adopted, markers))
}
