//! Disaster recovery: the storage location and the escrow key file are all that is left.

use restore_tests::{World, assert_same_tree, random_file};

#[test]
fn restore_with_only_storage_and_escrow_key() {
    let w = World::new();
    let src = w.path("src");
    random_file(&src.join("model.bin"), 3 << 20, 1);
    std::fs::write(src.join("notes.txt"), "keep me\n").unwrap();
    w.backup(&[&src]);

    // A fresh machine: no password, no cache, no controller. Copy the escrow key and the vault
    // elsewhere and forget everything else.
    let fresh = tempfile::tempdir().unwrap();
    let vault = fresh.path().join("vault-copy");
    let copy = std::process::Command::new("cp").arg("-a").arg(&w.vault).arg(&vault).status().unwrap();
    assert!(copy.success());
    let key = fresh.path().join("escrow.key");
    std::fs::copy(w.escrow(), &key).unwrap();
    let out = fresh.path().join("restored");
    let run = std::process::Command::new(restore_tests::bin("tresor-agent"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", fresh.path())
        .args([
            "restore",
            "--vault",
            vault.to_str().unwrap(),
            "latest",
            "--to",
            out.to_str().unwrap(),
            "--escrow-key-file",
            key.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
}

#[test]
fn escrow_key_of_another_vault_is_named_as_such() {
    let a = World::new();
    let b = World::new();
    let out = b
        .agent()
        .env_remove("TRESOR_PASSWORD")
        .args(["--escrow-key-file", a.escrow().to_str().unwrap(), "snapshots", "--vault", b.vault_str()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to vault") && err.contains("not to vault"), "{err}");
}
