//! The files source: walk paths into nodes and store file contents through a chunk sink.
//!
//! The walk runs on a blocking thread; file contents are read by [`READERS`] threads that pull
//! jobs from a shared queue. A file unchanged since the parent snapshot (same size, mtime, ctime
//! and inode, and all its chunks still indexed) is not read at all.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tresor_vault::backup::ChunkSink;
use tresor_vault::snapshot::{Extent, ModelLayout, Node, NodeKind, Summary};

use super::meta;

/// A file as read: its extents, whole-file BLAKE3 hash, the size they cover and, for model
/// weight files, the tensor layout.
type ReadFile = (Vec<Extent>, [u8; 32], u64, Option<ModelLayout>);
/// A read file, or the error that stopped it.
type ReadOutcome = std::io::Result<ReadFile>;

/// Threads reading file contents.
pub const READERS: usize = 2;

/// A file that could not be read.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceError {
    /// Path.
    pub path: String,
    /// Why.
    pub error: String,
}

/// What the walk produced.
pub struct WalkResult {
    /// Nodes in tree order.
    pub nodes: Vec<Node>,
    /// Totals (content counters are filled by the session).
    pub summary: Summary,
    /// Unreadable entries, reported and skipped.
    pub errors: Vec<SourceError>,
}

fn rel_bytes(p: &Path) -> Vec<u8> {
    let b = p.as_os_str().as_bytes();
    b.strip_prefix(b"/").unwrap_or(b).to_vec()
}

/// Walk `roots` and store every changed file through `sink`. Each root is (where it is on disk,
/// where it sits in the tree); they differ for a source captured into a staging copy.
pub fn walk_and_store(
    roots: &[(PathBuf, PathBuf)],
    parent: Option<&HashMap<Vec<u8>, Node>>,
    sink: &ChunkSink,
) -> std::io::Result<WalkResult> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut errors = Vec::new();
    let mut seen_paths = std::collections::HashSet::new();
    let mut hardlinks: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut file_jobs: Vec<(usize, PathBuf)> = Vec::new();

    for (root, tree_root) in roots {
        let tree_path = |p: &Path| match p.strip_prefix(root) {
            Ok(rest) if rest.as_os_str().is_empty() => tree_root.clone(),
            Ok(rest) => tree_root.join(rest),
            Err(_) => p.to_path_buf(),
        };
        // Ancestors first, so a restore recreates them with their metadata.
        let mut ancestors: Vec<&Path> = tree_root.ancestors().skip(1).filter(|a| a.as_os_str() != "/").collect();
        ancestors.reverse();
        for a in ancestors {
            let rel = rel_bytes(a);
            if seen_paths.insert(rel.clone()) {
                // A source grafted at a path that does not exist here (a Qdrant snapshot) gets plain
                // directories above it.
                match std::fs::symlink_metadata(a) {
                    Ok(md) => nodes.push(meta::node_from(rel, &md, NodeKind::Dir)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => nodes.push(meta::plain_dir(rel)),
                    Err(e) => return Err(e),
                }
            }
        }
        let mut stack = vec![root.clone()];
        while let Some(path) = stack.pop() {
            let rel = rel_bytes(&tree_path(&path));
            if !seen_paths.insert(rel.clone()) {
                continue;
            }
            let md = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    errors.push(SourceError { path: path.display().to_string(), error: e.to_string() });
                    continue;
                }
            };
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                NodeKind::Dir
            } else if ft.is_file() {
                NodeKind::File
            } else if ft.is_symlink() {
                NodeKind::Symlink
            } else if ft.is_fifo() {
                NodeKind::Fifo
            } else {
                errors.push(SourceError {
                    path: path.display().to_string(),
                    error: "sockets and device files are not backed up".into(),
                });
                continue;
            };
            let mut node = meta::node_from(rel, &md, kind);
            match meta::read_xattrs(&path) {
                Ok(x) => node.xattrs = x,
                Err(e) => {
                    errors.push(SourceError {
                        path: path.display().to_string(),
                        error: format!("extended attributes: {e}"),
                    });
                    continue;
                }
            }
            match kind {
                NodeKind::Dir => {
                    let mut children: Vec<PathBuf> = match std::fs::read_dir(&path) {
                        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                        Err(e) => {
                            errors.push(SourceError { path: path.display().to_string(), error: e.to_string() });
                            continue;
                        }
                    };
                    children.sort_by(|a, b| b.as_os_str().as_bytes().cmp(a.as_os_str().as_bytes()));
                    stack.extend(children);
                }
                NodeKind::Symlink => match std::fs::read_link(&path) {
                    Ok(t) => node.target = Some(t.as_os_str().as_bytes().to_vec()),
                    Err(e) => {
                        errors.push(SourceError { path: path.display().to_string(), error: e.to_string() });
                        continue;
                    }
                },
                NodeKind::File => {
                    if md.nlink() > 1 {
                        let key = (md.dev(), md.ino());
                        if let Some(first) = hardlinks.get(&key) {
                            node.kind = NodeKind::Hardlink;
                            node.target = Some(first.clone());
                            node.size = 0;
                            nodes.push(node);
                            continue;
                        }
                        hardlinks.insert(key, node.path.clone());
                    }
                    let unchanged = parent.and_then(|p| p.get(&node.path)).filter(|old| {
                        old.kind == NodeKind::File
                            && old.size == node.size
                            && old.mtime_ns == node.mtime_ns
                            && old.ctime_ns == node.ctime_ns
                            && old.inode == node.inode
                    });
                    let reusable = match unchanged {
                        Some(old) => {
                            sink.reuse(&old.chunks().copied().collect::<Vec<_>>()).map_err(std::io::Error::other)?
                        }
                        None => false,
                    };
                    if let (true, Some(old)) = (reusable, unchanged) {
                        node.extents = old.extents.clone();
                        node.hash = old.hash.clone();
                        node.model = old.model.clone();
                    } else {
                        file_jobs.push((nodes.len(), path.clone()));
                    }
                }
                NodeKind::Hardlink | NodeKind::Fifo => {}
            }
            nodes.push(node);
        }
    }

    // Read changed files in parallel.
    let queue = Mutex::new(file_jobs.into_iter());
    let results: Mutex<Vec<(usize, ReadOutcome)>> = Mutex::new(Vec::new());
    let fatal: Mutex<Option<std::io::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..READERS {
            scope.spawn(|| {
                loop {
                    let job = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                    let Some((i, path)) = job else { break };
                    match store_file(&path, sink) {
                        Ok(r) => results.lock().unwrap_or_else(|p| p.into_inner()).push((i, Ok(r))),
                        Err(FileError::Source(e)) => {
                            results.lock().unwrap_or_else(|p| p.into_inner()).push((i, Err(e)))
                        }
                        Err(FileError::Pipeline(e)) => {
                            fatal.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = fatal.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut drop_nodes = std::collections::HashSet::new();
    for (i, r) in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
        match r {
            Ok((extents, hash, size, model)) => {
                nodes[i].model = model;
                // The size the extents and hash cover: a file that grew since the walk's lstat is
                // recorded as read, so size, extents and hash always agree.
                nodes[i].extents = extents;
                nodes[i].hash = Some(hash.to_vec());
                nodes[i].size = size;
            }
            Err(e) => {
                errors.push(SourceError { path: nodes[i].display_path(), error: e.to_string() });
                drop_nodes.insert(i);
            }
        }
    }
    // A hardlink whose first path could not be read has nothing to link to: report it as well.
    let dropped: std::collections::HashSet<Vec<u8>> = drop_nodes.iter().map(|i| nodes[*i].path.clone()).collect();
    for (i, n) in nodes.iter().enumerate() {
        if n.kind == NodeKind::Hardlink && n.target.as_ref().is_some_and(|t| dropped.contains(t)) {
            errors.push(SourceError {
                path: n.display_path(),
                error: "hard link to a file that could not be read".into(),
            });
            drop_nodes.insert(i);
        }
    }
    let nodes: Vec<Node> =
        nodes.into_iter().enumerate().filter(|(i, _)| !drop_nodes.contains(i)).map(|(_, n)| n).collect();
    let mut summary = Summary::default();
    for n in &nodes {
        match n.kind {
            NodeKind::File => {
                summary.files += 1;
                summary.bytes += n.size;
            }
            NodeKind::Dir => summary.dirs += 1,
            _ => summary.others += 1,
        }
    }
    summary.errors = errors.len() as u64;
    Ok(WalkResult { nodes, summary, errors })
}

enum FileError {
    /// The file could not be read: reported, the backup goes on.
    Source(std::io::Error),
    /// The pipeline failed: the backup stops.
    Pipeline(std::io::Error),
}

/// Keeps the source's own read error apart from pipeline failures, and hashes what it reads when
/// given a hasher.
struct HashingReader<'a, R> {
    inner: R,
    hasher: Option<&'a mut blake3::Hasher>,
    error: &'a mut Option<std::io::Error>,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                if let Some(h) = self.hasher.as_mut() {
                    h.update(&buf[..n]);
                }
                Ok(n)
            }
            Err(e) => {
                // Remember the source's own error so it is not mistaken for a pipeline failure.
                *self.error = Some(std::io::Error::new(e.kind(), e.to_string()));
                Err(e)
            }
        }
    }
}

fn hash_zeros(h: &mut blake3::Hasher, mut n: u64) {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// Data regions of a file: one region for dense files, SEEK_DATA/SEEK_HOLE for sparse ones.
fn data_regions(f: &mut File, size: u64, blocks: u64) -> std::io::Result<Vec<(u64, u64)>> {
    if blocks * 512 >= size || size == 0 {
        return Ok(vec![(0, size)]);
    }
    let mut regions = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(&*f, rustix::fs::SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) => return Ok(vec![(0, size)]),
            Err(e) => return Err(e.into()),
        };
        let end = rustix::fs::seek(&*f, rustix::fs::SeekFrom::Hole(start)).map_err(std::io::Error::from)?.min(size);
        if end > start {
            regions.push((start, end - start));
        }
        pos = end;
    }
    Ok(regions)
}

fn store_file(path: &Path, sink: &ChunkSink) -> Result<ReadFile, FileError> {
    let mut f = File::open(path).map_err(FileError::Source)?;
    let md = f.metadata().map_err(FileError::Source)?;
    let size = md.len();
    match tresor_sources::model::detect(&mut f, size) {
        Ok(Some(layout)) => return store_model(f, &layout, sink),
        Ok(None) => {}
        // A damaged model file is still a file: stored as it is, and said (a `model:` source
        // checked it before the walk and refused it).
        Err(tresor_sources::model::ModelError::Io(e)) => return Err(FileError::Source(e)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "looks like a model file but does not parse; stored as an ordinary file")
        }
    }
    let regions = data_regions(&mut f, size, md.blocks()).map_err(FileError::Source)?;
    let mut hasher = blake3::Hasher::new();
    let mut extents = Vec::with_capacity(regions.len());
    let mut pos = 0u64;
    for (start, len) in regions {
        hash_zeros(&mut hasher, start - pos);
        f.seek(SeekFrom::Start(start)).map_err(FileError::Source)?;
        let mut src_err = None;
        let reader = HashingReader { inner: (&mut f).take(len), hasher: Some(&mut hasher), error: &mut src_err };
        let stored = sink.store_stream(reader);
        if let Some(e) = src_err {
            return Err(FileError::Source(e));
        }
        // The vault's error rides inside, typed, so the exit code still sees what it was.
        let stored = stored.map_err(|e| FileError::Pipeline(std::io::Error::other(e)))?;
        if stored.len != len {
            return Err(FileError::Source(std::io::Error::other(format!(
                "file changed while read: expected {len} bytes at {start}, got {}",
                stored.len
            ))));
        }
        extents.push(Extent { offset: start, chunks: stored.chunks });
        pos = start + len;
    }
    hash_zeros(&mut hasher, size.saturating_sub(pos));
    Ok((extents, *hasher.finalize().as_bytes(), size, None))
}

/// A model file: cut at tensor boundaries, each tensor hashed on the way through.
fn store_model(mut f: File, layout: &tresor_sources::model::Layout, sink: &ChunkSink) -> Result<ReadFile, FileError> {
    f.seek(SeekFrom::Start(0)).map_err(FileError::Source)?;
    let mut src_err = None;
    // The session hashes the whole stream itself: the reader only keeps the file's own errors.
    let reader =
        HashingReader { inner: std::io::BufReader::with_capacity(1 << 20, f), hasher: None, error: &mut src_err };
    let mut tensors = tresor_sources::model::TensorHasher::new(reader, layout);
    let stored = sink.store_spans(&mut tensors, &layout.spans());
    let hashes = tensors.finish();
    if let Some(e) = src_err {
        return Err(FileError::Source(e));
    }
    let stored = stored.map_err(|e| match e {
        tresor_vault::Error::Io { .. } => FileError::Source(std::io::Error::other(e.to_string())),
        e => FileError::Pipeline(std::io::Error::other(e)),
    })?;
    let extents = vec![Extent { offset: 0, chunks: stored.chunks }];
    Ok((extents, stored.hash, stored.len, Some(layout.record(hashes))))
}
