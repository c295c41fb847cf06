//! The uploader: puts finished packs (a few in flight) and keeps the session marker fresh,
//! announcing each pack before its put.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::crypto::ObjectType;
use crate::error::{Error, Result};
use crate::ids::{PackId, SessionId};
use crate::index::PackRef;
use crate::pack::PackEntry;
use crate::vault::Vault;
use crate::{failpoint, layout, object};

use super::{FinishedPack, Shared};
use crate::session::SessionMarker;

pub(super) async fn uploader(
    s: Arc<Shared>,
    mut rx: mpsc::Receiver<FinishedPack>,
    session: SessionId,
    mut marker: SessionMarker,
    concurrency: usize,
) -> Result<Vec<(PackRef, Vec<PackEntry>)>> {
    let mut done = Vec::new();
    let mut inflight = tokio::task::JoinSet::new();
    let mut failure: Option<Error> = None;
    // A failed put names its pack, so the marker stops announcing it: a pack whose durability
    // was never confirmed is not adopted by a later run.
    type Put = (PackId, Result<(PackRef, Vec<PackEntry>, u64)>);
    let finish_one = |r: std::result::Result<Put, tokio::task::JoinError>, done: &mut Vec<_>| match r {
        Ok((_, Ok((p, e, n)))) => {
            s.stats.bytes_stored.fetch_add(n, Ordering::Relaxed);
            s.stats.packs.fetch_add(1, Ordering::Relaxed);
            done.push((p, e));
            None
        }
        Ok((id, Err(e))) => Some((Some(id), e)),
        Err(e) => Some((None, Error::Invalid(format!("upload task failed: {e}")))),
    };
    // A live session keeps its marker fresh even while no pack is finished (a slow reader, a
    // long tree walk), so no other session takes it for crashed.
    let mut keepalive = tokio::time::interval(MARKER_REFRESH);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = keepalive.tick() => refresh_marker(&s, &session, &mut marker).await,
            Some(r) = inflight.join_next(), if !inflight.is_empty() => {
                if let Some((id, e)) = finish_one(r, &mut done) {
                    s.fail(format!("pack upload failed: {e}"));
                    unannounce(&s, &session, &mut marker, id).await;
                    failure.get_or_insert(e);
                }
            }
            next = rx.recv(), if inflight.len() < concurrency => {
                let Some(p) = next else { break };
                if failure.is_some() { continue; }
                // Announce the pack before it exists, so a crash right after the put still
                // leaves it adoptable by the next run.
                marker.packs.push(PackRef { id: p.id, salt: p.salt });
                refresh_marker(&s, &session, &mut marker).await;
                let vault = s.vault.clone();
                inflight.spawn(async move {
                    let n = p.bytes.len() as u64;
                    let put = vault.backend().create(&layout::pack(&p.id), Bytes::from(p.bytes)).await;
                    if let Err(e) = put {
                        return (p.id, Err(e.into()));
                    }
                    failpoint::hit("after-pack-put");
                    (p.id, Ok((PackRef { id: p.id, salt: p.salt }, p.entries, n)))
                });
            }
        }
    }
    while let Some(r) = inflight.join_next().await {
        if let Some((id, e)) = finish_one(r, &mut done) {
            unannounce(&s, &session, &mut marker, id).await;
            failure.get_or_insert(e);
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// How often a running session rewrites its marker; adopters treat markers older than
/// [`MARKER_STALE_HOURS`] as crashed.
const MARKER_REFRESH: Duration = Duration::from_secs(300);
pub(super) const MARKER_STALE_HOURS: i64 = 1;

/// Stop announcing a pack whose put failed: its durability was never confirmed, so no later run
/// may adopt it.
async fn unannounce(s: &Shared, session: &SessionId, marker: &mut SessionMarker, failed: Option<PackId>) {
    if let Some(id) = failed {
        marker.packs.retain(|p| p.id != id);
        refresh_marker(s, session, marker).await;
    }
}

async fn refresh_marker(s: &Shared, session: &SessionId, marker: &mut SessionMarker) {
    marker.refreshed = crate::clock::now().to_rfc3339();
    marker.reused = s.reused.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
    // A failed refresh loses only the adoption hint for a crash; the backup itself goes on
    // (unless refreshes fail so long that the commit fences itself).
    match write_marker(&s.vault, session, marker).await {
        Ok(()) => *s.marker_ok.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now(),
        Err(e) => tracing::warn!(error = %e, "could not refresh the session marker"),
    }
}

pub(crate) async fn write_marker(vault: &Vault, id: &SessionId, marker: &SessionMarker) -> Result<()> {
    let key = layout::session(id);
    let bytes = object::seal_named(vault.keys(), ObjectType::Session, &key, marker);
    vault.backend().overwrite(&key, Bytes::from(bytes)).await?;
    Ok(())
}
