//! Writing a snapshot's tree below a root directory handle.
//!
//! Each file is made under a fresh name in its directory (mode 0600), written chunk by chunk as
//! the vault hands them over, given its metadata through its own handle and renamed over its
//! final name once complete: what stood there before (a file, a planted link) is replaced, never
//! written through. Links and pipes are made the same way; directories are reused only when
//! they are real directories. A re-run after an interruption skips files already in place (same
//! size and mtime) and removes what the killed run left under fresh names.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::fs::FileType;
use rustix::io::Errno;
use tresor_vault::ids::ChunkId;
use tresor_vault::restore::{ChunkTarget, ChunkWriter, RestorePlan};
use tresor_vault::snapshot::{Extent, Node, NodeKind, check_tree};

use super::apply;
use super::beneath::{Dir, shown, split};

/// Why a restore could not go on.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The tree (or the selection of it) is not one a restore may write.
    #[error("the snapshot's tree is refused: {0}")]
    Tree(String),
    /// The target cannot take this restore now (not empty, a link, another restore on it).
    #[error("{0}")]
    Target(String),
    /// `--include` named nothing in the snapshot.
    #[error("--include {0} matches nothing in the snapshot")]
    NothingIncluded(String),
    /// Not enough room at the target.
    #[error(
        "not enough free space at the restore target: the restore needs {need_mib} MiB, {free_mib} MiB are free; nothing was written"
    )]
    Space {
        /// MiB needed, with a margin.
        need_mib: u64,
        /// MiB free.
        free_mib: u64,
    },
    /// A file-system call on the target failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
    let what = what.into();
    move |source| RestoreError::Io { what, source }
}

/// Outcome of a restore.
#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreReport {
    /// Files written.
    pub files: u64,
    /// Files already in place from an earlier run.
    pub files_skipped: u64,
    /// Directories, links and other entries.
    pub others: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Reads retried after a transient failure.
    pub transient_retries: u64,
    /// Entries that could not be restored, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Files at least this large start their writeback as soon as they are complete.
const EARLY_WRITEBACK: u64 = 4 << 20;

/// Room kept free beyond the data, for directories and metadata blocks.
const SPACE_MARGIN: u64 = 16 << 20;

/// Keep nodes at or below one of `include` (absolute paths as shown by `ls`), plus their
/// ancestors. A hardlink whose first name is left out becomes a copy of that file, so the
/// selection is a tree of its own.
pub fn select(nodes: Vec<Node>, include: &[String]) -> Result<Vec<Node>, RestoreError> {
    if include.is_empty() {
        return Ok(nodes);
    }
    let wanted: Vec<Vec<u8>> =
        include.iter().map(|p| p.trim_start_matches('/').trim_end_matches('/').as_bytes().to_vec()).collect();
    if wanted.iter().any(Vec::is_empty) {
        // `--include /` is the whole snapshot.
        return Ok(nodes);
    }
    let keep = |path: &[u8]| {
        wanted.iter().any(|w| {
            path == &w[..]
                || (path.starts_with(w) && path.get(w.len()) == Some(&b'/'))
                || (w.starts_with(path) && w.get(path.len()) == Some(&b'/'))
        })
    };
    let files: HashMap<Vec<u8>, usize> =
        nodes.iter().enumerate().filter(|(_, n)| n.kind == NodeKind::File).map(|(i, n)| (n.path.clone(), i)).collect();
    // First name of each left-out file -> the selected hardlink that takes its content.
    let mut stand_ins: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut out = Vec::new();
    for n in nodes.iter().filter(|n| keep(&n.path)) {
        let mut n = n.clone();
        if n.kind == NodeKind::Hardlink
            && let Some(target) = n.target.clone()
            && !keep(&target)
        {
            if let Some(first) = stand_ins.get(&target) {
                n.target = Some(first.clone());
            } else if let Some(&i) = files.get(&target) {
                stand_ins.insert(target, n.path.clone());
                n = Node { path: n.path, ..nodes[i].clone() };
            }
        }
        out.push(n);
    }
    if out.is_empty() {
        return Err(RestoreError::NothingIncluded(include.join(", ")));
    }
    Ok(out)
}

/// The state of one file being written.
#[derive(Default)]
struct Open {
    file: Option<Arc<File>>,
    fresh: Option<CString>,
}

/// One file to write.
struct Slot {
    node: usize,
    open: Mutex<Open>,
    /// Chunk writes still to come; the write that brings it to zero finishes the file.
    pending: AtomicU64,
    failure: Mutex<Option<String>>,
    written: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Slot {
    /// Record the first failure of this file; it is then not moved into place.
    fn fail(&self, why: String) {
        lock(&self.failure).get_or_insert(why);
    }
}

/// Writes a tree below `root`: directories first ([`TreeWriter::new`]), file data as the vault
/// hands it over ([`ChunkWriter`]), then links, pipes and directory metadata
/// ([`TreeWriter::complete`]).
pub struct TreeWriter {
    nodes: Vec<Node>,
    root: Dir,
    slots: Vec<Slot>,
    skipped: u64,
    /// Files of the tree in place (written now or found from an earlier run), by node number;
    /// only these may be hardlinked.
    in_place: Mutex<Vec<bool>>,
}

impl TreeWriter {
    /// Check the tree, make its directories below `root` and find the files left to write.
    pub fn new(nodes: Vec<Node>, root: Dir) -> Result<Self, RestoreError> {
        check_tree(&nodes).map_err(RestoreError::Tree)?;
        root.remove_stale().map_err(io("cannot read the restore target"))?;
        for n in nodes.iter().filter(|n| n.kind == NodeKind::Dir) {
            let (parent, name) = split(&n.path);
            let what = || format!("cannot make directory {}", shown(&n.path));
            let dir = root.dir(parent).and_then(|p| p.ensure_dir(name, true, 0o700)).map_err(io(what()))?;
            dir.remove_stale().map_err(io(what()))?;
        }
        let mut in_place = vec![false; nodes.len()];
        let mut slots = Vec::new();
        let mut skipped = 0;
        let mut last: Option<(&[u8], Dir)> = None;
        let owners = apply::can_chown();
        for (i, n) in nodes.iter().enumerate().filter(|(_, n)| n.kind == NodeKind::File) {
            let (parent, name) = split(&n.path);
            if last.as_ref().is_none_or(|(p, _)| *p != parent) {
                last = root.dir(parent).ok().map(|d| (parent, d));
            }
            let here = last.as_ref().and_then(|(_, d)| d.stat(name).ok());
            // In place: a single-linked regular file with the node's size, mtime, mode and (when
            // owners are restored) owner. A file changed in any of these is written again.
            if here.is_some_and(|st| {
                FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                    && st.st_nlink == 1
                    && st.st_size as u64 == n.size
                    && st.st_mtime.saturating_mul(1_000_000_000).saturating_add(st.st_mtime_nsec as i64) == n.mtime_ns
                    && st.st_mode & 0o7777 == n.mode & 0o7777
                    && (!owners || (st.st_uid, st.st_gid) == (n.uid, n.gid))
            }) {
                skipped += 1;
                in_place[i] = true;
                continue;
            }
            slots.push(Slot {
                node: i,
                open: Mutex::default(),
                pending: AtomicU64::new(0),
                failure: Mutex::new(None),
                written: AtomicU64::new(0),
            });
        }
        Ok(Self { nodes, root, slots, skipped, in_place: Mutex::new(in_place) })
    }

    /// The extents of the files left to write, numbered as [`ChunkTarget::file`] counts them.
    pub fn files(&self) -> Vec<(usize, &[Extent])> {
        self.slots.iter().enumerate().map(|(s, slot)| (s, self.nodes[slot.node].extents.as_slice())).collect()
    }

    /// Take the read plan: how many chunks each file waits for, which cannot be had, and
    /// whether the target has room for them.
    pub fn expect(&self, plan: &RestorePlan) -> Result<(), RestoreError> {
        for f in &plan.fetches {
            for (_, targets) in &f.blobs {
                for t in targets {
                    self.slots[t.file].pending.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for (slot, chunk) in &plan.missing {
            self.slots[*slot].fail(format!("chunk {chunk}: not in the index"));
        }
        let st = rustix::fs::fstatvfs(&self.root).map_err(|e| RestoreError::Io {
            what: "cannot read the free space of the restore target".into(),
            source: e.into(),
        })?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if plan.bytes + SPACE_MARGIN > free {
            return Err(RestoreError::Space {
                need_mib: (plan.bytes + SPACE_MARGIN).div_ceil(1 << 20),
                free_mib: free >> 20,
            });
        }
        Ok(())
    }

    fn file(&self, slot: &Slot) -> std::io::Result<Arc<File>> {
        let mut open = lock(&slot.open);
        if let Some(f) = &open.file {
            return Ok(f.clone());
        }
        let node = &self.nodes[slot.node];
        let (parent, _) = split(&node.path);
        let (file, fresh) = self.root.dir(parent)?.create_fresh_file()?;
        // Full size at once: holes between written chunks stay sparse.
        file.set_len(node.size)?;
        let file = Arc::new(file);
        open.file = Some(file.clone());
        open.fresh = Some(fresh);
        Ok(file)
    }

    /// Metadata through the handle, then the rename over the final name. Called once every
    /// chunk is written.
    fn finish(&self, slot: &Slot) -> std::io::Result<()> {
        let mut open = lock(&slot.open);
        let node = &self.nodes[slot.node];
        let (parent, name) = split(&node.path);
        let (Some(file), Some(fresh)) = (open.file.take(), open.fresh.take()) else {
            return Err(std::io::Error::other("file was never opened"));
        };
        let dir = self.root.dir(parent)?;
        if let Err(e) = apply::to_handle(&*file, node) {
            dir.discard(&fresh);
            return Err(e);
        }
        if node.size >= EARLY_WRITEBACK {
            // Start writing a large file back now rather than all at the final syncfs. Only a
            // hint: the syncfs at the end is what makes the restore durable.
            let _ = rustix::fs::fadvise(&*file, 0, None, rustix::fs::Advice::DontNeed);
        }
        drop(file);
        dir.place(&fresh, name)?;
        lock(&self.in_place)[slot.node] = true;
        Ok(())
    }

    /// One chunk of `slot` is done: the last one finishes the file, or, for a failed file,
    /// closes it and removes its fresh entry at once (a damaged vault fails many files; none
    /// keeps a descriptor open).
    fn settle(&self, slot: &Slot) {
        if slot.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        if lock(&slot.failure).is_some() {
            self.discard(slot);
        } else if let Err(e) = self.finish(slot) {
            // This file alone fails (a directory stands at its name, say); the others go on.
            slot.fail(e.to_string());
            self.discard(slot);
        }
    }

    /// A failed file's fresh entry goes.
    fn discard(&self, slot: &Slot) {
        let mut open = lock(&slot.open);
        open.file.take();
        if let Some(fresh) = open.fresh.take()
            && let Ok(dir) = self.root.dir(split(&self.nodes[slot.node].path).0)
        {
            dir.discard(&fresh);
        }
    }

    /// Files without chunks, failed files, links, pipes, directory metadata, then one syncfs.
    pub fn complete(&self) -> Result<RestoreReport, RestoreError> {
        let mut report = RestoreReport { files_skipped: self.skipped, ..Default::default() };
        for slot in &self.slots {
            let n = &self.nodes[slot.node];
            if let Some(why) = lock(&slot.failure).take() {
                self.discard(slot);
                report.failed.push((n.display_path(), why));
                continue;
            }
            let placed = lock(&self.in_place)[slot.node];
            if !placed {
                // Empty or all-hole files have no chunk to write.
                if let Err(e) = self.file(slot).and_then(|_| self.finish(slot)) {
                    self.discard(slot);
                    report.failed.push((n.display_path(), e.to_string()));
                    continue;
                }
            }
            report.files += 1;
            report.bytes += slot.written.load(Ordering::Relaxed);
        }
        let files: HashMap<&[u8], usize> = if self.nodes.iter().any(|n| n.kind == NodeKind::Hardlink) {
            self.nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.kind == NodeKind::File)
                .map(|(i, n)| (&n.path[..], i))
                .collect()
        } else {
            HashMap::new()
        };
        for (i, n) in self.nodes.iter().enumerate() {
            let r = match n.kind {
                NodeKind::Symlink => self.symlink(n),
                NodeKind::Hardlink => self.hardlink(n, &files),
                NodeKind::Fifo => self.fifo(n),
                NodeKind::File | NodeKind::Dir => continue,
            };
            match r {
                Ok(()) => report.others += 1,
                Err(e) => report.failed.push((self.nodes[i].display_path(), e.to_string())),
            }
        }
        // Directory metadata last, deepest first, so restored children do not change their mtime.
        let mut dirs: Vec<&Node> = self.nodes.iter().filter(|n| n.kind == NodeKind::Dir).collect();
        dirs.sort_by_key(|n| std::cmp::Reverse(n.path.iter().filter(|b| **b == b'/').count()));
        for n in dirs {
            // One directory that cannot take its metadata fails alone; the rest still get theirs.
            match self.root.dir(&n.path).and_then(|dir| apply::to_handle(&dir, n)) {
                Ok(()) => report.others += 1,
                Err(e) => report.failed.push((n.display_path(), format!("cannot set its metadata: {e}"))),
            }
        }
        // One syncfs makes everything durable at once, far cheaper than an fsync per file.
        rustix::fs::syncfs(&self.root).map_err(|e| RestoreError::Io {
            what: "syncing the restored files to disk failed".into(),
            source: e.into(),
        })?;
        Ok(report)
    }

    /// Make an entry in a private workshop of its directory, then move it over its name: no one
    /// else can reach it by name while its metadata is set.
    fn in_workshop(&self, n: &Node, make: impl FnOnce(&Dir) -> std::io::Result<CString>) -> std::io::Result<()> {
        let (parent, name) = split(&n.path);
        let dir = self.root.dir(parent)?;
        let (shop, shop_name) = dir.workshop()?;
        let placed = make(&shop).and_then(|made| dir.place_from(&shop, &made, name));
        for left in shop.names().unwrap_or_default() {
            if let Ok(c) = CString::new(left) {
                shop.discard(&c);
            }
        }
        dir.remove_workshop(&shop_name);
        placed
    }

    fn symlink(&self, n: &Node) -> std::io::Result<()> {
        let target = n.target.as_deref().unwrap_or_default();
        self.in_workshop(n, |shop| {
            let made = shop.create_fresh_symlink(target)?;
            apply::to_symlink(shop, &made, n)?;
            Ok(made)
        })
    }

    fn hardlink(&self, n: &Node, files: &HashMap<&[u8], usize>) -> std::io::Result<()> {
        let first = n.target.as_deref().unwrap_or_default();
        let placed = files.get(first).is_some_and(|i| lock(&self.in_place)[*i]);
        if !placed {
            return Err(std::io::Error::other(format!("its first name {} was not restored", shown(first))));
        }
        let (from_parent, from_name) = split(first);
        let from = self.root.dir(from_parent)?;
        let st = from.stat(from_name)?;
        let (parent, name) = split(&n.path);
        if self.root.dir(parent)?.stat(name).is_ok_and(|d| (d.st_dev, d.st_ino) == (st.st_dev, st.st_ino)) {
            return Ok(());
        }
        self.in_workshop(n, |shop| shop.link_fresh(&from, from_name, (st.st_dev, st.st_ino)))
    }

    fn fifo(&self, n: &Node) -> std::io::Result<()> {
        self.in_workshop(n, |shop| {
            let (pipe, made) = shop.create_fresh_fifo()?;
            apply::to_handle(&pipe, n)?;
            Ok(made)
        })
    }
}

/// Errors that stop the whole restore: the target itself cannot take more. Anything else fails
/// only the file it happened to.
fn stops_the_restore(e: &std::io::Error) -> bool {
    matches!(Errno::from_io_error(e), Some(Errno::NOSPC | Errno::DQUOT | Errno::IO))
}

impl ChunkWriter for TreeWriter {
    fn write(&self, target: ChunkTarget, data: &[u8]) -> std::io::Result<()> {
        let slot = &self.slots[target.file];
        if lock(&slot.failure).is_none() {
            match self.file(slot).and_then(|f| f.write_all_at(data, target.offset)) {
                Ok(()) => {
                    slot.written.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Err(e) if stops_the_restore(&e) => {
                    let path = shown(&self.nodes[slot.node].path);
                    return Err(std::io::Error::new(e.kind(), format!("cannot write {path}: {e}")));
                }
                Err(e) => slot.fail(format!("cannot write: {e}")),
            }
        }
        self.settle(slot);
        Ok(())
    }

    fn failed(&self, target: ChunkTarget, chunk: ChunkId, error: &tresor_vault::Error) {
        let slot = &self.slots[target.file];
        slot.fail(format!("chunk {chunk}: {error}"));
        self.settle(slot);
    }
}

/// Write the tree's structure below `root` with no file data (every file empty or sparse):
/// what the fuzz target and the hostile-tree tests drive without a vault.
pub fn write_structure(nodes: Vec<Node>, root: Dir) -> Result<RestoreReport, RestoreError> {
    let w = TreeWriter::new(nodes, root)?;
    w.complete()
}
