//! Where a restore lands: a new or empty target gets a fresh staging directory beside it (mode
//! 0700, an unpredictable name) that is renamed into place when the restore is complete, so the
//! target appears whole or not at all; a non-empty target is written into only when forced.

use std::path::{Path, PathBuf};

use rustix::fs::FileType;

use super::beneath::{Dir, is_plain_name};
use super::restore::RestoreError;

/// The restore root (of `roots`, each normalised) that holds `target` (normalised), with the
/// rest of the path below it. The longest root wins.
pub fn within<'a>(target: &Path, roots: &'a [PathBuf]) -> Option<(&'a Path, PathBuf)> {
    roots
        .iter()
        .filter_map(|r| target.strip_prefix(r).ok().map(|rest| (r.as_path(), rest.to_path_buf())))
        .max_by_key(|(r, _)| r.components().count())
}

/// A restore's landing place.
pub struct Landing {
    /// Where the tree is written.
    pub root: Dir,
    /// Set when writing into a staging directory that [`Landing::finish`] moves into place.
    staged: Option<Staged>,
    /// The target, for messages.
    shown: PathBuf,
}

struct Staged {
    parent: Dir,
    staging: Vec<u8>,
    name: Vec<u8>,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> RestoreError {
    move |source| RestoreError::Io { what, source }
}

impl Landing {
    /// Prepare the landing for `rel` below `base` (empty: `base` itself). Missing directories on
    /// the way are made (0755); anything else on the way, a link above all, is refused. `key`
    /// names the snapshot, so a re-run finds and resumes its own staging directory.
    pub fn prepare(base: Dir, base_path: &Path, rel: &Path, force: bool, key: &str) -> Result<Self, RestoreError> {
        let shown = base_path.join(rel);
        let parts: Vec<&[u8]> = rel.iter().map(std::os::unix::ffi::OsStrExt::as_bytes).collect();
        if parts.iter().any(|p| !is_plain_name(p)) {
            return Err(RestoreError::Target(format!("restore target {} is not a plain path", shown.display())));
        }
        let Some((name, above)) = parts.split_last() else {
            let empty = base.is_empty().map_err(io(format!("cannot read target {}", shown.display())))?;
            return in_place(base, empty, force, shown);
        };
        let mut parent = base;
        for part in above {
            let what = format!("cannot reach restore target {}", shown.display());
            parent = parent.ensure_dir(part, false, 0o755).map_err(io(what))?;
        }
        match parent.stat(name) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("cannot read target {}", shown.display()))(e)),
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    let dir = parent
                        .ensure_dir(name, false, 0o700)
                        .map_err(io(format!("cannot open target {}", shown.display())))?;
                    let empty = dir.is_empty().map_err(io(format!("cannot read target {}", shown.display())))?;
                    if !empty {
                        return in_place(dir, false, force, shown);
                    }
                    // An empty mount point is restored into: a staging directory beside it would
                    // sit on another file system and could not be renamed over it.
                    let (dev, _) = dir.identity().map_err(io(format!("cannot read target {}", shown.display())))?;
                    let (parent_dev, _) = parent.identity().map_err(io(format!("cannot read {}", shown.display())))?;
                    if dev != parent_dev {
                        return in_place(dir, true, force, shown);
                    }
                }
                FileType::Symlink => {
                    return Err(RestoreError::Target(format!(
                        "restore target {} is a symbolic link; restores never follow one (give the directory it points to)",
                        shown.display()
                    )));
                }
                _ => {
                    return Err(RestoreError::Target(format!(
                        "restore target {} exists and is not a directory",
                        shown.display()
                    )));
                }
            },
        }
        let (root, staging) = staging_dir(&parent, name, key)
            .map_err(io(format!("cannot make a staging directory beside {}", shown.display())))?;
        lock(&root, &shown)?;
        Ok(Self { root, staged: Some(Staged { parent, staging, name: name.to_vec() }), shown })
    }

    /// Whether the restore writes into a staging directory.
    pub fn is_staged(&self) -> bool {
        self.staged.is_some()
    }

    /// Move a staged restore into place (a no-op for a restore in place).
    pub fn finish(self) -> Result<(), RestoreError> {
        let Some(s) = self.staged else { return Ok(()) };
        // What is renamed must be the staging directory written, and what lands must be it:
        // another user who can write the parent could swap names in between.
        let what = format!("cannot move the restore into place at {}", self.shown.display());
        let ours = self.root.identity().map_err(io(what.clone()))?;
        let at = |name: &[u8]| s.parent.stat(name).ok().map(|st| (st.st_dev, st.st_ino));
        if at(&s.staging) != Some(ours) {
            return Err(RestoreError::Target(format!(
                "{what}: the staging directory was replaced while the restore ran"
            )));
        }
        s.parent.rename(&s.staging, &s.name).map_err(io(what.clone()))?;
        if at(&s.name) != Some(ours) {
            return Err(RestoreError::Target(format!("{what}: something else stands there now")));
        }
        Ok(())
    }
}

/// The refusal of a non-empty target without `force`.
pub fn not_empty(target: &Path) -> RestoreError {
    RestoreError::Target(format!(
        "target {} is not empty; restore to an empty or new directory, or add --force to write into it (files of the snapshot are overwritten)",
        target.display()
    ))
}

fn in_place(root: Dir, empty: bool, force: bool, shown: PathBuf) -> Result<Landing, RestoreError> {
    if !empty && !force {
        return Err(not_empty(&shown));
    }
    lock(&root, &shown)?;
    Ok(Landing { root, staged: None, shown })
}

/// One restore at a time writes below a root: a second one (a re-dispatched job, the same
/// command run twice) would remove the first one's fresh entries as stale. The lock lives as
/// long as any handle of the root.
fn lock(root: &Dir, shown: &Path) -> Result<(), RestoreError> {
    match rustix::fs::flock(root, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(RestoreError::Target(format!(
            "another restore is writing to {} now; try again when it is done",
            shown.display()
        ))),
        Err(e) => Err(io(format!("cannot lock {}", shown.display()))(e.into())),
    }
}

/// This restore's staging directory beside `name`: an earlier run's (ours: owned by this user,
/// mode 0700) to resume, or a new one under an unpredictable name.
fn staging_dir(parent: &Dir, name: &[u8], key: &str) -> std::io::Result<(Dir, Vec<u8>)> {
    let mut prefix = b".".to_vec();
    prefix.extend_from_slice(name);
    prefix.extend_from_slice(format!(".tresor-restore-{key}-").as_bytes());
    for entry in parent.names()? {
        if entry.strip_prefix(&prefix[..]).is_none_or(|rest| rest.len() != 16) {
            continue;
        }
        // Checked on the handle, not the name: a directory only, ours alone.
        if let Ok(dir) = parent.ensure_dir(&entry, false, 0o700)
            && dir.is_private()?
        {
            return Ok((dir, entry));
        }
    }
    let mut fresh = prefix;
    fresh.extend_from_slice(hex::encode(rand::random::<[u8; 8]>()).as_bytes());
    let dir = parent.ensure_dir(&fresh, false, 0o700)?;
    // The umask may have taken bits the check above relies on; set them exactly.
    rustix::fs::fchmod(&dir, rustix::fs::Mode::from_raw_mode(0o700))?;
    if !dir.is_private()? {
        return Err(std::io::Error::other("the new staging directory is not this user's alone"));
    }
    Ok((dir, fresh))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_restore_root_holding_a_target_wins() {
        let roots = [PathBuf::from("/srv/restore"), PathBuf::from("/srv/restore/deep")];
        let (root, rest) = within(Path::new("/srv/restore/deep/x"), &roots).unwrap();
        assert_eq!((root, rest.as_path()), (Path::new("/srv/restore/deep"), Path::new("x")));
        assert!(within(Path::new("/srv/restorex"), &roots).is_none());
        assert!(within(Path::new("/srv"), &roots).is_none());
    }
}
