//! The audit log records every kind of control-plane action, its checkpoints reach the vault
//! write-once, and an offline check with only the public key detects a changed, removed,
//! reordered or re-chained entry, and a log cut short of its checkpoint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use restore_tests::plane::wait_for;
use serde_json::Value;
use tresor_report::audit::{Event, next_entry};

use restore_tests::ctl_offline;

use super::{Src, apply, drill, plane, policy, pubkey, vault_documents};

fn read_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn write_log(path: &Path, entries: &[Value]) {
    std::fs::write(path, entries.iter().map(|e| format!("{e}\n")).collect::<String>()).unwrap();
}

#[test]
fn the_audit_log_records_every_action_and_offline_verification_detects_tampering() {
    let (mut p, nas) = plane("", "");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    restore_tests::random_file(&data.join("a.bin"), 300_000, 1);
    let remote = "[[drill]]\nname = \"remote\"\nsource = \"gpu-01/app\"\nsandbox_agent = \"drill-01\"\nschedule = \"0 4 * * 0\"\nrto = \"1h\"\nkeep = true\n";
    apply(&p, &policy(&[Src("app", vec![data.display().to_string()])], remote));
    let auditor = p.token_file("auditor", None);
    p.ctl_ok(&["backup", "gpu-01/app"]);
    restore_tests::random_file(&data.join("b.bin"), 300_000, 2);
    p.ctl_ok(&["backup", "gpu-01/app"]);
    p.ctl_ok(&["restore", "gpu-01/app", "--to", p.dir.path().join("restored").to_str().unwrap()]);
    // The plan's sandbox is another host, with its own key slot for the vault; it keeps the sandbox.
    let sandbox_password = p.password_file("drill-01");
    p.add_key(&nas.url, &nas.password_file, &sandbox_password, &[]);
    let own_slot = restore_tests::plane::VaultSpec { password_file: sandbox_password, ..nas.clone() };
    p.agent_settings = "keep_sandbox_for = \"4s\"\n".into();
    p.add_agent("drill-01", &[own_slot], &[]);
    p.agent_settings.clear();
    let r = drill(&p, "gpu-01/app", &[]);
    assert_eq!(r.report["verdict"], "PASS", "{}", r.report);
    let sandbox = r.report["sandbox"].as_str().unwrap();
    assert!(sandbox.starts_with("drill-01:"), "{sandbox}");
    let kept = std::path::Path::new(sandbox.trim_start_matches("drill-01:"));
    assert!(kept.join(data.strip_prefix("/").unwrap()).join("b.bin").is_file(), "keep = true leaves the sandbox");
    let md = std::fs::metadata(kept).unwrap();
    let mode = std::os::unix::fs::MetadataExt::mode(&md) & 0o7777;
    assert_eq!((mode, std::os::unix::fs::MetadataExt::uid(&md)), (0o700, 0), "a files sandbox is root's alone");
    // ... until its expiry (keep_sandbox_for, 4 s here; the audit log records it, below).
    wait_for("the kept sandbox to expire and go", Duration::from_secs(60), || !kept.exists());
    assert_ne!(r.report["key_slot"], "", "the sandbox's own key slot is named");
    let drill_id = r.report["drill_id"].as_str().unwrap().to_string();
    p.ctl_ok(&["prune", "nas"]);
    p.ctl_ok(&["report", "show", &drill_id]);
    let refused = p.ctl_as(&auditor, &["restore", "gpu-01/app", "--to", "/tmp/x"]);
    assert_eq!(refused.status.code(), Some(6));
    p.add_agent("old-host", &[], &[]);
    p.ctl_ok(&["agent", "revoke", "old-host"]);

    // The drill's checkpoint reaches the vault, write-once, through the maintainer.
    let docs = tmp.path().join("vault-docs");
    wait_for("an audit checkpoint in the vault", Duration::from_secs(30), || {
        let v = vault_documents(&nas, &docs);
        v["documents"].as_array().unwrap().iter().any(|d| d.as_str().unwrap().starts_with("audit/checkpoint-"))
    });
    let ex = tmp.path().join("export");
    p.ctl_ok(&["audit", "export", "--out", ex.to_str().unwrap()]);
    let log = ex.join("audit.jsonl");
    let entries = read_log(&log);
    let has = |action: &str, outcome: &str, pred: &dyn Fn(&Value) -> bool| {
        entries.iter().any(|e| e["action"] == action && e["outcome"] == outcome && pred(e))
    };
    let any = |_: &Value| true;
    for action in [
        "enroll",
        "policy.apply",
        "token.create",
        "backup.start",
        "backup",
        "restore.start",
        "restore",
        "drill.start",
        "drill",
        "key.sign",
        "prune.start",
        "prune",
        "report.read",
        "revoke",
        "scan",
    ] {
        assert!(has(action, "ok", &any), "no {action} entry:\n{}", std::fs::read_to_string(&log).unwrap());
    }
    assert!(
        // Each deletion names the source, the policy, its rule and the snapshot's receipt time.
        has("prune.delete", "ok", &|e| {
            let why = e["reason"].as_str().unwrap();
            why.starts_with("retention of gpu-01/app in policy drills (keep_last = 1) keeps 1 of 2 snapshots; this one, receipted 20")
                && why.contains("is not among them (manual prune, job j-")
        }),
        "each deletion with its reason"
    );
    // Signing a checkpoint is a key use, recorded as the entry the checkpoint itself signs.
    let checkpoints = read_log(&ex.join("checkpoints.jsonl"));
    assert!(!checkpoints.is_empty());
    for c in &checkpoints {
        let e = &entries[c["seq"].as_u64().unwrap() as usize];
        assert_eq!(
            (&e["action"], &e["object"]),
            (&"key.sign".into(), &"audit checkpoint of the log up to this entry".into()),
            "{c}"
        );
    }
    assert!(
        has("restore", "refused", &|e| e["actor"].as_str().unwrap().starts_with("auditor:")),
        "a refusal, with its actor"
    );
    assert!(has("backup", "ok", &|e| e["actor"] == "agent:gpu-01" && e["reason"].as_str().unwrap().contains("receipt")));
    assert!(
        has("drill", "ok", &|e| e["actor"] == "agent:drill-01"
            && e["reason"].as_str().unwrap().contains(&format!("sandbox {sandbox} kept until 20"))),
        "the kept sandbox's expiry is in the audit log"
    );
    assert!(entries.iter().all(|e| e["time"].as_str().is_some_and(|t| t.ends_with('Z'))));

    // Offline: only the exported log, the checkpoints from the vault and the public key.
    let key = ex.join("report-signing.pub.pem");
    assert_eq!(std::fs::read(&key).unwrap(), std::fs::read(pubkey(&p)).unwrap());
    let cps = docs.join("audit");
    let verify = |entries: &[Value]| -> (Option<i32>, String) {
        let f = tmp.path().join(format!("log-{}.jsonl", rand::random::<u32>()));
        write_log(&f, entries);
        let o = ctl_offline(&[
            "audit",
            "verify",
            "--log",
            f.to_str().unwrap(),
            "--checkpoints",
            cps.to_str().unwrap(),
            "--pubkey",
            key.to_str().unwrap(),
        ]);
        (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let (code, text) = verify(&entries);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("audit log valid") && !text.contains(" 0 signed checkpoints"), "{text}");
    let cp_seq = std::fs::read_dir(&cps)
        .unwrap()
        .flatten()
        .map(|e| {
            serde_json::from_str::<Value>(&std::fs::read_to_string(e.path()).unwrap()).unwrap()["seq"].as_u64().unwrap()
        })
        .max()
        .unwrap() as usize;
    assert!(cp_seq >= 5 && cp_seq < entries.len(), "checkpoint at {cp_seq} of {}", entries.len());

    // Without checkpoints a re-chained log could not be told apart: not a pass.
    let f = tmp.path().join("alone.jsonl");
    write_log(&f, &entries);
    let o = ctl_offline(&["audit", "verify", "--log", f.to_str().unwrap(), "--pubkey", key.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.code() == Some(9) && text.contains("NOT VERIFIED"), "{text}");

    let mut changed = entries.clone();
    changed[3]["reason"] = "nothing happened".into();
    let (code, text) = verify(&changed);
    assert!(code == Some(9) && text.contains("entry 3 was changed"), "{text}");

    let mut removed = entries.clone();
    removed.remove(3);
    let (code, text) = verify(&removed);
    assert!(code == Some(9) && text.contains("NOT VALID"), "{text}");

    let mut reordered = entries.clone();
    reordered.swap(3, 4);
    let (code, text) = verify(&reordered);
    assert!(code == Some(9) && text.contains("NOT VALID"), "{text}");

    // Re-chained: entry 2 changed and every hash after it recomputed; only the checkpoint in the
    // vault, signed before, shows it.
    let mut rechained: Vec<Value> = entries[..2].to_vec();
    for (i, e) in entries[2..].iter().enumerate() {
        let mut ev = Event::of_entry(e);
        if i == 0 {
            ev.object = "something else".into();
        }
        rechained.push(next_entry(rechained.last(), &ev).unwrap());
    }
    let (code, text) = verify(&rechained);
    assert!(code == Some(9) && text.contains("checkpoint"), "{text}");

    // Cut short of the checkpoint: the newest entries removed.
    let (code, text) = verify(&entries[..cp_seq]);
    assert!(code == Some(9) && text.contains("checkpoint"), "{text}");

    // Online, from the controller, with the pinned key.
    let out = p.ctl(&["audit", "verify", "--pubkey", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));

    // A stored report changed in any way fails its offline check.
    let stored: PathBuf = docs.join(format!("reports/{drill_id}.json"));
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&stored).unwrap()).unwrap();
    doc["rto"]["target_s"] = 999_999.0.into();
    let forged = tmp.path().join("forged.json");
    std::fs::write(&forged, doc.to_string()).unwrap();
    let o = ctl_offline(&["report", "verify", forged.to_str().unwrap(), "--pubkey", key.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(9));
}

#[test]
fn checkpoint_jobs_do_not_pile_up_while_the_maintainer_is_offline() {
    let (mut p, nas) = plane("audit_checkpoint_every = \"1s\"\n", "");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("data")).unwrap();
    apply(&p, &policy(&[Src("app", vec![tmp.path().join("data").display().to_string()])], ""));
    // Queued or running: a job whose agent died mid-way runs on until its lease lapses.
    let waiting = |p: &restore_tests::plane::Plane| {
        let st = p.ctl_json(&["status"]);
        st["jobs_queued"].as_u64().unwrap() + st["jobs_running"].as_u64().unwrap()
    };
    let docs = tmp.path().join("docs");
    let stored = |seq_at_least: u64| {
        let v = vault_documents(&nas, &docs);
        v["documents"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|d| d.strip_prefix("audit/checkpoint-")?.strip_suffix(".json")?.parse::<u64>().ok())
            .filter(|seq| *seq >= seq_at_least)
            .count()
    };
    wait_for("the first checkpoint stored", Duration::from_secs(60), || stored(0) > 0 && waiting(&p) == 0);
    p.kill_agent("gpu-01");
    // Each refused call moves the log, so every period has a new head to sign: after each call,
    // wait until the controller has signed a checkpoint past it.
    let auditor = p.token_file("auditor", None);
    let export = tmp.path().join("export");
    let signed = || {
        p.ctl_ok(&["audit", "export", "--out", export.to_str().unwrap()]);
        std::fs::read_to_string(export.join("checkpoints.jsonl")).unwrap_or_default().lines().count()
    };
    for _ in 0..6 {
        let before = signed();
        assert_eq!(p.ctl_as(&auditor, &["backup", "gpu-01/app"]).status.code(), Some(6));
        wait_for("a checkpoint of the period after the call", Duration::from_secs(30), || signed() > before);
    }
    let log = p.ctl_json(&["audit", "show"]);
    let stored_entries = log.as_array().unwrap().iter().filter(|e| e["action"] == "documents").count();
    assert_eq!(waiting(&p), 1, "one checkpoint job waits for the offline maintainer, not one per period");
    // Back online: the waiting job is stored, then the newest head gets its own checkpoint.
    p.start_agent("gpu-01");
    let refused_last = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "refused")
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap();
    wait_for("a checkpoint past the refused calls in the vault", Duration::from_secs(60), || stored(refused_last) > 0);
    // Then the log is quiet: storing a checkpoint does not call for another (only the vault is
    // looked at here; a controller call would itself be an entry).
    // First the vault settles (two looks 2 s apart agree), then it must stay so for 5 s: five
    // checkpoint periods in which nothing may happen, which only a wait of that length shows.
    let mut settled = stored(0);
    wait_for("the vault's checkpoints to settle", Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_secs(2));
        let now = stored(0);
        std::mem::replace(&mut settled, now) == now
    });
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(stored(0), settled, "a quiet log gets no new checkpoints");
    let log = p.ctl_json(&["audit", "show"]);
    let after = log.as_array().unwrap().iter().filter(|e| e["action"] == "documents").count();
    assert!(after > stored_entries, "the maintainer stored checkpoints once it came back");
}
