//! Drills pass on good snapshots of every source kind, and the report holds every part the issue
//! names, signed, in the catalog and write-once in the vault (untouched by prune and GC).

use std::time::{Duration, Instant};

use restore_tests::qdrant_fake::FakeQdrant;
use rusqlite::Connection;
use serde_json::Value;
use tresor_sources::model::synth;

use restore_tests::ctl_offline;

use super::{Src, apply, drill, failed_checks, plane, policy, pubkey, vault_documents};
use crate::sources::{python, run_py, script};

fn write_fvecs(path: &std::path::Path, n: usize, dim: usize) {
    let mut bytes = Vec::with_capacity(n * (4 + dim * 4));
    for i in 0..n {
        bytes.extend_from_slice(&(dim as i32).to_le_bytes());
        for j in 0..dim {
            bytes.extend_from_slice(&((((i * 37 + j * 11) % 101) as f32) / 101.0).to_le_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

fn levels(report: &Value) -> Vec<String> {
    let mut l: Vec<String> =
        report["checks"].as_array().unwrap().iter().map(|c| c["level"].as_str().unwrap().to_string()).collect();
    l.sort();
    l.dedup();
    l
}

fn assert_pass(kind: &str, r: &super::Ran) {
    assert_eq!(r.code, Some(0), "{kind}: {}\n{}", r.report, r.stderr);
    assert_eq!(r.report["verdict"], "PASS", "{kind}: {:?}", failed_checks(&r.report));
    assert_eq!(levels(&r.report), ["application", "read", "structure"], "{kind}: three levels: {}", r.report);
}

#[test]
fn drills_pass_on_every_source_kind_and_the_signed_report_holds_every_part() {
    eprintln!("NOTE: the Qdrant source runs against a fake of Qdrant's documented HTTP API, not a real Qdrant server");
    let fake = FakeQdrant::start(None);
    let points: Vec<(u64, Vec<f32>)> =
        (0..300u64).map(|i| (i, (0..16).map(|j| (((i * 13 + j * 5) % 89) as f32) / 89.0).collect())).collect();
    fake.put_collection("docs", points);

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("models")).unwrap();
    std::fs::create_dir_all(data.join("docs")).unwrap();
    for i in 0..20 {
        restore_tests::random_file(&data.join(format!("docs/file-{i}.bin")), 50_000 + i * 7_000, i as u64);
    }
    // A setuid program of the source host: never setuid in a sandbox the plan does not ask for.
    std::fs::set_permissions(data.join("docs/file-0.bin"), std::os::unix::fs::PermissionsExt::from_mode(0o4755))
        .unwrap();
    let weights = synth::safetensors(&[
        ("embed.weight", "BF16", vec![2048, 64], synth::bf16_weights(2048 * 64, 3)),
        ("head.weight", "F32", vec![64, 64], vec![0u8; 64 * 64 * 4]),
    ]);
    std::fs::write(data.join("models/model.safetensors"), weights).unwrap();
    let db = data.join("app.db");
    Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);")
        .unwrap();
    write_fvecs(&data.join("emb.fvecs"), 2000, 32);
    let faiss = data.join("index.faiss");
    run_py(&[script("faiss_flat.py"), faiss.clone()]);
    let hnsw = data.join("index.hnsw");
    run_py(&[script("hnsw_build.py"), hnsw.clone()]);
    let chroma = data.join("chroma");
    let (ready, stop) = (tmp.path().join("ready"), tmp.path().join("stop"));
    let mut writer = std::process::Command::new(python())
        .arg(script("chroma_writer.py"))
        .args([&chroma, &ready, &stop])
        .spawn()
        .unwrap();
    restore_tests::plane::wait_for("400 vectors in Chroma", Duration::from_secs(120), || {
        std::fs::read_to_string(&ready).ok().and_then(|s| s.trim().parse::<u64>().ok()).is_some_and(|n| n >= 400)
    });
    std::fs::write(&stop, b"").unwrap();
    assert!(writer.wait().unwrap().success());

    let hnsw_probe = format!("{} {} 32", python().display(), script("hnsw_probe.py").display());
    let chroma_probe = format!("{} {}", python().display(), script("chroma_probe.py").display());
    let agent = format!(
        "[sources.vec]\nprobe_command = {hnsw_probe:?}\n[sources.chroma]\nprobe_command = {chroma_probe:?}\n[sources.qd]\nverify_qdrant = {:?}\n",
        fake.url
    );
    let (p, nas) = plane("", &agent);
    let d = |p: &std::path::Path| p.display().to_string();
    let sources = [
        Src(
            "app",
            vec![
                d(&data.join("docs")),
                format!("model:{}", d(&data.join("models"))),
                format!("sqlite:{}", d(&db)),
                format!("vectors:{}", d(&data.join("emb.fvecs"))),
                format!("faiss:{}", d(&faiss)),
            ],
        ),
        Src("vec", vec![format!("hnswlib:{}", d(&hnsw))]),
        Src("chroma", vec![format!("chroma:{}", d(&chroma))]),
        Src("qd", vec![format!("qdrant:{}/collections/docs", fake.url)]),
    ];
    let plans = "[[drill]]\nname = \"app-weekly\"\nsource = \"gpu-01/app\"\nschedule = \"0 4 * * 0\"\nrto = \"10m\"\nrpo = \"1h\"\nread_data = \"50%\"\n";
    apply(&p, &policy(&sources, plans));

    // Every kind: back up, then drill; PASS at three levels.
    let mut app_backup_started = Instant::now();
    for (name, kinds) in
        [("vec", "hnswlib"), ("chroma", "chroma"), ("qd", "qdrant"), ("app", "files+model+sqlite+vectors+faiss")]
    {
        if name == "app" {
            // A first snapshot for prune to forget later, then the one the drill restores.
            p.ctl_ok(&["backup", "gpu-01/app"]);
            app_backup_started = Instant::now();
        }
        p.ctl_ok(&["backup", &format!("gpu-01/{name}")]);
        if name == "app" {
            std::thread::sleep(Duration::from_secs(2));
        }
        let r = drill(&p, &format!("gpu-01/{name}"), &[]);
        assert_pass(name, &r);
        assert_eq!(r.report["source_kind"], kinds, "{}", r.report);
        let app_checks: Vec<&Value> =
            r.report["checks"].as_array().unwrap().iter().filter(|c| c["level"] == "application").collect();
        let wanted = match name {
            "vec" | "chroma" | "qd" => "golden queries",
            _ => "sqlite row count",
        };
        assert!(
            app_checks.iter().any(|c| c["check"].as_str().unwrap_or("").contains(wanted) && c["result"] == "PASS"),
            "{name}: the source's own verifier ran ({wanted}): {app_checks:?}"
        );
        if name != "app" {
            continue;
        }
        let anomalies = r.report["anomalies"].to_string();
        assert!(anomalies.contains("leaves out 1 setuid/setgid bit(s) and 0 file capabilities"), "{anomalies}");

        // The report's parts (docs/DRILLS.md), against what was measured around it.
        let rep = &r.report;
        let since_backup = app_backup_started.elapsed().as_secs_f64();
        let snaps = p.snapshots("gpu-01/app");
        assert_eq!(rep["snapshot"], snaps.last().unwrap()["snapshot_id"], "the newest snapshot was drilled");
        assert_eq!(rep["plan"]["name"], "app-weekly");
        assert_eq!(rep["plan"]["trigger"], "manual");
        assert!(rep["plan"]["operator"].as_str().unwrap().starts_with("admin:"), "{rep}");
        let (rto, rpo) = (rep["rto"]["measured_s"].as_f64().unwrap(), rep["rpo"]["measured_s"].as_f64().unwrap());
        assert!(rto > 0.0 && rto <= r.wall_s, "RTO {rto} s within the {:.2} s the command took", r.wall_s);
        assert!(
            (2.0..=since_backup).contains(&rpo),
            "RPO {rpo} s: at least the 2 s slept, at most {since_backup:.2} s"
        );
        assert_eq!((rep["rto"]["target_s"].as_f64(), rep["rpo"]["target_s"].as_f64()), (Some(600.0), Some(3600.0)));
        assert!(rep["read_check_s"].as_f64().unwrap() > 0.0);
        assert_eq!(rep["read_share_percent"], 50.0);
        assert!(rep["read_seed"].as_u64().is_some(), "a sampled read records its seed: {rep}");
        assert!(rep["sandbox"].as_str().unwrap().starts_with("gpu-01:"), "{rep}");
        assert!(rep["bytes"].as_u64().unwrap() > 1_000_000 && rep["throughput_bps"].as_f64().unwrap() > 0.0);
        assert_eq!(rep["format_version"], 1);
        assert!(!rep["key_slot"].as_str().unwrap().is_empty() && !rep["tresor_version"].as_str().unwrap().is_empty());
        assert_eq!(rep["evidences"], serde_json::json!(["CON.3.A15", "NOT.4.16", "NOT.4.17"]));
        assert_eq!(rep["signature"]["alg"], "Ed25519");
        let sandbox = rep["sandbox"].as_str().unwrap().trim_start_matches("gpu-01:");
        assert!(!std::path::Path::new(sandbox).exists(), "the sandbox was cleaned");
        let id = rep["drill_id"].as_str().unwrap().to_string();

        // In the catalog, as HTML in both languages, and write-once in the vault with its key.
        let shown: Value = serde_json::from_str(&p.ctl_ok(&["report", "show", &id])).unwrap();
        assert_eq!(&shown, rep);
        let de = p.ctl_ok(&["report", "show", &id, "--html", "--lang", "de"]);
        let en = p.ctl_ok(&["report", "show", &id, "--html", "--lang", "en"]);
        assert!(
            de.contains("<html lang=\"de\">")
                && de.contains("BESTANDEN")
                && de.contains("Erklärung zur Barrierefreiheit")
        );
        assert!(en.contains("<html lang=\"en\">") && en.contains(">PASS<") && en.contains("Accessibility statement"));
        let docs = tmp.path().join("vault-docs");
        vault_documents(&nas, &docs);
        let stored = docs.join(format!("reports/{id}.json"));
        let from_vault: Value = serde_json::from_str(&std::fs::read_to_string(&stored).unwrap()).unwrap();
        assert_eq!(&from_vault, rep, "the vault holds the same signed report");
        let keys: Vec<_> = std::fs::read_dir(docs.join("reports"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|f| f.to_string_lossy().ends_with(".pub.pem"))
            .collect();
        assert_eq!(keys.len(), 1);
        assert_eq!(std::fs::read_to_string(&keys[0]).unwrap(), std::fs::read_to_string(pubkey(&p)).unwrap());
        let v = ctl_offline(&["report", "verify", stored.to_str().unwrap(), "--pubkey", keys[0].to_str().unwrap()]);
        assert_eq!(v.status.code(), Some(0), "{}", String::from_utf8_lossy(&v.stdout));

        // Prune forgets the older snapshot and collects garbage; reports and checkpoints stay.
        let before = vault_documents(&nas, &tmp.path().join("before"))["documents"].clone();
        p.ctl_ok(&["prune", "nas"]);
        assert_eq!(p.snapshots("gpu-01/app").len(), 1, "retention kept one snapshot of app");
        let after = vault_documents(&nas, &tmp.path().join("after"))["documents"].clone();
        for d in before.as_array().unwrap() {
            assert!(after.as_array().unwrap().contains(d), "{d} survived prune and GC");
        }
    }
    let list = p.ctl_json(&["drill", "list"]);
    assert_eq!(list["drills"].as_array().unwrap().len(), 4, "{list}");
    assert_eq!(list["plans"][0]["last_verdict"], "PASS", "{list}");
}
