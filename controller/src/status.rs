//! `tresorctl status`: every source's state, and the same problems alerts are sent for.

use tresor_proto::pb;

use crate::core::{Controller, now_unix};
use crate::error::Result;
use crate::jobs::JobState;

/// The status report.
///
/// # Errors
/// Catalog failures.
pub fn status(ctl: &Controller) -> Result<pb::StatusReply> {
    let now = now_unix();
    let mut reply = pb::StatusReply::default();
    for policy in ctl.policies().values() {
        for s in &policy.sources {
            let key = format!("{}/{}", s.agent, s.name);
            let rec = ctl.source_state(&key)?;
            let rpo = s.rpo.as_secs() as i64;
            reply.sources.push(pb::SourceStatus {
                agent: s.agent.clone(),
                source: s.name.clone(),
                vault: s.vault.clone(),
                last_success_unix: rec.last_success_unix,
                last_error: rec.last_error.clone(),
                rpo_seconds: rpo as u32,
                overdue: rec.overdue(now, rpo),
                failing: rec.failures > 0,
                next_run_unix: s.schedule.next_slot(chrono::Utc::now()).map_or(0, |t| t.timestamp()),
            });
        }
    }
    reply.copies = ctl.copy_status(now)?;
    reply.problems = crate::alerts::problems(ctl)?.into_iter().map(|p| p.message).collect();
    reply.agents = ctl.agent_infos().into_iter().filter(|a| !a.revoked).collect();
    for j in ctl.catalog.active_jobs()? {
        match j.state {
            JobState::Running => reply.jobs_running += 1,
            JobState::Queued => reply.jobs_queued += 1,
            _ => {}
        }
    }
    Ok(reply)
}
