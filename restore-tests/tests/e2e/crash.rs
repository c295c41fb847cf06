//! Crash safety: kill -9 at each named failpoint and at 20 seeded random moments. After each kill
//! `check` passes, no snapshot is half-written, and the next backup uploads less than 60 % of the
//! data again (it adopts the packs the killed run had announced).

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use restore_tests::{World, random_file};

const FILES: usize = 10;
const FILE_LEN: usize = 10 << 20;

fn source(w: &World, seed: u64) -> std::path::PathBuf {
    let src = w.path("src");
    for i in 0..FILES {
        random_file(&src.join(format!("part{i}.bin")), FILE_LEN, seed * 100 + i as u64);
    }
    src
}

fn pack_count(w: &World) -> usize {
    restore_tests::files_below(&w.vault.join("data")).len()
}

/// After a kill: the vault checks clean, has no snapshot, and the next backup re-uploads < 60 %.
fn recover_and_verify(w: &World, src: &std::path::Path, label: &str) {
    let check = w.run(&["check", "--vault", w.vault_str()]);
    assert!(
        check.status.success(),
        "{label}: check failed after the kill:\n{}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert!(w.snapshot_ids().is_empty(), "{label}: a snapshot exists although the backup was killed");
    let before = w.stored_bytes();
    w.backup(&[src]);
    let uploaded = w.stored_bytes() - before;
    let total = (FILES * FILE_LEN) as u64;
    assert!(
        uploaded * 100 < total * 60,
        "{label}: the next backup uploaded {uploaded} of {total} bytes again (>= 60 %)"
    );
    assert_eq!(w.snapshot_ids().len(), 1, "{label}");
    let check = w.run(&["check", "--vault", w.vault_str(), "--read-data"]);
    assert!(check.status.success(), "{label}: read-data check failed:\n{}", String::from_utf8_lossy(&check.stdout));
}

/// A snapshot that exists after a kill is complete: every chunk reads back and the restore equals
/// the source.
fn verify_whole_snapshot(w: &World, src: &std::path::Path, label: &str) {
    assert_eq!(w.snapshot_ids().len(), 1, "{label}");
    let check = w.run(&["check", "--vault", w.vault_str(), "--read-data"]);
    assert!(check.status.success(), "{label}: read-data check failed:\n{}", String::from_utf8_lossy(&check.stdout));
    let out = w.path("restored");
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", out.to_str().unwrap()]);
    restore_tests::assert_same_tree(src, &out.join(src.strip_prefix("/").unwrap()));
}

fn killed_at(failpoint: &str) {
    let w = World::new();
    let src = source(&w, 1);
    let out = w
        .agent()
        .env("TRESOR_FAILPOINTS", failpoint)
        .args(["backup", "--vault", w.vault_str(), src.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{failpoint}: the agent was not killed at the failpoint: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    recover_and_verify(&w, &src, failpoint);
}

#[test]
fn kill_after_a_pack_put() {
    killed_at("after-pack-put=kill@4");
}

#[test]
fn kill_after_an_index_put() {
    killed_at("after-index-put=kill");
}

#[test]
fn kill_before_the_manifest_put() {
    killed_at("before-manifest-put=kill");
}

#[test]
fn kill_between_temp_write_and_rename() {
    killed_at("local-before-link=kill@11");
}

#[test]
fn twenty_seeded_random_kills() {
    let seed = restore_tests::seed_from_env("TRESOR_CRASH_SEED", "random kill");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..20 {
        let w = World::new();
        let src = source(&w, 1000 + round);
        // Kill once at least `threshold` packs exist, plus a random delay, so the kill lands in the
        // second half of the upload at a random moment.
        let threshold = rng.gen_range(3..=5);
        let delay = Duration::from_millis(rng.gen_range(0..40));
        let mut child = ReapOnDrop(
            w.agent()
                .args(["backup", "--vault", w.vault_str(), src.to_str().unwrap()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut finished = None;
        while pack_count(&w) < threshold {
            if let Some(st) = child.0.try_wait().unwrap() {
                finished = Some(st);
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: backup made no progress");
            std::thread::sleep(Duration::from_millis(2));
        }
        if finished.is_none() {
            std::thread::sleep(delay);
            let _ = child.0.kill();
            finished = Some(child.0.wait().unwrap());
        }
        let st = finished.unwrap_or_else(|| unreachable!());
        let label = format!("seed {seed} round {round} (threshold {threshold}, delay {delay:?})");
        if st.signal() == Some(9) && !w.snapshot_ids().is_empty() {
            // Killed after the commit point (while cleaning up): the snapshot must be whole.
            verify_whole_snapshot(&w, &src, &label);
        } else if st.signal() == Some(9) {
            recover_and_verify(&w, &src, &label);
        } else {
            // The backup finished before the kill: it must have committed cleanly.
            assert!(st.success(), "{label}: {st:?}");
            assert_eq!(w.snapshot_ids().len(), 1, "{label}");
        }
    }
}

#[test]
fn bit_flip_after_encryption_fails_the_backup_and_commits_nothing() {
    let w = World::new();
    let src = w.path("src");
    random_file(&src.join("a.bin"), 3 << 20, 5);
    let out = w
        .agent()
        .env("TRESOR_FAILPOINTS", "flip-after-encrypt")
        .args(["backup", "--vault", w.vault_str(), src.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("failed verification after encryption") && err.contains("chunk "),
        "the error names the chunk: {err}"
    );
    assert!(w.snapshot_ids().is_empty(), "nothing may be committed");
    assert!(restore_tests::files_below(&w.vault.join("index")).is_empty(), "no index segment may be written");
    w.ok(&["check", "--vault", w.vault_str()]);
}

/// Kills and reaps the child if a test assertion unwinds past it.
struct ReapOnDrop(std::process::Child);

impl Drop for ReapOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
