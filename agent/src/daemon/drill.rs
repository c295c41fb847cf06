//! A restore drill on this agent: restore a snapshot into a sandbox, check it at three levels
//! (structure; a cryptographic read of its packs; the source's own verifier) and time it. What
//! fails is a finding in the result, never a job error: the controller judges and signs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use tresor_proto::pb;
use tresor_sources::verify::Report;
use tresor_vault::check::ReadData;
use tresor_vault::check_snapshot;
use tresor_vault::snapshot::{Manifest, Node};
use tresor_vault::{Vault, ids::SnapshotId, index::LocalIndex};

use super::ctx::AgentCtx;
use crate::files;

/// Findings listed one by one up to this many per check; the rest are counted.
const LISTED: usize = 20;

/// What a drill gathers as it goes.
struct Drill {
    t0: Instant,
    out: pb::DrillResult,
}

impl Drill {
    fn check(&mut self, level: &str, subject: impl Into<String>, check: &str, ok: bool, detail: impl Into<String>) {
        self.out.checks.push(pb::DrillCheck {
            level: level.into(),
            subject: subject.into(),
            check: check.into(),
            ok,
            detail: detail.into(),
        });
    }

    /// One FAIL row per finding (up to [`LISTED`]), then one counting the rest.
    fn failures(&mut self, level: &str, check: &str, found: &[(String, String)]) {
        for (subject, why) in found.iter().take(LISTED) {
            self.check(level, subject.clone(), check, false, why.clone());
        }
        if found.len() > LISTED {
            self.check(level, "(more)", check, false, format!("{} more entries failed", found.len() - LISTED));
        }
    }

    fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }
}

/// One sandbox per attempt (an attempt that outlived its lease cannot remove the next one's),
/// under a name no one can guess before the drill starts.
fn sandbox_of(ctx: &AgentCtx, drill_id: &str, attempt: u32) -> anyhow::Result<(PathBuf, String)> {
    if drill_id.is_empty() || !drill_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        anyhow::bail!("drill id {drill_id:?} is not a plain name");
    }
    let prefix = format!("{drill_id}-a{attempt}-");
    let name = format!("{prefix}{}", hex::encode(rand::random::<[u8; 8]>()));
    Ok((ctx.cfg.drill_dir().join(name), prefix))
}

/// Remove what a crashed run of the same attempt left in the drill directory.
async fn remove_earlier(drill_dir: &Path, prefix: &str) {
    let (dir, prefix) = (drill_dir.to_path_buf(), prefix.to_string());
    let earlier = tokio::task::spawn_blocking(move || match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect(),
        Err(_) => Vec::new(),
    })
    .await
    .unwrap_or_default();
    for p in earlier {
        let _ = remove_sandbox(&p).await;
    }
}

/// Owners in the sandbox: root's, and the scratch user's for PostgreSQL data (the scratch server
/// runs as it). The snapshot's owners are another host's uids: restored here they could belong
/// to any local user. Returns the scratch user's (uid, gid) when the snapshot holds PostgreSQL
/// data (the sandbox is then the scratch user's, so its server can reach the copy).
fn sandbox_owners(
    cfg: &super::config::AgentConfig,
    manifest: &Manifest,
    nodes: &mut [Node],
    drill: &mut Drill,
) -> anyhow::Result<Option<(u32, u32)>> {
    let mut pg_roots: Vec<Vec<u8>> = Vec::new();
    for s in manifest.sources.iter().filter(|s| s.kind == "postgres") {
        pg_roots.extend(s.paths.iter().map(|p| p.trim_matches('/').as_bytes().to_vec()));
        pg_roots.extend(s.probes.get("pg_dump_dir").map(|d| d.trim_matches('/').as_bytes().to_vec()));
    }
    let scratch = if pg_roots.is_empty() {
        None
    } else {
        let user_ids = tresor_sources::postgres::tools::user_ids;
        // A user of its own when the host made one (OPERATIONS.md), else nobody.
        let user = cfg.scratch_user.as_deref().unwrap_or(if user_ids("tresor-scratch").is_some() {
            "tresor-scratch"
        } else {
            "nobody"
        });
        let ids = user_ids(user).ok_or_else(|| {
            anyhow::anyhow!(
                "scratch_user {user:?} (agent.toml) does not exist on this host; the scratch PostgreSQL runs as it"
            )
        })?;
        Some((user, ids))
    };
    let below =
        |path: &[u8], root: &[u8]| path == root || (path.starts_with(root) && path.get(root.len()) == Some(&b'/'));
    let mut changed = 0;
    for n in nodes.iter_mut() {
        let ids = match scratch {
            Some((_, ids)) if pg_roots.iter().any(|r| below(&n.path, r)) => ids,
            _ => (0, 0),
        };
        changed += usize::from((n.uid, n.gid) != ids);
        (n.uid, n.gid) = ids;
    }
    if changed > 0 {
        let pg = scratch
            .map(|(user, (uid, _))| format!(", and {user}'s (uid {uid}) for the PostgreSQL data"))
            .unwrap_or_default();
        drill.out.anomalies.push(format!(
            "owners in the sandbox are root's{pg}: a drill does not restore the snapshot's owners ({changed} entries differ)"
        ));
    }
    Ok(scratch.map(|(_, ids)| ids))
}

/// Setuid and setgid bits and file capabilities of `nodes`, taken out unless the plan asks for
/// them: a sandbox never holds another host's privileged programs. Returns how many of each.
fn without_special_bits(nodes: &mut [Node]) -> (usize, usize) {
    let (mut bits, mut caps) = (0, 0);
    for n in nodes.iter_mut() {
        if n.mode & 0o6000 != 0 {
            n.mode &= !0o6000;
            bits += 1;
        }
        let before = n.xattrs.len();
        n.xattrs.retain(|x| x.name != b"security.capability");
        caps += before - n.xattrs.len();
    }
    (bits, caps)
}

/// Run a drill to its result.
///
/// # Errors
/// Only a bad job (no sandbox name); every finding is in the result.
pub async fn run(ctx: &Arc<AgentCtx>, attempt: u32, d: pb::DrillJob) -> anyhow::Result<pb::DrillResult> {
    let (sandbox, prefix) = sandbox_of(ctx, &d.drill_id, attempt)?;
    remove_earlier(&ctx.cfg.drill_dir(), &prefix).await;
    let mut drill = Drill {
        t0: Instant::now(),
        out: pb::DrillResult {
            started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            sandbox: format!("{}:{}", ctx.name, sandbox.display()),
            tresor_version: env!("CARGO_PKG_VERSION").into(),
            read_share_percent: d.read_data_percent.clamp(0.0, 100.0),
            source_kind: "files".into(),
            ..Default::default()
        },
    };
    if let Err(e) = stages(ctx, &d, &sandbox, &mut drill).await {
        drill.check("structure", "drill", "run", false, format!("{e:#}"));
    }
    if drill.out.rto_seconds == 0.0 {
        drill.out.rto_seconds = drill.secs();
    }
    if !d.keep {
        if let Err(e) = remove_sandbox(&sandbox).await {
            drill.out.anomalies.push(format!("the sandbox {} was not removed: {e:#}", sandbox.display()));
        }
    } else {
        match keep_until(ctx, &sandbox).await {
            Ok(until) => drill.out.sandbox_expires = until,
            Err(e) => drill.out.anomalies.push(format!("the kept sandbox {} has no expiry: {e:#}", sandbox.display())),
        }
    }
    drill.out.ended = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    Ok(drill.out)
}

/// The marker beside a kept sandbox that names when this agent removes it.
fn expiry_marker(sandbox: &Path) -> PathBuf {
    sandbox.with_extension("expires")
}

/// Give a kept sandbox its expiry (agent.toml `keep_sandbox_for`); returns it, RFC 3339.
async fn keep_until(ctx: &AgentCtx, sandbox: &Path) -> anyhow::Result<String> {
    let keep = chrono::Duration::from_std(ctx.cfg.keep_sandbox_for()?)?;
    let until = (chrono::Utc::now() + keep).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    tokio::fs::write(expiry_marker(sandbox), &until).await.context("writing the sandbox's expiry")?;
    Ok(until)
}

/// Remove the kept sandboxes whose expiry has passed (and, for a marker that does not read, the
/// marker's sandbox too: an expiry nobody can read is past). Runs for the daemon's life.
pub async fn sweep_kept_sandboxes(ctx: Arc<AgentCtx>) {
    let period = ctx
        .cfg
        .keep_sandbox_for()
        .unwrap_or_default()
        .div_f64(2.0)
        .clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(60));
    loop {
        tokio::time::sleep(period).await;
        let dir = ctx.cfg.drill_dir();
        let due = tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
            let markers = entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "expires"));
            markers
                .filter(|m| {
                    std::fs::read_to_string(m)
                        .ok()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t.trim()).ok())
                        .is_none_or(|t| t <= chrono::Utc::now())
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for marker in due {
            let sandbox = marker.with_extension("");
            match remove_sandbox(&sandbox).await {
                Ok(()) => {
                    let _ = tokio::fs::remove_file(&marker).await;
                    tracing::info!(sandbox = %sandbox.display(), "kept drill sandbox expired and was removed");
                }
                Err(e) => tracing::warn!(sandbox = %sandbox.display(), error = %e, "cannot remove an expired sandbox"),
            }
        }
    }
}

async fn remove_sandbox(p: &Path) -> anyhow::Result<()> {
    let p = p.to_path_buf();
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    })
    .await?
}

/// The stages in order; an `Err` is a stage that could not run at all.
async fn stages(ctx: &Arc<AgentCtx>, d: &pb::DrillJob, sandbox: &Path, drill: &mut Drill) -> anyhow::Result<()> {
    let vault = ctx.vault(&d.vault).await?;
    let transient_before = vault.transient_reads();
    drill.out.format_version = vault.config().version;
    if let Some(why) = vault.durability_unverified() {
        drill.out.anomalies.push(format!("storage durability unverified: {why}"));
    }
    drill.out.key_slot = key_slot_label(&vault).await;
    // A fresh index built from the vault's own segments, not the agent's cache: the drill proves
    // what a new machine would find. A segment that does not read is a structure failure.
    let scratch_index = sandbox.with_extension("index");
    remove_sandbox(&scratch_index).await?;
    // One listing: the segments skipped are those of the listing the index was built from.
    let synced = vault.sync_index_noting(&scratch_index).await;
    let _ = remove_sandbox(&scratch_index).await;
    let (index, skipped) = synced?;
    let unread: Vec<(String, String)> = skipped
        .into_iter()
        .map(|(id, why)| (format!("index/{id}"), format!("index segment does not read (damaged or altered): {why}")))
        .collect();
    drill.failures("structure", "index segments read", &unread);
    let (id, manifest) = vault.resolve_snapshot(&d.snapshot).await?;
    drill.out.snapshot_id = id.to_string();
    drill.out.snapshot_time.clone_from(&manifest.time);
    drill.out.source_kind = source_kind(&manifest);
    let mut nodes = vault.read_tree(&manifest, &index).await?;
    if !d.special_bits {
        let (bits, caps) = without_special_bits(&mut nodes);
        if bits + caps > 0 {
            drill.out.anomalies.push(format!(
                "the sandbox leaves out {bits} setuid/setgid bit(s) and {caps} file capabilit{} of the snapshot (the drill plan does not set special_bits)",
                if caps == 1 { "y" } else { "ies" }
            ));
        }
    }
    let scratch = match sandbox_owners(&ctx.cfg, &manifest, &mut nodes, drill) {
        Ok(s) => s,
        Err(e) => {
            drill.check("application", "sandbox", "owners", false, format!("{e:#}"));
            return Ok(());
        }
    };
    let nodes = Arc::new(nodes);

    // Structure.
    let s = check_snapshot::structure(&vault, index.clone(), nodes.clone()).await?;
    if s.broken.is_empty() {
        let detail = format!("{} entries, {} chunks in {} packs: all indexed and present", s.nodes, s.chunks, s.packs);
        drill.check("structure", format!("snapshot {}", id.short()), "chunks indexed, packs present", true, detail);
    }
    drill.failures("structure", "chunks indexed, packs present", &s.broken);

    // Restore, then the application check: the RTO ends when it passes.
    let restored = restore(vault.clone(), index.clone(), &nodes, sandbox, scratch, drill).await?;
    if restored {
        application(ctx, d, &id, &manifest, &nodes, sandbox, drill).await?;
    } else {
        drill.check("application", "sandbox", "source verifier", false, "not run: the restore is incomplete");
    }
    // The RTO ends here, passed or not: the read check after it is timed apart.
    drill.out.rto_seconds = drill.secs();

    // The cryptographic read, timed apart from the RTO.
    let read = ReadData::from_percent(d.read_data_percent, d.seed);
    let t = Instant::now();
    let r = check_snapshot::read(&vault, index, nodes, read).await?;
    drill.out.read_check_seconds = t.elapsed().as_secs_f64();
    if read == ReadData::None {
        // The plan reads no packs: no read-check row claims a PASS it did not earn.
        drill.out.anomalies.push("the plan's read share is 0 %: no pack was read apart from the restore".into());
    } else if r.damaged.is_empty() {
        let sample = r.seed.map(|s| format!(", sample seed {s}")).unwrap_or_default();
        let detail = format!(
            "{} of {} packs read ({} bytes{sample}), {} chunks decrypted and hashed",
            r.packs_read, r.packs_total, r.bytes_read, r.chunks_verified
        );
        drill.check("read", format!("snapshot {}", id.short()), "decrypt and hash", true, detail);
    }
    drill.failures("read", "decrypt and hash", &r.damaged);
    drill.out.anomalies.extend(r.transient);
    // The count is the vault's (shared with the agent's other jobs): this takes what was added
    // since the drill started.
    let transient = vault.transient_reads().saturating_sub(transient_before);
    if transient > 0 {
        drill.out.anomalies.push(format!("{transient} read(s) failed verification once and passed when repeated"));
    }
    Ok(())
}

/// The sandbox directory, new, mode 0700, in the drill directory (made if missing and set to
/// 0711: others cannot list it, so a sandbox's random name is its owner's alone). The sandbox
/// belongs to root, or to the scratch user when it will hold PostgreSQL data, so that user's
/// server can reach the copy; nobody else can enter it.
async fn make_sandbox(
    sandbox: &Path,
    owner: Option<(u32, u32)>,
) -> anyhow::Result<tresor_sources::files::beneath::Dir> {
    let p = sandbox.to_path_buf();
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let parent = p.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent).with_context(|| format!("cannot make {}", parent.display()))?;
        std::fs::set_permissions(parent, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .with_context(|| format!("cannot set the mode of {}", parent.display()))?;
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&p)
            .with_context(|| format!("cannot make the sandbox {}", p.display()))?;
        if let Some((uid, gid)) = owner {
            rustix::fs::chown(&p, Some(rustix::process::Uid::from_raw(uid)), Some(rustix::process::Gid::from_raw(gid)))
                .with_context(|| format!("cannot give the sandbox {} to the scratch user", p.display()))?;
        }
        Ok(tresor_sources::files::beneath::Dir::open_root(&p)?)
    })
    .await?
}

/// Restore into a fresh sandbox; true when every entry was restored.
async fn restore(
    vault: Arc<Vault>,
    index: Arc<LocalIndex>,
    nodes: &Arc<Vec<Node>>,
    sandbox: &Path,
    scratch: Option<(u32, u32)>,
    drill: &mut Drill,
) -> anyhow::Result<bool> {
    let t = Instant::now();
    let root = make_sandbox(sandbox, scratch).await?;
    let report = files::restore::restore_tree(vault, index, nodes.as_ref().clone(), root).await?;
    drill.out.restore_seconds = t.elapsed().as_secs_f64();
    drill.out.bytes = report.bytes;
    if report.transient_retries > 0 {
        drill.out.anomalies.push(format!("{} reads were retried after a transient failure", report.transient_retries));
    }
    let ok = report.failed.is_empty();
    let detail = format!(
        "{} files ({} bytes) and {} other entries restored in {:.2} s; {} failed",
        report.files,
        report.bytes,
        report.others,
        drill.out.restore_seconds,
        report.failed.len()
    );
    drill.check("read", "sandbox", "restore (every chunk decrypted and hashed)", ok, detail);
    drill.failures("read", "restore (every chunk decrypted and hashed)", &report.failed);
    Ok(ok)
}

async fn application(
    ctx: &Arc<AgentCtx>,
    d: &pb::DrillJob,
    id: &SnapshotId,
    manifest: &Manifest,
    nodes: &Arc<Vec<Node>>,
    sandbox: &Path,
    drill: &mut Drill,
) -> anyhow::Result<()> {
    let src = match ctx.cfg.source_options(&d.source) {
        Ok(o) => o,
        Err(e) => {
            let why = format!("this agent's agent.toml: {e:#}");
            drill.check("application", format!("[sources.{}]", d.source), "verifier settings", false, why);
            return Ok(());
        }
    };
    let opts = tresor_sources::verify::VerifyOptions {
        probe_command: src.probe_command,
        probe_timeout: src.probe_timeout,
        probes: src.probes,
        pg_bindir: src.pg_bindir,
        qdrant: ctx.cfg.sources.get(&d.source).and_then(|c| c.verify_qdrant.clone()),
    };
    let (root, nodes, sources) = (sandbox.to_path_buf(), nodes.clone(), manifest.sources.clone());
    let (files, sources) = tokio::task::spawn_blocking(move || {
        let (mut files, mut checked) = (Report::default(), Report::default());
        tresor_sources::verify::verify_files(&root, &nodes, &mut files);
        tresor_sources::verify::verify_sources(&root, &sources, &opts, &mut checked);
        (files, checked)
    })
    .await?;
    let summary = if files.ok() {
        format!(
            "{} files ({} bytes) and {} tensors match snapshot {}",
            files.files,
            files.bytes,
            files.tensors,
            id.short()
        )
    } else {
        format!("{} of the snapshot's files or tensors differ", files.failures().count())
    };
    drill.check("application", "sandbox", "files and tensors against the snapshot", files.ok(), summary);
    let shown =
        files.findings.iter().filter(|f| !f.ok).chain(sources.findings.iter().filter(|f| !f.ok || f.check != "model"));
    for f in shown.take(200) {
        drill.check("application", f.subject.clone(), &f.check, f.ok, f.detail.clone());
    }
    Ok(())
}

fn source_kind(m: &Manifest) -> String {
    if !m.source.is_empty() {
        return m.source.clone();
    }
    let mut kinds: Vec<&str> = m.sources.iter().map(|s| s.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    if kinds.is_empty() { "files".into() } else { kinds.join("+") }
}

async fn key_slot_label(vault: &Vault) -> String {
    let id = vault.slot_id().to_string();
    match vault.key_list().await {
        Ok(slots) => slots.into_iter().find(|s| s.id == id).map_or(id, |s| format!("{} ({})", s.label, s.id)),
        Err(_) => id,
    }
}
