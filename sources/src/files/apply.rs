//! Applying a node's owner, extended attributes, mode and times to what a restore made, through
//! a handle of the node itself (`fchown`, `fsetxattr`, `fchmod`, `futimens`), or for a symlink
//! through its directory's handle with `AT_SYMLINK_NOFOLLOW`: never by a path that may hold a link.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use tresor_vault::snapshot::Node;

use super::beneath::Dir;

/// Whether this process may set any owner (root or CAP_CHOWN).
pub fn can_chown() -> bool {
    rustix::process::geteuid().is_root()
}

fn times(node: &Node) -> Timestamps {
    let t = Timespec {
        tv_sec: node.mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: node.mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    Timestamps { last_access: t, last_modification: t }
}

/// Whether a failed xattr write may be passed over: the file system has none, or the name is
/// one an unprivileged user cannot set (trusted.*, security.*).
fn xattr_skippable(e: Errno, name: &[u8]) -> bool {
    e == Errno::NOTSUP || (e == Errno::PERM && !name.starts_with(b"user."))
}

/// Owner, xattrs, mode, times of a file, directory or named pipe, through its open handle. The
/// mode comes after the owner, since a change of owner clears set-id bits.
pub fn to_handle(fd: impl AsFd, node: &Node) -> io::Result<()> {
    let fd = fd.as_fd();
    if can_chown() {
        rustix::fs::fchown(fd, Some(Uid::from_raw(node.uid)), Some(Gid::from_raw(node.gid)))?;
    }
    for x in &node.xattrs {
        match rustix::fs::fsetxattr(fd, OsStr::from_bytes(&x.name), &x.value, XattrFlags::empty()) {
            Ok(()) => {}
            Err(e) if xattr_skippable(e, &x.name) => {}
            Err(e) => return Err(e.into()),
        }
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(node.mode & 0o7777))?;
    rustix::fs::futimens(fd, &times(node))?;
    Ok(())
}

/// Owner, xattrs and times of the symlink `name` in `dir` (a symlink has no mode of its own).
pub fn to_symlink(dir: &Dir, name: &CStr, node: &Node) -> io::Result<()> {
    if can_chown() {
        let (uid, gid) = (Some(Uid::from_raw(node.uid)), Some(Gid::from_raw(node.gid)));
        rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
    }
    if !node.xattrs.is_empty() {
        // No handle of a symlink takes xattrs; its directory's handle through /proc does, and
        // `lsetxattr` does not follow the final name.
        let mut path = format!("/proc/self/fd/{}/", std::os::fd::AsRawFd::as_raw_fd(&dir.as_fd())).into_bytes();
        path.extend_from_slice(name.to_bytes());
        for x in &node.xattrs {
            let r = rustix::fs::lsetxattr(
                OsStr::from_bytes(&path),
                OsStr::from_bytes(&x.name),
                &x.value,
                XattrFlags::empty(),
            );
            match r {
                Ok(()) => {}
                Err(e) if xattr_skippable(e, &x.name) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    rustix::fs::utimensat(dir, name, &times(node), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}
