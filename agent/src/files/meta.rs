//! File metadata read into nodes (a restore applies it with `tresor_sources::files::apply`).

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

/// A directory node with no counterpart on this host: mode 0755, owned by root, time 0.
pub fn plain_dir(path_bytes: Vec<u8>) -> Node {
    Node::dir(path_bytes, 0o755, 0, 0, 0)
}
