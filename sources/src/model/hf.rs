//! Hugging Face model directories: a sharded checkpoint is only whole when every shard its index
//! (`model.safetensors.index.json`, `pytorch_model.bin.index.json`) names is present and, for
//! safetensors shards, holds the tensors the index maps to it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{Format, ModelError, malformed};

/// What a directory's indexes describe.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexSummary {
    /// Index files found.
    pub indexes: Vec<String>,
    /// Shards named.
    pub shards: usize,
    /// Tensors mapped.
    pub tensors: usize,
}

/// Check every `*.index.json` in `dir`. An absent index is fine (an unsharded model); an index that
/// names a missing shard, or a tensor its shard lacks, is an error naming both.
pub fn check_dir(dir: &Path) -> Result<IndexSummary, ModelError> {
    let mut summary = IndexSummary::default();
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".index.json"))
        .collect();
    names.sort();
    for name in names {
        let f = if name.contains("safetensors") { Format::Safetensors } else { Format::PytorchZip };
        let bad = |why: String| malformed(f, format!("{}: {why}", dir.join(&name).display()));
        let text = std::fs::read(dir.join(&name))?;
        let json: serde_json::Value = serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
        let map =
            json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no weight_map object".into()))?;
        let mut by_shard: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| bad(format!("tensor {tensor:?} maps to a non-string")))?;
            if shard.contains('/') || shard == ".." {
                return Err(bad(format!("shard name {shard:?} leaves the directory")));
            }
            by_shard.entry(shard).or_default().insert(tensor.as_str());
        }
        for (shard, tensors) in &by_shard {
            let path = dir.join(shard);
            let mut file = std::fs::File::open(&path)
                .map_err(|e| bad(format!("names shard {shard}, which cannot be opened ({e})")))?;
            if f == Format::Safetensors {
                let size = file.metadata()?.len();
                let layout = super::parse(Format::Safetensors, &mut file, size)
                    .map_err(|e| bad(format!("shard {shard}: {e}")))?;
                let have: BTreeSet<&str> = layout.tensors.iter().map(|t| t.name.as_str()).collect();
                if let Some(missing) = tensors.iter().find(|t| !have.contains(**t)) {
                    return Err(bad(format!("maps tensor {missing:?} to {shard}, which does not hold it")));
                }
            }
            summary.tensors += tensors.len();
        }
        summary.shards += by_shard.len();
        summary.indexes.push(name);
    }
    Ok(summary)
}

/// [`check_dir`] on `root` and every directory below it; index names are given relative to `root`.
pub fn check_tree(root: &Path) -> Result<IndexSummary, ModelError> {
    let mut total = IndexSummary::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let s = check_dir(&dir)?;
        let rel = dir.strip_prefix(root).unwrap_or(&dir).to_path_buf();
        total.indexes.extend(s.indexes.iter().map(|i| rel.join(i).display().to_string()));
        total.shards += s.shards;
        total.tensors += s.tensors;
        for e in std::fs::read_dir(&dir)?.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    total.indexes.sort();
    Ok(total)
}
