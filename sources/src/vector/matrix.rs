//! Raw float32 matrices: NumPy `.npy` files (2-D, `<f4`, C order) and `.fvecs` files (each vector
//! a little-endian i32 dimension then its floats). Searched by the same brute force as FAISS flat
//! files (squared L2).

use std::io::Read;
use std::path::Path;

use super::faiss::{FaissError, Flat, Metric};

fn bad(why: impl Into<String>) -> FaissError {
    FaissError::Format(why.into())
}

/// Read a matrix file, by its content (`.npy` magic) or else as `.fvecs`.
pub fn read(path: &Path) -> Result<Flat, FaissError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    if bytes.starts_with(b"\x93NUMPY") { npy(&bytes) } else { fvecs(&bytes) }
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn npy(b: &[u8]) -> Result<Flat, FaissError> {
    let (len, start) = match b.get(6) {
        Some(1) if b.len() >= 10 => (usize::from(u16::from_le_bytes([b[8], b[9]])), 10usize),
        Some(2 | 3) if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        _ => return Err(bad("an .npy header of an unknown version")),
    };
    let header =
        b.get(start..start.saturating_add(len)).ok_or_else(|| bad("the .npy header is cut short (truncated?)"))?;
    let header = String::from_utf8_lossy(header);
    if !header.contains("'descr': '<f4'") {
        return Err(bad(format!(".npy dtype is not little-endian float32: {}", header.trim())));
    }
    if header.contains("'fortran_order': True") {
        return Err(bad(".npy matrix is in Fortran order; save it in C order"));
    }
    let shape = header.split("'shape':").nth(1).and_then(|s| s.split(')').next()).unwrap_or_default();
    let dims: Vec<usize> =
        shape.trim_start_matches([' ', '(']).split(',').filter_map(|d| d.trim().parse().ok()).collect();
    let [n, d] = dims[..] else { return Err(bad(format!(".npy shape ({shape}) is not two-dimensional"))) };
    let data = &b[start + len..];
    if d == 0 || n.checked_mul(d).and_then(|x| x.checked_mul(4)) != Some(data.len()) {
        return Err(bad(format!(".npy says {n} x {d} floats but holds {} bytes of data (truncated?)", data.len())));
    }
    Ok(Flat { d, metric: Metric::L2, vectors: floats(data) })
}

fn fvecs(b: &[u8]) -> Result<Flat, FaissError> {
    let d = b.get(..4).map(|h| i32::from_le_bytes([h[0], h[1], h[2], h[3]])).ok_or_else(|| bad("empty .fvecs file"))?;
    if d <= 0 || d > 1 << 16 {
        return Err(bad(format!("neither .npy nor .fvecs: a first dimension of {d}")));
    }
    let rec = 4 * (d as usize + 1);
    if !b.len().is_multiple_of(rec) {
        return Err(bad(format!(".fvecs of dimension {d}: {} bytes are not whole vectors (truncated?)", b.len())));
    }
    let mut vectors = Vec::with_capacity(b.len() / 4);
    for (i, r) in b.chunks_exact(rec).enumerate() {
        if r[..4] != b[..4] {
            return Err(bad(format!(".fvecs vector {i} has another dimension")));
        }
        vectors.extend(floats(&r[4..]));
    }
    Ok(Flat { d: d as usize, metric: Metric::L2, vectors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn npy_file(n: usize, d: usize) -> Vec<u8> {
        let mut h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, {d}), }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        for i in 0..n * d {
            b.extend_from_slice(&(i as f32).to_le_bytes());
        }
        b
    }

    #[test]
    fn npy_and_fvecs_read_and_truncation_is_named() {
        let b = npy_file(20, 3);
        let f = npy(&b).unwrap();
        assert_eq!((f.len(), f.d), (20, 3));
        assert!(npy(&b[..b.len() - 4]).unwrap_err().to_string().contains("truncated"));
        let mut v = Vec::new();
        for i in 0..5 {
            v.extend_from_slice(&2i32.to_le_bytes());
            v.extend_from_slice(&(i as f32).to_le_bytes());
            v.extend_from_slice(&1f32.to_le_bytes());
        }
        assert_eq!(fvecs(&v).unwrap().len(), 5);
        assert!(fvecs(&v[..v.len() - 2]).unwrap_err().to_string().contains("truncated"));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), npy_magic in any::<bool>()) {
            let mut b = if npy_magic { b"\x93NUMPY\x01\x00".to_vec() } else { Vec::new() };
            b.extend_from_slice(&bytes);
            let _ = if npy_magic { npy(&b) } else { fvecs(&b) };
        }
    }
}
