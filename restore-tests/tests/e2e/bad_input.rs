//! Bad input gets a clear error and loses nothing.

use std::process::Command;

use restore_tests::{World, bin, random_file};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn wrong_password_missing_vault_and_not_a_vault() {
    let w = World::new();
    let src = w.path("src");
    random_file(&src.join("a"), 1000, 1);
    w.backup(&[&src]);

    let o = w.agent().env("TRESOR_PASSWORD", "wrong").args(["snapshots", "--vault", w.vault_str()]).output().unwrap();
    assert_eq!(o.status.code(), Some(12));
    assert!(stderr(&o).contains("wrong password"), "{}", stderr(&o));

    let o = w.run(&["snapshots", "--vault", "/nonexistent/place/vault"]);
    assert_eq!(o.status.code(), Some(10));
    assert!(stderr(&o).contains("/nonexistent/place/vault") && stderr(&o).contains("does not exist"), "{}", stderr(&o));

    let o = w.run(&["snapshots", "--vault", src.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(10));
    assert!(stderr(&o).contains("is not a Tresor vault"), "{}", stderr(&o));

    let o = w.agent().env_remove("TRESOR_PASSWORD").args(["snapshots", "--vault", w.vault_str()]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("TRESOR_PASSWORD"), "{}", stderr(&o));

    let o = w.run(&["init", "--vault", w.vault_str(), "--escrow-key-out", w.path("other.key").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already holds a Tresor vault"), "{}", stderr(&o));

    let o = w.run(&["check", "--vault", w.vault_str(), "--read-data-subset", "abc"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("percentage"), "{}", stderr(&o));

    let o = w.run(&["restore", "--vault", w.vault_str(), "ffff", "--to", w.path("x").to_str().unwrap()]);
    assert!(stderr(&o).contains("snapshot ffff not found"), "{}", stderr(&o));

    // Nothing was lost along the way.
    assert_eq!(w.snapshot_ids().len(), 1);
    w.ok(&["check", "--vault", w.vault_str(), "--read-data"]);
}

/// Runs as `nobody`: root reads everything, so permissions are only tested unprivileged.
#[test]
fn unreadable_source_file_is_reported_and_skipped() {
    let w = World::empty();
    // The world must be usable by nobody.
    let chown = Command::new("chown").args(["-R", "nobody:nogroup"]).arg(w.dir.path()).status().unwrap();
    assert!(chown.success());
    let src = w.path("src");
    std::fs::create_dir_all(&src).unwrap();
    random_file(&src.join("readable"), 20_000, 1);
    random_file(&src.join("secret"), 20_000, 2);
    let _ = Command::new("chown").args(["-R", "nobody:nogroup"]).arg(&src).status();
    rustix::fs::chmod(src.join("secret"), rustix::fs::Mode::from_raw_mode(0o000)).unwrap();
    rustix::fs::chown(src.join("secret"), Some(rustix::fs::Uid::from_raw(0)), Some(rustix::fs::Gid::from_raw(0)))
        .unwrap();

    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(bin("tresor-agent"))
            .args(args)
            .env("TRESOR_PASSWORD", &w.password)
            .env("TRESOR_CACHE_DIR", &w.cache)
            .env("HOME", w.dir.path())
            .current_dir(w.dir.path())
            .output()
            .unwrap()
    };
    let o = as_nobody(&["init", "--vault", w.vault_str(), "--escrow-key-out", w.escrow().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = as_nobody(&["backup", "--vault", w.vault_str(), src.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "partial backup exit code; stderr: {}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("secret") && stdout.contains("Permission denied"), "{stdout}");
    assert!(stdout.contains("snapshot"), "the snapshot of the readable files was saved: {stdout}");
    let o = as_nobody(&["ls", "--vault", w.vault_str(), "latest"]);
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(listing.contains("readable") && !listing.contains("secret"), "{listing}");
}

/// A restore onto a too-small file system stops before writing and says how much it needs.
#[test]
fn full_disk_on_restore_is_refused_clearly() {
    let w = World::new();
    let src = w.path("src");
    random_file(&src.join("big.bin"), 40 << 20, 3);
    w.backup(&[&src]);
    let mnt = w.path("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let m = Command::new("mount").args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(m.success(), "mounting a small tmpfs needs root; the test must not be skipped");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let o = w.run(&["restore", "--vault", w.vault_str(), "latest", "--to", mnt.join("out").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not enough free space"), "{}", stderr(&o));
    assert!(restore_tests::files_below(&mnt).is_empty(), "nothing may be written");

    // The vault is untouched.
    w.ok(&["check", "--vault", w.vault_str(), "--read-data"]);
}

/// The index cache is private: a shared or foreign directory is never used as it is. One of
/// ours that others could write is made 0700; one owned by another user is refused, named; with
/// no --cache-dir the cache goes below HOME, never to a guessable /tmp path.
#[test]
fn the_index_cache_is_this_users_private_directory() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let w = World::new();
    std::fs::create_dir_all(&w.cache).unwrap();
    std::fs::set_permissions(&w.cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let data = w.path("data");
    random_file(&data, 4096, 1);
    w.backup(&[&data]);
    assert_eq!(std::fs::metadata(&w.cache).unwrap().mode() & 0o777, 0o700, "made private");

    let nobody = restore_tests::pg::uid_of("nobody");
    rustix::fs::chown(&w.cache, Some(rustix::process::Uid::from_raw(nobody)), None).unwrap();
    let out = w.run(&["ls", "--vault", w.vault_str(), "latest"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("owned by uid {nobody}")) && err.contains("--cache-dir"), "{err}");

    let home = w.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let out = w
        .agent()
        .env_remove("TRESOR_CACHE_DIR")
        .env_remove("XDG_CACHE_HOME")
        .env("HOME", &home)
        .args(["ls", "--vault", w.vault_str(), "latest"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let cache = home.join(".cache/tresor");
    assert_eq!(std::fs::metadata(&cache).unwrap().mode() & 0o777, 0o700);
    assert!(std::fs::read_dir(&cache).unwrap().next().is_some(), "the index cache is there");
}
