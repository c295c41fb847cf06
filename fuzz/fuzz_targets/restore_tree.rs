//! Trees decoded from arbitrary bytes and written into a scratch root that holds planted links
//! out of it: whatever the tree, nothing outside the root changes. Owners are this process's
//! own (`make fuzz` runs this target as nobody), sizes are capped and file data is left out:
//! the restore's file-system moves are what is under test.
#![no_main]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tresor_sources::files::beneath::Dir;
use tresor_sources::files::restore::write_structure;
use tresor_vault::snapshot::{self, Node};

/// Name, mode, size, mtime and bytes of every entry below `dir`, links not followed.
fn look(dir: &Path) -> Vec<(String, u32, u64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            let bytes = if md.is_file() { std::fs::read(e.path()).unwrap() } else { Vec::new() };
            if md.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path().display().to_string(), md.mode(), md.size(), md.mtime(), bytes));
        }
    }
    out.sort();
    out
}

fuzz_target!(|bytes: &[u8]| {
    let mut count = 0u64;
    let mut rest = bytes;
    while !rest.is_empty() {
        if ciborium::from_reader::<Node, _>(&mut rest).is_err() || count > 64 {
            return;
        }
        count += 1;
    }
    let Ok(mut nodes) = snapshot::decode_tree(bytes, count) else { return };
    let (uid, gid) = (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw());
    for n in &mut nodes {
        (n.uid, n.gid) = (uid, gid);
        n.size = n.size.min(1 << 16);
        n.extents.clear();
        n.xattrs.retain(|x| x.name.starts_with(b"user.") && x.value.len() < 256);
    }
    let scratch = tempfile::tempdir().unwrap();
    let (root, outside) = (scratch.path().join("root"), scratch.path().join("outside"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("canary"), b"never written").unwrap();
    for (name, to) in [("link", outside.clone()), ("file", outside.join("canary")), ("up", "..".into()), ("etc", "/etc".into())] {
        std::os::unix::fs::symlink(to, root.join(name)).unwrap();
    }
    let before = look(&outside);
    let _ = write_structure(nodes, Dir::open_root(&root).unwrap());
    assert_eq!(look(&outside), before, "a restore changed something outside its root");
});
