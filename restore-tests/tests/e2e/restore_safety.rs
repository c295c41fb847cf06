//! Restores write only below their root, whatever the tree or the target says (issue 12). Run
//! as root against canary files in each test's scratch directory, never real system files: each
//! canary's bytes, mode, owner and times must be unchanged after every attempt.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use restore_tests::plane::{Plane, VaultSpec};
use restore_tests::{World, commit_crafted_tree};
use tresor_vault::snapshot::{Node, NodeKind};

/// A file outside every restore root that no restore may change.
struct Canary {
    path: PathBuf,
    seen: (Vec<u8>, u32, u32, u32, i64, i64),
}

impl Canary {
    fn plant(path: &Path) -> Self {
        std::fs::write(path, b"canary: a restore must never write this").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Owned by someone else, as /etc/shadow would be to a restore of another host's tree.
        rustix::fs::chown(path, Some(rustix::fs::Uid::from_raw(4242)), Some(rustix::fs::Gid::from_raw(4242))).unwrap();
        Self { path: path.to_path_buf(), seen: Self::look(path) }
    }

    fn look(path: &Path) -> (Vec<u8>, u32, u32, u32, i64, i64) {
        let md = std::fs::symlink_metadata(path).unwrap();
        (std::fs::read(path).unwrap(), md.mode(), md.uid(), md.gid(), md.mtime(), md.mtime_nsec())
    }

    fn assert_untouched(&self) {
        assert_eq!(Self::look(&self.path), self.seen, "canary {} changed", self.path.display());
    }
}

fn as_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the restore-safety tests run as root (make test does): a restore is dangerous only with root's rights"
    );
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn node(path: &str, kind: NodeKind, mode: u32, target: Option<&str>) -> Node {
    Node {
        kind,
        mode,
        target: target.map(|t| t.as_bytes().to_vec()),
        ..Node::dir(path.as_bytes().to_vec(), 0, 0, 0, 0)
    }
}

/// The reproduction of issue 12 and its relatives, through the real CLI: links planted at the
/// old temporary names, at a file's own name and in place of a directory, in a non-empty target
/// restored with --force. Without --force a non-empty target is refused.
#[test]
fn planted_links_in_a_target_are_replaced_not_followed() {
    as_root();
    let w = World::new();
    let src = w.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("file.txt"), b"the backed-up bytes").unwrap();
    std::fs::write(src.join("sub/x"), b"x of the snapshot").unwrap();
    std::fs::write(src.join("pipe-name"), b"a file where a link was planted").unwrap();
    w.backup(&[&src]);

    let outside = w.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let secret = Canary::plant(&outside.join("secret"));
    let x = Canary::plant(&outside.join("x"));
    let dir = w.path("restore");
    let inner = dir.join(src.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&inner).unwrap();
    for planted in [".file.txt.tresor-tmp", "file.txt.tresor-tmp", "file.txt", "pipe-name"] {
        symlink(outside.join("secret"), inner.join(planted)).unwrap();
    }
    symlink(&outside, inner.join("sub")).unwrap();

    let o = w.run(&["restore", "--vault", w.vault_str(), "latest", "--to", dir.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("not empty"), "{}", stderr(&o));
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", dir.to_str().unwrap(), "--force"]);
    secret.assert_untouched();
    x.assert_untouched();
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 2, "nothing was added outside");
    for (p, want) in [("file.txt", "the backed-up bytes"), ("sub/x", "x of the snapshot")] {
        let md = std::fs::symlink_metadata(inner.join(p)).unwrap();
        assert!(md.file_type().is_file(), "{p} is a regular file");
        assert_eq!(std::fs::read_to_string(inner.join(p)).unwrap(), want);
    }
    assert!(std::fs::symlink_metadata(inner.join("sub")).unwrap().is_dir(), "the planted link became a directory");
    // Links at names the snapshot does not hold are not the restore's business: left as they were.
    for planted in [".file.txt.tresor-tmp", "file.txt.tresor-tmp"] {
        assert!(std::fs::symlink_metadata(inner.join(planted)).unwrap().file_type().is_symlink());
        std::fs::remove_file(inner.join(planted)).unwrap();
    }
    restore_tests::assert_same_tree(&src, &inner);
}

/// Trees any key holder can write with the library, refused by the agent with the reason, and
/// nothing written: no target, no staging directory, canaries unchanged.
#[test]
fn crafted_trees_are_refused_naming_the_problem() {
    as_root();
    let w = World::new();
    let outside = w.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let canary = Canary::plant(&outside.join("secret"));
    let out = outside.to_str().unwrap().to_string();
    let secret_from_root = format!("s{}/secret", out);
    let cases: Vec<(Vec<Node>, &str)> = vec![
        (
            vec![node("x", NodeKind::Symlink, 0o120777, Some(&out)), node("x", NodeKind::Fifo, 0o014777, None)],
            "the same path as node #0",
        ),
        (
            vec![
                node("s", NodeKind::Symlink, 0o120777, Some("/")),
                node("h", NodeKind::Hardlink, 0o100644, Some(&secret_from_root)),
            ],
            "hardlink target is not an earlier regular file",
        ),
        (
            vec![node("a", NodeKind::File, 0o100644, None), node("a", NodeKind::File, 0o104777, None)],
            "the same path as node #0",
        ),
        (
            vec![node("s", NodeKind::Symlink, 0o120777, Some(&out)), node("s/secret", NodeKind::File, 0o104777, None)],
            "its parent (node #0) is not a directory",
        ),
        (vec![node("d/f", NodeKind::File, 0o100644, None), Node::dir(b"d".to_vec(), 0o755, 0, 0, 0)], "comes later"),
    ];
    for (i, (nodes, why)) in cases.into_iter().enumerate() {
        let id = commit_crafted_tree(&w, nodes, &[("s/secret", b"evil"), ("a", b"evil")]);
        let target = w.path(&format!("target-{i}"));
        let o = w.run(&["restore", "--vault", w.vault_str(), &id, "--to", target.to_str().unwrap()]);
        let e = stderr(&o);
        assert!(!o.status.success() && e.contains(why), "case {i}: {e}");
        assert!(!target.exists(), "case {i}: nothing was written");
        let staged = std::fs::read_dir(w.dir.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(".tresor-restore-"));
        assert!(!staged, "case {i}: no staging directory was made");
        canary.assert_untouched();
    }
    let o = w.run(&[
        "restore",
        "--vault",
        w.vault_str(),
        "latest",
        "--to",
        &format!("{}/../outside", w.path("t").display()),
    ]);
    assert!(!o.status.success() && stderr(&o).contains("`..` is refused"), "{}", stderr(&o));
    canary.assert_untouched();
}

/// Controller restores: a target with `..` is refused by the controller, one outside the
/// agent's restore_roots by the agent, --include narrows the restore, and --force over a
/// directory holding links replaces the links.
#[test]
fn controller_restores_stay_inside_the_agents_restore_roots() {
    as_root();
    let mut p = Plane::start("");
    let allowed = p.dir.path().join("allowed");
    p.restore_roots = vec![allowed.clone()];
    let nas = p.dir.path().join("nas");
    std::fs::create_dir_all(&nas).unwrap();
    let url = nas.to_str().unwrap().to_string();
    let pw = p.password_file("w1");
    p.init_vault(&url, &pw, &[]);
    p.add_agent("w1", &[VaultSpec { name: "nas".into(), url, password_file: pw, env: vec![] }], &[]);
    let data = p.dir.path().join("data");
    std::fs::create_dir_all(data.join("keep")).unwrap();
    std::fs::create_dir_all(data.join("skip")).unwrap();
    std::fs::write(data.join("keep/a"), b"kept").unwrap();
    std::fs::write(data.join("skip/b"), b"left out").unwrap();
    let policy = format!(
        "name = \"f\"\n[[vault]]\nname = \"nas\"\nmaintainer = \"w1\"\n[[source]]\nagent = \"w1\"\nname = \"data\"\nvault = \"nas\"\npaths = [\"{}\"]\nschedule = \"0 0 1 1 *\"\nretention = {{ keep_last = 3 }}\n",
        data.display()
    );
    assert!(p.apply_policy(&policy).status.success());
    p.ctl_ok(&["backup", "w1/data"]);

    let outside = p.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let canary = Canary::plant(&outside.join("a"));

    let dotted = format!("{}/../outside", allowed.display());
    let o = p.ctl(&["restore", "w1/data", "--to", &dotted]);
    assert!(!o.status.success() && stderr(&o).contains("`..` is refused"), "{}", stderr(&o));
    let elsewhere = p.dir.path().join("elsewhere");
    let o = p.ctl(&["restore", "w1/data", "--to", elsewhere.to_str().unwrap()]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("outside this agent's restore roots") && e.contains("restore_roots"),
        "{e}"
    );
    assert!(!elsewhere.exists(), "nothing was written outside the restore roots");

    let one = allowed.join("one");
    let keep = data.join("keep");
    p.ctl_ok(&["restore", "w1/data", "--to", one.to_str().unwrap(), "--include", keep.to_str().unwrap()]);
    let restored = one.join(data.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(restored.join("keep/a")).unwrap(), b"kept");
    assert!(!restored.join("skip").exists(), "--include left the rest out");
    assert_eq!(std::fs::metadata(&one).unwrap().mode() & 0o777, 0o700, "a staged target stays 0700");

    let two = allowed.join("two");
    let inner = two.join(data.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&inner).unwrap();
    symlink(&outside, inner.join("keep")).unwrap();
    p.ctl_ok(&["restore", "w1/data", "--to", two.to_str().unwrap(), "--force"]);
    canary.assert_untouched();
    assert!(std::fs::symlink_metadata(inner.join("keep")).unwrap().is_dir());
    assert_eq!(std::fs::read(inner.join("keep/a")).unwrap(), b"kept");
}
