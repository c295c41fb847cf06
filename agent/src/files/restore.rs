//! Restore a snapshot's tree below a target directory.
//!
//! Each file is written under a temporary name beside its final place, then renamed into place
//! once all its chunks are written and its metadata is set. A re-run after an interruption skips
//! files already in place (same size and mtime) and redoes the rest. Free space is checked first.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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

struct Slot {
    file: File,
    failure: Mutex<Option<String>>,
    written: AtomicU64,
}

struct Writer {
    slots: Vec<Slot>,
}

impl ChunkWriter for Writer {
    fn write(&self, target: ChunkTarget, data: &[u8]) -> std::io::Result<()> {
        let slot = &self.slots[target.file];
        slot.file.write_all_at(data, target.offset)?;
        slot.written.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn failed(&self, target: ChunkTarget, chunk: ChunkId, error: &tresor_vault::Error) {
        let mut f = self.slots[target.file].failure.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert_with(|| format!("chunk {chunk}: {error}"));
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

/// Restore `nodes` below `root`.
pub async fn restore_tree(
    vault: Arc<Vault>,
    index: Arc<LocalIndex>,
    nodes: Vec<Node>,
    root: &Path,
) -> anyhow::Result<RestoreReport> {
    let mut report = RestoreReport::default();
    std::fs::create_dir_all(root).with_context(|| format!("cannot create restore target {}", root.display()))?;

    // Files that still need writing, and the space they take.
    let mut todo: Vec<usize> = Vec::new();
    let mut need = 0u64;
    for (i, n) in nodes.iter().enumerate() {
        if n.kind != NodeKind::File {
            continue;
        }
        let dest = target_path(root, n);
        if let Ok(md) = std::fs::symlink_metadata(&dest) {
            let mtime = md.mtime().saturating_mul(1_000_000_000).saturating_add(md.mtime_nsec());
            if md.is_file() && md.len() == n.size && mtime == n.mtime_ns {
                report.files_skipped += 1;
                continue;
            }
        }
        todo.push(i);
        let idx = index.clone();
        let chunks: Vec<ChunkId> = n.chunks().copied().collect();
        for c in chunks {
            if let Some(e) = idx.lookup(&c)? {
                need += u64::from(e.blob.raw_len);
            }
        }
    }
    let free = free_bytes(root).with_context(|| format!("cannot read free space of {}", root.display()))?;
    // Leave a small margin for directories and metadata blocks.
    let margin = 16 << 20;
    if need + margin > free {
        bail!(
            "not enough free space at {}: the restore needs {} MiB, {} MiB are free; nothing was written",
            root.display(),
            (need + margin).div_ceil(1 << 20),
            free >> 20
        );
    }

    // Directories first (permissive until their metadata is applied at the end).
    for n in nodes.iter().filter(|n| n.kind == NodeKind::Dir) {
        let p = target_path(root, n);
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create directory {}", p.display()))?;
    }

    // Open temp files at full size (holes stay sparse).
    let mut slots = Vec::with_capacity(todo.len());
    for &i in &todo {
        let n = &nodes[i];
        let dest = target_path(root, n);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create directory {}", parent.display()))?;
        }
        let tmp = temp_path(&dest);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        file.set_len(n.size).with_context(|| format!("cannot size {}", tmp.display()))?;
        slots.push(Slot { file, failure: Mutex::new(None), written: AtomicU64::new(0) });
    }
    let writer = Arc::new(Writer { slots });

    let files: Vec<(usize, Vec<tresor_vault::snapshot::Extent>)> =
        todo.iter().enumerate().map(|(slot, &i)| (slot, nodes[i].extents.clone())).collect();
    let idx = index.clone();
    let plan = tokio::task::spawn_blocking(move || {
        let refs: Vec<(usize, &[tresor_vault::snapshot::Extent])> =
            files.iter().map(|(s, e)| (*s, e.as_slice())).collect();
        restore::plan(&idx, &refs)
    })
    .await??;
    for (slot, chunk) in &plan.missing {
        writer.failed(
            ChunkTarget { file: *slot, offset: 0 },
            *chunk,
            &tresor_vault::Error::integrity(format!("chunk {chunk}"), "not in the index"),
        );
    }
    let counts =
        restore::execute(vault, plan, &RestoreOptions::default(), writer.clone() as Arc<dyn ChunkWriter>).await?;
    report.transient_retries = counts.transient_retries;

    // Finish files: metadata, then rename into place.
    let mut placed: HashMap<Vec<u8>, PathBuf> = HashMap::new();
    for (slot, &i) in todo.iter().enumerate() {
        let n = &nodes[i];
        let dest = target_path(root, n);
        let tmp = temp_path(&dest);
        let s = &writer.slots[slot];
        if let Some(why) = s.failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = std::fs::remove_file(&tmp);
            report.failed.push((n.display_path(), why));
            continue;
        }
        meta::apply(&tmp, n).with_context(|| format!("cannot set metadata of {}", dest.display()))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("cannot move {} into place", dest.display()))?;
        report.files += 1;
        report.bytes += s.written.load(Ordering::Relaxed);
        placed.insert(n.path.clone(), dest);
    }

    // Links and special files.
    for n in &nodes {
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
    let mut dirs: Vec<&Node> = nodes.iter().filter(|n| n.kind == NodeKind::Dir).collect();
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
