//! Restore a snapshot's tree below a target directory.
//!
//! Each file is written under a temporary name beside its final place, then renamed into place
//! once all its chunks are written and its metadata is set. A re-run after an interruption skips
//! files already in place (same size and mtime) and redoes the rest. Free space is checked first.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context, bail};
use tresor_vault::Vault;
use tresor_vault::ids::ChunkId;
use tresor_vault::index::LocalIndex;
use tresor_vault::restore::{self, ChunkTarget, ChunkWriter, RestoreOptions};
use tresor_vault::snapshot::{Node, NodeKind};

use super::meta;

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

/// One file being restored.
struct Slot {
    node: usize,
    dest: PathBuf,
    tmp: PathBuf,
    /// Opened at the first chunk and closed when the file is finished.
    file: Mutex<Option<Arc<File>>>,
    /// Chunk writes still to come; the write that brings it to zero finishes the file.
    pending: AtomicU64,
    failure: Mutex<Option<String>>,
    written: AtomicU64,
    placed: AtomicBool,
}

impl Slot {
    /// Record the first failure of this file; it is then not moved into place.
    fn fail(&self, chunk: ChunkId, error: &tresor_vault::Error) {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| format!("chunk {chunk}: {error}"));
    }
}

/// Writes chunks into temporary files and moves each file into place as soon as its last chunk
/// is written, so creating, writing and renaming files overlap with fetching and decrypting.
struct Writer {
    nodes: Arc<Vec<Node>>,
    slots: Vec<Slot>,
}

impl Writer {
    fn file(&self, slot: &Slot) -> std::io::Result<Arc<File>> {
        let mut guard = slot.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = guard.as_ref() {
            return Ok(f.clone());
        }
        let open = || OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&slot.tmp);
        let file = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = slot.tmp.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| with_path("cannot create directory", parent, e))?;
                }
                open()
            }
            r => r,
        }
        .map_err(|e| with_path("cannot create", &slot.tmp, e))?;
        // Full size at once: holes between written chunks stay sparse.
        file.set_len(self.nodes[slot.node].size).map_err(|e| with_path("cannot size", &slot.tmp, e))?;
        let file = Arc::new(file);
        *guard = Some(file.clone());
        Ok(file)
    }

    /// Metadata, then rename into place. Called once every chunk is written.
    fn finish(&self, slot: &Slot) -> std::io::Result<()> {
        let file = slot.file.lock().unwrap_or_else(|p| p.into_inner()).take();
        let node = &self.nodes[slot.node];
        if let Some(f) = file
            && node.size >= EARLY_WRITEBACK
        {
            // Start writing a large file back now rather than all at the final syncfs. Only a
            // hint: the syncfs at the end is what makes the restore durable.
            let _ = rustix::fs::fadvise(&*f, 0, None, rustix::fs::Advice::DontNeed);
        }
        meta::apply(&slot.tmp, node).map_err(|e| with_path("cannot set metadata of", &slot.dest, e))?;
        std::fs::rename(&slot.tmp, &slot.dest).map_err(|e| with_path("cannot move into place", &slot.dest, e))?;
        slot.placed.store(true, Ordering::Release);
        Ok(())
    }
}

fn with_path(what: &str, path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

impl ChunkWriter for Writer {
    fn write(&self, target: ChunkTarget, data: &[u8]) -> std::io::Result<()> {
        let slot = &self.slots[target.file];
        let file = self.file(slot)?;
        file.write_all_at(data, target.offset).map_err(|e| with_path("cannot write", &slot.tmp, e))?;
        drop(file);
        slot.written.fetch_add(data.len() as u64, Ordering::Relaxed);
        let last = slot.pending.fetch_sub(1, Ordering::AcqRel) == 1;
        if last && slot.failure.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            self.finish(slot)?;
        }
        Ok(())
    }

    fn failed(&self, target: ChunkTarget, chunk: ChunkId, error: &tresor_vault::Error) {
        let slot = &self.slots[target.file];
        slot.fail(chunk, error);
        slot.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

fn target_path(root: &Path, node: &Node) -> PathBuf {
    root.join(OsStr::from_bytes(&node.path))
}

fn temp_path(final_path: &Path) -> PathBuf {
    let name = final_path.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
    let mut tmp = b".".to_vec();
    tmp.extend_from_slice(&name);
    tmp.extend_from_slice(b".tresor-tmp");
    final_path.with_file_name(OsStr::from_bytes(&tmp))
}

/// Keep nodes at or below one of `include` (absolute paths as shown by `ls`), plus their ancestors.
pub fn select(nodes: Vec<Node>, include: &[String]) -> anyhow::Result<Vec<Node>> {
    if include.is_empty() {
        return Ok(nodes);
    }
    let wanted: Vec<Vec<u8>> =
        include.iter().map(|p| p.trim_start_matches('/').trim_end_matches('/').as_bytes().to_vec()).collect();
    let keep = |path: &[u8]| {
        wanted.iter().any(|w| {
            path == &w[..]
                || (path.starts_with(w) && path.get(w.len()) == Some(&b'/'))
                || (w.starts_with(path) && w.get(path.len()) == Some(&b'/'))
        })
    };
    let out: Vec<Node> = nodes.into_iter().filter(|n| keep(&n.path)).collect();
    if out.is_empty() {
        bail!("--include {} matches nothing in the snapshot", include.join(", "));
    }
    Ok(out)
}

/// Bytes free for an unprivileged writer at `dir` (or its nearest existing ancestor).
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut p = dir.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            break;
        }
    }
    let st = rustix::fs::statvfs(&p)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Restore `nodes` below `root`. File system work runs on blocking threads.
pub async fn restore_tree(
    vault: Arc<Vault>,
    index: Arc<LocalIndex>,
    nodes: Vec<Node>,
    root: &Path,
) -> anyhow::Result<RestoreReport> {
    let nodes = Arc::new(nodes);
    let root = root.to_path_buf();
    let (n, r) = (nodes.clone(), root.clone());
    let (writer, plan, skipped) = tokio::task::spawn_blocking(move || prepare(&index, n, &r)).await??;
    tracing::debug!(fetches = plan.fetches.len(), bytes = plan.bytes, "restore planned");
    let writer = Arc::new(writer);
    let counts =
        restore::execute(vault, plan, &RestoreOptions::default(), writer.clone() as Arc<dyn ChunkWriter>).await?;
    tracing::debug!("restore data written");
    let mut report = tokio::task::spawn_blocking(move || complete(&writer, &root)).await??;
    tracing::debug!("restore complete");
    report.files_skipped = skipped;
    report.transient_retries = counts.transient_retries;
    Ok(report)
}

/// Find what is left to write, plan the reads, check free space, make the directories.
fn prepare(
    index: &LocalIndex,
    nodes: Arc<Vec<Node>>,
    root: &Path,
) -> anyhow::Result<(Writer, restore::RestorePlan, u64)> {
    std::fs::create_dir_all(root).with_context(|| format!("cannot create restore target {}", root.display()))?;
    let mut skipped = 0;
    let mut slots = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.kind != NodeKind::File {
            continue;
        }
        let dest = target_path(root, n);
        if let Ok(md) = std::fs::symlink_metadata(&dest) {
            let mtime = md.mtime().saturating_mul(1_000_000_000).saturating_add(md.mtime_nsec());
            if md.is_file() && md.len() == n.size && mtime == n.mtime_ns {
                skipped += 1;
                continue;
            }
        }
        slots.push(Slot {
            node: i,
            tmp: temp_path(&dest),
            dest,
            file: Mutex::new(None),
            pending: AtomicU64::new(0),
            failure: Mutex::new(None),
            written: AtomicU64::new(0),
            placed: AtomicBool::new(false),
        });
    }
    let files: Vec<(usize, &[tresor_vault::snapshot::Extent])> =
        slots.iter().enumerate().map(|(s, slot)| (s, nodes[slot.node].extents.as_slice())).collect();
    let plan = restore::plan(index, &files)?;
    for f in &plan.fetches {
        for (_, targets) in &f.blobs {
            for t in targets {
                slots[t.file].pending.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    for (slot, chunk) in &plan.missing {
        slots[*slot].fail(*chunk, &tresor_vault::Error::integrity(format!("chunk {chunk}"), "not in the index"));
    }
    let free = free_bytes(root).with_context(|| format!("cannot read free space of {}", root.display()))?;
    // Leave a small margin for directories and metadata blocks.
    let margin = 16 << 20;
    if plan.bytes + margin > free {
        bail!(
            "not enough free space at {}: the restore needs {} MiB, {} MiB are free; nothing was written",
            root.display(),
            (plan.bytes + margin).div_ceil(1 << 20),
            free >> 20
        );
    }
    // Directories first (permissive until their metadata is applied at the end).
    for n in nodes.iter().filter(|n| n.kind == NodeKind::Dir) {
        let p = target_path(root, n);
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create directory {}", p.display()))?;
    }
    Ok((Writer { nodes, slots }, plan, skipped))
}

/// Files without chunks, failed files, links, special files, directory metadata, then one syncfs.
fn complete(writer: &Writer, root: &Path) -> anyhow::Result<RestoreReport> {
    let mut report = RestoreReport::default();
    for slot in &writer.slots {
        let n = &writer.nodes[slot.node];
        if let Some(why) = slot.failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            slot.file.lock().unwrap_or_else(|p| p.into_inner()).take();
            let _ = std::fs::remove_file(&slot.tmp);
            report.failed.push((n.display_path(), why));
            continue;
        }
        if !slot.placed.load(Ordering::Acquire) {
            // Empty or all-hole files have no chunk to write.
            writer.file(slot)?;
            writer.finish(slot)?;
        }
        report.files += 1;
        report.bytes += slot.written.load(Ordering::Relaxed);
    }

    // Links and special files.
    for n in writer.nodes.iter() {
        let dest = target_path(root, n);
        let r = match n.kind {
            NodeKind::Symlink => restore_symlink(&dest, n),
            NodeKind::Hardlink => restore_hardlink(root, &dest, n),
            NodeKind::Fifo => restore_fifo(&dest, n),
            _ => continue,
        };
        match r {
            Ok(()) => report.others += 1,
            Err(e) => report.failed.push((n.display_path(), format!("{e:#}"))),
        }
    }

    // Directory metadata last, deepest first, so restored children do not change their mtime.
    let mut dirs: Vec<&Node> = writer.nodes.iter().filter(|n| n.kind == NodeKind::Dir).collect();
    dirs.sort_by_key(|n| std::cmp::Reverse(n.path.iter().filter(|b| **b == b'/').count()));
    for n in dirs {
        let p = target_path(root, n);
        meta::apply(&p, n).with_context(|| format!("cannot set metadata of {}", p.display()))?;
        report.others += 1;
    }
    // One syncfs makes everything durable at once, far cheaper than an fsync per file.
    if let Ok(f) = File::open(root) {
        rustix::fs::syncfs(&f).context("syncing the restored files to disk failed")?;
    }
    Ok(report)
}

fn restore_symlink(dest: &Path, n: &Node) -> anyhow::Result<()> {
    let target = n.target.as_deref().unwrap_or_default();
    if let Ok(existing) = std::fs::read_link(dest)
        && existing.as_os_str().as_bytes() == target
    {
        return meta::apply(dest, n).map_err(Into::into);
    }
    let tmp = temp_path(dest);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(OsStr::from_bytes(target), &tmp)?;
    meta::apply(&tmp, n)?;
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

fn restore_hardlink(root: &Path, dest: &Path, n: &Node) -> anyhow::Result<()> {
    let first = root.join(OsStr::from_bytes(n.target.as_deref().unwrap_or_default()));
    let first_md =
        std::fs::metadata(&first).with_context(|| format!("hardlink target {} was not restored", first.display()))?;
    if let Ok(md) = std::fs::symlink_metadata(dest) {
        if md.ino() == first_md.ino() && md.dev() == first_md.dev() {
            return Ok(());
        }
        std::fs::remove_file(dest)?;
    }
    std::fs::hard_link(&first, dest)?;
    Ok(())
}

fn restore_fifo(dest: &Path, n: &Node) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(dest).is_err() {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dest,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )?;
    }
    meta::apply(dest, n)?;
    Ok(())
}
