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

#[test]
fn a_compromised_agent_cannot_claim_another_sources_snapshot_or_vault() {
    let mut p = Plane::start("");
    let root = p.dir.path().to_path_buf();
    let nas = p.folder_vault("vault", "nas", "a1");
    p.add_agent("a1", std::slice::from_ref(&nas), &[]);
    let pw2 = p.password_file("a2");
    p.add_key(&nas.url, &nas.password_file, &pw2, &[]);
    p.add_agent("a2", &[VaultSpec { password_file: pw2, ..nas.clone() }], &[]);
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
