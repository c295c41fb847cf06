//! Results not yet accepted by the controller, and receipts and signed documents (drill reports)
//! not yet stored in their vault, kept as files so a restart or a controller outage loses none.
//! The directories are small: one file per finished job attempt, committed snapshot or drill,
//! removed once delivered.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tresor_proto::pb;
use tresor_proto::prost::Message;

/// A receipt waiting to be written into its vault.
#[derive(Debug, Serialize, Deserialize)]
pub struct PendingReceipt {
    /// The vault's name in agent.toml.
    pub vault: String,
    /// The snapshot.
    pub snapshot_id: String,
    /// The prost-encoded receipt, hex.
    pub receipt_hex: String,
}

/// The outbox directories.
#[derive(Clone)]
pub struct Outbox {
    results: PathBuf,
    receipts: PathBuf,
    documents: PathBuf,
}

fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn list(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// Every `.pb` file of `dir`, decoded; a damaged one is dropped with a warning naming `what`.
fn decode_all<M: Message + Default>(dir: &Path, what: &str) -> Vec<(PathBuf, M)> {
    list(dir, "pb")
        .into_iter()
        .filter_map(|p| match std::fs::read(&p).ok().and_then(|b| M::decode(b.as_slice()).ok()) {
            Some(m) => Some((p, m)),
            None => {
                tracing::warn!(path = %p.display(), "{what} unreadable; dropped");
                let _ = std::fs::remove_file(&p);
                None
            }
        })
        .collect()
}

impl Outbox {
    /// The outbox below `state_dir`.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        let results = state_dir.join("outbox");
        let receipts = state_dir.join("receipts-pending");
        let documents = state_dir.join("documents-pending");
        for d in [&results, &receipts, &documents] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        Ok(Self { results, receipts, documents })
    }

    /// Keep a result until the controller accepts or refuses it.
    pub fn put_result(&self, r: &pb::JobResult) -> anyhow::Result<PathBuf> {
        let jr = r.r#ref.clone().unwrap_or_default();
        let path = self.results.join(format!("{}-{}-{}.pb", jr.job_id, jr.attempt, jr.lease_epoch));
        write_file(&path, &r.encode_to_vec())?;
        Ok(path)
    }

    /// Results waiting, oldest job first. Damaged files are dropped with a warning.
    pub fn results(&self) -> Vec<(PathBuf, pb::JobResult)> {
        decode_all(&self.results, "outbox entry")
    }

    /// Keep a receipt until it is in its vault.
    pub fn put_receipt(&self, vault: &str, r: &pb::Receipt) -> anyhow::Result<()> {
        let pending = PendingReceipt {
            vault: vault.into(),
            snapshot_id: r.snapshot_id.clone(),
            receipt_hex: hex::encode(r.encode_to_vec()),
        };
        write_file(&self.receipts.join(format!("{}.json", r.snapshot_id)), &serde_json::to_vec(&pending)?)
    }

    /// Receipts waiting.
    pub fn receipts(&self) -> Vec<(PathBuf, PendingReceipt)> {
        list(&self.receipts, "json")
            .into_iter()
            .filter_map(|p| {
                let r = std::fs::read(&p).ok().and_then(|b| serde_json::from_slice(&b).ok());
                if r.is_none() {
                    tracing::warn!(path = %p.display(), "pending receipt unreadable; dropped");
                    let _ = std::fs::remove_file(&p);
                }
                r.map(|r| (p, r))
            })
            .collect()
    }

    /// Keep signed documents until they are in their vault.
    pub fn put_documents(&self, d: &pb::StoreDocuments) -> anyhow::Result<()> {
        let bytes = d.encode_to_vec();
        let name = blake3::hash(&bytes).to_hex();
        write_file(&self.documents.join(format!("{}.pb", &name[..32])), &bytes)
    }

    /// Documents waiting.
    pub fn documents(&self) -> Vec<(PathBuf, pb::StoreDocuments)> {
        decode_all(&self.documents, "pending document")
    }

    /// Remove a delivered entry.
    pub fn done(&self, path: &Path) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a delivered outbox entry");
        }
    }
}
