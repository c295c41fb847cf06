//! Capturing a source before the walk: checking what must be whole (model files and their
//! indexes) and making consistent copies (SQLite) in a staging directory, grafted into the tree at
//! the source's own path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tresor_vault::snapshot::SourceRecord;

use crate::model;
use crate::spec::{Kind, SourceSpec};

/// A source made ready for the walk.
#[derive(Debug, Clone)]
pub struct Captured {
    /// What to walk: (where the bytes are now, where they sit in the snapshot's tree).
    pub roots: Vec<(PathBuf, PathBuf)>,
    /// The record the manifest keeps for the verifier.
    pub record: SourceRecord,
}

/// Why a source could not be captured.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The source's path is unusable.
    #[error("{spec}: {why}")]
    Source {
        /// The source.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// A model file does not parse.
    #[error("{spec}: {path}: {source}")]
    Model {
        /// The source.
        spec: String,
        /// The file.
        path: String,
        /// The parser's reason.
        source: model::ModelError,
    },
    /// SQLite failed.
    #[error("{spec}: {source}")]
    Sqlite {
        /// The source.
        spec: String,
        /// The reason.
        source: Box<crate::sqlite::SqliteError>,
    },
}

/// Per-source settings that come from the host (CLI flags or agent.toml), never from a policy.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Pre and post commands.
    pub hooks: crate::hooks::Hooks,
    /// SQL invariants for database sources.
    pub probes: Vec<String>,
    /// The command answering golden queries for indexes Tresor cannot search itself.
    pub probe_command: Option<String>,
    /// Limit for one run of the probe command.
    pub probe_timeout: std::time::Duration,
    /// PostgreSQL: also take logical dumps.
    pub pg_dump: bool,
    /// PostgreSQL's programs (default: the newest under /usr/lib/postgresql).
    pub pg_bindir: Option<std::path::PathBuf>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            hooks: crate::hooks::Hooks { timeout: std::time::Duration::from_secs(600), ..Default::default() },
            probes: Vec::new(),
            probe_command: None,
            probe_timeout: std::time::Duration::from_secs(300),
            pg_dump: false,
            pg_bindir: None,
        }
    }
}

/// Whether a kind streams into the open session (after the walk) instead of being captured before it.
pub fn is_streamed(kind: Kind) -> bool {
    kind == Kind::Postgres
}

/// Capture one source that is not streamed; `staging` is an empty directory this run owns. Blocking.
pub fn capture(spec: &SourceSpec, staging: &Path, opts: &SourceOptions) -> Result<Captured, CaptureError> {
    let bad = |why: String| CaptureError::Source { spec: spec.to_string(), why };
    let path = spec.path();
    let (root, probes) = match spec.kind {
        Kind::Postgres => return Err(bad("a streamed source is stored after the walk".into())),
        Kind::Qdrant => return capture_qdrant(spec, staging, opts).map_err(bad),
        kind => {
            let md = std::fs::metadata(&path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
            let wants_file = !matches!(kind, Kind::Model | Kind::Chroma);
            if wants_file && !md.is_file() {
                return Err(bad(format!("{} is not a file", path.display())));
            }
            match kind {
                Kind::Model => (path.clone(), model_probes(spec, &path, md.is_dir())?),
                Kind::Sqlite => {
                    let copy = staging.join("sqlite.db");
                    let probes = crate::sqlite::capture(&path, &copy)
                        .map_err(|e| CaptureError::Sqlite { spec: spec.to_string(), source: Box::new(e) })?;
                    // The copy is restored in the database's place, with its permissions.
                    let _ = std::fs::set_permissions(&copy, md.permissions());
                    (copy, probes)
                }
                Kind::Chroma => {
                    let copy = staging.join("chroma");
                    std::fs::create_dir_all(&copy).map_err(|e| bad(e.to_string()))?;
                    crate::vector::chroma::copy_dir(&path, &copy).map_err(&bad)?;
                    // Golden queries on the copy: exactly what is stored, whatever the writer does.
                    let mut probes = record_golden(spec, &copy, opts).map_err(&bad)?;
                    probes.extend(
                        crate::sqlite::inspect(&copy.join(crate::vector::chroma::DB))
                            .map_err(|e| bad(e.to_string()))?,
                    );
                    (copy, probes)
                }
                // FAISS, hnswlib, raw matrices: the file itself, with its golden queries.
                _ => (path.clone(), record_golden(spec, &path, opts).map_err(bad)?),
            }
        }
    };
    Ok(Captured {
        roots: vec![(root, path.clone())],
        record: SourceRecord {
            kind: spec.kind.name().into(),
            spec: spec.spec.clone(),
            paths: vec![path.display().to_string()],
            probes,
        },
    })
}

/// The probes of a `model:` source: its files and tensors (every model file must parse) and, for a
/// directory, the shards its indexes name (every one must be there).
fn model_probes(spec: &SourceSpec, path: &Path, is_dir: bool) -> Result<BTreeMap<String, String>, CaptureError> {
    let bad = |why: String| CaptureError::Source { spec: spec.to_string(), why };
    let (files, tensors) = check_models(spec, path, is_dir)?;
    if files == 0 {
        return Err(bad("no safetensors, GGUF or PyTorch zip file found".into()));
    }
    let mut probes =
        BTreeMap::from([("model_files".to_string(), files.to_string()), ("tensors".into(), tensors.to_string())]);
    if is_dir {
        let idx = model::hf::check_tree(path).map_err(|e| bad(e.to_string()))?;
        if !idx.indexes.is_empty() {
            probes.insert("shards".into(), idx.shards.to_string());
        }
    }
    Ok(probes)
}

/// Parse every model file under `path`: a `model:` source refuses damaged ones. Returns the
/// number of model files and tensors.
fn check_models(spec: &SourceSpec, path: &Path, is_dir: bool) -> Result<(u64, u64), CaptureError> {
    let mut files = vec![path.to_path_buf()];
    if is_dir {
        files.clear();
        let mut stack = vec![path.to_path_buf()];
        while let Some(d) = stack.pop() {
            let rd = std::fs::read_dir(&d)
                .map_err(|e| CaptureError::Source { spec: spec.to_string(), why: format!("{}: {e}", d.display()) })?;
            for e in rd.flatten() {
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(e.path()),
                    Ok(t) if t.is_file() => files.push(e.path()),
                    _ => {}
                }
            }
        }
    }
    let (mut n, mut tensors) = (0, 0);
    for f in files {
        let model_err = |source| CaptureError::Model { spec: spec.to_string(), path: f.display().to_string(), source };
        let mut file = std::fs::File::open(&f).map_err(|e| model_err(e.into()))?;
        let size = file.metadata().map_err(|e| model_err(e.into()))?.len();
        if let Some(layout) = model::detect(&mut file, size).map_err(model_err)? {
            n += 1;
            tensors += layout.tensors.len() as u64;
        }
    }
    Ok((n, tensors))
}

/// Golden queries for an index: through the probe command when one is given, else by the
/// built-in search of a FAISS flat index.
fn record_golden(spec: &SourceSpec, path: &Path, opts: &SourceOptions) -> Result<BTreeMap<String, String>, String> {
    use crate::vector::{faiss, probe};
    let mut probes = BTreeMap::new();
    let golden = match (&opts.probe_command, spec.kind) {
        (Some(cmd), _) => {
            probes.insert("golden_method".into(), "command".into());
            probes.insert("probe_command".into(), cmd.clone());
            probe::run(cmd, path, opts.probe_timeout).map_err(|e| e.to_string())?
        }
        (None, kind @ (Kind::Faiss | Kind::Vectors)) => {
            let method =
                if kind == Kind::Faiss { crate::vector::Builtin::Flat } else { crate::vector::Builtin::Matrix };
            let flat = crate::vector::load(path, method).map_err(|e| e.to_string())?;
            let (queries, golden) = flat.golden(GOLDEN_QUERIES, GOLDEN_K);
            probes.insert("golden_method".into(), method.name().into());
            probes.insert("golden_queries".into(), faiss::encode_queries(&queries));
            golden
        }
        (None, _) => {
            return Err(format!(
                "{} indexes answer golden queries through a probe command: give --probe-command (or probe_command in agent.toml)",
                spec.kind.name()
            ));
        }
    };
    probes.insert("golden".into(), serde_json::to_string(&golden).map_err(|e| e.to_string())?);
    Ok(probes)
}

/// Queries and results per query the built-in search records.
const GOLDEN_QUERIES: usize = 16;
const GOLDEN_K: usize = 10;

/// Where a Qdrant collection's snapshot sits in the tree (it has no path of its own).
pub fn qdrant_tree_path(c: &crate::vector::qdrant::Collection) -> PathBuf {
    let host: String = c
        .base
        .split("://")
        .nth(1)
        .unwrap_or_default()
        .chars()
        .map(|ch| if ch.is_ascii_alphanumeric() || ch == '.' || ch == '-' { ch } else { '_' })
        .collect();
    PathBuf::from("/tresor-sources/qdrant").join(host).join(format!("{}.snapshot", c.name))
}

fn capture_qdrant(spec: &SourceSpec, staging: &Path, opts: &SourceOptions) -> Result<Captured, String> {
    use crate::vector::{faiss, qdrant};
    let c = qdrant::Collection::parse(&spec.spec)?;
    let client = qdrant::Client::new(opts.probe_timeout).map_err(|e| e.to_string())?;
    let file = staging.join("collection.snapshot");
    let sha = client.snapshot_to(&c, &file).map_err(|e| e.to_string())?;
    let queries = client.sample_vectors(&c, GOLDEN_QUERIES).map_err(|e| e.to_string())?;
    let golden = client.golden(&c, &queries, GOLDEN_K).map_err(|e| e.to_string())?;
    let mut probes = BTreeMap::new();
    probes.insert("sha256".into(), sha);
    probes.insert("collection".into(), c.name.clone());
    probes.insert("golden_method".into(), "qdrant".into());
    probes.insert("golden_queries".into(), faiss::encode_queries(&queries.concat()));
    probes.insert("dim".into(), queries.first().map_or(0, Vec::len).to_string());
    probes.insert("golden".into(), serde_json::to_string(&golden).map_err(|e| e.to_string())?);
    let tree = qdrant_tree_path(&c);
    Ok(Captured {
        roots: vec![(file, tree.clone())],
        record: SourceRecord {
            kind: spec.kind.name().into(),
            spec: spec.spec.clone(),
            paths: vec![tree.display().to_string()],
            probes,
        },
    })
}
