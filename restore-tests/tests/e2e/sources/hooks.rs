//! Pre and post hooks: a failing or hanging pre-hook fails the job cleanly, the post-hook always runs.

use std::time::{Duration, Instant};

use restore_tests::World;

/// A vault and a directory with one file to back up.
fn world_with_data() -> (World, std::path::PathBuf) {
    let w = World::new();
    let data = w.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), b"x").unwrap();
    (w, data)
}

#[test]
fn failing_and_hanging_pre_hooks_fail_cleanly_and_post_hooks_always_run() {
    let (w, data) = world_with_data();
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

/// Hooks start from a cleared environment: the agent's password, S3 credentials and tokens do not
/// reach them; what they are told (TRESOR_HOOK, TRESOR_SOURCES, TRESOR_RESULT) and PATH do.
#[test]
fn hooks_see_none_of_the_agents_secrets() {
    let (w, data) = world_with_data();
    let (pre, post) = (w.path("pre.env"), w.path("post.env"));
    let out = w
        .agent()
        .env("AWS_SECRET_ACCESS_KEY", "aws-secret-canary")
        .env("AWS_ACCESS_KEY_ID", "aws-id-canary")
        .env("TRESOR_ENROLL_TOKEN", "token-canary")
        .env("TRESOR_ESCROW_KEY_FILE_HINT", "/root/escrow-canary.key")
        .args(["backup", "--vault", w.vault_str()])
        .args(["--pre-hook", &format!("env > {}", pre.display())])
        .args(["--post-hook", &format!("env > {}", post.display())])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (file, told) in [(&pre, "TRESOR_HOOK=pre"), (&post, "TRESOR_RESULT=ok")] {
        let env = std::fs::read_to_string(file).unwrap();
        assert!(env.contains(told) && env.contains("PATH="), "{env}");
        for secret in [
            "correct horse",
            "aws-secret-canary",
            "aws-id-canary",
            "token-canary",
            "escrow-canary",
            "TRESOR_PASSWORD",
            "TRESOR_CACHE_DIR",
        ] {
            assert!(!env.contains(secret), "a hook saw {secret}:\n{env}");
        }
    }
}
