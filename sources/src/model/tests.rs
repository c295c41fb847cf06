use std::io::Cursor;

use proptest::prelude::*;

use super::*;

fn f32s(n: usize, seed: f32) -> Vec<u8> {
    (0..n).flat_map(|i| (seed + i as f32 * 0.001).to_le_bytes()).collect()
}

fn parse_bytes(bytes: &[u8]) -> Result<Option<Layout>, ModelError> {
    detect(&mut Cursor::new(bytes), bytes.len() as u64)
}

fn sample_safetensors() -> Vec<u8> {
    synth::safetensors(&[
        ("a.weight", "F32", vec![4, 8], f32s(32, 1.0)),
        ("a.bias", "BF16", vec![8], synth::bf16_weights(8, 1)),
        ("ids", "I64", vec![3], vec![0; 24]),
    ])
}

#[test]
fn safetensors_tensors_cover_the_file_and_spans_too() {
    let bytes = sample_safetensors();
    let l = parse_bytes(&bytes).unwrap().unwrap();
    assert_eq!(l.format, Format::Safetensors);
    let names: Vec<_> = l.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["ids", "a.weight", "a.bias"], "file order: widest dtype first, then name");
    assert_eq!(l.tensors[1].float_width, Some(4));
    assert_eq!(l.tensors[2].float_width, Some(2));
    assert_eq!(l.spans().iter().map(|s| s.len).sum::<u64>(), bytes.len() as u64);
    let mut h = TensorHasher::new(&bytes[..], &l);
    std::io::copy(&mut h, &mut std::io::sink()).unwrap();
    let hashes = h.finish();
    let t = &l.tensors[1];
    assert_eq!(hashes[1], *blake3::hash(&bytes[t.offset as usize..(t.offset + t.len) as usize]).as_bytes());
}

#[test]
fn safetensors_truncated_header_is_named() {
    let bytes = sample_safetensors();
    let e = parse_bytes(&bytes[..40]).unwrap_err().to_string();
    assert!(e.contains("safetensors") && e.contains("header"), "{e}");
    // The data cut short: the offsets no longer fit.
    let e = parse_bytes(&bytes[..bytes.len() - 5]).unwrap_err().to_string();
    assert!(e.contains("do not fit") || e.contains("cover"), "{e}");
}

#[test]
fn safetensors_gap_and_wrong_size_are_refused() {
    let mut bytes = sample_safetensors();
    bytes.extend_from_slice(&[0; 8]);
    let e = parse_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("cover the file exactly"), "{e}");
    let bad = synth::safetensors(&[("w", "F32", vec![3], vec![0; 8])]);
    let e = parse_bytes(&bad).unwrap_err().to_string();
    assert!(e.contains("needs 12 bytes"), "{e}");
}

#[test]
fn gguf_layout_and_alignment() {
    let bytes = synth::gguf_f32(&[("tok", vec![64, 100], f32s(6400, 0.5)), ("norm", vec![63], f32s(63, 2.0))], 32);
    let l = parse_bytes(&bytes).unwrap().unwrap();
    assert_eq!(l.format, Format::Gguf);
    assert_eq!(l.tensors.len(), 2);
    assert_eq!(l.tensors[1].offset - l.tensors[0].offset, 25_600);
    assert_eq!(l.tensors[1].len, 252);
    assert_eq!(l.spans().iter().map(|s| s.len).sum::<u64>(), bytes.len() as u64);
    let wrong = synth::gguf_f32(&[("tok", vec![4], f32s(4, 0.5))], 12);
    let e = parse_bytes(&wrong).unwrap_err().to_string();
    assert!(e.contains("general.alignment is 12"), "{e}");
}

#[test]
fn gguf_misaligned_offset_is_refused() {
    let mut bytes = synth::gguf_f32(&[("a", vec![3], f32s(3, 0.5)), ("b", vec![4], f32s(4, 0.5))], 32);
    // The second tensor info's offset is the last u64 before the padding: make it 16.
    let needle = 32u64.to_le_bytes();
    let at = bytes.windows(8).rposition(|w| w == needle).unwrap();
    bytes[at..at + 8].copy_from_slice(&16u64.to_le_bytes());
    let e = parse_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("not a multiple of the alignment 32"), "{e}");
}

/// A stored (method 0) zip in the layout `torch.save` writes.
fn torch_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let local = out.len() as u32;
        let crc = 0u32;
        out.extend_from_slice(&[0x50, 0x4b, 0x03, 0x04, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        // Pad the extra field so data starts 64-byte aligned.
        let pad = (64 - (out.len() + 2 + name.len() + 4) % 64) % 64;
        out.extend_from_slice(&((pad + 4) as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&[0xFF, 0xFF]);
        out.extend_from_slice(&(pad as u16).to_le_bytes());
        out.extend(std::iter::repeat_n(b'Z', pad));
        out.extend_from_slice(data);
        central.extend_from_slice(&[0x50, 0x4b, 0x01, 0x02, 20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 12]);
        central.extend_from_slice(&local.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&[0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

#[test]
fn torch_zip_storages_are_tensors() {
    let w = f32s(1000, 0.1);
    let bytes = torch_zip(&[("archive/data.pkl", b"pickle"), ("archive/data/0", &w), ("archive/version", b"3\n")]);
    let l = parse_bytes(&bytes).unwrap().unwrap();
    assert_eq!(l.format, Format::PytorchZip);
    assert_eq!(l.tensors.len(), 1);
    assert_eq!(l.tensors[0].offset % 64, 0);
    assert_eq!(&bytes[l.tensors[0].offset as usize..][..w.len()], &w[..]);
    // A zip that is not a checkpoint is an ordinary file.
    let plain = torch_zip(&[("readme.txt", b"hello")]);
    assert!(parse_bytes(&plain).unwrap().is_none());
}

proptest! {
    #[test]
    fn garbage_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..600), kind in 0u8..3) {
        let prefix: &[u8] = match kind { 0 => b"GGUF\x03\x00\x00\x00", 1 => b"PK\x03\x04", _ => b"\x20\x00\x00\x00\x00\x00\x00\x00{" };
        bytes.splice(0..0, prefix.iter().copied());
        let _ = parse_bytes(&bytes);
    }

    #[test]
    fn truncations_of_valid_files_never_panic(cut in 0usize..400, which in 0u8..3) {
        let bytes = match which {
            0 => sample_safetensors(),
            1 => synth::gguf_f32(&[("a", vec![10], f32s(10, 0.5))], 32),
            _ => torch_zip(&[("archive/data.pkl", b"p"), ("archive/data/0", &f32s(20, 0.5))]),
        };
        let cut = cut.min(bytes.len());
        let _ = parse_bytes(&bytes[..cut]);
    }
}
