//! A vault in a local directory (SAN/NAS mounts included).
//!
//! Writes go to `tmp/`, are fsynced, then linked into place with `link()`, which fails if the name
//! exists: create-once is enforced by the file system, and a reader never sees a partial object.
//! The directory is fsynced after every link. An fsync error is fatal and never retried
//! (on Linux a retried fsync can succeed without the data being durable): the put fails, and an
//! object already linked is unlinked again, so nothing whose durability was not confirmed is
//! ever read back as stored (an overwritten session marker is the exception: its new content
//! stays visible, and the marker is only a hint). A file system that refuses fsync itself (`EINVAL`, `ENOTSUP`: some
//! SMB, NAS and FUSE mounts) cannot confirm anything: writes go on and the backend reports
//! durability as unverified, for `init`, `check`, `status` and drill reports to show; once an
//! fsync of that kind has succeeded here, a refusal is a failure like any other.

use std::fs::{self, File};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, BackendError, Created, ObjectInfo};
use crate::failpoint;

/// Directory for partial writes; never listed as objects.
const TMP_DIR: &str = "tmp";

/// Local directory backend.
#[derive(Clone)]
pub struct LocalBackend {
    root: PathBuf,
    /// Why durability is unverified, once an fsync was refused as unsupported.
    unverified: Arc<OnceLock<String>>,
    /// Whether a file fsync and a directory fsync have succeeded here (indexed by [`Synced`]):
    /// after that, a refusal is a failure, not a missing feature.
    confirmed: Arc<[AtomicBool; 2]>,
}

/// What an fsync makes durable.
#[derive(Clone, Copy)]
enum Synced {
    File = 0,
    Dir = 1,
}

impl Synced {
    fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Dir => "directory",
        }
    }

    /// Its failpoint: `fsync-file` or `fsync-dir`.
    fn failpoint(self) -> &'static str {
        match self {
            Self::File => "fsync-file",
            Self::Dir => "fsync-dir",
        }
    }
}

/// `fsync` refused as a call the file system does not implement, rather than failed.
fn sync_unsupported(e: &std::io::Error) -> bool {
    let unsupported = [rustix::io::Errno::INVAL, rustix::io::Errno::OPNOTSUPP, rustix::io::Errno::NOSYS];
    e.raw_os_error().is_some_and(|n| unsupported.iter().any(|u| u.raw_os_error() == n))
}

/// The failpoint of `what`, also armable for one top-level directory of the vault
/// (`fsync-file:data`), so a test can fail only pack writes.
fn injected(what: Synced, key: &str) -> Option<std::io::Error> {
    if !failpoint::any_armed() {
        return None;
    }
    let (point, top) = (what.failpoint(), key.split('/').next().unwrap_or_default());
    failpoint::io_error(point).or_else(|| failpoint::io_error(&format!("{point}:{top}")))
}

impl LocalBackend {
    /// A backend rooted at `root` (not touched until used).
    pub fn new(root: PathBuf) -> Self {
        Self { root, unverified: Arc::default(), confirmed: Arc::default() }
    }

    /// fsync `f` (the file or directory `what` holding `key`), or take the error its failpoint
    /// is armed with. Unsupported is noted, unless an fsync of that kind succeeded here before;
    /// any other error is fatal.
    fn sync(&self, f: &File, what: Synced, key: &str) -> Result<(), BackendError> {
        let confirmed = &self.confirmed[what as usize];
        let r = match injected(what, key) {
            Some(e) => Err(e),
            None => f.sync_all(),
        };
        match r {
            Ok(()) => {
                confirmed.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if sync_unsupported(&e) && !confirmed.load(Ordering::Relaxed) => {
                let why = format!("the file system at {} refuses {} fsync ({e})", self.root.display(), what.name());
                if self.unverified.set(why).is_ok() {
                    tracing::warn!(location = %self.root.display(), error = %e, "fsync unsupported: durability unverified");
                }
                Ok(())
            }
            Err(e) => {
                Err(BackendError::NotDurable { key: key.into(), detail: format!("{} fsync failed: {e}", what.name()) })
            }
        }
    }

    fn sync_dir(&self, dir: &Path, key: &str) -> Result<(), BackendError> {
        let f = File::open(dir).map_err(|e| BackendError::from_io(key, &e))?;
        self.sync(&f, Synced::Dir, key)
    }

    /// Make `dir` and its missing parents, each made durable in its parent before use. A
    /// directory whose parent's fsync failed is removed again, so no later write trusts it.
    fn ensure_dir(&self, dir: &Path, key: &str) -> Result<(), BackendError> {
        if dir.is_dir() {
            return Ok(());
        }
        let Some(parent) = dir.parent() else { return Ok(()) };
        self.ensure_dir(parent, key)?;
        match fs::create_dir(dir) {
            Ok(()) => {}
            // Another writer made it (and synced its parent, or failed and removes it).
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(BackendError::from_io(key, &e)),
        }
        if let Err(e) = self.sync_dir(parent, key) {
            let _ = fs::remove_dir(dir);
            return Err(e);
        }
        Ok(())
    }

    fn path(&self, key: &str) -> Result<PathBuf, BackendError> {
        // Keys are made by this crate, but reject anything that could leave the root.
        if key.is_empty() || key.starts_with('/') || key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(BackendError::Other { key: key.into(), detail: "invalid object key".into() });
        }
        Ok(self.root.join(key))
    }

    fn tmp_file(&self) -> Result<(PathBuf, File), BackendError> {
        let dir = self.root.join(TMP_DIR);
        self.ensure_dir(&dir, TMP_DIR)?;
        let mut name = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut name);
        let path = dir.join(format!("{}.tmp", hex::encode(name)));
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| BackendError::from_io(TMP_DIR, &e))?;
        Ok((path, f))
    }

    /// Write `bytes` to a new temp file and fsync it; removed again on failure.
    fn write_synced_tmp(&self, key: &str, bytes: &[u8]) -> Result<PathBuf, BackendError> {
        let (tmp, mut f) = self.tmp_file()?;
        let res = f
            .write_all(bytes)
            .map_err(|e| BackendError::from_io(key, &e))
            .and_then(|()| self.sync(&f, Synced::File, key));
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(tmp)
    }

    fn write_tmp(&self, key: &str, bytes: &[u8]) -> Result<PathBuf, BackendError> {
        let tmp = self.write_synced_tmp(key, bytes)?;
        failpoint::hit("local-before-link");
        Ok(tmp)
    }

    fn create_blocking(&self, key: &str, bytes: &[u8]) -> Result<Created, BackendError> {
        let dest = self.path(key)?;
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        self.ensure_dir(&parent, key)?;
        let tmp = self.write_tmp(key, bytes)?;
        let linked = fs::hard_link(&tmp, &dest);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Err(e) = self.sync_dir(&parent, key) {
                    // Its name may not survive a crash: unlink it, so no later run (an adopting
                    // backup, a reader) takes it for stored.
                    let _ = fs::remove_file(&dest);
                    return Err(e);
                }
                Ok(Created::New)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Created::Existed),
            Err(e) => Err(BackendError::from_io(key, &e)),
        }
    }

    fn overwrite_blocking(&self, key: &str, bytes: &[u8]) -> Result<(), BackendError> {
        let dest = self.path(key)?;
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        self.ensure_dir(&parent, key)?;
        let tmp = self.write_tmp(key, bytes)?;
        if let Err(e) = fs::rename(&tmp, &dest) {
            let _ = fs::remove_file(&tmp);
            return Err(BackendError::from_io(key, &e));
        }
        self.sync_dir(&parent, key)
    }

    fn probe_blocking(&self) -> Result<(), BackendError> {
        let res = self.write_synced_tmp(TMP_DIR, b"durability probe").and_then(|tmp| {
            let synced = self.sync_dir(&self.root.join(TMP_DIR), TMP_DIR);
            let _ = fs::remove_file(&tmp);
            synced
        });
        // A disk that fails the probe confirms nothing either: say so wherever durability shows.
        if let Err(BackendError::NotDurable { detail, .. }) = &res {
            let _ = self.unverified.set(format!("the durability probe at {} failed: {detail}", self.root.display()));
        }
        res
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        if !self.root.is_dir() {
            return Err(BackendError::NoSuchLocation(self.root.display().to_string()));
        }
        // List the deepest directory the prefix names, then filter by the full prefix.
        let dir_part = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let start = if dir_part.is_empty() { self.root.clone() } else { self.path(dir_part)? };
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(BackendError::from_io(&dir.display().to_string(), &e)),
            };
            for entry in rd {
                let entry = entry.map_err(|e| BackendError::from_io(&dir.display().to_string(), &e))?;
                let path = entry.path();
                let rel = path.strip_prefix(&self.root).unwrap_or(&path);
                let Some(key) = rel.to_str().map(str::to_string) else {
                    continue;
                };
                if key == TMP_DIR || key.starts_with("tmp/") {
                    continue;
                }
                let ft = entry.file_type().map_err(|e| BackendError::from_io(&key, &e))?;
                if ft.is_dir() {
                    if prefix.starts_with(&format!("{key}/")) || key.starts_with(prefix) || prefix.is_empty() {
                        stack.push(path);
                    }
                } else if ft.is_file() && key.starts_with(prefix) {
                    let size = entry.metadata().map_err(|e| BackendError::from_io(&key, &e))?.len();
                    out.push(ObjectInfo { key, size });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(BackendError::Other { key: String::new(), detail: format!("I/O task failed: {e}") }))
}

#[async_trait]
impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    fn durability_unverified(&self) -> Option<String> {
        self.unverified.get().cloned()
    }

    async fn probe_durability(&self) -> Result<(), BackendError> {
        let me = self.clone();
        blocking(move || me.probe_blocking()).await
    }

    async fn check_location(&self) -> Result<(), BackendError> {
        let root = self.root.clone();
        blocking(move || match fs::metadata(&root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(BackendError::Other { key: root.display().to_string(), detail: "is not a directory".into() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(BackendError::NoSuchLocation(root.display().to_string()))
            }
            Err(e) => Err(BackendError::from_io(&root.display().to_string(), &e)),
        })
        .await
    }

    async fn prepare_location(&self) -> Result<(), BackendError> {
        let root = self.root.clone();
        // The directories GC requires (`require_prefix`) exist from the start.
        blocking(move || {
            for dir in std::iter::once("").chain(crate::layout::REQUIRED) {
                let d = root.join(dir);
                fs::create_dir_all(&d).map_err(|e| BackendError::from_io(&d.display().to_string(), &e))?;
            }
            Ok(())
        })
        .await?;
        self.check_location().await
    }

    async fn require_prefix(&self, prefix: &str) -> Result<(), BackendError> {
        let path = self.path(prefix.trim_end_matches('/'))?;
        let prefix = prefix.to_string();
        blocking(move || match fs::metadata(&path) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(BackendError::NotFound(format!("{prefix} (not a directory)"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(BackendError::NotFound(format!("{prefix} (the directory is missing, so it would list as empty)")))
            }
            Err(e) => Err(BackendError::from_io(&prefix, &e)),
        })
        .await
    }

    async fn create(&self, key: &str, bytes: Bytes) -> Result<Created, BackendError> {
        let me = self.clone();
        let key = key.to_string();
        blocking(move || me.create_blocking(&key, &bytes)).await
    }

    async fn overwrite(&self, key: &str, bytes: Bytes) -> Result<(), BackendError> {
        let me = self.clone();
        let key = key.to_string();
        blocking(move || me.overwrite_blocking(&key, &bytes)).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        let path = self.path(key)?;
        let key = key.to_string();
        blocking(move || fs::read(&path).map(Bytes::from).map_err(|e| BackendError::from_io(&key, &e))).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        let path = self.path(key)?;
        let key = key.to_string();
        blocking(move || {
            let f = File::open(&path).map_err(|e| BackendError::from_io(&key, &e))?;
            let len = range
                .end
                .checked_sub(range.start)
                .ok_or_else(|| BackendError::Other { key: key.clone(), detail: "inverted range".into() })?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact_at(&mut buf, range.start).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    BackendError::ShortObject { key: key.clone(), range: range.clone() }
                } else {
                    BackendError::from_io(&key, &e)
                }
            })?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, BackendError> {
        let path = self.path(key)?;
        let key = key.to_string();
        blocking(move || match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackendError::from_io(&key, &e)),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let me = self.clone();
        let prefix = prefix.to_string();
        blocking(move || me.list_blocking(&prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let path = self.path(key)?;
        let me = self.clone();
        let key = key.to_string();
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => me.sync_dir(path.parent().unwrap_or(Path::new("/")), &key),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::from_io(&key, &e)),
        })
        .await
    }
}
