//! Packs on their way to the copy: read whole at the source (after their listed size is held to
//! what this vault writes), verified, announced, created at the copy and checked there.

use bytes::Bytes;

use super::announce::Announcer;
use crate::backend::Created;
use crate::crypto::VaultKeys;
use crate::error::{Error, Result};
use crate::ids::PackId;
use crate::index::PackRef;
use crate::layout;
use crate::pack::{self, PackEntry};
use crate::vault::{Vault, cpu};

/// A pack the copy now holds, with its directory (for the copy's index).
pub(super) struct Sent {
    pub(super) pack: PackRef,
    pub(super) entries: Vec<PackEntry>,
    pub(super) bytes: u64,
}

/// The largest pack this vault writes: the target, then at most one more blob of the largest
/// chunk (its codec may grow it a little), and the directory.
pub(super) fn max_pack_bytes(vault: &Vault) -> u64 {
    let c = vault.config();
    u64::from(c.pack_target_size) + 2 * u64::from(c.chunker.max_size) + (1 << 20)
}

/// Read a pack at the source (`listed` bytes, by its listing), verify it whole, announce it,
/// create it at the copy and check what the copy holds under its name.
pub(super) async fn send_pack(
    source: &Vault,
    dest: &Vault,
    announcer: &Announcer,
    id: PackId,
    listed: Option<u64>,
) -> Result<Sent> {
    let what = || format!("pack {id} at the source");
    match listed {
        None => return Err(Error::integrity(what(), "the source's index needs it and its listing lacks it")),
        Some(n) if n > max_pack_bytes(source) => {
            return Err(Error::integrity(what(), format!("{n} bytes, larger than any pack this vault writes")));
        }
        Some(_) => {}
    }
    let (bytes, dir) = fetch_verified(source, id).await?.map_err(|why| Error::integrity(what(), why))?;
    let len = bytes.len() as u64;
    let pack = PackRef { id, salt: dir.salt };
    announcer.uploading(pack).await?;
    let key = layout::pack(&id);
    if dest.backend().create(&key, bytes).await? == Created::Existed {
        // Someone's object under this name: it must be this pack.
        check_held(dest, id).await?;
    }
    crate::failpoint::hit("copy-after-pack-put");
    match dest.backend().size(&key).await? {
        Some(n) if n == len => {}
        other => {
            return Err(Error::integrity(
                format!("pack {id} at the copy"),
                format!(
                    "{} after it was written, expected {len} bytes",
                    other.map_or("missing".into(), |n| format!("{n} bytes"))
                ),
            ));
        }
    }
    Ok(Sent { pack, entries: dir.entries, bytes: len })
}

/// A pack the copy already holds, read there and verified whole before it is relied on; its
/// directory, for the copy's index.
pub(super) async fn check_held(dest: &Vault, id: PackId) -> Result<pack::PackDirectory> {
    let listed = dest.backend().size(&layout::pack(&id)).await?;
    if listed.is_some_and(|n| n > max_pack_bytes(dest)) {
        return Err(Error::integrity(format!("pack {id} at the copy"), "larger than any pack this vault writes"));
    }
    fetch_verified(dest, id)
        .await?
        .map(|(_, dir)| dir)
        .map_err(|why| Error::integrity(format!("pack {id} at the copy"), why))
}

/// A pack read and verified whole; one that fails is read once more (a bit flipped in transit is
/// not damage). The outer error is storage failing (it ends the run), the inner one damage.
async fn fetch_verified(
    vault: &Vault,
    id: PackId,
) -> Result<std::result::Result<(Bytes, pack::PackDirectory), String>> {
    let mut first = None;
    for _ in 0..2 {
        let bytes = match vault.backend().get(&layout::pack(&id)).await {
            Ok(b) => b,
            // Gone between the listing and now: a GC at that site; this snapshot waits.
            Err(crate::backend::BackendError::NotFound(_)) => {
                return Err(Error::Refused(format!(
                    "pack {id} went away at {} while the copy ran (a GC there?); the next copy run tries again",
                    vault.backend().location()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let (keys, b) = (vault.keys().clone(), bytes.clone());
        match cpu(move || verify_pack(&keys, &id, &b)).await? {
            Ok(dir) => return Ok(Ok((bytes, dir))),
            Err(why) => {
                first.get_or_insert(why);
            }
        }
    }
    Ok(Err(first.unwrap_or_default()))
}

/// The pack's name is the BLAKE3 of its bytes, its directory opens and every blob decrypts and
/// hashes to its chunk id.
fn verify_pack(keys: &VaultKeys, id: &PackId, bytes: &[u8]) -> std::result::Result<pack::PackDirectory, String> {
    if *blake3::hash(bytes).as_bytes() != id.0 {
        return Err("its content does not match its name (damaged or altered)".into());
    }
    let dir = pack::read_directory_full(keys, bytes).map_err(|e| e.to_string())?;
    for (e, res) in pack::open_all(keys, &dir, bytes) {
        res.map_err(|err| format!("chunk {}: {err}", e.id))?;
    }
    Ok(dir)
}
