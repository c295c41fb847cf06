//! Recording control-plane actions in the audit log (`audit_log.rs` keeps the chain) and
//! anchoring its head with signed checkpoints stored in every vault.

use serde_json::Value;
use tresor_proto::pb;

use crate::core::Controller;
use crate::error::Result;
use crate::jobs::{JobRecord, JobSpec};

impl Controller {
    /// Record a control-plane action in the audit log. A failure to record is logged loudly; the
    /// action itself has already happened and is not undone.
    pub fn audit(&self, actor: &str, action: &str, object: &str, outcome: &str, reason: &str) {
        let _entry = self.audit_entry(actor, action, object, outcome, reason);
    }

    /// [`Controller::audit`], returning the entry written.
    fn audit_entry(&self, actor: &str, action: &str, object: &str, outcome: &str, reason: &str) -> Option<Value> {
        // Fields are capped: a caller must not grow the log by sending long paths or names.
        let cap = |s: &str, n: usize| {
            if s.len() <= n {
                return s.to_string();
            }
            let mut end = n;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", &s[..end])
        };
        let e = tresor_report::audit::Event {
            time: crate::audit_log::now_rfc3339(),
            actor: cap(actor, 128),
            action: cap(action, 64),
            object: cap(object, 512),
            outcome: outcome.into(),
            reason: cap(reason, 1024),
        };
        match self.audit_log.append(&self.catalog, &e) {
            Ok(entry) => Some(entry),
            Err(err) => {
                tracing::error!(error = %err, action, object, "AUDIT LOG NOT WRITTEN");
                None
            }
        }
    }

    /// Sign the audit log's head if it moved since the last checkpoint and keep the checkpoint;
    /// then send the newest checkpoint to every vault that lacks it (on the vault's maintainer).
    /// Returns the position of a checkpoint signed now.
    ///
    /// # Errors
    /// Catalog failures.
    pub fn audit_checkpoint(&self) -> Result<Option<u64>> {
        let _one_at_a_time = self.checkpoint_lock.lock().unwrap_or_else(|p| p.into_inner());
        let signed = self.sign_checkpoint_if_moved()?;
        self.send_newest_checkpoint()?;
        Ok(signed)
    }

    fn sign_checkpoint_if_moved(&self) -> Result<Option<u64>> {
        use crate::audit_log::AuditLog;
        let Some(head) = AuditLog::head(&self.catalog)? else { return Ok(None) };
        let seq = head.get("seq").and_then(serde_json::Value::as_u64).unwrap_or(0);
        if let Some(last) = AuditLog::last_checkpoint_seq(&self.catalog)?
            && (last >= seq || self.only_stored_documents(last + 1)?)
        {
            return Ok(None);
        }
        // The key's use is itself an entry, and the checkpoint signs that entry, so the log has
        // not moved past its checkpoint when the next period looks. (Should the entry not be
        // written, the head read above is signed.)
        let key_id = tresor_report::sign::key_id(&self.state.report_key());
        let why = format!("report-signing key {key_id}");
        let object = "audit checkpoint of the log up to this entry";
        let head = self.audit_entry("controller", "key.sign", object, crate::audit_log::OK, &why).unwrap_or(head);
        let seq = head.get("seq").and_then(serde_json::Value::as_u64).unwrap_or(0);
        let c = self.state.sign_checkpoint(&head, &crate::audit_log::now_rfc3339())?;
        AuditLog::put_checkpoint(&self.catalog, seq, &c)?;
        Ok(Some(seq))
    }

    /// Queue the newest checkpoint for each vault that has not been sent it. A vault whose
    /// maintainer still has a checkpoint job (offline, or storing it now) waits for that one to
    /// end: the newer head follows from the older by the chain, and this runs again on the next
    /// tick. A job left for a former or revoked maintainer does not count. So at most one
    /// checkpoint job per vault and maintainer waits, and the vault gets the newest once it can.
    fn send_newest_checkpoint(&self) -> Result<()> {
        use crate::audit_log::AuditLog;
        // Only keys are read on the common path (every vault has the newest already); the
        // checkpoint's body and the active jobs only when some vault lacks it.
        let Some(seq) = AuditLog::last_checkpoint_seq(&self.catalog)? else { return Ok(()) };
        let mut doc: Option<pb::Document> = None;
        let mut pending: Option<Vec<(String, crate::ids::AgentId)>> = None;
        let mut seen = std::collections::BTreeSet::new();
        for p in self.policies().values() {
            for v in p.vaults.iter().filter(|v| seen.insert(v.name.clone())) {
                let sent_key = format!("audit-checkpoint-sent:{}", v.name);
                if self.catalog.meta_get(&sent_key)?.is_some_and(|s| s >= seq as i64) {
                    continue;
                }
                let Some((maintainer, agent)) =
                    self.state.find_agent(&v.maintainer).filter(|(id, _)| !self.state.is_revoked(id))
                else {
                    continue;
                };
                if pending.is_none() {
                    // Every active job is queued or running.
                    let waiting = self.catalog.active_jobs()?.into_iter().filter(|j| is_checkpoint_job(&j.spec));
                    pending = Some(waiting.map(|j| (j.vault, j.agent_id)).collect());
                }
                if pending.iter().flatten().any(|(vault, a)| *vault == v.name && *a == maintainer) {
                    continue;
                }
                if doc.is_none() {
                    let Some((seq, c)) = AuditLog::newest_checkpoint(&self.catalog)? else { return Ok(()) };
                    doc = Some(pb::Document {
                        name: crate::audit_log::checkpoint_name(seq),
                        body: serde_json::to_vec_pretty(&c).unwrap_or_default(),
                    });
                }
                let docs = doc.as_slice();
                self.submit_documents(maintainer, agent.name, &v.name, docs, "audit")?;
                self.catalog.meta_put(&sent_key, seq as i64)?;
            }
        }
        Ok(())
    }

    /// Whether every entry from `from` on records a document stored (a checkpoint or report
    /// reaching a vault): those alone do not call for a new checkpoint, or each stored checkpoint
    /// would call for the next. Stops at the first other entry.
    fn only_stored_documents(&self, from: u64) -> Result<bool> {
        use crate::audit_log::{AUDIT_PAGE, AuditLog, OK};
        let mut at = from;
        loop {
            let page = AuditLog::entries(&self.catalog, at, AUDIT_PAGE)?;
            if !page.iter().all(|e| e["action"] == "documents" && e["outcome"] == OK) {
                return Ok(false);
            }
            if page.len() < AUDIT_PAGE {
                return Ok(true);
            }
            at += page.len() as u64;
        }
    }

    /// Queue signed documents for storage in `vault`, on its maintainer (nothing when the vault
    /// has none enrolled).
    ///
    /// # Errors
    /// The job cannot be queued.
    pub(crate) fn queue_documents(&self, vault: &str, docs: &[pb::Document], trigger: &str) -> Result<()> {
        let policies = self.policies();
        let Some(v) = policies.values().flat_map(|p| p.vaults.iter()).find(|v| v.name == vault) else { return Ok(()) };
        let Some((id, a)) = self.state.find_agent(&v.maintainer).filter(|(id, _)| !self.state.is_revoked(id)) else {
            return Ok(());
        };
        self.submit_documents(id, a.name, vault, docs, trigger)
    }

    fn submit_documents(
        &self,
        agent: crate::ids::AgentId,
        agent_name: String,
        vault: &str,
        docs: &[pb::Document],
        trigger: &str,
    ) -> Result<()> {
        let spec = JobSpec::documents(docs);
        let job = JobRecord::new(agent, agent_name, vault.to_string(), spec, trigger, self.config.max_attempts);
        self.jobs.submit(&job)
    }

    /// The audit entry of a finished job attempt (drills record their own).
    pub(crate) fn audit_result(&self, job: &JobRecord, result: &pb::JobResult) {
        use pb::job_result::Kind;
        let object = match (&job.spec, &result.kind) {
            (_, Some(Kind::Backup(b))) => {
                format!(
                    "{}/{} snapshot {}",
                    job.agent_name,
                    b.snapshot.as_ref().map_or("", |s| &s.source),
                    b.snapshot.as_ref().map_or("", |s| &s.snapshot_id)
                )
            }
            (JobSpec::Backup { source, .. }, _) => format!("{}/{source}", job.agent_name),
            (JobSpec::Restore { snapshot, target, .. }, _) => {
                format!("snapshot {snapshot} to {}:{target}", job.agent_name)
            }
            (JobSpec::Copy { to, snapshots }, _) => {
                format!("vault {} → vault {to} ({} snapshot(s) to copy)", job.vault, snapshots.len())
            }
            _ => format!("vault {}", job.vault),
        };
        let (outcome, reason) = if result.error.is_empty() {
            let reason = match &result.kind {
                Some(Kind::Backup(_)) => format!("receipt signed with the receipt key (job {})", job.id),
                _ => format!("job {}", job.id),
            };
            (crate::audit_log::OK, reason)
        } else {
            (crate::audit_log::FAILED, format!("job {} attempt {}: {}", job.id, job.attempt, result.error))
        };
        self.audit(&format!("agent:{}", job.agent_name), job.spec.kind(), &object, outcome, &reason);
    }
}

fn is_checkpoint_job(spec: &JobSpec) -> bool {
    matches!(spec, JobSpec::Documents { documents }
        if !documents.is_empty() && documents.iter().all(|(name, _)| crate::audit_log::is_checkpoint_name(name)))
}
