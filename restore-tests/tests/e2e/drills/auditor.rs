//! An auditor reads every report and the audit log and changes nothing: with tresorctl (every
//! write refused, exit 6) and with the controller's web page in a real headless Chromium (Debian's
//! chromium driven by playwright-core from npm, a fresh profile), where axe-core finds no serious
//! or critical accessibility violation and failing drills are listed first.

use std::path::{Path, PathBuf};
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
    let state = seen["audit_state"].as_str().unwrap();
    assert!(state.starts_with("VALID (self-attested: the controller checks with its own key"), "{seen}");
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

/// A certificate authority for people, as an administration's PKI would issue smart-card certificates.
struct PeopleCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl PeopleCa {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let pem = params.self_signed(&key).unwrap().pem();
        Self { issuer: rcgen::Issuer::new(params, key), pem }
    }

    /// A client certificate and its key, as PEM files in `dir`.
    fn issue(&self, dir: &Path, file: &str, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (dir.join(format!("{file}.pem")), dir.join(format!("{file}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

#[test]
fn a_listed_client_certificate_reads_the_page_and_other_certificates_do_not() {
    let people = tempfile::tempdir().unwrap();
    let ca = PeopleCa::new("Landesamt Personen-CA");
    std::fs::write(people.path().join("ca.pem"), &ca.pem).unwrap();
    let erika = ca.issue(people.path(), "erika", "Erika Mustermann");
    let max = ca.issue(people.path(), "max", "Max Unlisted");
    let forged = PeopleCa::new("Another CA").issue(people.path(), "forged", "Erika Mustermann");

    // A CA file that is not there stops the controller before it serves anything, by name.
    let bad = people.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\nweb_listen = \"127.0.0.1:0\"\nweb_client_ca = \"{}\"\nweb_auditors = [\"Erika Mustermann\"]\n",
            people.path().join("state").display(),
            people.path().join("missing.pem").display()
        ),
    )
    .unwrap();
    let out =
        Command::new(restore_tests::bin("tresor-controller")).args(["serve", "--config"]).arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("web_client_ca") && err.contains("missing.pem"), "{err}");

    let web = restore_tests::free_port();
    let (p, _nas) = plane(
        &format!(
            "web_listen = \"127.0.0.1:{web}\"\nweb_client_ca = \"{}\"\nweb_auditors = [\"Erika Mustermann\"]\n",
            people.path().join("ca.pem").display()
        ),
        "",
    );
    let data = people.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    restore_tests::random_file(&data.join("f.bin"), 100_000, 4);
    apply(&p, &policy(&[Src("a", vec![data.display().to_string()])], ""));
    p.ctl_ok(&["backup", "gpu-01/a"]);
    let ran = drill(&p, "gpu-01/a", &[]);
    let id = ran.report["drill_id"].as_str().unwrap().to_string();

    // curl: (exit code, HTTP status, body).
    let body_file = people.path().join("body");
    let request = |cert: Option<&(PathBuf, PathBuf)>, method: &str, path: &str, headers: &[&str]| {
        let mut c = Command::new("curl");
        c.args(["-sS", "-o"]).arg(&body_file).args(["-w", "%{http_code}", "-X", method, "--cacert"]);
        c.arg(p.state.join("ca.pem"));
        for h in headers {
            c.args(["-H", h]);
        }
        if let Some((cert, key)) = cert {
            c.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let out = c.arg(format!("https://127.0.0.1:{web}{path}")).output().expect("curl runs");
        let body = std::fs::read_to_string(&body_file).unwrap_or_default();
        let _ = std::fs::remove_file(&body_file);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string(), body)
    };
    let get = |cert: Option<&(PathBuf, PathBuf)>, method: &str, path: &str| request(cert, method, path, &[]);
    let sign_in_form = "name=\"token\"";

    let (code, status, body) = get(Some(&erika), "GET", "/?lang=en");
    assert_eq!((code, status.as_str()), (Some(0), "200"));
    assert!(body.contains(&id) && !body.contains(sign_in_form), "Erika sees the drills without a token");
    let (_, status, body) = get(Some(&erika), "GET", &format!("/reports/{id}?lang=de"));
    assert_eq!(status, "200");
    let passed = body.contains("BESTANDEN") && !body.contains("NICHT BESTANDEN");
    assert!(body.contains("<html lang=\"de\">") && passed && body.contains(&id), "the report opens");
    assert_eq!(get(Some(&erika), "GET", "/audit").1, "200");
    for method in ["POST", "PUT", "DELETE"] {
        assert_eq!(get(Some(&erika), method, "/").1, "405", "{method} is refused to a certificate too");
    }
    // A request another site starts (the browser says so) is refused, though the card is in.
    let fetch_site = |site: &str| request(Some(&erika), "GET", "/audit", &[&format!("Sec-Fetch-Site: {site}")]).1;
    assert_eq!((fetch_site("cross-site").as_str(), fetch_site("same-origin").as_str()), ("403", "200"));

    // Listed nowhere, or from another CA, or none: no way in without a token.
    let (code, status, body) = get(Some(&max), "GET", "/");
    assert_eq!((code, status.as_str()), (Some(0), "200"));
    assert!(body.contains(sign_in_form) && !body.contains(&id), "an unlisted certificate gets the sign-in form");
    assert_eq!(get(Some(&max), "GET", &format!("/reports/{id}")).1, "303");
    let (code, _, _) = get(Some(&forged), "GET", "/");
    assert_ne!(code, Some(0), "a certificate from another CA fails the handshake, whatever its name");
    let (_, _, body) = get(None, "GET", "/");
    assert!(body.contains(sign_in_form), "without a certificate the token sign-in remains");

    let log = p.ctl_json(&["audit", "show"]);
    let entries = log.as_array().unwrap();
    let erika_did = |action: &str| {
        entries.iter().any(|e| {
            e["action"] == action
                && e["outcome"] == "ok"
                && e["actor"].as_str().unwrap().starts_with("auditor:cert:Erika Mustermann:")
        })
    };
    assert!(erika_did("web.sign_in") && erika_did("report.read") && erika_did("audit.read"), "{log}");
    assert!(entries.iter().any(|e| e["action"] == "web.sign_in"
        && e["outcome"] == "refused"
        && e["reason"].as_str().unwrap().contains("Max Unlisted")));
}
