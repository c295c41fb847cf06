//! Small files of this host's own (in the cache): written whole or not at all, and durable
//! before the call returns, so a crash leaves the old record or the new one, never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::ids::VaultId;

/// The directory of vault `id` in a host's cache `root` (index copy, GC observations, expected
/// snapshots).
pub fn vault_cache_dir(root: &Path, id: &VaultId) -> PathBuf {
    root.join(id.to_hex())
}

/// Write `bytes` to `path` through a temp file beside it: write, fsync, rename, fsync the
/// directory. Missing parent directories are made.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
