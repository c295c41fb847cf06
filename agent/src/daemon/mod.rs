//! The agent daemon: enrollment, the connection to the controller, heartbeats and certificate
//! renewal, the job stream, and the outbox. Jobs run the same data path as the local CLI.

pub mod config;
pub mod ctx;
pub mod drill;
pub mod exec;
pub mod leases;
pub mod outbox;
pub mod tls;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::{Semaphore, watch};
use tonic::Code;
use tresor_proto::pb;

use config::AgentConfig;
use ctx::AgentCtx;
use outbox::Outbox;
use tls::{Identity, IdentityFiles};

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `tresor-agent enroll`: trade a one-time token for a certificate.
pub async fn enroll(url: &str, token: &str, name: &str, state_dir: &Path) -> anyhow::Result<Identity> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let token = token.trim();
    let (_, pin) = token.rsplit_once('.').filter(|(s, p)| s.starts_with("tenr_") && p.len() == 32).with_context(|| {
        "this is not an enrollment token (they look like tenr_….<32 hex digits>); make one with `tresorctl token create`"
    })?;
    let files = IdentityFiles::new(state_dir);
    if files.exists() {
        bail!(
            "{} already holds an agent identity; to enroll again, remove identity.json there (and revoke the old agent: tresorctl agent revoke NAME)",
            state_dir.display()
        );
    }
    let ca = tls::fetch_pinned_ca(url, pin).await?;
    let (key, csr) = tls::new_key_and_csr(name)?;
    let mut client = tls::channel(url, &ca, None)?;
    let reply = client
        .enroll(pb::EnrollRequest { token: token.to_string(), name: name.to_string(), csr_pem: csr })
        .await
        .map_err(|s| anyhow::anyhow!("enrollment refused: {}", s.message()))?
        .into_inner();
    let id = Identity {
        agent_id: reply.agent_id,
        name: name.to_string(),
        controller: url.to_string(),
        not_after_unix: reply.not_after_unix,
        issued_unix: now_unix(),
    };
    files.store(&id, &reply.cert_pem, &key, &reply.ca_pem)?;
    Ok(id)
}

/// `tresor-agent run`: the daemon. Returns only on a fatal setup error.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let files = IdentityFiles::new(&cfg.state_dir);
    let (id, cert, key, ca) = files.load()?;
    let url = cfg.controller.clone().unwrap_or_else(|| id.controller.clone());
    let client = tls::channel(&url, &ca, Some((&cert, &key)))?;
    let (client_tx, client_rx) = watch::channel(client);
    let outbox = Outbox::open(&cfg.state_dir)?;
    let max_jobs = cfg.max_jobs;
    let ctx = Arc::new(AgentCtx::new(cfg, id.name.clone(), outbox, client_rx));
    tracing::info!(agent = %id.agent_id, name = %id.name, controller = %url, "agent starting");
    drop(tokio::spawn(renew_loop(files, url.clone(), ca, client_tx)));
    drop(tokio::spawn(heartbeat_loop(ctx.clone())));
    drop(tokio::spawn(outbox_loop(ctx.clone())));
    drop(tokio::spawn(drill::sweep_kept_sandboxes(ctx.clone())));
    stream_loop(ctx, max_jobs).await
}

/// Renew the certificate at two thirds of its life and switch to a new connection with it.
async fn renew_loop(files: IdentityFiles, url: String, ca: String, client_tx: watch::Sender<tls::Client>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok((mut id, ..)) = files.load() else { continue };
        let due = id.issued_unix + (id.not_after_unix - id.issued_unix) * 2 / 3;
        if now_unix() < due {
            continue;
        }
        let (key, csr) = match tls::new_key_and_csr(&id.name) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot make a key for renewal");
                continue;
            }
        };
        let mut client = client_tx.borrow().clone();
        match client.renew(pb::RenewRequest { csr_pem: csr }).await {
            Ok(r) => {
                let r = r.into_inner();
                id.not_after_unix = r.not_after_unix;
                id.issued_unix = now_unix();
                if let Err(e) = files.store(&id, &r.cert_pem, &key, &ca) {
                    tracing::error!(error = %format!("{e:#}"), "cannot store the renewed certificate");
                    continue;
                }
                match tls::channel(&url, &ca, Some((&r.cert_pem, &key))) {
                    Ok(c) => {
                        let _ = client_tx.send(c);
                        tracing::info!(until = r.not_after_unix, "certificate renewed");
                    }
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot use the renewed certificate"),
                }
            }
            Err(s) if now_unix() >= id.not_after_unix => {
                tracing::error!(error = %s.message(), "the certificate expired before it could be renewed; enroll this agent again");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Err(s) => tracing::warn!(error = %s.message(), "certificate renewal failed; retrying"),
        }
    }
}

/// How often vault reachability is re-checked for heartbeats.
const VAULT_RECHECK: Duration = Duration::from_secs(300);

async fn heartbeat_loop(ctx: Arc<AgentCtx>) {
    let mut interval = Duration::from_secs(5);
    let mut vaults = ctx.vault_states().await;
    let mut checked = Instant::now();
    let mut failing = false;
    let hostname = crate::host::hostname();
    loop {
        if ctx.take_vaults_changed()
            || checked.elapsed() > VAULT_RECHECK
            || vaults.iter().any(|v| !v.error.is_empty()) && checked.elapsed() > Duration::from_secs(30)
        {
            vaults = ctx.vault_states().await;
            checked = Instant::now();
        }
        let sent = Instant::now();
        let req = pb::HeartbeatRequest {
            running: ctx.leases.running(),
            version: env!("CARGO_PKG_VERSION").into(),
            hostname: hostname.clone(),
            vaults: vaults.clone(),
        };
        let mut client = ctx.client.borrow().clone();
        match client.heartbeat(req).await {
            Ok(r) => {
                let r = r.into_inner();
                ctx.leases.apply(&r.leases, sent);
                interval = Duration::from_millis(u64::from(r.interval_ms.clamp(200, 60_000)));
                if failing {
                    tracing::info!("controller reachable again");
                    ctx.outbox_wake.notify_one();
                }
                failing = false;
            }
            Err(s) => {
                if !failing {
                    tracing::warn!(error = %s.message(), "heartbeat failed; running jobs go on until their leases lapse");
                }
                failing = true;
            }
        }
        tokio::time::sleep(interval).await;
    }
}

async fn stream_loop(ctx: Arc<AgentCtx>, max_jobs: usize) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(max_jobs));
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut changes = ctx.client.clone();
        let mut client = changes.borrow_and_update().clone();
        match client.jobs(pb::JobsRequest {}).await {
            Ok(resp) => {
                backoff = Duration::from_millis(500);
                tracing::info!("connected to the controller; waiting for jobs");
                let mut stream = resp.into_inner();
                loop {
                    tokio::select! {
                        msg = stream.message() => match msg {
                            Ok(Some(job)) => {
                                let Some(jr) = job.r#ref.clone() else { continue };
                                // The controller started the lease before the job travelled here: until a
                                // heartbeat is granted, count only half of it. Heartbeats extend it while
                                // the job waits for a slot.
                                ctx.leases.start(&jr, Duration::from_millis(u64::from(job.lease_ms) / 2), Instant::now());
                                let (ctx, slots) = (ctx.clone(), slots.clone());
                                drop(tokio::spawn(async move {
                                    let Ok(_permit) = slots.acquire_owned().await else { return };
                                    exec::run_job(ctx, job).await;
                                }));
                            }
                            Ok(None) => break,
                            Err(s) => {
                                tracing::warn!(error = %s.message(), "job stream ended");
                                break;
                            }
                        },
                        _ = changes.changed() => break,
                    }
                }
            }
            Err(s) if s.code() == Code::Unauthenticated => {
                tracing::error!(error = %s.message(), "the controller refuses this agent");
                backoff = Duration::from_secs(30);
            }
            Err(s) => tracing::warn!(error = %s.message(), "cannot reach the controller; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(15));
    }
}

/// The configured vault a receipt belongs in: of those with its vault id, the first site (a second
/// site has the same id, and receives the receipt with its copy); `None` (try again later) when
/// a vault with that id cannot be opened now.
async fn vault_name_for(ctx: &AgentCtx, vault_id: &str) -> Option<String> {
    let (mut second, mut unopened) = (None, false);
    for name in ctx.cfg.vaults.keys() {
        let Ok(v) = ctx.vault(name).await else {
            unopened = true;
            continue;
        };
        if v.config().vault_id.to_string() != vault_id {
            continue;
        }
        if !v.config().second_site {
            return Some(name.clone());
        }
        second.get_or_insert_with(|| name.clone());
    }
    // A vault that did not open may be the first site: do not settle for a second one yet.
    if unopened { None } else { second }
}

async fn outbox_loop(ctx: Arc<AgentCtx>) {
    loop {
        for (path, result) in ctx.outbox.results() {
            let mut client = ctx.client.borrow().clone();
            match client.finish(result).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    if !reply.documents.is_empty() {
                        let docs =
                            pb::StoreDocuments { vault: reply.documents_vault.clone(), documents: reply.documents };
                        if let Err(e) = ctx.outbox.put_documents(&docs) {
                            tracing::error!(error = %format!("{e:#}"), "cannot keep the signed documents; retrying");
                            continue;
                        }
                    }
                    if let Some(r) = reply.receipt {
                        match vault_name_for(&ctx, &r.vault_id).await {
                            Some(v) => {
                                if let Err(e) = ctx.outbox.put_receipt(&v, &r) {
                                    // Keep the result: Finish answers the same receipt again. The
                                    // other results go on; only a lost connection stops the round.
                                    tracing::error!(error = %format!("{e:#}"), "cannot keep the receipt; retrying");
                                    continue;
                                }
                            }
                            None => {
                                tracing::warn!(vault = %r.vault_id, "receipt for a vault this agent cannot open now; retrying");
                                continue;
                            }
                        }
                    }
                    ctx.outbox.done(&path);
                }
                Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound | Code::InvalidArgument) => {
                    tracing::warn!(error = %s.message(), "the controller refused a result; dropped");
                    ctx.outbox.done(&path);
                }
                Err(s) => {
                    tracing::debug!(error = %s.message(), "result not delivered yet");
                    break;
                }
            }
        }
        for (path, p) in ctx.outbox.receipts() {
            let stored = match hex::decode(&p.receipt_hex)
                .ok()
                .and_then(|b| <pb::Receipt as tresor_proto::prost::Message>::decode(b.as_slice()).ok())
            {
                Some(r) => exec::store_receipt(&ctx, &p.vault, &r).await,
                None => Err(anyhow::anyhow!("pending receipt for {} is damaged", p.snapshot_id)),
            };
            match stored {
                Ok(()) => ctx.outbox.done(&path),
                Err(e) => {
                    tracing::warn!(snapshot = %p.snapshot_id, error = %format!("{e:#}"), "receipt not stored yet")
                }
            }
        }
        for (path, d) in ctx.outbox.documents() {
            match exec::store_documents(&ctx, &d).await {
                Ok(()) => ctx.outbox.done(&path),
                Err(e) => {
                    tracing::warn!(vault = %d.vault, error = %format!("{e:#}"), "signed documents not stored yet")
                }
            }
        }
        tokio::select! {
            () = ctx.outbox_wake.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
    }
}
