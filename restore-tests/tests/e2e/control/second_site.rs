//! A second site through the controller: a scheduled copy to Garage, its lag in status and
//! /metrics, the audit log, a restore and a drill from the copy; then the site-loss runbook of
//! docs/OPERATIONS.md, step by step: the primary vault gone (restore and drill from the copy with
//! the same controller), then the controller's state gone too (a fresh machine with only the
//! copy's location and the escrow key file restores every snapshot equal to the source).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use restore_tests::garage::Garage;
use restore_tests::plane::{Plane, VaultSpec, wait_for};
use restore_tests::{assert_same_tree, bin, free_port, metrics, random_file};

fn policy(src: &Path) -> String {
    format!(
        r#"name = "sites"
[defaults]
schedule = "0 0 1 1 *"
rpo = "26h"
retention = {{ keep_last = 5 }}
[[vault]]
name = "nas"
maintainer = "db-01"
copy_to = "offsite"
copy_schedule = "*/3 * * * * *"
copy_rpo = "1h"
[[vault]]
name = "offsite"
maintainer = "db-01"
[[source]]
agent = "db-01"
name = "docs"
vault = "nas"
paths = [{src:?}]
[[drill]]
name = "first-site"
source = "db-01/docs"
schedule = "0 0 1 1 *"
rto = "1h"
[[drill]]
name = "second-site"
source = "db-01/docs"
vault = "offsite"
schedule = "0 0 1 1 *"
rto = "1h"
"#
    )
}

fn agent(args: &[&str], env: &[(String, String)]) -> std::process::Output {
    Command::new(bin("tresor-agent"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().cloned())
        .args(args)
        .output()
        .unwrap()
}

fn status(p: &Plane) -> serde_json::Value {
    let out = p.ctl(&["--json", "status"]);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_second_site_is_copied_on_schedule_and_survives_the_loss_of_the_first() {
    let garage = Garage::start();
    let metrics_port = free_port();
    let mut p = Plane::start(&format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\n"));
    let root = p.dir.path().to_path_buf();
    let nas_dir = root.join("nas");
    std::fs::create_dir_all(&nas_dir).unwrap();
    let nas_url = nas_dir.to_str().unwrap().to_string();
    let pw = p.password_file("db-01");
    // The escrow key file goes to the safe (decision 0017: one file, kept apart from both sites).
    let safe = tempfile::tempdir().unwrap();
    let escrow = safe.path().join("escrow.key");
    let out = agent(
        &[
            "init",
            "--vault",
            &nas_url,
            "--password-file",
            pw.to_str().unwrap(),
            "--escrow-key-out",
            escrow.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let offsite_url = garage.url("offsite");
    let spec = |name: &str, url: &str, env: Vec<(String, String)>| VaultSpec {
        name: name.into(),
        url: url.into(),
        password_file: pw.clone(),
        env,
    };
    p.add_agent("db-01", &[spec("nas", &nas_url, vec![]), spec("offsite", &offsite_url, garage.env())], &[]);

    // The source data lives apart from the plane, as the reference the restores are held to.
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("docs");
    random_file(&src.join("a.bin"), 3 << 20, 1);
    random_file(&src.join("notes/b.txt"), 4000, 2);
    let applied = p.apply_policy(&policy(&src));
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let first_tree = data.path().join("first");
    assert!(Command::new("cp").arg("-a").arg(&src).arg(&first_tree).status().unwrap().success());
    assert!(p.ctl_ok(&["backup", "db-01/docs"]).contains("saved"));
    random_file(&src.join("c.bin"), 1 << 20, 3);
    assert!(p.ctl_ok(&["backup", "db-01/docs"]).contains("saved"));

    // The copy schedule fires on its own; status shows both snapshots at the copy, lag 0.
    wait_for("the scheduled copy", Duration::from_secs(90), || {
        let s = status(&p);
        s["copies"][0]["copied"] == 2 && s["copies"][0]["lag_seconds"] == 0
    });
    let s = status(&p);
    assert_eq!((s["copies"][0]["from"].as_str(), s["copies"][0]["to"].as_str()), (Some("nas"), Some("offsite")), "{s}");
    assert_eq!(s["copies"][0]["overdue"], false, "{s}");
    let m = metrics(metrics_port);
    assert!(m.contains("tresor_copy_lag_seconds{from=\"nas\",to=\"offsite\"} 0"), "{m}");
    assert!(m.contains("tresor_copy_snapshots_missing{from=\"nas\",to=\"offsite\"} 0"), "{m}");
    let audit = p.ctl_ok(&["audit", "show"]);
    assert_eq!(audit.matches("copy.snapshot").count(), 2, "{audit}");

    // A drill at the first site; its signed report reaches the copy with the next copy, which
    // has no snapshot left to send.
    let first = p.ctl(&["--json", "drill", "run", "db-01/docs", "--plan", "first-site"]);
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(first["verdict"], "PASS", "{first}");
    let report_name = format!("{}.json", first["drill_id"].as_str().unwrap());
    wait_for("the first site's report in its vault", Duration::from_secs(30), || {
        nas_dir
            .join("reports")
            .read_dir()
            .is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy() == report_name))
    });
    let out = p.ctl_ok(&["copy", "nas"]);
    assert!(out.contains("copied 0 snapshot(s)") && out.contains("the copy holds 2"), "{out}");
    assert!(!out.contains(" 0 signed document(s)"), "{out}");

    // Disaster one: the primary vault is gone. Restore and drill from the second site.
    // The copy agent reports the second site it made as a vault it opens.
    wait_for("db-01 to report the copy", Duration::from_secs(20), || {
        p.ctl_json(&["agents"])[0]["vaults"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "offsite" && v["error"] == "")
    });
    std::fs::remove_dir_all(&nas_dir).unwrap();
    let to = root.join("restored-from-copy");
    let out = p.ctl_ok(&["restore", "db-01/docs", "--from-vault", "offsite", "--to", to.to_str().unwrap()]);
    assert!(out.contains("restored"), "{out}");
    assert_same_tree(&src, &to.join(src.strip_prefix("/").unwrap()));
    let drill = p.ctl(&["--json", "drill", "run", "db-01/docs", "--plan", "second-site"]);
    let report: serde_json::Value = serde_json::from_slice(&drill.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&drill.stdout), String::from_utf8_lossy(&drill.stderr))
    });
    assert_eq!(report["verdict"], "PASS", "{report}");
    let checks = report["checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["check"] == "restored from the second site" && c["result"] == "PASS"), "{report}");

    // Disaster two: the controller and its state are gone too. A fresh machine holds only the
    // copy's location, its storage credentials and the escrow key file.
    drop(p);
    let fresh = tempfile::tempdir().unwrap();
    let key = fresh.path().join("escrow.key");
    std::fs::copy(&escrow, &key).unwrap();
    let mut env = garage.env();
    env.push(("HOME".into(), fresh.path().to_str().unwrap().into()));
    let k = key.to_str().unwrap();
    let out = agent(&["--json", "check", "--vault", &offsite_url, "--escrow-key-file", k, "--read-data"], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = agent(&["--json", "snapshots", "--vault", &offsite_url, "--escrow-key-file", k], &env);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let ids: Vec<&str> = listed.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{listed}");
    for (id, tree) in ids.iter().zip([&first_tree, &src]) {
        let to = fresh.path().join(format!("restored-{}", &id[..8]));
        let out = agent(
            &["restore", "--vault", &offsite_url, "--escrow-key-file", k, id, "--to", to.to_str().unwrap()],
            &env,
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_same_tree(tree, &to.join(src.strip_prefix("/").unwrap()));
    }
    // The evidence survived: both drills' signed reports are at the copy.
    let docs = agent(&["--json", "documents", "--vault", &offsite_url, "--escrow-key-file", k], &env);
    let docs: serde_json::Value = serde_json::from_slice(&docs.stdout).unwrap();
    let names: Vec<&str> = docs["documents"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert!(names.contains(&format!("reports/{report_name}").as_str()), "{docs}");
    assert!(names.iter().filter(|n| n.starts_with("reports/") && n.ends_with(".json")).count() >= 2, "{docs}");
    // Two sites again: a new one made from the copy, and it restores.
    let new_site = fresh.path().join("new-site");
    let out =
        agent(&["copy", "--from", &offsite_url, "--to", new_site.to_str().unwrap(), "--escrow-key-file", k], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let to = fresh.path().join("from-new-site");
    let out = agent(
        &[
            "restore",
            "--vault",
            new_site.to_str().unwrap(),
            "--escrow-key-file",
            k,
            "latest",
            "--to",
            to.to_str().unwrap(),
        ],
        &env,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_tree(&src, &to.join(src.strip_prefix("/").unwrap()));

    // A new controller: the rebuilt agent gets a key slot of its own at the copy from the escrow
    // key, the copy is the vault its source backs up to, and a drill from it passes.
    let mut q = Plane::start("");
    let pw2 = q.password_file("db-01-rebuilt");
    let out = agent(
        &[
            "--at-second-site",
            "key",
            "add",
            "--vault",
            &offsite_url,
            "--escrow-key-file",
            k,
            "--new-password-file",
            pw2.to_str().unwrap(),
            "--label",
            "db-01 (rebuilt)",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let copy_spec =
        VaultSpec { name: "offsite".into(), url: offsite_url.clone(), password_file: pw2, env: garage.env() };
    q.add_agent("db-01", &[copy_spec], &[]);
    let rebuilt = format!(
        "name = \"sites\"\n[[vault]]\nname = \"offsite\"\nmaintainer = \"db-01\"\n[[source]]\nagent = \"db-01\"\nname = \"docs\"\nvault = \"offsite\"\npaths = [{src:?}]\nschedule = \"0 0 1 1 *\"\nrpo = \"26h\"\n"
    );
    let applied = q.apply_policy(&rebuilt);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    wait_for("the copy scanned into the new catalog", Duration::from_secs(60), || q.snapshots("db-01/docs").len() == 2);
    let drill = q.ctl(&["--json", "drill", "run", "db-01/docs"]);
    let report: serde_json::Value = serde_json::from_slice(&drill.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&drill.stdout), String::from_utf8_lossy(&drill.stderr))
    });
    assert_eq!(report["verdict"], "PASS", "{report}");
    assert!(report["anomalies"].to_string().contains("manifest time"), "{report}");
}

/// A second site behind its `copy_rpo` raises `copy_overdue`, a copy job that fails raises
/// `copy_failed` (and audits it), and a manual copy that succeeds clears both.
#[test]
fn a_second_site_behind_or_failing_is_alerted_until_a_copy_succeeds() {
    let metrics_port = free_port();
    let mut p = Plane::start(&format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\nmax_attempts = 1\n"));
    let root = p.dir.path().to_path_buf();
    let nas = p.folder_vault("nas", "nas", "db-01");
    // The copy's location is a file for now: every copy there fails.
    let offsite = root.join("offsite");
    std::fs::write(&offsite, "not a directory").unwrap();
    let copy_spec = VaultSpec { name: "offsite".into(), url: offsite.to_str().unwrap().into(), ..nas.clone() };
    p.add_agent("db-01", &[nas, copy_spec], &[]);
    let src = root.join("src");
    random_file(&src.join("a.bin"), 1 << 20, 1);
    let text = policy(&src).replace("*/3 * * * * *", "0 0 1 1 *").replace("copy_rpo = \"1h\"", "copy_rpo = \"1s\"");
    let applied = p.apply_policy(&text);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    assert!(p.ctl_ok(&["backup", "db-01/docs"]).contains("saved"));

    wait_for("copy_overdue", Duration::from_secs(30), || {
        status(&p)["problems"].as_array().unwrap().iter().any(|m| m.as_str().unwrap().contains("second site offsite"))
    });
    assert!(metrics(metrics_port).contains("tresor_copy_overdue{from=\"nas\",to=\"offsite\"} 1"));

    let out = p.ctl(&["copy", "nas"]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    wait_for("copy_failed", Duration::from_secs(30), || {
        status(&p)["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m.as_str().unwrap().starts_with("copy of vault nas to offsite failed"))
    });
    let audit = p.ctl_ok(&["audit", "show"]);
    let failed_copy =
        audit.lines().any(|l| l.split_whitespace().collect::<Vec<_>>().windows(2).any(|w| w == ["copy", "failed"]));
    assert!(failed_copy, "the failed copy job is audited: {audit}");

    std::fs::remove_file(&offsite).unwrap();
    std::fs::create_dir(&offsite).unwrap();
    let out = p.ctl_ok(&["copy", "nas"]);
    assert!(out.contains("copied 1 snapshot(s)"), "{out}");
    let s = status(&p);
    assert_eq!(s["problems"].as_array().unwrap().len(), 0, "{s}");
    assert_eq!((s["copies"][0]["copied"].as_u64(), s["copies"][0]["lag_seconds"].as_i64()), (Some(1), Some(0)), "{s}");
    assert!(metrics(metrics_port).contains("tresor_copy_overdue{from=\"nas\",to=\"offsite\"} 0"));

    // The copy keeps what copy_retention keeps; the first site keeps what the source's keeps.
    assert!(p.ctl_ok(&["backup", "db-01/docs"]).contains("saved"));
    assert!(p.ctl_ok(&["copy", "nas"]).contains("the copy holds 2"));
    let kept = text.replace("copy_rpo = \"1s\"", "copy_rpo = \"1s\"\ncopy_retention = { keep_last = 1 }");
    let applied = p.apply_policy(&kept);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let out = p.ctl_ok(&["prune", "offsite"]);
    assert!(out.contains("forgot 1 snapshots"), "{out}");
    assert_eq!(std::fs::read_dir(offsite.join("snapshots")).unwrap().count(), 1);
    assert_eq!(p.snapshots("db-01/docs").len(), 2, "the first site's records are untouched");
    assert_eq!(std::fs::read_dir(root.join("nas/snapshots")).unwrap().count(), 2);
    let s = status(&p);
    assert_eq!((s["copies"][0]["snapshots"].as_u64(), s["copies"][0]["copied"].as_u64()), (Some(1), Some(1)), "{s}");
    assert_eq!(s["problems"].as_array().unwrap().len(), 0, "{s}");
}
