//! Raw float32 matrices: NumPy `.npy` files (2-D, `<f4`, C order) and `.fvecs` files (each vector
//! a little-endian i32 dimension then its floats). Searched by the same brute force as FAISS flat
//! files (squared L2).

use std::io::Read;
use std::path::Path;

use super::faiss::{FaissError, Flat, Metric, read_f32s};

fn bad(why: impl Into<String>) -> FaissError {
    FaissError::Format(why.into())
}

/// Read a matrix file, by its content (`.npy` magic) or else as `.fvecs`.
pub fn read(path: &Path) -> Result<Flat, FaissError> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut r = std::io::BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 6];
    let got = r.read(&mut magic)?;
    if got == 6 && &magic == b"\x93NUMPY" {
        npy(r, size)
    } else {
        fvecs(std::io::Cursor::new(magic[..got].to_vec()).chain(r), size)
    }
}

/// Longest `.npy` header read.
const MAX_HEADER: usize = 1 << 20;

/// An `.npy` file after its 6-byte magic; `size` is the whole file's.
fn npy<R: Read>(mut r: R, size: u64) -> Result<Flat, FaissError> {
    let short = |_| bad("the .npy header is cut short (truncated?)");
    let mut ver = [0u8; 2];
    r.read_exact(&mut ver).map_err(short)?;
    let (len, start) = match ver[0] {
        1 => {
            let mut l = [0u8; 2];
            r.read_exact(&mut l).map_err(short)?;
            (usize::from(u16::from_le_bytes(l)), 10u64)
        }
        2 | 3 => {
            let mut l = [0u8; 4];
            r.read_exact(&mut l).map_err(short)?;
            (u32::from_le_bytes(l) as usize, 12)
        }
        _ => return Err(bad("an .npy header of an unknown version")),
    };
    if len > MAX_HEADER {
        return Err(bad(format!("an .npy header of {len} bytes (at most {MAX_HEADER})")));
    }
    let mut header = vec![0u8; len];
    r.read_exact(&mut header).map_err(short)?;
    let header = String::from_utf8_lossy(&header);
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
    let data = size.saturating_sub(start + len as u64);
    if d == 0 || n.checked_mul(d).and_then(|x| x.checked_mul(4)).map(|b| b as u64) != Some(data) {
        return Err(bad(format!(".npy says {n} x {d} floats but holds {data} bytes of data (truncated?)")));
    }
    let vectors = read_f32s(&mut r, n * d).map_err(|_| bad("the .npy data is cut short (truncated?)"))?;
    Ok(Flat { d, metric: Metric::L2, vectors })
}

/// An `.fvecs` file: every vector a little-endian i32 dimension, then its floats.
fn fvecs<R: Read>(mut r: R, size: u64) -> Result<Flat, FaissError> {
    let mut dim = [0u8; 4];
    r.read_exact(&mut dim).map_err(|_| bad("empty .fvecs file"))?;
    let d = i32::from_le_bytes(dim);
    if d <= 0 || d > 1 << 16 {
        return Err(bad(format!("neither .npy nor .fvecs: a first dimension of {d}")));
    }
    let rec = 4 * (d as u64 + 1);
    if !size.is_multiple_of(rec) {
        return Err(bad(format!(".fvecs of dimension {d}: {size} bytes are not whole vectors (truncated?)")));
    }
    let count = (size / rec) as usize;
    let mut vectors = Vec::with_capacity(count * d as usize);
    for i in 0..count {
        if i > 0 {
            let mut next = [0u8; 4];
            r.read_exact(&mut next).map_err(|_| bad("the .fvecs data is cut short (truncated?)"))?;
            if next != dim {
                return Err(bad(format!(".fvecs vector {i} has another dimension")));
            }
        }
        vectors.extend(read_f32s(&mut r, d as usize).map_err(|_| bad("the .fvecs data is cut short (truncated?)"))?);
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
        let npy_of = |b: &[u8]| npy(&b[6..], b.len() as u64);
        let f = npy_of(&b).unwrap();
        assert_eq!((f.len(), f.d), (20, 3));
        assert!(npy_of(&b[..b.len() - 4]).unwrap_err().to_string().contains("truncated"));
        let mut v = Vec::new();
        for i in 0..5 {
            v.extend_from_slice(&2i32.to_le_bytes());
            v.extend_from_slice(&(i as f32).to_le_bytes());
            v.extend_from_slice(&1f32.to_le_bytes());
        }
        let fvecs_of = |b: &[u8]| fvecs(b, b.len() as u64);
        assert_eq!(fvecs_of(&v).unwrap().len(), 5);
        assert!(fvecs_of(&v[..v.len() - 2]).unwrap_err().to_string().contains("truncated"));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), npy_magic in any::<bool>()) {
            let mut b = if npy_magic { b"\x93NUMPY\x01\x00".to_vec() } else { Vec::new() };
            b.extend_from_slice(&bytes);
            let _ = if npy_magic { npy(&b[6..], b.len() as u64) } else { fvecs(&b[..], b.len() as u64) };
        }
    }
}
