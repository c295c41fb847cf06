//! The catalog in sled: jobs, snapshots, source states and enrollment tokens. It is a cache of
//! the vaults plus the controller's working state; `rebuild-catalog` restores its snapshots from
//! the vaults (docs/ARCHITECTURE.md has the table of what lives where).
//!
//! sled operations here are in-memory tree updates (its log is written by a background thread),
//! so they are called from async code directly; `flush` is the one that waits for the disk and is
//! only called through `flush_async`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};
use crate::job::JobRecord;

/// A snapshot as the catalog knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Vault id.
    pub vault_id: String,
    /// The vault's name in the policy.
    pub vault: String,
    /// Snapshot id.
    pub snapshot_id: String,
    /// Agent name.
    pub agent: String,
    /// Source name.
    pub source: String,
    /// Host recorded in the manifest.
    pub host: String,
    /// The manifest's own time (not trusted for retention).
    pub manifest_time: String,
    /// The receipt's time (Unix milliseconds), if the snapshot has a valid receipt.
    pub committed_ms: Option<i64>,
    /// The receipt's signature (hex).
    pub receipt_sig: Option<String>,
    /// Files, bytes in total, new and stored, duration.
    pub files: u64,
    /// Bytes in the snapshot.
    pub bytes_total: u64,
    /// Bytes not found in the vault before.
    pub bytes_new: u64,
    /// Bytes written to storage.
    pub bytes_stored: u64,
    /// How long the backup took.
    pub duration_ms: u64,
    /// Backed-up paths.
    pub paths: Vec<String>,
    /// The job whose result made this record (none for records rebuilt from a vault scan).
    #[serde(default)]
    pub job: Option<String>,
    /// A scan found a receipt that does not verify under this controller's key (one signed by a
    /// controller before it, lost with its state): the only case a drill's RPO may count from the
    /// manifest's own time.
    #[serde(default)]
    pub receipt_unverified: bool,
    /// At a second site: when the controller first knew the copy held it (Unix milliseconds).
    #[serde(default)]
    pub copied_ms: Option<i64>,
}

/// The scheduler's and the status view's memory of one source.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceRecord {
    /// Last successful backup (receipt time).
    pub last_success_unix: i64,
    /// Error of the last failed attempt, cleared by a success.
    pub last_error: String,
    /// Consecutive failures.
    pub failures: u32,
    /// Duration of the last success.
    pub last_duration_ms: u64,
    /// Bytes new and in total of the last success.
    pub last_bytes_new: u64,
    /// Bytes in total of the last success.
    pub last_bytes_total: u64,
    /// The newest schedule slot already turned into a job (Unix seconds).
    pub last_slot_unix: i64,
    /// Total failures since the catalog was made (for metrics).
    pub failures_total: u64,
    /// Newest check slot turned into a job.
    pub last_check_slot_unix: i64,
    /// Error of the last scheduled check, cleared by a passing one.
    #[serde(default)]
    pub last_check_error: String,
    /// Since when the controller schedules this source (RPO counts from here until a first backup).
    #[serde(default)]
    pub tracked_since_unix: i64,
    /// The last backup result of this source's agent that the controller refused (it named
    /// another vault, or a snapshot already claimed), kept until a good backup: an alert.
    #[serde(default)]
    pub refused_result: String,
}

/// What the controller remembers of one vault.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VaultRecord {
    /// What its last GC sweep found wrong (live packs kept because the index places their chunks
    /// where they do not read), kept until a sweep finds nothing: an alert.
    #[serde(default)]
    pub gc_warning: String,
    /// The key slot each agent (by id) last said it opens the vault with.
    #[serde(default)]
    pub slots: std::collections::BTreeMap<String, String>,
    /// Slots of revoked agents the maintainer has yet to remove (with a new key epoch): an
    /// alert until it has.
    #[serde(default)]
    pub revoke_slots: Vec<String>,
    /// Why the maintainer's last attempt to remove them failed.
    #[serde(default)]
    pub revoke_error: String,
    /// The key epoch the maintainer writes under, from its last prune.
    #[serde(default)]
    pub key_epoch: u32,
    /// Live objects whose Object Lock the last prune could not extend: an alert until a prune
    /// extends every lock.
    #[serde(default)]
    pub lock_error: String,
    /// A vault with a second site: when its last copy job ended with every snapshot copied.
    #[serde(default)]
    pub copy_last_success_unix: i64,
    /// Why its last copy job failed or left snapshots behind (an alert until one succeeds).
    #[serde(default)]
    pub copy_error: String,
}

impl SourceRecord {
    /// Where the RPO clock starts: the last good backup, else when the source was first scheduled
    /// (0 if neither is known).
    pub fn rpo_since(&self) -> i64 {
        if self.last_success_unix > 0 { self.last_success_unix } else { self.tracked_since_unix }
    }

    /// Whether the source is past its RPO target at `now`.
    pub fn overdue(&self, now: i64, rpo_secs: i64) -> bool {
        let since = self.rpo_since();
        since > 0 && now - since > rpo_secs
    }
}

/// A one-time enrollment token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollToken {
    /// Expiry (Unix seconds).
    pub expires_unix: i64,
    /// Who it is for.
    pub label: String,
}

/// The sled catalog.
pub struct Catalog {
    db: sled::Db,
    active: sled::Tree,
    done: sled::Tree,
    snapshots: sled::Tree,
    copies: sled::Tree,
    sources: sled::Tree,
    vaults: sled::Tree,
    enroll: sled::Tree,
    meta: sled::Tree,
    /// Signed drill reports by drill id, their summaries (for lists, alerts and metrics), and drill
    /// plans' memory (`drills.rs`).
    pub(crate) drills: sled::Tree,
    pub(crate) drill_summaries: sled::Tree,
    pub(crate) drill_plans: sled::Tree,
    /// The audit log by big-endian sequence number, and its signed checkpoints (`audit_log.rs`).
    pub(crate) audit: sled::Tree,
    pub(crate) audit_checkpoints: sled::Tree,
    path: PathBuf,
    /// Set when the catalog was made fresh (first start or a damaged one set aside): the
    /// controller then rebuilds snapshots from the vaults.
    pub fresh: bool,
}

pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v)
        .map_err(|e| Error::Corrupt { key: String::from_utf8_lossy(key).into_owned(), detail: e.to_string() })
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl Catalog {
    /// Open the catalog below `state_dir`. A catalog sled cannot open is moved aside (never
    /// deleted) and a fresh one made, marked for rebuild.
    ///
    /// # Errors
    /// Neither the old nor a fresh catalog can be opened.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join("catalog.sled");
        let existed = path.exists();
        let db = match sled::open(&path) {
            Ok(db) => db,
            Err(e) if existed => {
                let aside = state_dir.join(format!("catalog.broken-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S")));
                tracing::error!(error = %e, aside = %aside.display(), "the catalog does not open; setting it aside and rebuilding");
                std::fs::rename(&path, &aside).map_err(|e| Error::io("setting the damaged catalog aside", e))?;
                return Self::open_fresh(path);
            }
            Err(e) => return Err(e.into()),
        };
        let marked_complete = db.get(b"catalog-complete")?.is_some();
        let mut cat = Self::with_db(db, path)?;
        cat.fresh = !marked_complete;
        Ok(cat)
    }

    fn open_fresh(path: PathBuf) -> Result<Self> {
        let db = sled::open(&path)?;
        let mut cat = Self::with_db(db, path)?;
        cat.fresh = true;
        Ok(cat)
    }

    fn with_db(db: sled::Db, path: PathBuf) -> Result<Self> {
        Ok(Self {
            active: db.open_tree("jobs-active")?,
            done: db.open_tree("jobs-done")?,
            snapshots: db.open_tree("snapshots")?,
            copies: db.open_tree("copies")?,
            sources: db.open_tree("sources")?,
            vaults: db.open_tree("vaults")?,
            enroll: db.open_tree("enroll-tokens")?,
            meta: db.open_tree("meta")?,
            drills: db.open_tree("drills")?,
            drill_summaries: db.open_tree("drill-summaries")?,
            drill_plans: db.open_tree("drill-plans")?,
            audit: db.open_tree("audit")?,
            audit_checkpoints: db.open_tree("audit-checkpoints")?,
            db,
            path,
            fresh: false,
        })
    }

    /// Mark the catalog as holding everything (after a first start or a completed rebuild).
    ///
    /// # Errors
    /// sled failed.
    pub async fn mark_complete(&self) -> Result<()> {
        let _ = self.db.insert(b"catalog-complete", b"1".as_slice())?;
        self.flush().await
    }

    /// Where the catalog lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wait until everything written so far is on disk.
    ///
    /// # Errors
    /// sled failed.
    pub async fn flush(&self) -> Result<()> {
        let _ = self.db.flush_async().await?;
        Ok(())
    }

    /// Flush from synchronous code (callers run it off the runtime threads).
    ///
    /// # Errors
    /// sled failed.
    pub fn flush_blocking(&self) -> Result<()> {
        let _ = self.db.flush()?;
        Ok(())
    }

    /// The next lease epoch: strictly increasing across restarts (sled persists the counter).
    ///
    /// # Errors
    /// sled failed.
    pub fn next_epoch(&self) -> Result<u64> {
        Ok(self.db.generate_id()? + 1)
    }

    // --- jobs ---------------------------------------------------------------------------------

    /// Insert or update an unfinished job.
    ///
    /// # Errors
    /// sled failed.
    pub fn put_active(&self, job: &JobRecord) -> Result<()> {
        let _ = self.active.insert(job.id.as_str(), encode(job))?;
        Ok(())
    }

    /// Move a job to the finished ones, atomically.
    ///
    /// # Errors
    /// sled failed.
    pub fn finish(&self, job: &JobRecord) -> Result<()> {
        use sled::Transactional;
        let bytes = encode(job);
        (&self.active, &self.done)
            .transaction(|(a, d)| {
                let _ = a.remove(job.id.as_str())?;
                let _ = d.insert(job.id.as_str(), bytes.as_slice())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => Error::Catalog(e),
                sled::transaction::TransactionError::Abort(()) => {
                    Error::FailedPrecondition("transaction aborted".into())
                }
            })
    }

    /// Update a finished job.
    ///
    /// # Errors
    /// sled failed.
    pub fn put_done(&self, job: &JobRecord) -> Result<()> {
        let _ = self.done.insert(job.id.as_str(), encode(job))?;
        Ok(())
    }

    /// All unfinished jobs, oldest first.
    ///
    /// # Errors
    /// sled failed or a record is damaged.
    pub fn active_jobs(&self) -> Result<Vec<JobRecord>> {
        self.active.iter().map(|r| r.map_err(Error::from).and_then(|(k, v)| decode(&k, &v))).collect()
    }

    /// A job by id, finished or not.
    ///
    /// # Errors
    /// sled failed or the record is damaged.
    pub fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        for tree in [&self.active, &self.done] {
            if let Some(v) = tree.get(id)? {
                return decode(id.as_bytes(), &v).map(Some);
            }
        }
        Ok(None)
    }

    /// The newest finished jobs, newest first.
    ///
    /// # Errors
    /// sled failed or a record is damaged.
    pub fn recent_done(&self, limit: usize) -> Result<Vec<JobRecord>> {
        self.done.iter().rev().take(limit).map(|r| r.map_err(Error::from).and_then(|(k, v)| decode(&k, &v))).collect()
    }

    // --- snapshots ----------------------------------------------------------------------------

    /// Record a snapshot.
    ///
    /// # Errors
    /// sled failed.
    pub fn put_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        let _ = self.snapshots.insert(format!("{}/{}", s.vault_id, s.snapshot_id), encode(s))?;
        Ok(())
    }

    /// The record of one snapshot, if the catalog has it.
    ///
    /// # Errors
    /// sled failed, or the record is damaged.
    pub fn snapshot(&self, vault_id: &str, snapshot_id: &str) -> Result<Option<SnapshotRecord>> {
        let key = format!("{vault_id}/{snapshot_id}");
        self.snapshots.get(&key)?.map(|v| decode(key.as_bytes(), &v)).transpose()
    }

    /// Drop a snapshot the maintainer forgot.
    ///
    /// # Errors
    /// sled failed.
    pub fn remove_snapshot(&self, vault_id: &str, snapshot_id: &str) -> Result<()> {
        let _ = self.snapshots.remove(format!("{vault_id}/{snapshot_id}"))?;
        Ok(())
    }

    /// All snapshots.
    ///
    /// # Errors
    /// sled failed or a record is damaged.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        self.snapshots.iter().map(|r| r.map_err(Error::from).and_then(|(k, v)| decode(&k, &v))).collect()
    }

    // --- copies (snapshots at second sites) ----------------------------------------------------

    /// Record that the second site `s.vault` holds snapshot `s.snapshot_id` (a copy keeps the
    /// vault id and snapshot id of its source, so copies are kept apart from `snapshots`).
    ///
    /// # Errors
    /// sled failed.
    pub fn put_copy(&self, s: &SnapshotRecord) -> Result<()> {
        let _ = self.copies.insert(format!("{}/{}", s.vault, s.snapshot_id), encode(s))?;
        Ok(())
    }

    /// Drop a snapshot the second site `vault` no longer holds.
    ///
    /// # Errors
    /// sled failed.
    pub fn remove_copy(&self, vault: &str, snapshot_id: &str) -> Result<()> {
        let _ = self.copies.remove(format!("{vault}/{snapshot_id}"))?;
        Ok(())
    }

    /// The snapshots the second site `vault` holds.
    ///
    /// # Errors
    /// sled failed or a record is damaged.
    pub fn copies_in(&self, vault: &str) -> Result<Vec<SnapshotRecord>> {
        self.copies
            .scan_prefix(format!("{vault}/"))
            .map(|r| r.map_err(Error::from).and_then(|(k, v)| decode(&k, &v)))
            .collect()
    }

    // --- sources ------------------------------------------------------------------------------

    /// A source's record (default if none yet).
    ///
    /// # Errors
    /// sled failed or the record is damaged.
    pub fn source(&self, key: &str) -> Result<SourceRecord> {
        match self.sources.get(key)? {
            Some(v) => decode(key.as_bytes(), &v),
            None => Ok(SourceRecord::default()),
        }
    }

    /// Update a source's record.
    ///
    /// # Errors
    /// sled failed.
    pub fn put_source(&self, key: &str, r: &SourceRecord) -> Result<()> {
        let _ = self.sources.insert(key, encode(r))?;
        Ok(())
    }

    // --- vaults -------------------------------------------------------------------------------

    /// A vault's record, by its name in the policy (default if none yet).
    ///
    /// # Errors
    /// sled failed or the record is damaged.
    pub fn vault(&self, name: &str) -> Result<VaultRecord> {
        match self.vaults.get(name)? {
            Some(v) => decode(name.as_bytes(), &v),
            None => Ok(VaultRecord::default()),
        }
    }

    /// Update a vault's record.
    ///
    /// # Errors
    /// sled failed.
    pub fn put_vault(&self, name: &str, r: &VaultRecord) -> Result<()> {
        let _ = self.vaults.insert(name, encode(r))?;
        Ok(())
    }

    // --- enrollment tokens --------------------------------------------------------------------

    /// Store a new enrollment token (by hash).
    ///
    /// # Errors
    /// sled failed.
    pub async fn add_enroll_token(&self, hash: &str, t: &EnrollToken) -> Result<()> {
        let _ = self.enroll.insert(hash, encode(t))?;
        self.flush().await
    }

    /// Consume an enrollment token: succeeds once per token, atomically.
    ///
    /// # Errors
    /// Unknown, used or expired tokens are refused with a message saying which.
    pub async fn take_enroll_token(&self, hash: &str, now_unix: i64) -> Result<EnrollToken> {
        let Some(old) = self.enroll.remove(hash)? else {
            return Err(Error::Unauthenticated(
                "enrollment token unknown or already used; ask an admin for a new one (tresorctl token create)".into(),
            ));
        };
        self.flush().await?;
        let t: EnrollToken = decode(hash.as_bytes(), &old)?;
        if t.expires_unix <= now_unix {
            return Err(Error::Unauthenticated(
                "enrollment token expired; ask an admin for a new one (tresorctl token create)".into(),
            ));
        }
        Ok(t)
    }

    // --- scheduler memory ---------------------------------------------------------------------

    /// When the controller last ran its scheduler (for catch-up after downtime).
    ///
    /// # Errors
    /// sled failed.
    pub fn meta_get(&self, key: &str) -> Result<Option<i64>> {
        Ok(self.meta.get(key)?.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(i64::from_le_bytes))
    }

    /// Store a number in the meta tree.
    ///
    /// # Errors
    /// sled failed.
    pub fn meta_put(&self, key: &str, v: i64) -> Result<()> {
        let _ = self.meta.insert(key, &v.to_le_bytes())?;
        Ok(())
    }
}
