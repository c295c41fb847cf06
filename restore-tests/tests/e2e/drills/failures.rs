//! Drills FAIL, naming what failed: a missed RPO or RTO target (with both numbers), a corrupted
//! pack, a missing pack; a failed or overdue drill sets its metric, makes tresorctl exit non-zero
//! and calls the alert command.

use std::path::{Path, PathBuf};
use std::time::Duration;

use restore_tests::metrics;
use restore_tests::plane::{Plane, wait_for};

use super::{Src, apply, drill, failed_checks, plane, policy};
use crate::sources::{python, run_py, script};

fn packs(vault: &Path) -> Vec<PathBuf> {
    let mut v = restore_tests::files_below(&vault.join("data"));
    v.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)));
    v
}

fn status_code(p: &Plane) -> (Option<i32>, String) {
    let out = p.ctl(&["status"]);
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn drills_fail_naming_missed_targets_and_damage_and_alert() {
    let tmp = tempfile::tempdir().unwrap();
    let alerts = tmp.path().join("alerts.jsonl");
    let metrics_port = restore_tests::free_port();
    let controller = format!(
        "drill_grace = \"1s\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n[alerts]\ncommand = [\"sh\", \"-c\", \"cat >> {0}; echo >> {0}\"]\n",
        alerts.display()
    );
    let hnsw = tmp.path().join("index.hnsw");
    run_py(&[script("hnsw_build.py"), hnsw.clone()]);
    // The application check of this source takes at least 1.5 s: its RTO target of 1 s is missed.
    let slow_probe = format!("sleep 1.5; {} {} 32", python().display(), script("hnsw_probe.py").display());
    let (p, nas) = plane(&controller, &format!("[sources.slow]\nprobe_command = {slow_probe:?}\n"));
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..12u64 {
        restore_tests::random_file(&data.join(format!("part-{i}.bin")), 400_000, i);
    }
    let empty = tmp.path().join("never-backed-up");
    std::fs::create_dir_all(&empty).unwrap();
    let plans = "[[drill]]\nname = \"tight-rpo\"\nsource = \"gpu-01/app\"\nschedule = \"0 4 * * 0\"\nrto = \"1h\"\nrpo = \"1s\"\n\
        [[drill]]\nname = \"normal\"\nsource = \"gpu-01/app\"\nschedule = \"0 4 * * 0\"\nrto = \"1h\"\n\
        [[drill]]\nname = \"tight-rto\"\nsource = \"gpu-01/slow\"\nschedule = \"0 4 * * 0\"\nrto = \"1s\"\n\
        [[drill]]\nname = \"every-minute\"\nsource = \"gpu-01/empty\"\nschedule = \"* * * * *\"\nrto = \"1h\"\n";
    let sources = [
        Src("app", vec![data.display().to_string()]),
        Src("slow", vec![format!("hnswlib:{}", hnsw.display())]),
        Src("empty", vec![empty.display().to_string()]),
    ];
    apply(&p, &policy(&sources, plans));
    p.ctl_ok(&["backup", "gpu-01/app"]);
    p.ctl_ok(&["backup", "gpu-01/slow"]);

    // RPO missed: 2 s since the newest snapshot against a 1 s target.
    std::thread::sleep(Duration::from_secs(2));
    let r = drill(&p, "gpu-01/app", &["--plan", "tight-rpo"]);
    assert_eq!(r.code, Some(5), "a FAILed drill exits 5: {}", r.report);
    assert_eq!(r.report["verdict"], "FAIL");
    assert_eq!(r.report["rpo"]["result"], "FAIL");
    assert!(
        r.report["rpo"]["measured_s"].as_f64().unwrap() >= 2.0 && r.report["rpo"]["target_s"] == 1.0,
        "{}",
        r.report
    );
    assert!(failed_checks(&r.report).is_empty(), "every check passed; only the target failed");
    let text = String::from_utf8_lossy(
        &p.ctl(&["report", "show", r.report["drill_id"].as_str().unwrap(), "--html", "--lang", "en"]).stdout,
    )
    .into_owned();
    assert!(text.contains("Achieved RPO") && text.contains(">FAIL<"), "the page shows both numbers and FAIL");

    // The failure alerts: metric, status, the alert command.
    wait_for("the drill_failed alert", Duration::from_secs(30), || {
        std::fs::read_to_string(&alerts).unwrap_or_default().contains("\"drill_failed\"")
    });
    let m = metrics(metrics_port);
    assert!(m.contains("tresor_drill_last_pass{source=\"gpu-01/app\"} 0"), "{m}");
    let (code, st) = status_code(&p);
    assert_eq!(code, Some(4), "{st}");
    assert!(st.contains("newest drill of gpu-01/app") && st.contains("FAILED"), "{st}");

    // RTO missed: the slow application check.
    let r = drill(&p, "gpu-01/slow", &["--plan", "tight-rto"]);
    assert_eq!((r.code, r.report["rto"]["result"].as_str()), (Some(5), Some("FAIL")), "{}", r.report);
    let rto = r.report["rto"]["measured_s"].as_f64().unwrap();
    assert!(rto >= 1.5 && rto <= r.wall_s && r.report["rto"]["target_s"] == 1.0, "{}", r.report);

    // A passing drill clears the alert.
    let r = drill(&p, "gpu-01/app", &["--plan", "normal"]);
    assert_eq!((r.code, r.report["verdict"].as_str()), (Some(0), Some("PASS")), "{}", r.report);
    wait_for("the drill_failed alert to resolve", Duration::from_secs(30), || {
        std::fs::read_to_string(&alerts).unwrap_or_default().contains("\"resolved\"")
    });
    assert!(metrics(metrics_port).contains("tresor_drill_last_pass{source=\"gpu-01/app\"} 1"));

    // A corrupted pack: the restore and the read check fail, naming the files and the pack.
    let vault = Path::new(&nas.url);
    let pack = packs(vault)[0].clone();
    let original = std::fs::read(&pack).unwrap();
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&pack, &bad).unwrap();
    let r = drill(&p, "gpu-01/app", &["--plan", "normal"]);
    assert_eq!((r.code, r.report["verdict"].as_str()), (Some(5), Some("FAIL")), "{}", r.report);
    let fails = failed_checks(&r.report);
    let pack_name = pack.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        fails.iter().any(|c| c["level"] == "read"
            && c["subject"].as_str().unwrap().contains("part-")
            && c["detail"].as_str().unwrap().contains(&pack_name)),
        "a read check names a damaged file and the pack: {fails:?}"
    );
    assert!(fails.iter().any(|c| c["level"] == "application"), "the application check did not pass: {fails:?}");

    // A missing pack: the structure check fails, naming the files.
    std::fs::write(&pack, &original).unwrap();
    std::fs::remove_file(&pack).unwrap();
    let r = drill(&p, "gpu-01/app", &["--plan", "normal"]);
    assert_eq!(r.code, Some(5), "{}", r.report);
    let fails = failed_checks(&r.report);
    assert!(
        fails.iter().any(|c| c["level"] == "structure"
            && c["subject"].as_str().unwrap().contains("part-")
            && c["detail"].as_str().unwrap().contains("missing")),
        "the structure check names a file whose pack is missing: {fails:?}"
    );
    std::fs::write(&pack, &original).unwrap();

    // A plan whose drills cannot run (its source has no snapshot) becomes overdue.
    wait_for("the every-minute plan to be overdue", Duration::from_secs(150), || {
        let out = p.ctl(&["--json", "drill", "list"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["plans"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|pl| pl["plan"] == "every-minute" && pl["overdue"] == true))
    });
    assert_eq!(p.ctl(&["drill", "list"]).status.code(), Some(4));
    let (code, st) = status_code(&p);
    assert!(code == Some(4) && st.contains("drill plan drills/every-minute"), "{st}");
    assert!(
        metrics(metrics_port)
            .contains("tresor_drill_plan_overdue{policy=\"drills\",plan=\"every-minute\",source=\"gpu-01/empty\"} 1")
    );
    wait_for("the drill_overdue alert", Duration::from_secs(30), || {
        std::fs::read_to_string(&alerts).unwrap_or_default().contains("\"drill_overdue\"")
    });
}
