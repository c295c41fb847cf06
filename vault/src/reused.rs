//! A writer deduplicates only against what a pack really holds. The index can be written by any
//! key holder, so an entry may place a chunk in a pack that does not hold it (a planted segment):
//! a backup that trusted it would reference a chunk no restore can read. Before the first reuse of
//! a pack, its own directory is read (four ranged reads) and kept, as the first 8 bytes of the
//! chunk id at each position, in memory for the run and on disk beside the index cache (packs
//! never change, so an unchanged re-run reads them from the disk); every reuse is held against it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::ids::PackId;
use crate::index::IndexEntry;
use crate::vault::Vault;

/// The directories of the packs one backup run reuses (unit: packs; each 8 bytes per chunk).
pub(crate) struct ReusedPacks {
    vault: Arc<Vault>,
    handle: tokio::runtime::Handle,
    /// Where directories are kept between runs (`<cache>/<vault>/packdirs`).
    dir: Option<PathBuf>,
    known: Mutex<HashMap<PackId, Arc<Vec<u64>>>>,
    /// Packs already warned about (one warning per pack, however many chunks it is wrong for).
    warned: Mutex<HashSet<PackId>>,
}

impl ReusedPacks {
    /// For `vault`, keeping directories below `dir`; must be made inside the runtime.
    pub(crate) fn new(vault: Arc<Vault>, dir: Option<PathBuf>) -> Self {
        Self {
            vault,
            handle: tokio::runtime::Handle::current(),
            dir,
            known: Mutex::default(),
            warned: Mutex::default(),
        }
    }

    /// Whether the pack `e` names holds `e`'s chunk at `e`'s position. Blocking (not on a runtime
    /// thread): reads the pack's directory from disk or, once, from storage.
    pub(crate) fn holds(&self, e: &IndexEntry) -> Result<bool> {
        let dir = self.directory(&e.pack.id)?;
        let held = dir.get(e.counter as usize) == Some(&e.id.prefix());
        if !held && self.warned.lock().unwrap_or_else(|p| p.into_inner()).insert(e.pack.id) {
            tracing::warn!(
                chunk = %e.id,
                pack = %e.pack.id,
                "the index places this chunk (and perhaps more) in a pack whose own directory does not hold it there (a planted or damaged index segment); such chunks are stored again"
            );
        }
        Ok(held)
    }

    fn directory(&self, id: &PackId) -> Result<Arc<Vec<u64>>> {
        if let Some(d) = self.known.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(d.clone());
        }
        let file = self.dir.as_ref().map(|d| d.join(&id.to_hex()[..2]).join(id.to_hex()));
        let from_disk = file.as_ref().and_then(|f| std::fs::read(f).ok()).filter(|b| b.len() % 8 == 0);
        let dir: Vec<u64> = match from_disk {
            Some(bytes) => {
                bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect()
            }
            None => {
                let read = self.handle.block_on(self.vault.read_pack_directory(id));
                let dir: Vec<u64> = match read {
                    Ok(d) => d.entries.iter().map(|e| e.id.prefix()).collect(),
                    // Gone or unreadable: it holds nothing this run can rely on.
                    Err(Error::Backend(crate::backend::BackendError::NotFound(_)) | Error::Integrity { .. }) => {
                        Vec::new()
                    }
                    Err(e) => return Err(e),
                };
                if let Some(f) = file.as_ref().filter(|_| !dir.is_empty()) {
                    keep(f, &dir);
                }
                dir
            }
        };
        let dir = Arc::new(dir);
        let _ = self.known.lock().unwrap_or_else(|p| p.into_inner()).insert(*id, dir.clone());
        Ok(dir)
    }
}

/// Write a directory file whole or not at all (a lost one is read from storage again).
fn keep(file: &std::path::Path, dir: &[u64]) {
    let bytes: Vec<u8> = dir.iter().flat_map(|p| p.to_le_bytes()).collect();
    let tmp = file.with_extension("tmp");
    let written = file.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&tmp, &bytes));
    if written.and_then(|()| std::fs::rename(&tmp, file)).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}
