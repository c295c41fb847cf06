//! The local commands. Each returns what to print and the exit code.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde_json::json;
use tresor_vault::check::{self, ReadData};
use tresor_vault::keys::EscrowKey;
use tresor_vault::snapshot::NodeKind;
use tresor_vault::{Vault, backend};

use crate::cli::{Global, KeyAction};
use crate::exit;
use crate::files;
use crate::files::backup::{BackupDone, BackupRequest, backup_into, backup_roots};
use crate::host::hostname;
use crate::progress::{Progress, human};
use crate::secret;

/// What a command prints and how it exits.
pub struct Outcome {
    /// Machine-readable result (`--json`).
    pub json: serde_json::Value,
    /// Human-readable result.
    pub text: String,
    /// Exit code.
    pub code: u8,
}

impl Outcome {
    fn ok(json: serde_json::Value, text: String) -> Self {
        Self { json, text, code: exit::OK }
    }

    /// Success with this output.
    pub fn ok_with(json: serde_json::Value, text: String) -> Self {
        Self::ok(json, text)
    }
}

/// The index cache directory, private to this user (0700, owned by it, not a link): an index
/// cache another user could write would steer dedup and restores. --cache-dir or
/// TRESOR_CACHE_DIR, else `$XDG_CACHE_HOME/tresor`, `$HOME/.cache/tresor`, or for root
/// `/var/cache/tresor`; never a guessable shared path.
pub fn cache_root(g: &Global) -> anyhow::Result<PathBuf> {
    let dir = if let Some(d) = &g.cache_dir {
        d.clone()
    } else if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        PathBuf::from(x).join("tresor")
    } else if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        PathBuf::from(h).join(".cache").join("tresor")
    } else if rustix::process::geteuid().is_root() {
        PathBuf::from("/var/cache/tresor")
    } else {
        anyhow::bail!("no cache directory: give --cache-dir DIR (or TRESOR_CACHE_DIR, XDG_CACHE_HOME, HOME)");
    };
    private_dir(&dir)?;
    Ok(dir)
}

/// Make `dir` (and missing parents) 0700, and insist it is this user's own directory.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the cache directory {}", dir.display()))?;
    let md = std::fs::symlink_metadata(dir).with_context(|| format!("cache directory {}", dir.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if !md.is_dir() || md.uid() != me {
        let what = if md.file_type().is_symlink() {
            "a symbolic link"
        } else if md.is_dir() {
            "a directory"
        } else {
            "not a directory"
        };
        anyhow::bail!(
            "cache directory {} is {what} owned by uid {}, not this user's ({me}) own directory; give --cache-dir",
            dir.display(),
            md.uid()
        );
    }
    if md.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make the cache directory {} private", dir.display()))?;
    }
    Ok(())
}

pub(crate) async fn open(g: &Global, url: &str) -> anyhow::Result<Arc<Vault>> {
    let secret = secret::open_secret(g.password_file.as_deref(), g.escrow_key_file.as_deref())?;
    let backend = opened(backend::from_url(url)?);
    let mut vault = Vault::open(backend, &secret).await?;
    if g.at_second_site {
        vault.allow_key_changes_at_second_site();
    }
    *RECORDED.lock().unwrap_or_else(|p| p.into_inner()) = vault.durability_unverified();
    Ok(Arc::new(vault))
}

/// Durability as the opened vault sees it (found now or recorded at `init`).
static RECORDED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// The storage this command used, for `--json` (`storage_json`).
static OPENED: std::sync::Mutex<Option<backend::DynBackend>> = std::sync::Mutex::new(None);

fn opened(be: backend::DynBackend) -> backend::DynBackend {
    *OPENED.lock().unwrap_or_else(|p| p.into_inner()) = Some(be.clone());
    be
}

/// What every `--json` answer says of the storage the command used: which endpoint answered
/// last (of several) and whether durability is unverified.
pub fn storage_json() -> Option<serde_json::Value> {
    let be = OPENED.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
    let recorded = RECORDED.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Some(json!({
        "location": be.location(),
        "endpoint": be.endpoint(),
        "durability_unverified": be.durability_unverified().or(recorded),
    }))
}

/// One line on durability for the text output of `init` and `check`.
fn durability_line(unverified: Option<&str>) -> String {
    match unverified {
        None => "durability: every write confirmed by the storage".into(),
        Some(why) => format!(
            "durability UNVERIFIED: {why}; a crash or power loss may lose what the storage acknowledged (see docs/OPERATIONS.md)"
        ),
    }
}

/// `init`.
pub async fn init(
    g: &Global,
    url: &str,
    escrow_out: &Path,
    object_lock: Option<tresor_vault::backend::Retention>,
) -> anyhow::Result<Outcome> {
    let password = secret::password(g.password_file.as_deref(), "TRESOR_PASSWORD", "--password-file")?;
    if escrow_out.exists() {
        bail!(
            "escrow key file {} already exists; refusing to overwrite it (choose another --escrow-key-out)",
            escrow_out.display()
        );
    }
    let backend = opened(backend::from_url(url)?);
    let escrow = EscrowKey::generate();
    let (vault, report) = Vault::init(backend, password, &escrow, object_lock).await?;
    write_private(escrow_out, escrow.to_file_text(&vault.config().vault_id).as_bytes()).with_context(|| {
        format!(
            "the vault was made, but writing the escrow key file {} failed; add an escrow slot before relying on it",
            escrow_out.display()
        )
    })?;
    let caps = &report.config.capabilities;
    let lock = vault.lock_line().map(|l| format!("\n  {l}")).unwrap_or_default();
    let text = format!(
        "created vault {} at {url}\n  format v{}, chunks {}-{}-{} bytes, cipher {}\n  backend {}: create-once {}, delete {}\n  {}{lock}\n  key slots: password {}, escrow {}\n  escrow key file: {}  <- store it offline; with the storage location it restores everything",
        report.config.vault_id,
        report.config.version,
        report.config.chunker.min_size,
        report.config.chunker.avg_size,
        report.config.chunker.max_size,
        report.config.cipher,
        caps.backend,
        if caps.create_once { "enforced by storage" } else { "NOT enforced by storage" },
        if caps.delete { "allowed with these credentials" } else { "refused" },
        durability_line(caps.durability_unverified.as_deref()),
        report.password_slot,
        report.escrow_slot,
        escrow_out.display()
    );
    Ok(Outcome::ok(
        json!({"vault_id": report.config.vault_id, "config": report.config, "password_slot": report.password_slot, "escrow_slot": report.escrow_slot, "escrow_key_file": escrow_out}),
        text,
    ))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// `backup`.
#[allow(clippy::too_many_arguments)]
pub async fn backup(
    g: &Global,
    url: &str,
    paths: &[PathBuf],
    sources: &[tresor_sources::spec::SourceSpec],
    options: tresor_sources::capture::SourceOptions,
    tags: &[String],
    host: Option<String>,
    force: bool,
) -> anyhow::Result<Outcome> {
    let roots = backup_roots(paths)?;
    let vault = open(g, url).await?;
    let req = BackupRequest {
        roots,
        sources: sources.to_vec(),
        options,
        host: host.unwrap_or_else(hostname),
        tags: tags.to_vec(),
        force,
        commit_guard: None,
        progress: None,
        quiet: g.json,
    };
    let root = cache_root(g)?;
    let cache_dir = vault.cache_dir(&root);
    let BackupDone { id: sid, manifest, errors } = backup_into(vault, &root, req).await?;
    // The snapshot is committed: a record that cannot be written is a warning, not a failed backup.
    let unrecorded = crate::expected::note_committed(&cache_dir, sid).err().map(|e| format!("{e:#}"));
    let s = &manifest.summary;
    let mut text = format!(
        "snapshot {sid} saved\n  {} files, {} dirs, {} in total; read {}, new {} in {} chunks, stored {} in {:.1} s",
        s.files,
        s.dirs,
        human(s.bytes),
        human(s.bytes_read),
        human(s.bytes_new),
        s.chunks_new,
        human(s.bytes_stored),
        s.duration_ms as f64 / 1000.0
    );
    for e in &errors {
        text.push_str(&format!("\n  skipped {}: {}", e.path, e.error));
    }
    if let Some(e) = &unrecorded {
        tracing::warn!(error = %e, "snapshot not noted in this host's expected-snapshots record");
        text.push_str(&format!("\n  warning: not noted in this host's record of expected snapshots ({e}); standalone gc cannot notice if it goes missing"));
    }
    let code = if errors.is_empty() { exit::OK } else { exit::PARTIAL };
    let json = json!({"snapshot": sid, "manifest": manifest, "errors": errors, "warning": unrecorded});
    Ok(Outcome { json, text, code })
}

/// `documents`: the signed documents in the vault, and optionally each as a file.
pub async fn documents(g: &Global, url: &str, out: Option<&Path>) -> anyhow::Result<Outcome> {
    let vault = open(g, url).await?;
    let mut names = vault.document_names(tresor_vault::layout::REPORTS).await?;
    names.extend(vault.document_names(tresor_vault::layout::AUDIT).await?);
    let mut text = String::new();
    let mut unreadable = Vec::new();
    for name in &names {
        // One damaged document does not hide the others.
        let body = match vault.document(name).await {
            Ok(b) => b,
            Err(e) => {
                text.push_str(&format!("{name}: UNREADABLE: {e}\n"));
                unreadable.push(json!({"name": name, "error": e.to_string()}));
                continue;
            }
        };
        text.push_str(&format!("{name} ({} bytes)\n", body.len()));
        if let Some(dir) = out {
            let file = dir.join(name);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
            }
            std::fs::write(&file, &body).with_context(|| format!("cannot write {}", file.display()))?;
        }
    }
    text.push_str(&format!("{} documents", names.len()));
    if let Some(dir) = out {
        text.push_str(&format!(" written below {}", dir.display()));
    }
    let code = if unreadable.is_empty() { exit::OK } else { exit::DAMAGE };
    Ok(Outcome { json: json!({"documents": names, "unreadable": unreadable, "out": out}), text, code })
}

/// `snapshots`.
pub async fn snapshots(g: &Global, url: &str) -> anyhow::Result<Outcome> {
    let vault = open(g, url).await?;
    let mut rows = Vec::new();
    let mut text = String::from("ID        TIME                       HOST         SIZE       PATHS\n");
    let mut bad = 0;
    for (id, m) in vault.snapshots().await? {
        match m {
            Ok(m) => {
                text.push_str(&format!(
                    "{:<9} {:<26} {:<12} {:<10} {}\n",
                    id.short(),
                    &m.time[..m.time.len().min(26)],
                    m.host,
                    human(m.summary.bytes),
                    m.paths.join(" ")
                ));
                rows.push(json!({"id": id, "time": m.time, "host": m.host, "source": m.source, "paths": m.paths, "tags": m.tags, "summary": m.summary}));
            }
            Err(e) => {
                bad += 1;
                text.push_str(&format!("{:<9} UNREADABLE: {e}\n", id.short()));
                rows.push(json!({"id": id, "error": e}));
            }
        }
    }
    text.push_str(&format!("{} snapshots", rows.len()));
    Ok(Outcome { json: json!(rows), text, code: if bad > 0 { exit::DAMAGE } else { exit::OK } })
}

/// `ls`.
pub async fn ls(g: &Global, url: &str, spec: &str) -> anyhow::Result<Outcome> {
    let vault = open(g, url).await?;
    let index = vault.sync_index(&cache_root(g)?).await?;
    let (id, m) = vault.resolve_snapshot(spec).await?;
    let nodes = vault.read_tree(&m, &index).await?;
    let mut text = format!("snapshot {id} of {} at {}\n", m.host, m.time);
    let mut rows = Vec::new();
    for n in &nodes {
        let kind = match n.kind {
            NodeKind::File => "file",
            NodeKind::Dir => "dir",
            NodeKind::Symlink => "symlink",
            NodeKind::Hardlink => "hardlink",
            NodeKind::Fifo => "fifo",
        };
        text.push_str(&format!("{kind:<8} {:o} {:>12} {}\n", n.mode & 0o7777, n.size, n.display_path()));
        rows.push(json!({"path": n.display_path(), "kind": kind, "mode": n.mode, "uid": n.uid, "gid": n.gid, "size": n.size, "mtime_ns": n.mtime_ns, "blake3": n.hash.as_ref().map(hex::encode)}));
    }
    text.pop();
    Ok(Outcome::ok(json!({"snapshot": id, "nodes": rows}), text))
}

/// The deepest existing directory above `target` (its links followed: the operator typed this
/// path) and the rest of the path below it, which the restore walks without following a link.
fn split_existing(target: &Path) -> (PathBuf, PathBuf) {
    let base = target.ancestors().skip(1).find(|a| a.is_dir()).unwrap_or(Path::new("/")).to_path_buf();
    let rel = target.strip_prefix(&base).map(Path::to_path_buf).unwrap_or_default();
    (base, rel)
}

/// `restore`.
pub async fn restore(
    g: &Global,
    url: &str,
    spec: &str,
    to: &Path,
    include: &[String],
    force: bool,
) -> anyhow::Result<Outcome> {
    let started = std::time::Instant::now();
    let to = std::path::absolute(to).with_context(|| format!("bad target {}", to.display()))?;
    let to = tresor_proto::normalize_target(&to).map_err(anyhow::Error::msg)?;
    let vault = open(g, url).await?;
    let index = vault.sync_index(&cache_root(g)?).await?;
    let (id, m) = vault.resolve_snapshot(spec).await?;
    let nodes = files::restore::select(vault.read_tree(&m, &index).await?, include)?;
    let (base, rel) = split_existing(&to);
    let progress = Progress::start(g.json, || "restoring".to_string());
    // Disaster recovery from a damaged vault wants every file that can be had, in its place.
    let key = files::restore::restore_key(&id, include);
    let dest = files::restore::Destination { base, rel, force, key, place_partial: true };
    let (report, _) = files::restore::restore_to(vault, index, nodes, dest).await?;
    drop(progress);
    let secs = started.elapsed().as_secs_f64();
    let mut text = format!(
        "restored snapshot {id} to {}: {} files ({}), {} other entries, {} already in place, in {secs:.1} s",
        to.display(),
        report.files,
        human(report.bytes),
        report.others,
        report.files_skipped
    );
    for (p, why) in &report.failed {
        text.push_str(&format!("\n  FAILED {p}: {why}"));
    }
    if !report.failed.is_empty() {
        text.push_str(&format!(
            "\n  every other entry is in place; once the cause is fixed, run the restore again with --force to fill in the {} that failed",
            report.failed.len()
        ));
    }
    let code = if report.failed.is_empty() { exit::OK } else { exit::PARTIAL };
    Ok(Outcome { json: json!({"snapshot": id, "target": to, "report": report, "seconds": secs}), text, code })
}

/// `verify`: a restored copy against its snapshot.
pub async fn verify(
    g: &Global,
    url: &str,
    spec: &str,
    opts: &tresor_sources::verify::VerifyOptions,
    path: &Path,
) -> anyhow::Result<Outcome> {
    let started = std::time::Instant::now();
    if !path.is_dir() {
        anyhow::bail!("{} is not a directory: give the directory the snapshot was restored to", path.display());
    }
    let vault = open(g, url).await?;
    let index = vault.sync_index(&cache_root(g)?).await?;
    let (id, m) = vault.resolve_snapshot(spec).await?;
    let nodes = vault.read_tree(&m, &index).await?;
    let (root, sources, opts) = (path.to_path_buf(), m.sources.clone(), opts.clone());
    let progress = Progress::start(g.json, || "verifying".to_string());
    let report = tokio::task::spawn_blocking(move || {
        let mut report = tresor_sources::verify::Report::default();
        tresor_sources::verify::verify_files(&root, &nodes, &mut report);
        tresor_sources::verify::verify_sources(&root, &sources, &opts, &mut report);
        report
    })
    .await?;
    drop(progress);
    let secs = started.elapsed().as_secs_f64();
    let failures: Vec<_> = report.failures().collect();
    let mut text = format!(
        "verified {} against snapshot {id}: {} files ({}), {} tensors, {} source checks; {} in {secs:.1} s",
        path.display(),
        report.files,
        human(report.bytes),
        report.tensors,
        report.findings.iter().filter(|f| f.ok && f.check != "model").count(),
        if failures.is_empty() { "all good".to_string() } else { format!("{} FAILED", failures.len()) }
    );
    for f in &failures {
        text.push_str(&format!("\n  FAILED {} ({}): {}", f.subject, f.check, f.detail));
    }
    let code = if failures.is_empty() { exit::OK } else { exit::DAMAGE };
    Ok(Outcome {
        json: json!({"snapshot": id, "path": path, "ok": failures.is_empty(), "report": report, "seconds": secs}),
        text,
        code,
    })
}

/// `qdrant-recover`: a restored snapshot file back into a collection.
pub async fn qdrant_recover(file: &Path, collection: &str) -> anyhow::Result<Outcome> {
    use tresor_sources::vector::qdrant;
    let c = qdrant::Collection::parse(collection).map_err(anyhow::Error::msg)?;
    let (f, target) = (file.to_path_buf(), c.clone());
    tokio::task::spawn_blocking(move || {
        qdrant::Client::new(std::time::Duration::from_secs(3600))?.recover(&target, &f, None)
    })
    .await??;
    let text = format!("recovered collection {} on {} from {}", c.name, c.base, file.display());
    Ok(Outcome { json: json!({"collection": c.name, "server": c.base, "file": file}), text, code: exit::OK })
}

/// `check`.
pub async fn check(
    g: &Global,
    url: &str,
    read_data: bool,
    subset: Option<&str>,
    seed: Option<u64>,
) -> anyhow::Result<Outcome> {
    let read = match (read_data, subset) {
        (true, _) => ReadData::All,
        (false, Some(s)) => {
            let pct: f64 = s
                .trim_end_matches('%')
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("--read-data-subset {s:?}: expected a percentage such as 10%"))?;
            if !(0.0..=100.0).contains(&pct) || !s.trim().ends_with('%') {
                bail!("--read-data-subset {s:?}: expected a percentage between 0% and 100%");
            }
            ReadData::Subset { percent: pct, seed: seed.unwrap_or_else(rand::random) }
        }
        (false, None) => ReadData::None,
    };
    let vault = open(g, url).await?;
    let unverified = vault.durability_unverified();
    let scratch = tempfile_dir()?;
    let lock = vault.lock_line().map(|l| format!("{l}\n")).unwrap_or_default();
    let report = check::run(vault, read, scratch.path()).await?;
    let mut text = format!(
        "{lock}{}\n{} snapshots, {} index segments, {} packs ({} unreferenced); read {} packs, verified {} chunks ({})",
        durability_line(unverified.as_deref()),
        report.snapshots,
        report.index_segments,
        report.packs,
        report.unreferenced_packs,
        report.packs_read,
        report.chunks_verified,
        human(report.bytes_read)
    );
    if let Some(seed) = report.seed {
        text.push_str(&format!("\nsample seed {seed} (repeat with --seed {seed})"));
    }
    for t in &report.transient {
        text.push_str(&format!("\ntransient: {}: {}", t.object, t.detail));
    }
    for p in &report.problems {
        text.push_str(&format!("\nERROR {}: {}", p.object, p.detail));
    }
    for n in &report.notes {
        text.push_str(&format!("\nnote: {n}"));
    }
    for d in &report.damaged_snapshots {
        text.push_str(&format!("\nsnapshot {} ({}) is damaged:", d.snapshot, d.time));
        for f in &d.files {
            text.push_str(&format!("\n    {f}"));
        }
    }
    text.push_str(if report.is_ok() { "\nno errors found" } else { "\nDAMAGE FOUND" });
    let code = if report.is_ok() { exit::OK } else { exit::DAMAGE };
    let mut json = serde_json::to_value(&report)?;
    if let Some(obj) = json.as_object_mut() {
        obj.insert("durability_unverified".into(), unverified.into());
    }
    Ok(Outcome { json, text, code })
}

/// `recover-hidden`: needs no key, only the storage; the config is brought back first.
pub async fn recover_hidden(url: &str, dry_run: bool) -> anyhow::Result<Outcome> {
    let backend = opened(backend::from_url(url)?);
    backend.check_location().await?;
    let versioning = backend.probe_versioning().await?;
    if !versioning.as_ref().is_some_and(|v| v.keeps_versions()) {
        bail!(
            "{} keeps no object versions ({}): nothing hidden can be brought back",
            backend.location(),
            versioning.map_or("not S3".to_string(), |v| v.to_string())
        );
    }
    let hidden = tresor_vault::hidden::find(&backend).await?;
    let mut text = format!("{} hidden object(s) in {}", hidden.len(), backend.location());
    for h in &hidden {
        text.push_str(&format!("\n  {}: {h}", h.key));
    }
    let recovered = if dry_run { Vec::new() } else { tresor_vault::hidden::recover(&backend, &hidden).await? };
    if !dry_run {
        text.push_str(&format!("\nbrought back {} object(s); run `check` to confirm", recovered.len()));
    }
    Ok(Outcome::ok(json!({"hidden": hidden, "recovered": recovered, "dry_run": dry_run}), text))
}

fn tempfile_dir() -> anyhow::Result<TempDir> {
    let p = std::env::temp_dir().join(format!("tresor-check-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&p)?;
    Ok(TempDir(p))
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `key ...`.
pub async fn key(g: &Global, action: &KeyAction) -> anyhow::Result<Outcome> {
    match action {
        KeyAction::List { vault } => {
            let v = open(g, &vault.vault).await?;
            let slots = v.key_list().await?;
            let mut text = match v.writable() {
                Ok(()) => format!("key epoch {} (new data is written under it)\n", v.key_epoch()),
                Err(e) => format!("this slot reads up to key epoch {}; {e}\n", v.key_epoch()),
            };
            text.push_str("ID                KIND      FROM EPOCH  CREATED               LABEL\n");
            for s in &slots {
                let mark = if s.id == v.slot_id() { "*" } else { " " };
                let epoch = s.epoch.map_or_else(|| "1 (v1)".to_string(), |e| e.to_string());
                text.push_str(&format!(
                    "{mark}{:<17} {:<9} {:<11} {:<21} {}\n",
                    s.id,
                    format!("{:?}", s.kind).to_lowercase(),
                    epoch,
                    s.created,
                    s.label
                ));
            }
            text.pop();
            let rows: Vec<_> = slots.iter().map(|s| json!({"id": s.id, "kind": s.kind, "label": s.label, "created": s.created, "version": s.version, "epoch": s.epoch.unwrap_or(tresor_vault::crypto::FIRST_EPOCH), "kdf": {"algorithm": s.kdf.algorithm, "memory_kib": s.kdf.memory_kib, "iterations": s.kdf.iterations, "parallelism": s.kdf.parallelism}, "current": s.id == v.slot_id()})).collect();
            Ok(Outcome::ok(json!(rows), text))
        }
        KeyAction::Add { vault, new_password_file, label } => {
            let new = secret::password(new_password_file.as_deref(), "TRESOR_NEW_PASSWORD", "--new-password-file")?;
            let v = open(g, &vault.vault).await?;
            let slot = v.key_add(&new, label).await?;
            Ok(Outcome::ok(json!({"added": slot.id}), format!("added key slot {} (read back and verified)", slot.id)))
        }
        KeyAction::Remove { vault, id } => {
            let mut v = open_upgraded(g, &vault.vault).await?;
            let report = v.key_remove(id).await?;
            if !report.locked.is_empty() {
                let text = format!(
                    "key slot {id} is left out of key epoch {} (it opens no newer data), but Object Lock keeps it until its retention passes; run `key remove` again then",
                    report.epoch
                );
                return Ok(Outcome::ok(json!({"removed": null, "locked": id, "epoch": report.epoch}), text));
            }
            Ok(epoch_outcome(json!({"removed": id}), &format!("removed key slot {id}"), &report))
        }
        KeyAction::Rotate { vault, master: true, .. } => {
            let mut v = open_upgraded(g, &vault.vault).await?;
            let report = v.start_epoch("master key rotated", &[]).await?;
            Ok(epoch_outcome(json!({}), "started a new master key", &report))
        }
        KeyAction::Rotate { vault, new_password_file, master: false } => {
            let new = secret::password(new_password_file.as_deref(), "TRESOR_NEW_PASSWORD", "--new-password-file")?;
            let v = open(g, &vault.vault).await?;
            let mut v = Arc::try_unwrap(v).map_err(|_| anyhow::anyhow!("vault handle is shared"))?;
            let old = v.slot_id().to_string();
            let slot = v.key_rotate(&new).await?;
            Ok(Outcome::ok(
                json!({"removed": old, "added": slot.id}),
                format!("key slot {old} replaced by {} (new slot verified before the old one was removed)", slot.id),
            ))
        }
        KeyAction::Upgrade { vault } => {
            let v = open(g, &vault.vault).await?;
            let mut v = Arc::try_unwrap(v).map_err(|_| anyhow::anyhow!("vault handle is shared"))?;
            let secret = secret::open_secret(g.password_file.as_deref(), g.escrow_key_file.as_deref())?;
            let old = v.slot_id().to_string();
            Ok(match v.key_upgrade(&secret).await? {
                Some(slot) => Outcome::ok(
                    json!({"removed": old, "added": slot.id}),
                    format!("key slot {old} replaced by {}, which later key epochs can be granted to", slot.id),
                ),
                None => Outcome::ok(json!({}), format!("key slot {old} already takes later key epochs")),
            })
        }
    }
}

/// Open a vault for a key change that starts an epoch: the opening slot is upgraded first if it
/// was made before key epochs, so it is carried into the new one.
async fn open_upgraded(g: &Global, url: &str) -> anyhow::Result<Vault> {
    let v = open(g, url).await?;
    let mut v = Arc::try_unwrap(v).map_err(|_| anyhow::anyhow!("vault handle is shared"))?;
    let secret = secret::open_secret(g.password_file.as_deref(), g.escrow_key_file.as_deref())?;
    if let Some(slot) = v.key_upgrade(&secret).await? {
        eprintln!("the key slot you opened with was made before key epochs; replaced it by {} first", slot.id);
    }
    Ok(v)
}

fn epoch_outcome(mut json: serde_json::Value, done: &str, report: &tresor_vault::EpochReport) -> Outcome {
    json["epoch"] = report.epoch.into();
    json["carried"] = json!(report.carried);
    json["left_out"] = json!(report.left_out);
    let mut text = format!(
        "{done}; key epoch {} began, granted to {} slot(s); new data is written under it",
        report.epoch,
        report.carried.len()
    );
    if !report.left_out.is_empty() {
        text.push_str(&format!("\nleft out (read older data only, cannot write): {}", report.left_out.join(", ")));
    }
    Outcome::ok(json, text)
}

/// `enroll`.
pub async fn enroll(
    controller: &str,
    token: Option<&str>,
    token_file: Option<&Path>,
    config: Option<&Path>,
    state_dir: Option<&Path>,
    name: Option<&str>,
) -> anyhow::Result<Outcome> {
    let token = match (token, token_file) {
        (Some(t), _) => t.to_string(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("cannot read token file {}", f.display()))?
        }
        (None, None) => bail!("no enrollment token: give --token T, --token-file FILE or TRESOR_ENROLL_TOKEN"),
    };
    let cfg = config.map(crate::daemon::config::AgentConfig::load).transpose()?;
    let dir = state_dir
        .map(Path::to_path_buf)
        .or_else(|| cfg.as_ref().map(|c| c.state_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("/var/lib/tresor-agent"));
    let name = name.map(str::to_string).or_else(|| cfg.as_ref().map(|c| c.name())).unwrap_or_else(hostname);
    let id = crate::daemon::enroll(controller, &token, &name, &dir).await?;
    let until = chrono::DateTime::from_timestamp(id.not_after_unix, 0).map(|t| t.to_rfc3339()).unwrap_or_default();
    Ok(Outcome::ok(
        json!({"agent_id": id.agent_id, "name": id.name, "controller": id.controller, "state_dir": dir, "certificate_not_after": until}),
        format!(
            "enrolled as {} ({}) with {}; certificate valid until {until} and renewed automatically\nidentity kept in {}; start the daemon with: tresor-agent run --config agent.toml",
            id.name,
            id.agent_id,
            id.controller,
            dir.display()
        ),
    ))
}
