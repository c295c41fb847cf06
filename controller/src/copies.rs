//! Second sites (decision 0017): a `[[vault]]` with `copy_to` is copied, on its own schedule, by
//! an agent that opens both vaults. A copy keeps its source's vault id and snapshot ids, so the
//! catalog keeps what each second site holds apart (`Catalog::copies_in`), from the copy jobs'
//! results and from scans of the copy.
//!
//! What a copy should hold is what the copy's retention (or each source's own) keeps of the
//! source vault's receipted snapshots; its lag is how long the oldest of those it lacks has been
//! at one site only.

use std::collections::HashSet;

use tresor_proto::pb;

use crate::catalog::SnapshotRecord;
use crate::core::Controller;
use crate::error::{Error, Result};
use crate::jobs::{JobRecord, JobSpec};
use crate::policy::{CopyPolicy, VaultPolicy};

/// One vault and its second site, as the controller sees them now.
#[derive(Debug, Clone)]
pub struct CopyState {
    /// The vault copied from, and its copy policy.
    pub from: VaultPolicy,
    /// Its copy policy.
    pub copy: CopyPolicy,
    /// Receipted snapshots the copy should hold, oldest first.
    pub wanted: Vec<SnapshotRecord>,
    /// Snapshot ids the copy holds.
    pub held: HashSet<String>,
}

impl CopyState {
    /// Snapshots the copy should hold and does not.
    pub fn missing(&self) -> impl Iterator<Item = &SnapshotRecord> {
        self.wanted.iter().filter(|s| !self.held.contains(&s.snapshot_id))
    }

    /// How long the oldest missing snapshot has existed at one site only (seconds; 0: none).
    pub fn lag(&self, now: i64) -> i64 {
        self.missing().filter_map(|s| s.committed_ms).map(|ms| (now - ms / 1000).max(0)).max().unwrap_or(0)
    }

    /// The lag is past the copy's RPO.
    pub fn overdue(&self, now: i64) -> bool {
        self.lag(now) > self.copy.rpo.as_secs() as i64
    }
}

impl Controller {
    /// The vault `name` is the second site of, if it is one.
    pub fn copy_source_of(&self, name: &str) -> Option<VaultPolicy> {
        self.policies().values().find_map(|p| p.copy_source(name).cloned())
    }

    /// The snapshots a vault holds as the catalog knows them: its own, or for a second site the
    /// copies it holds.
    ///
    /// # Errors
    /// sled failed.
    pub fn vault_snapshots(&self, vault: &str) -> Result<Vec<SnapshotRecord>> {
        if self.copy_source_of(vault).is_some() {
            return self.catalog.copies_in(vault);
        }
        Ok(self.catalog.snapshots()?.into_iter().filter(|s| s.vault == vault).collect())
    }

    /// The snapshots of "AGENT" or "AGENT/SOURCE" the second site `vault` holds, oldest first.
    ///
    /// # Errors
    /// sled failed.
    pub fn copy_snapshots(&self, vault: &str, selector: &str) -> Result<Vec<SnapshotRecord>> {
        let (agent, source) = selector.split_once('/').map_or((selector, None), |(a, s)| (a, Some(s)));
        let mut out: Vec<SnapshotRecord> = self
            .catalog
            .copies_in(vault)?
            .into_iter()
            .filter(|s| agent.is_empty() || s.agent == agent)
            .filter(|s| source.is_none_or(|src| s.source == src))
            .collect();
        out.sort_by(|a, b| {
            (a.committed_ms, &a.manifest_time, &a.snapshot_id).cmp(&(b.committed_ms, &b.manifest_time, &b.snapshot_id))
        });
        Ok(out)
    }

    /// Every vault with a second site, and what its copy holds and should hold.
    ///
    /// # Errors
    /// sled failed.
    pub fn copy_states(&self) -> Result<Vec<CopyState>> {
        let mut out = Vec::new();
        let snapshots = self.catalog.snapshots()?;
        for p in self.policies().values() {
            for v in &p.vaults {
                let Some(copy) = v.copy.clone() else { continue };
                let mut wanted = Vec::new();
                for src in p.sources.iter().filter(|s| s.vault == v.name) {
                    let mine: Vec<SnapshotRecord> = snapshots
                        .iter()
                        .filter(|s| s.vault == v.name && s.agent == src.agent && s.source == src.name)
                        .filter(|s| s.committed_ms.is_some())
                        .cloned()
                        .collect();
                    let tz: chrono_tz::Tz = src.schedule.timezone.parse().unwrap_or(chrono_tz::Europe::Berlin);
                    let rules = copy.retention.as_ref().unwrap_or(&src.retention);
                    let forget = crate::retention::to_forget(&mine, rules, tz);
                    wanted.extend(mine.into_iter().filter(|s| !forget.contains(&s.snapshot_id)));
                }
                wanted.sort_by_key(|s| (s.committed_ms, s.snapshot_id.clone()));
                wanted.dedup_by(|a, b| a.snapshot_id == b.snapshot_id);
                let held = self.catalog.copies_in(&copy.to)?.into_iter().map(|s| s.snapshot_id).collect();
                out.push(CopyState { from: v.clone(), copy, wanted, held });
            }
        }
        Ok(out)
    }

    /// Queue a copy of `from` to its second site on the copy agent: the snapshots the copy
    /// should hold and lacks, oldest first (none: the job still brings the copy's keys up to date).
    ///
    /// # Errors
    /// No such vault or no second site, a copy already queued, or the copy agent unknown or not
    /// opening the vault.
    pub fn start_copy(&self, from: &str, trigger: &str) -> Result<JobRecord> {
        let state = self.copy_states()?.into_iter().find(|c| c.from.name == from).ok_or_else(|| {
            Error::NotFound(format!("vault {from:?} has no second site (set copy_to in its [[vault]])"))
        })?;
        let busy =
            self.catalog.active_jobs()?.iter().any(|j| j.vault == from && matches!(j.spec, JobSpec::Copy { .. }));
        if busy {
            return Err(Error::FailedPrecondition(format!("a copy of vault {from} is already queued or running")));
        }
        let agent = &state.copy.agent;
        let (id, a) = self.state.find_agent(agent).filter(|(id, _)| !self.state.is_revoked(id)).ok_or_else(|| {
            Error::FailedPrecondition(format!("vault {from}: copy agent {agent} is not an enrolled agent"))
        })?;
        if let Some(live) = self.live(&id) {
            let lists = |name: &str| live.vaults.iter().any(|v| v.name == name);
            if !self.opens_vault(&id, from) || !lists(&state.copy.to) {
                return Err(Error::FailedPrecondition(format!(
                    "copy agent {agent} must open vault {from} and list vault {} in its agent.toml (the copy's url, the same password file)",
                    state.copy.to
                )));
            }
        }
        let snapshots = state.missing().map(|s| s.snapshot_id.clone()).collect();
        let spec = JobSpec::Copy { to: state.copy.to.clone(), snapshots };
        let job = JobRecord::new(id, a.name, from.to_string(), spec, trigger, self.config.max_attempts);
        self.jobs.submit(&job)?;
        Ok(job)
    }

    /// What a copy job's result means: the copy's holdings, its audit entries, the vault's copy
    /// state for status and alerts.
    pub(crate) fn record_copy(&self, job: &JobRecord, to: &str, r: &pb::CopyResult) -> Result<()> {
        let actor = format!("agent:{}", job.agent_name);
        let object = format!("vault {} → vault {to}", job.vault);
        let vid = self.known_vault_id(&job.vault);
        let mut v = self.catalog.vault(&job.vault)?;
        if vid.as_deref().is_some_and(|id| id != r.vault_id) {
            let why = format!(
                "the copy at {to} holds vault {}, not vault {} (a copy is the same vault at another site); nothing recorded",
                r.vault_id,
                vid.unwrap_or_default()
            );
            self.audit(&actor, "copy.result_refused", &object, crate::audit_log::REFUSED, &why);
            v.copy_error = why;
            return self.catalog.put_vault(&job.vault, &v);
        }
        // Ids become catalog keys: only well-formed ones count; metas only of what was copied.
        let held: HashSet<&String> = r.held.iter().filter(|id| crate::fields::snapshot_id_ok(id)).collect();
        let copied: HashSet<&String> = r.copied.iter().filter(|id| held.contains(id)).collect();
        let known = self.copy_records(to)?;
        let metas: Vec<&pb::SnapshotMeta> = r.copied_meta.iter().filter(|m| copied.contains(&m.snapshot_id)).collect();
        for meta in &metas {
            self.put_copy_meta(to, &r.vault_id, meta, crate::results::first_seen(&known, &meta.snapshot_id))?;
        }
        // Held but unknown here (copied by hand, or by a run whose result was lost), or known
        // without the receipt that reached the source after the copy: the first site's record,
        // while it has a receipted one; a scan of the copy brings the rest.
        for id in held.iter().filter(|id| !metas.iter().any(|m| m.snapshot_id == ***id)) {
            let have = known.get(*id);
            if have.is_some_and(|k| k.committed_ms.is_some()) {
                continue;
            }
            if let Some(rec) = self.catalog.snapshot(&r.vault_id, id)?
                && (have.is_none() || rec.committed_ms.is_some())
            {
                let copied_ms = crate::results::first_seen(&known, id);
                self.catalog.put_copy(&SnapshotRecord { vault: to.to_string(), copied_ms, ..rec })?;
            }
        }
        for gone in known.keys().filter(|id| !held.contains(id)) {
            self.catalog.remove_copy(to, gone)?;
        }
        for id in &copied {
            let reason = format!("copied by job {} ({} trigger)", job.id, job.trigger);
            self.audit(&actor, "copy.snapshot", &format!("snapshot {id}: {object}"), crate::audit_log::OK, &reason);
        }
        for f in &r.failed {
            self.audit(&actor, "copy.failed", &object, crate::audit_log::FAILED, f);
        }
        for w in &r.slots_waiting {
            let why = format!("slot removed at the source, kept at the copy by Object Lock: {w}");
            self.audit(&actor, "copy.slot_waiting", &object, crate::audit_log::OK, &why);
        }
        match r.failed.as_slice() {
            [] => {
                v.copy_error.clear();
                v.copy_last_success_unix = chrono::Utc::now().timestamp();
            }
            [first, ..] => v.copy_error = format!("{} snapshot(s) not copied, first: {first}", r.failed.len()),
        }
        self.catalog.put_vault(&job.vault, &v)
    }

    /// A copy job that used up its attempts: its error stays on the vault for the alert.
    pub(crate) fn copy_failed(&self, job: &JobRecord, error: &str) -> Result<()> {
        let mut v = self.catalog.vault(&job.vault)?;
        v.copy_error = error.to_string();
        self.catalog.put_vault(&job.vault, &v)
    }

    /// The copies for `status`.
    ///
    /// # Errors
    /// sled failed.
    pub fn copy_status(&self, now: i64) -> Result<Vec<pb::CopyStatus>> {
        let mut out = Vec::new();
        for c in self.copy_states()? {
            let v = self.catalog.vault(&c.from.name)?;
            out.push(pb::CopyStatus {
                from: c.from.name.clone(),
                to: c.copy.to.clone(),
                snapshots: c.wanted.len() as u32,
                copied: c.wanted.iter().filter(|s| c.held.contains(&s.snapshot_id)).count() as u32,
                lag_seconds: c.lag(now),
                rpo_seconds: c.copy.rpo.as_secs() as i64,
                last_success_unix: v.copy_last_success_unix,
                last_error: v.copy_error.clone(),
                overdue: c.overdue(now),
            });
        }
        Ok(out)
    }
}
