//! AdminService: everything tresorctl does, each call checked against the caller's role.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tresor_proto::pb;
use tresor_proto::pb::admin_service_server::AdminService;

use super::bearer;
use crate::audit_log::{FAILED, OK};
use crate::core::Controller;
use crate::error::Error;
use crate::ids::Role;
use crate::jobs::{JobRecord, JobSpec, JobState};

/// The service.
pub struct AdminApi(pub Arc<Controller>);

/// Bound of a WatchJob stream, in events.
const WATCH_EVENTS: usize = 16;

impl AdminApi {
    /// The caller (`ROLE:TOKEN-ID`) if its token has at least `role`.
    fn need<T>(&self, req: &Request<T>, role: Role, what: &str) -> Result<String, Status> {
        let client = req.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.ip().to_string());
        Ok(self.0.authorize(bearer(req), role, what, &client)?)
    }

    /// Record a call's outcome in the audit log, then answer it.
    fn audited<T>(&self, actor: &str, action: &str, object: &str, r: Result<T, Error>) -> Result<T, Status> {
        match &r {
            Ok(_) => self.0.audit(actor, action, object, OK, ""),
            Err(e) => self.0.audit(actor, action, object, FAILED, &e.to_string()),
        }
        Ok(r?)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

fn snapshot_meta(s: &crate::catalog::SnapshotRecord) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        snapshot_id: s.snapshot_id.clone(),
        vault_id: s.vault_id.clone(),
        agent: s.agent.clone(),
        source: s.source.clone(),
        manifest_time: s.manifest_time.clone(),
        files: s.files,
        bytes_total: s.bytes_total,
        bytes_new: s.bytes_new,
        bytes_stored: s.bytes_stored,
        duration_ms: s.duration_ms,
        paths: s.paths.clone(),
        host: s.host.clone(),
        receipt: s.committed_ms.map(|t| pb::Receipt {
            vault_id: s.vault_id.clone(),
            snapshot_id: s.snapshot_id.clone(),
            agent: s.agent.clone(),
            source: s.source.clone(),
            committed_unix_ms: t,
            signature: s.receipt_sig.as_deref().and_then(|h| hex::decode(h).ok()).unwrap_or_default(),
            job_id: s.job.clone().unwrap_or_default(),
        }),
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        self.need(&req, Role::Auditor, "status")?;
        Ok(Response::new(crate::status::status(&self.0)?))
    }

    async fn list_agents(&self, req: Request<pb::ListAgentsRequest>) -> Result<Response<pb::AgentList>, Status> {
        self.need(&req, Role::Auditor, "agents")?;
        Ok(Response::new(pb::AgentList { agents: self.0.agent_infos() }))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenReply>, Status> {
        let actor = self.need(&req, Role::Admin, "token create")?;
        let r = req.get_ref();
        let made = self.0.create_token(&r.role, r.ttl_seconds, &r.label).await;
        let (token, expires_unix) =
            self.audited(&actor, "token.create", &format!("{} token {:?}", r.role, r.label), made)?;
        Ok(Response::new(pb::CreateTokenReply { token, expires_unix }))
    }

    async fn revoke_agent(
        &self,
        req: Request<pb::RevokeAgentRequest>,
    ) -> Result<Response<pb::RevokeAgentReply>, Status> {
        let actor = self.need(&req, Role::Admin, "agent revoke")?;
        let name = &req.get_ref().agent;
        let revoked = self.0.revoke(name).await;
        let id = self.audited(&actor, "revoke", &format!("agent {name}"), revoked)?;
        Ok(Response::new(pb::RevokeAgentReply { agent_id: id.to_string() }))
    }

    async fn apply_policy(
        &self,
        req: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::ApplyPolicyReply>, Status> {
        let actor = self.need(&req, Role::Admin, "policy apply")?;
        let r = req.get_ref();
        let origin = if r.file_name.is_empty() { "policy" } else { &r.file_name };
        let applied = self.0.apply_policy(&r.toml, origin).await;
        let object = match &applied {
            Ok(a) => format!("policy {} (text BLAKE3 {})", a.policy, blake3::hash(r.toml.as_bytes()).to_hex()),
            Err(_) => format!("policy file {origin}"),
        };
        Ok(Response::new(self.audited(&actor, "policy.apply", &object, applied)?))
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::SnapshotList>, Status> {
        self.need(&req, Role::Auditor, "snapshots")?;
        let snaps = self.0.snapshots(&req.get_ref().selector)?;
        Ok(Response::new(pb::SnapshotList { snapshots: snaps.iter().map(snapshot_meta).collect() }))
    }

    async fn start_backup(&self, req: Request<pb::StartBackupRequest>) -> Result<Response<pb::JobHandle>, Status> {
        let actor = self.need(&req, Role::Operator, "backup")?;
        let selector = &req.get_ref().selector;
        let started = self.0.start_backup(selector, "manual");
        let job = self.audited(&actor, "backup.start", selector, started)?;
        self.0.catalog.flush().await?;
        Ok(Response::new(pb::JobHandle { job_id: job.id.to_string() }))
    }

    async fn start_restore(&self, req: Request<pb::StartRestoreRequest>) -> Result<Response<pb::JobHandle>, Status> {
        let actor = self.need(&req, Role::Operator, "restore")?;
        let r = req.get_ref();
        let started = start_restore(&self.0, r);
        let object = format!("{} snapshot {:?} to {:?} on {:?}", r.selector, r.snapshot, r.target, r.on_agent);
        let job = self.audited(&actor, "restore.start", &object, started)?;
        self.0.catalog.flush().await?;
        Ok(Response::new(pb::JobHandle { job_id: job.id.to_string() }))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(&self, req: Request<pb::JobHandle>) -> Result<Response<Self::WatchJobStream>, Status> {
        self.need(&req, Role::Auditor, "watch")?;
        let id = req.get_ref().job_id.clone();
        // Subscribe before reading the record so no transition falls between the two.
        let mut events = self.0.jobs.subscribe();
        let job = self.0.catalog.job(&id)?.ok_or_else(|| Error::NotFound(format!("no job {id}")))?;
        let (tx, rx) = mpsc::channel(WATCH_EVENTS);
        let ctl = self.0.clone();
        drop(tokio::spawn(async move {
            let mut last = job.event();
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            let terminal = |e: &pb::JobEvent| e.state == "succeeded" || e.state == "failed";
            while !terminal(&last) {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(ev) if ev.job_id == id => last = ev,
                        Ok(_) => continue,
                        // Fell behind: re-read the record instead of replaying.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            match ctl.catalog.job(&id) { Ok(Some(j)) => last = j.event(), _ => return }
                        }
                        Err(_) => return,
                    },
                    () = tx.closed() => return,
                }
                if tx.send(Ok(last.clone())).await.is_err() {
                    return;
                }
            }
        }));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn rebuild_catalog(
        &self,
        req: Request<pb::RebuildCatalogRequest>,
    ) -> Result<Response<pb::RebuildCatalogReply>, Status> {
        let actor = self.need(&req, Role::Admin, "rebuild-catalog")?;
        let queued = crate::scheduler::queue_rebuild(&self.0);
        let (vaults, problems) = self.audited(&actor, "catalog.rebuild", "every vault", queued)?;
        self.0.catalog.flush().await?;
        Ok(Response::new(pb::RebuildCatalogReply { vaults, snapshots: 0, problems }))
    }

    async fn list_tokens(&self, req: Request<pb::ListTokensRequest>) -> Result<Response<pb::TokenList>, Status> {
        self.need(&req, Role::Admin, "token list")?;
        let tokens = self.0.state.access_tokens().into_iter().map(|(id, t)| token_info(id, &t)).collect();
        Ok(Response::new(pb::TokenList { tokens }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenReply>, Status> {
        let actor = self.need(&req, Role::Admin, "token revoke")?;
        let id = req.get_ref().id.clone();
        let object = format!("token {id}");
        let revoked = self.0.blocking(move |c| c.state.revoke_access(&id, crate::core::now_unix())).await;
        let (id, t) = self.audited(&actor, "token.revoke", &object, revoked)?;
        Ok(Response::new(pb::RevokeTokenReply { token: Some(token_info(id, &t)) }))
    }

    async fn remove_policy(
        &self,
        req: Request<pb::RemovePolicyRequest>,
    ) -> Result<Response<pb::RemovePolicyReply>, Status> {
        let actor = self.need(&req, Role::Admin, "policy remove")?;
        let name = &req.get_ref().name;
        let removed = self.0.remove_policy(name).await;
        let sources = self.audited(&actor, "policy.remove", &format!("policy {name}"), removed)?;
        Ok(Response::new(pb::RemovePolicyReply { sources }))
    }

    async fn start_prune(&self, req: Request<pb::StartPruneRequest>) -> Result<Response<pb::StartPruneReply>, Status> {
        let actor = self.need(&req, Role::Admin, "prune")?;
        let r = req.get_ref();
        if r.dry_run {
            let plan = self.0.plan_prune(&r.vault)?;
            return Ok(Response::new(pb::StartPruneReply {
                job_id: String::new(),
                forget: plan.forget.iter().map(snapshot_meta).collect(),
                keep: plan.kept as u32,
            }));
        }
        let started = self.0.start_prune(&r.vault, "manual");
        let (job, plan) = self.audited(&actor, "prune.start", &format!("vault {}", r.vault), started)?;
        self.0.catalog.flush().await?;
        Ok(Response::new(pb::StartPruneReply {
            job_id: job.id.to_string(),
            forget: plan.forget.iter().map(snapshot_meta).collect(),
            keep: plan.kept as u32,
        }))
    }

    async fn start_copy(&self, req: Request<pb::StartCopyRequest>) -> Result<Response<pb::JobHandle>, Status> {
        let actor = self.need(&req, Role::Admin, "copy")?;
        let vault = req.get_ref().vault.clone();
        let started = self.0.start_copy(&vault, "manual");
        let job = self.audited(&actor, "copy.start", &format!("vault {vault}"), started)?;
        self.0.catalog.flush().await?;
        Ok(Response::new(pb::JobHandle { job_id: job.id.to_string() }))
    }

    async fn start_drill(&self, req: Request<pb::StartDrillRequest>) -> Result<Response<pb::JobHandle>, Status> {
        let actor = self.need(&req, Role::Operator, "drill run")?;
        let r = req.get_ref();
        // A started drill records itself (with its id and snapshot); a refused one is recorded here.
        let job = match self.0.start_drill(&r.selector, &r.plan, &r.snapshot, r.keep, "manual", &actor) {
            Ok(job) => job,
            Err(e) => {
                self.0.audit(&actor, "drill.start", &r.selector, FAILED, &e.to_string());
                return Err(e.into());
            }
        };
        self.0.catalog.flush().await?;
        Ok(Response::new(pb::JobHandle { job_id: job.id.to_string() }))
    }

    async fn list_drills(&self, req: Request<pb::ListDrillsRequest>) -> Result<Response<pb::DrillList>, Status> {
        self.need(&req, Role::Auditor, "drill list")?;
        let drills = self.0.drills(&req.get_ref().selector)?.iter().map(|d| d.to_pb()).collect();
        let plans = self.0.plan_states(crate::core::now_unix())?.iter().map(|p| p.to_pb()).collect();
        Ok(Response::new(pb::DrillList { drills, plans }))
    }

    async fn get_report(&self, req: Request<pb::GetReportRequest>) -> Result<Response<pb::ReportReply>, Status> {
        let actor = self.need(&req, Role::Auditor, "report show")?;
        let id = &req.get_ref().drill_id;
        let json = self.audited(&actor, "report.read", &format!("drill {id}"), self.0.report_json(id))?;
        let public_key_pem = tresor_report::sign::public_key_pem(&self.0.state.report_key());
        Ok(Response::new(pb::ReportReply { json, public_key_pem }))
    }

    async fn get_audit_log(&self, req: Request<pb::GetAuditLogRequest>) -> Result<Response<pb::AuditLog>, Status> {
        let actor = self.need(&req, Role::Auditor, "audit")?;
        use crate::audit_log::{AUDIT_PAGE, AuditLog};
        let from = req.get_ref().from_seq;
        let read = AuditLog::entries(&self.0.catalog, from, AUDIT_PAGE + 1)
            .and_then(|e| Ok((e, if from == 0 { AuditLog::checkpoints(&self.0.catalog)? } else { vec![] })));
        // Reading is itself recorded, page by page.
        let (mut entries, checkpoints) =
            self.audited(&actor, "audit.read", &format!("the audit log from entry {from}"), read)?;
        let more = entries.len() > AUDIT_PAGE;
        entries.truncate(AUDIT_PAGE);
        let text = |v: &serde_json::Value| v.to_string();
        Ok(Response::new(pb::AuditLog {
            more,
            entries: entries.iter().map(text).collect(),
            checkpoints: checkpoints.iter().map(text).collect(),
            public_key_pem: tresor_report::sign::public_key_pem(&self.0.state.report_key()),
        }))
    }
}

fn token_info(id: String, t: &crate::state::AccessToken) -> pb::TokenInfo {
    pb::TokenInfo { id, role: t.role.name().into(), label: t.label.clone(), expires_unix: t.expires_unix }
}

/// Resolve a restore request into a queued job on the agent that will write the files.
fn start_restore(ctl: &Controller, r: &pb::StartRestoreRequest) -> Result<JobRecord, Error> {
    let (source, vault) = ctl.find_source(&r.selector)?;
    // The agent checks again, against its own restore roots.
    let target = tresor_proto::normalize_target(std::path::Path::new(&r.target))
        .map_err(|why| Error::InvalidArgument(format!("--to: {why}")))?
        .display()
        .to_string();
    for p in &r.include {
        if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
            return Err(Error::InvalidArgument(format!(
                "--include {p:?}: give an absolute path of the snapshot (as `snapshots` lists them), without `..`"
            )));
        }
    }
    // From the second site: its own holdings, and an agent that lists it.
    let (vault_name, snaps) = if r.from_vault.is_empty() {
        (vault.name.clone(), ctl.snapshots(&r.selector)?)
    } else {
        if ctl.copy_source_of(&r.from_vault).is_none_or(|v| v.name != vault.name) {
            return Err(Error::InvalidArgument(format!(
                "--from-vault {:?}: not the second site of vault {:?}, which {} backs up to (copy_to in its [[vault]])",
                r.from_vault, vault.name, r.selector
            )));
        }
        (r.from_vault.clone(), ctl.copy_snapshots(&r.from_vault, &r.selector)?)
    };
    let snap =
        if !r.snapshot.is_empty() {
            let matching: Vec<_> = snaps.iter().filter(|s| s.snapshot_id.starts_with(&r.snapshot)).collect();
            match matching.as_slice() {
                [one] => (*one).clone(),
                [] => return Err(Error::NotFound(format!("{}: no snapshot {}", r.selector, r.snapshot))),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "snapshot prefix {} is ambiguous; give more of it",
                        r.snapshot
                    )));
                }
            }
        } else if !r.at.is_empty() {
            let at = chrono::DateTime::parse_from_rfc3339(&r.at)
                .map_err(|e| {
                    Error::InvalidArgument(format!(
                        "--at {:?}: not an RFC 3339 time such as 2026-11-28T02:00:00+01:00 ({e})",
                        r.at
                    ))
                })?
                .timestamp();
            snaps.iter().rfind(|s| s.committed_ms.is_some_and(|t| t <= at * 1000 + 999)).cloned().ok_or_else(|| {
                Error::NotFound(format!("{}: no snapshot committed at or before {}", r.selector, r.at))
            })?
        } else {
            snaps.last().cloned().ok_or_else(|| Error::NotFound(format!("{} has no snapshots yet", r.selector)))?
        };
    let on = if r.on_agent.is_empty() { source.agent.clone() } else { r.on_agent.clone() };
    let (id, a) = ctl.state.find_agent(&on).ok_or_else(|| Error::NotFound(format!("--on {on:?}: no such agent")))?;
    if ctl.state.is_revoked(&id) {
        return Err(Error::FailedPrecondition(format!("agent {on} is revoked")));
    }
    if (on != source.agent || vault_name != vault.name) && !ctl.opens_vault(&id, &vault_name) {
        return Err(Error::FailedPrecondition(format!(
            "agent {on} cannot open vault {vault_name:?}: it needs its own key slot. On a machine that opens the vault run \
             `tresor-agent key add --vault URL --label {on}`, give {on} that password file, list the vault in {on}'s \
             agent.toml as [vaults.{vault_name}] and restart the agent"
        )));
    }
    let spec = JobSpec::Restore {
        snapshot: snap.snapshot_id.clone(),
        target,
        force: r.force,
        dry_run: r.dry_run,
        include: r.include.clone(),
        origin: r.selector.clone(),
    };
    let mut job = JobRecord::new(id, a.name, vault_name, spec, "manual", 1);
    job.state = JobState::Queued;
    ctl.jobs.submit(&job)?;
    Ok(job)
}
