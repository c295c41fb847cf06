//! The copier's writer session marker at the copy (§12 of FORMAT.md), kept as backups keep theirs:
//! a pack is announced before its create starts, the marker is rewritten every minute while the
//! copy runs, and a commit is refused once it could not be rewritten for most of a lease.
//!
//! One task owns the marker and writes it, in the order the notes arrive, so a write never
//! overtakes a newer one; senders wait until their note is written.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::ids::{PackId, SessionId};
use crate::index::PackRef;
use crate::layout;
use crate::session::{SESSION_LIVE_SECS, SessionMarker};
use crate::vault::Vault;

/// How often the marker is rewritten when nothing else rewrote it.
const KEEPALIVE: Duration = Duration::from_secs(60);

enum Note {
    /// A pack whose create is about to start.
    Uploading(PackRef),
    /// The packs the snapshot in progress needs that the copy already holds.
    DependOn(Vec<PackId>),
    /// The snapshot is in: its packs are indexed and referenced.
    Committed,
}

/// The marker's owner task and the way to it (queue bound: the copy's uploads in flight, notes).
pub(super) struct Announcer {
    tx: mpsc::Sender<(Note, oneshot::Sender<()>)>,
    task: tokio::task::JoinHandle<()>,
    written: Arc<Mutex<Instant>>,
    vault: Arc<Vault>,
    id: SessionId,
}

impl Announcer {
    /// Write the first marker and start the owner task.
    pub(super) async fn start(vault: &Arc<Vault>, host: &str, uploads: usize) -> Result<Self> {
        let now = crate::clock::now().to_rfc3339();
        let marker = SessionMarker {
            v: 1,
            host: host.to_string(),
            pid: std::process::id(),
            started: now.clone(),
            refreshed: now,
            ..SessionMarker::default()
        };
        let id = SessionId::random();
        crate::backup::write_marker(vault, &id, &marker).await?;
        let written = Arc::new(Mutex::new(Instant::now()));
        let (tx, rx) = mpsc::channel(uploads.max(1));
        let task = tokio::spawn(own(vault.clone(), id, marker, rx, written.clone()));
        Ok(Self { tx, task, written, vault: vault.clone(), id })
    }

    /// Hand a note to the owner task and wait until it was written (or tried).
    async fn note(&self, note: Note) -> Result<()> {
        let (done, wait) = oneshot::channel();
        let gone = || Error::Invalid("the copy's session marker task stopped; nothing more is sent".into());
        self.tx.send((note, done)).await.map_err(|_| gone())?;
        wait.await.map_err(|_| gone())
    }

    /// Announce a pack before its create starts.
    pub(super) async fn uploading(&self, pack: PackRef) -> Result<()> {
        self.note(Note::Uploading(pack)).await
    }

    /// Announce the packs the snapshot in progress relies on.
    pub(super) async fn depend_on(&self, packs: impl Iterator<Item = PackId>) -> Result<()> {
        self.note(Note::DependOn(packs.collect())).await
    }

    /// The snapshot is committed: nothing of it needs announcing any more.
    pub(super) async fn committed(&self) -> Result<()> {
        self.note(Note::Committed).await
    }

    /// Refuse to commit when the marker went unrewritten so long that a GC may take it for dead.
    pub(super) fn fenced(&self) -> Result<()> {
        let quiet = self.written.lock().unwrap_or_else(|p| p.into_inner()).elapsed().as_secs();
        if quiet as i64 > SESSION_LIVE_SECS - 120 {
            return Err(Error::Invalid(format!(
                "commit refused: the copy's session marker was last written {quiet} s ago, so a GC there may have taken it for dead; run the copy again"
            )));
        }
        Ok(())
    }

    /// Stop the owner task and remove the marker.
    pub(super) async fn finish(self) {
        drop(self.tx);
        let _ = self.task.await;
        if let Err(e) = self.vault.backend().delete(&layout::session(&self.id)).await {
            tracing::warn!(error = %e, "could not remove the copy's session marker");
        }
    }
}

async fn own(
    vault: Arc<Vault>,
    id: SessionId,
    mut marker: SessionMarker,
    mut rx: mpsc::Receiver<(Note, oneshot::Sender<()>)>,
    written: Arc<Mutex<Instant>>,
) {
    loop {
        let mut waiting = Vec::new();
        match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Ok(None) => return,
            Ok(Some(first)) => {
                // Every note queued by now goes into the same write.
                let mut next = Some(first);
                while let Some((note, done)) = next {
                    apply(&mut marker, note);
                    waiting.push(done);
                    next = rx.try_recv().ok();
                }
            }
            Err(_) => {}
        }
        marker.refreshed = crate::clock::now().to_rfc3339();
        match crate::backup::write_marker(&vault, &id, &marker).await {
            Ok(()) => *written.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now(),
            Err(e) => tracing::warn!(error = %e, "could not rewrite the copy's session marker"),
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}

fn apply(marker: &mut SessionMarker, note: Note) {
    match note {
        Note::Uploading(p) => marker.packs.push(p),
        Note::DependOn(packs) => marker.reused = packs,
        Note::Committed => {
            marker.packs.clear();
            marker.reused.clear();
        }
    }
}
