//! Key slots: parameters written by init, add, list, remove, rotate.

use restore_tests::World;

#[test]
fn init_writes_argon2id_64mib_3_passes() {
    let w = World::new();
    let slots = w.json(&["key", "list", "--vault", w.vault_str()]);
    let slots = slots.as_array().unwrap();
    assert_eq!(slots.len(), 2, "a password slot and an escrow slot: {slots:?}");
    for s in slots {
        assert_eq!(s["kdf"]["algorithm"], "argon2id");
        assert!(s["kdf"]["memory_kib"].as_u64().unwrap() >= 64 * 1024);
        assert!(s["kdf"]["iterations"].as_u64().unwrap() >= 3);
    }
    assert!(slots.iter().any(|s| s["kind"] == "escrow"));
    // The stored slot objects carry the same parameters (what a fresh machine would read).
    let files = restore_tests::files_below(&w.vault.join("keys"));
    assert_eq!(files.len(), slots.len(), "one stored object per slot: {files:?}");
    for f in files {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        assert_eq!(v["kdf"]["algorithm"], "argon2id");
        assert_eq!(v["kdf"]["memory_kib"], 65536);
        assert_eq!(v["kdf"]["iterations"], 3);
    }
}

#[test]
fn add_rotate_remove() {
    let w = World::new();
    let newpw = w.path("new.pw");
    std::fs::write(&newpw, "second password\n").unwrap();
    let added = w.json(&[
        "key",
        "add",
        "--vault",
        w.vault_str(),
        "--new-password-file",
        newpw.to_str().unwrap(),
        "--label",
        "ops",
    ]);
    let added_id = added["added"].as_str().unwrap().to_string();

    // The new password opens the vault.
    let out = w.run_with_password_file(&newpw, &["snapshots", "--vault", w.vault_str()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Rotate the original password: the old one stops working, the new one works.
    let rotated = w.path("rotated.pw");
    std::fs::write(&rotated, "third password").unwrap();
    w.json(&["key", "rotate", "--vault", w.vault_str(), "--new-password-file", rotated.to_str().unwrap()]);
    let old = w.run(&["snapshots", "--vault", w.vault_str()]);
    assert_eq!(old.status.code(), Some(12), "old password must be refused after rotate");
    let out = w.run_with_password_file(&rotated, &["--json", "key", "list", "--vault", w.vault_str()]);
    assert!(out.status.success());
    let slots: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(slots.as_array().unwrap().len(), 3);

    // Remove the added slot; refuse to remove the last escrow slot.
    let out = w.run_with_password_file(&rotated, &["key", "remove", "--vault", w.vault_str(), &added_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let escrow_id =
        slots.as_array().unwrap().iter().find(|s| s["kind"] == "escrow").unwrap()["id"].as_str().unwrap().to_string();
    let out = w.run_with_password_file(&rotated, &["key", "remove", "--vault", w.vault_str(), &escrow_id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("last"), "{}", String::from_utf8_lossy(&out.stderr));
}
