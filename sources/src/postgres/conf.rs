//! The restored copy's own configuration files, read before a scratch server is started on them.
//! Every setting that could run a program or reach elsewhere is overridden on the server's
//! command line, but an `include` cannot be: it names another file to read, and a snapshot's
//! `postgresql.conf` (or `postgresql.auto.conf`, which `ALTER SYSTEM` never gives one) could name
//! one of this host's. So every include must stay inside the copy, without a link on the way.

use std::path::Path;

use crate::files::beneath::Dir;

/// PostgreSQL's own limit on nested includes.
const MAX_DEPTH: usize = 10;
/// Larger configuration files are refused rather than read.
const MAX_FILE: u64 = 4 << 20;

/// Why the configuration of the copy at `dir` may not be started on, if it may not: an include
/// that leaves the copy, goes through a link, nests too deep or cannot be read.
pub fn foreign_include(dir: &Path) -> Option<String> {
    let root = match Dir::open_configured(dir) {
        Ok(d) => d,
        Err(e) => return Some(format!("the copy cannot be opened: {e}")),
    };
    ["postgresql.conf", "postgresql.auto.conf"].iter().find_map(|f| check_file(&root, f, 0, false))
}

/// `rel` (relative to the copy) and everything it includes.
fn check_file(root: &Dir, rel: &str, depth: usize, must_exist: bool) -> Option<String> {
    if depth > MAX_DEPTH {
        return Some(format!("{rel}: includes nest deeper than {MAX_DEPTH}"));
    }
    let text = match read_in_copy(root, rel, MAX_FILE) {
        Ok(Some(t)) => t,
        Ok(None) if !must_exist => return None,
        Ok(None) => return Some(format!("{rel} is included but missing")),
        Err(e) => return Some(format!("{rel}: {e}")),
    };
    let base = rel.rsplit_once('/').map_or("", |(d, _)| d);
    for (line_no, line) in text.lines().enumerate() {
        let Some((directive, target)) = include_of(line) else { continue };
        let at = format!("{rel} line {}", line_no + 1);
        if target.starts_with('/') || target.split('/').any(|c| c == "..") || target.is_empty() {
            return Some(format!("{at}: {directive} {target:?} leaves the restored copy"));
        }
        let joined = join(base, &target);
        let found = if directive == "include_dir" {
            check_dir(root, &joined, depth)
        } else {
            check_file(root, &joined, depth + 1, directive == "include")
        };
        if let Some(why) = found {
            return Some(format!("{at}: {why}"));
        }
    }
    None
}

/// Every `*.conf` of an `include_dir`, as PostgreSQL reads them.
fn check_dir(root: &Dir, rel: &str, depth: usize) -> Option<String> {
    let sub = match root.dir(rel.as_bytes()) {
        Ok(d) => d,
        Err(e) => return Some(format!("include_dir {rel}: {e}")),
    };
    let names = match sub.names() {
        Ok(n) => n,
        Err(e) => return Some(format!("include_dir {rel}: {e}")),
    };
    names.iter().filter(|n| n.ends_with(b".conf") && !n.starts_with(b".")).find_map(|n| match std::str::from_utf8(n) {
        Ok(n) => check_file(root, &join(rel, n), depth + 1, true),
        // PostgreSQL would read it; a name this check cannot follow is refused, not skipped.
        Err(_) => Some(format!("include_dir {rel} holds {:?}, a name that is not UTF-8", String::from_utf8_lossy(n))),
    })
}

/// `rel` below `base` (both relative to the copy), without empty or `.` components.
fn join(base: &str, rel: &str) -> String {
    base.split('/').chain(rel.split('/')).filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/")
}

/// The text of `rel` below the copy, at most `limit` bytes: a regular file, opened without
/// following any link and without blocking (a pipe planted at the name would hang the verifier);
/// `None` when absent.
pub(super) fn read_in_copy(root: &Dir, rel: &str, limit: u64) -> Result<Option<String>, String> {
    use std::io::Read;
    let file = match root.open_at(rel.as_bytes(), rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK) {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if !file.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".into());
    }
    let mut text = String::new();
    file.take(limit + 1).read_to_string(&mut text).map_err(|e| e.to_string())?;
    if text.len() as u64 > limit {
        return Err(format!("larger than {limit} bytes"));
    }
    Ok(Some(text))
}

/// Give a copy without a `postgresql.conf` (its configuration lived outside the data directory,
/// as Debian's does) an empty one owned by `owner`. Whatever stands at the name already, a link
/// included, is left as it is (and judged by [`foreign_include`]); nothing is written through a
/// link.
pub(super) fn default_conf(dir: &Path, owner: u32) -> Result<(), String> {
    use std::io::Write;
    let root = Dir::open_configured(dir).map_err(|e| e.to_string())?;
    if root.stat(b"postgresql.conf").is_ok() {
        return Ok(());
    }
    let flags = rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CREATE | rustix::fs::OFlags::EXCL;
    let fd = root.open_at(b"postgresql.conf", flags).map_err(|e| format!("postgresql.conf: {e}"))?;
    rustix::fs::fchown(&fd, Some(rustix::process::Uid::from_raw(owner)), None).map_err(|e| e.to_string())?;
    std::fs::File::from(fd)
        .write_all(b"# written by tresor verify: the original lived outside the data directory\n")
        .map_err(|e| e.to_string())
}

/// `(directive, path)` when `line` is an include directive, in PostgreSQL's syntax: a name
/// (compared without case), an optional `=`, then a value quoted with `'` (`''` or `\'` inside)
/// or bare up to white space or `#`.
fn include_of(line: &str) -> Option<(String, String)> {
    let line = line.trim_start();
    let name_len = line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')).unwrap_or(line.len());
    let name = line[..name_len].to_ascii_lowercase();
    if !matches!(name.as_str(), "include" | "include_if_exists" | "include_dir") {
        return None;
    }
    let rest = line[name_len..].trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
    let value = match rest.strip_prefix('\'') {
        Some(quoted) => {
            let mut out = String::new();
            let mut chars = quoted.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\'' if chars.peek() == Some(&'\'') => {
                        chars.next();
                        out.push('\'');
                    }
                    '\'' => break,
                    '\\' => out.extend(chars.next()),
                    c => out.push(c),
                }
            }
            out
        }
        None => rest.split(|c: char| c.is_whitespace() || c == '#').next().unwrap_or("").to_string(),
    };
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_directives_are_read_as_postgresql_reads_them() {
        let cases = [
            ("include 'a.conf'", Some(("include", "a.conf"))),
            ("  INCLUDE_DIR = 'conf.d' # local", Some(("include_dir", "conf.d"))),
            ("include_if_exists='/etc/x'", Some(("include_if_exists", "/etc/x"))),
            ("include bare.conf", Some(("include", "bare.conf"))),
            ("include 'it''s\\'.conf'", Some(("include", "it's'.conf"))),
            ("shared_buffers = 128MB", None),
            ("# include '/etc/x'", None),
            ("included = 'x'", None),
        ];
        for (line, want) in cases {
            let got = include_of(line);
            assert_eq!(got.as_ref().map(|(d, p)| (d.as_str(), p.as_str())), want, "{line:?}");
        }
    }

    #[test]
    fn an_include_must_stay_inside_the_copy_without_a_link() {
        use std::os::unix::ffi::OsStrExt;
        let copy = tempfile::tempdir().unwrap();
        let d = copy.path();
        std::fs::write(d.join("postgresql.conf"), "shared_buffers = 1MB\ninclude_dir 'conf.d'\n").unwrap();
        std::fs::create_dir(d.join("conf.d")).unwrap();
        std::fs::write(d.join("conf.d/a.conf"), "include_if_exists 'b.conf'\n").unwrap();
        assert_eq!(foreign_include(d), None, "includes inside the copy are fine");

        std::fs::write(d.join("conf.d/b.conf"), "include '../../etc/passwd'\n").unwrap();
        let why = foreign_include(d).unwrap();
        assert!(why.contains("conf.d/b.conf line 1") && why.contains("leaves the restored copy"), "{why}");

        std::fs::remove_file(d.join("conf.d/b.conf")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.join("conf.d/b.conf")).unwrap();
        let why = foreign_include(d).unwrap();
        assert!(why.contains("conf.d/b.conf"), "a link is not followed: {why}");

        std::fs::remove_file(d.join("conf.d/b.conf")).unwrap();
        let status = std::process::Command::new("mkfifo").arg(d.join("conf.d/b.conf")).status().unwrap();
        assert!(status.success());
        let why = foreign_include(d).unwrap();
        assert!(why.contains("not a regular file"), "a pipe is refused without waiting on it: {why}");
        std::fs::remove_file(d.join("conf.d/b.conf")).unwrap();
        let odd = std::ffi::OsStr::from_bytes(b"\xff.conf");
        std::fs::write(d.join("conf.d").join(odd), "include '/etc/hostname'\n").unwrap();
        assert!(foreign_include(d).unwrap().contains("not UTF-8"), "a name the check cannot read is refused");
        std::fs::remove_file(d.join("conf.d").join(odd)).unwrap();

        std::fs::write(d.join("postgresql.auto.conf"), "include = '/etc/tresor/agent.toml'\n").unwrap();
        let why = foreign_include(d).unwrap();
        assert!(why.starts_with("postgresql.auto.conf line 1"), "{why}");

        // A directory include of the copy itself reads its *.conf files (here: the loop below).
        std::fs::write(d.join("postgresql.auto.conf"), "include_dir '.'\n").unwrap();
        assert!(foreign_include(d).unwrap().contains("nest deeper"), "{:?}", foreign_include(d));

        std::fs::write(d.join("postgresql.auto.conf"), "include 'postgresql.auto.conf'\n").unwrap();
        assert!(foreign_include(d).unwrap().contains("nest deeper"), "a loop ends");
    }

    #[test]
    fn a_missing_configuration_is_written_but_never_through_a_link() {
        let copy = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("planted");
        std::os::unix::fs::symlink(&target, copy.path().join("postgresql.conf")).unwrap();
        default_conf(copy.path(), rustix::process::geteuid().as_raw()).unwrap();
        assert!(!target.exists(), "a dangling link at the name is left, not written through");
        std::fs::remove_file(copy.path().join("postgresql.conf")).unwrap();
        default_conf(copy.path(), rustix::process::geteuid().as_raw()).unwrap();
        let text = std::fs::read_to_string(copy.path().join("postgresql.conf")).unwrap();
        assert!(text.starts_with("# written by tresor verify"));
    }
}
