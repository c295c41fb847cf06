//! Damage in storage: `check --read-data` names the affected snapshots and files, and a restore
//! still brings back every unaffected file. Crafted objects are rejected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use restore_tests::{World, random_file};

struct Scenario {
    w: World,
    src: PathBuf,
    hashes: BTreeMap<String, String>,
}

fn scenario() -> Scenario {
    let w = World::new();
    let src = w.path("src");
    for i in 0..6 {
        random_file(&src.join(format!("file{i}.bin")), 9 << 20, 40 + i as u64);
    }
    w.backup(&[&src]);
    let hashes = (0..6)
        .map(|i| {
            let name = format!("file{i}.bin");
            let h = blake3::hash(&std::fs::read(src.join(&name)).unwrap()).to_hex().to_string();
            (name, h)
        })
        .collect();
    Scenario { w, src, hashes }
}

fn largest_pack(vault: &Path) -> PathBuf {
    let mut packs = restore_tests::files_below(&vault.join("data"));
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    packs.pop().expect("a pack")
}

/// `check --read-data` fails, naming the snapshot and some (not all) files; restore brings back
/// exactly the files check did not name, byte for byte.
fn expect_partial_damage(s: &Scenario, what: &str) {
    let w = &s.w;
    let out = w.run(&["--json", "check", "--vault", w.vault_str(), "--read-data"]);
    assert_eq!(out.status.code(), Some(13), "{what}: check must exit 13: {}", String::from_utf8_lossy(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged = report["damaged_snapshots"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{what}: {report}");
    let snap = w.snapshot_ids()[0].clone();
    assert_eq!(damaged[0]["snapshot"], snap.as_str());
    let named: Vec<String> = damaged[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().rsplit('/').next().unwrap().to_string())
        .collect();
    assert!(!named.is_empty() && named.len() < 6, "{what}: check must name some, not all files: {named:?}");

    let out_dir = w.path(&format!("restored-{}", what.replace(' ', "-")));
    let r = w.run(&["restore", "--vault", w.vault_str(), "latest", "--to", out_dir.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(3), "{what}: partial restore exit code: {}", String::from_utf8_lossy(&r.stderr));
    let text = String::from_utf8_lossy(&r.stdout);
    let restored = out_dir.join(s.src.strip_prefix("/").unwrap());
    for (name, hash) in &s.hashes {
        let p = restored.join(name);
        if named.contains(name) {
            assert!(
                text.contains(&format!("FAILED {}", s.src.join(name).display())),
                "{what}: restore must name {name}: {text}"
            );
            assert!(!p.exists(), "{what}: damaged {name} must not appear under its final name");
        } else {
            let got = blake3::hash(
                &std::fs::read(&p).unwrap_or_else(|e| panic!("{what}: unaffected {name} not restored: {e}")),
            )
            .to_hex()
            .to_string();
            assert_eq!(&got, hash, "{what}: {name} restored with wrong content");
        }
    }
}

#[test]
fn flipped_byte_in_a_pack() {
    let s = scenario();
    let pack = largest_pack(&s.w.vault);
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&pack, bytes).unwrap();
    expect_partial_damage(&s, "flipped byte");
}

#[test]
fn truncated_pack() {
    let s = scenario();
    let pack = largest_pack(&s.w.vault);
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&pack).unwrap().set_len(len / 2).unwrap();
    expect_partial_damage(&s, "truncated pack");
}

#[test]
fn deleted_pack() {
    let s = scenario();
    std::fs::remove_file(largest_pack(&s.w.vault)).unwrap();
    // Even the structure check sees a missing pack.
    let out = s.w.run(&["check", "--vault", s.w.vault_str()]);
    assert_eq!(out.status.code(), Some(13));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is missing"));
    expect_partial_damage(&s, "deleted pack");
}

#[test]
fn deleted_index_segment() {
    let s = scenario();
    for seg in restore_tests::files_below(&s.w.vault.join("index")) {
        std::fs::remove_file(seg).unwrap();
    }
    let out = s.w.run(&["--json", "check", "--vault", s.w.vault_str(), "--read-data"]);
    assert_eq!(out.status.code(), Some(13));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = report["damaged_snapshots"][0]["files"].to_string();
    assert!(text.contains("tree unreadable"), "without an index the tree cannot be found: {report}");
    // The restore fails with a clear message and writes nothing.
    let r = s.w.run(&["restore", "--vault", s.w.vault_str(), "latest", "--to", s.w.path("out").to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(13));
    assert!(String::from_utf8_lossy(&r.stderr).contains("not in the index"), "{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
fn crafted_objects_are_rejected() {
    let s = scenario();
    let w = &s.w;
    let snap_path = restore_tests::files_below(&w.vault.join("snapshots")).pop().unwrap();
    let bytes = std::fs::read(&snap_path).unwrap();

    // A snapshot manifest planted as an index segment: wrong type in the header.
    let id = blake3::hash(&bytes).to_hex().to_string();
    std::fs::write(w.vault.join("index").join(&id), &bytes).unwrap();
    // A manifest whose type byte was changed to "index segment" and stored under its new hash:
    // the AAD binds the type, so it no longer decrypts.
    let mut retyped = bytes.clone();
    retyped[8] = 4;
    std::fs::write(w.vault.join("index").join(blake3::hash(&retyped).to_hex().to_string()), &retyped).unwrap();
    // A manifest copied under another snapshot's name: its content no longer matches its name.
    let mut renamed = bytes.clone();
    renamed.push(0);
    std::fs::write(w.vault.join("snapshots").join("00".repeat(32)), &renamed).unwrap();

    let out = w.run(&["--json", "check", "--vault", w.vault_str()]);
    assert_eq!(out.status.code(), Some(13));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = report["problems"].to_string();
    assert!(problems.contains("expected IndexSegment"), "wrong type must be named: {problems}");
    assert!(problems.contains("does not decrypt"), "retyped object must fail authentication: {problems}");
    assert!(problems.contains("does not match its name"), "renamed object must be caught: {problems}");
    // The genuine snapshot is still fully restorable.
    let out_dir = w.path("out");
    w.ok(&[
        "restore",
        "--vault",
        w.vault_str(),
        &w.snapshot_ids().iter().find(|i| !i.starts_with("0000")).unwrap().clone(),
        "--to",
        out_dir.to_str().unwrap(),
    ]);
    restore_tests::assert_same_tree(&s.src, &out_dir.join(s.src.strip_prefix("/").unwrap()));
}
