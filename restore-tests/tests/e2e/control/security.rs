//! Refusals: certificates from elsewhere, reused and expired tokens, revoked agents (also after a
//! catalog rebuild), roles below what a call needs, forged receipts, and bad policies.

use std::process::Command;
use std::time::Duration;

use restore_tests::bin;
use restore_tests::plane::{Plane, VaultSpec, wait_for};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn enroll(p: &Plane, token: &std::path::Path, dir: &std::path::Path, name: &str) -> std::process::Output {
    Command::new(bin("tresor-agent"))
        .args(["enroll", "--controller", &p.url(), "--name", name, "--token-file"])
        .arg(token)
        .arg("--state-dir")
        .arg(dir)
        .output()
        .expect("enroll runs")
}

#[test]
fn tokens_roles_and_revocation_are_enforced() {
    let mut p = Plane::start("");
    let root = p.dir.path().to_path_buf();

    // A token works once; the second use is refused and says why.
    let token = p.token_file("agent", Some("10m"));
    assert!(enroll(&p, &token, &root.join("a1"), "one").status.success());
    let reuse = enroll(&p, &token, &root.join("a2"), "two");
    assert!(!reuse.status.success());
    assert!(stderr(&reuse).contains("unknown or already used"), "{}", stderr(&reuse));
    // An expired token is refused as expired.
    let short = p.token_file("agent", Some("1s"));
    std::thread::sleep(Duration::from_millis(2500));
    let expired = enroll(&p, &short, &root.join("a3"), "three");
    assert!(stderr(&expired).contains("expired"), "{}", stderr(&expired));
    // Garbage is not a token.
    std::fs::write(root.join("junk.token"), "hello").unwrap();
    let junk = enroll(&p, &root.join("junk.token"), &root.join("a4"), "four");
    assert!(stderr(&junk).contains("not an enrollment token"), "{}", stderr(&junk));

    // Roles: auditors read, operators back up, only admins administer.
    let auditor = p.token_file("auditor", None);
    let operator = p.token_file("operator", None);
    assert!(p.ctl_as(&auditor, &["agents"]).status.success());
    let denied = p.ctl_as(&auditor, &["token", "create"]);
    assert_eq!(denied.status.code(), Some(6));
    assert!(stderr(&denied).contains("needs the admin role; this token has the auditor role"), "{}", stderr(&denied));
    let denied = p.ctl_as(&operator, &["agent", "revoke", "one"]);
    assert_eq!(denied.status.code(), Some(6));
    assert!(stderr(&denied).contains("needs the admin role; this token has the operator role"), "{}", stderr(&denied));
    let denied = p.ctl_as(&auditor, &["backup", "one/x"]);
    assert!(stderr(&denied).contains("needs the operator role"), "{}", stderr(&denied));
    // A person's token can be listed and withdrawn; the last admin token cannot.
    let list = p.ctl_json(&["token", "list"]);
    let rows = list.as_array().unwrap();
    let auditor_id = rows.iter().find(|t| t["role"] == "auditor").unwrap()["id"].as_str().unwrap().to_string();
    let admin_id = rows.iter().find(|t| t["role"] == "admin").unwrap()["id"].as_str().unwrap().to_string();
    assert!(!list.to_string().contains(std::fs::read_to_string(&auditor).unwrap().trim()), "tokens are never listed");
    p.ctl_ok(&["token", "revoke", &auditor_id]);
    let gone = p.ctl_as(&auditor, &["agents"]);
    assert_eq!(gone.status.code(), Some(6), "a withdrawn token is refused");
    let last = p.ctl(&["token", "revoke", &admin_id]);
    assert!(stderr(&last).contains("last admin token"), "{}", stderr(&last));
    std::fs::write(root.join("forged.token"), "tadm_0000").unwrap();
    let forged = p.ctl_as(&root.join("forged.token"), &["agents"]);
    assert_eq!(forged.status.code(), Some(6));
    assert!(stderr(&forged).contains("unknown or expired"), "{}", stderr(&forged));

    // A revoked agent is refused, also after the catalog is rebuilt.
    let spec = p.folder_vault("vault", "v", "rev");
    p.add_agent("victim", std::slice::from_ref(&spec), &[]);
    p.ctl_ok(&["agent", "revoke", "victim"]);
    wait_for("the revoked agent to be refused", Duration::from_secs(30), || {
        p.agent_log("victim").contains("is revoked") && p.agent_row("victim")["connected"] == false
    });
    p.kill_controller();
    let out = Command::new(bin("tresor-controller"))
        .args(["rebuild-catalog", "--config"])
        .arg(&p.controller_toml)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    p.start_controller();
    assert_eq!(p.agent_row("victim")["revoked"], true);
    let before = p.agent_log("victim").matches("is revoked").count();
    wait_for("the revoked agent to be refused after the rebuild", Duration::from_secs(60), || {
        p.agent_log("victim").matches("is revoked").count() > before
    });
    assert_eq!(p.agent_row("victim")["connected"], false);
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let p = Plane::start("");
    let other = Plane::start("");
    let root = p.dir.path().to_path_buf();
    // Enroll with the other controller, then point the agent at ours, trusting our CA: the
    // handshake must fail because its client certificate is not from our CA.
    let token = other.token_file("agent", None);
    let state = root.join("stranger");
    assert!(enroll(&other, &token, &state, "stranger").status.success());
    std::fs::copy(p.state.join("ca.pem"), state.join("ca.pem")).unwrap();
    let config = root.join("stranger.toml");
    std::fs::write(
        &config,
        format!("name = \"stranger\"\ncontroller = \"{}\"\nstate_dir = \"{}\"\n", p.url(), state.display()),
    )
    .unwrap();
    let log = std::fs::File::create(root.join("stranger.log")).unwrap();
    let mut child = Command::new(bin("tresor-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .env("TRESOR_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for("the stranger to be turned away", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(root.join("stranger.log")).unwrap_or_default();
        log.contains("heartbeat failed") || log.contains("cannot reach the controller")
    });
    let _ = child.kill();
    let _ = child.wait();
    let agents = p.ctl_json(&["agents"]);
    assert!(agents.as_array().unwrap().is_empty(), "no agent is known here: {agents}");
    // tresorctl without a token is refused by name.
    let none = p.ctl_as(&root.join("missing.token"), &["agents"]);
    assert_ne!(none.status.code(), Some(0));
}

#[test]
fn bad_policies_are_rejected_by_name() {
    let mut p = Plane::start("");
    let root = p.dir.path().to_path_buf();
    let good = p.folder_vault("vault", "nas", "a");
    let gone = VaultSpec {
        name: "gone".into(),
        url: root.join("no-such-vault").to_str().unwrap().into(),
        password_file: good.password_file.clone(),
        env: vec![],
    };
    p.add_agent("a1", &[good, gone], &[]);
    wait_for("a1 to report its vaults", Duration::from_secs(30), || {
        p.agent_row("a1")["vaults"].as_array().is_some_and(|v| v.len() == 2)
    });
    let base = |vault: &str, agent: &str, schedule: &str, extra: &str| {
        format!(
            "name = \"p\"\n[[vault]]\nname = \"{vault}\"\nmaintainer = \"a1\"\n[[source]]\nagent = \"{agent}\"\nname = \"s\"\nvault = \"{vault}\"\npaths = [\"/tmp\"]\nschedule = \"{schedule}\"\n{extra}"
        )
    };
    let cases = [
        (base("nas", "a1", "61 * * * *", ""), "source[0].schedule"),
        (base("nas", "nobody", "0 2 * * *", ""), "source[0].agent: \"nobody\" is not an enrolled agent"),
        (base("nas", "a1", "0 2 * * *", "colour = \"blue\"\n"), "unknown field `colour`"),
        (base("gone", "a1", "0 2 * * *", ""), "agent a1 cannot reach vault \"gone\""),
        (base("tape", "a1", "0 2 * * *", ""), "agent a1 has no vault \"tape\""),
    ];
    for (text, expect) in cases {
        let out = p.apply_policy(&text);
        assert_eq!(out.status.code(), Some(2), "{text}\n{}", stderr(&out));
        assert!(stderr(&out).contains(expect), "expected {expect:?} in: {}", stderr(&out));
    }
    assert!(p.apply_policy(&base("nas", "a1", "0 2 * * *", "")).status.success());
    // A policy can be removed; its sources leave the status.
    p.ctl_ok(&["policy", "remove", "p"]);
    let status = p.ctl_json(&["status"]);
    assert!(status["sources"].as_array().unwrap().is_empty(), "{status}");
    let again = p.ctl(&["policy", "remove", "p"]);
    assert_eq!(again.status.code(), Some(7), "{}", stderr(&again));
}

#[test]
fn forged_and_replayed_receipts_are_ignored_and_never_expire_a_snapshot() {
    let mut p = Plane::start("");
    let root = p.dir.path().to_path_buf();
    let spec = p.folder_vault("vault", "nas", "a");
    let (vault, pw) = (std::path::PathBuf::from(&spec.url), spec.password_file.clone());
    p.add_agent("a1", std::slice::from_ref(&spec), &[]);
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    restore_tests::random_file(&data.join("x.bin"), 256 << 10, 1);
    let policy = format!(
        "name = \"r\"\n[[vault]]\nname = \"nas\"\nmaintainer = \"a1\"\n[[source]]\nagent = \"a1\"\nname = \"d\"\nvault = \"nas\"\npaths = [\"{}\"]\nschedule = \"0 0 1 1 *\"\nretention = {{ keep_last = 1 }}\n",
        data.display()
    );
    assert!(p.apply_policy(&policy).status.success());
    for i in 0..3 {
        restore_tests::random_file(&data.join("x.bin"), 256 << 10, 10 + i);
        p.ctl_ok(&["backup", "a1/d"]);
    }
    let ids: Vec<String> = p.snapshots("a1/d").iter().map(|s| s["snapshot_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 3);

    // Replace the receipts of the two older snapshots: one by the newest's receipt (a replay under
    // another name), one by a copy with its time bytes changed (a forged time).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let secret = tresor_vault::Secret::Password(zeroize::Zeroizing::new(
            std::fs::read(&pw).unwrap().trim_ascii_end().to_vec(),
        ));
        let v = tresor_vault::Vault::open(tresor_vault::backend::from_url(vault.to_str().unwrap()).unwrap(), &secret)
            .await
            .unwrap();
        let receipts = v.receipts().await.unwrap();
        let newest: tresor_vault::ids::SnapshotId = ids[2].parse().unwrap();
        let genuine = receipts.iter().find(|(id, _)| *id == newest).unwrap().1.clone().unwrap();
        let mut forged = genuine.clone();
        let n = forged.len();
        forged[n - 70] ^= 0x01; // inside the time field or the signature: either breaks it
        for (i, bytes) in [(0, genuine), (1, forged)] {
            let id: tresor_vault::ids::SnapshotId = ids[i].parse().unwrap();
            std::fs::remove_file(vault.join("receipts").join(&ids[i])).unwrap();
            v.put_receipt(&id, &bytes).await.unwrap();
        }
        // Whoever holds the storage (no key) copies the genuine stored receipt to another name:
        // bound to its own name, it does not open there.
        let moved = "ab".repeat(32);
        std::fs::copy(vault.join("receipts").join(&ids[2]), vault.join("receipts").join(&moved)).unwrap();
        let receipts = v.receipts().await.unwrap();
        let at_moved = receipts.iter().find(|(id, _)| id.to_string() == moved).unwrap();
        assert!(at_moved.1.as_ref().is_err_and(|e| e.contains("does not decrypt")), "{:?}", at_moved.1);
        std::fs::remove_file(vault.join("receipts").join(&moved)).unwrap();
    });
    // Drop the catalog's own copies so only the scan counts: a fresh catalog.
    p.kill_controller();
    std::fs::remove_dir_all(p.state.join("catalog.sled")).unwrap();
    p.start_controller();
    let snaps_after = || p.snapshots("a1/d");
    wait_for("the scan to bring the snapshots back", Duration::from_secs(60), || snaps_after().len() == 3);
    let by_id: std::collections::BTreeMap<String, serde_json::Value> =
        snaps_after().into_iter().map(|s| (s["snapshot_id"].as_str().unwrap().to_string(), s)).collect();
    assert!(by_id[&ids[0]]["committed_unix"].is_null(), "a replayed receipt is ignored");
    assert!(by_id[&ids[1]]["committed_unix"].is_null(), "a forged receipt is ignored");
    assert!(by_id[&ids[2]]["committed_unix"].as_i64().is_some(), "the genuine receipt verifies");
    // keep_last = 1 keeps the newest; the two without a valid receipt are never forgotten.
    let plan = p.ctl_json(&["prune", "nas", "--dry-run"]);
    assert!(plan["forget"].as_array().unwrap().is_empty(), "{plan}");
}

/// 1,000 calls with a token nobody holds, from one address: the first refusal is in the audit
/// log, the other 999 are one entry when the burst is over (refusal_burst, 2 s here), so the log
/// cannot be grown by anyone who can reach the port; then the same for 1,000 refused sign-ins on
/// the auditor's page. A known person's call beyond their role is still audited every time.
#[test]
fn a_thousand_refused_tokens_make_two_audit_entries() {
    let web = restore_tests::free_port();
    let p = Plane::start(&format!("refusal_burst = \"2s\"\nweb_listen = \"127.0.0.1:{web}\"\n"));
    let before = p.ctl_json(&["audit", "show"]).as_array().unwrap().len();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut admin = tresor_proto::pb::admin_service_client::AdminServiceClient::new(p.channel(None).await);
        for i in 0..1000 {
            let mut req = tonic::Request::new(tresor_proto::pb::StatusRequest {});
            let bad = format!("Bearer not-a-token-{i}").parse().unwrap();
            let _ = req.metadata_mut().insert("authorization", bad);
            let e = admin.status(req).await.expect_err("refused");
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
        }
    });
    let refused = |log: &serde_json::Value| -> Vec<serde_json::Value> {
        log.as_array().unwrap()[before..]
            .iter()
            .filter(|e| e["outcome"] == "refused" && e["object"].as_str().unwrap_or("").contains("127.0.0.1"))
            .cloned()
            .collect()
    };
    wait_for("the burst's summary", Duration::from_secs(60), || {
        refused(&p.ctl_json(&["audit", "show"])).iter().any(|e| e["action"] == "auth.refused_burst")
    });
    let entries = refused(&p.ctl_json(&["audit", "show"]));
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(entries[0]["actor"].as_str().unwrap().starts_with("unknown:"), "{entries:?}");
    assert!(entries[1]["reason"].as_str().unwrap().starts_with("999 more refused"), "{entries:?}");
    // The chain still verifies with both in it.
    let key = p.state.join("report-signing.pub.pem");
    let out = p.ctl(&["audit", "verify", "--pubkey", key.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.starts_with("audit log valid"), "{said}");

    // 1,000 refused sign-ins on the auditor's page from the same address, after that burst: one
    // curl process posting the form 1,000 times over one connection.
    let config = p.dir.path().join("signins.curl");
    // Options do not carry over `next`: each request names the CA again.
    let one = format!(
        "url = \"https://127.0.0.1:{web}/login\"\ncacert = \"{}\"\ndata = \"token=not-a-token\"\noutput = \"/dev/null\"\nwrite-out = \"%{{http_code}}\\n\"\nheader = \"Origin: https://127.0.0.1:{web}\"\n",
        p.state.join("ca.pem").display()
    );
    std::fs::write(&config, vec![one; 1000].join("next\n")).unwrap();
    // -q first: no ~/.curlrc; no proxy from the environment for a loopback controller.
    let out = std::process::Command::new("curl")
        .args(["-q", "-sS", "--noproxy", "*", "--config"])
        .arg(&config)
        .output()
        .unwrap_or_else(|e| panic!("curl is needed for this test: {e}"));
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(codes.lines().count(), 1000, "{}", String::from_utf8_lossy(&out.stderr));
    let distinct: std::collections::BTreeSet<&str> = codes.lines().collect();
    assert_eq!(
        distinct.into_iter().collect::<Vec<_>>(),
        ["401"],
        "every sign-in refused as unauthorized: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the sign-in burst's summary", Duration::from_secs(60), || {
        refused(&p.ctl_json(&["audit", "show"])).iter().filter(|e| e["action"] == "auth.refused_burst").count() == 2
    });
    let entries = refused(&p.ctl_json(&["audit", "show"]));
    assert_eq!(entries.len(), 4, "two per burst: {entries:?}");
    assert_eq!(entries[2]["action"], "web sign-in", "{entries:?}");
    assert!(entries[3]["reason"].as_str().unwrap().starts_with("999 more"), "{entries:?}");
}
