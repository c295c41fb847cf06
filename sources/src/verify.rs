//! The verifier: a restored tree checked against the snapshot it came from. Every regular file's
//! size and BLAKE3; for model files, the header parsed again, the tensor table equal to the one
//! recorded, and every tensor's hash, so a damaged tensor is named.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tresor_vault::snapshot::{ModelLayout, Node, NodeKind};

use crate::model::{self, Format};

pub use crate::report::{Finding, Report};

fn format_of(name: &str) -> Option<Format> {
    [Format::Safetensors, Format::Gguf, Format::PytorchZip].into_iter().find(|f| f.name() == name)
}

/// Check the files of `nodes` restored under `root`. Blocking: call from a blocking thread.
pub fn verify_files(root: &Path, nodes: &[Node], report: &mut Report) {
    for n in nodes {
        let path = root.join(OsStr::from_bytes(&n.path));
        let shown = n.display_path();
        match n.kind {
            NodeKind::File => {
                if let Err(e) = verify_file(&path, n, &shown, report) {
                    report.push(&shown, "readable", false, e.to_string());
                }
            }
            NodeKind::Dir => {
                let ok = path.is_dir();
                if !ok {
                    report.push(&shown, "directory exists", false, "missing");
                }
            }
            NodeKind::Symlink => {
                let got = std::fs::read_link(&path).map(|t| t.as_os_str().as_bytes().to_vec()).ok();
                if got.as_deref() != n.target.as_deref() {
                    report.push(&shown, "symlink target", false, "missing or different");
                }
            }
            NodeKind::Hardlink | NodeKind::Fifo => {
                if std::fs::symlink_metadata(&path).is_err() {
                    report.push(&shown, "exists", false, "missing");
                }
            }
        }
    }
}

fn verify_file(path: &Path, n: &Node, shown: &str, report: &mut Report) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    report.files += 1;
    if size != n.size {
        report.push(shown, "size", false, format!("{size} bytes, snapshot says {}", n.size));
        return Ok(());
    }
    if let Some(m) = &n.model {
        verify_model(&mut file, size, m, shown, report)?;
    }
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, &mut std::fs::File::open(path)?), &mut hasher)?;
    report.bytes += size;
    let got = hasher.finalize();
    match &n.hash {
        Some(want) if want.as_slice() == got.as_bytes() => {}
        Some(want) => {
            report.push(shown, "file BLAKE3", false, format!("{} != recorded {}", got.to_hex(), hex::encode(want)))
        }
        None => report.push(shown, "file BLAKE3", false, "the snapshot recorded no hash"),
    }
    Ok(())
}

fn verify_model(
    file: &mut std::fs::File,
    size: u64,
    recorded: &ModelLayout,
    shown: &str,
    report: &mut Report,
) -> std::io::Result<()> {
    let Some(format) = format_of(&recorded.format) else {
        report.push(shown, "model format", false, format!("unknown format {:?} in the snapshot", recorded.format));
        return Ok(());
    };
    let layout = match model::parse(format, file, size) {
        Ok(l) => l,
        Err(e) => {
            report.push(shown, "model header", false, e.to_string());
            return Ok(());
        }
    };
    let same_table = layout.tensors.len() == recorded.tensors.len()
        && layout.tensors.iter().zip(&recorded.tensors).all(|(a, b)| {
            a.name == b.name && a.dtype == b.dtype && a.shape == b.shape && a.offset == b.offset && a.len == b.len
        });
    if !same_table {
        let first = layout
            .tensors
            .iter()
            .zip(&recorded.tensors)
            .find(|(a, b)| a.name != b.name || a.offset != b.offset || a.len != b.len || a.shape != b.shape)
            .map(|(a, b)| {
                format!("first difference: {:?} at {} vs recorded {:?} at {}", a.name, a.offset, b.name, b.offset)
            })
            .unwrap_or_else(|| format!("{} tensors, {} recorded", layout.tensors.len(), recorded.tensors.len()));
        report.push(shown, "tensor table", false, first);
        return Ok(());
    }
    let hashes = model::hash_tensors(file, &layout)?;
    let mut bad = 0;
    for (t, h) in recorded.tensors.iter().zip(&hashes) {
        report.tensors += 1;
        if t.hash.as_slice() != h {
            bad += 1;
            report.push(
                format!("{shown} tensor {}", t.name),
                "tensor BLAKE3",
                false,
                format!("{} {:?}: {} != recorded {}", t.dtype, t.shape, hex::encode(h), hex::encode(&t.hash)),
            );
        }
    }
    if bad == 0 {
        report.push(
            shown,
            "model",
            true,
            format!(
                "{} header parses, {} tensors cover the file as recorded, all hashes equal",
                format.name(),
                hashes.len()
            ),
        );
    }
    Ok(())
}

/// What the host running the verifier supplies (never taken from the snapshot: a snapshot names
/// no command for us to run).
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The probe command for indexes whose golden queries were recorded by one.
    pub probe_command: Option<String>,
    /// Its time limit.
    pub probe_timeout: std::time::Duration,
    /// A scratch Qdrant (`http(s)://HOST:PORT`) to recover Qdrant snapshots into for their golden queries.
    pub qdrant: Option<String>,
}

/// Run each source's own verifier on its restored copy under `root`. Blocking.
pub fn verify_sources(
    root: &Path,
    sources: &[tresor_vault::snapshot::SourceRecord],
    opts: &VerifyOptions,
    report: &mut Report,
) {
    for s in sources {
        for p in &s.paths {
            let restored = root.join(p.trim_start_matches('/'));
            match s.kind.as_str() {
                "model" => {
                    if s.probes.contains_key("shards") {
                        match crate::model::hf::check_tree(&restored) {
                            Ok(i) => report.push(
                                p,
                                "model index",
                                true,
                                format!("{} names {} shards, all present and complete", i.indexes.join(", "), i.shards),
                            ),
                            Err(e) => report.push(p, "model index", false, e.to_string()),
                        }
                    }
                }
                "sqlite" => crate::sqlite::verify(&restored, &s.probes, report),
                "postgres" => {
                    crate::postgres::verify::verify(&restored, &s.probes, report);
                    if let Some(d) = s.probes.get("pg_dump_dir") {
                        crate::postgres::verify::verify_dumps(&root.join(d.trim_start_matches('/')), report);
                    }
                }
                "faiss" | "hnswlib" | "vectors" => verify_golden(&restored, p, &s.probes, opts, report),
                "chroma" => {
                    let db = restored.join(crate::vector::chroma::DB);
                    crate::sqlite::verify(&db, &s.probes, report);
                    verify_golden(&restored, p, &s.probes, opts, report);
                }
                "qdrant" => verify_qdrant(&restored, p, &s.probes, opts, report),
                other => report.push(p, "source kind", false, format!("no verifier for kind {other:?}")),
            }
        }
    }
}

fn verify_golden(
    index: &Path,
    shown: &str,
    probes: &std::collections::BTreeMap<String, String>,
    opts: &VerifyOptions,
    report: &mut Report,
) {
    use crate::vector::{Golden, compare, faiss, probe};
    let check = "golden queries";
    let Some(recorded) = probes.get("golden").and_then(|g| serde_json::from_str::<Golden>(g).ok()) else {
        return report.push(shown, check, false, "the snapshot holds no readable golden queries");
    };
    let now = match probes.get("golden_method").map(String::as_str) {
        Some(method @ ("builtin-flat" | "builtin-matrix")) => {
            let read = if method == "builtin-matrix" {
                crate::vector::matrix::read(index).map_err(|e| e.to_string())
            } else {
                std::fs::File::open(index).map_err(|e| e.to_string()).and_then(|f| {
                    let size = f.metadata().map_err(|e| e.to_string())?.len();
                    faiss::read_flat(std::io::BufReader::new(f), size).map_err(|e| e.to_string())
                })
            };
            let queries = probes.get("golden_queries").and_then(|q| faiss::decode_queries(q));
            match (read, queries) {
                (Ok(flat), Some(q)) => flat.search(&q, recorded.k),
                (Err(e), _) => return report.push(shown, check, false, e),
                (_, None) => return report.push(shown, check, false, "the recorded query vectors are unreadable"),
            }
        }
        _ => {
            let Some(cmd) = &opts.probe_command else {
                return report.push(
                    shown,
                    check,
                    false,
                    format!(
                        "recorded by a probe command; give --probe-command to re-run them (the backup used `{}`)",
                        probes.get("probe_command").map_or("?", String::as_str)
                    ),
                );
            };
            match probe::run(cmd, index, opts.probe_timeout) {
                Ok(g) => g,
                Err(e) => return report.push(shown, check, false, e.to_string()),
            }
        }
    };
    let c = compare(&recorded, &now);
    let need = if recorded.exact {
        "exact index: 1.0 required".to_string()
    } else {
        format!("at least {} required", recorded.min_recall)
    };
    report.push(
        shown,
        check,
        c.passes(&recorded),
        format!(
            "recall@{} {:.3} over {} queries ({need}); {} distances differ",
            recorded.k, c.recall, c.queries, c.distance_mismatches
        ),
    );
}

fn verify_qdrant(
    file: &Path,
    shown: &str,
    probes: &std::collections::BTreeMap<String, String>,
    opts: &VerifyOptions,
    report: &mut Report,
) {
    use crate::vector::{Golden, compare, faiss, qdrant};
    use sha2::Digest;
    let sha = std::fs::read(file).map(|b| hex::encode(sha2::Sha256::digest(&b)));
    let want = probes.get("sha256").cloned().unwrap_or_default();
    match sha {
        Ok(got) => report.push(shown, "snapshot SHA-256", got == want, format!("{got} (Qdrant said {want} at backup)")),
        Err(e) => return report.push(shown, "snapshot SHA-256", false, e.to_string()),
    }
    if !report.ok() {
        return;
    }
    let check = "golden queries";
    let Some(base) = &opts.qdrant else {
        return report.push(
            shown,
            check,
            false,
            "give --qdrant http(s)://HOST:PORT of a scratch Qdrant to recover the snapshot into",
        );
    };
    let recorded: Option<Golden> = probes.get("golden").and_then(|g| serde_json::from_str(g).ok());
    let dim: usize = probes.get("dim").and_then(|d| d.parse().ok()).unwrap_or(0);
    let queries = probes.get("golden_queries").and_then(|q| faiss::decode_queries(q));
    let (Some(recorded), Some(queries)) = (recorded, queries) else {
        return report.push(shown, check, false, "the snapshot holds no readable golden queries");
    };
    let name = format!(
        "{}-tresor-verify-{}",
        probes.get("collection").map_or("collection", String::as_str),
        std::process::id()
    );
    let scratch = qdrant::Collection { base: base.trim_end_matches('/').to_string(), name };
    let client = match qdrant::Client::new(opts.probe_timeout.max(std::time::Duration::from_secs(600))) {
        Ok(c) => c,
        Err(e) => return report.push(shown, check, false, e.to_string()),
    };
    let outcome = client.recover(&scratch, file, Some(&want)).and_then(|()| {
        let q: Vec<Vec<f32>> = queries.chunks(dim.max(1)).map(<[f32]>::to_vec).collect();
        client.golden(&scratch, &q, recorded.k)
    });
    let dropped = client.drop_collection(&scratch);
    match outcome {
        Ok(now) => {
            let c = compare(&recorded, &now);
            report.push(
                shown,
                check,
                c.passes(&recorded),
                format!(
                    "recovered into {} on {base}: recall@{} {:.3} over {} queries (at least {} required)",
                    scratch.name, recorded.k, c.recall, c.queries, recorded.min_recall
                ),
            );
        }
        Err(e) => report.push(shown, check, false, e.to_string()),
    }
    if let Err(e) = dropped {
        report.push(shown, "scratch collection removed", false, e.to_string());
    }
}
