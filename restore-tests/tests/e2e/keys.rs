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

/// A key holder plants slots that would make every opener derive with 4 GiB of memory, 64 passes
/// or 16 lanes, and a 1 MiB slot object: each is refused before any work, named in a warning, and
/// the vault opens with its ordinary password as before.
#[test]
fn planted_costly_key_slots_are_refused_before_any_work() {
    let w = World::new();
    let files = restore_tests::files_below(&w.vault.join("keys"));
    let template: serde_json::Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    let plants = [
        ("aaaaaaaaaaaaaaa1", 4 * 1024 * 1024, 3, 1),
        ("aaaaaaaaaaaaaaa2", 65536, 64, 1),
        ("aaaaaaaaaaaaaaa3", 65536, 3, 16),
    ];
    for (id, memory, passes, lanes) in plants {
        let mut slot = template.clone();
        slot["id"] = id.into();
        slot["kind"] = "password".into();
        slot["kdf"]["memory_kib"] = memory.into();
        slot["kdf"]["iterations"] = passes.into();
        slot["kdf"]["parallelism"] = lanes.into();
        std::fs::write(w.vault.join("keys").join(id), serde_json::to_vec(&slot).unwrap()).unwrap();
    }
    let mut huge = template.clone();
    huge["id"] = "aaaaaaaaaaaaaaa4".into();
    huge["label"] = "x".repeat(1 << 20).into();
    std::fs::write(w.vault.join("keys").join("aaaaaaaaaaaaaaa4"), serde_json::to_vec(&huge).unwrap()).unwrap();

    let out = w.run(&["snapshots", "--vault", w.vault_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the vault still opens: {stderr}");
    for id in ["aaaaaaaaaaaaaaa1", "aaaaaaaaaaaaaaa2", "aaaaaaaaaaaaaaa3"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(id) && l.contains("beyond the caps") && l.contains("refused without deriving")),
            "{id} named: {stderr}"
        );
    }
    assert!(
        stderr.contains("aaaaaaaaaaaaaaa4") && stderr.contains("larger than"),
        "the oversized slot is not read: {stderr}"
    );
}
