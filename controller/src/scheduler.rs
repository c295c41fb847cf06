//! The scheduler: turns schedule slots into jobs, and drives dispatch and lease expiry.
//!
//! Only the newest slot at or before now counts, and each source remembers the last slot it
//! turned into a job (in the catalog). So slots missed while the controller was down are caught
//! up once, not once per missed slot.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use crate::core::Controller;
use crate::error::Result;
use crate::jobs::{JobRecord, JobSpec, JobState};

/// How often the scheduler looks at the clock when nothing wakes it.
pub const TICK: Duration = Duration::from_millis(500);

/// Run until `stop` turns true.
pub async fn run(ctl: Arc<Controller>, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(e) = tokio::task::block_in_place(|| ctl.jobs.tick()) {
            tracing::error!(error = %e, "dispatch failed");
        }
        if let Err(e) = schedule_due(&ctl).await {
            tracing::error!(error = %e, "scheduling failed");
        }
        ctl.sweep_refusals();
        tokio::select! {
            _ = stop.changed() => return,
            () = ctl.jobs.woken() => {}
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

fn has_active(ctl: &Controller, agent: &str, pred: impl Fn(&JobSpec) -> bool) -> Result<bool> {
    Ok(ctl
        .catalog
        .active_jobs()?
        .iter()
        .any(|j| j.agent_name == agent && matches!(j.state, JobState::Queued | JobState::Running) && pred(&j.spec)))
}

/// Queue a copy for every vault whose copy slot has come (a slot missed while the controller
/// was down runs once; the first sight of a schedule starts from its current slot).
fn schedule_copies(ctl: &Controller, now: chrono::DateTime<chrono::Utc>) -> Result<bool> {
    let mut wrote = false;
    for policy in ctl.policies().values() {
        for v in &policy.vaults {
            let Some(copy) = &v.copy else { continue };
            let key = format!("copy-slot/{}", v.name);
            let Some(slot) = copy.schedule.last_slot(now) else { continue };
            match ctl.catalog.meta_get(&key)? {
                None => ctl.catalog.meta_put(&key, slot.timestamp())?,
                Some(l) if slot.timestamp() > l => {
                    match ctl.start_copy(&v.name, "schedule") {
                        Ok(job) => {
                            tracing::info!(vault = %v.name, to = %copy.to, job = %job.id, "scheduled copy queued")
                        }
                        Err(e) => tracing::warn!(vault = %v.name, error = %e, "scheduled copy not queued"),
                    }
                    ctl.catalog.meta_put(&key, slot.timestamp())?;
                }
                Some(_) => continue,
            }
            wrote = true;
        }
    }
    Ok(wrote)
}

/// Queue every job whose slot has come.
///
/// # Errors
/// Catalog failures.
pub async fn schedule_due(ctl: &Controller) -> Result<()> {
    let now = Utc::now();
    let mut wrote = false;
    for policy in ctl.policies().values() {
        for s in &policy.sources {
            let key = format!("{}/{}", s.agent, s.name);
            let mut rec = ctl.catalog.source(&key)?;
            if rec.last_slot_unix == 0 {
                // A source the catalog lost (a rebuilt catalog): start from the current slot, as
                // when its policy was applied, instead of running an old slot now.
                rec.last_slot_unix = s.schedule.last_slot(now).map_or(1, |t| t.timestamp());
                rec.tracked_since_unix = rec.tracked_since_unix.max(now.timestamp());
                if let Some(c) = &s.check {
                    rec.last_check_slot_unix = c.schedule.last_slot(now).map_or(1, |t| t.timestamp());
                }
                ctl.catalog.put_source(&key, &rec)?;
                wrote = true;
                continue;
            }
            if let Some(slot) = s.schedule.last_slot(now)
                && slot.timestamp() > rec.last_slot_unix
                && now >= slot + s.schedule.jitter_for(&key)
            {
                let busy =
                    has_active(ctl, &s.agent, |j| matches!(j, JobSpec::Backup { source, .. } if *source == s.name))?;
                if busy {
                    tracing::info!(source = %key, "slot skipped: the previous backup is still queued or running");
                } else {
                    match ctl.start_backup(&key, "schedule") {
                        Ok(job) => {
                            tracing::info!(source = %key, job = %job.id, slot_unix = slot.timestamp(), "scheduled backup queued")
                        }
                        Err(e) => tracing::warn!(source = %key, error = %e, "scheduled backup not queued"),
                    }
                }
                rec.last_slot_unix = slot.timestamp();
                ctl.catalog.put_source(&key, &rec)?;
                wrote = true;
            }
            if let Some(check) = &s.check
                && let Some(slot) = check.schedule.last_slot(now)
                && slot.timestamp() > rec.last_check_slot_unix
            {
                if let Some((id, a)) = ctl.state.find_agent(&s.agent) {
                    let spec = JobSpec::Check { read_data_percent: check.read_data_percent, source: key.clone() };
                    let job = JobRecord::new(id, a.name, s.vault.clone(), spec, "schedule", ctl.config.max_attempts);
                    ctl.jobs.submit(&job)?;
                }
                rec.last_check_slot_unix = slot.timestamp();
                ctl.catalog.put_source(&key, &rec)?;
                wrote = true;
            }
        }
    }
    for policy in ctl.policies().values() {
        for v in &policy.vaults {
            let Some(prune) = &v.prune else { continue };
            let key = format!("prune-slot/{}", v.name);
            let last = ctl.catalog.meta_get(&key)?;
            let Some(slot) = prune.last_slot(now) else { continue };
            match last {
                // First sight of this vault's schedule: start from the current slot.
                None => ctl.catalog.meta_put(&key, slot.timestamp())?,
                Some(l) if slot.timestamp() > l => {
                    let busy = has_active(ctl, &v.maintainer, |j| matches!(j, JobSpec::Prune { .. }))?;
                    if !busy {
                        match ctl.start_prune(&v.name, "schedule") {
                            Ok((job, plan)) => {
                                tracing::info!(vault = %v.name, job = %job.id, forget = plan.forget.len(), "scheduled prune queued")
                            }
                            Err(e) => tracing::warn!(vault = %v.name, error = %e, "scheduled prune not queued"),
                        }
                    }
                    ctl.catalog.meta_put(&key, slot.timestamp())?;
                }
                Some(_) => continue,
            }
            wrote = true;
        }
    }
    wrote |= schedule_copies(ctl, now)?;
    wrote |= ctl.schedule_drills()?;
    if now.timestamp() - ctl.catalog.meta_get("orphan-drill-scan-at")?.unwrap_or(0) >= 10 {
        ctl.report_orphan_drills()?;
        ctl.catalog.meta_put("orphan-drill-scan-at", now.timestamp())?;
    }
    let every = ctl.config.audit_checkpoint_every.as_secs() as i64;
    let last = ctl.catalog.meta_get("audit-checkpoint-at")?.unwrap_or(0);
    if now.timestamp() - last >= every {
        // The clock restarts only when a checkpoint was made, so the first entries of a new log
        // are anchored at once.
        if let Some(seq) = ctl.audit_checkpoint()? {
            tracing::info!(seq, "audit log checkpoint signed and sent to the vaults");
            ctl.catalog.meta_put("audit-checkpoint-at", now.timestamp())?;
            wrote = true;
        }
    }
    if wrote {
        ctl.catalog.flush().await?;
    }
    Ok(())
}

/// Queue a scan of every vault in the policies on its maintainer. Returns the vault count and
/// the vaults that could not be queued.
///
/// # Errors
/// Catalog failures.
pub fn queue_rebuild(ctl: &Controller) -> Result<(u32, Vec<String>)> {
    let mut queued = 0;
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for policy in ctl.policies().values() {
        for v in &policy.vaults {
            if !seen.insert(v.name.clone()) {
                continue;
            }
            match ctl.state.find_agent(&v.maintainer) {
                Some((id, a)) if !ctl.state.is_revoked(&id) => {
                    let job =
                        JobRecord::new(id, a.name, v.name.clone(), JobSpec::Scan, "rebuild", ctl.config.max_attempts);
                    ctl.jobs.submit(&job)?;
                    queued += 1;
                }
                _ => problems.push(format!("vault {}: maintainer {} is not an enrolled agent", v.name, v.maintainer)),
            }
        }
    }
    Ok((queued, problems))
}
