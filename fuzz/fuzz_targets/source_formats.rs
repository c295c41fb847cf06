//! Files the agent reads from the sources it backs up, whose layout it trusts no more than
//! storage: model files (safetensors, GGUF, PyTorch zip), FAISS flat indexes, tar streams.
#![no_main]

use std::io::{Cursor, Read};

use libfuzzer_sys::fuzz_target;
use tresor_sources::model;
use tresor_sources::tar::TarReader;
use tresor_sources::vector::faiss;

fuzz_target!(|bytes: &[u8]| {
    let _ = model::detect(&mut Cursor::new(bytes), bytes.len() as u64);
    let _ = faiss::read_flat(bytes, bytes.len() as u64);
    let mut t = TarReader::new(bytes);
    for _ in 0..64 {
        match t.next_entry() {
            Ok(Some(_)) => {
                let _ = t.data().read_to_end(&mut Vec::new());
            }
            _ => break,
        }
    }
});
