//! The verifier: a restored tree checked against the snapshot it came from. Every regular file's
//! size and BLAKE3; for model files, the header parsed again, the tensor table equal to the one
//! recorded, and every tensor's hash, so a damaged tensor is named.

use std::ffi::OsStr;
use std::io::{Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tresor_vault::snapshot::{ModelLayout, Node, NodeKind};

use crate::model::{self, Format};

pub use crate::report::{Finding, Report};

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
    let layout = match &n.model {
        Some(m) => checked_layout(&mut file, size, m, shown, report)?,
        None => None,
    };
    // One pass over the file: the whole-file hash, and each tensor's on the way.
    file.seek(SeekFrom::Start(0))?;
    let mut whole = blake3::Hasher::new();
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    let tensor_hashes = match &layout {
        Some(l) => {
            let mut tensors = model::TensorHasher::new(reader, l);
            std::io::copy(&mut tensors, &mut whole)?;
            Some(tensors.finish())
        }
        None => {
            std::io::copy(&mut { reader }, &mut whole)?;
            None
        }
    };
    report.bytes += size;
    if let (Some(m), Some(hashes)) = (&n.model, tensor_hashes) {
        report_tensors(m, &hashes, shown, report);
    }
    let got = whole.finalize();
    match &n.hash {
        Some(want) if want.as_slice() == got.as_bytes() => {}
        Some(want) => {
            report.push(shown, "file BLAKE3", false, format!("{} != recorded {}", got.to_hex(), hex::encode(want)))
        }
        None => report.push(shown, "file BLAKE3", false, "the snapshot recorded no hash"),
    }
    Ok(())
}

/// The restored file's layout when its header parses and its tensor table is the recorded one;
/// otherwise the finding that says why, and `None`.
fn checked_layout(
    file: &mut std::fs::File,
    size: u64,
    recorded: &ModelLayout,
    shown: &str,
    report: &mut Report,
) -> std::io::Result<Option<model::Layout>> {
    let Some(format) = Format::from_name(&recorded.format) else {
        report.push(shown, "model format", false, format!("unknown format {:?} in the snapshot", recorded.format));
        return Ok(None);
    };
    let layout = match model::parse(format, file, size) {
        Ok(l) => l,
        Err(model::ModelError::Io(e)) => return Err(e),
        Err(e) => {
            report.push(shown, "model header", false, e.to_string());
            return Ok(None);
        }
    };
    let differs = layout.tensors.iter().zip(&recorded.tensors).find(|(a, b)| !a.matches(b));
    if differs.is_some() || layout.tensors.len() != recorded.tensors.len() {
        let detail = differs
            .map(|(a, b)| {
                format!(
                    "first difference: {:?} {} {:?} at {} vs recorded {:?} {} {:?} at {}",
                    a.name, a.dtype, a.shape, a.offset, b.name, b.dtype, b.shape, b.offset
                )
            })
            .unwrap_or_else(|| format!("{} tensors, {} recorded", layout.tensors.len(), recorded.tensors.len()));
        report.push(shown, "tensor table", false, detail);
        return Ok(None);
    }
    Ok(Some(layout))
}

fn report_tensors(recorded: &ModelLayout, hashes: &[[u8; 32]], shown: &str, report: &mut Report) {
    let mut bad = 0;
    for (t, h) in recorded.tensors.iter().zip(hashes) {
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
                recorded.format,
                hashes.len()
            ),
        );
    }
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
    /// The SQL probes this host trusts (its agent.toml's, or `verify --probe`). A probe recorded
    /// in a snapshot runs only when it is one of these: the snapshot is bytes any key holder can
    /// write, and SQL run as a superuser can start programs.
    pub probes: Vec<String>,
    /// PostgreSQL's programs, set by the host (default: `/usr/lib/postgresql/MAJOR/bin` for the
    /// copy's plain major version). Never a path the snapshot names.
    pub pg_bindir: Option<std::path::PathBuf>,
}

/// Where a recorded absolute path was restored under `root`. The path comes from storage: it is
/// refused when it would leave the restored copy, or reach it through a link (a tree holding
/// `x -> /` and a record naming `x/var/lib/postgresql/...` would otherwise start a server on
/// this host's own data). A path not there at all is returned, for its verifier to report.
fn below(root: &Path, recorded: &str) -> Result<std::path::PathBuf, String> {
    let rel = recorded.trim_start_matches('/');
    if !tresor_vault::snapshot::path_stays_below(rel.as_bytes()) {
        return Err("the recorded path would leave the restored copy".into());
    }
    let dir = crate::files::beneath::Dir::open_configured(root).map_err(|e| e.to_string())?;
    match dir.open_at(rel.as_bytes(), rustix::fs::OFlags::PATH) {
        Ok(fd) => match rustix::fs::fstat(&fd) {
            Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink => {
                Err("the recorded path is a symbolic link in the restored copy".into())
            }
            Ok(_) => Ok(root.join(rel)),
            Err(e) => Err(e.to_string()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(root.join(rel)),
        // A link on the way: the error names it.
        Err(e) => Err(e.to_string()),
    }
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
            let restored = match below(root, p) {
                Ok(r) => r,
                Err(why) => {
                    report.push(p, "path", false, format!("{why}; not checked"));
                    continue;
                }
            };
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
                    let bindir = opts.pg_bindir.as_deref();
                    crate::postgres::verify::verify(&restored, &s.probes, &opts.probes, bindir, report);
                    if let Some(d) = s.probes.get("pg_dump_dir") {
                        match below(root, d) {
                            Ok(dumps) => crate::postgres::verify::verify_dumps(&dumps, bindir, report),
                            Err(why) => report.push(d, "pg_dump archives", false, format!("{why}; not checked")),
                        }
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
    let now = match probes.get("golden_method").and_then(|m| crate::vector::Builtin::from_name(m)) {
        Some(builtin) => {
            let read = crate::vector::load(index, builtin).map_err(|e| e.to_string());
            let queries = probes.get("golden_queries").and_then(|q| faiss::decode_queries(q));
            match (read, queries) {
                (Ok(flat), Some(q)) => flat.search(&q, recorded.k),
                (Err(e), _) => return report.push(shown, check, false, e),
                (_, None) => return report.push(shown, check, false, "the recorded query vectors are unreadable"),
            }
        }
        None => {
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
    let want = probes.get("sha256").cloned().unwrap_or_default();
    match qdrant::sha256_file(file) {
        Ok(got) if got == want => {
            report.push(shown, "snapshot SHA-256", true, format!("{got}, as Qdrant said at backup"))
        }
        Ok(got) => {
            // A damaged snapshot is not uploaded anywhere.
            return report.push(shown, "snapshot SHA-256", false, format!("{got} (Qdrant said {want} at backup)"));
        }
        Err(e) => return report.push(shown, "snapshot SHA-256", false, e.to_string()),
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
    let queries = probes
        .get("golden_queries")
        .and_then(|q| faiss::decode_queries(q))
        .filter(|q| dim > 0 && !q.is_empty() && q.len() % dim == 0);
    let (Some(recorded), Some(queries)) = (recorded, queries) else {
        return report.push(shown, check, false, "the snapshot holds no readable golden queries (or their dimension)");
    };
    let name = format!(
        "{}-tresor-verify-{}",
        probes.get("collection").map_or("collection", String::as_str),
        std::process::id()
    );
    let scratch = qdrant::Collection { base: base.trim_end_matches('/').to_string(), name };
    let client = match qdrant::Client::new(opts.probe_timeout) {
        Ok(c) => c,
        Err(e) => return report.push(shown, check, false, e.to_string()),
    };
    let outcome = client.recover(&scratch, file, Some(&want)).and_then(|()| {
        let q: Vec<Vec<f32>> = queries.chunks(dim).map(<[f32]>::to_vec).collect();
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

#[cfg(test)]
mod tests {
    use tresor_vault::snapshot::SourceRecord;

    use super::*;

    /// A record naming a path behind a link of the restored tree is not checked there: the
    /// verifier would otherwise open (or start a server on) whatever the link points at.
    #[test]
    fn a_recorded_path_through_a_link_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("restored"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("x")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("real/last")).unwrap();
        let record = |path: &str| SourceRecord {
            kind: "sqlite".into(),
            spec: path.into(),
            paths: vec![path.into()],
            probes: Default::default(),
        };
        let mut report = Report::default();
        let sources = [record("/x/app.db"), record("/real/last"), record("/../outside/app.db")];
        verify_sources(&root, &sources, &VerifyOptions::default(), &mut report);
        let refused: Vec<&Finding> = report.findings.iter().filter(|f| f.check == "path" && !f.ok).collect();
        assert_eq!(refused.len(), 3, "{:?}", report.findings);
        assert!(refused[..2].iter().all(|f| f.detail.contains("symbolic link")), "{refused:?}");
        assert!(refused[2].detail.contains("would leave"));
        assert_eq!(below(&root, "/real/missing.db").unwrap(), root.join("real/missing.db"));
    }
}
