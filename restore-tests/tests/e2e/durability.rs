//! Durability of the local backend when the disk fails or the file system has no sync semantics
//! (FM-14, FM-15): an fsync error is fatal and never taken for success, and a target that refuses
//! fsync is shown as "durability unverified" wherever the vault's state is shown.
//!
//! A real file system without sync semantics is mounted: `restore-tests/py/nosync_fs.py`, a
//! pass-through FUSE file system (fusepy, libfuse) whose fsync and fsyncdir answer EINVAL. (One
//! that answers ENOSYS would be made to look synced by the kernel, and nothing could tell.) Disk
//! errors and refusals at chosen points come from the `fsync-file` and `fsync-dir` failpoints.

use std::path::Path;

use restore_tests::World;

use crate::drills::{Src, apply, drill, plane, policy};

fn source(w: &World) -> std::path::PathBuf {
    let src = w.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4u64 {
        restore_tests::random_file(&src.join(format!("f{i}.bin")), 300_000, i);
    }
    src
}

fn backup_armed(w: &World, src: &Path, failpoints: &str) -> std::process::Output {
    w.agent()
        .env("TRESOR_FAILPOINTS", failpoints)
        .env("TRESOR_LOG", "info")
        .args(["--json", "backup", "--vault", w.vault_str()])
        .arg(src)
        .output()
        .unwrap()
}

/// After a failed backup, the next one stores everything again from the source, adopts nothing,
/// and the vault checks and restores equal to the source.
fn next_backup_rewrites_from_source(w: &World, src: &Path) {
    let out =
        w.agent().env("TRESOR_LOG", "info").args(["--json", "backup", "--vault", w.vault_str()]).arg(src).output();
    let out = out.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("adopting packs"), "a pack whose durability was never confirmed was adopted: {stderr}");
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(done["manifest"]["summary"]["bytes_new"].as_u64().unwrap() >= 1_200_000, "rewritten from source: {done}");
    let check = w.json(&["check", "--vault", w.vault_str(), "--read-data"]);
    assert_eq!(check["problems"].as_array().map(Vec::len), Some(0), "{check}");
    let to = w.path("restored");
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", to.to_str().unwrap()]);
    restore_tests::assert_same_tree(src, &to.join(src.strip_prefix("/").unwrap()));
}

fn assert_failed_not_durable(out: &std::process::Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the backup must fail when {what} fsync fails");
    assert!(
        stderr.contains("could not make this change durable") && stderr.contains(&format!("{what} fsync failed")),
        "the error names the fsync: {stderr}"
    );
}

/// EIO from a pack's file fsync: the put fails, the backup fails with no snapshot and no pack
/// left behind, and the next run writes the data again from the source.
#[test]
fn an_eio_from_a_pack_fsync_fails_the_backup_and_the_next_run_rewrites_it() {
    let w = World::new();
    let src = source(&w);
    let out = backup_armed(&w, &src, "fsync-file:data=eio");
    assert_failed_not_durable(&out, "file");
    assert!(w.snapshot_ids().is_empty(), "no snapshot after a failed fsync");
    assert!(restore_tests::files_below(&w.vault.join("data")).is_empty(), "no pack was linked into place");
    next_backup_rewrites_from_source(&w, &src);
}

/// EIO from the directory fsync: a fan-out directory made for a pack whose parent's fsync failed
/// is removed again (no later write trusts it); after a pack was linked, its name may not survive
/// a crash, so it is unlinked again. Each time the backup fails, and the next backup does not
/// adopt anything (it rewrites it).
#[test]
fn an_eio_from_the_directory_fsync_unlinks_the_pack_and_it_is_never_adopted() {
    let w = World::new();
    let src = source(&w);
    let out = backup_armed(&w, &src, "fsync-dir:data=eio");
    assert_failed_not_durable(&out, "directory");
    let made: Vec<_> = std::fs::read_dir(w.vault.join("data")).unwrap().collect();
    assert!(made.is_empty(), "a directory whose parent's fsync failed was removed again: {made:?}");
    // Now the fan-out directories exist, so the failpoint is reached after the link, not while a
    // directory is made.
    for b in 0..=255u8 {
        std::fs::create_dir_all(w.vault.join("data").join(format!("{b:02x}"))).unwrap();
    }
    let out = backup_armed(&w, &src, "fsync-dir:data=eio");
    assert_failed_not_durable(&out, "directory");
    assert!(w.snapshot_ids().is_empty());
    assert!(restore_tests::files_below(&w.vault.join("data")).is_empty(), "the linked pack was unlinked again");
    next_backup_rewrites_from_source(&w, &src);
}

/// A file system that refuses fsync (EINVAL, as some SMB and FUSE mounts answer) at `init`:
/// the vault is made, and `init`, `check` and every `--json` answer say durability is unverified;
/// a vault made on a good disk and opened where fsync is refused (ENOTSUP) says so at open.
#[test]
fn a_target_that_refuses_fsync_is_shown_as_durability_unverified() {
    let w = World::empty();
    let escrow = w.escrow();
    let out = w
        .agent()
        .env("TRESOR_FAILPOINTS", "fsync-dir=einval")
        .args(["init", "--vault", w.vault_str(), "--escrow-key-out", escrow.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("durability UNVERIFIED") && text.contains("refuses directory fsync"), "{text}");
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(w.vault.join("config")).unwrap()).unwrap();
    assert!(
        config["capabilities"]["durability_unverified"].as_str().unwrap().contains("Invalid argument"),
        "recorded in the config: {config}"
    );
    // Writes go on where fsync is refused; the refusal is not an error.
    let src = source(&w);
    let out = backup_armed(&w, &src, "fsync-dir=einval");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(done["storage"]["durability_unverified"].is_string(), "{done}");
    // Opened later without the refusal, the record made at init still shows.
    let check = w.ok(&["check", "--vault", w.vault_str()]);
    assert!(check.contains("durability UNVERIFIED") && check.contains("found at init"), "{check}");
    let check = w.json(&["check", "--vault", w.vault_str()]);
    assert!(check["durability_unverified"].as_str().unwrap().contains("found at init"), "{check}");

    // A vault made where fsync works says so, and says otherwise once opened where it is refused.
    let good = World::new();
    let check = good.ok(&["check", "--vault", good.vault_str()]);
    assert!(check.contains("durability: every write confirmed"), "{check}");
    let out = good
        .agent()
        .env("TRESOR_FAILPOINTS", "fsync-file=enotsup")
        .args(["--json", "check", "--vault", good.vault_str()])
        .output()
        .unwrap();
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(check["durability_unverified"].as_str().unwrap().contains("refuses file fsync"), "found at open: {check}");
}

/// A mounted FUSE file system, unmounted on drop.
struct NoSyncMount {
    child: std::process::Child,
    point: std::path::PathBuf,
}

impl NoSyncMount {
    fn mount(backing: &Path, point: &Path) -> Self {
        std::fs::create_dir_all(backing).unwrap();
        std::fs::create_dir_all(point).unwrap();
        assert!(Path::new("/dev/fuse").exists(), "/dev/fuse is needed for the FUSE durability test");
        let python = restore_tests::test_deps().join("venv/bin/python");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/nosync_fs.py");
        let child = std::process::Command::new(&python)
            .arg(script)
            .arg(backing)
            .arg(point)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} ({e}): run scripts/ensure-test-deps.sh", python.display()));
        let mut m = Self { child, point: point.to_path_buf() };
        restore_tests::plane::wait_for("the FUSE mount", std::time::Duration::from_secs(30), || {
            if let Ok(Some(st)) = m.child.try_wait() {
                panic!("nosync_fs.py exited ({st}) before mounting");
            }
            std::fs::read_to_string("/proc/self/mounts")
                .is_ok_and(|t| t.lines().any(|l| l.split(' ').nth(1) == point.to_str() && l.contains("fuse")))
        });
        m
    }
}

impl Drop for NoSyncMount {
    fn drop(&mut self) {
        // A busy mount (a test that panicked mid-write) is detached lazily instead of left behind.
        let unmounted = std::process::Command::new("fusermount").arg("-u").arg(&self.point).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            let _ = std::process::Command::new("fusermount").arg("-uz").arg(&self.point).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A vault on a mounted FUSE file system whose fsync and fsyncdir fail with EINVAL: `init`
/// records and shows durability as unverified, and backup, `check --read-data` and restore
/// work on it, `check` saying it again.
#[test]
fn a_fuse_file_system_without_fsync_is_recorded_and_still_backs_up_and_restores() {
    let mut w = World::empty();
    let mount = NoSyncMount::mount(&w.path("backing"), &w.path("mnt"));
    w.url = mount.point.join("vault").to_str().unwrap().to_string();
    let escrow = w.escrow();
    let init = w.ok(&["init", "--vault", w.vault_str(), "--escrow-key-out", escrow.to_str().unwrap()]);
    assert!(init.contains("durability UNVERIFIED") && init.contains("Invalid argument"), "{init}");
    let src = source(&w);
    let done = w.backup(&[&src]);
    assert!(done["storage"]["durability_unverified"].is_string(), "{done}");
    let check = w.ok(&["check", "--vault", w.vault_str(), "--read-data"]);
    assert!(check.contains("durability UNVERIFIED") && check.contains("no errors found"), "{check}");
    let to = w.path("restored");
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", to.to_str().unwrap()]);
    restore_tests::assert_same_tree(&src, &to.join(src.strip_prefix("/").unwrap()));
}

/// An agent whose vault refuses fsync: `tresorctl status` shows it as a problem (and it is
/// alerted), and the vault's drill reports carry it as an anomaly.
#[test]
fn status_and_drill_reports_show_a_vault_whose_durability_is_unverified() {
    let (mut p, _nas) = plane("", "");
    p.kill_agent("gpu-01");
    p.start_agent_with("gpu-01", &[("TRESOR_FAILPOINTS", "fsync-dir=einval")]);
    p.wait_connected("gpu-01");
    let data = p.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    restore_tests::random_file(&data.join("weights.bin"), 500_000, 7);
    let plans = "[[drill]]\nname = \"weekly\"\nsource = \"gpu-01/app\"\nschedule = \"0 4 * * 0\"\nrto = \"1h\"\n";
    apply(&p, &policy(&[Src("app", vec![data.display().to_string()])], plans));
    restore_tests::plane::wait_for("the unverified durability in status", std::time::Duration::from_secs(60), || {
        let out = p.ctl(&["--json", "status"]);
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        st["problems"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|m| m.as_str().is_some_and(|m| m.contains("vault nas") && m.contains("durability unverified")))
        })
    });
    p.ctl_ok(&["backup", "gpu-01/app"]);
    let r = drill(&p, "gpu-01/app", &["--plan", "weekly"]);
    assert_eq!(r.report["verdict"], "PASS", "{}", r.report);
    let anomalies = r.report["anomalies"].as_array().unwrap();
    assert!(
        anomalies.iter().any(|a| a.as_str().is_some_and(|a| a.starts_with("storage durability unverified"))),
        "{}",
        r.report
    );
}
