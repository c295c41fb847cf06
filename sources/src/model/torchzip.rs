//! PyTorch zip checkpoints (`torch.save` since 1.6, TorchScript): a zip archive whose
//! `<archive>/data/<key>` entries are the raw tensor storages, stored uncompressed and 64-byte
//! aligned. Each storage record is a tensor span; the pickle, headers and directory lie between.

use std::io::{Read, Seek};

use super::{Format, Layout, ModelError, Tensor, malformed, read_at};

const F: Format = Format::PytorchZip;
/// Largest central directory read (a checkpoint's has about 100 bytes per tensor).
const MAX_DIRECTORY: u64 = 64 << 20;
/// Said of a valid zip without `data.pkl`: an ordinary archive, not a checkpoint.
pub(super) const NOT_TORCH: &str = "a zip archive without data.pkl";

fn u16_at(b: &[u8], i: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[i], b[i + 1]]))
}
fn u32_at(b: &[u8], i: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]))
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default())
}

/// Where the central directory is and how many entries it has.
fn find_directory<R: Read + Seek>(r: &mut R, size: u64) -> Result<(u64, u64, u64), ModelError> {
    let tail_len = size.min(22 + 65_535);
    let tail = read_at(r, F, size - tail_len, tail_len, size, "the end of the archive")?;
    let at = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or_else(|| malformed(F, "no end-of-central-directory record (truncated?)"))?;
    let eocd = &tail[at..];
    let (mut entries, mut cd_size, mut cd_offset) = (u16_at(eocd, 10), u32_at(eocd, 12), u32_at(eocd, 16));
    if entries == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        let eocd_pos = size - tail_len + at as u64;
        let loc = read_at(
            r,
            F,
            eocd_pos.checked_sub(20).ok_or_else(|| malformed(F, "no zip64 locator"))?,
            20,
            size,
            "the zip64 locator",
        )?;
        if loc[..4] != [0x50, 0x4b, 0x06, 0x07] {
            return Err(malformed(F, "the zip64 locator is missing"));
        }
        let rec = read_at(r, F, u64_at(&loc, 8), 56, size, "the zip64 directory record")?;
        if rec[..4] != [0x50, 0x4b, 0x06, 0x06] {
            return Err(malformed(F, "the zip64 directory record is missing"));
        }
        (entries, cd_size, cd_offset) = (u64_at(&rec, 32), u64_at(&rec, 40), u64_at(&rec, 48));
    }
    if cd_size > MAX_DIRECTORY {
        return Err(malformed(
            F,
            format!("a central directory of {cd_size} bytes (Tresor reads at most {MAX_DIRECTORY})"),
        ));
    }
    if cd_offset.checked_add(cd_size).is_none_or(|e| e > size) || entries > cd_size / 46 {
        return Err(malformed(
            F,
            format!("the central directory ({entries} entries, {cd_size} bytes at {cd_offset}) does not fit"),
        ));
    }
    Ok((cd_offset, cd_size, entries))
}

pub(super) fn parse<R: Read + Seek>(r: &mut R, size: u64) -> Result<Layout, ModelError> {
    let (cd_offset, cd_size, entries) = find_directory(r, size)?;
    let cd = read_at(r, F, cd_offset, cd_size, size, "the central directory")?;
    let mut pos = 0usize;
    let mut records = Vec::new();
    let mut has_pickle = false;
    for _ in 0..entries {
        if pos + 46 > cd.len() || cd[pos..pos + 4] != [0x50, 0x4b, 0x01, 0x02] {
            return Err(malformed(F, format!("central directory entry at +{pos} is damaged")));
        }
        let e = &cd[pos..];
        let method = u16_at(e, 10);
        let (mut comp, mut raw, mut local) = (u32_at(e, 20), u32_at(e, 24), u32_at(e, 42));
        let (n, x, c) = (u16_at(e, 28) as usize, u16_at(e, 30) as usize, u16_at(e, 32) as usize);
        if pos + 46 + n + x + c > cd.len() {
            return Err(malformed(F, format!("central directory entry at +{pos} runs past the directory")));
        }
        let name = String::from_utf8_lossy(&e[46..46 + n]).into_owned();
        // zip64 extra field: the values that overflowed 32 bits, in this order.
        let mut extra = &e[46 + n..46 + n + x];
        while extra.len() >= 4 {
            let (id, len) = (u16_at(extra, 0), u16_at(extra, 2) as usize);
            let body = extra
                .get(4..4 + len)
                .ok_or_else(|| malformed(F, format!("entry {name:?} has a damaged extra field")))?;
            if id == 1 {
                let mut vals = body.chunks_exact(8).map(|v| u64_at(v, 0));
                for field in [&mut raw, &mut comp, &mut local] {
                    if *field == 0xFFFF_FFFF {
                        *field =
                            vals.next().ok_or_else(|| malformed(F, format!("entry {name:?}: zip64 field missing")))?;
                    }
                }
            }
            extra = &extra[4 + len..];
        }
        pos += 46 + n + x + c;
        has_pickle |= name == "data.pkl" || name.ends_with("/data.pkl");
        let is_storage = name.rsplit_once('/').is_some_and(|(dir, _)| dir == "data" || dir.ends_with("/data"));
        if !is_storage {
            continue;
        }
        if method != 0 || comp != raw {
            return Err(malformed(
                F,
                format!("storage {name:?} is compressed (method {method}); torch stores them raw"),
            ));
        }
        let lh = read_at(r, F, local, 30, size, &format!("the local header of {name:?}"))?;
        if lh[..4] != [0x50, 0x4b, 0x03, 0x04] {
            return Err(malformed(F, format!("the local header of {name:?} is missing")));
        }
        let data = local + 30 + u16_at(&lh, 26) + u16_at(&lh, 28);
        records.push(Tensor {
            name,
            dtype: "storage".into(),
            shape: Vec::new(),
            offset: data,
            len: comp,
            float_width: None,
        });
    }
    if !has_pickle {
        return Err(malformed(F, NOT_TORCH));
    }
    Layout::checked(F, records, size)
}
