//! A second site: `tresor-agent copy` between a folder, Garage buckets and a locked (moto) bucket.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use restore_tests::garage::Garage;
use restore_tests::moto::Moto;
use restore_tests::{World, assert_same_tree, files_below, random_file};

/// `copy --from <w's vault> --to URL` with `env` for the copy's storage and `extra` flags.
fn copy(
    w: &World,
    to: &str,
    env: &[(String, String)],
    failpoints: Option<&str>,
    extra: &[&str],
) -> std::process::Output {
    let mut cmd = w.agent();
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(f) = failpoints {
        cmd.env("TRESOR_FAILPOINTS", f);
    }
    cmd.args(["--json", "copy", "--from", w.vault_str(), "--to", to]).args(extra).output().unwrap()
}

fn copied(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "copy failed ({:?}): {}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A world on the copy: same password and escrow key file as `w`, its own cache.
fn site(w: &World, url: &str, env: Vec<(String, String)>) -> World {
    let mut s = World::empty();
    s.url = url.to_string();
    s.env = env;
    std::fs::copy(w.escrow(), s.escrow()).unwrap();
    s
}

fn restore_with_escrow_equals(s: &World, src: &Path, snapshot: &str, to: &str) {
    let to = s.path(to);
    let out = s
        .agent()
        .env_remove("TRESOR_PASSWORD")
        .env("TRESOR_ESCROW_KEY_FILE", s.escrow())
        .args(["restore", "--vault", s.vault_str(), snapshot, "--to", to.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "restore from the copy: {}", String::from_utf8_lossy(&out.stderr));
    assert_same_tree(src, &to.join(src.strip_prefix("/").unwrap()));
}

fn check_clean(s: &World) {
    let check = s.json(&["check", "--vault", s.vault_str(), "--read-data"]);
    assert_eq!(check["problems"].as_array().map(Vec::len), Some(0), "{check}");
}

/// Folder to Garage, killed after its second pack and run again: the second run sends only
/// what the first did not, the third nothing; the copy checks clean and restores equal with
/// only the escrow key file; the copy is copied on to a second bucket prefix (S3 to S3).
#[test]
fn a_copy_resumes_after_a_kill_sends_only_what_is_missing_and_restores_equal() {
    let garage = Garage::start();
    let w = World::new();
    let src = w.path("src");
    for i in 0..3 {
        random_file(&src.join(format!("model/shard{i}.bin")), 14 << 20, 100 + i as u64);
    }
    random_file(&src.join("notes.txt"), 3000, 9);
    w.backup(&[&src]);
    random_file(&src.join("model/shard3.bin"), 6 << 20, 200);
    w.backup(&[&src]);
    let ids = w.snapshot_ids();
    let packs = files_below(&w.vault.join("data")).len();
    assert!(packs >= 4, "the source has {packs} packs");

    let to = garage.url("site2");
    let killed = copy(&w, &to, &garage.env(), Some("copy-after-pack-put=kill@2"), &[]);
    assert_eq!(killed.status.signal(), Some(9), "{}", String::from_utf8_lossy(&killed.stderr));

    let second = copied(&copy(&w, &to, &garage.env(), None, &[]));
    assert_eq!(second["copied"].as_array().unwrap().len(), 2, "{second}");
    let sent = second["packs_copied"].as_u64().unwrap() as usize;
    assert_eq!(sent + 2, packs, "the two packs the killed run sent are indexed, not sent again: {second}");
    assert!(second["packs_present"].as_u64().unwrap() >= 2, "{second}");
    assert_eq!(second["site"]["created"], false, "the killed run made the copy: {second}");

    let third = copied(&copy(&w, &to, &garage.env(), None, &[]));
    assert_eq!((third["copied"].as_array().unwrap().len(), third["already_there"].as_u64()), (0, Some(2)), "{third}");
    assert_eq!(third["packs_copied"], 0, "{third}");

    let s2 = site(&w, &to, garage.env());
    check_clean(&s2);
    assert_eq!(s2.snapshot_ids(), ids, "the copy holds the source's snapshots under the same ids");
    restore_with_escrow_equals(&s2, &src, "latest", "restored");

    // S3 to S3, one snapshot.
    let to3 = garage.url("site3");
    let prefix = &ids[0][..12];
    let mut c = s2.agent();
    let out =
        c.args(["--json", "copy", "--from", s2.vault_str(), "--to", &to3, "--snapshot", prefix]).output().unwrap();
    let one = copied(&out);
    assert_eq!(one["copied"].as_array().unwrap(), &vec![serde_json::json!(ids[0])], "{one}");
    let s3 = site(&w, &to3, garage.env());
    check_clean(&s3);
    assert_eq!(s3.snapshot_ids(), vec![ids[0].clone()]);
}

/// Into a bucket with Object Lock: every object at the copy is written locked; a slot removed at
/// the source starts a key epoch that reaches the copy, where the removed password opens nothing
/// written after it, and its slot object waits for its lock to run out.
#[test]
fn a_copy_into_a_locked_bucket_is_locked_and_follows_key_removals() {
    let moto = Moto::start();
    moto.bucket("site2", true, None);
    let w = World::new();
    let src = w.path("src");
    random_file(&src.join("a.bin"), 5 << 20, 1);
    w.backup(&[&src]);
    let other = w.path("other.password");
    std::fs::write(&other, "another holder's password").unwrap();
    let added = w.json(&["key", "add", "--vault", w.vault_str(), "--new-password-file", other.to_str().unwrap()]);
    let added = added["added"].as_str().unwrap().to_string();

    let to = "s3://site2/vault";
    let first = copied(&copy(&w, to, &moto.env(), None, &["--object-lock", "1d"]));
    assert_eq!(first["site"]["created"], true, "{first}");
    assert_eq!(first["site"]["slots_copied"], 3, "{first}");
    let keys = moto.admin(&["keys", "site2", "vault/data/"]);
    let pack = keys["keys"][0].as_str().unwrap().to_string();
    let lock = moto.admin(&["retention", "site2", &pack]);
    assert_eq!(lock["mode"], "GOVERNANCE", "{lock}");
    assert!(lock["left"].as_f64().unwrap() > 86_000.0, "{lock}");
    // A retention is set when the copy is made, not changed later.
    let out = copy(&w, to, &moto.env(), None, &["--object-lock", "2d"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("set when it is made"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    w.json(&["key", "remove", "--vault", w.vault_str(), &added]);
    random_file(&src.join("b.bin"), 2 << 20, 2);
    w.backup(&[&src]);
    let second = copied(&copy(&w, to, &moto.env(), None, &[]));
    assert_eq!(second["copied"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second["site"]["epochs_copied"], 1, "{second}");
    let waiting = second["site"]["slots_waiting"].as_array().unwrap();
    assert!(waiting.len() == 1 && waiting[0].as_str().unwrap().starts_with(&added), "{second}");

    // One host keeps the two sites' records apart (they share the vault id): a forget the copy's
    // lock postpones is not carried out at the first site by the first site's gc.
    let first = w.snapshot_ids()[0].clone();
    let out = w.agent().envs(moto.env()).args(["forget", "--vault", to, &first]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("not yet"), "{}", String::from_utf8_lossy(&out.stdout));
    w.ok(&["gc", "--vault", w.vault_str()]);
    assert!(w.snapshot_ids().contains(&first), "the first site kept the snapshot forgotten at the copy");

    let s2 = site(&w, to, moto.env());
    check_clean(&s2);
    restore_with_escrow_equals(&s2, &src, "latest", "restored");
    // The removed holder still opens the copy (its slot is locked there) but not the new data.
    let newest = w.snapshot_ids().pop().unwrap();
    let out = s2
        .run_with_password_file(&other, &["restore", "--vault", to, &newest, "--to", s2.path("r2").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(12), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The packs in a folder vault.
fn packs(vault: &Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    files_below(&vault.join("data")).into_iter().collect()
}

/// A slot planted at the source without the vault's key is not carried; a pack damaged at the
/// source keeps its snapshot from the copy (named, exit 13) while the others are copied; a copy
/// whose config was altered is refused before anything is written beside it.
#[test]
fn hostile_sources_and_copies_are_refused_naming_the_problem() {
    let w = World::new();
    let src = w.path("src");
    random_file(&src.join("a.bin"), 3 << 20, 1);
    w.backup(&[&src]);
    let before = packs(&w.vault);
    random_file(&src.join("b.bin"), 2 << 20, 2);
    w.backup(&[&src]);
    let ids = w.snapshot_ids();

    // A slot planted beside the real ones: another id, a MAC made without the key.
    let real = files_below(&w.vault.join("keys")).into_iter().next().unwrap();
    let mut slot: serde_json::Value = serde_json::from_slice(&std::fs::read(&real).unwrap()).unwrap();
    slot["id"] = "00112233aabbccdd".into();
    slot["config_mac"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
    std::fs::write(w.vault.join("keys/00112233aabbccdd"), serde_json::to_vec(&slot).unwrap()).unwrap();

    // Every pack of the second snapshot damaged in its middle.
    let damaged: Vec<String> =
        packs(&w.vault).difference(&before).map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for p in packs(&w.vault).difference(&before) {
        let mut bytes = std::fs::read(p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        let mut perms = std::fs::metadata(p).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(p, perms).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    let to = w.path("copy");
    let out = copy(&w, to.to_str().unwrap(), &[], None, &[]);
    assert_eq!(out.status.code(), Some(13), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["copied"], serde_json::json!([ids[0]]), "{r}");
    let failed = r["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{r}");
    assert_eq!(failed[0]["snapshot"], ids[1].as_str(), "{r}");
    assert_eq!(failed[0]["damage"], true, "{r}");
    let why = failed[0]["error"].as_str().unwrap();
    assert!(why.starts_with("integrity") && damaged.iter().any(|d| why.contains(d.as_str())), "{r}");
    let skipped = r["site"]["slots_skipped"].as_array().unwrap();
    assert!(skipped.len() == 1 && skipped[0].as_str().unwrap().starts_with("00112233aabbccdd"), "{r}");
    assert!(!to.join("keys/00112233aabbccdd").exists());
    let s2 = site(&w, to.to_str().unwrap(), vec![]);
    check_clean(&s2);

    // A slot that vanished from the source's listing without a key epoch leaving it out (a
    // deleted object, a short listing) stays at the copy.
    let escrow_slot = files_below(&w.vault.join("keys"))
        .into_iter()
        .find(|p| !p.ends_with("00112233aabbccdd") && std::fs::read_to_string(p).unwrap().contains("\"escrow\""))
        .unwrap();
    let aside = w.path("escrow-slot-aside");
    std::fs::rename(&escrow_slot, &aside).unwrap();
    let out = copy(&w, to.to_str().unwrap(), &[], None, &[]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["site"]["slots_removed"], 0, "{r}");
    assert!(to.join("keys").join(escrow_slot.file_name().unwrap()).exists());
    std::fs::rename(&aside, &escrow_slot).unwrap();

    // Every slot of the copy hidden (while it holds data): refused, not taken for a first run.
    let hidden = w.path("copy-keys-aside");
    std::fs::rename(to.join("keys"), &hidden).unwrap();
    std::fs::create_dir(to.join("keys")).unwrap();
    let out = copy(&w, to.to_str().unwrap(), &[], None, &[]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("but no key slot"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir(to.join("keys")).unwrap();
    std::fs::rename(&hidden, to.join("keys")).unwrap();

    // Keys change at the first site only.
    let other = w.path("other.password");
    std::fs::write(&other, "another password").unwrap();
    let add = ["key", "add", "--vault", to.to_str().unwrap(), "--new-password-file", other.to_str().unwrap()];
    let out = s2.run(&add);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("second site"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut forced = vec!["--at-second-site"];
    forced.extend(add);
    s2.ok(&forced);

    // The copy's config altered (its delete capability flipped): refused, and the copy no longer opens.
    let config = to.join("config");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut perms = std::fs::metadata(&config).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&config, perms).unwrap();
    std::fs::write(&config, text.replace("\"delete\": true", "\"delete\": false")).unwrap();
    let out = copy(&w, to.to_str().unwrap(), &[], None, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("config object was altered"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s2.run(&["check", "--vault", to.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("altered"));
}
