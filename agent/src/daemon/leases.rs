//! The agent's view of its job leases. A lease is extended only by a heartbeat the controller
//! answered, and counted from when that heartbeat was sent (by the monotonic clock), so the agent
//! always believes its lease ends no later than the controller does. A lapsed lease fences the job:
//! the commit guard refuses the commit point.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tresor_proto::pb;
use tresor_vault::backup::CommitGuard;

struct Lease {
    job: pb::JobRef,
    deadline: Instant,
    invalid: bool,
}

/// Leases of the jobs this agent runs.
#[derive(Clone, Default)]
pub struct Leases {
    inner: Arc<Mutex<HashMap<String, Lease>>>,
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A job arrived at `received` with a lease of `lease`.
    pub fn start(&self, job: &pb::JobRef, lease: Duration, received: Instant) {
        let _ = self
            .lock()
            .insert(job.job_id.clone(), Lease { job: job.clone(), deadline: received + lease, invalid: false });
    }

    /// What to report in a heartbeat.
    pub fn running(&self) -> Vec<pb::JobRef> {
        self.lock().values().map(|l| l.job.clone()).collect()
    }

    /// Apply the controller's answer to a heartbeat sent at `sent`.
    pub fn apply(&self, grants: &[pb::LeaseGrant], sent: Instant) {
        let mut m = self.lock();
        for g in grants {
            let Some(j) = &g.job else { continue };
            if let Some(l) = m.get_mut(&j.job_id)
                && l.job.attempt == j.attempt
                && l.job.lease_epoch == j.lease_epoch
            {
                if g.valid {
                    l.deadline = l.deadline.max(sent + Duration::from_millis(u64::from(g.lease_ms)));
                } else {
                    l.invalid = true;
                }
            }
        }
    }

    /// Why attempt `attempt` of the job may not commit now, if it may not.
    pub fn check(&self, job_id: &str, attempt: u32) -> Result<(), String> {
        let m = self.lock();
        match m.get(job_id) {
            None => Err(format!("job {job_id} has no lease")),
            Some(l) if l.job.attempt != attempt => {
                Err(format!("attempt {attempt} of job {job_id} was superseded by attempt {}", l.job.attempt))
            }
            Some(l) if l.invalid => {
                Err(format!("the controller no longer holds attempt {} of job {job_id} valid", l.job.attempt))
            }
            Some(l) if Instant::now() >= l.deadline => Err(format!(
                "the lease of job {job_id} attempt {} lapsed (controller unreachable or process stopped)",
                l.job.attempt
            )),
            Some(_) => Ok(()),
        }
    }

    /// A commit guard for one attempt of a job.
    pub fn guard(&self, job: &pb::JobRef) -> CommitGuard {
        let me = self.clone();
        let (id, attempt) = (job.job_id.clone(), job.attempt);
        CommitGuard(Arc::new(move || me.check(&id, attempt)))
    }

    /// End the lease of one attempt (a newer attempt's lease is left alone).
    pub fn end_attempt(&self, job: &pb::JobRef) {
        let mut m = self.lock();
        if m.get(&job.job_id).is_some_and(|l| l.job.attempt == job.attempt) {
            let _ = m.remove(&job.job_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapsed_or_refused_leases_fence_the_commit() {
        let l = Leases::default();
        let j = pb::JobRef { job_id: "j1".into(), attempt: 1, lease_epoch: 7 };
        let t0 = Instant::now();
        l.start(&j, Duration::from_millis(50), t0);
        assert!(l.check("j1", 1).is_ok());
        std::thread::sleep(Duration::from_millis(60));
        assert!(l.check("j1", 1).unwrap_err().contains("lapsed"));
        l.apply(&[pb::LeaseGrant { job: Some(j.clone()), valid: true, lease_ms: 10_000 }], Instant::now());
        assert!(l.check("j1", 1).is_ok(), "a granted extension revives a lease the controller still holds");
        let stale = pb::JobRef { lease_epoch: 6, ..j.clone() };
        l.apply(&[pb::LeaseGrant { job: Some(stale), valid: false, lease_ms: 0 }], Instant::now());
        assert!(l.check("j1", 1).is_ok(), "a grant for another epoch is ignored");
        l.apply(&[pb::LeaseGrant { job: Some(j.clone()), valid: false, lease_ms: 0 }], Instant::now());
        assert!(l.check("j1", 1).unwrap_err().contains("no longer holds"));
        l.start(&pb::JobRef { attempt: 2, ..j }, Duration::from_secs(10), Instant::now());
        assert!(l.check("j1", 1).unwrap_err().contains("superseded"), "an old attempt never commits over a new one");
    }
}
