//! GGUF (versions 2 and 3): `"GGUF" | u32 version | u64 tensor count | u64 kv count | kv pairs |
//! tensor infos | padding to the alignment | tensor data`. Offsets are relative to the data start
//! and must be multiples of `general.alignment` (default 32).

use std::io::{Read, Seek};

use super::{Format, Layout, ModelError, Tensor, malformed};

const F: Format = Format::Gguf;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Longest metadata key or tensor name read (the spec caps tensor names at 64 bytes).
const MAX_NAME: u64 = 64 * 1024;
/// Nesting of arrays in metadata values (the format allows arrays of arrays).
const MAX_NESTING: u32 = 4;

/// Element block size and bytes per block of each ggml type id.
fn ggml_type(t: u32) -> Option<(&'static str, u64, u64)> {
    Some(match t {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", 256, 54),
        35 => ("TQ2_0", 256, 66),
        _ => return None,
    })
}

/// A bounds-checked cursor over the header bytes.
struct Cursor<R> {
    r: R,
    pos: u64,
    size: u64,
}

impl<R: Read> Cursor<R> {
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, ModelError> {
        if self.pos.checked_add(n).is_none_or(|e| e > self.size) {
            return Err(malformed(F, format!("{what} at byte {} runs past the end of the file", self.pos)));
        }
        let mut b = vec![0u8; n as usize];
        self.r.read_exact(&mut b)?;
        self.pos += n;
        Ok(b)
    }
    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.bytes(4, what)?.try_into().unwrap_or_default()))
    }
    fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.bytes(8, what)?.try_into().unwrap_or_default()))
    }
    /// A name (a metadata key, a tensor name): refused past [`MAX_NAME`] before anything is allocated.
    fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let n = self.u64(what)?;
        if n > MAX_NAME {
            return Err(malformed(F, format!("{what} claims {n} bytes (names are at most {MAX_NAME})")));
        }
        let b = self.bytes(n, what)?;
        String::from_utf8(b).map_err(|_| malformed(F, format!("{what} is not UTF-8")))
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), ModelError> {
        if self.pos.checked_add(n).is_none_or(|e| e > self.size) {
            return Err(malformed(F, format!("{what} at byte {} runs past the end of the file", self.pos)));
        }
        std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())?;
        self.pos += n;
        Ok(())
    }

    /// Read a metadata value; returns it as u64 when it is an unsigned integer (for the alignment).
    fn value(&mut self, ty: u32, depth: u32, key: &str) -> Result<Option<u64>, ModelError> {
        let fixed = |t: u32| -> Option<u64> {
            match t {
                0 | 1 | 7 => Some(1),
                2 | 3 => Some(2),
                4..=6 => Some(4),
                10..=12 => Some(8),
                _ => None,
            }
        };
        match ty {
            4 => Ok(Some(u64::from(self.u32(key)?))),
            10 => Ok(Some(self.u64(key)?)),
            8 => {
                // Values are not needed (a tokenizer's vocabulary can be megabytes): skip them.
                let n = self.u64(key)?;
                self.skip(n, key)?;
                Ok(None)
            }
            9 => {
                if depth >= MAX_NESTING {
                    return Err(malformed(F, format!("metadata {key:?} nests arrays too deeply")));
                }
                let elem = self.u32(key)?;
                let count = self.u64(key)?;
                if let Some(w) = fixed(elem) {
                    let total =
                        count.checked_mul(w).ok_or_else(|| malformed(F, format!("metadata {key:?} overflows")))?;
                    self.skip(total, key)?;
                } else {
                    // Each element takes at least 8 bytes (a string length): bound the loop by the file.
                    if count > self.size.saturating_sub(self.pos) / 8 + 1 {
                        return Err(malformed(F, format!("metadata {key:?} claims {count} elements")));
                    }
                    for _ in 0..count {
                        self.value(elem, depth + 1, key)?;
                    }
                }
                Ok(None)
            }
            t => match fixed(t) {
                Some(w) => {
                    self.skip(w, key)?;
                    Ok(None)
                }
                None => Err(malformed(F, format!("metadata {key:?} has unknown value type {t}"))),
            },
        }
    }
}

pub(super) fn parse<R: Read + Seek>(r: &mut R, size: u64) -> Result<Layout, ModelError> {
    let mut c = Cursor { r: std::io::BufReader::new(r), pos: 0, size };
    if c.bytes(4, "the magic")? != b"GGUF" {
        return Err(malformed(F, "no GGUF magic"));
    }
    let version = c.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(malformed(F, format!("version {version} (only 2 and 3 are read)")));
    }
    let tensor_count = c.u64("the tensor count")?;
    let kv_count = c.u64("the metadata count")?;
    // Each tensor info takes at least 28 bytes, each kv pair at least 12: refuse absurd counts
    // before looping on them.
    if tensor_count > size / 28 || kv_count > size / 12 {
        return Err(malformed(
            F,
            format!("{tensor_count} tensors and {kv_count} metadata pairs cannot fit {size} bytes"),
        ));
    }
    let mut alignment = 32u64;
    for _ in 0..kv_count {
        let key = c.string("a metadata key")?;
        let ty = c.u32(&key)?;
        let v = c.value(ty, 0, &key)?;
        if key == "general.alignment" {
            alignment = v.ok_or_else(|| malformed(F, "general.alignment is not an unsigned integer"))?;
            if alignment == 0 || !alignment.is_multiple_of(8) {
                return Err(malformed(
                    F,
                    format!("general.alignment is {alignment}; it must be a non-zero multiple of 8"),
                ));
            }
        }
    }
    // The counts are untrusted: grow as entries are read, never reserve from them.
    let mut infos = Vec::new();
    for _ in 0..tensor_count {
        let name = c.string("a tensor name")?;
        let n_dims = c.u32(&name)?;
        if n_dims > MAX_DIMS {
            return Err(malformed(F, format!("tensor {name:?} has {n_dims} dimensions (at most {MAX_DIMS})")));
        }
        let dims: Vec<u64> = (0..n_dims).map(|_| c.u64(&name)).collect::<Result<_, _>>()?;
        let ty = c.u32(&name)?;
        let offset = c.u64(&name)?;
        infos.push((name, dims, ty, offset));
    }
    let data_start = c.pos.div_ceil(alignment) * alignment;
    if data_start > size {
        return Err(malformed(F, "the tensor data starts past the end of the file"));
    }
    let data_len = size - data_start;
    // Sizes of types not in the table come from the next tensor's offset.
    let mut order: Vec<usize> = (0..infos.len()).collect();
    order.sort_by_key(|&i| infos[i].3);
    let mut tensors = Vec::with_capacity(infos.len());
    for (k, &i) in order.iter().enumerate() {
        let (name, dims, ty, offset) = &infos[i];
        if offset % alignment != 0 {
            return Err(malformed(
                F,
                format!("tensor {name:?} starts at {offset}, not a multiple of the alignment {alignment}"),
            ));
        }
        let numel = dims.iter().try_fold(1u64, |a, d| a.checked_mul(*d));
        let (dtype, len) = match (ggml_type(*ty), numel) {
            (Some((tname, block, bytes)), Some(numel)) => {
                if numel % block != 0 {
                    return Err(malformed(
                        F,
                        format!("tensor {name:?}: {numel} elements are not whole {tname} blocks"),
                    ));
                }
                let len = (numel / block)
                    .checked_mul(bytes)
                    .ok_or_else(|| malformed(F, format!("tensor {name:?} overflows")))?;
                (tname.to_string(), len)
            }
            (None, _) => {
                let next = order.get(k + 1).map_or(data_len, |&j| infos[j].3);
                (format!("ggml_type_{ty}"), next.saturating_sub(*offset))
            }
            (_, None) => return Err(malformed(F, format!("tensor {name:?}: shape overflows"))),
        };
        if offset.checked_add(len).is_none_or(|e| e > data_len) {
            return Err(malformed(
                F,
                format!("tensor {name:?} ({len} bytes at {offset}) runs past the data ({data_len} bytes)"),
            ));
        }
        let float_width = super::float_width(&dtype);
        tensors.push(Tensor {
            name: name.clone(),
            dtype,
            shape: dims.clone(),
            offset: data_start + offset,
            len,
            float_width,
        });
    }
    Layout::checked(F, tensors, size)
}
