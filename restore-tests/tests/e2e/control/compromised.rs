//! One compromised agent (issue 14): it holds a real agent's certificate and key and speaks the
//! agent protocol itself, so it can send any result for the jobs it is given. The controller
//! accepts a backup result only for the vault, agent and source of the job, and never for a
//! snapshot already claimed: the forged claims are refused, audited and alerted, and the
//! catalog keeps the snapshot under its real source.

use std::time::Duration;

use restore_tests::plane::{Plane, VaultSpec};
use tresor_proto::pb;
use tresor_proto::pb::agent_service_client::AgentServiceClient;

fn claim(job: &pb::Job, snapshot_id: &str, vault_id: &str) -> pb::JobResult {
    let meta = pb::SnapshotMeta {
        snapshot_id: snapshot_id.into(),
        vault_id: vault_id.into(),
        agent: "a2".into(),
        source: "b".into(),
        ..Default::default()
    };
    pb::JobResult {
        r#ref: job.r#ref.clone(),
        error: String::new(),
        kind: Some(pb::job_result::Kind::Backup(pb::BackupResult { snapshot: Some(meta), skipped: vec![] })),
    }
}

/// A plane with agents a1 (the maintainer, source a) and a2 (source b), each with its own key
/// slot in one folder vault `nas`; returns the plane, its directory, the vault and a2's password.
fn two_agents_one_vault() -> (Plane, std::path::PathBuf, VaultSpec, std::path::PathBuf) {
    let mut p = Plane::start("");
    let root = p.dir.path().to_path_buf();
    let nas = p.folder_vault("vault", "nas", "a1");
    p.add_agent("a1", std::slice::from_ref(&nas), &[]);
    let pw2 = p.password_file("a2");
    p.add_key(&nas.url, &nas.password_file, &pw2, &[]);
    p.add_agent("a2", &[VaultSpec { password_file: pw2.clone(), ..nas.clone() }], &[]);
    for d in ["a", "b"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
        restore_tests::random_file(&root.join(d).join("x.bin"), 64 << 10, 7);
    }
    let policy = format!(
        "name = \"c\"\n[defaults]\nschedule = \"0 0 1 1 *\"\nretention = {{ keep_last = 5 }}\n[[vault]]\nname = \"nas\"\nmaintainer = \"a1\"\n[[source]]\nagent = \"a1\"\nname = \"a\"\nvault = \"nas\"\npaths = [\"{}\"]\n[[source]]\nagent = \"a2\"\nname = \"b\"\nvault = \"nas\"\npaths = [\"{}\"]\n",
        root.join("a").display(),
        root.join("b").display()
    );
    assert!(p.apply_policy(&policy).status.success());
    (p, root, nas, pw2)
}

#[test]
fn a_compromised_agent_cannot_claim_another_sources_snapshot_or_vault() {
    let (mut p, root, _nas, _pw2) = two_agents_one_vault();
    p.ctl_ok(&["backup", "a1/a"]);
    let theirs = p.snapshots("a1/a");
    assert_eq!(theirs.len(), 1);
    let (s1, vault_id) =
        (theirs[0]["snapshot_id"].as_str().unwrap().to_string(), theirs[0]["vault_id"].as_str().unwrap().to_string());

    // a2 is taken over: its daemon is gone, its identity answers the job stream.
    let state = p.agents["a2"].state.clone();
    p.kill_agent("a2");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let refusals = rt.block_on(async {
        let mut client = AgentServiceClient::new(p.channel(Some(&state)).await);
        let mut jobs = client.jobs(pb::JobsRequest {}).await.unwrap().into_inner();
        p.ctl_ok(&["backup", "a2/b", "--detach"]);
        let job = tokio::time::timeout(Duration::from_secs(60), jobs.message()).await.unwrap().unwrap().unwrap();
        let mut refusals = Vec::new();
        // Another source's snapshot; a fresh id in a vault the job is not for.
        for result in [claim(&job, &s1, &vault_id), claim(&job, &"ab".repeat(32), &"cd".repeat(32))] {
            let e = client.finish(result).await.expect_err("a forged claim is refused");
            refusals.push((e.code(), e.message().to_string()));
        }
        refusals
    });
    assert_eq!(refusals[0].0, tonic::Code::InvalidArgument);
    assert!(refusals[0].1.contains("already claimed by a1/a"), "{refusals:?}");
    assert!(refusals[1].1.contains("names vault") && refusals[1].1.contains("backs up to vault nas"), "{refusals:?}");

    // The catalog still holds the snapshot under its own source, with its receipt; b has none.
    let held = p.snapshots("a1/a");
    assert_eq!(held.len(), 1);
    assert_eq!((held[0]["snapshot_id"].as_str(), held[0]["agent"].as_str()), (Some(s1.as_str()), Some("a1")));
    assert!(held[0]["committed_unix"].as_i64().is_some(), "{held:?}");
    assert!(p.snapshots("a2/b").is_empty());

    // Alerted on the attacker's source, and audited.
    let status = p.ctl(&["status"]);
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(out.contains("a2/b: a backup result of its agent was refused"), "{out}");
    let ex = root.join("export");
    p.ctl_ok(&["audit", "export", "--out", ex.to_str().unwrap()]);
    let log = std::fs::read_to_string(ex.join("audit.jsonl")).unwrap();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("\"backup.result_refused\"")).collect();
    assert_eq!(refused.len(), 2, "{log}");
    assert!(refused.iter().all(|l| l.contains("\"agent:a2\"") && l.contains("\"refused\"")), "{refused:?}");
}

/// Revoking an agent at the controller revokes its key: the maintainer removes the slot the
/// agent reported, with a new key epoch, audited. The revoked agent's password, even with a copy
/// of its slot put back, reads the snapshots written before and none written after.
#[test]
fn revoking_an_agent_removes_its_key_slot_with_a_new_epoch() {
    let (p, root, nas, pw2) = two_agents_one_vault();
    p.ctl_ok(&["backup", "a2/b"]);
    let before = p.snapshots("a2/b")[0]["snapshot_id"].as_str().unwrap().to_string();
    let vault_dir = std::path::PathBuf::from(&nas.url);
    let slot_files = || restore_tests::files_below(&vault_dir.join("keys"));
    let copies: Vec<(std::path::PathBuf, Vec<u8>)> =
        slot_files().into_iter().map(|f| (f.clone(), std::fs::read(&f).unwrap())).collect();
    assert_eq!(copies.len(), 3, "a1's, a2's and the escrow slot");

    p.ctl_ok(&["agent", "revoke", "a2"]);
    let record = vault_dir.join("epochs").join("0000000002");
    restore_tests::plane::wait_for("the maintainer's prune to begin key epoch 2", Duration::from_secs(120), || {
        record.exists() && slot_files().len() == 2
    });
    restore_tests::plane::wait_for("the revocation to leave the alerts", Duration::from_secs(60), || {
        !String::from_utf8_lossy(&p.ctl(&["status"]).stdout).contains("key slots of revoked agents")
    });
    let gone: Vec<_> = copies.iter().filter(|(f, _)| !f.exists()).collect();
    assert_eq!(gone.len(), 1, "exactly one slot removed");
    let ex = root.join("export");
    p.ctl_ok(&["audit", "export", "--out", ex.to_str().unwrap()]);
    let log = std::fs::read_to_string(ex.join("audit.jsonl")).unwrap();
    let slot = gone[0].0.file_name().unwrap().to_str().unwrap();
    assert!(
        log.lines().any(|l| l.contains("\"key.revoke\"") && l.contains(slot) && l.contains("of agent a2")),
        "{log}"
    );
    assert!(log.lines().any(|l| l.contains("\"key.epoch\"") && l.contains(slot) && l.contains("key epoch 2")), "{log}");

    // New data under epoch 2; the attacker puts its slot back and tries both snapshots.
    p.ctl_ok(&["backup", "a1/a"]);
    let after = p.snapshots("a1/a")[0]["snapshot_id"].as_str().unwrap().to_string();
    std::fs::write(&gone[0].0, &gone[0].1).unwrap();
    let restore = |snap: &str, to: &str| {
        std::process::Command::new(restore_tests::bin("tresor-agent"))
            .env("TRESOR_CACHE_DIR", root.join("attacker-cache"))
            .args(["restore", "--vault", &nas.url, snap, "--to"])
            .arg(root.join(to))
            .arg("--password-file")
            .arg(&pw2)
            .output()
            .unwrap()
    };
    let old = restore(&before, "old");
    assert!(old.status.success(), "{}", String::from_utf8_lossy(&old.stderr));
    let new = restore(&after, "new");
    let err = String::from_utf8_lossy(&new.stderr);
    assert_eq!(new.status.code(), Some(12), "{err}");
    assert!(err.contains("key epoch 2"), "{err}");
}

/// A key holder plants an index segment that makes live packs look unreferenced. Through the
/// controller: the maintainer's prune keeps them, each finding is audited (`gc.kept`), and the
/// vault is alerted until a clean sweep after the operator removes the named segment; then the
/// snapshot restores whole.
#[test]
fn a_planted_segment_is_audited_and_alerted_by_the_controller_and_nothing_live_is_swept() {
    use crate::gc::{Planted, plant_decoy_segment};
    let mut p = Plane::start("");
    let root = p.dir.path().to_path_buf();
    let nas = p.folder_vault("vault", "nas", "a1");
    p.add_agent("a1", std::slice::from_ref(&nas), &[]);
    let src = root.join("a");
    std::fs::create_dir_all(&src).unwrap();
    restore_tests::random_file(&src.join("x.bin"), 40 << 20, 9);
    let policy = format!(
        "name = \"c\"\n[defaults]\nschedule = \"0 0 1 1 *\"\nretention = {{ keep_last = 5 }}\n[[vault]]\nname = \"nas\"\nmaintainer = \"a1\"\ngc_grace = \"0s\"\n[[source]]\nagent = \"a1\"\nname = \"a\"\nvault = \"nas\"\npaths = [\"{}\"]\n",
        src.display()
    );
    assert!(p.apply_policy(&policy).status.success());
    let data = std::path::PathBuf::from(&nas.url).join("data");
    p.ctl_ok(&["backup", "a1/a"]);
    let first = restore_tests::files_below(&data);
    restore_tests::random_file(&src.join("y.bin"), 1 << 20, 10);
    p.ctl_ok(&["backup", "a1/a"]);
    let second: Vec<_> = restore_tests::files_below(&data).into_iter().filter(|f| !first.contains(f)).collect();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut pw = std::fs::read(&nas.password_file).unwrap();
    while pw.last() == Some(&b'\n') {
        pw.pop();
    }
    let secret = tresor_vault::Secret::Password(zeroize::Zeroizing::new(pw));
    let v =
        rt.block_on(tresor_vault::Vault::open(tresor_vault::backend::from_url(&nas.url).unwrap(), &secret)).unwrap();
    let (planted, victims) = plant_decoy_segment(&v, &first, &second[0], Planted::DataPacksWithDecoyLengths);

    let marked = p.ctl_json(&["prune", "nas"]);
    assert_eq!(marked["state"], "succeeded", "{marked}");
    let swept = p.ctl_json(&["prune", "nas"]);
    assert_eq!((swept["state"].as_str(), swept["packs_deleted"].as_u64()), (Some("succeeded"), Some(0)), "{swept}");
    assert!(victims.iter().all(|f| f.exists()), "the live packs are still there");

    let status = String::from_utf8_lossy(&p.ctl(&["status"]).stdout).into_owned();
    assert!(status.contains("vault nas: GC kept packs a planted or damaged index segment"), "{status}");
    let ex = root.join("export");
    p.ctl_ok(&["audit", "export", "--out", ex.to_str().unwrap()]);
    let log = std::fs::read_to_string(ex.join("audit.jsonl")).unwrap();
    let kept: Vec<&str> = log.lines().filter(|l| l.contains("\"gc.kept\"")).collect();
    assert!(kept.iter().any(|l| l.contains(&planted.to_string())), "the planted segment is named: {kept:?}");
    assert!(kept.iter().all(|l| l.contains("\"agent:a1\"") && l.contains("\"vault nas\"")), "{kept:?}");

    // The operator's remedy: remove the named segment. The next sweep is clean, which clears
    // the alert, and every byte is still there.
    std::fs::remove_file(std::path::PathBuf::from(&nas.url).join("index").join(planted.to_string())).unwrap();
    let clean = p.ctl_json(&["prune", "nas"]);
    assert_eq!((clean["state"].as_str(), clean["packs_deleted"].as_u64()), (Some("succeeded"), Some(0)), "{clean}");
    restore_tests::plane::wait_for("the alert to clear", Duration::from_secs(60), || {
        !String::from_utf8_lossy(&p.ctl(&["status"]).stdout).contains("GC kept packs")
    });
    let target = root.join("restored");
    p.ctl_ok(&["restore", "a1/a", "--to", target.to_str().unwrap()]);
    restore_tests::assert_same_tree(&src, &target.join(src.strip_prefix("/").unwrap()));
}
