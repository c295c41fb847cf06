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

/// Whether a kind streams into the open session (after the walk) instead of being captured before it.
pub fn is_streamed(kind: Kind) -> bool {
    kind == Kind::Postgres
}

/// Capture one source that is not streamed; `staging` is an empty directory this run owns. Blocking.
pub fn capture(spec: &SourceSpec, staging: &Path) -> Result<Captured, CaptureError> {
    let path = spec.path();
    let bad = |why: String| CaptureError::Source { spec: spec.to_string(), why };
    if is_streamed(spec.kind) {
        return Err(bad("a streamed source is stored after the walk".into()));
    }
    let md = std::fs::metadata(&path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    let mut probes = BTreeMap::new();
    let roots = match spec.kind {
        Kind::Model => {
            let (files, tensors) = check_models(spec, &path, md.is_dir())?;
            if files == 0 {
                return Err(bad("no safetensors, GGUF or PyTorch zip file found".into()));
            }
            probes.insert("model_files".into(), files.to_string());
            probes.insert("tensors".into(), tensors.to_string());
            if md.is_dir() {
                let idx = model::hf::check_dir(&path).map_err(|e| bad(e.to_string()))?;
                if !idx.indexes.is_empty() {
                    probes.insert("shards".into(), idx.shards.to_string());
                }
            }
            vec![(path.clone(), path.clone())]
        }
        Kind::Sqlite => {
            if !md.is_file() {
                return Err(bad(format!("{} is not a file", path.display())));
            }
            let copy = staging.join("sqlite.db");
            let p = crate::sqlite::capture(&path, &copy)
                .map_err(|e| CaptureError::Sqlite { spec: spec.to_string(), source: Box::new(e) })?;
            // The copy is restored in the database's place, with its permissions.
            let _ = std::fs::set_permissions(&copy, md.permissions());
            probes.extend(p);
            vec![(copy, path.clone())]
        }
        Kind::Postgres => unreachable!("streamed sources returned above"),
    };
    Ok(Captured {
        roots,
        record: SourceRecord {
            kind: spec.kind.name().into(),
            spec: spec.spec.clone(),
            paths: vec![path.display().to_string()],
            probes,
        },
    })
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
