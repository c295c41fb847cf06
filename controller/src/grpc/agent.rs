//! AgentService: enrollment, renewal, heartbeats, the job stream, progress and results.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tresor_proto::pb;
use tresor_proto::pb::agent_service_server::AgentService;

use super::agent_of;
use crate::core::Controller;
use crate::jobs::AGENT_STREAM_JOBS;

/// The service.
pub struct AgentApi(pub Arc<Controller>);

impl AgentApi {
    fn agent<T>(&self, req: &Request<T>) -> Result<crate::ids::AgentId, Status> {
        let id = agent_of(req)?;
        let _ = self.0.known_agent(&id)?;
        Ok(id)
    }
}

type JobStream = Pin<Box<dyn Stream<Item = Result<pb::Job, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn enroll(&self, req: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollReply>, Status> {
        Ok(Response::new(self.0.enroll(req.get_ref()).await?))
    }

    async fn renew(&self, req: Request<pb::RenewRequest>) -> Result<Response<pb::RenewReply>, Status> {
        let id = self.agent(&req)?;
        Ok(Response::new(self.0.renew(&id, &req.get_ref().csr_pem).await?))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatReply>, Status> {
        let id = self.agent(&req)?;
        self.0.seen(&id, req.get_ref()).await?;
        let leases = self.0.jobs.heartbeat(&id, &req.get_ref().running)?;
        Ok(Response::new(pb::HeartbeatReply { leases, interval_ms: self.0.config.heartbeat.as_millis() as u32 }))
    }

    type JobsStream = JobStream;

    async fn jobs(&self, req: Request<pb::JobsRequest>) -> Result<Response<Self::JobsStream>, Status> {
        let id = self.agent(&req)?;
        let (tx, rx) = mpsc::channel(AGENT_STREAM_JOBS);
        let conn = self.0.jobs.connect(&id, tx.clone());
        tracing::info!(agent = %id, "agent connected");
        // The stream ends when the agent goes away; then dispatch to it stops.
        let ctl = self.0.clone();
        // A revocation (or a newer connection of the same agent) ends it from this side.
        drop(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tx.closed() => break,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                        if ctl.state.is_revoked(&id) || !ctl.jobs.holds(&id, conn) {
                            break;
                        }
                    }
                }
            }
            drop(tx);
            ctl.jobs.disconnect(&id, conn);
            tracing::info!(agent = %id, "agent disconnected");
        }));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn progress(&self, req: Request<pb::ProgressReport>) -> Result<Response<pb::Ack>, Status> {
        let id = self.agent(&req)?;
        self.0.jobs.progress(&id, req.get_ref())?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn finish(&self, req: Request<pb::JobResult>) -> Result<Response<pb::FinishReply>, Status> {
        let id = self.agent(&req)?;
        Ok(Response::new(self.0.finish(&id, req.into_inner()).await?))
    }
}
