//! Directory handles below which every path is resolved without following a link.
//!
//! A restore runs as root on hosts with other users, writing trees that any key holder of the
//! vault can shape. So no file-system call of a restore takes a path that the kernel resolves
//! through a link: directories are reached with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! (or, where that call is refused, one `O_NOFOLLOW | O_DIRECTORY` component at a time), new
//! nodes are made under fresh unpredictable names (`O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600)
//! and renamed over whatever stood at their place, and metadata goes through a handle of the
//! node itself ([`super::apply`]).

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Stat};
use rustix::io::Errno;

/// Prefix of every fresh name; stale ones (a restore killed midway) are removed on the next run.
const FRESH_PREFIX: &str = ".tresor-tmp-";

/// Set once `openat2` has been refused (old kernel, seccomp): the component walk is used after.
static OPENAT2_REFUSED: AtomicBool = AtomicBool::new(false);

/// A directory opened without following a link; paths below it never leave it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// Resolve with the component walk even where `openat2` works (tests of the fallback).
    walk_only: bool,
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name holds a NUL byte"))
}

/// A single path component a restore may create: not empty, `.`, `..`, and no `/` or NUL.
pub fn is_plain_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// Why a path could not be opened, in words that name the danger.
fn explain(e: Errno, rel: &[u8], what: &str) -> io::Error {
    let shown = String::from_utf8_lossy(rel);
    let msg = match e {
        Errno::LOOP => format!("{what} {shown}: a symbolic link stands in the way; restores never follow one"),
        Errno::XDEV => format!("{what} {shown}: the path would leave the restore root"),
        Errno::NOTDIR => format!("{what} {shown}: something other than a directory stands in the way"),
        _ => format!("{what} {shown}: {}", io::Error::from(e)),
    };
    io::Error::new(io::Error::from(e).kind(), msg)
}

impl Dir {
    /// Open `path` as the root of a restore. Links in the path itself are the caller's choice
    /// (an operator's argument or the host's `restore_roots`) and are followed, but the directory
    /// named last must be a real directory.
    pub fn open_root(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| explain(e, path.as_os_str().as_bytes(), "cannot open"))?;
        Ok(Dir { fd, walk_only: false })
    }

    /// Open a configured directory (a restore root of agent.toml), following links in its path.
    pub fn open_configured(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| explain(e, path.as_os_str().as_bytes(), "cannot open"))?;
        Ok(Dir { fd, walk_only: false })
    }

    /// This handle, resolving only with the component walk (for tests of the fallback).
    pub fn walking(self) -> Dir {
        Dir { walk_only: true, ..self }
    }

    /// Open `rel` (components separated by `/`, none empty, `.` or `..`) below this directory
    /// with `flags`, following no link on the way or at the end.
    pub fn open_at(&self, rel: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
        if rel.is_empty() || !rel.split(|b| *b == b'/').all(is_plain_name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("path {:?} is not plain relative components", String::from_utf8_lossy(rel)),
            ));
        }
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let path = cstr(rel)?;
        if !self.walk_only && !OPENAT2_REFUSED.load(Ordering::Relaxed) {
            let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.fd, &path, flags, Mode::empty(), resolve) {
                Ok(fd) => return Ok(fd),
                // Refused by an old kernel or a seccomp filter: walk instead, from now on.
                Err(Errno::NOSYS | Errno::PERM) => OPENAT2_REFUSED.store(true, Ordering::Relaxed),
                // A rename raced the lookup (the kernel will not vouch for "beneath"): walk.
                Err(Errno::AGAIN) => {}
                Err(e) => return Err(explain(e, rel, "cannot open")),
            }
        }
        self.walk(rel, flags)
    }

    /// The fallback: one `O_NOFOLLOW | O_DIRECTORY` component at a time.
    fn walk(&self, rel: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
        let mut parts = rel.split(|b| *b == b'/').peekable();
        let mut here: Option<OwnedFd> = None;
        while let Some(part) = parts.next() {
            let at = here.as_ref().map_or(self.fd.as_fd(), |f| f.as_fd());
            let name = cstr(part)?;
            let last = parts.peek().is_none();
            let f = if last { flags } else { OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC };
            here = Some(rustix::fs::openat(at, &name, f, Mode::empty()).map_err(|e| explain(e, rel, "cannot open"))?);
        }
        here.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty path"))
    }

    /// The directory `rel` below this one (this one itself when `rel` is empty).
    pub fn dir(&self, rel: &[u8]) -> io::Result<Dir> {
        if rel.is_empty() {
            return Ok(Dir { fd: self.fd.try_clone()?, walk_only: self.walk_only });
        }
        let fd = self.open_at(rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
        Ok(Dir { fd, walk_only: self.walk_only })
    }

    /// `lstat` of entry `name` of this directory.
    pub fn stat(&self, name: &[u8]) -> io::Result<Stat> {
        Ok(rustix::fs::statat(&self.fd, cstr(name)?.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?)
    }

    /// The directory `name` in this one, made with `mode` if missing. Only a real directory is
    /// reused; anything else standing there (a file, a planted link) is replaced when `replace`
    /// is set and refused otherwise.
    pub fn ensure_dir(&self, name: &[u8], replace: bool, mode: u32) -> io::Result<Dir> {
        let c = cstr(name)?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        for _ in 0..4 {
            match rustix::fs::openat(&self.fd, &c, flags, Mode::empty()) {
                Ok(fd) => return Ok(Dir { fd, walk_only: self.walk_only }),
                Err(Errno::NOENT) => match rustix::fs::mkdirat(&self.fd, &c, Mode::from_raw_mode(mode)) {
                    Ok(()) | Err(Errno::EXIST) => continue,
                    Err(e) => return Err(explain(e, name, "cannot make directory")),
                },
                Err(Errno::NOTDIR | Errno::LOOP) if replace => self.replace_with_dir(&c, name)?,
                Err(e) => return Err(explain(e, name, "cannot open directory")),
            }
        }
        Err(io::Error::other(format!(
            "cannot make directory {}: its entry keeps changing under the restore",
            String::from_utf8_lossy(name)
        )))
    }

    /// Swap a fresh empty directory in for the non-directory at `name`, then remove that entry
    /// (the link itself, never what it points to).
    fn replace_with_dir(&self, c: &CStr, name: &[u8]) -> io::Result<()> {
        let fresh = fresh_name();
        rustix::fs::mkdirat(&self.fd, &fresh, Mode::from_raw_mode(0o700))?;
        match rustix::fs::renameat_with(&self.fd, &fresh, &self.fd, c, RenameFlags::EXCHANGE) {
            Ok(()) => {
                rustix::fs::unlinkat(&self.fd, &fresh, AtFlags::empty())?;
                Ok(())
            }
            // No atomic exchange on this file system: remove, then make.
            Err(Errno::INVAL) => {
                rustix::fs::unlinkat(&self.fd, &fresh, AtFlags::REMOVEDIR)?;
                rustix::fs::unlinkat(&self.fd, c, AtFlags::empty()).map_err(|e| explain(e, name, "cannot replace"))?;
                Ok(())
            }
            Err(e) => {
                let _ = rustix::fs::unlinkat(&self.fd, &fresh, AtFlags::REMOVEDIR);
                Err(explain(e, name, "cannot replace"))
            }
        }
    }

    /// A new regular file under a fresh name, opened read-write, mode 0600.
    pub fn create_fresh_file(&self) -> io::Result<(File, CString)> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        self.fresh(|name| rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(0o600)).map(File::from))
    }

    /// A new named pipe under a fresh name (mode 0600), opened without blocking so that its
    /// metadata goes through the handle.
    pub fn create_fresh_fifo(&self) -> io::Result<(File, CString)> {
        let (_, name) =
            self.fresh(|n| rustix::fs::mknodat(&self.fd, n, FileType::Fifo, Mode::from_raw_mode(0o600), 0))?;
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let f = rustix::fs::openat(&self.fd, &name, flags, Mode::empty()).map(File::from);
        match f {
            Ok(f) if FileType::from_raw_mode(rustix::fs::fstat(&f)?.st_mode) == FileType::Fifo => Ok((f, name)),
            Ok(_) => Err(io::Error::other("the new named pipe was replaced while it was being made")),
            Err(e) => {
                let _ = rustix::fs::unlinkat(&self.fd, &name, AtFlags::empty());
                Err(e.into())
            }
        }
    }

    /// A new symbolic link holding `target` under a fresh name.
    pub fn create_fresh_symlink(&self, target: &[u8]) -> io::Result<CString> {
        let t = cstr(target)?;
        Ok(self.fresh(|n| rustix::fs::symlinkat(&t, &self.fd, n))?.1)
    }

    /// A new name for the regular file `name` of directory `from`, under a fresh name here.
    /// Fails unless what was linked is the file `expect` (device, inode) names.
    pub fn link_fresh(&self, from: &Dir, name: &[u8], expect: (u64, u64)) -> io::Result<CString> {
        let src = cstr(name)?;
        let (_, fresh) = self.fresh(|n| rustix::fs::linkat(&from.fd, &src, &self.fd, n, AtFlags::empty()))?;
        let st = rustix::fs::statat(&self.fd, &fresh, AtFlags::SYMLINK_NOFOLLOW)?;
        if (st.st_dev, st.st_ino) != expect || FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            let _ = rustix::fs::unlinkat(&self.fd, &fresh, AtFlags::empty());
            return Err(io::Error::other("the hardlink's target changed while it was being linked"));
        }
        Ok(fresh)
    }

    fn fresh<T>(&self, mut make: impl FnMut(&CStr) -> rustix::io::Result<T>) -> io::Result<(T, CString)> {
        for _ in 0..16 {
            let name = fresh_name();
            match make(&name) {
                Ok(t) => return Ok((t, name)),
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(io::Error::other("no fresh name could be made"))
    }

    /// A private workshop in this directory: a new directory under a fresh name, mode 0700,
    /// checked to be ours. Links and pipes are made and given their metadata in it, where no one
    /// else can reach them by name, then moved out with [`Dir::place_from`].
    pub fn workshop(&self) -> io::Result<(Dir, CString)> {
        let (_, name) = self.fresh(|n| rustix::fs::mkdirat(&self.fd, n, Mode::from_raw_mode(0o700)))?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir =
            rustix::fs::openat(&self.fd, &name, flags, Mode::empty()).map(|fd| Dir { fd, walk_only: self.walk_only });
        match dir {
            Ok(d) if d.is_private()? => Ok((d, name)),
            Ok(_) => Err(io::Error::other("the workshop directory was replaced while it was being made")),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether this directory is ours alone: owned by this user, mode 0700.
    pub fn is_private(&self) -> io::Result<bool> {
        let st = rustix::fs::fstat(&self.fd)?;
        Ok(st.st_uid == rustix::process::geteuid().as_raw() && st.st_mode & 0o7777 == 0o700)
    }

    /// Remove the (empty) workshop `name` made by [`Dir::workshop`].
    pub fn remove_workshop(&self, name: &CStr) {
        let _ = rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR);
    }

    /// Move entry `from` of the directory `src` (this one, or a workshop) over `name` here;
    /// whatever non-directory stood there goes. On failure `from` is removed.
    pub fn place_from(&self, src: &Dir, from: &CStr, name: &[u8]) -> io::Result<()> {
        let c = cstr(name)?;
        rustix::fs::renameat(&src.fd, from, &self.fd, &c).map_err(|e| {
            let _ = rustix::fs::unlinkat(&src.fd, from, AtFlags::empty());
            match e {
                Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST => io::Error::other(format!(
                    "a directory stands at {}; it is left as it is",
                    String::from_utf8_lossy(name)
                )),
                e => explain(e, name, "cannot move into place"),
            }
        })
    }

    /// Device and inode of this directory.
    pub fn identity(&self) -> io::Result<(u64, u64)> {
        let st = rustix::fs::fstat(&self.fd)?;
        Ok((st.st_dev, st.st_ino))
    }

    /// Move the fresh entry `fresh` of this directory over `name`.
    pub fn place(&self, fresh: &CStr, name: &[u8]) -> io::Result<()> {
        self.place_from(self, fresh, name)
    }

    /// Remove the fresh entry `fresh` (after a failure).
    pub fn discard(&self, fresh: &CStr) {
        let _ = rustix::fs::unlinkat(&self.fd, fresh, AtFlags::empty());
    }

    /// Remove entries left under fresh names by a restore that was killed midway.
    pub fn remove_stale(&self) -> io::Result<()> {
        let stale: Vec<Vec<u8>> = self.names()?.into_iter().filter(|n| is_fresh_name(n)).collect();
        let me = rustix::process::geteuid().as_raw();
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        for name in stale {
            let Ok(name) = cstr(&name) else { continue };
            let Ok(st) = self.stat(name.as_bytes()) else { continue };
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                let _ = rustix::fs::unlinkat(&self.fd, &name, AtFlags::empty());
                continue;
            }
            // A directory under a fresh name is a workshop (or one `replace_with_dir` emptied):
            // what a killed run left in it goes with it, if it is ours.
            if st.st_uid == me
                && let Ok(fd) = rustix::fs::openat(&self.fd, &name, flags, Mode::empty())
            {
                let inner = Dir { fd, walk_only: self.walk_only };
                for n in inner.names().unwrap_or_default() {
                    let _ = rustix::fs::unlinkat(&inner.fd, n.as_slice(), AtFlags::empty());
                }
            }
            let _ = rustix::fs::unlinkat(&self.fd, &name, AtFlags::REMOVEDIR);
        }
        Ok(())
    }

    /// The entries of this directory (without `.` and `..`), read from a handle of its own.
    fn entries(&self) -> io::Result<impl Iterator<Item = io::Result<Vec<u8>>>> {
        let read = rustix::fs::Dir::read_from(&self.fd)?;
        Ok(read
            .map(|e| e.map(|e| e.file_name().to_bytes().to_vec()).map_err(io::Error::from))
            .filter(|n| n.as_ref().map_or(true, |n| n != b"." && n != b"..")))
    }

    /// Whether this directory holds no entry.
    pub fn is_empty(&self) -> io::Result<bool> {
        self.entries()?.next().transpose().map(|first| first.is_none())
    }

    /// The entries of this directory (without `.` and `..`).
    pub fn names(&self) -> io::Result<Vec<Vec<u8>>> {
        self.entries()?.collect()
    }

    /// Rename entry `from` of this directory to `to` (an absent name or an empty directory).
    pub fn rename(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        rustix::fs::renameat(&self.fd, cstr(from)?.as_c_str(), &self.fd, cstr(to)?.as_c_str())
            .map_err(|e| explain(e, to, "cannot move into place"))
    }
}

fn fresh_name() -> CString {
    let name = format!("{FRESH_PREFIX}{}", hex::encode(rand::random::<[u8; 8]>()));
    CString::new(name).unwrap_or_default()
}

/// Whether `name` is one [`fresh_name`] makes.
fn is_fresh_name(name: &[u8]) -> bool {
    name.strip_prefix(FRESH_PREFIX.as_bytes()).is_some_and(|h| h.len() == 16 && h.iter().all(u8::is_ascii_hexdigit))
}

/// Split a tree path into its parent (empty at the top) and its last name.
pub fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// The text of a path for messages.
pub fn shown(path: &[u8]) -> String {
    format!("/{}", OsStr::from_bytes(path).to_string_lossy())
}
