//! Writers for model files, for tests and benchmarks: a safetensors writer that follows the
//! reference writer's layout, and a minimal GGUF writer.

/// Write a safetensors file: tensors sorted by dtype width (widest first), then name, header padded
/// with spaces to a multiple of 8, as the reference writer does.
pub fn safetensors(tensors: &[(&str, &str, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let width = |d: &str| match d {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "BF16" | "F16" | "I16" => 2,
        _ => 1,
    };
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| width(tensors[b].1).cmp(&width(tensors[a].1)).then(tensors[a].0.cmp(tensors[b].0)));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut pos = 0usize;
    for &i in &order {
        let (name, dtype, shape, data) = &tensors[i];
        header.insert(
            (*name).into(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + data.len()]}),
        );
        pos += data.len();
    }
    let mut h = serde_json::to_vec(&header).unwrap_or_default();
    while !(8 + h.len()).is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + pos);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for &i in &order {
        out.extend_from_slice(&tensors[i].3);
    }
    out
}

/// Write a GGUF v3 file of F32 tensors with the given alignment (recorded as `general.alignment`).
pub fn gguf_f32(tensors: &[(&str, Vec<u64>, Vec<u8>)], alignment: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&2u64.to_le_bytes());
    string(&mut out, "general.name");
    out.extend_from_slice(&8u32.to_le_bytes());
    string(&mut out, "tresor test");
    string(&mut out, "general.alignment");
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&alignment.to_le_bytes());
    let align = u64::from(alignment.max(1));
    let mut offset = 0u64;
    for (name, dims, data) in tensors {
        string(&mut out, name);
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + data.len() as u64).div_ceil(align) * align;
    }
    while !(out.len() as u64).is_multiple_of(align) {
        out.push(0);
    }
    for (_, _, data) in tensors {
        out.extend_from_slice(data);
        while !(out.len() as u64).is_multiple_of(align) {
            out.push(0);
        }
    }
    out
}

/// bf16 values drawn from a narrow bell-shaped distribution (sum of three uniforms), as trained
/// weights look; `seed` makes them reproducible.
pub fn bf16_weights(count: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        // xorshift64*: fast and good enough for test data.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut out = Vec::with_capacity(count * 2);
    for _ in 0..count {
        let x = (next() + next() + next() - 1.5) * 0.04;
        out.extend_from_slice(&x.to_bits().to_le_bytes()[2..]);
    }
    out
}
