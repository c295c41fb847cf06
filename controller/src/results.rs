//! Job results: what a finished attempt means for the catalog (snapshots and their receipts,
//! source states, prunes, scans, drills), and its audit entry.

use tresor_proto::pb;

use crate::catalog::SnapshotRecord;
use crate::core::Controller;
use crate::error::{Error, Result};
use crate::ids::AgentId;
use crate::jobs::JobSpec;

impl Controller {
    /// Accept a job result and record what it means; returns the receipt for a backup.
    ///
    /// # Errors
    /// Stale attempts; catalog failures.
    pub async fn finish(&self, agent: &AgentId, result: pb::JobResult) -> Result<pb::FinishReply> {
        // A result must be of its job's kind (checked before anything is recorded).
        if let Some(known) = result.r#ref.as_ref().map(|r| self.catalog.job(&r.job_id)).transpose()?.flatten() {
            use pb::job_result::Kind as K;
            let kind_fits = match (&result.kind, &known.spec) {
                (None, _) => !result.error.is_empty(),
                (Some(K::Backup(_)), JobSpec::Backup { .. })
                | (Some(K::Restore(_)), JobSpec::Restore { .. })
                | (Some(K::Check(_)), JobSpec::Check { .. })
                | (Some(K::Prune(_)), JobSpec::Prune { .. })
                | (Some(K::Copy(_)), JobSpec::Copy { .. })
                | (Some(K::Scan(_)), JobSpec::Scan)
                | (Some(K::Drill(_)), JobSpec::Drill(_))
                | (Some(K::DocumentsStored(_)), JobSpec::Documents { .. }) => true,
                _ => false,
            };
            if !kind_fits {
                return Err(Error::InvalidArgument(format!(
                    "the result of job {} does not match its kind ({})",
                    known.id,
                    known.spec.kind()
                )));
            }
        }
        use pb::job_result::Kind;
        if let (Some(Kind::Backup(b)), true, Some(r)) = (&result.kind, result.error.is_empty(), &result.r#ref)
            && let Some(known) = self.catalog.job(&r.job_id)?
            && known.agent_id == *agent
            && let JobSpec::Backup { source, .. } = &known.spec
            && let Some(why) = self.foreign_claim(&known, source, &b.snapshot.clone().unwrap_or_default())?
        {
            return Err(self.refuse_result(&known, source, why).await?);
        }
        let job = match self.jobs.finish(agent, &result)? {
            crate::jobs::Finished::First(job) => job,
            // The first delivery of a good backup stopped after the job was recorded but before its
            // receipt was kept (a crash, a catalog error): this delivery finishes what it began.
            crate::jobs::Finished::Again(job)
                if job.receipt.is_none()
                    && matches!(job.spec, JobSpec::Backup { .. })
                    && matches!(result.kind, Some(Kind::Backup(_)))
                    && result.error.is_empty() =>
            {
                job
            }
            crate::jobs::Finished::Again(job) => {
                if let JobSpec::Drill(d) = &job.spec {
                    // The report signed the first time goes back again; if the first delivery
                    // stopped before it was kept, it is made now from the recorded result.
                    let recorded = job.result().and_then(|r| match r.kind {
                        Some(Kind::Drill(x)) => Some(x),
                        _ => None,
                    });
                    let documents = self.finish_drill(&job, d, recorded.as_ref(), &job.error)?;
                    self.catalog.flush().await?;
                    return Ok(pb::FinishReply { receipt: None, documents, documents_vault: job.vault.clone() });
                }
                let receipt = job.receipt.as_deref().and_then(|b| {
                    use base64::Engine;
                    use tresor_proto::prost::Message;
                    let bytes = base64::engine::general_purpose::STANDARD.decode(b).ok()?;
                    pb::Receipt::decode(bytes.as_slice()).ok()
                });
                return Ok(pb::FinishReply { receipt, ..Default::default() });
            }
        };
        let mut reply = pb::FinishReply::default();
        let source_key = match &job.spec {
            JobSpec::Backup { source, .. } => Some(format!("{}/{}", job.agent_name, source)),
            _ => None,
        };
        if let JobSpec::Check { source, .. } = &job.spec
            && !source.is_empty()
            && matches!(job.state, crate::jobs::JobState::Succeeded | crate::jobs::JobState::Failed)
        {
            let mut s = self.catalog.source(source)?;
            s.last_check_error = if result.error.is_empty() { String::new() } else { result.error.clone() };
            self.catalog.put_source(source, &s)?;
        }
        match (&result.kind, result.error.is_empty(), &job.spec) {
            (Some(Kind::Backup(b)), true, JobSpec::Backup { source, .. }) => {
                let meta = b.snapshot.clone().unwrap_or_default();
                let mut receipt = pb::Receipt {
                    vault_id: meta.vault_id.clone(),
                    snapshot_id: meta.snapshot_id.clone(),
                    agent: job.agent_name.clone(),
                    source: source.clone(),
                    committed_unix_ms: chrono::Utc::now().timestamp_millis(),
                    signature: vec![],
                    job_id: job.id.to_string(),
                };
                receipt.signature = self.state.sign(&tresor_proto::receipt_signing_bytes(&receipt));
                let rec = snapshot_record(&meta, &job.vault, &receipt);
                self.catalog.put_snapshot(&rec)?;
                if let Some(key) = &source_key {
                    let mut s = self.catalog.source(key)?;
                    s.last_success_unix = receipt.committed_unix_ms / 1000;
                    s.last_error.clear();
                    s.refused_result.clear();
                    s.failures = 0;
                    s.last_duration_ms = meta.duration_ms;
                    s.last_bytes_new = meta.bytes_new;
                    s.last_bytes_total = meta.bytes_total;
                    self.catalog.put_source(key, &s)?;
                }
                self.jobs.set_receipt(&job, &receipt)?;
                reply.receipt = Some(receipt);
            }
            (Some(Kind::Copy(c)), true, JobSpec::Copy { to, .. }) => self.record_copy(&job, to, c)?,
            (_, false, JobSpec::Copy { .. }) if job.state == crate::jobs::JobState::Failed => {
                self.copy_failed(&job, &result.error)?;
            }
            (Some(Kind::Scan(scan)), true, _) => {
                let n = self.merge_scan(&job.vault, scan)?;
                tracing::info!(vault = %job.vault, snapshots = n, "catalog rebuilt from the vault");
            }
            (Some(Kind::Prune(p)), true, _) => {
                // Every deletion, with this run (the job) and why the pack could go; and what GC
                // found wrong, one by one (alerted on the vault below until a clean run).
                let actor = format!("agent:{}", job.agent_name);
                let object = format!("vault {}", job.vault);
                let run = format!("vault {} (prune {})", job.vault, job.id);
                let entries = [
                    ("gc.delete", &run, crate::audit_log::OK, &p.deleted),
                    ("gc.kept", &object, crate::audit_log::FAILED, &p.gc_warnings),
                    ("gc.quarantine", &object, crate::audit_log::FAILED, &p.quarantined),
                    ("lock.extend_failed", &object, crate::audit_log::FAILED, &p.lock_errors),
                ];
                for (action, object, outcome, items) in entries {
                    for item in items {
                        self.audit(&actor, action, object, outcome, item);
                    }
                }
                let mut v = self.catalog.vault(&job.vault)?;
                self.note_revocations(&job, p, &mut v);
                let short = (!p.listing_missing.is_empty()).then(|| {
                    format!(
                        "the vault's snapshot listing lacked {} snapshot(s) the catalog holds receipts for ({}); GC deleted nothing",
                        p.listing_missing.len(),
                        p.listing_missing.join(", ")
                    )
                });
                if let Some(why) = &short {
                    self.audit(&actor, "gc.listing_short", &object, crate::audit_log::FAILED, why);
                }
                let aborted =
                    (!p.gc_error.is_empty()).then(|| format!("GC stopped on a storage error: {}", p.gc_error));
                if let Some(why) = &aborted {
                    self.audit(&actor, "gc.aborted", &object, crate::audit_log::FAILED, why);
                }
                let findings: Vec<&String> =
                    short.iter().chain(&aborted).chain(&p.gc_warnings).chain(&p.quarantined).collect();
                let warning = match findings.len() {
                    0 if p.swept => String::new(),
                    0 => v.gc_warning.clone(),
                    n => format!("{n} finding(s), first: {}", findings[0]),
                };
                v.gc_warning = warning;
                // A run that stopped before extending says nothing about the locks.
                let stopped = !p.gc_error.is_empty() || !p.listing_missing.is_empty();
                v.lock_error = match p.lock_errors.as_slice() {
                    [] if stopped => v.lock_error.clone(),
                    [] => String::new(),
                    [first, ..] => format!("{} object(s), first: {first}", p.lock_errors.len()),
                };
                self.catalog.put_vault(&job.vault, &v)?;
                if self.copy_source_of(&job.vault).is_some() {
                    // A second site: its records are its own, under its source's vault id.
                    for s in &p.forgotten {
                        self.catalog.remove_copy(&job.vault, s)?;
                    }
                } else if let Some(vid) = self.known_vault_id(&job.vault) {
                    for s in &p.forgotten {
                        self.catalog.remove_snapshot(&vid, s)?;
                    }
                }
                let planned = match &job.spec {
                    JobSpec::Prune { reasons, .. } => Some(reasons),
                    _ => None,
                };
                for s in &p.forgotten {
                    // Jobs queued before reasons were kept have none: the generic words remain.
                    let rule = planned.and_then(|r| r.get(s)).map_or("retention", String::as_str);
                    let reason = format!("{rule} ({} prune, job {})", job.trigger, job.id);
                    self.audit(
                        &format!("agent:{}", job.agent_name),
                        "prune.delete",
                        &format!("snapshot {s} in vault {}", job.vault),
                        crate::audit_log::OK,
                        &reason,
                    );
                }
            }
            (Some(Kind::Drill(d)), true, JobSpec::Drill(spec)) => {
                reply.documents = self.finish_drill(&job, spec, Some(d), "")?;
                reply.documents_vault.clone_from(&job.vault);
                let _ = self.audit_checkpoint()?;
            }
            (_, false, JobSpec::Drill(spec)) if job.state == crate::jobs::JobState::Failed => {
                reply.documents = self.finish_drill(&job, spec, None, &result.error)?;
                reply.documents_vault.clone_from(&job.vault);
                let _ = self.audit_checkpoint()?;
            }
            (_, false, _) => {
                if let Some(key) = &source_key {
                    // Every failed attempt counts for metrics; the source is failing once the job
                    // has used up its attempts.
                    let mut s = self.catalog.source(key)?;
                    s.failures_total += 1;
                    if job.state == crate::jobs::JobState::Failed {
                        s.last_error = result.error.clone();
                        s.failures += 1;
                    }
                    self.catalog.put_source(key, &s)?;
                }
            }
            _ => {}
        }
        if !matches!(job.spec, JobSpec::Drill(_)) {
            self.audit_result(&job, &result);
        }
        self.catalog.flush().await?;
        Ok(reply)
    }

    /// Why a backup result must not be accepted for `job`, if it must not: it names a vault other
    /// than the job's, an agent or source other than the job's, or a snapshot the catalog already
    /// holds for another job (a second claim: a compromised agent taking over another source's
    /// snapshot, so retention would group it under the wrong source and forget it).
    fn foreign_claim(
        &self,
        job: &crate::job::JobRecord,
        source: &str,
        meta: &pb::SnapshotMeta,
    ) -> Result<Option<String>> {
        let id = &meta.snapshot_id;
        if !crate::fields::snapshot_id_ok(id) {
            return Ok(Some(format!("the result names no valid snapshot id ({:?})", short(id))));
        }
        if let Some(v) = self.known_vault_id(&job.vault)
            && v != meta.vault_id
        {
            return Ok(Some(format!(
                "the result names vault {}, but job {} backs up to vault {} ({v})",
                short(&meta.vault_id),
                job.id,
                job.vault
            )));
        }
        if (!meta.agent.is_empty() && meta.agent != job.agent_name)
            || (!meta.source.is_empty() && meta.source != source)
        {
            return Ok(Some(format!(
                "the result names {}/{}, but job {} is {}/{source}",
                short(&meta.agent),
                short(&meta.source),
                job.id,
                job.agent_name
            )));
        }
        let Some(held) = self.catalog.snapshot(&meta.vault_id, id)? else { return Ok(None) };
        let ours = held.job.as_deref() == Some(job.id.as_str());
        // A vault scan may have seen the snapshot committed before its result arrived: that
        // record carries no receipt and the same source.
        let seen_by_scan = held.receipt_sig.is_none() && held.source == source;
        if ours || seen_by_scan {
            return Ok(None);
        }
        Ok(Some(format!(
            "snapshot {} is already claimed by {}/{}{}",
            &id[..16],
            held.agent,
            held.source,
            held.job.map(|j| format!(" (job {j})")).unwrap_or_default()
        )))
    }

    /// Refuse a backup result: audited, kept on the source for an alert until its next good
    /// backup, and answered with an error the agent does not retry.
    async fn refuse_result(&self, job: &crate::job::JobRecord, source: &str, why: String) -> Result<Error> {
        tracing::warn!(job = %job.id, agent = %job.agent_name, why = %why, "backup result refused");
        self.audit(
            &format!("agent:{}", job.agent_name),
            "backup.result_refused",
            &format!("job {} ({}/{source}, vault {})", job.id, job.agent_name, job.vault),
            crate::audit_log::REFUSED,
            &why,
        );
        let key = format!("{}/{source}", job.agent_name);
        let mut s = self.catalog.source(&key)?;
        s.refused_result = format!("job {}: {why}", job.id);
        self.catalog.put_source(&key, &s)?;
        self.catalog.flush().await?;
        Ok(Error::InvalidArgument(format!("backup result of job {} refused: {why}", job.id)))
    }

    /// The id of the vault named `vault`: from a live heartbeat, else from the catalog's own
    /// records of its snapshots.
    /// A prune's key-slot removals: the slots gone leave the vault's list (audited with the new
    /// key epoch); a failure is kept for the alert and audited.
    fn note_revocations(&self, job: &crate::job::JobRecord, p: &pb::PruneResult, v: &mut crate::catalog::VaultRecord) {
        let actor = format!("agent:{}", job.agent_name);
        let object = format!("vault {}", job.vault);
        let removed: Vec<&String> = v.revoke_slots.iter().filter(|s| p.slots_revoked.contains(s)).collect();
        if !removed.is_empty() {
            let names = removed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
            let reason = format!("slots {names} removed; key epoch {} began without them", p.key_epoch);
            self.audit(&actor, "key.epoch", &object, crate::audit_log::OK, &reason);
        }
        v.revoke_slots.retain(|s| !p.slots_revoked.contains(s));
        if !p.revoke_error.is_empty() && p.revoke_error != v.revoke_error {
            self.audit(&actor, "key.revoke", &object, crate::audit_log::FAILED, &p.revoke_error);
        }
        v.revoke_error = if v.revoke_slots.is_empty() { String::new() } else { p.revoke_error.clone() };
        if p.key_epoch > 0 {
            v.key_epoch = p.key_epoch;
        }
    }

    pub(crate) fn known_vault_id(&self, vault: &str) -> Option<String> {
        self.vault_id_of(vault)
            .or_else(|| self.catalog.snapshots().ok()?.into_iter().find(|s| s.vault == vault).map(|s| s.vault_id))
    }

    fn vault_id_of(&self, vault: &str) -> Option<String> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.values()
            .flat_map(|l| l.vaults.iter())
            .find(|v| v.name == vault && !v.vault_id.is_empty())
            .map(|v| v.vault_id.clone())
    }

    /// Merge a vault scan into the catalog. Receipts are verified with our key; a snapshot
    /// without a valid one is kept, but retention never forgets it.
    fn merge_scan(&self, vault: &str, scan: &pb::ScanResult) -> Result<usize> {
        if self.copy_source_of(vault).is_some() {
            return self.merge_copy_scan(vault, scan);
        }
        let configured: std::collections::HashSet<String> =
            self.policies().values().flat_map(|p| p.vaults.iter().map(|v| v.name.clone())).collect();
        let mut n = 0;
        for meta in &scan.snapshots {
            let mut rec = snapshot_record(meta, vault, &pb::Receipt::default());
            rec.committed_ms = None;
            rec.receipt_sig = None;
            rec.receipt_unverified = meta.receipt.is_some();
            if let Some(r) = &meta.receipt
                && r.snapshot_id == meta.snapshot_id
                && r.vault_id == scan.vault_id
                && self.state.verify(&tresor_proto::receipt_signing_bytes(r), &r.signature)
            {
                rec.committed_ms = Some(r.committed_unix_ms);
                rec.receipt_sig = Some(hex::encode(&r.signature));
                rec.receipt_unverified = false;
                rec.agent = r.agent.clone();
                rec.source = r.source.clone();
                rec.job = (!r.job_id.is_empty()).then(|| r.job_id.clone());
                let key = format!("{}/{}", r.agent, r.source);
                let mut s = self.catalog.source(&key)?;
                if r.committed_unix_ms / 1000 > s.last_success_unix {
                    s.last_success_unix = r.committed_unix_ms / 1000;
                    s.last_bytes_total = meta.bytes_total;
                    self.catalog.put_source(&key, &s)?;
                }
            }
            // A scan never replaces a receipted record by one without that receipt or naming
            // another agent or source, nor a record of another vault (a second site has its
            // first site's vault and snapshot ids).
            if let Some(held) = self.catalog.snapshot(&rec.vault_id, &rec.snapshot_id)?
                && (held.vault != vault && configured.contains(&held.vault)
                    || held.receipt_sig.is_some()
                        && (held.receipt_sig != rec.receipt_sig
                            || held.agent != rec.agent
                            || held.source != rec.source))
            {
                continue;
            }
            self.catalog.put_snapshot(&rec)?;
            n += 1;
        }
        Ok(n)
    }
}

impl Controller {
    /// A scan of a second site: what it holds goes to its own records (never to its source's,
    /// which share the vault and snapshot ids); a receipt that verifies gives the time.
    fn merge_copy_scan(&self, vault: &str, scan: &pb::ScanResult) -> Result<usize> {
        let known = self.copy_records(vault)?;
        let mut n = 0;
        for meta in scan.snapshots.iter().filter(|m| crate::fields::snapshot_id_ok(&m.snapshot_id)) {
            self.put_copy_meta(vault, &scan.vault_id, meta, first_seen(&known, &meta.snapshot_id))?;
            n += 1;
        }
        Ok(n)
    }

    /// Record that the second site `vault` holds the snapshot `meta` describes (read there); a
    /// receipt that verifies gives its time, agent and source.
    pub(crate) fn put_copy_meta(
        &self,
        vault: &str,
        vault_id: &str,
        meta: &pb::SnapshotMeta,
        copied_ms: Option<i64>,
    ) -> Result<()> {
        let receipt = meta
            .receipt
            .clone()
            .filter(|r| r.snapshot_id == meta.snapshot_id && r.vault_id == vault_id && meta.vault_id == vault_id)
            .filter(|r| self.state.verify(&tresor_proto::receipt_signing_bytes(r), &r.signature))
            .unwrap_or_default();
        let mut rec = snapshot_record(meta, vault, &receipt);
        // The copy is of this vault, whatever the agent wrote into the meta.
        rec.vault_id = vault_id.to_string();
        rec.receipt_unverified = meta.receipt.is_some() && receipt.signature.is_empty();
        rec.copied_ms = copied_ms;
        self.catalog.put_copy(&rec)
    }

    /// What the catalog knows the second site `vault` holds, by snapshot id.
    pub(crate) fn copy_records(&self, vault: &str) -> Result<std::collections::HashMap<String, SnapshotRecord>> {
        Ok(self.catalog.copies_in(vault)?.into_iter().map(|s| (s.snapshot_id.clone(), s)).collect())
    }
}

/// When a second site was first known to hold `snapshot`: as recorded, else now.
pub(crate) fn first_seen(known: &std::collections::HashMap<String, SnapshotRecord>, snapshot: &str) -> Option<i64> {
    known.get(snapshot).and_then(|k| k.copied_ms).or_else(|| Some(chrono::Utc::now().timestamp_millis()))
}

/// A catalog record from a snapshot's metadata and its receipt.
pub fn snapshot_record(meta: &pb::SnapshotMeta, vault: &str, receipt: &pb::Receipt) -> SnapshotRecord {
    let signed = !receipt.signature.is_empty();
    SnapshotRecord {
        vault_id: meta.vault_id.clone(),
        vault: vault.to_string(),
        snapshot_id: meta.snapshot_id.clone(),
        agent: if signed { receipt.agent.clone() } else { meta.agent.clone() },
        source: if signed { receipt.source.clone() } else { meta.source.clone() },
        host: meta.host.clone(),
        manifest_time: meta.manifest_time.clone(),
        committed_ms: signed.then_some(receipt.committed_unix_ms),
        receipt_sig: signed.then(|| hex::encode(&receipt.signature)),
        files: meta.files,
        bytes_total: meta.bytes_total,
        bytes_new: meta.bytes_new,
        bytes_stored: meta.bytes_stored,
        duration_ms: meta.duration_ms,
        paths: meta.paths.clone(),
        job: (signed && !receipt.job_id.is_empty()).then(|| receipt.job_id.clone()),
        receipt_unverified: false,
        copied_ms: None,
    }
}

/// At most 64 characters of text an agent sent, for messages.
fn short(s: &str) -> String {
    s.chars().take(64).collect()
}
