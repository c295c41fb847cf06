//! Stored size of a float tensor file under zstd 3 and under the float codec, per 1 MiB chunk, and
//! the order-0 entropy of its bytes grouped by position (the floor a byte-wise entropy coder can
//! reach). `cargo run --release -p tresor-sources --example float_ratio -- [FILE [WIDTH]]`; without
//! a file, 64 MiB of synthetic bf16 weights. Prints one JSON line (used by `make bench`).

use tresor_vault::codec::{self, Hint};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (data, width) = match args.get(1) {
        Some(f) => (std::fs::read(f).expect("read file"), args.get(2).and_then(|w| w.parse().ok()).unwrap_or(2u8)),
        None => (tresor_sources::model::synth::bf16_weights(32 << 20, 7), 2),
    };
    let (mut zstd, mut float) = (0usize, 0usize);
    for chunk in data.chunks(1 << 20) {
        zstd += codec::encode(chunk, 3).1.len();
        float += codec::encode_hinted(chunk, 3, Hint::Float(width)).1.len();
    }
    let floor = tresor_sources::model::grouped_entropy_bytes(&data, width);
    println!(
        "{{\"bytes\": {}, \"width\": {width}, \"zstd3_bytes\": {zstd}, \"float_codec_bytes\": {float}, \"floor_bytes\": {:.0}, \"float_over_zstd\": {:.4}, \"float_over_floor\": {:.4}}}",
        data.len(),
        floor,
        float as f64 / zstd as f64,
        float as f64 / floor
    );
}
