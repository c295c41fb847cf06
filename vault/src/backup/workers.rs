//! Pack workers: encode, encrypt and verify chunks into packs on blocking threads.

use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use crate::codec;
use crate::crypto::ObjectType;
use crate::error::{Error, Result};
use crate::pack::PackBuilder;

use super::{ChunkJob, FinishedPack, Shared};

/// Each worker keeps tree and data chunks in separate packs (as restic does): tree packs stay small,
/// so reading a snapshot's tree never fetches file data, and damage to a data pack cannot take a
/// snapshot's whole tree with it.
pub(super) fn pack_worker(
    s: &Shared,
    rx: &crossbeam_channel::Receiver<ChunkJob>,
    out: &mpsc::Sender<FinishedPack>,
) -> Result<()> {
    let target = s.vault.config().pack_target_size as usize;
    let mut builders: [Option<PackBuilder>; 2] = [None, None];
    let flush = |b: PackBuilder| -> Result<()> {
        let salt = *b.salt();
        let (id, bytes, entries) = b.finish();
        out.blocking_send(FinishedPack { id, salt, bytes, entries }).map_err(|_| Error::Invalid(s.failure()))
    };
    for job in rx.iter() {
        if s.failed.load(Ordering::Relaxed) {
            s.budget.release(job.data.len());
            return Err(Error::Invalid(s.failure()));
        }
        let (codec, encoded) = codec::encode_hinted(&job.data, s.level, job.hint);
        let slot = &mut builders[usize::from(job.kind == ObjectType::TreeChunk)];
        if slot.as_ref().is_some_and(|b| b.len_with(encoded.len()) > target || !b.has_room_for_blob())
            && let Some(b) = slot.take()
        {
            flush(b)?;
        }
        let b = slot.get_or_insert_with(|| PackBuilder::new(&s.keys, target + 4096));
        let added = b.add(&s.keys, job.kind, job.id, codec, &encoded, job.data.len());
        s.budget.release(job.data.len());
        added?;
    }
    for b in builders.into_iter().flatten().filter(|b| !b.is_empty()) {
        flush(b)?;
    }
    Ok(())
}
