//! safetensors: `u64le N | N bytes of JSON | tensor data`. The JSON maps each name to
//! `{dtype, shape, data_offsets: [begin, end]}` relative to the data; the offsets must cover the
//! data exactly, without gaps or overlaps (the reference reader's rule).

use std::io::{Read, Seek};

use super::{Format, Layout, ModelError, Tensor, malformed, read_at};

/// The reference reader refuses larger headers.
pub(super) const MAX_HEADER: u64 = 100_000_000;

/// Bits per element of each dtype.
fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ" | "F8_E5M2FNUZ" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

pub(super) fn parse<R: Read + Seek>(r: &mut R, size: u64) -> Result<Layout, ModelError> {
    let f = Format::Safetensors;
    let len_bytes = read_at(r, f, 0, 8, size, "the header length")?;
    let n = u64::from_le_bytes(len_bytes.try_into().unwrap_or_default());
    if n > MAX_HEADER {
        return Err(malformed(f, format!("header length {n} exceeds {MAX_HEADER} bytes")));
    }
    let header = read_at(r, f, 8, n, size, "the JSON header")?;
    let json: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| malformed(f, format!("the header is not JSON ({e}); truncated or not safetensors?")))?;
    let obj = json.as_object().ok_or_else(|| malformed(f, "the header is not a JSON object"))?;
    let data_start = 8 + n;
    let data_len = size - data_start;
    let mut tensors = Vec::with_capacity(obj.len());
    for (name, v) in obj {
        if name == "__metadata__" {
            continue;
        }
        let bad = |why: &str| malformed(f, format!("tensor {name:?}: {why}"));
        let dtype = v.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("no dtype"))?;
        let shape: Vec<u64> = v
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| d.as_u64().ok_or_else(|| bad("a dimension is not a non-negative integer")))
            .collect::<Result<_, _>>()?;
        let offs = v.get("data_offsets").and_then(|o| o.as_array()).ok_or_else(|| bad("no data_offsets"))?;
        let (begin, end) = match offs.as_slice() {
            [b, e] => (
                b.as_u64().ok_or_else(|| bad("begin offset is not an integer"))?,
                e.as_u64().ok_or_else(|| bad("end offset is not an integer"))?,
            ),
            _ => return Err(bad("data_offsets must be [begin, end]")),
        };
        if end < begin || end > data_len {
            return Err(bad(&format!("data_offsets [{begin}, {end}] do not fit the {data_len} data bytes")));
        }
        if let Some(bits) = dtype_bits(dtype) {
            let numel = shape.iter().try_fold(1u64, |a, d| a.checked_mul(*d)).ok_or_else(|| bad("shape overflows"))?;
            let want = numel.checked_mul(bits).map(|b| b.div_ceil(8)).ok_or_else(|| bad("shape overflows"))?;
            if want != end - begin {
                return Err(bad(&format!("{dtype} {shape:?} needs {want} bytes, data_offsets give {}", end - begin)));
            }
        } else {
            return Err(bad(&format!("unknown dtype {dtype}")));
        }
        tensors.push(Tensor {
            name: name.clone(),
            dtype: dtype.to_string(),
            shape,
            offset: data_start + begin,
            len: end - begin,
            float_width: super::float_width(dtype),
        });
    }
    let layout = Layout::checked(f, tensors, size)?;
    // Coverage: contiguous from the data start to the end of the file.
    let mut pos = data_start;
    for t in &layout.tensors {
        if t.offset != pos {
            return Err(malformed(f, format!("a gap of {} bytes before tensor {:?}", t.offset - pos, t.name)));
        }
        pos += t.len;
    }
    if pos != size {
        return Err(malformed(
            f,
            format!("the tensors end at byte {pos} but the file has {size}: the offsets do not cover the file exactly"),
        ));
    }
    Ok(layout)
}
