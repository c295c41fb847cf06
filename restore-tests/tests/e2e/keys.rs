//! Key slots: parameters written by init, add, list, remove, rotate.

use restore_tests::World;
use tresor_vault::crypto::ObjectType;
use tresor_vault::{Secret, Vault, backend, object};

/// The vault's stored `config` bytes and its id, as someone with storage access reads them.
fn stored_config(w: &World) -> (Vec<u8>, tresor_vault::ids::VaultId) {
    let config = std::fs::read(w.vault.join("config")).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&config).unwrap();
    let id = doc["vault_id"].as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no vault id: {doc}"));
    (config, id)
}

/// Argon2id cheap enough for slots a test writes itself (the vault's own slots keep theirs).
fn fast_kdf() -> tresor_vault::keys::KdfParams {
    tresor_vault::keys::KdfParams {
        memory_kib: 8 * 1024,
        iterations: 1,
        ..tresor_vault::keys::KdfParams::recommended()
    }
}

/// `key add` for the password in `file`; returns the new slot's id.
fn add_key(w: &World, file: &std::path::Path, label: &str) -> String {
    let added = w.json(&[
        "key",
        "add",
        "--vault",
        w.vault_str(),
        "--new-password-file",
        file.to_str().unwrap(),
        "--label",
        label,
    ]);
    added["added"].as_str().unwrap().to_string()
}

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
    let added_id = add_key(&w, &newpw, "ops");

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

/// Key epochs: an agent's slot is removed while its holder keeps a copy of the slot object and
/// puts it back. That holder still reads what was written before the removal, and nothing after:
/// not a pack, not an index segment, not a snapshot; nor can it write. The remaining password and
/// the escrow key read both.
#[test]
fn a_removed_key_reads_nothing_written_after_its_removal() {
    let w = World::new();
    let src = w.path("src");
    std::fs::create_dir_all(&src).unwrap();
    restore_tests::random_file(&src.join("before.bin"), 300_000, 1);
    let before = w.backup(&[&src])["snapshot"].as_str().unwrap().to_string();
    let agent_pw = w.path("agent.pw");
    std::fs::write(&agent_pw, "db-01 agent secret").unwrap();
    let slot = add_key(&w, &agent_pw, "db-01");
    let kept_copy = std::fs::read(w.vault.join("keys").join(&slot)).unwrap();
    let stored_before: std::collections::BTreeSet<_> = restore_tests::files_below(&w.vault).into_iter().collect();

    let removed = w.json(&["key", "remove", "--vault", w.vault_str(), &slot]);
    assert_eq!(removed["epoch"], 2, "{removed}");
    assert!(removed["left_out"].as_array().unwrap().iter().any(|s| s == slot.as_str()), "{removed}");
    assert_eq!(removed["carried"].as_array().unwrap().len(), 2, "the password and escrow slots: {removed}");
    restore_tests::random_file(&src.join("after.bin"), 300_000, 2);
    let after = w.backup(&[&src])["snapshot"].as_str().unwrap().to_string();
    std::fs::write(w.vault.join("keys").join(&slot), &kept_copy).unwrap();

    // Before the removal: still readable with the removed key.
    let old = w.path("old");
    let out = w.run_with_password_file(
        &agent_pw,
        &["restore", "--vault", w.vault_str(), &before, "--to", old.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(old.join(src.strip_prefix("/").unwrap()).join("before.bin").is_file());

    // After: refused by name, exit 12, nothing placed.
    let new = w.path("new");
    let out = w.run_with_password_file(
        &agent_pw,
        &["restore", "--vault", w.vault_str(), &after, "--to", new.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(12), "{err}");
    assert!(err.contains("key epoch 2"), "{err}");
    assert!(!new.join(src.strip_prefix("/").unwrap()).join("after.bin").exists());
    let out = w.run_with_password_file(&agent_pw, &["backup", "--vault", w.vault_str(), src.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot write"), "{err}");
    // Nor does it take what it cannot open for damage.
    let out = w.run_with_password_file(&agent_pw, &["check", "--vault", w.vault_str(), "--read-data"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && err.contains("check needs a key slot that reaches"), "{err}");

    // Every pack, index segment and snapshot written after the removal, read with the library.
    let written_after: Vec<_> =
        restore_tests::files_below(&w.vault).into_iter().filter(|p| !stored_before.contains(p)).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let open = |pw: &[u8]| {
        let secret = Secret::Password(zeroize::Zeroizing::new(pw.to_vec()));
        rt.block_on(Vault::open(backend::from_url(w.vault_str()).unwrap(), &secret)).unwrap()
    };
    let revoked = open(b"db-01 agent secret");
    let owner = open(w.password.as_bytes());
    assert_eq!((revoked.key_epoch(), owner.key_epoch()), (1, 2));
    let mut kinds = std::collections::BTreeSet::new();
    for path in &written_after {
        let rel = path.strip_prefix(&w.vault).unwrap().to_str().unwrap().to_string();
        let top = rel.split('/').next().unwrap().to_string();
        let name = path.file_name().unwrap().to_str().unwrap();
        let (by_revoked, by_owner) = match top.as_str() {
            "data" => {
                let id: tresor_vault::ids::PackId = name.parse().unwrap();
                let read = |v: &Vault| rt.block_on(v.read_pack_directory(&id)).map(|_| ());
                (read(&revoked), read(&owner))
            }
            "index" => {
                let bytes = std::fs::read(path).unwrap();
                let read = |v: &Vault| {
                    object::open_bytes(v.keys(), ObjectType::IndexSegment, &bytes).map(|_| ()).map_err(Into::into)
                };
                (read(&revoked), read(&owner))
            }
            "snapshots" => {
                let id: tresor_vault::ids::SnapshotId = name.parse().unwrap();
                let read = |v: &Vault| rt.block_on(v.load_snapshot(&id)).map(|_| ());
                (read(&revoked), read(&owner))
            }
            _ => continue,
        };
        assert!(by_owner.is_ok(), "{rel} opens with the remaining password: {by_owner:?}");
        let e = by_revoked.expect_err(&format!("{rel} must not open with the removed key"));
        assert!(matches!(e, tresor_vault::Error::KeyEpoch(_)), "{rel}: {e}");
        kinds.insert(top);
    }
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["data", "index", "snapshots"], "{written_after:?}");

    // The escrow key reads the new snapshot.
    let by_escrow = w.path("by-escrow");
    let out = w
        .agent()
        .env_remove("TRESOR_PASSWORD")
        .args(["--escrow-key-file", w.escrow().to_str().unwrap()])
        .args(["restore", "--vault", w.vault_str(), &after, "--to", by_escrow.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    restore_tests::assert_same_tree(&src, &by_escrow.join(src.strip_prefix("/").unwrap()));
}

/// `key rotate --master` starts an epoch without removing anyone: every slot made since key
/// epochs is carried, data of both epochs restores, and a second rotation links back through
/// both. A vault made before key epochs (the golden vault's format) is covered in golden_vault.rs.
#[test]
fn master_rotation_carries_every_slot_and_older_epochs_stay_readable() {
    let w = World::new();
    let src = w.path("src");
    std::fs::create_dir_all(&src).unwrap();
    restore_tests::random_file(&src.join("one.bin"), 200_000, 3);
    let first = w.backup(&[&src])["snapshot"].as_str().unwrap().to_string();
    for expected in [2, 3] {
        let r = w.json(&["key", "rotate", "--master", "--vault", w.vault_str()]);
        assert_eq!(r["epoch"], expected, "{r}");
        assert!(r["left_out"].as_array().unwrap().is_empty(), "{r}");
    }
    restore_tests::random_file(&src.join("two.bin"), 200_000, 4);
    let last = w.backup(&[&src])["snapshot"].as_str().unwrap().to_string();
    for (snap, to) in [(&first, "r1"), (&last, "r2")] {
        w.ok(&["restore", "--vault", w.vault_str(), snap, "--to", w.path(to).to_str().unwrap()]);
    }
    restore_tests::assert_same_tree(&src, &w.path("r2").join(src.strip_prefix("/").unwrap()));
    let check = w.json(&["check", "--vault", w.vault_str(), "--read-data"]);
    assert!(check["problems"].as_array().unwrap().is_empty(), "{check}");
    assert!(check["chunks_verified"].as_u64().unwrap() > 0, "{check}");
    let list = w.ok(&["key", "list", "--vault", w.vault_str()]);
    assert!(list.starts_with("key epoch 3"), "{list}");
}

/// `key remove` killed between the new epoch's record and the slot's deletion: the slot is
/// already left out (its secret opens read-only), and running the removal again finishes it.
#[test]
fn a_removal_killed_after_its_epoch_began_leaves_the_slot_stranded_and_finishes_on_a_rerun() {
    let w = World::new();
    let other = w.path("other.pw");
    std::fs::write(&other, "someone else").unwrap();
    let slot = add_key(&w, &other, "");
    let killed = w
        .agent()
        .env("TRESOR_FAILPOINTS", "remove-after-epoch=kill")
        .args(["key", "remove", "--vault", w.vault_str(), &slot])
        .output()
        .unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&killed.status), Some(9), "killed at the failpoint");
    assert!(w.vault.join("epochs").join("0000000002").is_file());
    assert!(w.vault.join("keys").join(&slot).is_file(), "the slot is still there");
    let out = w.run_with_password_file(&other, &["key", "list", "--vault", w.vault_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("cannot write") && text.contains("left out of key epoch 2"),
        "{text}"
    );
    // A rotation before the removal is finished does not carry the stranded slot back in.
    let rotated = w.json(&["key", "rotate", "--master", "--vault", w.vault_str()]);
    assert_eq!(rotated["epoch"], 3, "{rotated}");
    assert!(rotated["left_out"].as_array().unwrap().iter().any(|s| s == slot.as_str()), "{rotated}");
    let done = w.json(&["key", "remove", "--vault", w.vault_str(), &slot]);
    assert_eq!(done["epoch"], 4, "{done}");
    assert!(!w.vault.join("keys").join(&slot).exists());
    let out = w.run_with_password_file(&other, &["snapshots", "--vault", w.vault_str()]);
    assert_eq!(out.status.code(), Some(12), "the slot is gone: {}", String::from_utf8_lossy(&out.stderr));
}

/// The password slots of the vault, opened with the password in `file`.
fn password_slots(w: &World, file: &std::path::Path) -> Vec<String> {
    let out = w.run_with_password_file(file, &["--json", "key", "list", "--vault", w.vault_str()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let slots: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let slots = slots.as_array().unwrap().iter().filter(|s| s["kind"] == "password");
    slots.map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

fn opens_with(w: &World, file: &std::path::Path) -> bool {
    let out = w.run_with_password_file(file, &["snapshots", "--vault", w.vault_str()]);
    match out.status.code() {
        Some(0) => true,
        Some(12) => false,
        c => panic!("opening failed for another reason ({c:?}): {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// `key rotate` killed at each of its steps (each at least once), 10 seeded kills in a row on one vault: the new slot's
/// file written but not linked, linked but not read back, read back but the old slot not
/// deleted, the old slot deleted. The vault always opens with the old or the new password (which
/// ones is exact per step), never neither; a rotation left with both is finished with `key
/// remove`, and the data restores with the password the last round left.
#[test]
fn a_rotation_killed_at_any_step_leaves_the_old_or_the_new_password_working() {
    use rand::{Rng, SeedableRng};
    let seed = restore_tests::seed_from_env("TRESOR_ROTATION_SEED", "rotation kills");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // (failpoint, old password opens, new password opens)
    let steps = [
        ("local-before-link", true, false),
        ("key-add-after-write", true, true),
        ("rotate-before-delete", true, true),
        ("rotate-after-delete", false, true),
    ];
    let w = World::new();
    let src = w.path("src");
    restore_tests::random_file(&src.join("a.bin"), 100_000, 5);
    w.backup(&[&src]);
    let mut current = w.path("password-0");
    std::fs::write(&current, &w.password).unwrap();
    // Every step once, in a seeded order, then seeded picks.
    let mut order: Vec<usize> = (0..steps.len()).collect();
    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
    for round in 1..=10 {
        let pick = order.get(round - 1).copied().unwrap_or_else(|| rng.gen_range(0..steps.len()));
        let (point, old_opens, new_opens) = steps[pick];
        let next = w.path(&format!("password-{round}"));
        std::fs::write(&next, format!("password of round {round}")).unwrap();
        let old_slot = password_slots(&w, &current);
        assert_eq!(old_slot.len(), 1, "one password slot before round {round}: {old_slot:?}");
        let killed = w
            .agent()
            .env_remove("TRESOR_PASSWORD")
            .env("TRESOR_FAILPOINTS", format!("{point}=kill"))
            .arg("--password-file")
            .arg(&current)
            .args(["key", "rotate", "--vault", w.vault_str(), "--new-password-file", next.to_str().unwrap()])
            .output()
            .unwrap();
        let signal = std::os::unix::process::ExitStatusExt::signal(&killed.status);
        assert_eq!(signal, Some(9), "round {round}: killed at {point}: {}", String::from_utf8_lossy(&killed.stderr));
        let opened = (opens_with(&w, &current), opens_with(&w, &next));
        assert!(opened.0 || opened.1, "round {round} (seed {seed}): killed at {point}, neither password opens");
        assert_eq!(opened, (old_opens, new_opens), "round {round} (seed {seed}): killed at {point}");
        if opened == (true, true) {
            let out =
                w.run_with_password_file(&next, &["key", "remove", "--vault", w.vault_str(), old_slot[0].as_str()]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        if new_opens {
            current = next;
        }
    }
    let restored = w.path("restored");
    let out = w.run_with_password_file(
        &current,
        &["restore", "--vault", w.vault_str(), "latest", "--to", restored.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    restore_tests::assert_same_tree(&src, &restored.join(src.strip_prefix("/").unwrap()));
}

/// A vault whose slots were all made before key epochs (version 1, as `init` wrote them before
/// this change): a master rotation is refused until the escrow slot is upgraded with the offline
/// key file (the opener's own slot is upgraded on the way); then both are carried, and the escrow
/// key reads what was written before and after.
#[test]
fn slots_made_before_key_epochs_are_upgraded_then_carried() {
    use tresor_vault::crypto::MasterKey;
    use tresor_vault::keys::{EscrowKey, KeySlot, SlotKind};
    let w = World::new();
    let (config, vault_id) = stored_config(&w);
    for f in restore_tests::files_below(&w.vault.join("keys")) {
        std::fs::remove_file(f).unwrap();
    }
    let master = MasterKey::generate();
    let mac = master.derive().config_mac(&config);
    let kdf = fast_kdf();
    let escrow = EscrowKey::generate();
    for (kind, secret) in [(SlotKind::Password, w.password.as_bytes()), (SlotKind::Escrow, escrow.secret())] {
        let slot = KeySlot::wrap_v1(&vault_id, kind, "before epochs", secret, &master, mac, kdf.clone()).unwrap();
        std::fs::write(w.vault.join("keys").join(&slot.id), slot.to_json()).unwrap();
    }
    std::fs::write(w.escrow(), escrow.to_file_text(&vault_id)).unwrap();
    let src = w.path("src");
    std::fs::create_dir_all(&src).unwrap();
    restore_tests::random_file(&src.join("old.bin"), 100_000, 6);
    let before = w.backup(&[&src])["snapshot"].as_str().unwrap().to_string();

    let out = w.run(&["key", "rotate", "--master", "--vault", w.vault_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("escrow") && err.contains("key upgrade"), "{err}");
    // On the way, the opener's own slot was upgraded (same password); nothing of an epoch exists.
    assert!(err.contains("made before key epochs; replaced it"), "{err}");
    assert!(!w.vault.join("epochs").exists());
    let with_escrow = |args: &[&str]| {
        w.agent()
            .env_remove("TRESOR_PASSWORD")
            .args(["--escrow-key-file", w.escrow().to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let up = with_escrow(&["key", "upgrade", "--vault", w.vault_str()]);
    assert!(up.status.success() && String::from_utf8_lossy(&up.stdout).contains("replaced by"), "{up:?}");
    let rotated = w.run(&["--json", "key", "rotate", "--master", "--vault", w.vault_str()]);
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    let r: serde_json::Value = serde_json::from_slice(&rotated.stdout).unwrap();
    assert_eq!((r["epoch"].as_u64(), r["left_out"].as_array().map(Vec::len)), (Some(2), Some(0)), "{r}");

    restore_tests::random_file(&src.join("new.bin"), 100_000, 7);
    let after = w.backup(&[&src])["snapshot"].as_str().unwrap().to_string();
    for (snap, to) in [(&before, "r-old"), (&after, "r-new")] {
        let out = with_escrow(&["restore", "--vault", w.vault_str(), snap, "--to", w.path(to).to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    restore_tests::assert_same_tree(&src, &w.path("r-new").join(src.strip_prefix("/").unwrap()));
}

/// Someone who can write to the storage but never held the key plants a version 2 slot with a
/// public key of its own. A new epoch is never granted to it (its binding does not verify under
/// the epoch's key), so it opens nothing, before or after the rotation.
#[test]
fn a_slot_planted_without_the_key_is_never_granted_an_epoch() {
    use tresor_vault::crypto::MasterKey;
    use tresor_vault::keys::{KeySlot, SlotKind};
    let w = World::new();
    let (_, vault_id) = stored_config(&w);
    let kdf = fast_kdf();
    let guess = MasterKey::generate();
    let planted =
        KeySlot::wrap_with(&vault_id, SlotKind::Password, "planted", b"attacker", (1, &guess), [0; 32], kdf).unwrap();
    std::fs::write(w.vault.join("keys").join(&planted.id), planted.to_json()).unwrap();
    let rotated = w.json(&["key", "rotate", "--master", "--vault", w.vault_str()]);
    assert!(rotated["left_out"].as_array().unwrap().iter().any(|s| s == planted.id.as_str()), "{rotated}");
    let record = std::fs::read_to_string(w.vault.join("epochs").join("0000000002")).unwrap();
    assert!(!record.contains(&format!("\"{}\":", planted.id)), "no grant to the planted slot: {record}");
    let attacker = w.path("attacker.pw");
    std::fs::write(&attacker, "attacker").unwrap();
    let out = w.run_with_password_file(&attacker, &["snapshots", "--vault", w.vault_str()]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
