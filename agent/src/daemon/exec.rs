//! Running one job: the same data path as the local CLI, fenced by the job's lease.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use tresor_proto::pb;
use tresor_proto::pb::job::Kind;
use tresor_proto::pb::job_result::Kind as ResultKind;
use tresor_proto::prost::Message;
use tresor_vault::Vault;
use tresor_vault::check::{self, ReadData};
use tresor_vault::ids::SnapshotId;

use super::ctx::AgentCtx;
use crate::files;
use crate::files::backup::{BackupRequest, backup_into, backup_roots};

/// Tags that tie a snapshot to its agent and source, so a catalog rebuild can place snapshots
/// that have no receipt.
pub const AGENT_TAG: &str = "tresor-agent=";
/// See [`AGENT_TAG`].
pub const SOURCE_TAG: &str = "tresor-source=";

/// Run a job to its result (success or error); never panics on bad input.
pub async fn run_job(ctx: Arc<AgentCtx>, job: pb::Job) {
    let Some(jr) = job.r#ref.clone() else { return };
    tracing::info!(job = %jr.job_id, attempt = jr.attempt, "job started");
    let outcome = execute(&ctx, &jr, job.kind).await;
    let result = match outcome {
        Ok(kind) => pb::JobResult { r#ref: Some(jr.clone()), error: String::new(), kind: Some(kind) },
        Err(e) => {
            tracing::warn!(job = %jr.job_id, error = %format!("{e:#}"), "job failed");
            pb::JobResult { r#ref: Some(jr.clone()), error: format!("{e:#}"), kind: None }
        }
    };
    ctx.leases.end_attempt(&jr);
    if let Err(e) = ctx.outbox.put_result(&result) {
        tracing::error!(error = %format!("{e:#}"), "cannot keep the job result");
    }
    ctx.outbox_wake.notify_one();
}

async fn execute(ctx: &Arc<AgentCtx>, jr: &pb::JobRef, kind: Option<Kind>) -> anyhow::Result<ResultKind> {
    match kind {
        Some(Kind::Backup(b)) => backup(ctx, jr, b).await,
        Some(Kind::Restore(r)) => restore(ctx, r).await,
        Some(Kind::Check(c)) => check(ctx, c).await,
        Some(Kind::Scan(s)) => scan(ctx, s).await,
        Some(Kind::Prune(p)) => prune(ctx, jr, p).await,
        Some(Kind::Copy(c)) => copy(ctx, jr, c).await,
        Some(Kind::Drill(d)) => Ok(ResultKind::Drill(super::drill::run(ctx, jr.attempt, d).await?)),
        Some(Kind::Documents(d)) => {
            store_documents(ctx, &d).await?;
            Ok(ResultKind::DocumentsStored(pb::Ack {}))
        }
        Some(Kind::Receipt(r)) => {
            let rec = r.receipt.context("receipt job without a receipt")?;
            store_receipt(ctx, &r.vault, &rec).await?;
            Ok(ResultKind::ReceiptStored(pb::Ack {}))
        }
        None => bail!("this agent does not know the job kind the controller sent; upgrade the agent"),
    }
}

/// Meta of a manifest for the controller.
pub fn meta_of(vault: &Vault, id: &SnapshotId, m: &tresor_vault::snapshot::Manifest) -> pb::SnapshotMeta {
    let tag = |p: &str| m.tags.iter().find_map(|t| t.strip_prefix(p)).unwrap_or_default().to_string();
    pb::SnapshotMeta {
        snapshot_id: id.to_string(),
        vault_id: vault.config().vault_id.to_string(),
        agent: tag(AGENT_TAG),
        source: tag(SOURCE_TAG),
        manifest_time: m.time.clone(),
        files: m.summary.files,
        bytes_total: m.summary.bytes,
        bytes_new: m.summary.bytes_new,
        bytes_stored: m.summary.bytes_stored,
        duration_ms: m.summary.duration_ms,
        paths: m.paths.clone(),
        receipt: None,
        host: m.host.clone(),
    }
}

async fn backup(ctx: &Arc<AgentCtx>, jr: &pb::JobRef, b: pb::BackupJob) -> anyhow::Result<ResultKind> {
    // A policy lists plain absolute paths and KIND:SPEC sources side by side.
    let (plain, specs): (Vec<&String>, Vec<&String>) = b.paths.iter().partition(|p| tresor_proto::is_plain_path(p));
    let roots = backup_roots(&plain.into_iter().map(PathBuf::from).collect::<Vec<_>>())?;
    let sources = specs
        .into_iter()
        .map(|s| s.parse::<tresor_sources::spec::SourceSpec>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = ctx.cfg.source_options(&b.source)?;
    let vault = ctx.vault(&b.vault).await?;
    let mut tags = b.tags.clone();
    tags.push(format!("{AGENT_TAG}{}", ctx.name));
    tags.push(format!("{SOURCE_TAG}{}", b.source));
    let reporter = {
        let (ctx, jr) = (ctx.clone(), jr.clone());
        let handle = tokio::runtime::Handle::current();
        Arc::new(move |read: u64, _new: u64| {
            let (ctx, jr) = (ctx.clone(), jr.clone());
            drop(handle.spawn(async move { ctx.progress(&jr, "backup", read, 0).await }));
        }) as Arc<dyn Fn(u64, u64) + Send + Sync>
    };
    let req = BackupRequest {
        sources,
        options,
        roots,
        host: ctx.name.clone(),
        tags,
        force: false,
        commit_guard: Some(ctx.leases.guard(jr)),
        progress: Some(reporter),
        quiet: true,
    };
    let done = backup_into(vault.clone(), &ctx.cache_dir(), req).await?;
    let snapshot = meta_of(&vault, &done.id, &done.manifest);
    Ok(ResultKind::Backup(pb::BackupResult {
        snapshot: Some(snapshot),
        skipped: done.errors.iter().map(|e| format!("{}: {}", e.path, e.error)).collect(),
    }))
}

/// Store a receipt in its vault; kept in the outbox until that works.
pub async fn store_receipt(ctx: &AgentCtx, vault: &str, r: &pb::Receipt) -> anyhow::Result<()> {
    let v = ctx.vault(vault).await?;
    let id: SnapshotId = r.snapshot_id.parse().map_err(|_| anyhow::anyhow!("receipt names a bad snapshot id"))?;
    v.put_receipt(&id, &r.encode_to_vec()).await?;
    Ok(())
}

/// Store signed documents write-once in their vault; kept in the outbox until that works. A
/// document the vault refuses for good (a bad name, or a different document already under the
/// name) is reported loudly and not retried; the others are still stored.
pub async fn store_documents(ctx: &AgentCtx, d: &pb::StoreDocuments) -> anyhow::Result<()> {
    let v = ctx.vault(&d.vault).await?;
    let mut retry = None;
    for doc in &d.documents {
        match v.put_document(&doc.name, &doc.body).await {
            Ok(()) => {}
            Err(tresor_vault::Error::Invalid(why)) => {
                tracing::error!(vault = %d.vault, document = %doc.name, error = %why, "signed document refused by the vault for good; not retried");
            }
            Err(e) => retry = Some(anyhow::Error::new(e).context(format!("storing {}", doc.name))),
        }
    }
    retry.map_or(Ok(()), Err)
}

fn is_nonempty_dir(p: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(p) {
        Ok(mut it) => Ok(it.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            bail!("target {} exists and is not a directory", p.display())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read target {}", p.display())),
    }
}

async fn restore(ctx: &Arc<AgentCtx>, r: pb::RestoreJob) -> anyhow::Result<ResultKind> {
    let started = Instant::now();
    // The controller normalised the target already; this host checks again, against its own
    // restore roots: an operator of the controller alone cannot make it write elsewhere.
    let target = tresor_proto::normalize_target(Path::new(&r.target)).map_err(anyhow::Error::msg)?;
    let roots = ctx.cfg.restore_roots();
    let Some((root, rel)) = tresor_sources::files::target::within(&target, &roots) else {
        bail!(
            "restore target {} is outside this agent's restore roots ({}); the host's admin can add a root to restore_roots in agent.toml",
            target.display(),
            roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    };
    let vault = ctx.vault(&r.vault).await?;
    let index = vault.sync_index(&ctx.cache_dir()).await?;
    let (id, manifest) = vault.resolve_snapshot(&r.snapshot).await?;
    let nodes = files::restore::select(vault.read_tree(&manifest, &index).await?, &r.include)?;
    let mut result = pb::RestoreResult {
        snapshot_id: id.to_string(),
        target: target.display().to_string(),
        dry_run: r.dry_run,
        ..Default::default()
    };
    if r.dry_run {
        if is_nonempty_dir(&target)? && !r.force {
            return Err(tresor_sources::files::target::not_empty(&target).into());
        }
        for n in &nodes {
            if n.kind == tresor_vault::snapshot::NodeKind::File {
                result.files += 1;
                result.bytes += n.size;
            } else {
                result.others += 1;
            }
        }
        result.seconds = started.elapsed().as_secs_f64();
        return Ok(ResultKind::Restore(result));
    }
    let key = files::restore::restore_key(&id, &r.include);
    // The host's admin named the root: make it if it is not there yet.
    tokio::fs::create_dir_all(root)
        .await
        .with_context(|| format!("cannot make the restore root {}", root.display()))?;
    let dest = files::restore::Destination { base: root.to_path_buf(), rel, force: r.force, key, place_partial: false };
    let (report, staged) = files::restore::restore_to(vault, index, nodes, dest).await?;
    result.files = report.files;
    result.bytes = report.bytes;
    result.others = report.others;
    result.already_in_place = report.files_skipped;
    result.failed = report.failed.iter().map(|(p, why)| format!("{p}: {why}")).collect();
    result.seconds = started.elapsed().as_secs_f64();
    if !result.failed.is_empty() {
        let kept = if staged { "the staging directory is kept, re-run" } else { "re-run" };
        bail!(
            "{} entries could not be restored (first: {}); {kept} the restore to finish",
            result.failed.len(),
            result.failed[0]
        );
    }
    Ok(ResultKind::Restore(result))
}

async fn check(ctx: &Arc<AgentCtx>, c: pb::CheckJob) -> anyhow::Result<ResultKind> {
    let vault = ctx.vault(&c.vault).await?;
    let read = ReadData::from_percent(c.read_data_percent, rand::random());
    let scratch = ctx.cfg.state_dir.join("check-scratch");
    std::fs::create_dir_all(&scratch)?;
    let report = check::run(vault, read, &scratch).await?;
    let _ = std::fs::remove_dir_all(&scratch);
    let problems: Vec<String> = report.problems.iter().map(|p| format!("{}: {}", p.object, p.detail)).collect();
    if !report.is_ok() {
        bail!("check found damage: {}", problems.join("; "));
    }
    Ok(ResultKind::Check(pb::CheckResult {
        ok: true,
        packs_read: report.packs_read as u64,
        chunks_verified: report.chunks_verified,
        problems,
    }))
}

async fn scan(ctx: &Arc<AgentCtx>, s: pb::ScanJob) -> anyhow::Result<ResultKind> {
    let vault = ctx.vault(&s.vault).await?;
    let mut receipts: HashMap<SnapshotId, pb::Receipt> = HashMap::new();
    for (id, body) in vault.receipts().await? {
        match body.map_err(anyhow::Error::msg).and_then(|b| Ok(pb::Receipt::decode(b.as_slice())?)) {
            Ok(r) => {
                let _ = receipts.insert(id, r);
            }
            Err(e) => {
                tracing::warn!(snapshot = %id, error = %e, "receipt unreadable; the snapshot counts as having none")
            }
        }
    }
    let mut snapshots = Vec::new();
    for (id, m) in vault.snapshots().await? {
        match m {
            Ok(m) => {
                let mut meta = meta_of(&vault, &id, &m);
                meta.receipt = receipts.remove(&id);
                snapshots.push(meta);
            }
            Err(e) => tracing::warn!(snapshot = %id, error = %e, "manifest unreadable; left out of the scan"),
        }
    }
    Ok(ResultKind::Scan(pb::ScanResult { vault_id: vault.config().vault_id.to_string(), snapshots }))
}

async fn prune(ctx: &Arc<AgentCtx>, jr: &pb::JobRef, p: pb::PruneJob) -> anyhow::Result<ResultKind> {
    let (slots_revoked, revoke_error) = if p.revoke_slots.is_empty() {
        (Vec::new(), String::new())
    } else {
        ctx.leases.check(&jr.job_id, jr.attempt).map_err(anyhow::Error::msg)?;
        match revoke_slots(ctx, &p.vault, &p.revoke_slots).await {
            Ok((removed, locked)) => {
                // Only what was really deleted counts: a slot id the revoked agent reported that
                // is not in the vault stays pending (a false report must not pass as a revocation).
                let absent: Vec<&String> =
                    p.revoke_slots.iter().filter(|s| !removed.contains(s) && !locked.contains(s)).collect();
                let why = if !locked.is_empty() {
                    format!(
                        "slot(s) {} are left out of the key epoch (they open no new data) but Object Lock keeps them until their retention passes; a later prune removes them",
                        locked.join(", ")
                    )
                } else if absent.is_empty() {
                    String::new()
                } else {
                    format!(
                        "slot(s) {} are not in the vault: the revoked agent reported a slot that does not exist, or it was removed by hand; find its real slot with `tresor-agent key list` and remove it",
                        absent.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    )
                };
                (removed, why)
            }
            Err(e) => {
                tracing::error!(vault = %p.vault, error = %format!("{e:#}"), "revoked key slots not removed");
                (Vec::new(), format!("{e:#}"))
            }
        }
    };
    let vault = ctx.vault(&p.vault).await?;
    let mut forgotten = Vec::new();
    for s in &p.forget {
        ctx.leases.check(&jr.job_id, jr.attempt).map_err(anyhow::Error::msg)?;
        let id: SnapshotId = s.parse().map_err(|_| anyhow::anyhow!("prune: bad snapshot id {s:?}"))?;
        // Kept by Object Lock: not reported as forgotten, so the controller plans it again.
        match vault.forget_snapshot(&id).await? {
            None => forgotten.push(s.clone()),
            Some(kept) => tracing::info!(vault = %p.vault, snapshot = %s, "{kept}; forgotten by a later prune"),
        }
    }
    let mut expected = std::collections::BTreeSet::new();
    for s in &p.expected {
        expected.insert(s.parse().map_err(|_| anyhow::anyhow!("prune: bad expected snapshot id {s:?}"))?);
    }
    // Every snapshot this prune lets go, forgotten now or kept by a lock until a later prune:
    // their locks are no longer extended.
    let letting_go = p.forget.iter().filter_map(|s| s.parse().ok()).collect();
    let opts = tresor_vault::gc::GcOptions {
        forgotten: letting_go,
        grace: std::time::Duration::from_secs(u64::from(p.gc_grace_seconds)),
        guard: Some(ctx.leases.guard(jr)),
        expected,
        maintenance_interval: std::time::Duration::from_secs(p.maintenance_interval_seconds),
    };
    // Whatever GC does next, the controller hears what was forgotten and revoked, and the key
    // epoch new data is written under.
    let done =
        pb::PruneResult { forgotten, slots_revoked, revoke_error, key_epoch: vault.key_epoch(), ..Default::default() };
    let r = match tresor_vault::gc::run(vault, &ctx.cache_dir(), &opts).await {
        Ok(r) => r,
        // Not a failure to retry: the listing is short, and the controller must hear what it lacked.
        Err(tresor_vault::Error::SnapshotsMissing(missing)) => {
            tracing::error!(vault = %p.vault, missing = missing.len(), "snapshot listing short; GC deleted nothing");
            return Ok(ResultKind::Prune(pb::PruneResult { listing_missing: missing, ..done }));
        }
        // A lost lease is this attempt's end, not a finding about the vault.
        Err(e) if ctx.leases.check(&jr.job_id, jr.attempt).is_err() => return Err(e.into()),
        // A listing page or a read failed, or what GC saw was implausible: nothing more is
        // deleted, and the controller hears why (a failed job would only be retried, unseen).
        Err(e) => {
            tracing::error!(vault = %p.vault, error = %e, "GC stopped");
            return Ok(ResultKind::Prune(pb::PruneResult { gc_error: e.to_string(), ..done }));
        }
    };
    Ok(ResultKind::Prune(pb::PruneResult {
        packs_marked: r.packs_marked as u64,
        packs_deleted: r.packs_deleted as u64,
        bytes_freed: r.bytes_freed,
        segments_compacted: r.segments_compacted as u64,
        postponed: r.postponed.unwrap_or_default(),
        packs_unreferenced: r.unreferenced as u64,
        gc_warnings: r.false_index_entries.iter().chain(&r.kept).cloned().collect(),
        swept: r.swept,
        quarantined: r.quarantined,
        deleted: r.deleted,
        locks_extended: r.locks_extended as u64,
        lock_errors: r.lock_errors,
        old_versions_removed: r.old_versions_removed as u64,
        packs_waiting: r.waiting.len() as u64,
        ..done
    }))
}

/// Copy snapshots to the second site `c.to`: its keys first (so a revocation at the source
/// reaches it), then the data. The copy's own handle is dropped after, so the next job there
/// opens it under the epoch it has now.
async fn copy(ctx: &Arc<AgentCtx>, jr: &pb::JobRef, c: pb::CopyJob) -> anyhow::Result<ResultKind> {
    let source = ctx.vault(&c.from).await?;
    let to = ctx.site(&c.to)?;
    ctx.leases.check(&jr.job_id, jr.attempt).map_err(anyhow::Error::msg)?;
    let site = tresor_vault::copy::mirror(&source, &to, None).await.with_context(|| format!("the copy {}", c.to))?;
    let dest = Arc::new(ctx.vault_owned(&c.to).await?.0);
    if site.created {
        ctx.vaults_changed();
    }
    let mut snapshots = Vec::new();
    for s in &c.snapshots {
        snapshots.push(s.parse().map_err(|e| anyhow::anyhow!("snapshot id {s:?}: {e}"))?);
    }
    let opts =
        tresor_vault::copy::CopyOptions { snapshots: Some(snapshots), host: crate::host::hostname(), uploads: 4 };
    ctx.progress(jr, "copying", 0, 0).await;
    let r = tresor_vault::copy::run(&source, &dest, &ctx.cache_dir(), &opts).await?;
    let mut copied_meta = Vec::new();
    for id in &r.copied {
        let m = dest.load_snapshot(id).await?;
        let mut meta = meta_of(&dest, id, &m);
        meta.receipt = dest.receipt(id).await?.and_then(|b| pb::Receipt::decode(b.as_slice()).ok());
        copied_meta.push(meta);
    }
    Ok(ResultKind::Copy(pb::CopyResult {
        copied: r.copied.iter().map(ToString::to_string).collect(),
        held: r.held.iter().map(ToString::to_string).collect(),
        copied_meta,
        gone: r.gone.iter().map(ToString::to_string).collect(),
        documents_copied: r.documents_copied as u64,
        failed: r.failed.iter().map(|f| format!("{}: {}", f.snapshot, f.why)).collect(),
        packs_copied: r.packs_copied as u64,
        packs_present: r.packs_present as u64,
        bytes_copied: r.bytes_copied,
        receipts_copied: r.receipts_copied as u64,
        created: site.created,
        epochs_copied: site.epochs_copied as u64,
        slots_copied: site.slots_copied as u64,
        slots_removed: site.slots_removed as u64,
        slots_waiting: site.slots_waiting,
        vault_id: dest.config().vault_id.to_string(),
    }))
}

/// Remove the key slots of revoked agents with one new key epoch. This agent's own slot is
/// upgraded first if it was made before key epochs, so it is carried into the new one.
async fn revoke_slots(
    ctx: &Arc<AgentCtx>,
    vault: &str,
    slots: &[String],
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let (mut v, secret) = ctx.vault_owned(vault).await?;
    if let Some(slot) = v.key_upgrade(&secret).await? {
        tracing::info!(vault, slot = %slot.id, "own key slot upgraded to take key epochs");
    }
    let ids: Vec<&str> = slots.iter().map(String::as_str).collect();
    let report = v.remove_slots(&ids, "agent revoked at the controller").await?;
    tracing::warn!(vault, epoch = report.epoch, removed = ?report.removed, locked = ?report.locked, "revoked key slots left out of a new key epoch and removed (those Object Lock keeps, once it passes)");
    Ok((report.removed, report.locked))
}
