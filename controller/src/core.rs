//! The controller's shared state and the operations the gRPC services, the scheduler and the
//! command line call. Nothing here touches backup data or holds vault keys.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tresor_proto::pb;

use crate::catalog::{Catalog, EnrollToken, SnapshotRecord, SourceRecord};
use crate::config::ControllerConfig;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::ids::{AgentId, Role};
use crate::jobs::{JobRecord, JobSpec, Jobs, LeaseSettings};
use crate::pki::Pki;
use crate::policy::Policy;
use crate::state::{AccessToken, AgentEntry, State, new_token, token_hash};

/// What the controller last heard from a connected agent.
#[derive(Debug, Clone, Default)]
pub struct LiveAgent {
    /// Last heartbeat (Unix seconds).
    pub last_seen_unix: i64,
    /// Vaults it reported.
    pub vaults: Vec<pb::VaultState>,
    /// Its host name.
    pub hostname: String,
}

/// The controller.
pub struct Controller {
    /// Settings.
    pub config: ControllerConfig,
    /// CA and TLS identity.
    pub pki: Pki,
    /// Files outside sled.
    pub state: State,
    /// The sled catalog.
    pub catalog: Arc<Catalog>,
    /// Jobs and leases.
    pub jobs: Arc<Jobs>,
    policies: Arc<Mutex<BTreeMap<String, Policy>>>,
    pub(crate) live: Mutex<HashMap<AgentId, LiveAgent>>,
    alerts_active: std::sync::atomic::AtomicUsize,
    pub(crate) audit_log: crate::audit_log::AuditLog,
    // Serialises checkpoint signing: Finish and the scheduler must not sign one position twice.
    pub(crate) checkpoint_lock: Mutex<()>,
    /// Refused tokens and sign-ins, audited once per burst per client.
    pub(crate) refusals: crate::refusals::Refusals,
    /// Where the overview's last verification of the audit chain stopped, when the whole chain
    /// was last verified, and the key it used (`web.rs::verify_audit`).
    pub(crate) audit_verified: AuditVerified,
}

/// See [`Controller::audit_verified`].
pub(crate) type AuditVerified =
    Mutex<Option<(tresor_report::audit::ChainPosition, std::time::Instant, tresor_report::sign::VerifyingKey)>>;

/// Unix seconds now.
pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// What a prune forgets, why, and how many snapshots of the vault stay.
#[derive(Debug, Default)]
pub struct PrunePlan {
    /// The snapshots retention forgets, by id.
    pub forget: Vec<SnapshotRecord>,
    /// Snapshot id to the rule's words, for each one's audit entry.
    pub reasons: std::collections::BTreeMap<String, String>,
    /// Snapshots that stay.
    pub kept: usize,
}

impl Controller {
    /// Load or make everything below the state directory.
    ///
    /// # Errors
    /// A file is damaged, or the catalog cannot be opened even fresh.
    pub fn open(config: ControllerConfig) -> Result<Arc<Self>> {
        let dir = &config.state_dir;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let pki = Pki::load_or_create(dir, &config.server_names)?;
        let state = State::load(dir)?;
        let catalog = Arc::new(Catalog::open(dir)?);
        let policies = Arc::new(Mutex::new(load_policies(&state)?));
        let limits = policies.clone();
        let vault_limit = Box::new(move |vault: &str| {
            let p = limits.lock().unwrap_or_else(|p| p.into_inner());
            p.values().flat_map(|p| p.vaults.iter()).find(|v| v.name == vault).map_or(2, |v| v.max_concurrent_jobs)
        });
        let refusal_burst = config.refusal_burst;
        let settings = LeaseSettings { lease: config.lease, backoff: config.retry_backoff };
        let jobs = Arc::new(Jobs::new(catalog.clone(), settings, vault_limit));
        Ok(Arc::new(Self {
            config,
            pki,
            state,
            catalog,
            jobs,
            policies,
            live: Mutex::new(HashMap::new()),
            alerts_active: std::sync::atomic::AtomicUsize::new(0),
            audit_log: crate::audit_log::AuditLog::new(),
            checkpoint_lock: Mutex::new(()),
            refusals: crate::refusals::Refusals::new(refusal_burst),
            audit_verified: Mutex::new(None),
        }))
    }

    /// Record how many alert conditions are active (for metrics).
    pub fn set_alerts_active(&self, n: usize) {
        self.alerts_active.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many alert conditions are active.
    pub fn alerts_active(&self) -> usize {
        self.alerts_active.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A copy of the applied policies.
    pub fn policies(&self) -> BTreeMap<String, Policy> {
        self.policies.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    // --- people and tokens --------------------------------------------------------------------

    /// Check a bearer token for `need`; returns the caller as the audit log names it
    /// (`ROLE:TOKEN-ID`). A refusal is recorded in the audit log.
    ///
    /// # Errors
    /// Unknown or expired tokens, or a role below `need`.
    pub fn authorize(&self, token: Option<&str>, need: Role, what: &str, client: &str) -> Result<String> {
        // No token, or one nobody holds: anyone can send those, so they are audited once per
        // burst. A known person's call beyond their role is audited every time.
        let refuse = |actor: &str, e: Error| {
            match &e {
                Error::Unauthenticated(_) => self.audit_refusal(client, actor, what, "", &e.to_string()),
                _ => self.audit(actor, what, &format!("from {client}"), crate::audit_log::REFUSED, &e.to_string()),
            }
            Err(e)
        };
        let Some(token) = token else {
            return refuse(
                "anonymous",
                Error::Unauthenticated(format!(
                    "{what} needs a token (tresorctl reads it from --token-file or TRESOR_TOKEN_FILE)"
                )),
            );
        };
        let id = crate::state::token_id(&token_hash(token));
        let Some(role) = self.state.role_of(token, now_unix()) else {
            return refuse(
                &format!("unknown:{id}"),
                Error::Unauthenticated(format!("{what}: the token is unknown or expired")),
            );
        };
        let actor = format!("{}:{id}", role.name());
        if role < need {
            return refuse(
                &actor,
                Error::PermissionDenied(format!(
                    "{what} needs the {} role; this token has the {} role",
                    need.name(),
                    role.name()
                )),
            );
        }
        Ok(actor)
    }

    /// Audit a refused token or sign-in from `client` (an address): the first of a burst gets its
    /// entry, the rest are counted into one entry when the burst ends (`refusals.rs`).
    pub fn audit_refusal(&self, client: &str, actor: &str, action: &str, object: &str, why: &str) {
        let (decision, closed) = self.refusals.note(client, std::time::Instant::now(), now_unix());
        if let Some(s) = closed {
            self.audit_refusal_burst(&s);
        }
        if decision == crate::refusals::Refusal::Audit {
            let object = if object.is_empty() { format!("from {client}") } else { format!("{object} from {client}") };
            self.audit(actor, action, &object, crate::audit_log::REFUSED, why);
        }
    }

    /// Write the summaries of refusal bursts that are over (the scheduler calls this).
    pub fn sweep_refusals(&self) {
        for s in self.refusals.sweep(std::time::Instant::now()) {
            self.audit_refusal_burst(&s);
        }
    }

    fn audit_refusal_burst(&self, s: &crate::refusals::Summary) {
        let at = |t: i64| chrono::DateTime::from_timestamp(t, 0).map(|d| d.to_rfc3339()).unwrap_or_default();
        self.audit(
            &format!("client:{}", s.client),
            "auth.refused_burst",
            &format!("from {}", s.client),
            crate::audit_log::REFUSED,
            &format!(
                "{} more refused tokens or sign-ins between {} and {} (the first of the burst has its own entry)",
                s.count,
                at(s.from),
                at(s.to)
            ),
        );
    }

    /// Make a token: a one-time enrollment token for "agent", or a person's token.
    ///
    /// # Errors
    /// Unknown role, or the token cannot be stored.
    pub async fn create_token(&self, role: &str, ttl_secs: u32, label: &str) -> Result<(String, i64)> {
        let now = now_unix();
        if role == "agent" || role.is_empty() {
            let ttl = if ttl_secs == 0 { self.config.enroll_token_ttl.as_secs() as i64 } else { i64::from(ttl_secs) };
            // The token carries the CA's pin so a new agent can trust the controller on first contact.
            let token = format!("{}.{}", new_token("tenr_"), self.pki.ca_pin()?);
            let expires = now + ttl;
            self.catalog
                .add_enroll_token(&token_hash(&token), &EnrollToken { expires_unix: expires, label: label.into() })
                .await?;
            return Ok((token, expires));
        }
        let role = Role::parse(role).ok_or_else(|| {
            Error::InvalidArgument(format!("role {role:?} is unknown; use agent, admin, operator or auditor"))
        })?;
        let expires = if ttl_secs == 0 { 0 } else { now + i64::from(ttl_secs) };
        let token = new_token(&format!("t{}_", &role.name()[..3]));
        let entry = AccessToken { role, label: label.into(), expires_unix: expires };
        let state_token = token.clone();
        self.blocking(move |c| c.state.add_access(&state_token, entry)).await?;
        Ok((token, expires))
    }

    /// Run small file writes without stalling other tasks on this runtime thread.
    pub async fn blocking<T>(&self, f: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        tokio::task::block_in_place(|| f(self))
    }

    // --- agents -------------------------------------------------------------------------------

    /// Enroll an agent: consume the token, sign its CSR.
    ///
    /// # Errors
    /// Bad, used or expired token; a name already enrolled; a bad CSR.
    pub async fn enroll(&self, req: &pb::EnrollRequest) -> Result<pb::EnrollReply> {
        let name = req.name.trim();
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(Error::InvalidArgument(format!(
                "agent name {name:?} must be 1-64 letters, digits, '-', '_' or '.'"
            )));
        }
        let secret = req.token.trim();
        let _token = self.catalog.take_enroll_token(&token_hash(secret), now_unix()).await?;
        if let Some((id, _)) = self.state.find_agent(name)
            && !self.state.is_revoked(&id)
        {
            return Err(Error::FailedPrecondition(format!(
                "an agent named {name:?} is already enrolled ({id}); revoke it first (tresorctl agent revoke {name}) or choose another name"
            )));
        }
        let id = AgentId::random();
        let issued = self.pki.issue_agent_cert(&req.csr_pem, id.as_str(), self.config.cert_lifetime)?;
        let entry = AgentEntry {
            name: name.to_string(),
            enrolled_unix: now_unix(),
            cert_not_after_unix: issued.not_after_unix,
        };
        let id2 = id.clone();
        self.blocking(move |c| c.state.put_agent(&id2, entry)).await?;
        tracing::info!(agent = %id, name, "agent enrolled");
        self.audit(
            &format!("agent:{name}"),
            "enroll",
            &format!("agent {name} ({id})"),
            crate::audit_log::OK,
            "enrollment token used",
        );
        Ok(pb::EnrollReply {
            agent_id: id.to_string(),
            cert_pem: issued.cert_pem,
            ca_pem: self.pki.ca_pem().to_string(),
            not_after_unix: issued.not_after_unix,
        })
    }

    /// Renew an agent's certificate.
    ///
    /// # Errors
    /// A bad CSR, or the registry cannot be written.
    pub async fn renew(&self, agent: &AgentId, csr_pem: &str) -> Result<pb::RenewReply> {
        let (_, mut entry) = self.known_agent(agent)?;
        let issued = self.pki.issue_agent_cert(csr_pem, agent.as_str(), self.config.cert_lifetime)?;
        entry.cert_not_after_unix = issued.not_after_unix;
        let id = agent.clone();
        self.blocking(move |c| c.state.put_agent(&id, entry)).await?;
        Ok(pb::RenewReply { cert_pem: issued.cert_pem, not_after_unix: issued.not_after_unix })
    }

    /// An enrolled, not revoked agent.
    ///
    /// # Errors
    /// `Unauthenticated` naming why.
    pub fn known_agent(&self, agent: &AgentId) -> Result<(AgentId, AgentEntry)> {
        if self.state.is_revoked(agent) {
            return Err(Error::Unauthenticated(format!("agent {agent} is revoked; enroll it again with a new token")));
        }
        self.state
            .find_agent(agent.as_str())
            .ok_or_else(|| Error::Unauthenticated(format!("agent {agent} is not enrolled with this controller")))
    }

    /// Note a heartbeat; the key slots it names are remembered per vault when they change
    /// (a revocation removes them).
    ///
    /// # Errors
    /// The catalog cannot be written.
    pub async fn seen(&self, agent: &AgentId, req: &pb::HeartbeatRequest) -> Result<()> {
        let slots = |vaults: &[pb::VaultState]| -> Vec<(String, String)> {
            vaults.iter().filter(|v| !v.key_slot.is_empty()).map(|v| (v.name.clone(), v.key_slot.clone())).collect()
        };
        let before = {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            live.insert(
                agent.clone(),
                LiveAgent { last_seen_unix: now_unix(), vaults: req.vaults.clone(), hostname: req.hostname.clone() },
            )
        };
        let now = slots(&req.vaults);
        if before.is_some_and(|b| slots(&b.vaults) == now) {
            return Ok(());
        }
        let agent = agent.to_string();
        self.blocking(move |c| {
            for (vault, slot) in now {
                let mut rec = c.catalog.vault(&vault)?;
                if rec.slots.get(&agent) != Some(&slot) {
                    let _ = rec.slots.insert(agent.clone(), slot);
                    c.catalog.put_vault(&vault, &rec)?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Whether the agent's last heartbeat says it opens `vault`.
    pub fn opens_vault(&self, agent: &AgentId, vault: &str) -> bool {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(agent).is_some_and(|l| l.vaults.iter().any(|v| v.name == vault && v.error.is_empty()))
    }

    /// What we last heard from an agent.
    pub fn live(&self, agent: &AgentId) -> Option<LiveAgent> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).get(agent).cloned()
    }

    /// Revoke an agent by name or id; its streams are closed at once.
    ///
    /// # Errors
    /// Unknown agent, or the list cannot be written.
    pub async fn revoke(&self, key: &str) -> Result<AgentId> {
        let (id, entry) =
            self.state.find_agent(key).ok_or_else(|| Error::NotFound(format!("no agent named {key:?}")))?;
        let id2 = id.clone();
        let name = entry.name.clone();
        self.blocking(move |c| c.state.revoke(&id2, &entry.name, now_unix())).await?;
        self.jobs.drop_stream(&id);
        tracing::warn!(agent = %id, "agent revoked");
        let queued = self.queue_slot_revocations(&id).await?;
        for (vault, slot, sharing) in queued {
            let shared = if sharing.is_empty() {
                String::new()
            } else {
                format!("; agents {} open the vault with the same slot and lose write access too", sharing.join(", "))
            };
            self.audit(
                "controller",
                "key.revoke",
                &format!("vault {vault}"),
                crate::audit_log::OK,
                &format!("slot {slot} of agent {name} queued for removal with a new key epoch{shared}"),
            );
            match self.start_prune(&vault, "revocation") {
                Ok((job, _)) => tracing::info!(vault, job = %job.id, "prune queued to remove a revoked slot"),
                // Busy: the slot stays queued, and every prune carries it until it is gone.
                Err(e) => tracing::info!(vault, error = %e, "revoked slot waits for the next prune"),
            }
        }
        Ok(id)
    }

    /// Move a revoked agent's key slots to their vaults' removal lists; returns (vault, slot,
    /// other agents that use the same slot).
    async fn queue_slot_revocations(&self, agent: &AgentId) -> Result<Vec<(String, String, Vec<String>)>> {
        // A second site's keys follow its first site's (the next copy carries the removal).
        let vaults: Vec<String> = self
            .policies()
            .values()
            .flat_map(|p| p.vaults.iter().filter(|v| p.copy_source(&v.name).is_none()).map(|v| v.name.clone()))
            .collect();
        let agent = agent.to_string();
        self.blocking(move |c| {
            let mut queued = Vec::new();
            for vault in vaults {
                let mut rec = c.catalog.vault(&vault)?;
                let Some(slot) = rec.slots.remove(&agent) else { continue };
                let sharing: Vec<String> = rec
                    .slots
                    .iter()
                    .filter(|(other, s)| **s == slot && !c.state.is_revoked(&AgentId::new((*other).clone())))
                    .map(|(other, _)| c.state.find_agent(other).map_or_else(|| other.clone(), |(_, e)| e.name))
                    .collect();
                if !rec.revoke_slots.contains(&slot) {
                    rec.revoke_slots.push(slot.clone());
                }
                c.catalog.put_vault(&vault, &rec)?;
                queued.push((vault, slot, sharing));
            }
            Ok(queued)
        })
        .await
    }

    /// The agents with their state.
    pub fn agent_infos(&self) -> Vec<pb::AgentInfo> {
        self.state
            .agents()
            .into_iter()
            .map(|(id, a)| {
                let live = self.live(&id).unwrap_or_default();
                pb::AgentInfo {
                    connected: self.jobs.is_connected(&id),
                    agent_id: id.to_string(),
                    revoked: self.state.is_revoked(&id),
                    name: a.name,
                    last_seen_unix: live.last_seen_unix,
                    cert_not_after_unix: a.cert_not_after_unix,
                    enrolled_unix: a.enrolled_unix,
                    vaults: live.vaults,
                    hostname: live.hostname,
                }
            })
            .collect()
    }

    // --- policies -----------------------------------------------------------------------------

    /// Validate and apply a policy; it replaces the policy of the same name.
    ///
    /// # Errors
    /// Invalid text, an unknown agent, or a vault the agent reported it cannot open.
    pub async fn apply_policy(&self, text: &str, origin: &str) -> Result<pb::ApplyPolicyReply> {
        let policy = Policy::parse(text, origin)?;
        let mut warnings = Vec::new();
        let agents = self.state.agents();
        for (i, s) in policy.sources.iter().enumerate() {
            let Some((id, _)) = agents.iter().find(|(_, a)| a.name == s.agent) else {
                return Err(Error::Config(format!(
                    "{origin}: source[{i}].agent: {:?} is not an enrolled agent (see tresorctl agents)",
                    s.agent
                )));
            };
            match self.live(id).and_then(|l| l.vaults.into_iter().find(|v| v.name == s.vault)) {
                Some(v) if !v.error.is_empty() => {
                    return Err(Error::Config(format!(
                        "{origin}: source[{i}].vault: agent {} cannot reach vault {:?}: {}",
                        s.agent, s.vault, v.error
                    )));
                }
                Some(_) => {}
                None if self.live(id).is_some() => {
                    return Err(Error::Config(format!(
                        "{origin}: source[{i}].vault: agent {} has no vault {:?} in its agent.toml",
                        s.agent, s.vault
                    )));
                }
                None => {
                    warnings.push(format!("agent {} has not connected yet; vault {:?} is unchecked", s.agent, s.vault))
                }
            }
        }
        for (i, v) in policy.vaults.iter().enumerate() {
            if !agents.values().any(|a| a.name == v.maintainer) {
                return Err(Error::Config(format!(
                    "{origin}: vault[{i}].maintainer: {:?} is not an enrolled agent",
                    v.maintainer
                )));
            }
        }
        // New sources start at the current slot: the first run is the next one, not a catch-up.
        let now = chrono::Utc::now();
        for s in &policy.sources {
            let key = format!("{}/{}", s.agent, s.name);
            let mut rec = self.catalog.source(&key)?;
            if rec.tracked_since_unix == 0 {
                rec.tracked_since_unix = now.timestamp();
            }
            if rec.last_slot_unix == 0 {
                rec.last_slot_unix = s.schedule.last_slot(now).map_or(0, |t| t.timestamp());
                if let Some(c) = &s.check {
                    rec.last_check_slot_unix = c.schedule.last_slot(now).map_or(0, |t| t.timestamp());
                }
                self.catalog.put_source(&key, &rec)?;
            }
        }
        // A vault the catalog knows no snapshot of (a new controller, a lost catalog) is scanned
        // on its maintainer, so earlier snapshots come back without a separate rebuild.
        let mut known: std::collections::BTreeSet<String> =
            self.catalog.snapshots()?.into_iter().map(|s| s.vault).collect();
        // A second site is scanned into its own records (so a new controller learns what it
        // holds) until the catalog knows some.
        for v in &policy.vaults {
            if policy.copy_source(&v.name).is_some() && !self.catalog.copies_in(&v.name)?.is_empty() {
                known.insert(v.name.clone());
            }
        }
        for v in policy.vaults.iter().filter(|v| !known.contains(&v.name)) {
            if let Some((id, a)) = self.state.find_agent(&v.maintainer).filter(|(id, _)| !self.state.is_revoked(id)) {
                let job =
                    JobRecord::new(id, a.name, v.name.clone(), JobSpec::Scan, "rebuild", self.config.max_attempts);
                self.jobs.submit(&job)?;
            }
        }
        self.catalog.flush().await?;
        let path = self.state.policy_path(&policy.name);
        let bytes = text.as_bytes().to_vec();
        self.blocking(move |_| write_atomic(&path, &bytes, 0o644).map_err(|e| Error::io("writing the policy", e)))
            .await?;
        let reply =
            pb::ApplyPolicyReply { policy: policy.name.clone(), sources: policy.sources.len() as u32, warnings };
        let _ = self.policies.lock().unwrap_or_else(|p| p.into_inner()).insert(policy.name.clone(), policy);
        Ok(reply)
    }

    /// Remove an applied policy; its sources are no longer scheduled (their snapshots stay).
    ///
    /// # Errors
    /// Unknown policy, or the file cannot be removed.
    pub async fn remove_policy(&self, name: &str) -> Result<u32> {
        let sources = self
            .policies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|p| p.sources.len() as u32)
            .ok_or_else(|| Error::NotFound(format!("no policy named {name:?}")))?;
        let path = self.state.policy_path(name);
        self.blocking(move |_| {
            crate::fsutil::remove_durable(&path).map_err(|e| Error::io(format!("removing {}", path.display()), e))
        })
        .await?;
        let _ = self.policies.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        Ok(sources)
    }

    /// Find a source by "AGENT/SOURCE" in the applied policies.
    ///
    /// # Errors
    /// Malformed selector or unknown source.
    pub fn find_source(&self, selector: &str) -> Result<(crate::policy::SourcePolicy, crate::policy::VaultPolicy)> {
        let (agent, source) = selector
            .split_once('/')
            .ok_or_else(|| Error::InvalidArgument(format!("{selector:?}: expected AGENT/SOURCE")))?;
        let policies = self.policies.lock().unwrap_or_else(|p| p.into_inner());
        for p in policies.values() {
            if let Some(s) = p.sources.iter().find(|s| s.agent == agent && s.name == source) {
                let v = p
                    .vaults
                    .iter()
                    .find(|v| v.name == s.vault)
                    .cloned()
                    .ok_or_else(|| Error::Config(format!("policy {}: vault {} missing", p.name, s.vault)))?;
                return Ok((s.clone(), v));
            }
        }
        Err(Error::NotFound(format!("no source {selector:?} in the applied policies (tresorctl policy apply FILE)")))
    }

    /// Queue a backup of a source now.
    ///
    /// # Errors
    /// Unknown source or agent.
    pub fn start_backup(&self, selector: &str, trigger: &str) -> Result<JobRecord> {
        let (s, _) = self.find_source(selector)?;
        let (id, a) = self
            .state
            .find_agent(&s.agent)
            .ok_or_else(|| Error::NotFound(format!("agent {:?} is not enrolled", s.agent)))?;
        if self.state.is_revoked(&id) {
            return Err(Error::FailedPrecondition(format!("agent {} is revoked", s.agent)));
        }
        let spec = JobSpec::Backup { source: s.name.clone(), paths: s.paths.clone(), tags: s.tags.clone() };
        let job = JobRecord::new(id, a.name, s.vault.clone(), spec, trigger, self.config.max_attempts);
        self.jobs.submit(&job)?;
        Ok(job)
    }

    /// What retention would forget in a vault now, and why.
    ///
    /// # Errors
    /// Unknown vault; catalog failures.
    pub fn plan_prune(&self, vault: &str) -> Result<PrunePlan> {
        let policies = self.policies();
        if !policies.values().any(|p| p.vaults.iter().any(|v| v.name == vault)) {
            return Err(Error::NotFound(format!("no vault {vault:?} in the applied policies")));
        }
        let all: Vec<SnapshotRecord> = self.vault_snapshots(vault)?;
        // A second site keeps what its copy retention (else each source's own) keeps of the
        // sources that back up to its source vault.
        let copy_of = self.copy_source_of(vault);
        let backs_up_here = |s: &crate::policy::SourcePolicy| match &copy_of {
            Some(from) => s.vault == from.name,
            None => s.vault == vault,
        };
        let mut plan = PrunePlan::default();
        for p in policies.values() {
            for src in p.sources.iter().filter(|s| backs_up_here(s)) {
                let rules = copy_of.as_ref().and_then(|f| f.copy.as_ref()).and_then(|c| c.retention.as_ref());
                let rules = rules.unwrap_or(&src.retention);
                let mine: Vec<SnapshotRecord> =
                    all.iter().filter(|s| s.agent == src.agent && s.source == src.name).cloned().collect();
                let tz: chrono_tz::Tz = src.schedule.timezone.parse().unwrap_or(chrono_tz::Europe::Berlin);
                let ids = crate::retention::to_forget(&mine, rules, tz);
                let (kept, total) = (mine.len() - ids.len(), mine.len());
                for s in mine.into_iter().filter(|s| ids.contains(&s.snapshot_id)) {
                    let receipted = s
                        .committed_ms
                        .and_then(chrono::DateTime::from_timestamp_millis)
                        .map_or_else(String::new, |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                    let why = format!(
                        "retention of {}/{} in policy {} ({}) keeps {kept} of {total} snapshots; this one, receipted {receipted}, is not among them",
                        src.agent, src.name, p.name, rules
                    );
                    let _ = plan.reasons.insert(s.snapshot_id.clone(), why);
                    plan.forget.push(s);
                }
            }
        }
        // A source listed in two policies must not be counted twice.
        plan.forget.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
        plan.forget.dedup_by(|a, b| a.snapshot_id == b.snapshot_id);
        plan.kept = all.len().saturating_sub(plan.forget.len());
        Ok(plan)
    }

    /// Queue a prune (forget what retention says, then GC) on the vault's maintainer; returns the
    /// job and its plan.
    ///
    /// # Errors
    /// Unknown vault or maintainer.
    pub fn start_prune(&self, vault: &str, trigger: &str) -> Result<(JobRecord, PrunePlan)> {
        let busy =
            self.catalog.active_jobs()?.iter().any(|j| j.vault == vault && matches!(j.spec, JobSpec::Prune { .. }));
        if busy {
            return Err(Error::FailedPrecondition(format!("a prune of vault {vault} is already queued or running")));
        }
        let plan = self.plan_prune(vault)?;
        let vp = self
            .policies()
            .values()
            .flat_map(|p| p.vaults.clone())
            .find(|v| v.name == vault)
            .ok_or_else(|| Error::NotFound(format!("no vault {vault:?}")))?;
        let (id, a) =
            self.state.find_agent(&vp.maintainer).filter(|(id, _)| !self.state.is_revoked(id)).ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "vault {vault}: maintainer {} is not an enrolled agent",
                    vp.maintainer
                ))
            })?;
        let forget: Vec<String> = plan.forget.iter().map(|s| s.snapshot_id.clone()).collect();
        // What the vault must list: every snapshot the controller signed a receipt for there,
        // less what this prune forgets (earlier prunes' forgets are out of the catalog already).
        let expected = self
            .vault_snapshots(vault)?
            .into_iter()
            .filter(|s| s.committed_ms.is_some() && !forget.contains(&s.snapshot_id))
            .map(|s| s.snapshot_id)
            .collect();
        let spec = JobSpec::Prune {
            forget,
            gc_grace_seconds: vp.gc_grace.as_secs() as u32,
            reasons: plan.reasons.clone(),
            // Keys change at a first site only; a second site gets them from the next copy.
            revoke_slots: if self.copy_source_of(vault).is_some() {
                Vec::new()
            } else {
                self.catalog.vault(vault)?.revoke_slots
            },
            expected,
            maintenance_interval_seconds: vp
                .prune
                .as_ref()
                .and_then(|s| s.longest_gap(chrono::Utc::now(), 32))
                .map_or(0, |g| g.as_secs()),
        };
        let job = JobRecord::new(id, a.name, vault.to_string(), spec, trigger, self.config.max_attempts);
        self.jobs.submit(&job)?;
        Ok((job, plan))
    }

    /// Snapshots matching "", "AGENT" or "AGENT/SOURCE", oldest first by receipt time.
    ///
    /// # Errors
    /// sled failed.
    pub fn snapshots(&self, selector: &str) -> Result<Vec<SnapshotRecord>> {
        let (agent, source) = match selector.split_once('/') {
            Some((a, s)) => (a, Some(s)),
            None => (selector, None),
        };
        let mut out: Vec<_> = self
            .catalog
            .snapshots()?
            .into_iter()
            .filter(|s| agent.is_empty() || s.agent == agent)
            .filter(|s| source.is_none_or(|src| s.source == src))
            .collect();
        // Receipted snapshots by receipt time; unreceipted ones (before them) by their manifest's
        // own time, which is good enough for listing and never used by retention.
        out.sort_by(|a, b| {
            let by_manifest = if a.committed_ms.is_none() && b.committed_ms.is_none() {
                a.manifest_time.cmp(&b.manifest_time)
            } else {
                std::cmp::Ordering::Equal
            };
            a.committed_ms.cmp(&b.committed_ms).then(by_manifest).then_with(|| a.snapshot_id.cmp(&b.snapshot_id))
        });
        Ok(out)
    }

    /// State of one source for status and metrics.
    ///
    /// # Errors
    /// sled failed.
    pub fn source_state(&self, key: &str) -> Result<SourceRecord> {
        self.catalog.source(key)
    }
}

fn load_policies(state: &State) -> Result<BTreeMap<String, Policy>> {
    let dir = state.policy_dir();
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "toml") {
            let text =
                std::fs::read_to_string(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let p = Policy::parse(&text, &path.display().to_string())?;
            let _ = out.insert(p.name.clone(), p);
        }
    }
    Ok(out)
}
