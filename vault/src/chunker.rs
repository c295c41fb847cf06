//! Content-defined chunking over a byte stream: FastCDC 2020 with the vault's seeded gear table.
//!
//! The fastcdc crate's `StreamCDC` moves its whole buffer after every chunk; this reader keeps a
//! window twice the maximum chunk size (grown on demand, so small files stay cheap) and cuts in
//! place, so each byte is moved at most once.

use std::io::Read;

use fastcdc::v2020 as f;

use crate::config::ChunkerParams;

/// Splits a reader into chunks.
pub struct Chunker<R> {
    source: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    min: usize,
    avg: usize,
    max: usize,
    masks: (u64, u64, u64, u64),
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
}

impl<R: Read> Chunker<R> {
    /// A chunker over `source`. `params` must have passed [`ChunkerParams::validate`].
    pub fn new(source: R, params: &ChunkerParams, seed: u64) -> Self {
        let bits = f::logarithm2(params.avg_size);
        let norm = u32::from(params.normalization);
        let mask_s = f::MASKS[(bits + norm) as usize];
        let mask_l = f::MASKS[(bits - norm) as usize];
        let (gear, gear_ls) = f::get_gear_with_seed(seed);
        Self {
            source,
            buf: Vec::new(),
            start: 0,
            end: 0,
            eof: false,
            min: params.min_size as usize,
            avg: params.avg_size as usize,
            max: params.max_size as usize,
            masks: (mask_s, mask_l, mask_s << 1, mask_l << 1),
            gear,
            gear_ls,
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        if self.end - self.start >= self.max || self.eof {
            return Ok(());
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // Twice the largest chunk: the tail moved to the front is at most one maximum chunk, and
        // it is moved only after at least as many bytes were cut, so each byte moves at most once.
        let window = 2 * self.max;
        loop {
            if self.end == self.buf.len() {
                // Grow by doubling up to the window: a small file never pays for zeroing a
                // window sized for the largest chunk.
                if self.buf.len() >= window {
                    break;
                }
                self.buf.resize((self.buf.len() * 2).max(64 << 10).min(window), 0);
            }
            match self.source.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next chunk, as a slice valid until the next call; `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<&[u8]>> {
        self.fill()?;
        let avail = self.end - self.start;
        if avail == 0 {
            return Ok(None);
        }
        let (ms, ml, msl, mll) = self.masks;
        let (_, len) = f::cut_gear(
            &self.buf[self.start..self.end],
            self.min,
            self.avg,
            self.max,
            ms,
            ml,
            msl,
            mll,
            &self.gear,
            &self.gear_ls,
        );
        let len = if len == 0 { avail } else { len };
        let chunk = &self.buf[self.start..self.start + len];
        self.start += len;
        Ok(Some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerParams {
        ChunkerParams { min_size: 256, avg_size: 1024, max_size: 4096, ..ChunkerParams::default() }
    }

    proptest! {
        #[test]
        fn chunks_concatenate_to_input_and_respect_bounds(data in proptest::collection::vec(any::<u8>(), 0..40_000), seed: u64) {
            let p = small();
            let mut c = Chunker::new(&data[..], &p, seed);
            let mut out = Vec::new();
            let mut sizes = Vec::new();
            while let Some(ch) = c.next_chunk().unwrap() {
                out.extend_from_slice(ch);
                sizes.push(ch.len());
            }
            prop_assert_eq!(&out, &data);
            for (i, s) in sizes.iter().enumerate() {
                prop_assert!(*s <= 4096);
                if i + 1 < sizes.len() { prop_assert!(*s >= 256); }
            }
        }
    }

    #[test]
    fn same_cuts_whatever_the_read_sizes() {
        struct Dribble<'a>(&'a [u8]);
        impl Read for Dribble<'_> {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                let n = b.len().min(self.0.len()).min(777);
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut data = vec![0u8; 200_000];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
        let cuts = |r: &mut dyn Read| {
            let mut c = Chunker::new(r, &small(), 9);
            let mut v = Vec::new();
            while let Some(ch) = c.next_chunk().unwrap() {
                v.push(ch.len());
            }
            v
        };
        assert_eq!(cuts(&mut &data[..]), cuts(&mut Dribble(&data)));
    }
}
