//! A streaming reader of tar archives (ustar, with GNU long names and pax path and size records),
//! for `pg_basebackup -Ft -D -`: each member's bytes are read straight from the stream, so nothing
//! is staged on disk. The stream is untrusted: every field is checked and errors name the member.

use std::io::Read;

/// A member's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
}

/// A member's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, without a trailing `/`.
    pub path: String,
    /// Kind.
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Bytes of data that follow.
    pub size: u64,
    /// Link target.
    pub link: Option<String>,
}

/// Why the archive could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// Reading failed.
    #[error("reading the archive: {0}")]
    Io(#[from] std::io::Error),
    /// A header is damaged.
    #[error("damaged tar header after {after:?}: {why}")]
    Malformed {
        /// The member before it.
        after: String,
        /// What is wrong.
        why: String,
    },
}

/// Long names and pax records are small; refuse absurd ones before allocating.
const MAX_META: u64 = 1 << 20;

/// Reads members one after the other.
pub struct TarReader<R> {
    inner: R,
    last: String,
    /// Bytes of the current member not yet read, and the padding after them.
    pending: (u64, u64),
}

impl<R: Read> TarReader<R> {
    /// A reader at the start of an archive.
    pub fn new(inner: R) -> Self {
        Self { inner, last: String::new(), pending: (0, 0) }
    }

    fn bad(&self, why: impl Into<String>) -> TarError {
        TarError::Malformed { after: self.last.clone(), why: why.into() }
    }

    fn skip(&mut self, n: u64) -> Result<(), TarError> {
        let got = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())?;
        if got != n {
            return Err(self.bad("the archive ends inside a member"));
        }
        Ok(())
    }

    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        if size > MAX_META {
            return Err(self.bad(format!("a {size}-byte long name or pax record")));
        }
        let mut buf = vec![0u8; size as usize];
        self.inner.read_exact(&mut buf)?;
        self.skip(size.next_multiple_of(512) - size)?;
        Ok(buf)
    }

    /// The next member, or `None` at the end. Skips what was left unread of the previous one.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        let (left, pad) = std::mem::take(&mut self.pending);
        self.skip(left + pad)?;
        let (mut long_name, mut long_link, mut pax_size) = (None, None, None);
        loop {
            let mut h = [0u8; 512];
            let mut got = 0;
            while got < 512 {
                match self.inner.read(&mut h[got..])? {
                    0 if got == 0 => return Ok(None),
                    0 => return Err(self.bad("the archive ends inside a header")),
                    n => got += n,
                }
            }
            if h.iter().all(|b| *b == 0) {
                return Ok(None);
            }
            let sum: u64 =
                h.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u64::from(*b) }).sum();
            let recorded = octal(&h[148..156]).ok_or_else(|| self.bad("unreadable checksum"))?;
            if sum != recorded {
                return Err(self.bad(format!("checksum {recorded} but the header sums to {sum}")));
            }
            let size = match pax_size.take() {
                Some(s) => s,
                None => number(&h[124..136]).ok_or_else(|| self.bad("unreadable size"))?,
            };
            let flag = h[156];
            match flag {
                b'L' => {
                    long_name = Some(text(&self.read_meta(size)?));
                    continue;
                }
                b'K' => {
                    long_link = Some(text(&self.read_meta(size)?));
                    continue;
                }
                b'x' => {
                    let records = self.read_meta(size)?;
                    for (k, v) in pax_records(&records) {
                        match k.as_str() {
                            "path" => long_name = Some(v),
                            "linkpath" => long_link = Some(v),
                            "size" => pax_size = Some(v.parse().map_err(|_| self.bad("pax size is not a number"))?),
                            _ => {}
                        }
                    }
                    continue;
                }
                b'g' => {
                    self.skip(size.next_multiple_of(512))?;
                    continue;
                }
                _ => {}
            }
            let name = long_name.take().unwrap_or_else(|| {
                let base = text(&h[0..100]);
                let prefix = if &h[257..262] == b"ustar" { text(&h[345..500]) } else { String::new() };
                if prefix.is_empty() { base } else { format!("{prefix}/{base}") }
            });
            let kind = match flag {
                b'0' | 0 | b'7' => EntryKind::File,
                b'5' => EntryKind::Dir,
                b'2' => EntryKind::Symlink,
                other => {
                    return Err(self.bad(format!(
                        "member {name:?} has type {:?}, not a file, directory or symlink",
                        other as char
                    )));
                }
            };
            let path = name.trim_end_matches('/').trim_start_matches("./").to_string();
            if path.split('/').any(|c| c == "..") || path.starts_with('/') {
                return Err(self.bad(format!("member path {path:?} leaves the archive")));
            }
            let data = if kind == EntryKind::File { size } else { 0 };
            let entry = Entry {
                path,
                kind,
                mode: number(&h[100..108]).unwrap_or(0o600) as u32 & 0o7777,
                uid: number(&h[108..116]).unwrap_or(0) as u32,
                gid: number(&h[116..124]).unwrap_or(0) as u32,
                mtime: number(&h[136..148]).unwrap_or(0) as i64,
                size: data,
                link: (kind == EntryKind::Symlink).then(|| long_link.take().unwrap_or_else(|| text(&h[157..257]))),
            };
            self.last = entry.path.clone();
            self.pending = (data, data.next_multiple_of(512) - data);
            return Ok(Some(entry));
        }
    }

    /// The current member's data; read it to the end (or leave it: the next call skips the rest).
    pub fn data(&mut self) -> impl Read + '_ {
        MemberReader { tar: self }
    }
}

struct MemberReader<'a, R> {
    tar: &'a mut TarReader<R>,
}

impl<R: Read> Read for MemberReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.tar.pending.0;
        if left == 0 {
            return Ok(0);
        }
        let n = buf.len().min(left.min(usize::MAX as u64) as usize);
        let got = self.tar.inner.read(&mut buf[..n])?;
        if got == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the archive ends inside a member"));
        }
        self.tar.pending.0 -= got as u64;
        Ok(got)
    }
}

fn text(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn octal(b: &[u8]) -> Option<u64> {
    let s = text(b);
    let s = s.trim_matches(|c: char| c == ' ' || c == '\0');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// Octal, or GNU base-256 for large values.
fn number(b: &[u8]) -> Option<u64> {
    if b[0] & 0x80 != 0 {
        if b[1..b.len() - 8].iter().any(|x| *x != 0) || b[0] != 0x80 {
            return None;
        }
        return Some(u64::from_be_bytes(b[b.len() - 8..].try_into().ok()?));
    }
    octal(b)
}

/// `LEN key=value\n` records.
fn pax_records(mut b: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(sp) = b.iter().position(|c| *c == b' ') {
        let Some(len) = std::str::from_utf8(&b[..sp]).ok().and_then(|l| l.parse::<usize>().ok()) else { break };
        if len <= sp + 1 || len > b.len() {
            break;
        }
        let rec = String::from_utf8_lossy(&b[sp + 1..len - 1]).into_owned();
        if let Some((k, v)) = rec.split_once('=') {
            out.push((k.to_string(), v.to_string()));
        }
        b = &b[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(name: &str, flag: u8, size: u64, link: &str) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000600");
        h[108..115].copy_from_slice(b"0000145");
        h[116..123].copy_from_slice(b"0000150");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"14712345670");
        h[156] = flag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn archive() -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&header("base/", b'5', 0, ""));
        a.extend_from_slice(&header("base/1", b'0', 700, ""));
        a.extend(std::iter::repeat_n(7u8, 700));
        a.extend(std::iter::repeat_n(0u8, 512 - 700 % 512));
        a.extend_from_slice(&header("pg_tblspc/16400", b'2', 0, "/srv/ts"));
        a.extend_from_slice(&[0u8; 1024]);
        a
    }

    #[test]
    fn reads_members_and_data() {
        let bytes = archive();
        let mut t = TarReader::new(&bytes[..]);
        let d = t.next_entry().unwrap().unwrap();
        assert_eq!((d.path.as_str(), d.kind, d.uid, d.gid), ("base", EntryKind::Dir, 0o145, 0o150));
        let f = t.next_entry().unwrap().unwrap();
        assert_eq!((f.path.as_str(), f.size, f.mode), ("base/1", 700, 0o600));
        let mut data = Vec::new();
        t.data().read_to_end(&mut data).unwrap();
        assert_eq!(data, vec![7u8; 700]);
        let l = t.next_entry().unwrap().unwrap();
        assert_eq!((l.kind, l.link.as_deref()), (EntryKind::Symlink, Some("/srv/ts")));
        assert!(t.next_entry().unwrap().is_none());
    }

    #[test]
    fn unread_data_is_skipped_and_damage_is_named() {
        let bytes = archive();
        let mut t = TarReader::new(&bytes[..]);
        t.next_entry().unwrap();
        t.next_entry().unwrap();
        assert_eq!(t.next_entry().unwrap().unwrap().path, "pg_tblspc/16400");
        let mut bad = archive();
        bad[512 + 10] ^= 1;
        let mut t = TarReader::new(&bad[..]);
        t.next_entry().unwrap();
        let e = t.next_entry().unwrap_err().to_string();
        assert!(e.contains("after \"base\"") && e.contains("checksum"), "{e}");
        let cut = &archive()[..1300];
        let mut t = TarReader::new(cut);
        t.next_entry().unwrap();
        t.next_entry().unwrap();
        assert!(t.data().read_to_end(&mut Vec::new()).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..3000), flip in 0usize..3000) {
            let mut a = archive();
            a.extend_from_slice(&bytes);
            let i = flip % a.len();
            a[i] ^= 0x5a;
            let mut t = TarReader::new(&a[..]);
            for _ in 0..10 {
                match t.next_entry() {
                    Ok(Some(_)) => { let _ = t.data().read_to_end(&mut Vec::new()); }
                    _ => break,
                }
            }
        }
    }
}
