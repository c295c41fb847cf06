//! Writes the deterministic benchmark corpus for `make bench`:
//!
//! - `base/model/model.safetensors`: a bf16 safetensors model (40 tensors of 4096 x 1792, 587 MB)
//!   with weights drawn from N(0, 0.02), as trained weights look;
//! - `variants/partial.safetensors`: the same model with every eighth tensor fine-tuned;
//! - `variants/full.safetensors`: every tensor fine-tuned (small changes everywhere);
//! - `base/vectors/embeddings.f32`: 100,000 float32 vectors of dimension 384 (154 MB);
//! - `base/docs/`: 6,000 small text files in 60 directories (about 70 MB).
//!
//! Usage: `tresor-bench-corpus DIR`. The same DIR contents come out on every run.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

const TENSORS: usize = 40;
const ROWS: usize = 4096;
const COLS: usize = 1792;
const VECTORS: usize = 100_000;
const DIM: usize = 384;
const DOC_DIRS: usize = 60;
const DOCS_PER_DIR: usize = 100;

/// xorshift64*: fast, deterministic, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Approximately normal (Irwin-Hall with four terms), mean 0, deviation `sd`.
    fn normal(&mut self, sd: f32) -> f32 {
        let s = self.unit() + self.unit() + self.unit() + self.unit() - 2.0;
        s * sd * 1.732
    }
}

fn bf16(x: f32) -> [u8; 2] {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    ((rounded >> 16) as u16).to_le_bytes()
}

/// Tensor `t` of the model: `tuned` adds a fine-tuning delta of deviation `delta`.
fn tensor(t: usize, tuned: bool, delta: f32) -> Vec<u8> {
    let mut base = Rng(0x5eed_0000 + t as u64 * 7919);
    let mut tune = Rng(0x7a11_0000 + t as u64 * 104_729);
    let mut out = Vec::with_capacity(ROWS * COLS * 2);
    for _ in 0..ROWS * COLS {
        let mut w = base.normal(0.02);
        if tuned {
            w += tune.normal(delta);
        }
        out.extend_from_slice(&bf16(w));
    }
    out
}

fn write_model(path: &Path, tuned: impl Fn(usize) -> bool) -> std::io::Result<()> {
    let size = ROWS * COLS * 2;
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    for t in 0..TENSORS {
        header.push_str(&format!(
            ",\"layers.{t}.weight\":{{\"dtype\":\"BF16\",\"shape\":[{ROWS},{COLS}],\"data_offsets\":[{},{}]}}",
            t * size,
            (t + 1) * size
        ));
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut w = BufWriter::with_capacity(8 << 20, File::create(path)?);
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    for t in 0..TENSORS {
        w.write_all(&tensor(t, tuned(t), 0.004))?;
    }
    w.flush()
}

fn write_vectors(path: &Path) -> std::io::Result<()> {
    let mut rng = Rng(0xe3b_eddd);
    let mut w = BufWriter::with_capacity(8 << 20, File::create(path)?);
    let mut v = vec![0f32; DIM];
    for _ in 0..VECTORS {
        let mut norm = 0f32;
        for x in v.iter_mut() {
            *x = rng.normal(1.0);
            norm += *x * *x;
        }
        let inv = 1.0 / norm.sqrt().max(f32::MIN_POSITIVE);
        for x in &v {
            w.write_all(&(x * inv).to_le_bytes())?;
        }
    }
    w.flush()
}

const WORDS: &[&str] = &[
    "the",
    "model",
    "index",
    "vector",
    "backup",
    "restore",
    "drill",
    "report",
    "agent",
    "vault",
    "snapshot",
    "chunk",
    "policy",
    "retention",
    "audit",
    "public",
    "administration",
    "service",
    "request",
    "answer",
    "citizen",
    "record",
    "document",
    "archive",
    "server",
    "storage",
    "network",
    "weights",
    "embedding",
    "query",
    "result",
    "daily",
];

fn write_docs(root: &Path) -> std::io::Result<()> {
    let mut rng = Rng(0xd0c5);
    for d in 0..DOC_DIRS {
        let dir = root.join(format!("dept-{d:02}"));
        fs::create_dir_all(&dir)?;
        for f in 0..DOCS_PER_DIR {
            let target = 1024 + (rng.next() % 22_000) as usize;
            let mut text = String::with_capacity(target + 64);
            text.push_str(&format!("Case {d}-{f} ({})\n", rng.next() % 100_000));
            while text.len() < target {
                text.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
                text.push(if rng.next().is_multiple_of(12) { '\n' } else { ' ' });
                if rng.next().is_multiple_of(40) {
                    text.push_str(&format!("{} ", rng.next() % 1_000_000));
                }
            }
            fs::write(dir.join(format!("case-{f:03}.txt")), text)?;
        }
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os().nth(1).map(std::path::PathBuf::from).unwrap_or_else(|| {
        eprintln!("usage: tresor-bench-corpus DIR");
        std::process::exit(2)
    });
    let (base, variants) = (dir.join("base"), dir.join("variants"));
    for d in ["model", "vectors", "docs"] {
        fs::create_dir_all(base.join(d))?;
    }
    fs::create_dir_all(&variants)?;
    std::thread::scope(|s| -> std::io::Result<()> {
        let a = s.spawn(|| write_model(&base.join("model/model.safetensors"), |_| false));
        let b = s.spawn(|| write_model(&variants.join("partial.safetensors"), |t| t % 8 == 0));
        write_model(&variants.join("full.safetensors"), |_| true)?;
        write_vectors(&base.join("vectors/embeddings.f32"))?;
        write_docs(&base.join("docs"))?;
        a.join().unwrap_or_else(|_| Err(std::io::Error::other("model writer panicked")))?;
        b.join().unwrap_or_else(|_| Err(std::io::Error::other("model writer panicked")))?;
        Ok(())
    })
}
