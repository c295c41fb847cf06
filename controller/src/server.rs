//! `tresor-controller serve`: TLS listener (client certificates optional at the handshake,
//! required per call by AgentService), gRPC health, the scheduler, and a clean shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tresor_proto::MAX_MESSAGE_BYTES;
use tresor_proto::pb::admin_service_server::AdminServiceServer;
use tresor_proto::pb::agent_service_server::AgentServiceServer;

use crate::core::Controller;
use crate::error::{Error, Result};
use crate::grpc::{admin::AdminApi, agent::AgentApi};

/// Serve until `stop` turns true.
///
/// # Errors
/// The listener cannot be bound or TLS set up.
pub async fn serve(ctl: Arc<Controller>, stop: watch::Receiver<bool>) -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if ctl.catalog.fresh {
        let (queued, problems) = crate::scheduler::queue_rebuild(&ctl)?;
        for p in &problems {
            tracing::warn!(problem = %p, "catalog rebuild");
        }
        tracing::info!(vaults = queued, "new catalog: queued a scan of every vault on its maintainer");
        ctl.catalog.mark_complete().await?;
    }
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&ctl.pki.server_chain_pem, &ctl.pki.server_key_pem))
        .client_ca_root(Certificate::from_pem(ctl.pki.ca_pem()))
        .client_auth_optional(true);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServiceServer<AgentApi>>().await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;
    let agent = AgentServiceServer::new(AgentApi(ctl.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin = AdminServiceServer::new(AdminApi(ctl.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Before listening: a bad web_client_ca stops the start with its name.
    let web_tls = match ctl.config.web_listen {
        Some(a) => Some((a, crate::web::certs::page_tls(&ctl)?)),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(ctl.config.listen)
        .await
        .map_err(|e| Error::io(format!("listening on {}", ctl.config.listen), e))?;
    let addr = listener.local_addr().map_err(|e| Error::io("reading the listen address", e))?;
    tracing::info!(%addr, "controller listening");
    println!("tresor-controller listening on {addr}");
    let scheduler = tokio::spawn(crate::scheduler::run(ctl.clone(), stop.clone()));
    let alerts = tokio::spawn(crate::alerts::run(ctl.clone(), stop.clone()));
    let metrics = ctl.config.metrics_listen.map(|a| tokio::spawn(crate::metrics::serve(ctl.clone(), a, stop.clone())));
    let web = web_tls.map(|(a, tls)| tokio::spawn(crate::web::serve(ctl.clone(), a, tls, stop.clone())));
    let mut stop_grpc = stop.clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Server::builder()
        .tls_config(tls)
        .map_err(|e| Error::Pki(format!("TLS setup: {e}")))?
        .timeout(Duration::from_secs(120))
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(agent)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_grpc.wait_for(|s| *s).await;
        })
        .await
        .map_err(|e| Error::Serve { addr: addr.to_string(), detail: e.to_string() })?;
    let _ = scheduler.await;
    let _ = alerts.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    if let Some(w) = web {
        let _ = w.await;
    }
    ctl.catalog.flush().await?;
    Ok(())
}
