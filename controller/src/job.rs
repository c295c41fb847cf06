//! What a job is: its kind, its state, and its record in the catalog.

use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use tresor_proto::pb;
use tresor_proto::prost::Message;

use crate::ids::{AgentId, JobId};

/// What a job does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobSpec {
    /// Back up a source.
    Backup {
        /// Source name.
        source: String,
        /// Paths.
        paths: Vec<String>,
        /// Tags.
        tags: Vec<String>,
    },
    /// Restore a snapshot.
    Restore {
        /// Full snapshot id.
        snapshot: String,
        /// Target directory on the executing agent.
        target: String,
        /// Allow a non-empty target.
        force: bool,
        /// Only report what would be restored.
        dry_run: bool,
        /// Only these paths of the snapshot and what is below them (all when empty).
        #[serde(default)]
        include: Vec<String>,
        /// The agent/source the snapshot came from (for display).
        origin: String,
    },
    /// Check the vault.
    Check {
        /// Share of packs to read.
        read_data_percent: f64,
        /// The source whose policy scheduled it ("AGENT/SOURCE"), for its status.
        #[serde(default)]
        source: String,
    },
    /// Forget snapshots and collect garbage (maintainer only).
    Prune {
        /// Snapshot ids to forget.
        forget: Vec<String>,
        /// GC grace.
        gc_grace_seconds: u32,
        /// Why each is forgotten (snapshot id to the rule's words), for its audit entry.
        #[serde(default)]
        reasons: std::collections::BTreeMap<String, String>,
        /// Key slots of revoked agents to remove first (one new key epoch).
        #[serde(default)]
        revoke_slots: Vec<String>,
        /// Receipted snapshots of the vault not forgotten by this job: GC's listing must hold them.
        #[serde(default)]
        expected: Vec<String>,
        /// The longest gap between the vault's scheduled prunes, 0 when not scheduled.
        #[serde(default)]
        maintenance_interval_seconds: u64,
    },
    /// Copy snapshots of the job's vault to its second site (the job's agent opens both).
    Copy {
        /// The second site's vault name.
        to: String,
        /// Full snapshot ids to copy (none: only keys and late receipts).
        snapshots: Vec<String>,
    },
    /// List the vault's snapshots and receipts (catalog rebuild).
    Scan,
    /// A restore drill on the sandbox agent (the job's agent).
    Drill(Box<DrillSpec>),
    /// Store signed documents write-once in the vault (audit checkpoints).
    Documents {
        /// (name, body as base64).
        documents: Vec<(String, String)>,
    },
}

/// What a drill job carries: the plan it follows and what it restores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillSpec {
    /// The drill id (also the report's name).
    pub drill_id: String,
    /// The policy and plan (`manual` for a drill without a plan).
    pub policy: String,
    /// The plan's name.
    pub plan: String,
    /// Who started it: a token id, or `scheduler`.
    pub operator: String,
    /// `AGENT/SOURCE`.
    pub source: String,
    /// Full snapshot id.
    pub snapshot: String,
    /// Share of packs read, percent.
    pub read_data_percent: f64,
    /// Seed of a sampled read.
    pub seed: u64,
    /// Keep the sandbox.
    pub keep: bool,
    /// Restore setuid/setgid bits and file capabilities in the sandbox (left out otherwise).
    #[serde(default)]
    pub special_bits: bool,
    /// Targets, seconds.
    pub rto_s: f64,
    /// See `rto_s`.
    pub rpo_s: f64,
    /// What the report should say about the choice made (a window with no snapshot, say).
    #[serde(default)]
    pub notes: Vec<String>,
}

impl JobSpec {
    /// A documents job (bodies kept as base64 in the catalog's JSON).
    pub fn documents(docs: &[pb::Document]) -> Self {
        let documents =
            docs.iter().map(|d| (d.name.clone(), base64::engine::general_purpose::STANDARD.encode(&d.body))).collect();
        Self::Documents { documents }
    }

    /// A short name for the kind of job.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Backup { .. } => "backup",
            Self::Restore { .. } => "restore",
            Self::Check { .. } => "check",
            Self::Prune { .. } => "prune",
            Self::Copy { .. } => "copy",
            Self::Scan => "scan",
            Self::Drill(_) => "drill",
            Self::Documents { .. } => "documents",
        }
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its agent, its vault's concurrency limit or its retry time.
    Queued,
    /// Dispatched; the lease holds.
    Running,
    /// Done.
    Succeeded,
    /// Gave up.
    Failed,
}

impl JobState {
    /// The state's name as shown to people.
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// Latest progress of a running job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProgressRecord {
    /// Phase name.
    pub phase: String,
    /// Bytes done.
    pub bytes: u64,
    /// Files done.
    pub files: u64,
}

/// A job as the catalog keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    /// Id.
    pub id: JobId,
    /// The agent that runs it.
    pub agent_id: AgentId,
    /// Its name (for display).
    pub agent_name: String,
    /// The vault's name (agents resolve it in their agent.toml).
    pub vault: String,
    /// What to do.
    pub spec: JobSpec,
    /// Where it is.
    pub state: JobState,
    /// Attempts dispatched so far.
    pub attempt: u32,
    /// The current attempt's fence.
    pub lease_epoch: u64,
    /// Until when the current attempt's lease holds (Unix ms, controller clock).
    pub lease_deadline_ms: i64,
    /// Not dispatched before this (retry backoff; Unix ms).
    pub not_before_ms: i64,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Created (Unix seconds).
    pub created_unix: i64,
    /// Last dispatched.
    pub started_unix: i64,
    /// Last dispatched, Unix ms (a drill's start for its achieved RPO).
    #[serde(default)]
    pub started_ms: i64,
    /// Finished.
    pub finished_unix: i64,
    /// Error of the last attempt.
    pub error: String,
    /// The result (prost-encoded `JobResult`, base64).
    pub result: Option<String>,
    /// Progress.
    pub progress: ProgressRecord,
    /// "schedule", "manual", "rebuild", "retention".
    pub trigger: String,
    /// The receipt signed for this job's snapshot (prost-encoded, base64), so a repeated Finish
    /// of the same attempt gets the same answer.
    #[serde(default)]
    pub receipt: Option<String>,
}

impl JobRecord {
    /// A new queued job.
    pub fn new(
        agent_id: AgentId,
        agent_name: String,
        vault: String,
        spec: JobSpec,
        trigger: &str,
        max_attempts: u32,
    ) -> Self {
        Self {
            id: JobId::generate(),
            agent_id,
            agent_name,
            vault,
            spec,
            state: JobState::Queued,
            attempt: 0,
            lease_epoch: 0,
            lease_deadline_ms: 0,
            not_before_ms: 0,
            max_attempts,
            created_unix: chrono::Utc::now().timestamp(),
            started_unix: 0,
            started_ms: 0,
            finished_unix: 0,
            error: String::new(),
            result: None,
            progress: ProgressRecord::default(),
            trigger: trigger.to_string(),
            receipt: None,
        }
    }

    /// The fencing triple of the current attempt.
    pub fn job_ref(&self) -> pb::JobRef {
        pb::JobRef { job_id: self.id.to_string(), attempt: self.attempt, lease_epoch: self.lease_epoch }
    }

    /// The decoded result, if any.
    pub fn result(&self) -> Option<pb::JobResult> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(self.result.as_deref()?).ok()?;
        pb::JobResult::decode(bytes.as_slice()).ok()
    }

    /// The event WatchJob streams for this record.
    pub fn event(&self) -> pb::JobEvent {
        pb::JobEvent {
            job_id: self.id.to_string(),
            state: self.state.name().into(),
            attempt: self.attempt,
            agent: self.agent_name.clone(),
            phase: self.progress.phase.clone(),
            bytes_done: self.progress.bytes,
            files_done: self.progress.files,
            error: self.error.clone(),
            result: self.result(),
            kind: self.spec.kind().into(),
        }
    }

    /// The job as sent to its agent.
    pub(crate) fn to_wire(&self, lease: Duration) -> pb::Job {
        use pb::job::Kind;
        let kind = match &self.spec {
            JobSpec::Backup { source, paths, tags } => Kind::Backup(pb::BackupJob {
                source: source.clone(),
                vault: self.vault.clone(),
                paths: paths.clone(),
                tags: tags.clone(),
            }),
            JobSpec::Restore { snapshot, target, force, dry_run, include, .. } => Kind::Restore(pb::RestoreJob {
                vault: self.vault.clone(),
                snapshot: snapshot.clone(),
                target: target.clone(),
                force: *force,
                dry_run: *dry_run,
                include: include.clone(),
            }),
            JobSpec::Check { read_data_percent, .. } => {
                Kind::Check(pb::CheckJob { vault: self.vault.clone(), read_data_percent: *read_data_percent })
            }
            JobSpec::Prune {
                forget, gc_grace_seconds, revoke_slots, expected, maintenance_interval_seconds, ..
            } => Kind::Prune(pb::PruneJob {
                vault: self.vault.clone(),
                forget: forget.clone(),
                gc_grace_seconds: *gc_grace_seconds,
                revoke_slots: revoke_slots.clone(),
                expected: expected.clone(),
                maintenance_interval_seconds: *maintenance_interval_seconds,
            }),
            JobSpec::Copy { to, snapshots } => {
                Kind::Copy(pb::CopyJob { from: self.vault.clone(), to: to.clone(), snapshots: snapshots.clone() })
            }
            JobSpec::Scan => Kind::Scan(pb::ScanJob { vault: self.vault.clone() }),
            JobSpec::Drill(d) => Kind::Drill(pb::DrillJob {
                drill_id: d.drill_id.clone(),
                vault: self.vault.clone(),
                snapshot: d.snapshot.clone(),
                read_data_percent: d.read_data_percent,
                seed: d.seed,
                keep: d.keep,
                source: d.source.split_once('/').map_or(d.source.clone(), |(_, s)| s.to_string()),
                special_bits: d.special_bits,
            }),
            JobSpec::Documents { documents } => Kind::Documents(pb::StoreDocuments {
                vault: self.vault.clone(),
                documents: documents
                    .iter()
                    .map(|(name, b64)| pb::Document {
                        name: name.clone(),
                        body: base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default(),
                    })
                    .collect(),
            }),
        };
        pb::Job { r#ref: Some(self.job_ref()), lease_ms: lease.as_millis() as u32, kind: Some(kind) }
    }
}
