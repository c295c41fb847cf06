//! Vector indexes built by the real Python libraries (faiss-cpu and hnswlib from PyPI, installed
//! by scripts/ensure-python-deps.sh): golden queries recorded at backup, re-run on the restored
//! index; a truncated index fails; a probe command that hangs fails the job cleanly.

use std::path::Path;

use restore_tests::World;

use super::{python, restore_and_verify, run_py, script, verified, verify};

/// The verifier's golden-query finding must pass with recall 1.0.
fn assert_full_recall(v: &serde_json::Value) {
    let f = v["report"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "golden queries")
        .unwrap_or_else(|| panic!("no golden-query finding: {v}"));
    assert!(f["ok"] == true && f["detail"].as_str().unwrap().contains("recall@10 1.000"), "{f}");
}

fn truncate(path: &Path, by: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - by).unwrap();
}

/// The pre-hook makes the "application" save its FAISS flat index; the built-in brute force
/// records the golden queries; the restored copy answers them with recall 1.0 and a truncated
/// copy fails.
#[test]
fn faiss_flat_index_saved_by_a_pre_hook_answers_its_golden_queries() {
    let w = World::new();
    let dir = w.path("app");
    std::fs::create_dir_all(&dir).unwrap();
    let index = dir.join("index.faiss");
    let save = format!("{} {} {}", python().display(), script("faiss_flat.py").display(), index.display());
    let spec = format!("faiss:{}", index.display());
    let b = w.json(&["backup", "--vault", w.vault_str(), "--pre-hook", &save, "--source", &spec]);
    assert_eq!(b["manifest"]["sources"][0]["probes"]["golden_method"], "builtin-flat", "{b}");
    let to = w.path("restored");
    assert_full_recall(&verified(&restore_and_verify(&w, &to)));

    truncate(&to.join(index.strip_prefix("/").unwrap()), 1000);
    let out = verify(&w, &to, false, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(13), "{text}");
    assert!(text.contains("golden queries") && text.contains("truncated"), "{text}");
}

/// An hnswlib index answers through a probe command, at backup and on the restored copy.
#[test]
fn hnswlib_index_answers_through_a_probe_command() {
    let w = World::new();
    let dir = w.path("app");
    std::fs::create_dir_all(&dir).unwrap();
    let index = dir.join("index.hnsw");
    run_py(&[script("hnsw_build.py"), index.clone()]);
    // The probe command also prints its environment: the agent's password never reaches it.
    let seen = w.path("probe.env");
    let probe = format!("env > {}; {} {} 32", seen.display(), python().display(), script("hnsw_probe.py").display());
    let spec = format!("hnswlib:{}", index.display());
    let b = w.json(&["backup", "--vault", w.vault_str(), "--source", &spec, "--probe-command", &probe]);
    assert_eq!(b["manifest"]["sources"][0]["probes"]["golden_method"], "command", "{b}");
    let env = std::fs::read_to_string(&seen).unwrap();
    assert!(env.contains("TRESOR_INDEX=") && !env.contains(&w.password) && !env.contains("TRESOR_PASSWORD"), "{env}");
    let to = w.path("restored");
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", to.to_str().unwrap()]);
    assert_full_recall(&verified(&verify(&w, &to, true, &["--probe-command", &probe])));
    // Without the probe command the verifier says what it needs instead of passing silently.
    let out = verify(&w, &to, true, &[]);
    assert_eq!(out.status.code(), Some(13));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--probe-command"));
    truncate(&to.join(index.strip_prefix("/").unwrap()), 4096);
    let out = verify(&w, &to, true, &["--probe-command", &probe]);
    assert_eq!(out.status.code(), Some(13), "{}", String::from_utf8_lossy(&out.stdout));
}

/// A probe command that hangs is killed at its timeout; the job fails and earlier snapshots stay.
#[test]
fn a_hanging_probe_command_fails_the_job_cleanly() {
    let w = World::new();
    let index = w.path("index.hnsw");
    run_py(&[script("hnsw_build.py").into_os_string(), index.clone().into_os_string(), "200".into()]);
    let plain = w.path("plain");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(plain.join("f"), b"x").unwrap();
    w.backup(&[&plain]);
    let before = w.snapshot_ids();
    let started = std::time::Instant::now();
    let spec = format!("hnswlib:{}", index.display());
    let out = w.run(&[
        "backup",
        "--vault",
        w.vault_str(),
        "--source",
        &spec,
        "--probe-command",
        "sleep 600",
        "--probe-timeout",
        "2s",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("probe command `sleep 600`") && err.contains("no answer within 2 s"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(w.snapshot_ids(), before);
}

/// A Chroma persistent directory while a writer keeps adding vectors: the copy restores, passes
/// SQLite's checks and answers its golden queries exactly as the copy did at backup.
#[test]
fn chroma_directory_under_a_live_writer_restores_and_answers_its_golden_queries() {
    let w = World::new();
    let db = w.path("chroma");
    let (ready, stop) = (w.path("ready"), w.path("stop"));
    let mut writer = std::process::Command::new(python())
        .arg(script("chroma_writer.py"))
        .args([&db, &ready, &stop])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    restore_tests::plane::wait_for("the writer's first 2,000 vectors", std::time::Duration::from_secs(120), || {
        std::fs::read_to_string(&ready).ok().and_then(|s| s.trim().parse::<u64>().ok()).is_some_and(|n| n >= 2000)
    });
    let probe = format!("{} {}", python().display(), script("chroma_probe.py").display());
    let spec = format!("chroma:{}", db.display());
    let b = w.json(&["backup", "--vault", w.vault_str(), "--source", &spec, "--probe-command", &probe]);
    let during = std::fs::read_to_string(&ready).unwrap();
    assert!(writer.try_wait().unwrap().is_none(), "the writer was still writing when the backup ended");
    std::fs::write(&stop, b"").unwrap();
    let out = writer.wait_with_output().unwrap();
    assert!(out.status.success(), "the writer failed: {}", String::from_utf8_lossy(&out.stderr));
    let probes = &b["manifest"]["sources"][0]["probes"];
    assert!(probes["rows.embeddings"].as_str().unwrap().parse::<u64>().unwrap() >= 2000, "{probes}");
    eprintln!("writer had {} vectors when the backup ended", during.trim());

    let to = w.path("restored");
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", to.to_str().unwrap()]);
    let v = verified(&verify(&w, &to, true, &["--probe-command", &probe]));
    assert_full_recall(&v);
    let findings = v["report"]["findings"].as_array().unwrap();
    assert!(findings.iter().any(|f| f["check"] == "sqlite integrity_check" && f["ok"] == true), "{v}");
}

/// Qdrant through its snapshot API. THIS IS A TEST AGAINST A FAKE of Qdrant's documented HTTP API
/// (restore_tests::qdrant_fake), not a check of a real Qdrant: no Qdrant server can run on this
/// machine. It shows that Tresor makes, downloads and deletes the remote snapshot, records golden
/// queries, and on verify recovers the snapshot into a scratch collection through the upload API,
/// re-runs the queries and removes the scratch collection; `qdrant-recover` restores the collection.
#[test]
fn qdrant_against_a_fake_of_the_documented_api_snapshot_verify_and_recover() {
    eprintln!("NOTE: this test runs against a fake of Qdrant's documented HTTP API, not a real Qdrant server");
    let fake = restore_tests::qdrant_fake::FakeQdrant::start(Some("secret-key"));
    let points: Vec<(u64, Vec<f32>)> =
        (0..500u64).map(|i| (i, (0..16).map(|j| (((i * 31 + j * 7) % 97) as f32) / 97.0).collect())).collect();
    fake.put_collection("docs", points.clone());
    let mut w = World::new();
    let spec = format!("qdrant:{}/collections/docs", fake.url);
    let out = w.run(&["backup", "--vault", w.vault_str(), "--source", &spec]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "without the API key the job fails: {err}");
    assert!(err.contains("HTTP 401"), "{err}");

    w.env.push(("QDRANT_API_KEY".into(), "secret-key".into()));
    w.json(&["backup", "--vault", w.vault_str(), "--source", &spec]);
    assert!(fake.snapshots("docs").is_empty(), "the remote snapshot was deleted after the download");

    let to = w.path("restored");
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", to.to_str().unwrap()]);
    let file =
        to.join("tresor-sources/qdrant").read_dir().unwrap().next().unwrap().unwrap().path().join("docs.snapshot");
    assert_full_recall(&verified(&verify(&w, &to, true, &["--qdrant", &fake.url])));
    assert_eq!(fake.collections(), ["docs"], "the scratch collection was removed");

    let target = format!("{}/collections/docs-restored", fake.url);
    w.ok(&["qdrant-recover", file.to_str().unwrap(), "--collection", &target]);
    assert_eq!(fake.points("docs-restored").unwrap(), points);

    truncate(&file, 10);
    let out = verify(&w, &to, true, &["--qdrant", &fake.url]);
    assert_eq!(out.status.code(), Some(13));
    assert!(String::from_utf8_lossy(&out.stdout).contains("snapshot SHA-256"));
}

/// A raw float32 matrix saved by NumPy: golden queries by the built-in brute force, recall 1.0 on
/// the restored copy, and a truncated copy fails.
#[test]
fn a_numpy_matrix_answers_its_golden_queries_by_brute_force() {
    let w = World::new();
    let npy = w.path("emb.npy");
    let code = format!(
        "import numpy as np; np.save('{}', np.random.default_rng(2).standard_normal((3000, 48), dtype=np.float32))",
        npy.display()
    );
    run_py(&["-c", &code]);
    let b = w.json(&["backup", "--vault", w.vault_str(), "--source", &format!("vectors:{}", npy.display())]);
    assert_eq!(b["manifest"]["sources"][0]["probes"]["golden_method"], "builtin-matrix");
    let to = w.path("restored");
    assert_full_recall(&verified(&restore_and_verify(&w, &to)));
    truncate(&to.join(npy.strip_prefix("/").unwrap()), 8);
    let out = verify(&w, &to, false, &[]);
    assert_eq!(out.status.code(), Some(13));
    assert!(String::from_utf8_lossy(&out.stdout).contains("truncated"));
}
