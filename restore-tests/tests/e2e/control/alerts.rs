//! Alerts reach a configured command and webhook when a backup fails, a source passes its RPO,
//! an agent is not seen, a certificate nears expiry, or a check fails; /metrics shows the state.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use restore_tests::plane::{Plane, VaultSpec, wait_for};
use restore_tests::random_file;

#[test]
fn failures_overdue_sources_offline_agents_and_failed_checks_raise_alerts() {
    // A webhook receiver on loopback that answers 200 and keeps the bodies.
    let hook = TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_addr = hook.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        for conn in hook.incoming().flatten() {
            let mut conn = conn;
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = conn.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        sink.lock().unwrap().push(body.to_string());
                        break;
                    }
                }
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let scratch = tempfile::tempdir().unwrap();
    let alert_file = scratch.path().join("alerts.jsonl");
    let script = scratch.path().join("alert.sh");
    std::fs::write(&script, format!("#!/bin/sh\ncat >> {}\necho >> {}\n", alert_file.display(), alert_file.display()))
        .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&script).unwrap().permissions(), 0o755);
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let extra = format!(
        "agent_offline_after = \"3s\"\ncert_lifetime = \"30s\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\nmax_attempts = 1\n[alerts]\nwebhook = \"http://{hook_addr}/tresor\"\ncommand = [\"{}\"]\n",
        script.display()
    );
    let mut p = Plane::start(&extra);
    let vault = p.dir.path().join("nas");
    std::fs::create_dir_all(&vault).unwrap();
    let pw = p.password_file("a1");
    p.init_vault(vault.to_str().unwrap(), &pw, &[]);
    let spec = VaultSpec { name: "nas".into(), url: vault.to_str().unwrap().into(), password_file: pw, env: vec![] };
    p.add_agent("a1", std::slice::from_ref(&spec), &[]);
    p.add_agent("a2", std::slice::from_ref(&spec), &[]);
    let data = p.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    random_file(&data.join("x.bin"), 1 << 20, 1);
    let policy = format!(
        "name = \"al\"\n[[vault]]\nname = \"nas\"\nmaintainer = \"a2\"\n\
         [[source]]\nagent = \"a1\"\nname = \"good\"\nvault = \"nas\"\npaths = [\"{}\"]\nschedule = \"0 0 1 1 *\"\nrpo = \"5s\"\n\
         check = {{ schedule = \"*/4 * * * * *\", read_data_subset = \"100%\" }}\n\
         [[source]]\nagent = \"a1\"\nname = \"broken\"\nvault = \"nas\"\npaths = [\"{}/no-such-dir\"]\nschedule = \"0 0 1 1 *\"\n",
        data.display(),
        data.display()
    );
    assert!(p.apply_policy(&policy).status.success());
    p.ctl_ok(&["backup", "a1/good"]);
    let failed = p.ctl(&["backup", "a1/broken"]);
    assert_eq!(failed.status.code(), Some(5), "{}", String::from_utf8_lossy(&failed.stderr));

    // Damage a pack so the scheduled check fails; stop the maintainer so it goes offline and its
    // certificate runs towards expiry; the good source passes its 5 s RPO.
    let pack = restore_tests::files_below(&vault.join("data"))
        .into_iter()
        .max_by_key(|f| std::fs::metadata(f).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&pack, bytes).unwrap();
    p.kill_agent("a2");

    let kinds = ["backup_failed", "rpo_overdue", "agent_offline", "cert_expiring", "check_failed"];
    wait_for("every kind of alert through the command", Duration::from_secs(90), || {
        let text = std::fs::read_to_string(&alert_file).unwrap_or_default();
        kinds.iter().all(|k| text.contains(&format!("\"kind\":\"{k}\"")))
    });
    wait_for("the same alerts through the webhook", Duration::from_secs(30), || {
        let bodies = received.lock().unwrap().join("\n");
        kinds.iter().all(|k| bodies.contains(&format!("\"kind\":\"{k}\"")))
    });
    let text = std::fs::read_to_string(&alert_file).unwrap();
    assert!(text.contains("maintainer of vault nas"), "{text}");
    assert!(text.contains("a1/broken"), "{text}");

    // status exits 4 and names the problems; /metrics carries the per-source and per-agent series.
    let status = p.ctl(&["status"]);
    assert_eq!(status.status.code(), Some(4));
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(out.contains("PROBLEM: a1/broken: backup failed"), "{out}");
    let metrics = restore_tests::metrics(metrics_port);
    for m in [
        "tresor_source_last_success_timestamp_seconds{agent=\"a1\",source=\"good\",vault=\"nas\"}",
        "tresor_source_failures_total{agent=\"a1\",source=\"broken\",vault=\"nas\"} 1",
        "tresor_agent_connected{agent=\"a1\"} 1",
        "tresor_agent_connected{agent=\"a2\"} 0",
        "tresor_source_dedup_ratio",
        "tresor_alerts_active",
    ] {
        assert!(metrics.contains(m), "{m} missing from /metrics:\n{metrics}");
    }
}
