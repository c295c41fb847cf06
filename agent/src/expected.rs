//! The snapshots this host expects to find in a vault (`expected-snapshots.json` in the vault's
//! cache directory, `Vault::cache_dir`, which keeps a second site apart from its first):
//! those it committed or its last `gc` listed, less those it forgot. Standalone GC deletes nothing
//! when a listing lacks one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tresor_vault::ids::SnapshotId;

/// The record of one vault.
pub struct Expected {
    path: PathBuf,
    /// The ids.
    pub ids: BTreeSet<SnapshotId>,
}

impl Expected {
    /// The record of the vault whose cache directory is `dir` (empty when there is none yet).
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        Self::load_file(dir, "expected-snapshots.json")
    }

    /// The snapshots this host let go that Object Lock still keeps (`forget` said "not yet"):
    /// `gc` forgets them once it can, and does not extend their locks meanwhile.
    pub fn pending_forgets(dir: &Path) -> anyhow::Result<Self> {
        Self::load_file(dir, "forget-pending.json")
    }

    fn load_file(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let path = dir.join(name);
        let ids = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<Vec<String>>(&b)
                .with_context(|| format!("{} is damaged; move it away to start a new record", path.display()))?
                .iter()
                .map(|s| s.parse().map_err(|_| anyhow::anyhow!("{}: bad snapshot id {s:?}", path.display())))
                .collect::<anyhow::Result<_>>()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Self { path, ids })
    }

    /// Write the record (atomically and durably: a torn one would stop `backup` and `gc`).
    pub fn save(&self) -> anyhow::Result<()> {
        let ids: Vec<String> = self.ids.iter().map(ToString::to_string).collect();
        tresor_vault::localfile::write_atomic(&self.path, &serde_json::to_vec_pretty(&ids)?)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Note a snapshot this host committed to the vault whose cache directory is `dir`.
pub fn note_committed(dir: &Path, id: SnapshotId) -> anyhow::Result<()> {
    let mut expected = Expected::load(dir)?;
    expected.ids.insert(id);
    expected.save()
}
