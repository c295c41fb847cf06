//! What every job task of the daemon shares: settings, leases, the outbox, the current client and
//! the opened vaults.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::{Notify, watch};
use tresor_proto::pb;
use tresor_vault::{Vault, backend};

use super::config::AgentConfig;
use super::leases::Leases;
use super::outbox::Outbox;
use super::tls::Client;

/// What every job task shares.
pub struct AgentCtx {
    /// Settings.
    pub cfg: AgentConfig,
    /// The name this agent enrolled with.
    pub name: String,
    /// Job leases.
    pub leases: Leases,
    /// Results and receipts not yet delivered.
    pub outbox: Outbox,
    /// Wakes the outbox sender.
    pub outbox_wake: Notify,
    /// The current client (replaced when the certificate is renewed).
    pub client: watch::Receiver<Client>,
    vaults: Mutex<HashMap<String, Arc<Vault>>>,
    /// A job changed what a vault is (a copy made a second site): the heartbeat looks again.
    vaults_changed: std::sync::atomic::AtomicBool,
}

impl AgentCtx {
    /// Shared state for the daemon.
    pub fn new(cfg: AgentConfig, name: String, outbox: Outbox, client: watch::Receiver<Client>) -> Self {
        Self {
            cfg,
            name,
            leases: Leases::default(),
            outbox,
            outbox_wake: Notify::new(),
            client,
            vaults: Mutex::new(HashMap::new()),
            vaults_changed: Default::default(),
        }
    }

    /// Have the next heartbeat report the vaults as they are now.
    pub fn vaults_changed(&self) {
        self.vaults_changed.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a job changed a vault since the last call.
    pub fn take_vaults_changed(&self) -> bool {
        self.vaults_changed.swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// The index cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("cache")
    }

    /// Open a vault by its name in agent.toml (opened vaults are kept, and opened again when a
    /// key epoch began since, so new data is sealed under the newest epoch).
    pub async fn vault(&self, name: &str) -> anyhow::Result<Arc<Vault>> {
        let cached = self.vaults.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        if let Some(v) = cached {
            match v.check_epoch().await {
                Err(tresor_vault::Error::EpochChanged(epoch)) => {
                    tracing::info!(vault = name, epoch, "a key epoch began; opening the vault again")
                }
                // Other trouble surfaces where the vault is used.
                _ => return Ok(v),
            }
        }
        let v = Arc::new(self.open_vault(name).await?);
        let _ = self.vaults.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), v.clone());
        Ok(v)
    }

    /// The kept handle as it is (no listing of `epochs/`: the heartbeat runs every few seconds,
    /// and every job's `vault` looks), or a fresh one.
    async fn kept_or_open(&self, name: &str) -> anyhow::Result<Arc<Vault>> {
        if let Some(v) = self.vaults.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(v.clone());
        }
        self.vault(name).await
    }

    /// A handle of its own on a vault (for key changes, which need one), with the secret that
    /// opened it. The kept handle is dropped, so the next use opens the vault again.
    pub async fn vault_owned(&self, name: &str) -> anyhow::Result<(Vault, tresor_vault::Secret)> {
        let _ = self.vaults.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        let v = self.open_vault(name).await?;
        Ok((v, self.vault_secret(name)?))
    }

    fn vault_secret(&self, name: &str) -> anyhow::Result<tresor_vault::Secret> {
        let vc = self.cfg.vaults.get(name).with_context(|| {
            format!("this agent has no vault {name:?} in its agent.toml; add [vaults.{name}] with its url and this agent's password_file")
        })?;
        crate::secret::open_secret(vc.password_file.as_deref(), vc.escrow_key_file.as_deref())
    }

    /// A second site's storage (`[vaults.NAME]`), which may not hold a vault yet.
    pub fn site(&self, name: &str) -> anyhow::Result<tresor_vault::backend::DynBackend> {
        let vc = self.cfg.vaults.get(name).with_context(|| {
            format!("this agent has no vault {name:?} in its agent.toml; add [vaults.{name}] with the copy's url and the source's password_file")
        })?;
        Ok(backend::from_url(&vc.url)?)
    }

    async fn open_vault(&self, name: &str) -> anyhow::Result<Vault> {
        let secret = self.vault_secret(name)?;
        let url = &self.cfg.vaults[name].url;
        let be = backend::from_url(url)?;
        Vault::open(be, &secret).await.with_context(|| format!("vault {name} ({url})"))
    }

    /// Try every configured vault, for the heartbeat. A vault whose newest key epoch this
    /// agent's slot does not reach (it was revoked) is reported as not writable.
    pub async fn vault_states(&self) -> Vec<pb::VaultState> {
        let mut out = Vec::new();
        for name in self.cfg.vaults.keys() {
            let st = match self.kept_or_open(name).await {
                Ok(v) => pb::VaultState {
                    name: name.clone(),
                    vault_id: v.config().vault_id.to_string(),
                    error: v.writable().err().map(|e| e.to_string()).unwrap_or_default(),
                    key_slot: v.slot_id().to_string(),
                    key_epoch: v.key_epoch(),
                    durability_unverified: v.durability_unverified().unwrap_or_default(),
                    endpoint: v.backend().endpoint().unwrap_or_default(),
                    endpoint_failover: v.backend().endpoint_failover().unwrap_or_default(),
                },
                Err(e) => pb::VaultState { name: name.clone(), error: format!("{e:#}"), ..Default::default() },
            };
            out.push(st);
        }
        out
    }

    pub(crate) async fn progress(&self, job: &pb::JobRef, phase: &str, bytes: u64, files: u64) {
        let mut c = self.client.borrow().clone();
        let report = pb::ProgressReport {
            r#ref: Some(job.clone()),
            phase: phase.into(),
            bytes_done: bytes,
            files_done: files,
            message: String::new(),
        };
        if let Err(e) = c.progress(report).await {
            tracing::debug!(error = %e.message(), "progress not delivered");
        }
    }
}
