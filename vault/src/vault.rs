//! An opened vault: backend, config and keys. Init, open, key slots, snapshots and chunk reads.

use std::sync::Arc;

use bytes::Bytes;

use crate::backend::{BackendError, Created, DynBackend, Retention, StorageVersioning};
use crate::config::VaultConfig;
use crate::crypto::{FIRST_EPOCH, MasterKey, ObjectType, VaultKeys};
use crate::epochs::{self, EpochRecord};
use crate::error::{Error, Result};
use crate::ids::{ObjectId, PackId, SnapshotId};
use crate::index::{IndexEntry, LocalIndex, Segment};
use crate::keyring::{Chain, keys_of, read_epoch_records, walk_epochs};
use crate::keys::{EscrowKey, KeyError, KeySlot, SlotKind, Unwrapped};
use crate::snapshot::{Manifest, Node};
use crate::{layout, object, pack};

/// The largest key slot object read.
const MAX_SLOT_BYTES: u64 = 64 * 1024;

/// The secret that unlocks a key slot.
pub enum Secret {
    /// A password (or an agent's secret file contents).
    Password(zeroize::Zeroizing<Vec<u8>>),
    /// The escrow key file.
    Escrow(EscrowKey),
}

impl Secret {
    fn kind(&self) -> SlotKind {
        match self {
            Self::Password(_) => SlotKind::Password,
            Self::Escrow(_) => SlotKind::Escrow,
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Self::Password(p) => p,
            Self::Escrow(k) => k.secret(),
        }
    }
}

/// What `init` did.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The written config.
    pub config: VaultConfig,
    /// The password slot's id.
    pub password_slot: String,
    /// The escrow slot's id.
    pub escrow_slot: String,
}

/// An open vault.
pub struct Vault {
    backend: DynBackend,
    config: VaultConfig,
    config_bytes: Vec<u8>,
    /// The master key of every key epoch the opening slot reaches, ascending.
    masters: Vec<(u32, MasterKey)>,
    keys: Arc<VaultKeys>,
    slot_id: String,
    /// Why this slot may not write, when it does not reach the newest key epoch.
    stale: Option<String>,
    /// The newest epoch record there was when this handle opened the vault (or began it).
    epochs_seen: u32,
    /// Reads that failed verification once and passed when repeated.
    transient_reads: std::sync::atomic::AtomicU64,
    /// What the storage keeps of replaced and deleted objects, as probed at open (or init).
    versioning: Option<StorageVersioning>,
    /// Key changes allowed although this is a second site (its first site is lost for good).
    keys_at_second_site: bool,
}

pub(crate) async fn cpu<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Invalid(format!("worker task failed: {e}")))
}

/// What starting a key epoch did.
#[derive(Debug, Clone)]
pub struct EpochReport {
    /// The new epoch.
    pub epoch: u32,
    /// The slots granted it.
    pub carried: Vec<String>,
    /// The slots left out: removed or revoked ones, and slots made before key epochs (which
    /// keep reading older data but can no longer write).
    pub left_out: Vec<String>,
    /// The slots deleted (by `remove_slots`; those asked for but not found are not among them).
    pub removed: Vec<String>,
    /// Slots left out (they open no newer data) that Object Lock keeps until their retention
    /// passes; a later removal deletes them.
    pub locked: Vec<String>,
}

impl Vault {
    /// Make a new vault: probe the backend, write the password and escrow key slots, then the
    /// config (its presence marks the vault as made).
    pub async fn init(
        backend: DynBackend,
        password: Secret,
        escrow: &EscrowKey,
        object_lock: Option<Retention>,
    ) -> Result<(Self, InitReport)> {
        backend.prepare_location().await.map_err(location_error)?;
        if backend.size(layout::CONFIG).await?.is_some() {
            return Err(Error::AlreadyInitialized(backend.location()));
        }
        let (capabilities, versioning) = crate::probe::probe_new(&backend, object_lock).await?;
        let mut config = VaultConfig::new(capabilities);
        config.object_lock = object_lock;
        let config_bytes = config.to_json();
        let master = MasterKey::generate();
        let mac = master.derive().config_mac(&config_bytes);
        let vault_id = config.vault_id;
        let (m1, m2) = (master.clone(), master.clone());
        let pw = zeroize::Zeroizing::new(password.bytes().to_vec());
        let esc = zeroize::Zeroizing::new(escrow.secret().to_vec());
        let pw_kind = password.kind();
        let (slot_pw, slot_esc) = cpu(move || {
            Ok::<_, KeyError>((
                KeySlot::wrap(&vault_id, pw_kind, "initial", &pw, (FIRST_EPOCH, &m1), mac)?,
                KeySlot::wrap(&vault_id, SlotKind::Escrow, "escrow (offline key file)", &esc, (FIRST_EPOCH, &m2), mac)?,
            ))
        })
        .await??;
        for slot in [&slot_pw, &slot_esc] {
            backend.create(&layout::key_slot(&slot.id), Bytes::from(slot.to_json())).await?;
        }
        if backend.create(layout::CONFIG, Bytes::from(config_bytes.clone())).await? == Created::Existed {
            return Err(Error::AlreadyInitialized(backend.location()));
        }
        let report =
            InitReport { config: config.clone(), password_slot: slot_pw.id.clone(), escrow_slot: slot_esc.id.clone() };
        let keys = Arc::new(master.derive());
        Ok((
            Self {
                backend,
                config,
                config_bytes,
                masters: vec![(FIRST_EPOCH, master)],
                keys,
                slot_id: slot_pw.id,
                stale: None,
                epochs_seen: FIRST_EPOCH,
                transient_reads: Default::default(),
                versioning,
                keys_at_second_site: false,
            },
            report,
        ))
    }

    /// Open a vault with a password or the escrow key.
    pub async fn open(backend: DynBackend, secret: &Secret) -> Result<Self> {
        backend.check_location().await.map_err(location_error)?;
        let config_bytes = match backend.get(layout::CONFIG).await {
            Ok(b) => b.to_vec(),
            Err(BackendError::NotFound(_)) => return Err(Error::NotAVault(backend.location())),
            Err(e) => return Err(e.into()),
        };
        let config = VaultConfig::from_json(&config_bytes).map_err(|e| Error::integrity("config", e))?;
        let versioning = match backend.probe_versioning().await {
            Ok(v) => v,
            // Deletes must know whether the bucket keeps versions: refuse to guess where it did.
            Err(e) if config.capabilities.versioning.as_ref().is_some_and(|v| v.keeps_versions()) => {
                return Err(Error::Invalid(format!(
                    "the bucket kept object versions at init, and whether it still does cannot be read now: {e}"
                )));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read whether the storage keeps object versions");
                None
            }
        };
        backend.set_retention(config.object_lock);
        if let Secret::Escrow(k) = secret
            && let Some(named) = k.vault()
            && named != config.vault_id.to_string()
        {
            return Err(Error::Key(KeyError::BadKeyFile(format!(
                "this escrow key file belongs to vault {named}, not to vault {} at {}",
                config.vault_id,
                backend.location()
            ))));
        }
        let slots = Self::read_slots(&backend).await?;
        let wanted = secret.kind();
        // Slots beyond the KDF caps are refused before any work; the rest are tried cheapest
        // first, so a planted costly slot cannot hold up an opener whose own slot is ordinary.
        let mut candidates: Vec<KeySlot> = slots
            .into_iter()
            .filter(|s| s.kind == wanted)
            .filter(|s| match s.kdf.within_caps() {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(slot = %s.id, error = %e, "skipping a key slot beyond the KDF caps");
                    false
                }
            })
            .collect();
        candidates.sort_by_key(|s| s.kdf.cost());
        if candidates.is_empty() {
            return Err(Error::Key(KeyError::Malformed(format!("the vault has no {wanted:?} key slot"))));
        }
        let vault_id = config.vault_id;
        let secret_bytes = zeroize::Zeroizing::new(secret.bytes().to_vec());
        let (opened, slot) = cpu(move || -> Result<(Unwrapped, KeySlot)> {
            for slot in candidates {
                match slot.unwrap(&vault_id, &secret_bytes) {
                    Ok(opened) => return Ok((opened, slot)),
                    Err(KeyError::WrongSecret) => continue,
                    Err(e) => {
                        tracing::warn!(slot = %slot.id, error = %e, "skipping unusable key slot")
                    }
                }
            }
            Err(Error::WrongPassword)
        })
        .await??;
        let records = read_epoch_records(&backend, &vault_id).await?;
        let epochs_seen = records.keys().next_back().copied().unwrap_or(FIRST_EPOCH);
        let cb = config_bytes.clone();
        let (chain, slot) = cpu(move || -> Result<(Chain, KeySlot)> {
            let chain = walk_epochs(&vault_id, &slot.id, opened, &records)?;
            slot.verify_config(&chain.masters[0].1, &cb)?;
            Ok((chain, slot))
        })
        .await??;
        if let Some(why) = &chain.stale {
            tracing::warn!(slot = %slot.id, "{why}; this slot reads older data but cannot write");
        }
        let keys = Arc::new(keys_of(&chain.masters));
        if !config.capabilities.create_once {
            backend.check_before_create();
        }
        // A read-only mount cannot be probed; it still reads, and writes would fail on their own.
        // A failing disk is another matter (and shows in `durability_unverified`).
        match backend.probe_durability().await {
            Ok(()) => {}
            Err(e @ BackendError::NotDurable { .. }) => tracing::warn!(error = %e, "durability probe failed"),
            Err(e) => tracing::info!(error = %e, "durability probe not possible"),
        }
        Ok(Self {
            backend,
            config,
            config_bytes,
            masters: chain.masters,
            keys,
            slot_id: slot.id,
            stale: chain.stale,
            epochs_seen,
            transient_reads: Default::default(),
            versioning,
            keys_at_second_site: false,
        })
    }

    pub(crate) async fn read_slots(backend: &DynBackend) -> Result<Vec<KeySlot>> {
        let mut slots = Vec::new();
        for info in backend.list(layout::KEYS).await? {
            // A slot is a few hundred bytes; a planted huge one is not read.
            if info.size > MAX_SLOT_BYTES {
                tracing::warn!(key = %info.key, size = info.size, "key slot larger than {MAX_SLOT_BYTES} bytes; ignored");
                continue;
            }
            let bytes = backend.get(&info.key).await?;
            match KeySlot::from_json(&bytes) {
                Ok(s) if layout::key_slot(&s.id) == info.key => slots.push(s),
                Ok(_) => {
                    tracing::warn!(key = %info.key, "key slot id does not match its name; ignored")
                }
                Err(e) => {
                    tracing::warn!(key = %info.key, error = %e, "ignoring malformed key slot")
                }
            }
        }
        Ok(slots)
    }

    /// The stored bytes of this vault's `config` (what key slots carry a MAC of).
    pub(crate) fn config_bytes(&self) -> &[u8] {
        &self.config_bytes
    }

    /// Allow key changes at a second site: only once its first site is lost for good (they would
    /// fork the key chain the next copy brings).
    pub fn allow_key_changes_at_second_site(&mut self) {
        self.keys_at_second_site = true;
    }

    fn keys_change_here(&self) -> Result<()> {
        if self.config.second_site && !self.keys_at_second_site {
            return Err(Error::Invalid(format!(
                "{} is a second site of vault {}: keys change at its first site, and the next copy brings the change here; \
                 only if the first site is lost for good, give --at-second-site",
                self.backend.location(),
                self.config.vault_id
            )));
        }
        Ok(())
    }

    /// The master key of `epoch`, if this handle reaches it.
    pub(crate) fn master_of(&self, epoch: u32) -> Option<&MasterKey> {
        self.masters.iter().find(|(e, _)| *e == epoch).map(|(_, m)| m)
    }

    /// The first epoch's master key: the one config MACs are made under.
    pub(crate) fn first_master(&self) -> &MasterKey {
        &self.masters[0].1
    }

    /// The backend.
    pub fn backend(&self) -> &DynBackend {
        &self.backend
    }

    /// The config.
    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    /// Working keys.
    pub fn keys(&self) -> &Arc<VaultKeys> {
        &self.keys
    }

    /// Id of the slot that opened the vault.
    pub fn slot_id(&self) -> &str {
        &self.slot_id
    }

    /// This vault's directory in the host's cache `root` (index copy, GC observations, expected
    /// snapshots).
    pub fn cache_dir(&self, root: &std::path::Path) -> std::path::PathBuf {
        let dir = crate::localfile::vault_cache_dir(root, &self.config.vault_id);
        if !self.config.second_site {
            return dir;
        }
        // A second site has the first site's vault id: its index, GC observations and expected
        // snapshots are its own, by location.
        let site = blake3::hash(self.backend.location().as_bytes()).to_hex();
        dir.with_file_name(format!("{}.site-{}", self.config.vault_id.to_hex(), &site[..16]))
    }

    /// Why the storage cannot confirm that what it acknowledges is durable: found now (a sync
    /// call refused as unsupported) or recorded at `init`. `None` when every sync was confirmed.
    pub fn durability_unverified(&self) -> Option<String> {
        self.backend.durability_unverified().or_else(|| {
            let c = &self.config.capabilities;
            c.durability_unverified.as_ref().map(|why| format!("{why} (found at init, {})", c.probed_at))
        })
    }

    /// What the storage keeps of replaced and deleted objects (versioning, Object Lock), as
    /// probed when this handle opened the vault; `None` where it keeps nothing.
    pub fn storage_versioning(&self) -> Option<&StorageVersioning> {
        self.versioning.as_ref()
    }

    /// One line on versions and Object Lock for `init` and `check`; `None` where the storage
    /// keeps no versions.
    pub fn lock_line(&self) -> Option<String> {
        let v = self.versioning.as_ref()?;
        let ours = match self.config.object_lock {
            Some(r) => format!("; Tresor writes each object locked for {} s ({:?})", r.seconds, r.mode),
            None if v.object_lock => "; Tresor sets no retention of its own".to_string(),
            None => String::new(),
        };
        Some(format!("storage: {v}{ours}"))
    }

    /// The key epoch new data is written under (the newest this slot reaches).
    pub fn key_epoch(&self) -> u32 {
        self.keys.current_epoch()
    }

    /// Refuse to write when the opening slot does not reach the newest key epoch: what it
    /// wrote would be sealed under an older epoch, which removed or revoked slots still read.
    pub fn writable(&self) -> Result<()> {
        match &self.stale {
            Some(why) => Err(Error::StaleEpoch(why.clone())),
            None => Ok(()),
        }
    }

    /// [`Self::writable`], and no key epoch began since this handle opened the vault (another
    /// holder removed a slot or rotated the master key): what it would write would be sealed
    /// under the older epoch. Writers call it when they start and again at their commit.
    pub async fn check_epoch(&self) -> Result<()> {
        self.writable()?;
        let newest = self
            .backend
            .list(epochs::PREFIX)
            .await?
            .iter()
            .filter_map(|i| epochs::epoch_of(&i.key))
            .max()
            .unwrap_or(FIRST_EPOCH);
        if newest > self.epochs_seen {
            return Err(Error::EpochChanged(newest));
        }
        Ok(())
    }

    fn current_master(&self) -> (u32, &MasterKey) {
        let (epoch, master) = self.masters.last().unwrap_or_else(|| unreachable!("a vault has its first epoch"));
        (*epoch, master)
    }

    /// All key slots.
    pub async fn key_list(&self) -> Result<Vec<KeySlot>> {
        Self::read_slots(&self.backend).await
    }

    /// Add a slot for `secret` that opens the current key epoch and is granted later ones; it is
    /// read back and unwrapped before this returns.
    pub async fn key_add(&self, secret: &Secret, label: &str) -> Result<KeySlot> {
        self.keys_change_here()?;
        self.check_epoch().await?;
        let (epoch, master) = self.current_master();
        let (vid, master, mac, kind) =
            (self.config.vault_id, master.clone(), self.keys.config_mac(&self.config_bytes), secret.kind());
        let sb = zeroize::Zeroizing::new(secret.bytes().to_vec());
        let label = label.to_string();
        let slot = cpu(move || KeySlot::wrap(&vid, kind, &label, &sb, (epoch, &master), mac)).await??;
        self.backend.create(&layout::key_slot(&slot.id), Bytes::from(slot.to_json())).await?;
        crate::failpoint::hit("key-add-after-write");
        // Read back and unwrap before anyone relies on it (restic 0.13 lost access by skipping this).
        let stored = KeySlot::from_json(&self.backend.get(&layout::key_slot(&slot.id)).await?)?;
        let sb = zeroize::Zeroizing::new(secret.bytes().to_vec());
        let expect = self.current_master().1.clone();
        let ok =
            cpu(move || stored.unwrap(&vid, &sb).map(|m| m.epoch == epoch && m.master.expose() == expect.expose()))
                .await??;
        if !ok {
            return Err(Error::integrity("key slot", "read-back unwrapped to a different key"));
        }
        Ok(slot)
    }

    /// Remove a slot, then start a new key epoch without it, so the removed secret reads nothing
    /// written afterwards. Refuses to remove the last password slot or the last escrow slot.
    pub async fn key_remove(&mut self, id: &str) -> Result<EpochReport> {
        let report = self.remove_slots(&[id], &format!("slot {id} removed")).await?;
        if report.removed.is_empty() {
            return Err(Error::Invalid(format!("no key slot {id}")));
        }
        Ok(report)
    }

    /// Remove several slots with one new epoch (an agent revoked at the controller: every slot
    /// it used). Slots already gone are skipped; with none left to remove, no epoch begins.
    pub async fn remove_slots(&mut self, ids: &[&str], reason: &str) -> Result<EpochReport> {
        let slots = self.key_list().await?;
        let present: Vec<&str> = ids.iter().copied().filter(|id| slots.iter().any(|s| s.id == *id)).collect();
        if present.is_empty() {
            return Ok(EpochReport {
                epoch: self.key_epoch(),
                carried: Vec::new(),
                left_out: Vec::new(),
                removed: Vec::new(),
                locked: Vec::new(),
            });
        }
        for kind in [SlotKind::Password, SlotKind::Escrow] {
            let kept = slots.iter().filter(|s| s.kind == kind && !present.contains(&s.id.as_str())).count();
            if kept == 0 && slots.iter().any(|s| s.kind == kind) {
                return Err(Error::Invalid(format!(
                    "refusing to remove the last {kind:?} key slot ({})",
                    present.join(", ")
                )));
            }
        }
        if present.contains(&self.slot_id.as_str()) {
            return Err(Error::Invalid(format!(
                "slot {} opened the vault; remove it with another slot's secret, or replace it with `key rotate`",
                self.slot_id
            )));
        }
        // The epoch first: a crash after it leaves the slots stranded already, never readable.
        // Always a new one, even for slots an earlier record left out: whoever held the master
        // key could have written that record, and would know its key.
        let mut report = self.start_epoch_with(&slots, reason, &present).await?;
        crate::failpoint::hit("remove-after-epoch");
        for id in present {
            match self.backend.delete(&layout::key_slot(id)).await {
                Ok(()) | Err(BackendError::NotFound(_)) => report.removed.push(id.to_string()),
                Err(BackendError::Retained { detail, .. }) => {
                    tracing::warn!(slot = id, %detail, "key slot left out of the key epoch but kept by Object Lock");
                    report.locked.push(id.to_string());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(report)
    }

    /// Replace the slot that opened the vault with one for `new_secret`: write, read back, unwrap,
    /// and only then delete the old slot. The same holder keeps access, so no new epoch.
    pub async fn key_rotate(&mut self, new_secret: &Secret) -> Result<KeySlot> {
        let old = self.slot_id.clone();
        let label = self.key_list().await?.into_iter().find(|s| s.id == old).map(|s| s.label).unwrap_or_default();
        let slot = self.key_add(new_secret, &label).await?;
        crate::failpoint::hit("rotate-before-delete");
        let kept = match self.backend.delete(&layout::key_slot(&old)).await {
            Ok(()) | Err(BackendError::NotFound(_)) => None,
            Err(BackendError::Retained { detail, .. }) => Some(detail),
            Err(e) => return Err(e.into()),
        };
        crate::failpoint::hit("rotate-after-delete");
        self.slot_id = slot.id.clone();
        if let Some(detail) = kept {
            // A rotated secret may have leaked: a slot Object Lock keeps is left out of a new
            // key epoch at once (so its lock is no longer extended either), and goes later.
            tracing::warn!(slot = %old, %detail, "the old key slot is kept by Object Lock; leaving it out of a new key epoch");
            let slots = self.key_list().await?;
            self.start_epoch_with(&slots, "key rotated; the old slot is kept by Object Lock", &[old.as_str()]).await?;
        }
        Ok(slot)
    }

    /// The ids of slots a key epoch this handle reaches left out (removed or revoked ones, and
    /// slots made before key epochs once a later epoch began): they open no newer data. Only the
    /// records this handle's chain verified count; a record beyond it says nothing.
    pub async fn left_out_slots(&self) -> Result<std::collections::BTreeSet<String>> {
        let records = read_epoch_records(&self.backend, &self.config.vault_id).await?;
        let reached = self.key_epoch();
        Ok(records
            .into_iter()
            .filter(|(e, _)| *e <= reached)
            .filter_map(|(_, r)| r.ok())
            .flat_map(|r| r.left_out)
            .collect())
    }

    /// Start a new key epoch: a new random master key, granted to every slot except `leave_out`
    /// (and slots made before key epochs, which cannot be granted one and are named in the
    /// report). New data is sealed under it from now on; older epochs stay readable through it.
    /// The opening slot must be carried (`key upgrade` first for a slot made before epochs), and
    /// so must at least one escrow slot.
    pub async fn start_epoch(&mut self, reason: &str, leave_out: &[&str]) -> Result<EpochReport> {
        let slots = self.key_list().await?;
        self.start_epoch_with(&slots, reason, leave_out).await
    }

    /// [`Self::start_epoch`] with the slots the caller already read.
    async fn start_epoch_with(&mut self, slots: &[KeySlot], reason: &str, leave_out: &[&str]) -> Result<EpochReport> {
        self.keys_change_here()?;
        self.writable()?;
        let records = read_epoch_records(&self.backend, &self.config.vault_id).await?;
        // As `check_epoch`, from the records just read: an epoch begun since this vault was opened.
        if let Some(newest) = records.keys().next_back().copied().filter(|n| *n > self.epochs_seen) {
            return Err(Error::EpochChanged(newest));
        }
        let mut carried = Vec::new();
        let mut left_out = Vec::new();
        for slot in slots {
            match slot.grant_public() {
                Some(public) if !leave_out.contains(&slot.id.as_str()) && self.reaches_current(slot, &records) => {
                    carried.push((slot.id.clone(), public, slot.kind))
                }
                _ => left_out.push(slot.id.clone()),
            }
        }
        if !carried.iter().any(|(id, ..)| *id == self.slot_id) {
            return Err(Error::Invalid(format!(
                "the slot that opened the vault ({}) was made before key epochs and cannot be carried into a new one; run `tresor-agent key upgrade` with it first",
                self.slot_id
            )));
        }
        if !carried.iter().any(|(.., kind)| *kind == SlotKind::Escrow) {
            // Name the cause that holds: the advice to upgrade only helps a version 1 slot.
            let why = if slots.iter().any(|s| s.kind == SlotKind::Escrow && s.grant_public().is_none()) {
                "the escrow slot was made before key epochs; run `tresor-agent key upgrade --escrow-key-file FILE` first"
            } else {
                "every escrow slot was left out of a key epoch since it was made, or its binding does not verify (see `tresor-agent key list`)"
            };
            return Err(Error::Invalid(format!(
                "no escrow slot would be carried into the new epoch ({why}), so the offline key would stop opening new data"
            )));
        }
        let (previous_epoch, previous) = self.current_master();
        let epoch = previous_epoch + 1;
        let (vid, previous, new) = (self.config.vault_id, previous.clone(), MasterKey::generate());
        let grants: Vec<_> = carried.iter().map(|(id, public, _)| (id.clone(), *public)).collect();
        let (reason, out) = (reason.to_string(), left_out.clone());
        let n = new.clone();
        let record = cpu(move || EpochRecord::begin(&vid, epoch, (&previous, &n), &grants, out, &reason)).await?;
        let name = epochs::record_name(epoch);
        if self.backend.create(&name, Bytes::from(record.to_json())).await? == Created::Existed {
            return Err(Error::Invalid(format!(
                "{name} already exists: another key change raced this one, or a record was planted; open the vault again and look at `key list`"
            )));
        }
        // Read back: the stored record must open to the new key for this slot.
        let stored = self.backend.get(&name).await?;
        let back = EpochRecord::from_json(&stored, &vid, &name)?;
        if back != record {
            return Err(Error::integrity(&name, "read back different from what was written"));
        }
        self.masters.push((epoch, new));
        self.keys = Arc::new(keys_of(&self.masters));
        self.epochs_seen = epoch;
        Ok(EpochReport {
            epoch,
            carried: carried.into_iter().map(|(id, ..)| id).collect(),
            left_out,
            removed: Vec::new(),
            locked: Vec::new(),
        })
    }

    /// Whether `slot` may be granted the next epoch: made by someone who held its own epoch (its
    /// binding verifies under that epoch's key), and granted every epoch since. A slot planted by
    /// someone without the key, or one left out before (a removal that crashed before deleting
    /// it), is not.
    fn reaches_current(
        &self,
        slot: &KeySlot,
        records: &std::collections::BTreeMap<u32, std::result::Result<EpochRecord, String>>,
    ) -> bool {
        let Some(own) = slot.epoch else { return false };
        let Some((_, master)) = self.masters.iter().find(|(e, _)| *e == own) else { return false };
        if !slot.bound_to(&self.config.vault_id, master) {
            tracing::warn!(slot = %slot.id, "key slot not made by a holder of its epoch's key; not carried into a new epoch");
            return false;
        }
        let (current, _) = self.current_master();
        (own + 1..=current).all(|e| matches!(records.get(&e), Some(Ok(r)) if r.grants.contains_key(&slot.id)))
    }

    /// Replace the opening slot, if it was made before key epochs, with one that later epochs
    /// can be granted to (same secret and label). `None` if it already is one.
    pub async fn key_upgrade(&mut self, secret: &Secret) -> Result<Option<KeySlot>> {
        let own = self.key_list().await?.into_iter().find(|s| s.id == self.slot_id);
        if own.as_ref().is_some_and(|s| s.grant_public().is_some()) {
            return Ok(None);
        }
        self.key_rotate(secret).await.map(Some)
    }

    /// All snapshot manifests, oldest first. Unreadable manifests are returned as errors by id.
    pub async fn snapshots(&self) -> Result<Vec<(SnapshotId, std::result::Result<Manifest, String>)>> {
        let mut out = Vec::new();
        for info in self.backend.list(layout::SNAPSHOTS).await? {
            let Some(id) = layout::id_of::<ObjectId>(&info.key) else {
                continue;
            };
            out.push((id, self.load_snapshot(&id).await.map_err(|e| e.to_string())));
        }
        out.sort_by(|a, b| {
            let ta = a.1.as_ref().map(|m| m.time.clone()).unwrap_or_default();
            let tb = b.1.as_ref().map(|m| m.time.clone()).unwrap_or_default();
            ta.cmp(&tb).then(a.0.cmp(&b.0))
        });
        Ok(out)
    }

    /// Store a controller-signed receipt for a snapshot: opaque bytes, sealed as object type 7
    /// at `receipts/<snapshot id>`, create-once. A receipt already there is left as it is.
    pub async fn put_receipt(&self, snapshot: &SnapshotId, receipt: &[u8]) -> Result<()> {
        self.check_epoch().await?;
        let key = layout::receipt(snapshot);
        let bytes = object::seal_named(self.keys(), ObjectType::Receipt, &key, &serde_bytes::Bytes::new(receipt));
        let _ = self.backend.create(&key, Bytes::from(bytes)).await?;
        Ok(())
    }

    /// Store a controller-signed document (`reports/..`, `audit/..`) write-once: sealed as object
    /// type 9. Storing the same body again is a no-op, so a retried delivery succeeds; a different
    /// body under a name already taken is refused, and nothing ever replaces or deletes one (GC and
    /// prune touch only `data/`, `index/`, `snapshots/` and `receipts/`).
    pub async fn put_document(&self, name: &str, body: &[u8]) -> Result<()> {
        self.check_epoch().await?;
        let key = layout::document(name)
            .ok_or_else(|| Error::Invalid(format!("{name:?} is not a document name (reports/NAME or audit/NAME)")))?;
        let bytes = object::seal_named(self.keys(), ObjectType::Document, &key, &serde_bytes::Bytes::new(body));
        if self.backend.create(&key, Bytes::from(bytes)).await? == Created::Existed {
            let there = self.document(name).await?;
            if there != body {
                return Err(Error::Invalid(format!(
                    "{key} already holds a different document; signed documents are write-once and never replaced"
                )));
            }
        }
        Ok(())
    }

    /// One stored document's body.
    pub async fn document(&self, name: &str) -> Result<Vec<u8>> {
        let key = layout::document(name).ok_or_else(|| Error::Invalid(format!("{name:?} is not a document name")))?;
        let bytes = self.backend.get(&key).await?;
        Ok(object::open_named::<serde_bytes::ByteBuf>(self.keys(), ObjectType::Document, &key, &bytes)?.into_vec())
    }

    /// The names of the documents under `reports/` or `audit/`, sorted.
    pub async fn document_names(&self, prefix: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> =
            self.backend.list(prefix).await?.into_iter().filter_map(|i| layout::document(&i.key)).collect();
        names.sort();
        Ok(names)
    }

    /// Forget a snapshot: its manifest goes first, then its receipt. Its data stays until
    /// garbage collection finds it unreferenced. Forgetting one already gone is not an error.
    /// In a locked bucket a snapshot whose lock has not run out stays: the answer then says
    /// until when (`Some`), and a later forget removes it.
    pub async fn forget_snapshot(&self, id: &SnapshotId) -> Result<Option<String>> {
        for key in [layout::snapshot(id), layout::receipt(id)] {
            match self.backend.delete(&key).await {
                Ok(()) | Err(BackendError::NotFound(_)) => {}
                Err(BackendError::Retained { detail, .. }) => {
                    return Ok(Some(format!("{key} is kept by Object Lock ({detail})")));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// One snapshot's receipt, if the vault has one that opens.
    pub async fn receipt(&self, snapshot: &SnapshotId) -> Result<Option<Vec<u8>>> {
        let key = layout::receipt(snapshot);
        let bytes = match self.backend.get(&key).await {
            Ok(b) => b,
            Err(BackendError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(object::open_named::<serde_bytes::ByteBuf>(self.keys(), ObjectType::Receipt, &key, &bytes)
            .ok()
            .map(|b| b.into_vec()))
    }

    /// Every receipt in the vault, by snapshot id. A receipt that does not open is reported as an
    /// error for its id (the caller treats that snapshot as having none).
    pub async fn receipts(&self) -> Result<Vec<(SnapshotId, std::result::Result<Vec<u8>, String>)>> {
        let mut out = Vec::new();
        for info in self.backend.list(layout::RECEIPTS).await? {
            let Some(id) = layout::id_of::<ObjectId>(&info.key) else {
                continue;
            };
            let bytes = self.backend.get(&info.key).await?;
            let body = object::open_named::<serde_bytes::ByteBuf>(self.keys(), ObjectType::Receipt, &info.key, &bytes)
                .map(|b| b.into_vec())
                .map_err(|e| format!("receipt {id}: {e}"));
            out.push((id, body));
        }
        Ok(out)
    }

    /// Reads that failed verification once and passed when repeated (reported as transient).
    pub fn transient_reads(&self) -> u64 {
        self.transient_reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn note_transient(&self, key: &str) {
        self.transient_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(key, "read failed verification once; second read verified (transient)");
    }

    /// Read an object named by its content; a mismatch is read once more before it counts as
    /// damage, so a bit flipped in transit is not reported as a damaged vault. `None`: damaged.
    async fn get_named(&self, key: &str, id: &ObjectId) -> Result<Option<Bytes>> {
        let bytes = self.backend.get(key).await?;
        if object::content_id(&bytes) == *id {
            return Ok(Some(bytes));
        }
        let again = self.backend.get(key).await?;
        if object::content_id(&again) == *id {
            self.note_transient(key);
            return Ok(Some(again));
        }
        Ok(None)
    }

    /// Read and verify one manifest.
    pub async fn load_snapshot(&self, id: &SnapshotId) -> Result<Manifest> {
        let bytes = match self.get_named(&layout::snapshot(id), id).await {
            Err(Error::Backend(BackendError::NotFound(_))) => return Err(Error::SnapshotNotFound(id.to_hex())),
            Ok(Some(b)) => b,
            Ok(None) => return Err(Error::integrity(format!("snapshot {id}"), "content does not match its name")),
            Err(e) => return Err(e),
        };
        let keys = self.keys.clone();
        let m =
            cpu(move || object::open::<Manifest>(&keys, ObjectType::Snapshot, &bytes)).await?.map_err(|e| match e {
                object::ObjectError::Epoch(missing) => Error::KeyEpoch(missing),
                e => Error::integrity(format!("snapshot {id}"), e),
            })?;
        // Unknown fields are skipped, but a new version means a layout this build cannot read.
        if m.v != 1 {
            return Err(Error::Invalid(format!(
                "snapshot {id} has manifest version {}; this build reads version 1",
                m.v
            )));
        }
        Ok(m)
    }

    /// Resolve `latest`, a full id or a unique prefix.
    pub async fn resolve_snapshot(&self, spec: &str) -> Result<(SnapshotId, Manifest)> {
        let all = self.snapshots().await?;
        let found: Vec<_> = if spec == "latest" {
            all.into_iter().rfind(|(_, m)| m.is_ok()).into_iter().collect()
        } else {
            all.into_iter()
                .filter(|(id, _)| id.to_hex().starts_with(&spec.to_lowercase()) && !spec.is_empty())
                .collect()
        };
        match found.len() {
            1 => {
                let (id, m) = found.into_iter().next().ok_or_else(|| Error::SnapshotNotFound(spec.into()))?;
                match m {
                    Ok(m) => Ok((id, m)),
                    // Read again for the typed error (damage, or a key epoch this slot lacks).
                    Err(_) => Ok((id, self.load_snapshot(&id).await?)),
                }
            }
            0 => Err(Error::SnapshotNotFound(spec.into())),
            n => Err(Error::Invalid(format!("snapshot prefix {spec} matches {n} snapshots; give more digits"))),
        }
    }

    /// The ids of the index segments in the vault now.
    ///
    /// # Errors
    /// The listing fails.
    pub async fn index_segment_ids(&self) -> Result<std::collections::BTreeSet<ObjectId>> {
        Ok(self.backend.list(layout::INDEX).await?.iter().filter_map(|i| layout::id_of(&i.key)).collect())
    }

    /// Bring the local index cache in line with the vault's segments.
    pub async fn sync_index(&self, cache_root: &std::path::Path) -> Result<Arc<LocalIndex>> {
        Ok(self.sync_index_noting(cache_root).await?.0)
    }

    /// [`Self::sync_index`], also naming the listed segments that did not read (skipped, with
    /// why), from the same listing.
    pub async fn sync_index_noting(
        &self,
        cache_root: &std::path::Path,
    ) -> Result<(Arc<LocalIndex>, Vec<(ObjectId, String)>)> {
        let mut skipped = Vec::new();
        let dir = self.cache_dir(cache_root).join("index");
        let listed_ids = self.index_segment_ids().await?;
        let d = dir.clone();
        let mut ix = cpu(move || LocalIndex::open(&d)).await??;
        if ix.is_stale(&listed_ids) {
            tracing::info!("vault lost or replaced index segments; rebuilding the local index");
            ix = cpu(move || {
                let mut ix = ix;
                ix.reset().map(|()| ix)
            })
            .await??;
        }
        let missing: Vec<ObjectId> = listed_ids.iter().filter(|s| !ix.merged_segments().contains(s)).copied().collect();
        for id in missing {
            // A damaged or planted segment must not stop restores of what the others index;
            // `check` reports it.
            let seg = match self.read_segment(&id).await {
                Ok(seg) => seg,
                // So must one of a key epoch this slot does not reach: what it indexes is not
                // readable with this slot anyway.
                Err(e @ (Error::Integrity { .. } | Error::KeyEpoch(_))) => {
                    tracing::warn!(segment = %id, error = %e, "skipping unreadable index segment");
                    skipped.push((id, e.to_string()));
                    continue;
                }
                Err(e) => return Err(e),
            };
            ix = cpu(move || {
                let mut ix = ix;
                ix.add_segment(id, &seg).map(|()| ix)
            })
            .await??;
        }
        Ok((Arc::new(ix), skipped))
    }

    /// Read, verify and decode one index segment.
    pub async fn read_segment(&self, id: &ObjectId) -> Result<Segment> {
        let Some(bytes) = self.get_named(&layout::segment(id), id).await? else {
            return Err(Error::integrity(format!("index segment {id}"), "content does not match its name"));
        };
        let keys = self.keys.clone();
        let id = *id;
        cpu(move || {
            let body = object::open_bytes(&keys, ObjectType::IndexSegment, &bytes)?;
            Segment::from_cbor(&body).map_err(|e| Error::integrity(format!("index segment {id}"), e))
        })
        .await?
    }

    /// Write an index segment (create-once); returns its id.
    pub async fn write_segment(&self, seg: &Segment) -> Result<ObjectId> {
        let (id, bytes) = object::seal(&self.keys, ObjectType::IndexSegment, &seg.to_body());
        self.backend.create(&layout::segment(&id), Bytes::from(bytes)).await?;
        Ok(id)
    }

    /// Fetch and verify one chunk by its index entry.
    pub async fn read_chunk(&self, e: &IndexEntry) -> Result<Vec<u8>> {
        let start = u64::from(e.blob.offset);
        let key = layout::pack(&e.pack.id);
        let range = start..start + u64::from(e.blob.stored_len);
        let sealed = self.backend.get_range(&key, range.clone()).await?;
        match self.open_chunk(e, sealed).await {
            Err(Error::Integrity { .. }) => {
                let r = self.open_chunk(e, self.backend.get_range(&key, range).await?).await;
                if r.is_ok() {
                    self.note_transient(&key);
                }
                r
            }
            r => r,
        }
    }

    /// Read a pack's directory with three ranged reads (size, footer, directory) plus the header.
    pub async fn read_pack_directory(&self, id: &PackId) -> Result<pack::PackDirectory> {
        let key = layout::pack(id);
        let be = &self.backend;
        let size = be.size(&key).await?.ok_or_else(|| Error::integrity(format!("pack {id}"), "missing"))?;
        if size < (pack::HEADER_LEN + pack::FOOTER_LEN) as u64 {
            return Err(Error::integrity(format!("pack {id}"), format!("only {size} bytes")));
        }
        let footer = be.get_range(&key, size - pack::FOOTER_LEN as u64..size).await?;
        let dir_len = pack::parse_footer(&footer, size).map_err(|e| Error::integrity(format!("pack {id}"), e))?;
        let dir_start = size - pack::FOOTER_LEN as u64 - u64::from(dir_len);
        let header = be.get_range(&key, 0..pack::HEADER_LEN as u64).await?;
        let dir = be.get_range(&key, dir_start..size - pack::FOOTER_LEN as u64).await?;
        let keys = self.keys.clone();
        cpu(move || pack::read_directory(&keys, &header, &dir, size))
            .await?
            .map_err(|e| pack_error(format!("pack {id}"), e))
    }

    /// Decrypt, decode and verify a chunk whose sealed bytes were already fetched.
    pub async fn open_chunk(&self, e: &IndexEntry, sealed: Bytes) -> Result<Vec<u8>> {
        let keys = self.keys.clone();
        let loc = pack::BlobLocation { salt: e.pack.salt, counter: e.counter, entry: e.blob };
        let pack_id = e.pack.id;
        cpu(move || pack::open_located(&keys, &loc, &sealed))
            .await?
            .map_err(|err| pack_error(format!("chunk {} in pack {}", loc.entry.id, pack_id), err))
    }

    /// A chunk whose index entry `failed` did not read, from another place the index lists it
    /// at (newest first); `None` when no other place reads. Each read verifies the chunk's id, so
    /// a planted entry can hide a chunk but never replace its bytes. With `same_len`, only places
    /// of the failed entry's length count: a file restore placed the chunks after it by that
    /// length, so a planted entry with another length fails its file rather than shift it.
    pub async fn read_chunk_elsewhere(
        &self,
        index: &Arc<LocalIndex>,
        failed: &IndexEntry,
        same_len: bool,
    ) -> Result<Option<Vec<u8>>> {
        let (ix, id) = (index.clone(), failed.id);
        let others = cpu(move || ix.lookup_all(&id)).await??;
        let elsewhere = |e: &&IndexEntry| !(e.pack.id == failed.pack.id && e.blob.offset == failed.blob.offset);
        let fits = |e: &&IndexEntry| !same_len || e.blob.raw_len == failed.blob.raw_len;
        for e in others.iter().filter(elsewhere).filter(fits) {
            match self.read_chunk(e).await {
                Ok(data) => {
                    tracing::warn!(chunk = %id, planned = %failed.pack.id, read_from = %e.pack.id, "chunk read from another index entry; run check, an index segment places it where it does not read");
                    return Ok(Some(data));
                }
                Err(err) => {
                    tracing::debug!(chunk = %id, pack = %e.pack.id, error = %err, "other index entry does not read either")
                }
            }
        }
        Ok(None)
    }

    /// Read the tree of a snapshot; needs the index to locate tree chunks.
    pub async fn read_tree(&self, m: &Manifest, index: &Arc<LocalIndex>) -> Result<Vec<Node>> {
        // Index lookups are file reads: off the runtime.
        let (ix, ids) = (index.clone(), m.tree.clone());
        let entries = cpu(move || {
            ids.iter()
                .map(|id| {
                    ix.lookup(id)?.ok_or_else(|| Error::integrity(format!("tree chunk {id}"), "not in the index"))
                })
                .collect::<Result<Vec<_>>>()
        })
        .await??;
        let mut bytes = Vec::new();
        for e in &entries {
            let chunk = match self.read_chunk(e).await {
                Ok(c) => c,
                Err(err) => self.read_chunk_elsewhere(index, e, false).await?.ok_or(err)?,
            };
            bytes.extend_from_slice(&chunk);
        }
        let n = m.tree_nodes;
        cpu(move || crate::snapshot::decode_tree(&bytes, n)).await?.map_err(|e| Error::integrity("snapshot tree", e))
    }
}

/// A pack error about `what`: damage, unless it is a key epoch this slot does not reach.
fn pack_error(what: String, e: pack::PackError) -> Error {
    match e {
        pack::PackError::Epoch(missing) => Error::KeyEpoch(missing),
        other => Error::integrity(what, other),
    }
}

fn location_error(e: BackendError) -> Error {
    match e {
        BackendError::NoSuchLocation(l) => Error::NoSuchLocation(l),
        other => other.into(),
    }
}
