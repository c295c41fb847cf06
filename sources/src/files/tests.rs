//! The tree writer against planted links and hostile trees. These run unprivileged and as root
//! (CI runs them as root, where owners are restored too); every "outside" file is a canary in
//! the test's own scratch directory, never a real system file.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tresor_vault::snapshot::{Node, NodeKind};

use super::beneath::Dir;
use super::restore::{RestoreError, write_structure};

/// A file outside the restore root whose bytes, mode, owner and times must not change.
pub(crate) struct Canary {
    path: PathBuf,
    seen: (Vec<u8>, u32, u32, u32, i64, i64),
}

impl Canary {
    pub(crate) fn plant(path: &Path) -> Self {
        std::fs::write(path, b"canary: never to be written by a restore").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let seen = Self::look(path);
        Self { path: path.to_path_buf(), seen }
    }

    fn look(path: &Path) -> (Vec<u8>, u32, u32, u32, i64, i64) {
        let md = std::fs::symlink_metadata(path).unwrap();
        (std::fs::read(path).unwrap(), md.mode(), md.uid(), md.gid(), md.mtime(), md.mtime_nsec())
    }

    pub(crate) fn assert_untouched(&self) {
        assert_eq!(Self::look(&self.path), self.seen, "canary {} changed", self.path.display());
    }
}

fn node(path: &str, kind: NodeKind, mode: u32, target: Option<&str>) -> Node {
    Node {
        kind,
        mode,
        target: target.map(|t| t.as_bytes().to_vec()),
        ..Node::dir(path.as_bytes().to_vec(), 0, 0, 0, 1_600_000_000_000_000_000)
    }
}

fn dir(path: &str) -> Node {
    node(path, NodeKind::Dir, 0o40755, None)
}

fn file(path: &str, mode: u32) -> Node {
    node(path, NodeKind::File, 0o100000 | mode, None)
}

struct Scratch {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn scratch() -> Scratch {
    let tmp = tempfile::tempdir().unwrap();
    let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    Scratch { _tmp: tmp, root, outside }
}

fn restore(s: &Scratch, nodes: Vec<Node>, walking: bool) -> Result<super::restore::RestoreReport, RestoreError> {
    let root = Dir::open_root(&s.root).unwrap();
    write_structure(nodes, if walking { root.walking() } else { root })
}

#[test]
fn a_plain_tree_is_written_with_its_metadata() {
    for walking in [false, true] {
        let s = scratch();
        let nodes = vec![
            dir("etc"),
            file("etc/a", 0o640),
            node("etc/link", NodeKind::Symlink, 0o120777, Some("/etc/shadow")),
            node("etc/again", NodeKind::Hardlink, 0, Some("etc/a")),
            node("etc/pipe", NodeKind::Fifo, 0o010620, None),
        ];
        let r = restore(&s, nodes, walking).unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        let a = std::fs::symlink_metadata(s.root.join("etc/a")).unwrap();
        assert_eq!(a.mode() & 0o7777, 0o640);
        assert_eq!(a.mtime(), 1_600_000_000);
        assert_eq!(std::fs::read_link(s.root.join("etc/link")).unwrap(), PathBuf::from("/etc/shadow"));
        assert_eq!(std::fs::symlink_metadata(s.root.join("etc/again")).unwrap().ino(), a.ino());
        let pipe = std::fs::symlink_metadata(s.root.join("etc/pipe")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&pipe.file_type()));
        assert_eq!(pipe.mode() & 0o7777, 0o620);
        assert_eq!(std::fs::symlink_metadata(s.root.join("etc")).unwrap().mode() & 0o7777, 0o755);
    }
}

#[test]
fn planted_links_are_replaced_never_written_through() {
    for walking in [false, true] {
        let s = scratch();
        let canary = Canary::plant(&s.outside.join("secret"));
        let secret = s.outside.join("secret");
        // Links at the old temporary names, at the final names and as a parent directory.
        std::os::unix::fs::symlink(&secret, s.root.join(".file.txt.tresor-tmp")).unwrap();
        std::os::unix::fs::symlink(&secret, s.root.join("file.txt.tresor-tmp")).unwrap();
        std::os::unix::fs::symlink(&secret, s.root.join("file.txt")).unwrap();
        std::os::unix::fs::symlink(&secret, s.root.join("pipe")).unwrap();
        std::os::unix::fs::symlink(&s.outside, s.root.join("etc")).unwrap();
        let nodes = vec![
            file("file.txt", 0o644),
            node("pipe", NodeKind::Fifo, 0o014777, None),
            dir("etc"),
            file("etc/secret", 0o4777),
            node("etc/hard", NodeKind::Hardlink, 0, Some("file.txt")),
        ];
        let r = restore(&s, nodes, walking).unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        canary.assert_untouched();
        for (p, what) in [("file.txt", "file"), ("pipe", "fifo"), ("etc", "dir"), ("etc/secret", "file")] {
            let md = std::fs::symlink_metadata(s.root.join(p)).unwrap();
            let ft = md.file_type();
            let ok = match what {
                "file" => ft.is_file(),
                "dir" => ft.is_dir(),
                _ => std::os::unix::fs::FileTypeExt::is_fifo(&ft),
            };
            assert!(ok, "{p} is not a {what}: {ft:?}");
        }
        // The planted temporary names are left as they were: nothing writes to a fixed name.
        assert!(std::fs::symlink_metadata(s.root.join(".file.txt.tresor-tmp")).unwrap().file_type().is_symlink());
        assert!(std::fs::read_dir(&s.outside).unwrap().count() == 1, "nothing was added outside");
    }
}

#[test]
fn hostile_trees_are_refused_before_anything_is_written() {
    let s = scratch();
    let canary = Canary::plant(&s.outside.join("secret"));
    let out = s.outside.to_str().unwrap().to_string();
    let trees = vec![
        vec![node("x", NodeKind::Symlink, 0o120777, Some(&out)), node("x", NodeKind::Fifo, 0o014777, None)],
        vec![node("s", NodeKind::Symlink, 0o120777, Some("/")), node("h", NodeKind::Hardlink, 0, Some("s/secret"))],
        vec![node("s", NodeKind::Symlink, 0o120777, Some(&out)), file("s/secret", 0o777)],
        vec![file("a", 0o644), file("a", 0o600)],
        vec![file("d/f", 0o644), dir("d")],
        vec![file("../outside/secret", 0o644)],
    ];
    for nodes in trees {
        let e = restore(&s, nodes, false).unwrap_err();
        assert!(matches!(e, RestoreError::Tree(_)), "{e}");
        assert_eq!(std::fs::read_dir(&s.root).unwrap().count(), 0, "nothing was written for a refused tree");
    }
    canary.assert_untouched();
}

#[test]
fn resolution_refuses_links_and_the_way_out() {
    for walking in [false, true] {
        let s = scratch();
        std::fs::create_dir(s.root.join("real")).unwrap();
        std::os::unix::fs::symlink(&s.outside, s.root.join("link")).unwrap();
        let root = Dir::open_root(&s.root).unwrap();
        let root = if walking { root.walking() } else { root };
        assert!(root.dir(b"real").is_ok());
        let e = root.dir(b"link").unwrap_err().to_string();
        assert!(e.contains("symbolic link") || e.contains("other than a directory"), "{e}");
        assert!(root.dir(b"real/../link").is_err());
        assert!(root.dir(b"../outside").is_err());
        assert!(root.dir(b"/etc").is_err());
        assert!(root.ensure_dir(b"link", false, 0o700).is_err(), "a link is not replaced unless asked");
    }
    let s = scratch();
    std::os::unix::fs::symlink(&s.outside, s.root.join("t")).unwrap();
    assert!(Dir::open_root(&s.root.join("t")).is_err(), "the root itself is never a link");
}

#[test]
fn a_killed_runs_fresh_names_are_removed_and_a_hardlink_needs_its_first_name() {
    let s = scratch();
    std::fs::write(s.root.join(".tresor-tmp-0123456789abcdef"), b"left by a killed run").unwrap();
    std::fs::create_dir(s.root.join(".tresor-tmp-00000000000000ff")).unwrap();
    std::fs::write(s.root.join(".tresor-tmp-00000000000000ff/pipe-in-a-workshop"), b"").unwrap();
    std::fs::write(s.root.join(".tresor-tmp-not-ours"), b"kept").unwrap();
    let r = restore(&s, vec![node("h", NodeKind::Hardlink, 0, Some("f")), file("f", 0o600)], false);
    assert!(matches!(r, Err(RestoreError::Tree(_))), "a hardlink before its file is refused");
    let r = restore(&s, vec![file("f", 0o600), node("h", NodeKind::Hardlink, 0, Some("f"))], false).unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert!(!s.root.join(".tresor-tmp-0123456789abcdef").exists());
    assert!(!s.root.join(".tresor-tmp-00000000000000ff").exists(), "a killed run's workshop goes with what it held");
    assert!(s.root.join(".tresor-tmp-not-ours").exists());
}

#[test]
fn a_file_changed_in_mode_is_written_again_and_a_second_restore_is_locked_out() {
    let s = scratch();
    let f = || vec![file("f", 0o640)];
    restore(&s, f(), false).unwrap();
    std::fs::set_permissions(s.root.join("f"), std::fs::Permissions::from_mode(0o4777)).unwrap();
    let r = restore(&s, f(), false).unwrap();
    assert_eq!((r.files, r.files_skipped), (1, 0), "same size and mtime, other mode: written again");
    assert_eq!(std::fs::metadata(s.root.join("f")).unwrap().mode() & 0o7777, 0o640);
    let r = restore(&s, f(), false).unwrap();
    assert_eq!((r.files, r.files_skipped), (0, 1));

    let base = || Dir::open_root(s.root.parent().unwrap()).unwrap();
    let first = super::target::Landing::prepare(base(), Path::new("/x"), Path::new("root"), true, "k").unwrap();
    let second = super::target::Landing::prepare(base(), Path::new("/x"), Path::new("root"), true, "k");
    assert!(second.is_err_and(|e| e.to_string().contains("another restore is writing")));
    drop(first);
    assert!(super::target::Landing::prepare(base(), Path::new("/x"), Path::new("root"), true, "k").is_ok());
}

#[test]
fn include_slash_is_the_whole_tree_and_a_left_out_first_name_becomes_a_copy() {
    let nodes = vec![dir("a"), file("a/f", 0o600), dir("b"), node("b/h", NodeKind::Hardlink, 0, Some("a/f"))];
    assert_eq!(super::restore::select(nodes.clone(), &["/".into()]).unwrap(), nodes);
    let only_b = super::restore::select(nodes, &["/b".into()]).unwrap();
    assert_eq!(
        only_b.iter().map(|n| (n.path.as_slice(), n.kind)).collect::<Vec<_>>(),
        [(&b"b"[..], NodeKind::Dir), (&b"b/h"[..], NodeKind::File)]
    );
}
