//! Round trip on an awkward tree, and the unchanged re-run.

use std::ffi::OsStr;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use restore_tests::{World, assert_same_tree, blocks, random_file};

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let t = rustix::fs::Timespec { tv_sec: sec, tv_nsec: nsec as _ };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps { last_access: t, last_modification: t },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .expect("utimensat");
}

/// Builds every entry kind the format promises to keep.
fn awkward_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    // deep nesting
    let mut deep = root.to_path_buf();
    for i in 0..40 {
        deep = deep.join(format!("level{i:02}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("leaf.txt"), b"at the bottom\n").unwrap();
    // non-UTF-8 names
    fs::write(root.join(OsStr::from_bytes(b"caf\xe9-\xff.bin")), b"latin-1 name").unwrap();
    fs::create_dir(root.join(OsStr::from_bytes(b"dir-\x80\x81"))).unwrap();
    // empty file
    fs::File::create(root.join("empty")).unwrap();
    // sparse file over 1 GiB with three data islands
    let sparse = root.join("sparse.img");
    let mut f = fs::File::create(&sparse).unwrap();
    f.set_len((1 << 30) + (200 << 20)).unwrap();
    for (at, byte) in [(0u64, 1u8), (500 << 20, 2), ((1 << 30) + (200 << 20) - 70_000, 3)] {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&vec![byte; 65_536]).unwrap();
    }
    drop(f);
    // ordinary data spanning several chunks
    random_file(&root.join("data/random.bin"), 5 << 20, 7);
    fs::write(root.join("data/text.txt"), "line of text\n".repeat(50_000)).unwrap();
    // links
    std::os::unix::fs::symlink("data/text.txt", root.join("link-to-text")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"target-\xfe"), root.join("odd-target")).unwrap();
    fs::write(root.join("hard-a"), b"shared inode").unwrap();
    fs::hard_link(root.join("hard-a"), root.join("hard-b")).unwrap();
    fs::hard_link(root.join("hard-a"), root.join("data/hard-c")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    // xattrs, modes, owners, times
    let x = root.join("data/text.txt");
    rustix::fs::lsetxattr(&x, "user.comment", b"hello", rustix::fs::XattrFlags::empty()).unwrap();
    rustix::fs::lsetxattr(&x, "user.binary", &[0u8, 1, 255], rustix::fs::XattrFlags::empty()).unwrap();
    let suid = root.join("data/tool");
    fs::write(&suid, b"#!/bin/sh\n").unwrap();
    rustix::fs::chmod(&suid, rustix::fs::Mode::from_raw_mode(0o4750)).unwrap();
    if rustix::process::geteuid().is_root() {
        rustix::fs::chown(&suid, Some(rustix::fs::Uid::from_raw(1234)), Some(rustix::fs::Gid::from_raw(5678))).unwrap();
        rustix::fs::chownat(
            rustix::fs::CWD,
            root.join("link-to-text"),
            Some(rustix::fs::Uid::from_raw(4321)),
            None,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
    rustix::fs::chmod(root.join("empty"), rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
    set_mtime(&root.join("data/random.bin"), 1_600_000_000, 123_456_789);
    set_mtime(&root.join("link-to-text"), 1_500_000_000, 5);
    set_mtime(&root.join("data"), 1_400_000_000, 999_999_999);
    rustix::fs::chmod(root, rustix::fs::Mode::from_raw_mode(0o750)).unwrap();
}

#[test]
fn awkward_tree_round_trip() {
    let w = World::new();
    let src = w.path("src");
    awkward_tree(&src);
    let b = w.backup(&[&src]);
    assert_eq!(b["errors"].as_array().map(Vec::len), Some(0), "backup reported errors: {b}");
    // The 1.2 GiB sparse file was read by its data regions only.
    let read = b["manifest"]["summary"]["bytes_read"].as_u64().unwrap();
    assert!(read < 50 << 20, "read {read} bytes; holes must not be read");

    let out = w.path("out");
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", out.to_str().unwrap()]);
    let restored = out.join(src.strip_prefix("/").unwrap());
    assert_same_tree(&src, &restored);
    let (a, b) = (blocks(&src.join("sparse.img")), blocks(&restored.join("sparse.img")));
    assert!(b <= a + 2048, "restored sparse file uses {b} blocks, source {a}: more than 1 MiB extra");

    // --include restores just one subtree.
    let part = w.path("part");
    let inc = format!("{}/data", src.display());
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", part.to_str().unwrap(), "--include", &inc]);
    let prestored = part.join(src.strip_prefix("/").unwrap());
    assert!(prestored.join("data/random.bin").exists());
    assert!(!prestored.join("sparse.img").exists());

    // ls lists the non-UTF-8 name.
    let ls = w.ok(&["ls", "--vault", w.vault_str(), "latest"]);
    assert!(ls.contains("caf\u{fffd}-\u{fffd}.bin"), "{ls}");
}

#[test]
fn unchanged_rerun_reads_no_file_and_restore_resumes() {
    let w = World::new();
    let src = w.path("src");
    for i in 0..50 {
        random_file(&src.join(format!("f{i}")), 100_000 + i * 1000, i as u64);
    }
    let first = w.backup(&[&src]);
    assert!(first["manifest"]["summary"]["bytes_read"].as_u64().unwrap() > 5_000_000);
    let second = w.backup(&[&src]);
    let s = &second["manifest"]["summary"];
    assert_eq!(s["bytes_read"].as_u64(), Some(0), "unchanged files were read: {s}");
    assert_eq!(s["bytes_stored"].as_u64(), Some(0));
    assert_ne!(first["manifest"]["parent"], second["manifest"]["parent"]);

    // One changed file is read again, the others are not.
    random_file(&src.join("f3"), 1000, 99);
    let third = w.backup(&[&src]);
    assert_eq!(third["manifest"]["summary"]["bytes_read"].as_u64(), Some(1000));

    // A restore interrupted halfway finishes on a re-run (--force: the target is not empty):
    // simulate by removing some restored files and leaving a killed run's fresh name behind.
    let out = w.path("out");
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", out.to_str().unwrap()]);
    let restored = out.join(src.strip_prefix("/").unwrap());
    for i in 0..10 {
        fs::remove_file(restored.join(format!("f{i}"))).unwrap();
    }
    fs::write(restored.join(".tresor-tmp-00112233445566aa"), b"partial").unwrap();
    let again = w.json(&["restore", "--vault", w.vault_str(), "latest", "--to", out.to_str().unwrap(), "--force"]);
    assert_eq!(again["report"]["files"].as_u64(), Some(10), "{again}");
    assert_eq!(again["report"]["files_skipped"].as_u64(), Some(40));
    assert_same_tree(&src, &restored);
}
