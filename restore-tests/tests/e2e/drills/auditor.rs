//! An auditor reads every report and the audit log and changes nothing: with tresorctl (every
//! write refused, exit 6) and with the controller's web page in a real headless Chromium (Debian's
//! chromium driven by playwright-core from npm, a fresh profile), where axe-core finds no serious
//! or critical accessibility violation and failing drills are listed first.

use std::process::Command;
use std::time::Duration;

use restore_tests::test_deps;
use serde_json::Value;

use super::{Src, apply, drill, plane, policy, pubkey};

#[test]
fn an_auditor_reads_everything_and_changes_nothing_in_tresorctl_and_in_chromium() {
    let modules = test_deps().join("node/node_modules");
    assert!(
        modules.join("playwright-core").is_dir() && modules.join("axe-core/axe.min.js").is_file(),
        "playwright-core and axe-core are missing below {}: run scripts/ensure-browser-deps.sh (make test does)",
        modules.display()
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is missing: run scripts/ensure-browser-deps.sh"
    );
    let web = restore_tests::free_port();
    let (p, _nas) = plane(&format!("web_listen = \"127.0.0.1:{web}\"\n"), "");
    let tmp = tempfile::tempdir().unwrap();
    for s in ["a", "b", "c"] {
        std::fs::create_dir_all(tmp.path().join(s)).unwrap();
        restore_tests::random_file(&tmp.path().join(s).join("f.bin"), 100_000, 3);
    }
    let sources: Vec<Src<'_>> =
        ["a", "b", "c"].iter().map(|s| Src(s, vec![tmp.path().join(s).display().to_string()])).collect();
    let plans =
        "[[drill]]\nname = \"tight\"\nsource = \"gpu-01/b\"\nschedule = \"0 4 * * 0\"\nrto = \"1h\"\nrpo = \"1s\"\n";
    apply(&p, &policy(&sources, plans));
    p.ctl_ok(&["backup", "gpu-01/a"]);
    p.ctl_ok(&["backup", "gpu-01/b"]);
    let passed = drill(&p, "gpu-01/a", &[]);
    std::thread::sleep(Duration::from_secs(2));
    let failed = drill(&p, "gpu-01/b", &[]);
    assert_eq!((passed.report["verdict"].as_str(), failed.report["verdict"].as_str()), (Some("PASS"), Some("FAIL")));
    let (ok_id, bad_id) = (passed.report["drill_id"].as_str().unwrap(), failed.report["drill_id"].as_str().unwrap());

    // tresorctl as the auditor: reading works, every write is refused.
    let auditor = p.token_file("auditor", None);
    let code = |args: &[&str]| p.ctl_as(&auditor, args).status.code();
    assert_eq!(code(&["drill", "list"]), Some(4), "a failing drill makes drill list exit 4");
    assert_eq!(code(&["status"]), Some(4));
    for id in [ok_id, bad_id] {
        assert_eq!(code(&["report", "show", id]), Some(0));
        assert_eq!(code(&["report", "show", id, "--html", "--lang", "en"]), Some(0));
    }
    assert_eq!(code(&["audit", "verify", "--pubkey", pubkey(&p).to_str().unwrap()]), Some(0));
    assert_eq!(code(&["audit", "show", "--tail", "5"]), Some(0));
    assert_eq!(code(&["snapshots"]), Some(0));
    let policy_file = tmp.path().join("p.toml");
    std::fs::write(&policy_file, policy(&sources, "")).unwrap();
    for write in [
        vec!["restore", "gpu-01/a", "--to", "/tmp/tresor-auditor-restore"],
        vec!["policy", "apply", policy_file.to_str().unwrap()],
        vec!["policy", "remove", "drills"],
        vec!["drill", "run", "gpu-01/a"],
        vec!["backup", "gpu-01/a"],
        vec!["prune", "nas"],
        vec!["token", "create", "--role", "admin"],
        vec!["agent", "revoke", "gpu-01"],
        vec!["rebuild-catalog"],
    ] {
        let out = p.ctl_as(&auditor, &write);
        assert_eq!(out.status.code(), Some(6), "auditor {write:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("auditor role"), "{write:?} names the role");
    }
    assert!(!std::path::Path::new("/tmp/tresor-auditor-restore").exists());

    // The page in Chromium.
    let out = Command::new("node")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("js/auditor_page.cjs"))
        .env("TRESOR_NODE_MODULES", &modules)
        .env("TRESOR_WEB_URL", format!("https://127.0.0.1:{web}"))
        .env("TRESOR_AUDITOR_TOKEN", std::fs::read_to_string(&auditor).unwrap().trim())
        .output()
        .expect("node runs");
    assert!(out.status.success(), "the browser test failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_slice(&out.stdout).expect("the browser test prints JSON");
    eprintln!("browser: {seen}");
    assert_eq!(seen["sign_in_shown"], true);
    assert_eq!(seen["bad_token_refused"], true, "a wrong token is refused");
    let rows: Vec<&str> = seen["drills"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(rows, [bad_id, ok_id], "both drills listed, the failed one first");
    assert!(seen["drills"][0]["text"].as_str().unwrap().contains("FAIL"));
    let caps = seen["attention"].as_array().unwrap();
    assert!(caps.iter().any(|c| c == "Failing and missing drills"), "{caps:?}");
    let reports = seen["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 4, "both report links opened in both languages: {reports:?}");
    for r in reports {
        let want = if r["href"].as_str().unwrap().contains(bad_id) { "FAIL" } else { "PASS" };
        assert_eq!(r["verdict"], want, "{r}");
    }
    assert_eq!(seen["html_lang_de"], "de");
    assert!(seen["audit_state"].as_str().unwrap().starts_with("VALID"), "{seen}");
    assert!(seen["audit_rows"].as_i64().unwrap() > 10, "{seen}");
    assert_eq!(seen["json_signed"], true);
    assert_eq!(seen["forms_on_overview"], 1, "the only form signs out");
    assert_eq!(seen["cross_site_sign_in"], 403, "a sign-in posted from another site is refused");
    for (what, status) in seen["refused_posts"].as_object().unwrap() {
        assert_eq!(status, 405, "{what} is refused");
    }
    let pages = seen["pages_checked"].as_array().unwrap().len();
    assert!(pages >= 8, "axe ran on the sign-in, overview, report and audit pages: {seen}");
    let serious: Vec<&Value> = seen["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["impact"] == "serious" || v["impact"] == "critical")
        .collect();
    assert!(serious.is_empty(), "axe-core found serious or critical violations: {serious:?}");

    // What the auditor did is in the log; nothing the auditor tried changed anything.
    let log = p.ctl_json(&["audit", "show"]);
    let by_auditor: Vec<&Value> =
        log.as_array().unwrap().iter().filter(|e| e["actor"].as_str().unwrap().starts_with("auditor:")).collect();
    assert!(by_auditor.iter().any(|e| e["action"] == "report.read" && e["object"].as_str().unwrap().contains("(web)")));
    assert!(by_auditor.iter().any(|e| e["action"] == "web.sign_in" && e["outcome"] == "ok"));
    assert!(by_auditor.iter().filter(|e| e["outcome"] == "refused").count() >= 9);
    assert!(by_auditor.iter().all(|e| e["outcome"] != "ok"
        || ["report.read", "audit.read", "web.sign_in"].contains(&e["action"].as_str().unwrap())));
    assert_eq!(p.snapshots("gpu-01/a").len(), 1);
}
