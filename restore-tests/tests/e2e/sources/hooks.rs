//! Pre and post hooks: a failing or hanging pre-hook fails the job cleanly, the post-hook always runs.

use std::time::{Duration, Instant};

use restore_tests::World;

#[test]
fn failing_and_hanging_pre_hooks_fail_cleanly_and_post_hooks_always_run() {
    let w = World::new();
    let data = w.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), b"x").unwrap();
    let post_log = w.path("post.log");
    let post = format!("echo \"$TRESOR_RESULT\" >> {}", post_log.display());
    let vault = w.vault_str();

    let ok = w.json(&["backup", "--vault", vault, "--pre-hook", "true", "--post-hook", &post, data.to_str().unwrap()]);
    assert!(ok["snapshot"].is_string());

    let out = w.run(&[
        "backup",
        "--vault",
        vault,
        "--pre-hook",
        "echo index busy >&2; exit 4",
        "--post-hook",
        &post,
        data.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("pre-hook") && err.contains("exit status: 4") && err.contains("index busy"), "{err}");
    assert!(err.contains("no snapshot was written"), "{err}");

    let started = Instant::now();
    let out = w.run(&[
        "backup",
        "--vault",
        vault,
        "--pre-hook",
        "sleep 600",
        "--hook-timeout",
        "2s",
        "--post-hook",
        &post,
        data.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ran past its 2 s timeout"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "the hung hook was killed");

    assert_eq!(std::fs::read_to_string(&post_log).unwrap(), "ok\nfailed\nfailed\n", "the post-hook ran every time");
    assert_eq!(w.snapshot_ids().len(), 1, "only the good run made a snapshot");
}
