//! Single-core AES-256-GCM throughput through the vault's cipher interface, for `make bench`'s
//! "share of CPU spent in the cipher" figure. Prints one JSON line.

use std::time::Instant;

use tresor_vault::crypto::{SealKey, counter_nonce};

fn main() {
    let key = SealKey::new(&[7u8; 32]);
    let blob: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let rounds = 512u64;
    let mut sealed = Vec::with_capacity(blob.len() + 16);
    let t = Instant::now();
    for n in 0..rounds {
        sealed.clear();
        key.seal_append(&counter_nonce(n), b"aad", &blob, &mut sealed);
    }
    let seal_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..rounds {
        let opened = key.open(&counter_nonce(rounds - 1), b"aad", &sealed).expect("authentic");
        std::hint::black_box(opened);
    }
    let open_s = t.elapsed().as_secs_f64();
    let mib = rounds as f64;
    println!("{{\"seal_mib_s\": {:.1}, \"open_mib_s\": {:.1}}}", mib / seal_s, mib / open_s);
}
