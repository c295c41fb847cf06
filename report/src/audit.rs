//! The audit log's hash chain. Each entry is a JSON object `{seq, time, actor, action, object,
//! outcome, reason, prev, hash}`: `hash` is BLAKE3 over the canonical form (RFC 8785) of the entry
//! without `hash`, and `prev` is the hash of the entry before it (64 zeros for the first).
//! Checkpoints are signed documents `{type: "tresor.audit-checkpoint.v1", seq, head, time}` naming
//! the hash at a position; they are written where the controller cannot rewrite them (write-once, in
//! the vault), so a chain re-hashed after a change no longer meets its checkpoints.

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::{Value, json};

use crate::{jcs, sign};

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The `type` of a checkpoint.
pub const CHECKPOINT_TYPE: &str = "tresor.audit-checkpoint.v1";

/// What an entry records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Time, RFC 3339 with milliseconds.
    pub time: String,
    /// Who: `admin:TOKEN-ID`, `agent:NAME`, `controller`.
    pub actor: String,
    /// What: `enroll`, `revoke`, `policy.apply`, `backup`, `restore`, `prune.delete`, `drill`, ...
    pub action: String,
    /// On what.
    pub object: String,
    /// `ok`, `refused` or `failed`.
    pub outcome: String,
    /// Why (a deletion's rule, a refusal's reason); may be empty.
    pub reason: String,
}

/// Why a chain does not verify; always names the position.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    /// An entry's fields do not give its hash: it was changed.
    #[error("entry {seq} was changed: its content does not give its hash")]
    Changed {
        /// Position.
        seq: u64,
    },
    /// An entry does not follow the one before it.
    #[error("entry {seq} does not follow entry {before}: {why}")]
    Broken {
        /// Position found.
        seq: u64,
        /// The entry before it.
        before: u64,
        /// Gap, reorder, or a `prev` that is not the hash before.
        why: String,
    },
    /// The chain does not meet a signed checkpoint.
    #[error("the chain does not meet the checkpoint at entry {seq}: {why}")]
    Checkpoint {
        /// The checkpoint's position.
        seq: u64,
        /// What differs.
        why: String,
    },
    /// Not an entry or checkpoint of this format.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// Which item.
        what: String,
        /// What is missing.
        why: String,
    },
}

fn hash_of(entry: &Value) -> Result<String, AuditError> {
    let mut body = entry.as_object().cloned().ok_or_else(|| malformed("entry", "not an object"))?;
    body.remove("hash");
    let bytes = jcs::canonical(&Value::Object(body)).map_err(|e| malformed("entry", &e.to_string()))?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

fn malformed(what: &str, why: &str) -> AuditError {
    AuditError::Malformed { what: what.into(), why: why.into() }
}

fn str_of<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str, AuditError> {
    v.get(key).and_then(Value::as_str).ok_or_else(|| malformed(what, &format!("no {key}")))
}

fn seq_of(v: &Value, what: &str) -> Result<u64, AuditError> {
    v.get("seq").and_then(Value::as_u64).ok_or_else(|| malformed(what, "no seq"))
}

impl Event {
    /// The fields of a stored entry (missing ones empty).
    pub fn of_entry(entry: &Value) -> Self {
        let s = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        Self {
            time: s("time"),
            actor: s("actor"),
            action: s("action"),
            object: s("object"),
            outcome: s("outcome"),
            reason: s("reason"),
        }
    }
}

/// The entry that follows `prev` (None for the first).
pub fn next_entry(prev: Option<&Value>, e: &Event) -> Result<Value, AuditError> {
    let (seq, prev_hash) = match prev {
        Some(p) => (seq_of(p, "entry")? + 1, str_of(p, "hash", "entry")?.to_string()),
        None => (0, GENESIS.to_string()),
    };
    let mut v = json!({
        "seq": seq, "time": e.time, "actor": e.actor, "action": e.action,
        "object": e.object, "outcome": e.outcome, "reason": e.reason, "prev": prev_hash,
    });
    let h = hash_of(&v)?;
    v["hash"] = json!(h);
    Ok(v)
}

/// A signed checkpoint at `entry`.
pub fn checkpoint(entry: &Value, time: &str, key: &SigningKey) -> Result<Value, AuditError> {
    let mut c = json!({
        "type": CHECKPOINT_TYPE,
        "seq": seq_of(entry, "entry")?,
        "head": str_of(entry, "hash", "entry")?,
        "time": time,
    });
    sign::sign(&mut c, key).map_err(|e| malformed("checkpoint", &e.to_string()))?;
    Ok(c)
}

/// What a verified chain covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainStatus {
    /// Entries checked.
    pub entries: u64,
    /// Checkpoints met (every checkpoint given must be met, or verification fails).
    pub checkpoints: u64,
    /// Entries after the newest checkpoint (not yet anchored).
    pub unanchored: u64,
}

/// Verify the whole log, from its first entry, and the checkpoints signed by `key`.
pub fn verify(entries: &[Value], checkpoints: &[Value], key: &VerifyingKey) -> Result<ChainStatus, AuditError> {
    let mut chain = ChainVerifier::new(checkpoints, key);
    for e in entries {
        chain.push(e)?;
    }
    chain.finish()
}

/// [`verify`] one entry at a time, keeping only the hashes the checkpoints name: memory does not
/// grow with the log.
pub struct ChainVerifier<'a> {
    checkpoints: &'a [Value],
    key: &'a VerifyingKey,
    wanted: std::collections::BTreeSet<u64>,
    heads: std::collections::BTreeMap<u64, String>,
    next: u64,
    prev: String,
}

/// Where a verification stopped: the next entry expected, the hash it must name as `prev`, and
/// the heads of the checkpoints met so far. A later verification resumes from it and checks only
/// the entries written since (the controller's page does; offline verification starts at 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainPosition {
    /// The next entry expected.
    pub next: u64,
    /// The hash of the entry before it (the genesis value at 0).
    pub prev: String,
    /// Checkpoint position to the hash of the entry there, for those met.
    pub heads: std::collections::BTreeMap<u64, String>,
}

impl ChainPosition {
    /// Before entry 0.
    pub fn start() -> Self {
        Self { next: 0, prev: GENESIS.to_string(), heads: Default::default() }
    }

    /// Whether a verifier resumed here could judge every checkpoint in `checkpoints`: each one
    /// before `next` must have its head remembered.
    pub fn covers(&self, checkpoints: &[Value]) -> bool {
        checkpoints
            .iter()
            .filter_map(|c| seq_of(c, "checkpoint").ok())
            .all(|seq| seq >= self.next || self.heads.contains_key(&seq))
    }
}

impl<'a> ChainVerifier<'a> {
    /// Start at entry 0.
    pub fn new(checkpoints: &'a [Value], key: &'a VerifyingKey) -> Self {
        Self::resume(checkpoints, key, ChainPosition::start())
    }

    /// Continue from `at` (entries before it were verified already).
    pub fn resume(checkpoints: &'a [Value], key: &'a VerifyingKey, at: ChainPosition) -> Self {
        let wanted = checkpoints.iter().filter_map(|c| seq_of(c, "checkpoint").ok()).collect();
        Self { checkpoints, key, wanted, heads: at.heads, next: at.next, prev: at.prev }
    }

    /// Where this verification stands now.
    pub fn position(&self) -> ChainPosition {
        ChainPosition { next: self.next, prev: self.prev.clone(), heads: self.heads.clone() }
    }

    /// The next entry of the log.
    ///
    /// # Errors
    /// The entry was changed, or does not follow the one before it.
    pub fn push(&mut self, e: &Value) -> Result<(), AuditError> {
        let (seq, expected) = (seq_of(e, "entry")?, self.next);
        let hash = str_of(e, "hash", "entry")?;
        if hash_of(e)? != hash {
            return Err(AuditError::Changed { seq });
        }
        let before = expected.saturating_sub(1);
        if seq != expected {
            let why = if expected == 0 {
                format!("the log does not start at entry 0: entries 0 to {} are missing", seq.saturating_sub(1))
            } else if seq < expected {
                "out of order".to_string()
            } else {
                format!("entries {expected} to {} are missing", seq - 1)
            };
            return Err(AuditError::Broken { seq, before, why });
        }
        if str_of(e, "prev", "entry")? != self.prev {
            let why = if seq == 0 {
                "the first entry does not start the chain"
            } else {
                "its prev is not the hash of the entry before"
            };
            return Err(AuditError::Broken { seq, before, why: why.into() });
        }
        if self.wanted.contains(&seq) {
            let _ = self.heads.insert(seq, hash.to_string());
        }
        hash.clone_into(&mut self.prev);
        self.next += 1;
        Ok(())
    }

    /// Check every checkpoint against the entries seen.
    ///
    /// # Errors
    /// A checkpoint is not signed by the key, or the chain does not meet it.
    pub fn finish(self) -> Result<ChainStatus, AuditError> {
        let mut newest = None;
        for c in self.checkpoints {
            let seq = seq_of(c, "checkpoint")?;
            if str_of(c, "type", "checkpoint")? != CHECKPOINT_TYPE {
                return Err(malformed("checkpoint", "wrong type"));
            }
            sign::verify(c, self.key).map_err(|e| AuditError::Checkpoint { seq, why: e.to_string() })?;
            match self.heads.get(&seq) {
                Some(h) if h == str_of(c, "head", "checkpoint")? => newest = newest.max(Some(seq)),
                Some(_) => {
                    let why = "the entry's hash is not the signed head (the chain was re-hashed)".into();
                    return Err(AuditError::Checkpoint { seq, why });
                }
                None => {
                    let why = match self.next {
                        0 => "the log is empty: every entry was removed".to_string(),
                        n => format!("the log ends at entry {}: later entries were removed", n - 1),
                    };
                    return Err(AuditError::Checkpoint { seq, why });
                }
            }
        }
        let entries = self.next;
        Ok(ChainStatus {
            entries,
            checkpoints: self.checkpoints.len() as u64,
            unanchored: newest.map_or(entries, |n| entries - 1 - n),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64) -> Event {
        Event {
            time: format!("2026-11-29T10:00:{:02}.000Z", i % 60),
            actor: "admin:t1".into(),
            action: if i.is_multiple_of(3) { "backup".into() } else { "prune.delete".into() },
            object: format!("gpu-01/models snapshot {i}"),
            outcome: "ok".into(),
            reason: if i.is_multiple_of(3) { String::new() } else { "keep_last = 7".into() },
        }
    }

    fn chain(n: u64) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        for i in 0..n {
            let e = next_entry(out.last(), &event(i)).unwrap();
            out.push(e);
        }
        out
    }

    #[test]
    fn every_kind_of_tampering_is_detected() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let pk = key.verifying_key();
        let log = chain(10);
        let cps = vec![checkpoint(&log[4], "t", &key).unwrap(), checkpoint(&log[9], "t", &key).unwrap()];
        let ok = verify(&log, &cps, &pk).unwrap();
        assert_eq!((ok.entries, ok.checkpoints, ok.unanchored), (10, 2, 0));

        let mut changed = log.clone();
        changed[3]["outcome"] = json!("refused");
        assert_eq!(verify(&changed, &cps, &pk), Err(AuditError::Changed { seq: 3 }));

        let mut removed = log.clone();
        removed.remove(6);
        assert!(matches!(verify(&removed, &cps, &pk), Err(AuditError::Broken { seq: 7, before: 5, .. })));

        let mut reordered = log.clone();
        reordered.swap(2, 3);
        assert!(matches!(verify(&reordered, &cps, &pk), Err(AuditError::Broken { .. })));

        // Re-chained: entry 3 changed and every later hash recomputed; only the checkpoints tell.
        let mut rechained: Vec<Value> = log[..3].to_vec();
        let mut ev = event(3);
        ev.outcome = "refused".into();
        rechained.push(next_entry(rechained.last(), &ev).unwrap());
        for i in 4..10 {
            let e = next_entry(rechained.last(), &event(i)).unwrap();
            rechained.push(e);
        }
        assert!(matches!(verify(&rechained, &cps, &pk), Err(AuditError::Checkpoint { seq: 4, .. })));

        assert!(matches!(verify(&[], &cps, &pk), Err(AuditError::Checkpoint { seq: 4, .. })));
        assert!(matches!(verify(&log[1..], &cps, &pk), Err(AuditError::Broken { seq: 1, .. })));

        let truncated = log[..8].to_vec();
        assert!(matches!(verify(&truncated, &cps, &pk), Err(AuditError::Checkpoint { seq: 9, .. })));

        let other = SigningKey::from_bytes(&[1; 32]);
        let forged = vec![checkpoint(&rechained[4], "t", &other).unwrap()];
        assert!(matches!(verify(&rechained, &forged, &pk), Err(AuditError::Checkpoint { seq: 4, .. })));
    }

    #[test]
    fn a_resumed_verification_checks_only_new_entries_and_meets_every_checkpoint() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let vk = key.verifying_key();
        let log = chain(30);
        let cp = |seq: usize| checkpoint(&log[seq], "2026-11-29T10:00:00Z", &key).unwrap();
        let early = vec![cp(9)];
        let mut v = ChainVerifier::new(&early, &vk);
        log[..20].iter().for_each(|e| v.push(e).unwrap());
        let at = v.position();
        assert_eq!(v.finish().unwrap().checkpoints, 1);
        // Later: a new checkpoint at 25; the first 20 entries are not read again.
        let later = vec![cp(9), cp(25)];
        assert!(at.covers(&later));
        let mut v = ChainVerifier::resume(&later, &vk, at.clone());
        log[20..].iter().for_each(|e| v.push(e).unwrap());
        let st = v.finish().unwrap();
        assert_eq!((st.entries, st.checkpoints, st.unanchored), (30, 2, 4));
        // A checkpoint signed later for an entry before the resume point cannot be judged there.
        assert!(!at.covers(&[cp(9), cp(15)]), "then the verification starts again at 0");
        // A changed new entry is still caught.
        let mut changed = log[20].clone();
        changed["object"] = "something else".into();
        let mut v = ChainVerifier::resume(&later, &vk, at);
        assert!(matches!(v.push(&changed), Err(AuditError::Changed { seq: 20 })));
    }
}
