//! Vaults in S3 buckets with Object Lock. The server is moto's (an emulation of S3, pinned,
//! started per test): Garage has no Object Lock or versions. moto enforces what matters here:
//! the upload headers a locked bucket requires, retention on deletes by version id, delete
//! markers and versions.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use restore_tests::moto::Moto;
use restore_tests::{World, assert_same_tree, random_file};

fn source(w: &World) -> PathBuf {
    let src = w.path("src");
    random_file(&src.join("model/weights.bin"), 40 << 20, 7);
    for i in 0..20 {
        random_file(&src.join(format!("docs/file{i:02}.txt")), 500 + i * 91, 50 + i as u64);
    }
    src
}

fn world(moto: &Moto, bucket: &str) -> World {
    let mut w = World::empty();
    w.url = format!("s3://{bucket}/vault");
    w.env = moto.env();
    w
}

/// `init` with `extra` flags; its text output.
fn init(w: &World, extra: &[&str]) -> String {
    let escrow = w.escrow();
    let mut args = vec!["init", "--vault", w.vault_str(), "--escrow-key-out", escrow.to_str().unwrap()];
    args.extend(extra);
    w.ok(&args)
}

fn check_clean(w: &World) -> serde_json::Value {
    let check = w.json(&["check", "--vault", w.vault_str(), "--read-data"]);
    assert_eq!(check["problems"].as_array().map(Vec::len), Some(0), "{check}");
    assert_eq!(check["hidden"].as_array().map(Vec::len), Some(0), "{check}");
    assert_eq!(check["notes"].as_array().map(Vec::len), Some(0), "the versions list: {check}");
    check
}

fn restore_equals(w: &World, src: &Path, to: &str, escrow: bool) {
    let to = w.path(to);
    let mut cmd = w.agent();
    if escrow {
        cmd.env_remove("TRESOR_PASSWORD").env("TRESOR_ESCROW_KEY_FILE", w.escrow());
    }
    let out = cmd.args(["restore", "--vault", w.vault_str(), "latest", "--to", to.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    assert_same_tree(src, &to.join(src.strip_prefix("/").unwrap()));
}

/// Current keys under the vault prefix, with `prefix`.
fn keys(moto: &Moto, bucket: &str, prefix: &str) -> Vec<String> {
    let out = moto.admin(&["keys", bucket, &format!("vault/{prefix}")]);
    out["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect()
}

/// An object's lock as the server reports it: mode, and seconds left by the server's clock.
fn lock_of(moto: &Moto, bucket: &str, key: &str) -> (String, f64) {
    let r = moto.admin(&["retention", bucket, key]);
    (r["mode"].as_str().unwrap_or_default().to_string(), r["left"].as_f64().unwrap_or(0.0))
}

/// Init, back up, `check --read-data`, restore with the password and with the escrow key, in
/// a bucket locked in governance mode by Tresor, in compliance mode by Tresor, and by the
/// bucket's own default retention; each pack carries the lock the storage was asked for, counted
/// from the storage's clock, and no version of it can be deleted.
#[test]
fn locked_buckets_back_up_check_and_restore_in_each_mode() {
    let moto = Moto::start();
    // Bucket, its default retention, init's flags, and the lock each object must carry.
    type Case<'a> = (&'a str, Option<(&'a str, u32)>, &'a [&'a str], &'a str, f64);
    let cases: [Case; 3] = [
        ("gov", None, &["--object-lock", "3600s"], "GOVERNANCE", 3600.0),
        ("comp", None, &["--object-lock", "2h", "--object-lock-mode", "compliance"], "COMPLIANCE", 7200.0),
        ("dflt", Some(("GOVERNANCE", 1)), &[], "GOVERNANCE", 86_400.0),
    ];
    for (bucket, default, flags, mode, seconds) in cases {
        moto.bucket(bucket, true, default);
        let w = world(&moto, bucket);
        let text = init(&w, flags);
        assert!(text.contains("versioning enabled") && text.contains("Object Lock"), "{bucket}: {text}");
        let src = source(&w);
        w.backup(&[&src]);
        let check = check_clean(&w);
        assert!(check["chunks_verified"].as_u64().unwrap() > 20, "{check}");
        restore_equals(&w, &src, "restored", false);
        restore_equals(&w, &src, "by-escrow", true);

        let packs = keys(&moto, bucket, "data/");
        assert!(packs.len() >= 3, "{bucket}: {packs:?}");
        for key in packs.iter().chain(keys(&moto, bucket, "snapshots/").iter()) {
            let (got, left) = lock_of(&moto, bucket, key);
            assert_eq!(got, mode, "{bucket} {key}");
            // Counted from the server's clock at the write, a few seconds ago at most.
            assert!(left > seconds - 300.0 && left <= seconds + 2.0, "{bucket} {key}: {left} s left of {seconds}");
        }
        let destroyed = moto.admin(&["destroy", bucket, &packs[0]]);
        assert_eq!(destroyed["deleted"].as_array().map(Vec::len), Some(0), "{bucket}: {destroyed}");
        assert_eq!(destroyed["refused"][0], "AccessDenied", "{bucket}: {destroyed}");
    }
    // --object-lock on a bucket without Object Lock is refused before anything is written.
    moto.bucket("plain", false, None);
    let w = world(&moto, "plain");
    let out = w.run(&["init", "--vault", w.vault_str(), "--object-lock", "1d"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("needs a bucket with Object Lock enabled"), "{err}");
    assert!(keys(&moto, "plain", "").is_empty(), "nothing written: {:?}", keys(&moto, "plain", ""));
}

/// A backup killed with SIGKILL after its second pack, on a locked bucket: `check` passes, the
/// next backup completes and restores equal to the source.
#[test]
fn a_backup_killed_on_a_locked_bucket_is_followed_by_a_clean_one() {
    let moto = Moto::start();
    moto.bucket("locked", true, Some(("GOVERNANCE", 1)));
    let w = world(&moto, "locked");
    init(&w, &["--object-lock", "600s"]);
    let src = source(&w);
    let out = w
        .agent()
        .env("TRESOR_FAILPOINTS", "after-pack-put=kill@2")
        .args(["backup", "--vault", w.vault_str(), src.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9), "not killed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(w.snapshot_ids().is_empty());
    check_clean(&w);
    w.backup(&[&src]);
    check_clean(&w);
    restore_equals(&w, &src, "restored", false);
}

/// An attacker with the agent's credentials hides a pack, an index segment, a snapshot and the
/// escrow key slot under delete markers and replaces others with new versions; deleting a
/// locked version is refused. `check` names each, `recover-hidden` brings every one back, and
/// then check, a new backup and a restore succeed. Then the config and the password slot are
/// hidden: the vault does not open, `recover-hidden` (which needs no key) brings them back.
#[test]
fn objects_an_attacker_hides_or_replaces_are_named_and_brought_back() {
    let moto = Moto::start();
    moto.bucket("locked", true, None);
    let w = world(&moto, "locked");
    init(&w, &["--object-lock", "3600s"]);
    let src = source(&w);
    w.backup(&[&src]);
    let b = "locked";
    let (packs, segments, snapshots, slots) =
        (keys(&moto, b, "data/"), keys(&moto, b, "index/"), keys(&moto, b, "snapshots/"), keys(&moto, b, "keys/"));
    assert!(packs.len() >= 3 && !segments.is_empty() && snapshots.len() == 1 && slots.len() == 2);
    let escrow_slot = {
        let list = w.json(&["key", "list", "--vault", w.vault_str()]);
        let rows = list.as_array().cloned().unwrap_or_default();
        let escrow = rows.iter().find(|s| s["kind"] == "escrow").unwrap_or_else(|| panic!("{list}"));
        format!("vault/keys/{}", escrow["id"].as_str().unwrap())
    };
    let hidden = [packs[0].clone(), segments[0].clone(), snapshots[0].clone(), escrow_slot];
    let replaced = [packs[1].clone()];
    for k in &hidden {
        moto.admin(&["hide", b, k]);
    }
    for k in &replaced {
        let destroyed = moto.admin(&["destroy", b, k]);
        assert_eq!(destroyed["refused"], serde_json::json!(["AccessDenied"]), "{destroyed}");
        moto.admin(&["replace", b, k]);
    }

    let out = w.run(&["--json", "check", "--vault", w.vault_str()]);
    assert!(!out.status.success(), "check must fail");
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let named: Vec<String> =
        check["hidden"].as_array().unwrap().iter().map(|h| format!("vault/{}", h["key"].as_str().unwrap())).collect();
    for k in hidden.iter().chain(&replaced) {
        assert!(named.contains(k), "{k} not named: {check}");
    }
    assert_eq!(check["hidden"].as_array().unwrap().len(), hidden.len() + replaced.len(), "{check}");
    let text = String::from_utf8_lossy(&w.run(&["check", "--vault", w.vault_str()]).stdout).into_owned();
    assert!(text.contains("recover-hidden") && text.contains("delete marker"), "{text}");

    let dry = w.json(&["recover-hidden", "--vault", w.vault_str(), "--dry-run"]);
    assert_eq!(dry["recovered"].as_array().map(Vec::len), Some(0), "{dry}");
    let done = w.json(&["recover-hidden", "--vault", w.vault_str()]);
    assert_eq!(done["recovered"].as_array().map(Vec::len), Some(hidden.len() + replaced.len()), "{done}");
    check_clean(&w);
    restore_equals(&w, &src, "restored", false);
    restore_equals(&w, &src, "by-escrow", true);
    random_file(&src.join("docs/new.txt"), 5000, 99);
    w.backup(&[&src]);
    check_clean(&w);

    moto.admin(&["hide", b, "vault/config"]);
    let password_slot = slots.iter().find(|s| !hidden.contains(s)).unwrap().clone();
    moto.admin(&["hide", b, &password_slot]);
    let out = w.run(&["check", "--vault", w.vault_str()]);
    assert!(!out.status.success());
    let done = w.json(&["recover-hidden", "--vault", w.vault_str()]);
    assert_eq!(done["recovered"][0], "config", "the config comes back first: {done}");
    assert_eq!(done["recovered"].as_array().map(Vec::len), Some(2), "{done}");
    check_clean(&w);
    restore_equals(&w, &src, "restored-2", false);
}

/// Retention keeps pace: with a 20 s lock, GC run every 15 s and a 2 s grace, a pack a live
/// snapshot references is still locked after its first retain-until (the maintainer extended
/// it), while the pack of a forgotten snapshot is deleted for good (every version) once its lock
/// passed. Forgetting a snapshot under its lock says "not yet"; session markers leave no
/// versions or delete markers behind; a retention not longer than grace plus interval is
/// refused (FM-34).
#[test]
fn live_packs_stay_locked_and_unreferenced_ones_go_once_their_lock_passes() {
    let moto = Moto::start();
    moto.bucket("locked", true, None);
    let w = world(&moto, "locked");
    init(&w, &["--object-lock", "20s"]);
    let gc = |grace: &str, interval: &str| {
        w.json(&["gc", "--vault", w.vault_str(), "--grace", grace, "--maintenance-interval", interval])
    };
    let (one, two) = (w.path("one"), w.path("two"));
    random_file(&one.join("a.bin"), 3 << 20, 1);
    random_file(&two.join("b.bin"), 3 << 20, 2);
    let first = w.backup(&[&one])["snapshot"].as_str().unwrap().to_string();
    let first_packs = keys(&moto, "locked", "data/");
    std::thread::sleep(std::time::Duration::from_secs(10));
    w.backup(&[&two]);
    let second_packs: Vec<String> =
        keys(&moto, "locked", "data/").into_iter().filter(|k| !first_packs.contains(k)).collect();
    assert!(!first_packs.is_empty() && !second_packs.is_empty());
    let first_until = moto.admin(&["retention", "locked", &second_packs[0]])["until"].as_f64().unwrap();

    let out = w.run(&["gc", "--vault", w.vault_str(), "--grace", "10s", "--maintenance-interval", "15s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("must be longer than the GC grace period"), "{err}");

    // Forgotten only once its lock passed; until then "not yet".
    let forgot = w.json(&["forget", "--vault", w.vault_str(), &first]);
    assert_eq!(forgot["locked"][0]["id"], first.as_str(), "{forgot}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let forgot = w.json(&["forget", "--vault", w.vault_str(), &first]);
        if forgot["forgotten"].as_array().is_some_and(|f| f.len() == 1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never forgotten: {forgot}");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let before = moto.admin(&["retention", "locked", &second_packs[0]]);
    assert!(before["now"].as_f64().unwrap() < first_until, "the machine was too slow to test in time: {before}");
    let marked = gc("2s", "15s");
    assert!(marked["locks_extended"].as_u64().unwrap() >= 1, "the live pack's lock was due: {marked}");
    let after = moto.admin(&["retention", "locked", &second_packs[0]]);
    assert!(after["until"].as_f64().unwrap() > first_until + 5.0, "extended before it ran out: {after}");
    assert!(marked["packs_marked"].as_u64().unwrap() >= 1, "{marked}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let swept = gc("2s", "15s");
    assert_eq!(swept["packs_deleted"].as_u64(), Some(first_packs.len() as u64), "{swept}");
    // Session markers were rewritten and deleted by version id: no versions or markers remain.
    let sessions = moto.admin(&["versions", "locked", "vault/sessions/", "prefix"]);
    assert_eq!((sessions["versions"].as_u64(), sessions["markers"].as_u64()), (Some(0), Some(0)), "{sessions}");
    for p in &first_packs {
        let v = moto.admin(&["versions", "locked", p]);
        assert_eq!((v["versions"].as_u64(), v["markers"].as_u64()), (Some(0), Some(0)), "{p} not gone for good: {v}");
    }
    // Past the live pack's first retain-until, it is still locked.
    loop {
        let r = moto.admin(&["retention", "locked", &second_packs[0]]);
        if r["now"].as_f64().unwrap() > first_until + 1.0 {
            assert!(r["left"].as_f64().unwrap() > 0.0, "the live pack's lock ran out: {r}");
            let destroyed = moto.admin(&["destroy", "locked", &second_packs[0]]);
            assert_eq!(destroyed["refused"], serde_json::json!(["AccessDenied"]), "{destroyed}");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    check_clean(&w);
    restore_equals(&w, &two, "restored", false);

    // Rewritten objects whose old versions a lock keeps: one replaced, one hidden under a
    // marker. GC removes the old versions (and then the marker) only once the lock passed.
    moto.admin(&["put", "locked", "vault/probe/replaced", "6"]);
    moto.admin(&["put", "locked", "vault/probe/replaced"]);
    moto.admin(&["put", "locked", "vault/probe/hidden", "6"]);
    moto.admin(&["hide", "locked", "vault/probe/hidden"]);
    let early = gc("2s", "15s");
    assert_eq!(early["old_versions_removed"], 0, "{early}");
    std::thread::sleep(std::time::Duration::from_secs(7));
    let late = gc("2s", "15s");
    assert_eq!(late["old_versions_removed"], 3, "two old versions and the marker: {late}");
    let replaced = moto.admin(&["versions", "locked", "vault/probe/replaced"]);
    assert_eq!((replaced["versions"].as_u64(), replaced["markers"].as_u64()), (Some(1), Some(0)), "{replaced}");
    let hidden = moto.admin(&["versions", "locked", "vault/probe/hidden"]);
    assert_eq!((hidden["versions"].as_u64(), hidden["markers"].as_u64()), (Some(0), Some(0)), "{hidden}");
}

/// Least privilege, with the policies docs/policies/ gives (moto enforces IAM: each request's
/// signature and its user's policy). The maintainer makes the vault; an agent backs up and
/// checks without any right to delete. With the agent's credentials an attacker's deletes are
/// refused (plain and by version id) and its overwrites only hide: `check` names them, the
/// maintainer's `recover-hidden` brings them back, and GC runs with the maintainer's rights.
/// moto checks calls under their operation names (py/moto_admin.py maps AWS's actions onto
/// them), so what it cannot tell apart is not tried here: shortening a lock (on AWS the policies
/// deny s3:BypassGovernanceRetention, without which a lock can only be lengthened) and reading
/// old versions (the agent's policy lacks s3:GetObjectVersion; moto checks s3:GetObject).
#[test]
fn an_agent_without_delete_rights_backs_up_and_can_only_hide() {
    let moto = Moto::start();
    moto.bucket("locked", true, Some(("GOVERNANCE", 1)));
    let users = moto.enforce_iam("locked", "vault");
    let as_user = |name: &str| {
        let mut w = world(&moto, "locked");
        w.env = moto.env_as(&users[name]);
        w
    };
    let maintainer = as_user("maintainer");
    init(&maintainer, &[]);
    let agent = as_user("agent");
    let src = source(&agent);
    agent.backup(&[&src]);
    check_clean(&agent);

    let attacker = Some(&users["agent"]);
    let (packs, snapshots) = (keys(&moto, "locked", "data/"), keys(&moto, "locked", "snapshots/"));
    for k in [&packs[0], &snapshots[0], &"vault/config".to_string()] {
        let hidden = moto.admin_as(attacker, &["hide", "locked", k]);
        assert_eq!(hidden["refused"], "AccessDenied", "{k}: {hidden}");
        let destroyed = moto.admin_as(attacker, &["destroy", "locked", k]);
        assert_eq!(destroyed["refused"], serde_json::json!(["AccessDenied"]), "{k}: {destroyed}");
    }
    moto.admin_as(attacker, &["replace", "locked", &packs[1]]);
    moto.admin_as(attacker, &["replace", "locked", &snapshots[0]]);
    let out = agent.run(&["--json", "check", "--vault", agent.vault_str()]);
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(check["hidden"].as_array().map(Vec::len), Some(2), "{check}");

    let done = maintainer.json(&["recover-hidden", "--vault", maintainer.vault_str()]);
    assert_eq!(done["recovered"].as_array().map(Vec::len), Some(2), "{done}");
    check_clean(&agent);
    restore_equals(&agent, &src, "restored", false);
    // Make the locks due: a grace and interval together 10 s short of the day the bucket locks
    // for, once the config's lock has less than that left. The maintainer's rights extend them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while moto.admin(&["retention", "locked", "vault/config"])["left"].as_f64().unwrap() >= 86_390.0 {
        assert!(std::time::Instant::now() < deadline, "the config's lock never got due");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let gc = maintainer.json(&[
        "gc",
        "--vault",
        maintainer.vault_str(),
        "--grace",
        "86380s",
        "--maintenance-interval",
        "10s",
    ]);
    assert!(gc["lock_errors"].as_array().is_some_and(Vec::is_empty), "{gc}");
    assert!(gc["locks_extended"].as_u64().unwrap() >= 5, "config, slots, segment, snapshot, packs: {gc}");
    assert!(moto.admin(&["retention", "locked", "vault/config"])["left"].as_f64().unwrap() > 86_390.0);
}

/// Through the controller: a locked vault whose maintainer's credentials may not extend locks
/// (they may only list and read). Its scheduled prunes find the locks due (a grace and prune
/// interval 10 s short of the bucket's one-day lock), cannot extend them, and the controller
/// raises `object_lock_extension_failed` and audits each as `lock.extend_failed`.
#[test]
fn a_maintainer_that_cannot_extend_locks_raises_an_alert() {
    use restore_tests::plane::{Plane, VaultSpec, wait_for};
    let moto = Moto::start();
    moto.bucket("locked", true, Some(("GOVERNANCE", 1)));
    let users = moto.enforce_iam("locked", "vault");
    let mut p = Plane::start("");
    let url = "s3://locked/vault".to_string();
    let pw = p.password_file("a1");
    p.init_vault(&url, &pw, &moto.env_as(&users["maintainer"]));
    let vault = VaultSpec { name: "s3".into(), url, password_file: pw, env: moto.env_as(&users["reader"]) };
    p.add_agent("a1", std::slice::from_ref(&vault), &[]);
    let src = p.dir.path().join("src");
    random_file(&src.join("x.bin"), 64 << 10, 3);
    let policy = format!(
        "name = \"l\"\n[defaults]\nschedule = \"0 0 1 1 *\"\nretention = {{ keep_last = 5 }}\n[[vault]]\nname = \"s3\"\nmaintainer = \"a1\"\ngc_grace = \"86380s\"\nprune_schedule = \"*/5 * * * * *\"\n[[source]]\nagent = \"a1\"\nname = \"a\"\nvault = \"s3\"\npaths = [\"{}\"]\n",
        src.display()
    );
    let applied = p.apply_policy(&policy);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    wait_for("the lock alert", std::time::Duration::from_secs(180), || {
        String::from_utf8_lossy(&p.ctl(&["status"]).stdout).contains("could not extend the Object Lock")
    });
    // Exit 4: problems are listed.
    let out = p.ctl(&["--json", "status"]);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = status["problems"].as_array().cloned().unwrap_or_default();
    assert!(
        problems.iter().any(|m| m.as_str().is_some_and(|m| m.contains("vault s3: the maintainer could not extend"))),
        "{status}"
    );
    let audit = String::from_utf8_lossy(&p.ctl(&["audit", "show"]).stdout).into_owned();
    assert!(audit.contains("lock.extend_failed"), "{audit}");
}
