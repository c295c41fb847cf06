//! Restore drills on the controller's side: choosing the snapshot and the sandbox agent, judging
//! what the agent found against the plan's targets, signing the report and keeping it, and the
//! memory of each plan (last run, verdict) that scheduling and alerts read.

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tresor_proto::pb;
use tresor_report::drill::{Check, DrillReport, Level, Plan, REPORT_TYPE, Target, Verdict};

use crate::audit_log::{FAILED, OK};
use crate::catalog::{SnapshotRecord, decode, encode};
use crate::core::{Controller, now_unix};
use crate::drill_plan::{DrillPlan, SnapshotChoice};
use crate::error::{Error, Result};
use crate::jobs::{DrillSpec, JobRecord, JobSpec, JobState};

/// A drill without a plan: the recovery time objective it is judged by.
pub const DEFAULT_RTO_S: f64 = 4.0 * 3600.0;
/// The IT-Grundschutz requirements a drill report evidences.
pub const EVIDENCES: [&str; 3] = ["CON.3.A15", "NOT.4.16", "NOT.4.17"];

/// A drill as the catalog keeps it: the summary and the signed report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillRecord {
    /// Summary for lists.
    pub summary: DrillSummaryRecord,
    /// The signed report (JSON text, exactly as signed and stored in the vault).
    pub report: String,
    /// The vault it was stored in.
    pub vault: String,
}

/// The part of a report lists show.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrillSummaryRecord {
    /// Id.
    pub drill_id: String,
    /// `AGENT/SOURCE`.
    pub source: String,
    /// Policy and plan.
    pub policy: String,
    /// Plan.
    pub plan: String,
    /// `schedule` or `manual`.
    pub trigger: String,
    /// Snapshot.
    pub snapshot: String,
    /// RFC 3339.
    pub started: String,
    /// Unix seconds (for ordering and overdue checks).
    pub started_unix: i64,
    /// PASS or FAIL.
    pub verdict: String,
    /// Measured and target, seconds.
    pub rto_s: f64,
    /// See `rto_s`.
    pub rto_target_s: f64,
    /// See `rto_s`.
    pub rpo_s: f64,
    /// See `rto_s`.
    pub rpo_target_s: f64,
    /// `AGENT:PATH`.
    pub sandbox: String,
}

impl DrillSummaryRecord {
    /// As sent to tresorctl.
    pub fn to_pb(&self) -> pb::DrillSummary {
        pb::DrillSummary {
            drill_id: self.drill_id.clone(),
            source: self.source.clone(),
            policy: self.policy.clone(),
            plan: self.plan.clone(),
            trigger: self.trigger.clone(),
            snapshot: self.snapshot.clone(),
            started: self.started.clone(),
            verdict: self.verdict.clone(),
            rto_s: self.rto_s,
            rto_target_s: self.rto_target_s,
            rpo_s: self.rpo_s,
            rpo_target_s: self.rpo_target_s,
            sandbox: self.sandbox.clone(),
        }
    }
}

/// What the controller remembers of a plan.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PlanRecord {
    /// Since when the plan is scheduled (overdue counts from here until a first drill).
    pub tracked_since_unix: i64,
    /// The newest slot turned into a drill.
    pub last_slot_unix: i64,
    /// The last drill's start, id and verdict.
    pub last_run_unix: i64,
    /// See `last_run_unix`.
    pub last_drill_id: String,
    /// See `last_run_unix`.
    pub last_verdict: String,
    /// The newest slot a drill already queued or running covered (its slot was skipped as busy).
    #[serde(default)]
    pub covered_slot_unix: i64,
}

fn plan_key(policy: &str, plan: &str) -> String {
    format!("{policy}/{plan}")
}

/// A plan's state, as status, metrics, alerts and the auditor's page show it.
#[derive(Debug, Clone)]
pub struct PlanState {
    /// The policy.
    pub policy: String,
    /// The plan.
    pub plan: DrillPlan,
    /// Its memory.
    pub record: PlanRecord,
    /// The next slot.
    pub next_run_unix: i64,
    /// A slot passed (plus the grace) without a drill.
    pub overdue: bool,
    /// The last drill failed.
    pub failing: bool,
}

impl PlanState {
    /// As sent to tresorctl.
    pub fn to_pb(&self) -> pb::DrillPlanStatus {
        pb::DrillPlanStatus {
            policy: self.policy.clone(),
            plan: self.plan.name.clone(),
            source: format!("{}/{}", self.plan.agent, self.plan.source),
            last_run_unix: self.record.last_run_unix,
            last_verdict: self.record.last_verdict.clone(),
            last_drill_id: self.record.last_drill_id.clone(),
            next_run_unix: self.next_run_unix,
            overdue: self.overdue,
            failing: self.failing,
        }
    }
}

impl Controller {
    /// The plan memory.
    ///
    /// # Errors
    /// sled failed or the record is damaged.
    pub fn plan_record(&self, policy: &str, plan: &str) -> Result<PlanRecord> {
        let key = plan_key(policy, plan);
        match self.catalog.drill_plans.get(&key)? {
            Some(v) => decode(key.as_bytes(), &v),
            None => Ok(PlanRecord::default()),
        }
    }

    /// Store the plan memory.
    ///
    /// # Errors
    /// sled failed.
    pub fn put_plan_record(&self, policy: &str, plan: &str, r: &PlanRecord) -> Result<()> {
        let _ = self.catalog.drill_plans.insert(plan_key(policy, plan), encode(r))?;
        Ok(())
    }

    /// Every plan of the applied policies with its state at `now`.
    ///
    /// # Errors
    /// Catalog failures.
    pub fn plan_states(&self, now: i64) -> Result<Vec<PlanState>> {
        let grace = self.config.drill_grace.as_secs() as i64;
        let active: Vec<(String, String)> = self
            .catalog
            .active_jobs()?
            .into_iter()
            .filter_map(|j| match j.spec {
                JobSpec::Drill(d) if matches!(j.state, JobState::Queued | JobState::Running) => {
                    Some((d.policy, d.plan))
                }
                _ => None,
            })
            .collect();
        let mut out = Vec::new();
        for p in self.policies().values() {
            for plan in &p.drills {
                let record = self.plan_record(&p.name, &plan.name)?;
                let base = record.last_run_unix.max(record.tracked_since_unix).max(record.covered_slot_unix);
                let at = |t: i64| chrono::DateTime::from_timestamp(t, 0).unwrap_or_default();
                let due_after_base = plan.schedule.next_slot(at(base)).map(|t| t.timestamp());
                // A drill of the plan still queued or running is not missing.
                let active = active.iter().any(|(p_, n)| *p_ == p.name && *n == plan.name);
                let overdue =
                    !active && record.tracked_since_unix > 0 && due_after_base.is_some_and(|due| now > due + grace);
                let next_run_unix = plan.schedule.next_slot(at(now)).map_or(0, |t| t.timestamp());
                out.push(PlanState {
                    policy: p.name.clone(),
                    failing: record.last_verdict == "FAIL",
                    plan: plan.clone(),
                    record,
                    next_run_unix,
                    overdue,
                });
            }
        }
        Ok(out)
    }

    /// Queue a drill of `AGENT/SOURCE` now, following `plan` (or the source's first plan, or
    /// defaults when it has none).
    ///
    /// # Errors
    /// Unknown source, plan, snapshot or agent; a sandbox agent that cannot open the vault.
    pub fn start_drill(
        &self,
        selector: &str,
        plan: &str,
        snapshot: &str,
        keep: bool,
        trigger: &str,
        operator: &str,
    ) -> Result<JobRecord> {
        let (source, vault) = self.find_source(selector)?;
        let key = format!("{}/{}", source.agent, source.name);
        let policies = self.policies();
        let plans: Vec<(String, DrillPlan)> = policies
            .values()
            .flat_map(|p| p.drills.iter().map(|d| (p.name.clone(), d.clone())))
            .filter(|(_, d)| d.agent == source.agent && d.source == source.name)
            .collect();
        let chosen =
            if plan.is_empty() {
                plans.first().cloned()
            } else {
                Some(plans.iter().find(|(_, d)| d.name == plan).cloned().ok_or_else(|| {
                    Error::NotFound(format!("{key} has no drill plan {plan:?} in the applied policies"))
                })?)
            };
        let policy_of_source = policies
            .values()
            .find(|p| p.sources.iter().any(|s| s.agent == source.agent && s.name == source.name))
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let special_bits = chosen.as_ref().is_some_and(|(_, d)| d.special_bits);
        let (policy, plan_name, sandbox_agent, choice, rto_s, rpo_s, read, plan_keep) = match &chosen {
            Some((pol, d)) => (
                pol.clone(),
                d.name.clone(),
                d.sandbox_agent.clone(),
                d.snapshot.clone(),
                d.rto.as_secs_f64(),
                d.rpo.as_secs_f64(),
                d.read_data_percent,
                d.keep,
            ),
            None => (
                policy_of_source,
                "manual".to_string(),
                source.agent.clone(),
                SnapshotChoice::Latest,
                DEFAULT_RTO_S,
                source.rpo.as_secs_f64(),
                100.0,
                false,
            ),
        };
        let mut notes = Vec::new();
        let from = chosen.as_ref().and_then(|(_, d)| d.vault.clone()).unwrap_or_else(|| vault.name.clone());
        let snaps = if from == vault.name { self.snapshots(&key)? } else { self.copy_snapshots(&from, &key)? };
        let snap = self.drill_snapshot(&key, &snaps, snapshot, &choice, &mut notes)?;
        let (id, a) = self
            .state
            .find_agent(&sandbox_agent)
            .ok_or_else(|| Error::NotFound(format!("sandbox agent {sandbox_agent:?} is not enrolled")))?;
        if self.state.is_revoked(&id) {
            return Err(Error::FailedPrecondition(format!("sandbox agent {sandbox_agent} is revoked")));
        }
        if (sandbox_agent != source.agent || from != vault.name) && !self.opens_vault(&id, &from) {
            return Err(Error::FailedPrecondition(format!(
                "sandbox agent {sandbox_agent} cannot open vault {from:?}: give it its own key slot and list the vault in its agent.toml"
            )));
        }
        let spec = DrillSpec {
            drill_id: String::new(),
            policy,
            plan: plan_name,
            operator: operator.to_string(),
            source: key,
            snapshot: snap.snapshot_id.clone(),
            read_data_percent: read,
            // Below 2^53: the report's JSON numbers (and so its signature) keep it exactly.
            seed: rand::random::<u64>() >> 11,
            keep: keep || plan_keep,
            special_bits,
            rto_s,
            rpo_s,
            notes,
        };
        let mut job =
            JobRecord::new(id, a.name, from, JobSpec::Drill(Box::new(spec)), trigger, self.config.max_attempts);
        if let JobSpec::Drill(d) = &mut job.spec {
            d.drill_id = job.id.to_string();
        }
        self.jobs.submit(&job)?;
        if let JobSpec::Drill(d) = &job.spec {
            let object =
                format!("{} drill {} (plan {}/{}) snapshot {}", d.source, d.drill_id, d.policy, d.plan, d.snapshot);
            self.audit(operator, "drill.start", &object, OK, &format!("{trigger}; sandbox agent {}", job.agent_name));
        }
        Ok(job)
    }

    fn drill_snapshot(
        &self,
        key: &str,
        snaps: &[SnapshotRecord],
        prefix: &str,
        choice: &SnapshotChoice,
        notes: &mut Vec<String>,
    ) -> Result<SnapshotRecord> {
        if !prefix.is_empty() {
            let m: Vec<_> = snaps.iter().filter(|s| s.snapshot_id.starts_with(prefix)).collect();
            return match m.as_slice() {
                [one] => Ok((*one).clone()),
                [] => Err(Error::NotFound(format!("{key}: no snapshot {prefix}"))),
                _ => Err(Error::InvalidArgument(format!("snapshot prefix {prefix} is ambiguous; give more of it"))),
            };
        }
        let latest = snaps.last().cloned().ok_or_else(|| Error::NotFound(format!("{key} has no snapshots yet")))?;
        match choice {
            SnapshotChoice::Latest => Ok(latest),
            SnapshotChoice::RandomWithin(w) => {
                let since = Utc::now().timestamp_millis() - w.as_millis() as i64;
                let within: Vec<_> = snaps.iter().filter(|s| s.committed_ms.is_some_and(|t| t >= since)).collect();
                if within.is_empty() {
                    notes.push(format!(
                        "no snapshot was committed within the plan's window ({} s); the newest was drilled",
                        w.as_secs()
                    ));
                    return Ok(latest);
                }
                Ok(within[rand::random::<usize>() % within.len()].clone())
            }
        }
    }

    /// Judge a finished drill, sign its report and keep it; returns the documents the sandbox
    /// agent stores in the vault. `result` is `None` when the drill could not run (`error`).
    ///
    /// # Errors
    /// Catalog failures; the report cannot be signed.
    pub(crate) fn finish_drill(
        &self,
        job: &JobRecord,
        spec: &DrillSpec,
        result: Option<&pb::DrillResult>,
        error: &str,
    ) -> Result<Vec<pb::Document>> {
        // Signed once: a repeated delivery gets the same report, never a second signature.
        if let Some(rec) = self.drill(&spec.drill_id)? {
            return Ok(self.report_documents(&rec));
        }
        let mut r = result.cloned().unwrap_or_default();
        let mut notes_from_checks = Vec::new();
        for (name, x) in [
            ("rto_seconds", &mut r.rto_seconds),
            ("read_check_seconds", &mut r.read_check_seconds),
            ("restore_seconds", &mut r.restore_seconds),
        ] {
            if !x.is_finite() || *x < 0.0 {
                notes_from_checks.push(format!("the agent reported {name} = {x}; recorded as 0"));
                *x = 0.0;
            }
        }
        let started_ms = if job.started_ms > 0 { job.started_ms } else { Utc::now().timestamp_millis() };
        let started_unix = started_ms / 1000;
        // Achieved RPO: the drill's start (its dispatch, controller clock, like the receipts)
        // minus the newest good snapshot of the source at that moment, whichever snapshot the
        // drill restores.
        // (At a second site, the newest snapshot that site held when the drill started.)
        let held: Vec<SnapshotRecord> = match self.copy_source_of(&job.vault) {
            Some(_) => self
                .copy_snapshots(&job.vault, &spec.source)?
                .into_iter()
                .filter(|s| s.copied_ms.is_some_and(|t| t <= started_ms))
                .collect(),
            None => self.snapshots(&spec.source)?,
        };
        let newest_ms = held.iter().filter_map(|s| s.committed_ms).filter(|t| *t <= started_ms).max();
        // No receipt this controller can verify, only receipts of a controller before it (a new
        // controller after a site loss): the manifest times of those snapshots, said so.
        let unreceipted = newest_ms.is_none().then(|| {
            held.iter()
                .filter(|s| s.receipt_unverified)
                .filter_map(|s| chrono::DateTime::parse_from_rfc3339(&s.manifest_time).ok())
                .map(|t| t.timestamp_millis())
                .filter(|t| *t <= started_ms)
                .max()
        });
        let rpo_measured =
            newest_ms.or(unreceipted.flatten()).map_or(f64::from(u32::MAX), |t| (started_ms - t) as f64 / 1000.0);
        let mut checks: Vec<Check> = r
            .checks
            .iter()
            .map(|c| Check {
                level: match c.level.as_str() {
                    "read" => Level::Read,
                    "application" => Level::Application,
                    _ => Level::Structure,
                },
                subject: c.subject.clone(),
                check: c.check.clone(),
                result: Verdict::of(c.ok),
                detail: c.detail.clone(),
            })
            .collect();
        if !r.snapshot_id.is_empty() && r.snapshot_id != spec.snapshot {
            checks.push(Check {
                level: Level::Structure,
                subject: format!("snapshot {}", spec.snapshot),
                check: "the snapshot asked for was restored".into(),
                result: Verdict::Fail,
                detail: format!("the agent restored snapshot {} instead", r.snapshot_id),
            });
        }
        if result.is_none() || checks.is_empty() {
            checks.push(Check {
                level: Level::Structure,
                subject: spec.source.clone(),
                check: "drill ran".into(),
                result: Verdict::Fail,
                detail: if error.is_empty() { "the agent returned no findings".into() } else { error.to_string() },
            });
        }
        if let Some(from) = self.copy_source_of(&job.vault) {
            checks.push(Check {
                level: Level::Structure,
                subject: format!("vault {}", job.vault),
                check: "restored from the second site".into(),
                result: Verdict::of(result.is_some()),
                detail: format!(
                    "vault {} is the second site of vault {} (a copy under the same vault id and keys); the snapshot was read there, not at {}",
                    job.vault, from.name, from.name
                ),
            });
        }
        let mut anomalies = spec.notes.clone();
        if unreceipted.flatten().is_some() {
            anomalies.push(
                "no snapshot of the source has a receipt this controller can verify: the achieved RPO counts from the newest snapshot's own manifest time, which its writer set".into(),
            );
        }
        anomalies.extend(notes_from_checks);
        if job.attempt > 1 {
            anomalies.push(format!("the drill needed {} attempts", job.attempt));
        }
        anomalies.extend(r.anomalies.iter().cloned());
        let when = |t: i64| chrono::DateTime::from_timestamp(t, 0).unwrap_or_default().to_rfc3339();
        let report = DrillReport {
            kind: REPORT_TYPE.into(),
            drill_id: spec.drill_id.clone(),
            plan: Plan {
                policy: spec.policy.clone(),
                name: spec.plan.clone(),
                trigger: job.trigger.clone(),
                operator: spec.operator.clone(),
            },
            source: spec.source.clone(),
            source_kind: if r.source_kind.is_empty() { "files".into() } else { r.source_kind.clone() },
            snapshot: if r.snapshot_id.is_empty() { spec.snapshot.clone() } else { r.snapshot_id.clone() },
            snapshot_time: r.snapshot_time.clone(),
            rpo: Target::new(rpo_measured, spec.rpo_s),
            // A drill that never ran has no RTO: the time until it was given up, and FAIL.
            rto: if result.is_some() {
                Target::new(r.rto_seconds, spec.rto_s)
            } else {
                let waited = (Utc::now().timestamp_millis() - started_ms).max(0) as f64 / 1000.0;
                Target { measured_s: waited, target_s: spec.rto_s, result: Verdict::Fail }
            },
            read_check_s: r.read_check_seconds,
            read_share_percent: spec.read_data_percent,
            read_seed: (spec.read_data_percent < 100.0).then_some(spec.seed),
            sandbox: if r.sandbox.is_empty() { job.agent_name.clone() } else { r.sandbox.clone() },
            started: if r.started.is_empty() { when(started_unix) } else { r.started.clone() },
            ended: if r.ended.is_empty() { when(now_unix()) } else { r.ended.clone() },
            bytes: r.bytes,
            throughput_bps: if r.restore_seconds > 0.0 { r.bytes as f64 / r.restore_seconds } else { 0.0 },
            checks,
            anomalies,
            tresor_version: if r.tresor_version.is_empty() {
                env!("CARGO_PKG_VERSION").into()
            } else {
                r.tresor_version.clone()
            },
            format_version: r.format_version,
            key_slot: r.key_slot.clone(),
            evidences: EVIDENCES.iter().map(|s| (*s).to_string()).collect(),
            verdict: Verdict::Fail,
        }
        .finished();
        let mut doc = serde_json::to_value(&report).map_err(|e| Error::Config(format!("encoding the report: {e}")))?;
        self.state.sign_document(&mut doc)?;
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        let verdict = if report.verdict == Verdict::Pass { "PASS" } else { "FAIL" };
        let summary = DrillSummaryRecord {
            drill_id: spec.drill_id.clone(),
            source: spec.source.clone(),
            policy: spec.policy.clone(),
            plan: spec.plan.clone(),
            trigger: job.trigger.clone(),
            snapshot: report.snapshot.clone(),
            started: report.started.clone(),
            started_unix,
            verdict: verdict.into(),
            rto_s: report.rto.measured_s,
            rto_target_s: report.rto.target_s,
            rpo_s: report.rpo.measured_s,
            rpo_target_s: report.rpo.target_s,
            sandbox: report.sandbox.clone(),
        };
        let rec = DrillRecord { summary, report: text.clone(), vault: job.vault.clone() };
        let _ = self.catalog.drills.insert(spec.drill_id.as_bytes(), encode(&rec))?;
        // Lists, alerts and metrics read the small summaries, never the signed reports.
        let _ = self.catalog.drill_summaries.insert(spec.drill_id.as_bytes(), encode(&rec.summary))?;
        if spec.plan != "manual" {
            let mut p = self.plan_record(&spec.policy, &spec.plan)?;
            if started_unix >= p.last_run_unix {
                p.last_run_unix = started_unix;
                p.last_drill_id.clone_from(&spec.drill_id);
                p.last_verdict = verdict.into();
                self.put_plan_record(&spec.policy, &spec.plan, &p)?;
            }
        }
        let key_id = tresor_report::sign::key_id(&self.state.report_key());
        self.audit(
            &format!("agent:{}", job.agent_name),
            "drill",
            &format!("{} snapshot {} drill {}", spec.source, report.snapshot, spec.drill_id),
            if report.verdict == Verdict::Pass { OK } else { FAILED },
            &format!(
                "verdict {verdict}; RTO {:.1} s of {:.0} s, RPO {:.0} s of {:.0} s{}",
                report.rto.measured_s,
                report.rto.target_s,
                report.rpo.measured_s,
                report.rpo.target_s,
                result
                    .filter(|r| !r.sandbox_expires.is_empty())
                    .map(|r| format!("; sandbox {} kept until {}", r.sandbox, r.sandbox_expires))
                    .unwrap_or_default()
            ),
        );
        self.audit(
            "controller",
            "key.sign",
            &format!("report {}", spec.drill_id),
            OK,
            &format!("report-signing key {key_id}"),
        );
        Ok(self.report_documents(&rec))
    }

    /// The documents a report is stored as in its vault: the report and the key it verifies with.
    pub(crate) fn report_documents(&self, rec: &DrillRecord) -> Vec<pb::Document> {
        let key = self.state.report_key();
        vec![
            pb::Document {
                name: format!("reports/{}.json", rec.summary.drill_id),
                body: rec.report.clone().into_bytes(),
            },
            pb::Document {
                name: format!("reports/signing-{}.pub.pem", tresor_report::sign::key_id(&key)),
                body: tresor_report::sign::public_key_pem(&key).into_bytes(),
            },
        ]
    }

    /// A drill by id.
    ///
    /// # Errors
    /// sled failed, or the record is damaged.
    pub fn drill(&self, id: &str) -> Result<Option<DrillRecord>> {
        match self.catalog.drills.get(id.as_bytes())? {
            Some(v) => Ok(Some(decode(id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Drills of "", "AGENT" or "AGENT/SOURCE", newest first.
    ///
    /// # Errors
    /// sled failed, or a record is damaged.
    pub fn drills(&self, selector: &str) -> Result<Vec<DrillSummaryRecord>> {
        let mut out: Vec<DrillSummaryRecord> = Vec::new();
        for item in self.catalog.drill_summaries.iter() {
            let (k, v) = item?;
            let s: DrillSummaryRecord = match decode(&k, &v) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "a drill summary in the catalog is damaged; left out");
                    continue;
                }
            };
            let fits = selector.is_empty()
                || s.source == selector
                || s.source.split_once('/').is_some_and(|(a, _)| a == selector);
            if fits {
                out.push(s);
            }
        }
        // By the controller's clock: a sandbox agent's clock decides nothing here.
        out.sort_by(|a, b| b.started_unix.cmp(&a.started_unix).then(b.drill_id.cmp(&a.drill_id)));
        Ok(out)
    }

    /// The newest drill of each source (`AGENT/SOURCE`), for alerts and metrics.
    ///
    /// # Errors
    /// sled failed.
    pub fn newest_drills(&self) -> Result<std::collections::BTreeMap<String, DrillSummaryRecord>> {
        let mut newest = std::collections::BTreeMap::new();
        for d in self.drills("")? {
            let _ = newest.entry(d.source.clone()).or_insert(d);
        }
        Ok(newest)
    }

    /// Queue the drills whose slot came; called by the scheduler.
    ///
    /// # Errors
    /// Catalog failures.
    pub fn schedule_drills(&self) -> Result<bool> {
        let now = Utc::now();
        let mut wrote = false;
        // Read once, when the first slot is due; a plan's own drill queued below cannot make
        // another plan busy.
        let mut active: Option<Vec<JobRecord>> = None;
        for p in self.policies().values() {
            for plan in &p.drills {
                let mut rec = self.plan_record(&p.name, &plan.name)?;
                if rec.tracked_since_unix == 0 {
                    // New plans start at the current slot: the first drill is the next one.
                    rec.tracked_since_unix = now.timestamp();
                    rec.last_slot_unix = plan.schedule.last_slot(now).map_or(1, |t| t.timestamp());
                    self.put_plan_record(&p.name, &plan.name, &rec)?;
                    wrote = true;
                    continue;
                }
                let Some(slot) = plan.schedule.last_slot(now) else { continue };
                if slot.timestamp() <= rec.last_slot_unix {
                    continue;
                }
                let selector = format!("{}/{}", plan.agent, plan.source);
                if active.is_none() {
                    active = Some(self.catalog.active_jobs()?);
                }
                let busy = active
                    .iter()
                    .flatten()
                    .any(|j| matches!(&j.spec, JobSpec::Drill(d) if d.policy == p.name && d.plan == plan.name));
                if busy {
                    // The slot is not made up later: the plan's last drill has not ended yet.
                    tracing::info!(plan = %plan.name, "drill slot skipped: the previous drill is still queued or running");
                    rec.last_slot_unix = slot.timestamp();
                    rec.covered_slot_unix = slot.timestamp();
                    self.put_plan_record(&p.name, &plan.name, &rec)?;
                    wrote = true;
                    continue;
                }
                match self.start_drill(&selector, &plan.name, "", false, "schedule", "scheduler") {
                    Ok(job) => tracing::info!(plan = %plan.name, job = %job.id, "scheduled drill queued"),
                    Err(e) => {
                        tracing::warn!(plan = %plan.name, error = %e, "scheduled drill not queued");
                        self.audit("scheduler", "drill", &selector, FAILED, &format!("not queued: {e}"));
                    }
                }
                rec.last_slot_unix = slot.timestamp();
                self.put_plan_record(&p.name, &plan.name, &rec)?;
                wrote = true;
            }
        }
        Ok(wrote)
    }

    /// Drills whose job ended Failed without a Finish (its leases ran out: the agent was gone) get
    /// their FAIL report here; the vault's maintainer stores it.
    ///
    /// # Errors
    /// Catalog failures.
    pub fn report_orphan_drills(&self) -> Result<()> {
        for j in self.catalog.recent_done(64)? {
            let JobSpec::Drill(d) = &j.spec else { continue };
            // Only the key is looked at: a signed report is not parsed to learn it exists.
            if j.state != JobState::Failed || self.catalog.drills.contains_key(d.drill_id.as_bytes())? {
                continue;
            }
            let docs = self.finish_drill(&j, d, None, &j.error)?;
            self.queue_documents(&j.vault, &docs, "drill")?;
        }
        Ok(())
    }

    /// The signed report of a drill (JSON text).
    ///
    /// # Errors
    /// Unknown drill.
    pub fn report_json(&self, id: &str) -> Result<String> {
        let id = id.trim();
        if let Some(r) = self.drill(id)? {
            return Ok(r.report);
        }
        let matches: Vec<DrillSummaryRecord> =
            self.drills("")?.into_iter().filter(|d| !id.is_empty() && d.drill_id.starts_with(id)).collect();
        match matches.as_slice() {
            [one] => Ok(self.drill(&one.drill_id)?.map(|r| r.report).unwrap_or_default()),
            [] => Err(Error::NotFound(format!("no drill report {id} (see tresorctl drill list)"))),
            _ => Err(Error::InvalidArgument(format!("drill id {id} is ambiguous; give more of it"))),
        }
    }
}
