//! A vault in a local directory (SAN/NAS mounts included).
//!
//! Writes go to `tmp/`, are fsynced, then linked into place with `link()`, which fails if the name
//! exists: create-once is enforced by the file system, and a reader never sees a partial object.
//! The directory is fsynced after every link. An fsync error is fatal and never retried
//! (on Linux a retried fsync can succeed without the data being durable).

use std::fs::{self, File};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, BackendError, Created, ObjectInfo};
use crate::failpoint;

/// Directory for partial writes; never listed as objects.
const TMP_DIR: &str = "tmp";

/// Local directory backend.
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    /// A backend rooted at `root` (not touched until used).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
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
        ensure_dir(&dir, TMP_DIR)?;
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

    fn write_tmp(&self, key: &str, bytes: &[u8]) -> Result<PathBuf, BackendError> {
        let (tmp, mut f) = self.tmp_file()?;
        let res = f.write_all(bytes).and_then(|()| f.sync_all());
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(BackendError::from_io(key, &e));
        }
        failpoint::hit("local-before-link");
        Ok(tmp)
    }

    fn create_blocking(&self, key: &str, bytes: &[u8]) -> Result<Created, BackendError> {
        let dest = self.path(key)?;
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        ensure_dir(&parent, key)?;
        let tmp = self.write_tmp(key, bytes)?;
        let linked = fs::hard_link(&tmp, &dest);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                fsync_dir(&parent, key)?;
                Ok(Created::New)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Created::Existed),
            Err(e) => Err(BackendError::from_io(key, &e)),
        }
    }

    fn overwrite_blocking(&self, key: &str, bytes: &[u8]) -> Result<(), BackendError> {
        let dest = self.path(key)?;
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        ensure_dir(&parent, key)?;
        let tmp = self.write_tmp(key, bytes)?;
        if let Err(e) = fs::rename(&tmp, &dest) {
            let _ = fs::remove_file(&tmp);
            return Err(BackendError::from_io(key, &e));
        }
        fsync_dir(&parent, key)
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

fn ensure_dir(dir: &Path, key: &str) -> Result<(), BackendError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| BackendError::from_io(key, &e))?;
    if let Some(parent) = dir.parent() {
        fsync_dir(parent, key)?;
    }
    Ok(())
}

fn fsync_dir(dir: &Path, key: &str) -> Result<(), BackendError> {
    let f = File::open(dir).map_err(|e| BackendError::from_io(key, &e))?;
    f.sync_all()
        .map_err(|e| BackendError::Other { key: key.into(), detail: format!("fsync of directory failed (fatal): {e}") })
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
            for dir in ["", "data", "index", "snapshots"] {
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
        let me = Self::new(self.root.clone());
        let key = key.to_string();
        blocking(move || me.create_blocking(&key, &bytes)).await
    }

    async fn overwrite(&self, key: &str, bytes: Bytes) -> Result<(), BackendError> {
        let me = Self::new(self.root.clone());
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
        let me = Self::new(self.root.clone());
        let prefix = prefix.to_string();
        blocking(move || me.list_blocking(&prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let path = self.path(key)?;
        let key = key.to_string();
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => fsync_dir(path.parent().unwrap_or(Path::new("/")), &key),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::from_io(&key, &e)),
        })
        .await
    }
}
