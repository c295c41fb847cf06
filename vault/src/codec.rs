//! Per-chunk codecs. The tag byte is stored in the pack directory and bound into the AAD.

/// How a chunk's plaintext was encoded before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Codec {
    /// Stored as is.
    Raw = 0,
    /// zstd frame.
    Zstd = 1,
    /// Float tensor: bytes grouped by position into planes, each plane zstd or raw (see
    /// [`encode_float`]).
    Float = 2,
}

impl Codec {
    /// Decode a stored tag.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Raw),
            1 => Some(Self::Zstd),
            2 => Some(Self::Float),
            _ => None,
        }
    }
}

/// Codec errors; they come from untrusted bytes.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Unknown tag.
    #[error("unknown codec tag {0}")]
    UnknownTag(u8),
    /// Decoding failed or produced the wrong length.
    #[error("decompression failed: {0}")]
    Corrupt(String),
}

/// Store raw unless compression saves at least this share (5 %).
const MIN_GAIN_NUM: usize = 95;
/// Size of the probe compressed first to skip incompressible data cheaply.
const PROBE_LEN: usize = 64 * 1024;

thread_local! {
    // zstd contexts are costly to create (hundreds of KiB zeroed); each pack worker and restore
    // thread keeps one of each.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let c = match &mut *slot {
            Some((l, c)) if *l == level => c,
            s => &mut s.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        c.compress(data)
    })
}

fn decompress(stored: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = match &mut *slot {
            Some(d) => d,
            s => s.insert(zstd::bulk::Decompressor::new()?),
        };
        d.decompress(stored, capacity)
    })
}

/// Encode `data`, choosing zstd only when it saves at least 5 %. Returns the codec and the bytes
/// (borrowed when raw).
pub fn encode(data: &[u8], level: i32) -> (Codec, std::borrow::Cow<'_, [u8]>) {
    use std::borrow::Cow;
    if data.len() < 64 {
        return (Codec::Raw, Cow::Borrowed(data));
    }
    // A cheap probe on the first 64 KiB skips the full attempt on random, encrypted or
    // already-compressed data, which is most of what a backup of models and databases sees.
    if data.len() > 2 * PROBE_LEN {
        match compress(&data[..PROBE_LEN], level) {
            Ok(p) if p.len() * 100 < PROBE_LEN * 98 => {}
            _ => return (Codec::Raw, Cow::Borrowed(data)),
        }
    }
    match compress(data, level) {
        Ok(c) if c.len() * 100 <= data.len() * MIN_GAIN_NUM => (Codec::Zstd, Cow::Owned(c)),
        _ => (Codec::Raw, Cow::Borrowed(data)),
    }
}

/// Decode bytes stored with `codec` whose plaintext is `raw_len` bytes long.
pub fn decode(codec: Codec, stored: &[u8], raw_len: usize) -> Result<Vec<u8>, CodecError> {
    match codec {
        Codec::Raw => {
            if stored.len() != raw_len {
                return Err(CodecError::Corrupt(format!("raw chunk has {} bytes, index says {raw_len}", stored.len())));
            }
            Ok(stored.to_vec())
        }
        Codec::Zstd => {
            // Capacity is the recorded length, so a crafted frame cannot make us allocate more.
            let out = decompress(stored, raw_len).map_err(|e| CodecError::Corrupt(e.to_string()))?;
            if out.len() != raw_len {
                return Err(CodecError::Corrupt(format!(
                    "zstd chunk decoded to {} bytes, index says {raw_len}",
                    out.len()
                )));
            }
            Ok(out)
        }
        Codec::Float => decode_float(stored, raw_len),
    }
}

/// How a chunk's plaintext should be encoded: a caller that knows the bytes are little-endian
/// floats of a width says so, and the float codec is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hint {
    /// Anything: the generic rule of [`encode`].
    #[default]
    Generic,
    /// Little-endian floats of 2 (bf16, fp16) or 4 (fp32) bytes.
    Float(u8),
}

/// Encode with a hint: float data goes through [`encode_float`] when that saves at least 5 %,
/// everything else through [`encode`].
pub fn encode_hinted(data: &[u8], level: i32, hint: Hint) -> (Codec, std::borrow::Cow<'_, [u8]>) {
    match hint {
        Hint::Float(width @ (2 | 4)) if data.len() >= 64 * usize::from(width) => {
            let enc = encode_float(data, width);
            if enc.len() * 100 <= data.len() * MIN_GAIN_NUM {
                (Codec::Float, std::borrow::Cow::Owned(enc))
            } else {
                (Codec::Raw, std::borrow::Cow::Borrowed(data))
            }
        }
        _ => encode(data, level),
    }
}

/// Planes whose zstd encoding saves less than this share (2 %) are stored raw.
const PLANE_GAIN_NUM: usize = 98;
/// zstd level for planes. The exponent plane's few symbols repeat in short runs that higher
/// levels code as matches, which costs more than coding them as literals: on bf16 weights the
/// plane took 0.367 of its size at level 1 and 0.416 at level 3, its entropy being 0.332
/// (decision 0010).
const PLANE_LEVEL: i32 = 1;

/// The float codec (ZipNN's idea): byte *p* of every element goes to plane *p*. The planes that
/// hold sign and exponent bits compress well with zstd's entropy coder; mantissa planes are close
/// to random and are stored raw. Layout: `width u8`, then per plane `plane codec u8 (0 raw, 1 zstd)
/// || stored length u32 LE || bytes`, then the `len % width` trailing bytes as they are.
///
/// # Panics
/// `width` is not 2 or 4: no reader could decode it (a caller's mistake, never input data).
pub fn encode_float(data: &[u8], width: u8) -> Vec<u8> {
    assert!(matches!(width, 2 | 4), "the float codec takes elements of 2 or 4 bytes, not {width}");
    let w = usize::from(width);
    let count = data.len() / w;
    let mut out = Vec::with_capacity(data.len() + 1 + 5 * w);
    out.push(w as u8);
    let mut plane = vec![0u8; count];
    for p in 0..w {
        for (dst, elem) in plane.iter_mut().zip(data.chunks_exact(w)) {
            *dst = elem[p];
        }
        match compress(&plane, PLANE_LEVEL) {
            Ok(c) if c.len() * 100 <= plane.len() * PLANE_GAIN_NUM => {
                out.push(1);
                out.extend_from_slice(&(c.len() as u32).to_le_bytes());
                out.extend_from_slice(&c);
            }
            _ => {
                out.push(0);
                out.extend_from_slice(&(plane.len() as u32).to_le_bytes());
                out.extend_from_slice(&plane);
            }
        }
    }
    out.extend_from_slice(&data[count * w..]);
    out
}

fn decode_float(stored: &[u8], raw_len: usize) -> Result<Vec<u8>, CodecError> {
    let bad = |why: String| CodecError::Corrupt(format!("float chunk: {why}"));
    let (&w, mut rest) = stored.split_first().ok_or_else(|| bad("empty".into()))?;
    if w != 2 && w != 4 {
        return Err(bad(format!("element width {w} (only 2 and 4 exist)")));
    }
    let w = usize::from(w);
    let count = raw_len / w;
    let mut out = vec![0u8; raw_len];
    for p in 0..w {
        if rest.len() < 5 {
            return Err(bad(format!("plane {p} header cut short")));
        }
        let codec = rest[0];
        let len = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        rest = &rest[5..];
        if len > rest.len() {
            return Err(bad(format!("plane {p} says {len} bytes, {} left", rest.len())));
        }
        let (body, tail) = rest.split_at(len);
        rest = tail;
        let plane = match codec {
            0 => std::borrow::Cow::Borrowed(body),
            1 => std::borrow::Cow::Owned(decompress(body, count).map_err(|e| bad(format!("plane {p}: {e}")))?),
            c => return Err(bad(format!("plane {p} has codec {c}"))),
        };
        if plane.len() != count {
            return Err(bad(format!("plane {p} holds {} bytes, {count} expected", plane.len())));
        }
        for (elem, &b) in out.chunks_exact_mut(w).zip(plane.iter()) {
            elem[p] = b;
        }
    }
    if rest.len() != raw_len - count * w {
        return Err(bad(format!("{} trailing bytes, {} expected", rest.len(), raw_len - count * w)));
    }
    out[count * w..].copy_from_slice(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..20_000), rep in 0usize..4) {
            let mut input = data.clone();
            for _ in 0..rep { input.extend_from_slice(&data); }
            let (codec, enc) = encode(&input, 3);
            prop_assert_eq!(decode(codec, &enc, input.len()).unwrap(), input);
        }

        #[test]
        fn float_round_trip(data in proptest::collection::vec(any::<u8>(), 0..5000), wide in any::<bool>()) {
            let width = if wide { 4 } else { 2 };
            let enc = encode_float(&data, width);
            prop_assert_eq!(decode(Codec::Float, &enc, data.len()).unwrap(), data);
        }

        #[test]
        fn float_garbage_never_panics(stored in proptest::collection::vec(any::<u8>(), 0..2000), len in 0usize..5000) {
            let _ = decode(Codec::Float, &stored, len);
        }

        #[test]
        fn garbage_never_panics(stored in proptest::collection::vec(any::<u8>(), 0..2000), len in 0usize..5000) {
            let _ = decode(Codec::Zstd, &stored, len);
            let _ = decode(Codec::Raw, &stored, len);
        }
    }

    /// bf16 values from a narrow normal-like distribution: the exponent plane compresses, the
    /// mantissa plane does not, and the float codec beats plain zstd.
    #[test]
    fn float_codec_beats_zstd_on_bf16_weights() {
        use rand::Rng;
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        let mut data = Vec::with_capacity(1 << 20);
        for _ in 0..(1 << 19) {
            let x: f32 = (rng.r#gen::<f32>() + rng.r#gen::<f32>() + rng.r#gen::<f32>() - 1.5) * 0.04;
            data.extend_from_slice(&x.to_bits().to_le_bytes()[2..]);
        }
        let (codec, enc) = encode_hinted(&data, 3, Hint::Float(2));
        assert_eq!(codec, Codec::Float);
        let (_, z) = encode(&data, 3);
        assert!(enc.len() < z.len(), "float {} vs zstd {}", enc.len(), z.len());
        // Layout: width, then plane 0 (the low byte: last exponent bit and mantissa) codec byte.
        assert_eq!((enc[0], enc[1]), (2, 0), "the mantissa plane (low byte) is stored raw");
        assert_eq!(enc[2 + 4 + (1 << 19)], 1, "the exponent plane (high byte) is zstd");
        assert_eq!(decode(Codec::Float, &enc, data.len()).unwrap(), data);
    }

    #[test]
    fn incompressible_is_raw_and_repetitive_is_zstd() {
        let mut rnd = vec![0u8; 300_000];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut rnd);
        assert_eq!(encode(&rnd, 3).0, Codec::Raw);
        assert_eq!(encode(&vec![b'a'; 300_000], 3).0, Codec::Zstd);
    }
}
