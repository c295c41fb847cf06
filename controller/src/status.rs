//! `tresorctl status`: what is failing or overdue.

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
            let overdue = now - rec.last_success_unix > rpo;
            let failing = rec.failures > 0;
            if overdue {
                reply.problems.push(if rec.last_success_unix == 0 {
                    format!("{key}: never backed up")
                } else {
                    format!(
                        "{key}: last good backup {} h ago, RPO target {} h",
                        (now - rec.last_success_unix) / 3600,
                        rpo / 3600
                    )
                });
            }
            if failing {
                reply.problems.push(format!("{key}: {} failed attempt(s): {}", rec.failures, rec.last_error));
            }
            reply.sources.push(pb::SourceStatus {
                agent: s.agent.clone(),
                source: s.name.clone(),
                vault: s.vault.clone(),
                last_success_unix: rec.last_success_unix,
                last_error: rec.last_error.clone(),
                rpo_seconds: rpo as u32,
                overdue,
                failing,
                next_run_unix: s.schedule.next_slot(chrono::Utc::now()).map_or(0, |t| t.timestamp()),
            });
        }
    }
    let offline_after = ctl.config.agent_offline_after.as_secs() as i64;
    for a in ctl.agent_infos() {
        if a.revoked {
            continue;
        }
        if !a.connected && now - a.last_seen_unix > offline_after {
            reply.problems.push(format!(
                "agent {} not seen for {} min",
                a.name,
                (now - a.last_seen_unix.max(a.enrolled_unix)) / 60
            ));
        }
        reply.agents.push(a);
    }
    for j in ctl.catalog.active_jobs()? {
        match j.state {
            JobState::Running => reply.jobs_running += 1,
            JobState::Queued => reply.jobs_queued += 1,
            _ => {}
        }
    }
    Ok(reply)
}
