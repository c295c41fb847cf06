//! The golden vault: a small vault written by format version 1 and committed under
//! `restore-tests/golden/vault-v1/`, with two snapshots of a tree holding every entry kind (files,
//! an empty file, directories, a symbolic link, a hard link, a named pipe) and a safetensors
//! model, the controller's signed receipts, a signed drill report and an audit checkpoint.
//! Every later version must open it, check every byte of it, restore both snapshots exactly and
//! verify its signed documents: a format change that breaks this broke old vaults.
//!
//! `write_golden_vault` made it (ignored; run by hand only for a new format version, into a new
//! directory: `GOLDEN_VAULT_OUT=restore-tests/golden/vault-vN cargo nextest run --run-ignored
//! only -E 'test(write_golden_vault)'`).

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use restore_tests::{EntryFacts, World, ctl_offline, tree_facts};
use serde_json::{Value, json};
use tresor_proto::prost::Message;

use crate::drills::{Src, apply, drill, plane, policy};

/// Where the backed-up tree stood (recorded in the snapshots; restores recreate it below --to).
const SOURCE: &str = "/tmp/tresor-golden/src";
const PASSWORD: &str = "golden vault of format 1";

fn committed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden").join("vault-v1")
}

/// One entry as a line of `golden.json` (stable, readable in a diff).
fn line(f: &EntryFacts) -> String {
    let xattrs: Vec<String> =
        f.xattrs.iter().map(|(k, v)| format!("{}={}", String::from_utf8_lossy(k), hex::encode(v))).collect();
    let group = f.link_group.as_deref().map(|g| String::from_utf8_lossy(g).into_owned()).unwrap_or_default();
    format!(
        "{} mode={:o} uid={} gid={} size={} mtime_ns={} link_group={group:?} xattrs=[{}]",
        f.kind,
        f.mode,
        f.uid,
        f.gid,
        f.size,
        f.mtime_ns,
        xattrs.join(",")
    )
}

fn listing(root: &Path) -> BTreeMap<String, String> {
    tree_facts(root)
        .into_iter()
        .filter(|(p, _)| !p.is_empty())
        .map(|(p, f)| (String::from_utf8_lossy(&p).into_owned(), line(&f)))
        .collect()
}

/// Text that zstd compresses well, so the committed packs stay small, in several chunks.
fn text(lines: usize, salt: &str) -> Vec<u8> {
    (0..lines).map(|i| format!("{salt} line {i:07} of the golden vault, format version 1\n")).collect::<String>().into()
}

/// A two-tensor safetensors file (header length, JSON header, little-endian f32 data).
fn safetensors() -> Vec<u8> {
    let header = br#"{"bias":{"dtype":"F32","shape":[2],"data_offsets":[16,24]},"weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    for v in [1.0f32, -2.5, 0.125, 4.0, 0.5, -0.75] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn make_tree(root: &Path, generation: u32) {
    std::fs::create_dir_all(root.join("models")).unwrap();
    std::fs::create_dir_all(root.join("dir/sub/deeper")).unwrap();
    std::fs::write(root.join("a.txt"), format!("hello, generation {generation}\n")).unwrap();
    std::fs::write(root.join("big.txt"), text(60_000, "big")).unwrap();
    std::fs::write(root.join("dir/copy-of-big.txt"), text(60_000, "big")).unwrap();
    std::fs::write(root.join("dir/sub/empty"), b"").unwrap();
    std::fs::write(root.join("dir/tool.sh"), b"#!/bin/sh\necho golden\n").unwrap();
    std::fs::set_permissions(root.join("dir/tool.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::set_permissions(root.join("dir/sub/deeper"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(root.join("models/tiny.safetensors"), safetensors()).unwrap();
    let _ = std::fs::remove_file(root.join("link"));
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
    let _ = std::fs::remove_file(root.join("hard"));
    std::fs::hard_link(root.join("a.txt"), root.join("hard")).unwrap();
    if !root.join("pipe").exists() {
        let out = std::process::Command::new("mkfifo").arg(root.join("pipe")).output().unwrap();
        assert!(out.status.success());
    }
}

#[test]
#[ignore = "writes the committed golden vault; run by hand for a new format version"]
fn write_golden_vault() {
    let out = PathBuf::from(std::env::var("GOLDEN_VAULT_OUT").expect("GOLDEN_VAULT_OUT=DIR (a new directory)"));
    assert!(!out.exists(), "{} exists: a golden vault is never rewritten", out.display());
    let src = Path::new(SOURCE);
    let _ = std::fs::remove_dir_all(src.parent().unwrap());
    make_tree(src, 1);

    let (p, nas) = plane("", "");
    // A key slot of the golden password beside the plane's own.
    let golden_password = p.dir.path().join("golden.password");
    std::fs::write(&golden_password, PASSWORD).unwrap();
    p.add_key(&nas.url, &nas.password_file, &golden_password, &[]);
    apply(&p, &policy(&[Src("app", vec![SOURCE.into()])], ""));
    let mut snapshots = Vec::new();
    p.ctl_ok(&["backup", "gpu-01/app"]);
    snapshots.push(json!({"entries": listing(src)}));
    make_tree(src, 2);
    std::fs::remove_file(src.join("dir/sub/empty")).unwrap();
    p.ctl_ok(&["backup", "gpu-01/app"]);
    snapshots.push(json!({"entries": listing(src)}));
    let ids: Vec<String> =
        p.snapshots("gpu-01/app").iter().map(|s| s["snapshot_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 2);
    for (s, id) in snapshots.iter_mut().zip(&ids) {
        s["id"] = json!(id);
    }
    let r = drill(&p, "gpu-01/app", &[]);
    assert_eq!(r.report["verdict"], "PASS", "{}", r.report);

    std::fs::create_dir_all(&out).unwrap();
    let copied = std::process::Command::new("cp").arg("-a").arg(&nas.url).arg(out.join("vault")).output().unwrap();
    assert!(copied.status.success());
    let state = p.dir.path().join("controller");
    std::fs::copy(state.join("report-signing.pub.pem"), out.join("report-signing.pub.pem")).unwrap();
    let receipt_key = std::fs::read_to_string(state.join("receipt-signing.key")).unwrap();
    let receipt_key: [u8; 32] = hex::decode(receipt_key.trim()).unwrap().try_into().unwrap();
    let receipt_pub = ed25519_dalek::SigningKey::from_bytes(&receipt_key).verifying_key();
    let golden = json!({
        "format_version": 1,
        "password": PASSWORD,
        "source": SOURCE,
        "receipt_public_key": hex::encode(receipt_pub.to_bytes()),
        "drill_id": r.report["drill_id"],
        "snapshots": snapshots,
    });
    std::fs::write(out.join("golden.json"), serde_json::to_string_pretty(&golden).unwrap() + "\n").unwrap();
    let _ = std::fs::remove_dir_all(src.parent().unwrap());
}

#[test]
fn the_golden_vault_of_format_1_opens_checks_restores_and_its_documents_verify() {
    let golden: Value = serde_json::from_slice(&std::fs::read(committed().join("golden.json")).unwrap()).unwrap();
    // A copy: nothing a test does may change the committed bytes.
    let mut w = World::empty();
    std::fs::remove_dir(&w.vault).unwrap();
    let copied =
        std::process::Command::new("cp").arg("-a").arg(committed().join("vault")).arg(&w.vault).output().unwrap();
    assert!(copied.status.success(), "{}", String::from_utf8_lossy(&copied.stderr));
    w.password = golden["password"].as_str().unwrap().into();
    let vault = w.url.clone();

    // Exit 0 is a clean check; every chunk of every pack was decrypted and hashed.
    let check = w.json(&["check", "--vault", &vault, "--read-data"]);
    assert!(check["chunks_verified"].as_u64().unwrap_or(0) > 0, "{check}");

    let listed = w.json(&["snapshots", "--vault", &vault]);
    let listed: Vec<&str> = listed.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    let snapshots = golden["snapshots"].as_array().unwrap();
    let want: Vec<&str> = snapshots.iter().map(|s| s["id"].as_str().unwrap()).collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    let mut want_sorted = want.clone();
    want_sorted.sort_unstable();
    assert_eq!(sorted, want_sorted, "the vault lists the golden snapshots");

    let source = golden["source"].as_str().unwrap().trim_start_matches('/');
    for (i, s) in snapshots.iter().enumerate() {
        let to = w.path(&format!("restored-{i}"));
        w.ok(&["restore", "--vault", &vault, s["id"].as_str().unwrap(), "--to", to.to_str().unwrap()]);
        let got = listing(&to.join(source));
        let want: BTreeMap<String, String> = serde_json::from_value(s["entries"].clone()).unwrap();
        assert_eq!(got, want, "snapshot {} restores exactly as it was written", s["id"]);
    }

    // The drill report and the audit checkpoint, signed by the controller that wrote them.
    let docs = w.path("documents");
    w.ok(&["documents", "--vault", &vault, "--out", docs.to_str().unwrap()]);
    let pubkey = committed().join("report-signing.pub.pem");
    let report = docs.join("reports").join(format!("{}.json", golden["drill_id"].as_str().unwrap()));
    let out = ctl_offline(&["report", "verify", report.to_str().unwrap(), "--pubkey", pubkey.to_str().unwrap()]);
    assert!(out.status.success(), "the report verifies: {}", String::from_utf8_lossy(&out.stderr));
    let checkpoints: Vec<_> = std::fs::read_dir(docs.join("audit")).unwrap().flatten().collect();
    assert!(!checkpoints.is_empty(), "an audit checkpoint is stored");
    for c in checkpoints {
        let doc: Value = serde_json::from_slice(&std::fs::read(c.path()).unwrap()).unwrap();
        let key = tresor_report::sign::public_key_from_pem(&std::fs::read_to_string(&pubkey).unwrap()).unwrap();
        tresor_report::sign::verify(&doc, &key)
            .unwrap_or_else(|e| panic!("{} verifies: {e}", c.path().as_os_str().to_string_lossy()));
    }

    // Each snapshot's receipt names it, its vault, agent and source, under the controller's key.
    let key_bytes: [u8; 32] = hex::decode(golden["receipt_public_key"].as_str().unwrap()).unwrap().try_into().unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key_bytes).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let receipts = rt.block_on(async {
        let secret = tresor_vault::Secret::Password(zeroize::Zeroizing::new(w.password.clone().into_bytes()));
        let v = tresor_vault::Vault::open(tresor_vault::backend::from_url(&vault).unwrap(), &secret).await.unwrap();
        let vault_id = v.config().vault_id.to_string();
        (vault_id, v.receipts().await.unwrap())
    });
    let (vault_id, receipts) = receipts;
    assert_eq!(receipts.len(), snapshots.len(), "one receipt per snapshot");
    for (id, body) in receipts {
        let r = tresor_proto::pb::Receipt::decode(body.unwrap().as_slice()).unwrap();
        assert_eq!((r.snapshot_id.as_str(), r.vault_id.as_str()), (id.to_string().as_str(), vault_id.as_str()));
        assert_eq!((r.agent.as_str(), r.source.as_str()), ("gpu-01", "app"));
        let sig = ed25519_dalek::Signature::from_slice(&r.signature).unwrap();
        key.verify_strict(&tresor_proto::receipt_signing_bytes(&r), &sig).expect("the receipt verifies");
    }
    let names: Vec<_> = std::fs::read_dir(&w.vault).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(names.iter().any(|n| n.as_bytes() == b"config"), "{names:?}");

    // Its slots were made before key epochs: a new epoch is refused until the escrow slot is
    // upgraded (the offline key must keep opening new data), and the vault reads as before.
    let out = w.run(&["key", "rotate", "--master", "--vault", &vault]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("escrow") && err.contains("key upgrade"), "{err}");
    assert!(!w.vault.join("epochs").exists(), "nothing of an epoch was written");
    let again = w.json(&["check", "--vault", &vault, "--read-data"]);
    assert_eq!(again["chunks_verified"], check["chunks_verified"], "{again}");
    w.password.clear();
}
