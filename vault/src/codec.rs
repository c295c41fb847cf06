//! Per-chunk codecs. The tag byte is stored in the pack directory and bound into the AAD.

/// How a chunk's plaintext was encoded before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Codec {
    /// Stored as is.
    Raw = 0,
    /// zstd frame.
    Zstd = 1,
    // 2 is reserved for the float-tensor codec (byte-grouped planes).
}

impl Codec {
    /// Decode a stored tag.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Raw),
            1 => Some(Self::Zstd),
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
    }
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
        fn garbage_never_panics(stored in proptest::collection::vec(any::<u8>(), 0..2000), len in 0usize..5000) {
            let _ = decode(Codec::Zstd, &stored, len);
            let _ = decode(Codec::Raw, &stored, len);
        }
    }

    #[test]
    fn incompressible_is_raw_and_repetitive_is_zstd() {
        let mut rnd = vec![0u8; 300_000];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut rnd);
        assert_eq!(encode(&rnd, 3).0, Codec::Raw);
        assert_eq!(encode(&vec![b'a'; 300_000], 3).0, Codec::Zstd);
    }
}
