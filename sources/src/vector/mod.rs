//! Vector indexes: golden queries recorded at backup (the ids and distances of the top-k for a set
//! of query vectors) and re-run on the restored index. FAISS flat indexes are searched by a
//! built-in brute force ([`faiss`]); any other index answers through a probe command the admin
//! gives ([`probe`]), run with the index's path in `TRESOR_INDEX`.

pub mod chroma;
pub mod faiss;
pub mod matrix;
pub mod probe;
pub mod qdrant;

use serde::{Deserialize, Serialize};

/// The built-in searches, by what they read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// A FAISS flat index file.
    Flat,
    /// A raw float32 matrix (`.npy`, `.fvecs`).
    Matrix,
}

impl Builtin {
    /// The `golden_method` recorded in snapshots.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flat => "builtin-flat",
            Self::Matrix => "builtin-matrix",
        }
    }

    /// The method a snapshot names, if it is a built-in one.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Flat, Self::Matrix].into_iter().find(|b| b.name() == name)
    }
}

/// Read the vectors a built-in search works on.
pub fn load(path: &std::path::Path, what: Builtin) -> Result<faiss::Flat, faiss::FaissError> {
    match what {
        Builtin::Flat => {
            let file = std::fs::File::open(path)?;
            let size = file.metadata()?.len();
            faiss::read_flat(std::io::BufReader::new(file), size)
        }
        Builtin::Matrix => matrix::read(path),
    }
}

/// Answers to the golden queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Golden {
    /// Results asked per query.
    pub k: usize,
    /// Whether the index is exact (then recall must be 1.0).
    pub exact: bool,
    /// Recall an approximate index must reach.
    #[serde(default = "default_min_recall")]
    pub min_recall: f64,
    /// Per query, (id, distance) best first.
    pub results: Vec<Vec<(PointId, f32)>>,
}

/// A result's id: a number (FAISS, hnswlib, Qdrant) or text (Chroma, Qdrant UUIDs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PointId {
    /// Numeric id.
    Num(i64),
    /// Text id.
    Text(String),
}

fn default_min_recall() -> f64 {
    0.95
}

/// How a restored index answered the recorded queries.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Mean recall@k over the queries.
    pub recall: f64,
    /// Queries compared.
    pub queries: usize,
    /// Ids found by both whose distances differ.
    pub distance_mismatches: usize,
}

impl Comparison {
    /// Whether it passes for `recorded`.
    pub fn passes(&self, recorded: &Golden) -> bool {
        let need = if recorded.exact { 1.0 } else { recorded.min_recall };
        self.queries == recorded.results.len()
            && self.recall >= need
            && (!recorded.exact || self.distance_mismatches == 0)
    }
}

/// Compare answers of the restored index with the recorded ones.
pub fn compare(recorded: &Golden, now: &Golden) -> Comparison {
    let mut total = 0.0;
    let mut mismatches = 0;
    for (want, got) in recorded.results.iter().zip(&now.results) {
        let k = want.len().max(1);
        let hits = want.iter().filter(|(id, _)| got.iter().any(|(g, _)| g == id)).count();
        total += hits as f64 / k as f64;
        for (id, d) in want {
            if let Some((_, g)) = got.iter().find(|(g, _)| g == id)
                && (d - g).abs() > 1e-4 * d.abs().max(1.0)
            {
                mismatches += 1;
            }
        }
    }
    let queries = recorded.results.len().min(now.results.len());
    Comparison {
        recall: if queries == 0 { 0.0 } else { total / recorded.results.len() as f64 },
        queries,
        distance_mismatches: mismatches,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_counts_shared_ids() {
        let n = PointId::Num;
        let rec = Golden {
            k: 2,
            exact: true,
            min_recall: 1.0,
            results: vec![vec![(n(1), 0.5), (n(2), 0.7)], vec![(n(3), 0.1), (n(4), 0.2)]],
        };
        assert_eq!(compare(&rec, &rec).recall, 1.0);
        assert!(compare(&rec, &rec).passes(&rec));
        let half = Golden { results: vec![vec![(n(1), 0.5), (n(9), 0.7)], rec.results[1].clone()], ..rec.clone() };
        let c = compare(&rec, &half);
        assert_eq!(c.recall, 0.75);
        assert!(!c.passes(&rec));
        let moved = Golden { results: vec![vec![(n(1), 0.6), (n(2), 0.7)], rec.results[1].clone()], ..rec.clone() };
        let text: Golden =
            serde_json::from_str(r#"{"k":1,"exact":false,"results":[[["a-1",0.5]],[[7,0.25]]]}"#).unwrap();
        assert_eq!(text.results[0][0].0, PointId::Text("a-1".into()));
        assert_eq!(text.min_recall, 0.95);
        assert_eq!(compare(&rec, &moved).distance_mismatches, 1);
    }
}
