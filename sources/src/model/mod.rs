//! Model weight files: detected by content, parsed into tensors, cut into spans at tensor
//! boundaries, and hashed per tensor.
//!
//! Every parser reads untrusted bytes: sizes are checked against the file before anything is
//! allocated, and every failure is a [`ModelError`] that names the problem.

mod gguf;
pub mod hf;
mod safetensors;
pub mod synth;
mod torchzip;

use std::io::{Read, Seek, SeekFrom};

use tresor_vault::backup::Span;
use tresor_vault::codec::Hint;
use tresor_vault::snapshot::{ModelLayout, TensorRecord};

/// A model file format Tresor understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Hugging Face safetensors.
    Safetensors,
    /// llama.cpp GGUF (versions 2 and 3).
    Gguf,
    /// `torch.save` zip archive (`.bin`, `.pt`, `.pth`, TorchScript).
    PytorchZip,
}

impl Format {
    /// The format a snapshot names.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Safetensors, Self::Gguf, Self::PytorchZip].into_iter().find(|f| f.name() == name)
    }

    /// The name recorded in snapshots.
    pub fn name(self) -> &'static str {
        match self {
            Self::Safetensors => "safetensors",
            Self::Gguf => "gguf",
            Self::PytorchZip => "pytorch-zip",
        }
    }
}

/// Why a model file could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading the file failed.
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes do not form a valid file of the format.
    #[error("not a valid {format} file: {why}")]
    Malformed {
        /// Format name.
        format: &'static str,
        /// What is wrong.
        why: String,
    },
}

pub(crate) fn malformed(format: Format, why: impl Into<String>) -> ModelError {
    ModelError::Malformed { format: format.name(), why: why.into() }
}

/// One tensor's place in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    /// Name.
    pub name: String,
    /// Element type as the file names it.
    pub dtype: String,
    /// Dimensions as the file lists them.
    pub shape: Vec<u64>,
    /// Absolute offset of the data.
    pub offset: u64,
    /// Bytes of data.
    pub len: u64,
    /// Width of a little-endian float element (2 or 4) when the float codec applies.
    pub float_width: Option<u8>,
}

impl Tensor {
    /// Whether the recorded tensor has this one's name, dtype, shape and place.
    pub fn matches(&self, r: &TensorRecord) -> bool {
        self.name == r.name
            && self.dtype == r.dtype
            && self.shape == r.shape
            && self.offset == r.offset
            && self.len == r.len
    }
}

/// Width of a little-endian float element for the float codec, by the dtype names both safetensors
/// and GGUF use.
pub(crate) fn float_width(dtype: &str) -> Option<u8> {
    match dtype {
        "BF16" | "F16" => Some(2),
        "F32" => Some(4),
        _ => None,
    }
}

/// A parsed model file: tensors sorted by offset, none overlapping, all inside the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Format.
    pub format: Format,
    /// Tensors in file order.
    pub tensors: Vec<Tensor>,
    /// The file size the layout was parsed for.
    pub size: u64,
}

/// Gaps smaller than this (padding, zip local headers) join the tensor that follows them, so a
/// file does not turn into thousands of tiny chunks.
const SMALL_GAP: u64 = 64 * 1024;

impl Layout {
    /// Spans that cover the file exactly: tensors, and the bytes between them.
    pub fn spans(&self) -> Vec<Span> {
        let mut spans = Vec::with_capacity(self.tensors.len() + 2);
        let mut pos = 0u64;
        for t in &self.tensors {
            let gap = t.offset - pos;
            let hint = t.float_width.map_or(Hint::Generic, Hint::Float);
            if gap >= SMALL_GAP || (gap > 0 && t.float_width.is_some_and(|w| !gap.is_multiple_of(u64::from(w)))) {
                spans.push(Span { len: gap, hint: Hint::Generic });
                spans.push(Span { len: t.len, hint });
            } else {
                spans.push(Span { len: gap + t.len, hint });
            }
            pos = t.offset + t.len;
        }
        if self.size > pos {
            spans.push(Span { len: self.size - pos, hint: Hint::Generic });
        }
        spans.retain(|s| s.len > 0);
        spans
    }

    /// The record for a snapshot, with the hashes a [`TensorHasher`] computed.
    pub fn record(&self, hashes: Vec<[u8; 32]>) -> ModelLayout {
        ModelLayout {
            format: self.format.name().into(),
            tensors: self
                .tensors
                .iter()
                .zip(hashes)
                .map(|(t, h)| TensorRecord {
                    name: t.name.clone(),
                    dtype: t.dtype.clone(),
                    shape: t.shape.clone(),
                    offset: t.offset,
                    len: t.len,
                    hash: h.to_vec(),
                })
                .collect(),
        }
    }

    /// Sort by offset and refuse overlaps and tensors reaching past the end.
    pub(crate) fn checked(format: Format, mut tensors: Vec<Tensor>, size: u64) -> Result<Self, ModelError> {
        tensors.sort_by_key(|t| t.offset);
        let mut end = 0u64;
        for t in &tensors {
            let t_end = t.offset.checked_add(t.len).filter(|e| *e <= size).ok_or_else(|| {
                malformed(format, format!("tensor {:?} ends past the end of the file ({size} bytes)", t.name))
            })?;
            if t.offset < end && t.len > 0 {
                return Err(malformed(format, format!("tensor {:?} overlaps the tensor before it", t.name)));
            }
            end = end.max(t_end);
        }
        Ok(Self { format, tensors, size })
    }
}

/// Which format the first bytes of a file announce, if any. `size` is the file size.
pub fn sniff(head: &[u8], size: u64) -> Option<Format> {
    if head.starts_with(b"GGUF") {
        return Some(Format::Gguf);
    }
    if head.starts_with(b"PK\x03\x04") {
        return Some(Format::PytorchZip);
    }
    // safetensors: u64 header length, then a JSON object. A length past the end still counts, so
    // a truncated file is reported as a damaged model, not taken for an ordinary file.
    if head.len() >= 9 && size >= 9 {
        let n = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
        if (2..=safetensors::MAX_HEADER).contains(&n) && head[8] == b'{' {
            return Some(Format::Safetensors);
        }
    }
    None
}

/// Parse a model file of a known format. The reader's position is irrelevant; it is left anywhere.
pub fn parse<R: Read + Seek>(format: Format, r: &mut R, size: u64) -> Result<Layout, ModelError> {
    r.seek(SeekFrom::Start(0))?;
    match format {
        Format::Safetensors => safetensors::parse(r, size),
        Format::Gguf => gguf::parse(r, size),
        Format::PytorchZip => torchzip::parse(r, size),
    }
}

/// Sniff and parse: `Ok(None)` for a file that is not a model file at all (a zip that is not a
/// PyTorch checkpoint included).
pub fn detect<R: Read + Seek>(r: &mut R, size: u64) -> Result<Option<Layout>, ModelError> {
    let mut head = [0u8; 9];
    r.seek(SeekFrom::Start(0))?;
    let n = read_up_to(r, &mut head)?;
    let Some(format) = sniff(&head[..n], size) else { return Ok(None) };
    match parse(format, r, size) {
        Err(ModelError::Malformed { why, .. }) if format == Format::PytorchZip && why == torchzip::NOT_TORCH => {
            Ok(None)
        }
        other => other.map(Some),
    }
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Read exactly `len` bytes at `offset` after checking they lie inside the file.
pub(crate) fn read_at<R: Read + Seek>(
    r: &mut R,
    format: Format,
    offset: u64,
    len: u64,
    size: u64,
    what: &str,
) -> Result<Vec<u8>, ModelError> {
    if offset.checked_add(len).is_none_or(|e| e > size) {
        return Err(malformed(
            format,
            format!("{what} ({len} bytes at {offset}) lies past the end of the file ({size} bytes)"),
        ));
    }
    r.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// A reader that hashes each tensor's bytes as the file streams through it.
pub struct TensorHasher<R> {
    inner: R,
    pos: u64,
    ranges: Vec<(u64, u64)>,
    hashers: Vec<blake3::Hasher>,
    next: usize,
}

impl<R: Read> TensorHasher<R> {
    /// Wrap a reader positioned at the start of the file.
    pub fn new(inner: R, layout: &Layout) -> Self {
        Self {
            inner,
            pos: 0,
            ranges: layout.tensors.iter().map(|t| (t.offset, t.offset + t.len)).collect(),
            hashers: layout.tensors.iter().map(|_| blake3::Hasher::new()).collect(),
            next: 0,
        }
    }

    /// The tensor hashes, in the layout's order.
    pub fn finish(self) -> Vec<[u8; 32]> {
        self.hashers.iter().map(|h| *h.finalize().as_bytes()).collect()
    }
}

impl<R: Read> Read for TensorHasher<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let (start, end) = (self.pos, self.pos + n as u64);
        // Tensors are sorted and disjoint: skip those wholly behind, hash those overlapping.
        while self.next < self.ranges.len() && self.ranges[self.next].1 <= start {
            self.next += 1;
        }
        let mut i = self.next;
        while i < self.ranges.len() && self.ranges[i].0 < end {
            let (a, b) = (self.ranges[i].0.max(start), self.ranges[i].1.min(end));
            if a < b {
                self.hashers[i].update(&buf[(a - start) as usize..(b - start) as usize]);
            }
            i += 1;
        }
        self.pos = end;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;

/// The order-0 entropy, in bytes, of `data` read as elements of `width` bytes with each byte
/// position taken as its own source: the floor for coding the planes the float codec makes.
pub fn grouped_entropy_bytes(data: &[u8], width: u8) -> f64 {
    let w = usize::from(width.max(1));
    let mut counts = vec![[0u64; 256]; w];
    for elem in data.chunks_exact(w) {
        for (p, b) in elem.iter().enumerate() {
            counts[p][usize::from(*b)] += 1;
        }
    }
    let mut bits = 0.0;
    for plane in &counts {
        let total: u64 = plane.iter().sum();
        for &c in plane.iter().filter(|c| **c > 0) {
            let p = c as f64 / total as f64;
            bits -= c as f64 * p.log2();
        }
    }
    bits / 8.0 + (data.len() % w) as f64
}
