//! File metadata: reading it into nodes, and applying it after restore.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tresor_vault::snapshot::{Node, NodeKind, Xattr};

/// A node for `path` from its `lstat` data; content fields are filled later.
pub fn node_from(path_bytes: Vec<u8>, md: &std::fs::Metadata, kind: NodeKind) -> Node {
    Node {
        path: path_bytes,
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        mtime_ns: md.mtime().saturating_mul(1_000_000_000).saturating_add(md.mtime_nsec()),
        ctime_ns: md.ctime().saturating_mul(1_000_000_000).saturating_add(md.ctime_nsec()),
        inode: md.ino(),
        size: if kind == NodeKind::File { md.len() } else { 0 },
        target: None,
        xattrs: Vec::new(),
        extents: Vec::new(),
        hash: None,
        model: None,
    }
}

/// Extended attributes of `path` (not following symlinks). Unsupported file systems give none.
pub fn read_xattrs(path: &Path) -> std::io::Result<Vec<Xattr>> {
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let cname = OsStr::from_bytes(name);
        let mut value = vec![0u8; 256];
        let len = loop {
            match rustix::fs::lgetxattr(path, cname, &mut value) {
                Ok(l) => break Some(l),
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(l) = len {
            value.truncate(l);
            out.push(Xattr { name: name.to_vec(), value });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Whether this process may set any owner (root or CAP_CHOWN).
pub fn can_chown() -> bool {
    rustix::process::geteuid().is_root()
}

/// Apply owner, xattrs, mode and times to a restored entry. Owner changes need privileges and are
/// skipped without them; everything else is an error if it fails.
pub fn apply(path: &Path, node: &Node) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};
    let symlink = node.kind == NodeKind::Symlink;
    if can_chown() {
        let uid = Some(rustix::fs::Uid::from_raw(node.uid));
        let gid = Some(rustix::fs::Gid::from_raw(node.gid));
        rustix::fs::chownat(CWD, path, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
    }
    for x in &node.xattrs {
        match rustix::fs::lsetxattr(path, OsStr::from_bytes(&x.name), &x.value, rustix::fs::XattrFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOTSUP) => {}
            // Unprivileged users cannot set trusted.* or security.* names.
            Err(rustix::io::Errno::PERM) if !x.name.starts_with(b"user.") => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !symlink {
        rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(node.mode & 0o7777))?;
    }
    let t = Timespec {
        tv_sec: node.mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: node.mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    rustix::fs::utimensat(CWD, path, &Timestamps { last_access: t, last_modification: t }, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// A directory node with no counterpart on this host: mode 0755, owned by root, time 0.
pub fn plain_dir(path_bytes: Vec<u8>) -> Node {
    Node::dir(path_bytes, 0o755, 0, 0, 0)
}
