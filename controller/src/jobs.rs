//! Jobs: what agents are asked to do, their attempts and leases.
//!
//! Every dispatch of a job is an attempt with a fresh lease epoch (strictly increasing, from the
//! catalog). An attempt is valid while its lease holds; heartbeats extend it. A lapsed lease makes
//! the attempt stale: its results are refused and the job is retried with backoff, so an agent
//! that was stopped and comes back cannot commit over a newer attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::sync::{Notify, broadcast, mpsc};
use tonic::Status;
use tresor_proto::pb;
use tresor_proto::prost::Message;

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::ids::AgentId;
pub use crate::job::{DrillSpec, JobRecord, JobSpec, JobState, ProgressRecord};

/// What accepting a result did.
pub enum Finished {
    /// The result was recorded now.
    First(JobRecord),
    /// This attempt had already finished; nothing changed.
    Again(JobRecord),
}

/// The bound of each agent's job stream, in jobs: dispatch waits for the agent to take them.
pub const AGENT_STREAM_JOBS: usize = 16;
/// The bound of the job event broadcast, in events; slow watchers skip to the newest state.
pub const JOB_EVENTS: usize = 256;

type JobSender = mpsc::Sender<Result<pb::Job, Status>>;

/// Lease and retry settings.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// Lease per attempt.
    pub lease: Duration,
    /// First retry delay (doubled per attempt).
    pub backoff: Duration,
}

/// The job table: dispatch, leases, results.
pub struct Jobs {
    catalog: Arc<Catalog>,
    settings: LeaseSettings,
    streams: Mutex<HashMap<AgentId, (u64, JobSender)>>,
    // Serialises read-modify-write of job records; only synchronous code runs under it.
    records: Mutex<()>,
    events: broadcast::Sender<pb::JobEvent>,
    wake: Notify,
    vault_limit: Box<dyn Fn(&str) -> u32 + Send + Sync>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Jobs {
    /// A job table over the catalog. `vault_limit` gives each vault's concurrent-job limit.
    pub fn new(
        catalog: Arc<Catalog>,
        settings: LeaseSettings,
        vault_limit: Box<dyn Fn(&str) -> u32 + Send + Sync>,
    ) -> Self {
        Self {
            catalog,
            settings,
            streams: Mutex::new(HashMap::new()),
            records: Mutex::new(()),
            events: broadcast::channel(JOB_EVENTS).0,
            wake: Notify::new(),
            vault_limit,
        }
    }

    fn lock_records(&self) -> std::sync::MutexGuard<'_, ()> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, job: &JobRecord) {
        let _ = self.events.send(job.event());
    }

    /// Watch job events.
    pub fn subscribe(&self) -> broadcast::Receiver<pb::JobEvent> {
        self.events.subscribe()
    }

    /// Wait until something may be dispatchable.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Queue a job.
    ///
    /// # Errors
    /// sled failed.
    pub fn submit(&self, job: &JobRecord) -> Result<()> {
        {
            let _g = self.lock_records();
            self.catalog.put_active(job)?;
        }
        self.emit(job);
        self.wake.notify_one();
        Ok(())
    }

    /// An agent opened its job stream; returns a connection number for `disconnect`.
    pub fn connect(&self, agent: &AgentId, tx: JobSender) -> u64 {
        let conn = rand::random();
        let _ = self.streams.lock().unwrap_or_else(|p| p.into_inner()).insert(agent.clone(), (conn, tx));
        self.wake.notify_one();
        conn
    }

    /// The agent's stream ended (only if it is still connection `conn`).
    pub fn disconnect(&self, agent: &AgentId, conn: u64) {
        let mut s = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if s.get(agent).is_some_and(|(c, _)| *c == conn) {
            let _ = s.remove(agent);
        }
    }

    /// Whether `conn` is still the agent's current stream.
    pub fn holds(&self, agent: &AgentId, conn: u64) -> bool {
        self.streams.lock().unwrap_or_else(|p| p.into_inner()).get(agent).is_some_and(|(c, _)| *c == conn)
    }

    /// Close an agent's stream (revocation).
    pub fn drop_stream(&self, agent: &AgentId) {
        let _ = self.streams.lock().unwrap_or_else(|p| p.into_inner()).remove(agent);
    }

    /// Whether an agent has its job stream open.
    pub fn is_connected(&self, agent: &AgentId) -> bool {
        self.streams.lock().unwrap_or_else(|p| p.into_inner()).get(agent).is_some_and(|(_, tx)| !tx.is_closed())
    }

    /// One pass: expire lapsed leases, dispatch what can run. Returns when the next retry is due.
    /// Blocks on a catalog flush when it dispatches: call it off the runtime threads.
    ///
    /// # Errors
    /// sled failed.
    pub fn tick(&self) -> Result<Option<i64>> {
        let now = now_ms();
        let mut changed = Vec::new();
        let mut next_due = None;
        {
            let _g = self.lock_records();
            let mut jobs = self.catalog.active_jobs()?;
            let mut running: HashMap<String, u32> = HashMap::new();
            for j in &mut jobs {
                if j.state == JobState::Running && j.lease_deadline_ms < now {
                    j.error = format!(
                        "attempt {} lost its lease: agent {} stopped answering (killed, stopped or cut off)",
                        j.attempt, j.agent_name
                    );
                    self.retry_or_fail(j, now)?;
                    changed.push(j.clone());
                }
                if j.state == JobState::Running {
                    *running.entry(j.vault.clone()).or_default() += 1;
                }
            }
            let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mut dispatch = Vec::new();
            for j in &mut jobs {
                if j.state != JobState::Queued {
                    continue;
                }
                if j.not_before_ms > now {
                    next_due = Some(next_due.map_or(j.not_before_ms, |n: i64| n.min(j.not_before_ms)));
                    continue;
                }
                let busy = running.get(&j.vault).copied().unwrap_or(0);
                if busy >= (self.vault_limit)(&j.vault) {
                    continue;
                }
                let Some((_, tx)) = streams.get(&j.agent_id) else { continue };
                let mut next = j.clone();
                next.attempt += 1;
                next.lease_epoch = self.catalog.next_epoch()?;
                next.lease_deadline_ms = now + self.settings.lease.as_millis() as i64;
                next.state = JobState::Running;
                next.started_unix = now / 1000;
                next.started_ms = now;
                next.progress = ProgressRecord::default();
                self.catalog.put_active(&next)?;
                *running.entry(j.vault.clone()).or_default() += 1;
                dispatch.push((tx.clone(), j.clone(), next));
            }
            // Durable before sent: an agent must never hold a lease the catalog could forget in a
            // crash (it would be handed the same job again under an older epoch).
            if !dispatch.is_empty() {
                self.catalog.flush_blocking()?;
            }
            for (tx, queued, next) in dispatch {
                if tx.try_send(Ok(next.to_wire(self.settings.lease))).is_ok() {
                    changed.push(next);
                } else {
                    self.catalog.put_active(&queued)?;
                }
            }
        }
        for j in &changed {
            self.emit(j);
        }
        Ok(next_due)
    }

    fn retry_or_fail(&self, j: &mut JobRecord, now: i64) -> Result<()> {
        if j.attempt < j.max_attempts {
            j.state = JobState::Queued;
            let factor = 1u32 << (j.attempt.saturating_sub(1)).min(10);
            j.not_before_ms = now + (self.settings.backoff * factor).as_millis() as i64;
            self.catalog.put_active(j)
        } else {
            j.state = JobState::Failed;
            j.finished_unix = now / 1000;
            self.catalog.finish(j)
        }
    }

    /// Extend the leases of the attempts an agent says it runs; stale ones are reported invalid.
    ///
    /// # Errors
    /// sled failed.
    pub fn heartbeat(&self, agent: &AgentId, running: &[pb::JobRef]) -> Result<Vec<pb::LeaseGrant>> {
        let now = now_ms();
        let _g = self.lock_records();
        let mut grants = Vec::new();
        for r in running {
            let valid = match self.catalog.job(&r.job_id)? {
                Some(mut j) if Self::is_current(&j, agent, r, now) => {
                    j.lease_deadline_ms = now + self.settings.lease.as_millis() as i64;
                    self.catalog.put_active(&j)?;
                    true
                }
                _ => false,
            };
            grants.push(pb::LeaseGrant {
                job: Some(r.clone()),
                valid,
                lease_ms: if valid { self.settings.lease.as_millis() as u32 } else { 0 },
            });
        }
        Ok(grants)
    }

    fn is_current(j: &JobRecord, agent: &AgentId, r: &pb::JobRef, now: i64) -> bool {
        j.state == JobState::Running
            && &j.agent_id == agent
            && j.attempt == r.attempt
            && j.lease_epoch == r.lease_epoch
            && j.lease_deadline_ms >= now
    }

    /// Record progress of a current attempt (stale reports are ignored).
    ///
    /// # Errors
    /// sled failed.
    pub fn progress(&self, agent: &AgentId, p: &pb::ProgressReport) -> Result<()> {
        let Some(r) = &p.r#ref else { return Ok(()) };
        let now = now_ms();
        let job = {
            let _g = self.lock_records();
            match self.catalog.job(&r.job_id)? {
                Some(mut j) if Self::is_current(&j, agent, r, now) => {
                    j.progress = ProgressRecord { phase: p.phase.clone(), bytes: p.bytes_done, files: p.files_done };
                    self.catalog.put_active(&j)?;
                    j
                }
                _ => return Ok(()),
            }
        };
        self.emit(&job);
        Ok(())
    }

    /// Accept the result of the current attempt. A stale attempt (lapsed lease, newer attempt,
    /// other agent) is refused. A failed attempt is retried while attempts remain.
    ///
    /// # Errors
    /// `FailedPrecondition` for a stale attempt; sled failures.
    pub fn finish(&self, agent: &AgentId, result: &pb::JobResult) -> Result<Finished> {
        let r = result.r#ref.as_ref().ok_or_else(|| Error::InvalidArgument("result without a job reference".into()))?;
        let now = now_ms();
        let job = {
            let _g = self.lock_records();
            let mut j = self
                .catalog
                .job(&r.job_id)?
                .ok_or_else(|| Error::NotFound(format!("job {} is not in the catalog", r.job_id)))?;
            // The same attempt finishing again (its answer was lost): answer again, change nothing.
            // A drill ends Failed on its first error; its report is answered again the same way.
            let ended =
                j.state == JobState::Succeeded || (j.state == JobState::Failed && matches!(j.spec, JobSpec::Drill(_)));
            if ended && &j.agent_id == agent && j.attempt == r.attempt && j.lease_epoch == r.lease_epoch {
                return Ok(Finished::Again(j));
            }
            if !Self::is_current(&j, agent, r, now) {
                return Err(Error::FailedPrecondition(format!(
                    "stale attempt: job {} attempt {} (lease epoch {}) is no longer current (now attempt {}, {}); its result is refused",
                    r.job_id,
                    r.attempt,
                    r.lease_epoch,
                    j.attempt,
                    j.state.name()
                )));
            }
            j.result = Some(base64::engine::general_purpose::STANDARD.encode(result.encode_to_vec()));
            if result.error.is_empty() {
                j.state = JobState::Succeeded;
                j.error.clear();
                j.finished_unix = now / 1000;
                self.catalog.finish(&j)?;
            } else {
                j.error = result.error.clone();
                // Restores and scans are not retried blindly: a person is waiting and reads the error.
                if matches!(
                    j.spec,
                    JobSpec::Backup { .. } | JobSpec::Check { .. } | JobSpec::Prune { .. } | JobSpec::Copy { .. }
                ) {
                    self.retry_or_fail(&mut j, now)?;
                } else {
                    j.state = JobState::Failed;
                    j.finished_unix = now / 1000;
                    self.catalog.finish(&j)?;
                }
            }
            j
        };
        self.emit(&job);
        self.wake.notify_one();
        Ok(Finished::First(job))
    }

    /// Store the receipt signed for a finished job.
    ///
    /// # Errors
    /// sled failed.
    pub fn set_receipt(&self, job: &JobRecord, receipt: &pb::Receipt) -> Result<()> {
        let _g = self.lock_records();
        if let Some(mut j) = self.catalog.job(job.id.as_str())? {
            j.receipt = Some(base64::engine::general_purpose::STANDARD.encode(receipt.encode_to_vec()));
            self.catalog.put_done(&j)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(limit: u32, lease: Duration) -> (tempfile::TempDir, Jobs) {
        let dir = tempfile::tempdir().unwrap();
        let cat = Arc::new(Catalog::open(dir.path()).unwrap());
        let jobs = Jobs::new(cat, LeaseSettings { lease, backoff: Duration::from_millis(1) }, Box::new(move |_| limit));
        (dir, jobs)
    }

    fn ok(r: pb::JobRef) -> pb::JobResult {
        pb::JobResult { r#ref: Some(r), error: String::new(), kind: None }
    }

    #[test]
    fn a_vault_runs_at_most_its_limit_and_only_current_attempts_finish() {
        let (_d, jobs) = table(1, Duration::from_secs(60));
        let a = AgentId::new("a-1".into());
        let (tx, mut rx) = mpsc::channel(AGENT_STREAM_JOBS);
        let _ = jobs.connect(&a, tx);
        for _ in 0..3 {
            jobs.submit(&JobRecord::new(a.clone(), "a".into(), "nas".into(), JobSpec::Scan, "manual", 3)).unwrap();
        }
        let _ = jobs.tick().unwrap();
        let first = rx.try_recv().unwrap().unwrap().r#ref.unwrap();
        assert!(rx.try_recv().is_err(), "one job at a time on a vault with limit 1");

        let older = pb::JobRef { lease_epoch: first.lease_epoch - 1, ..first.clone() };
        assert!(matches!(jobs.finish(&a, &ok(older)), Err(Error::FailedPrecondition(_))), "a stale epoch is refused");
        let other = AgentId::new("a-2".into());
        assert!(
            matches!(jobs.finish(&other, &ok(first.clone())), Err(Error::FailedPrecondition(_))),
            "another agent is refused"
        );
        assert!(
            matches!(jobs.finish(&a, &ok(first.clone())).unwrap(), Finished::First(j) if j.state == JobState::Succeeded)
        );
        assert!(
            matches!(jobs.finish(&a, &ok(first)).unwrap(), Finished::Again(_)),
            "a repeated result changes nothing"
        );
        let _ = jobs.tick().unwrap();
        assert!(rx.try_recv().is_ok(), "the next job runs once the slot is free");
    }

    #[test]
    fn a_lapsed_lease_makes_a_new_attempt_with_a_higher_epoch() {
        let (_d, jobs) = table(2, Duration::from_millis(50));
        let a = AgentId::new("a-1".into());
        let (tx, mut rx) = mpsc::channel(AGENT_STREAM_JOBS);
        let _ = jobs.connect(&a, tx);
        jobs.submit(&JobRecord::new(a.clone(), "a".into(), "nas".into(), JobSpec::Scan, "manual", 3)).unwrap();
        let _ = jobs.tick().unwrap();
        let first = rx.try_recv().unwrap().unwrap().r#ref.unwrap();
        std::thread::sleep(Duration::from_millis(80));
        let grants = jobs.heartbeat(&a, std::slice::from_ref(&first)).unwrap();
        assert!(!grants[0].valid, "a lapsed lease is not revived by a late heartbeat");
        let _ = jobs.tick().unwrap(); // expires the attempt
        std::thread::sleep(Duration::from_millis(5));
        let _ = jobs.tick().unwrap(); // dispatches the retry
        let second = rx.try_recv().unwrap().unwrap().r#ref.unwrap();
        assert_eq!(second.attempt, 2);
        assert!(second.lease_epoch > first.lease_epoch);
        assert!(jobs.finish(&a, &ok(first)).is_err(), "the stale attempt's result is refused");
    }
}
