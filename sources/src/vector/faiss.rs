//! FAISS flat indexes (`IndexFlatL2` "IxF2", `IndexFlatIP` "IxFI"), read from the file
//! `faiss.write_index` writes: fourcc, the index header (d i32, ntotal i64, two i64 dummies,
//! is_trained u8, metric i32), then the vectors as a u64 count of floats and the floats. Any other
//! index type needs a probe command.

use std::io::Read;

use super::Golden;

/// Metric of a flat index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Squared L2, smaller is nearer.
    L2,
    /// Inner product, larger is nearer.
    InnerProduct,
}

/// A flat index in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Flat {
    /// Dimension.
    pub d: usize,
    /// Metric.
    pub metric: Metric,
    /// `ntotal * d` floats.
    pub vectors: Vec<f32>,
}

/// Why a file is not a readable flat index.
#[derive(Debug, thiserror::Error)]
pub enum FaissError {
    /// Reading failed.
    #[error("reading the index: {0}")]
    Io(#[from] std::io::Error),
    /// Not a flat index (its fourcc is given) or damaged.
    #[error("{0}")]
    Format(String),
}

/// The four bytes a FAISS file starts with, for messages.
pub fn fourcc(head: &[u8]) -> String {
    String::from_utf8_lossy(&head[..head.len().min(4)]).into_owned()
}

/// Read a flat index from `r`, whose length is `size` bytes.
pub fn read_flat<R: Read>(mut r: R, size: u64) -> Result<Flat, FaissError> {
    let mut head = [0u8; 4 + 4 + 8 + 8 + 8 + 1 + 4 + 8];
    r.read_exact(&mut head).map_err(|_| FaissError::Format(format!("{size} bytes: too short for a FAISS index")))?;
    let metric = match &head[..4] {
        b"IxF2" => Metric::L2,
        b"IxFI" => Metric::InnerProduct,
        other => {
            return Err(FaissError::Format(format!(
                "FAISS index type {:?} is not a flat index: give a probe command for its golden queries",
                fourcc(other)
            )));
        }
    };
    let d = i32::from_le_bytes(head[4..8].try_into().unwrap_or_default());
    let ntotal = i64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
    let floats = u64::from_le_bytes(head[37..45].try_into().unwrap_or_default());
    if d <= 0 || ntotal < 0 || (d as u64).checked_mul(ntotal as u64) != Some(floats) {
        return Err(FaissError::Format(format!("header says d={d}, ntotal={ntotal} but {floats} floats follow")));
    }
    let bytes = floats.checked_mul(4).filter(|b| *b == size.saturating_sub(head.len() as u64)).ok_or_else(|| {
        FaissError::Format(format!("{floats} floats of vectors do not fit the {size}-byte file (truncated?)"))
    })?;
    let vectors = read_f32s(&mut r, (bytes / 4) as usize)
        .map_err(|_| FaissError::Format("the vectors are cut short (truncated?)".into()))?;
    Ok(Flat { d: d as usize, metric, vectors })
}

/// Read `count` little-endian floats through a 1 MiB block, so the file's bytes are never held
/// beside the floats. `count` must have been checked against the file's size.
pub(crate) fn read_f32s<R: Read>(r: &mut R, count: usize) -> std::io::Result<Vec<f32>> {
    let mut out = Vec::with_capacity(count);
    let mut block = vec![0u8; (1 << 20).min(count * 4)];
    while out.len() < count {
        let n = ((count - out.len()) * 4).min(block.len());
        r.read_exact(&mut block[..n])?;
        out.extend(block[..n].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
    }
    Ok(out)
}

impl Flat {
    /// Vectors stored.
    pub fn len(&self) -> usize {
        self.vectors.len() / self.d
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// Golden queries: `n` stored vectors spread over the index, top `k` each, exact.
    pub fn golden(&self, n: usize, k: usize) -> (Vec<f32>, Golden) {
        let count = self.len();
        let mut queries = Vec::new();
        for q in 0..n.min(count) {
            let i = q * count / n.min(count).max(1);
            queries.extend_from_slice(&self.vectors[i * self.d..(i + 1) * self.d]);
        }
        let g = self.search(&queries, k);
        (queries, g)
    }

    /// Exact top-k for each query (ties broken by id).
    pub fn search(&self, queries: &[f32], k: usize) -> Golden {
        let mut results = Vec::new();
        for q in queries.chunks_exact(self.d) {
            let mut scored: Vec<(i64, f32)> = self
                .vectors
                .chunks_exact(self.d)
                .enumerate()
                .map(|(i, v)| {
                    let s = match self.metric {
                        Metric::L2 => q.iter().zip(v).map(|(a, b)| (a - b) * (a - b)).sum::<f32>(),
                        Metric::InnerProduct => q.iter().zip(v).map(|(a, b)| a * b).sum::<f32>(),
                    };
                    (i as i64, s)
                })
                .collect();
            let better = |a: &(i64, f32), b: &(i64, f32)| match self.metric {
                Metric::L2 => a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)),
                Metric::InnerProduct => b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)),
            };
            let k = k.min(scored.len());
            if k > 0 {
                scored.select_nth_unstable_by(k - 1, better);
                scored.truncate(k);
                scored.sort_by(better);
            }
            results.push(scored.into_iter().map(|(i, s)| (super::PointId::Num(i), s)).collect());
        }
        Golden { k, exact: true, min_recall: 1.0, results }
    }
}

/// Floats as little-endian bytes in hex, for the snapshot record.
pub fn encode_queries(q: &[f32]) -> String {
    hex::encode(q.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>())
}

/// The inverse of [`encode_queries`].
pub fn decode_queries(s: &str) -> Option<Vec<f32>> {
    let b = hex::decode(s).ok()?;
    b.len().is_multiple_of(4).then(|| b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(metric: &[u8; 4], d: i32, vectors: &[f32]) -> Vec<u8> {
        let mut b = metric.to_vec();
        b.extend_from_slice(&d.to_le_bytes());
        b.extend_from_slice(&((vectors.len() as i64) / i64::from(d)).to_le_bytes());
        b.extend_from_slice(&(1i64 << 20).to_le_bytes());
        b.extend_from_slice(&(1i64 << 20).to_le_bytes());
        b.push(1);
        b.extend_from_slice(&(if metric == b"IxF2" { 1i32 } else { 0 }).to_le_bytes());
        b.extend_from_slice(&(vectors.len() as u64).to_le_bytes());
        for v in vectors {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn flat_search_finds_itself_first_and_truncation_is_named() {
        let vectors: Vec<f32> = (0..400).map(|i| ((i * 37) % 101) as f32 / 10.0).collect();
        let bytes = file(b"IxF2", 4, &vectors);
        let flat = read_flat(&bytes[..], bytes.len() as u64).unwrap();
        assert_eq!(flat.len(), 100);
        let (q, g) = flat.golden(10, 5);
        assert_eq!(q.len(), 40);
        for (i, r) in g.results.iter().enumerate() {
            assert_eq!(r[0].1, 0.0, "query {i} is a stored vector: its own distance is 0");
        }
        let e = read_flat(&bytes[..bytes.len() - 7], bytes.len() as u64 - 7).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = read_flat(
            &b"IHNf\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"[..],
            45,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"IHNf\" is not a flat index"), "{e}");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), ip in any::<bool>()) {
            let mut b = if ip { b"IxFI".to_vec() } else { b"IxF2".to_vec() };
            b.extend_from_slice(&bytes);
            let _ = read_flat(&b[..], b.len() as u64);
        }
    }
}
