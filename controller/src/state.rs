//! Controller files kept outside sled, because losing them would lose trust rather than a cache:
//! the agent registry, the revocation list, people's access tokens, the receipt signing key and the
//! report signing key (with its public half in PEM for auditors).
//! Each is small, held in memory, and rewritten atomically on change (see `fsutil`). Policies
//! live in `policies/` as the TOML an admin applied.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::{read_optional, write_atomic};
use crate::ids::{AgentId, Role};

/// An enrolled agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentEntry {
    /// The name admins use.
    pub name: String,
    /// When it enrolled (Unix seconds).
    pub enrolled_unix: i64,
    /// Expiry of the newest certificate issued to it.
    pub cert_not_after_unix: i64,
}

/// A revoked agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revocation {
    /// Its name at the time.
    pub name: String,
    /// When it was revoked.
    pub revoked_unix: i64,
}

/// A person's access token (only its hash is kept).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessToken {
    /// What the token may do.
    pub role: Role,
    /// Who it is for.
    pub label: String,
    /// Expiry (Unix seconds; 0 = none).
    pub expires_unix: i64,
}

#[derive(Default)]
struct Files {
    agents: BTreeMap<AgentId, AgentEntry>,
    revoked: BTreeMap<AgentId, Revocation>,
    access: BTreeMap<String, AccessToken>,
}

/// The controller's files, loaded at start.
pub struct State {
    dir: PathBuf,
    files: Mutex<Files>,
    signing: SigningKey,
    report_signing: SigningKey,
}

fn load_json<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> Result<T> {
    match read_optional(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))? {
        None => Ok(T::default()),
        Some(b) => serde_json::from_slice(&b).map_err(|e| {
            Error::Config(format!(
                "{} is damaged ({e}); restore it from the backup of the controller's files",
                path.display()
            ))
        }),
    }
}

fn save_json<T: Serialize>(path: &Path, v: &T, mode: u32) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| Error::Config(format!("encoding {}: {e}", path.display())))?;
    write_atomic(path, &bytes, mode).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Hash of a secret token, as stored.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// The id people use for a token: the first 12 hex digits of its hash.
pub fn token_id(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// A fresh random token secret with a readable prefix.
pub fn new_token(prefix: &str) -> String {
    let bytes: [u8; 20] = rand::random();
    format!("{prefix}{}", hex::encode(bytes))
}

/// The key that signs drill reports and audit checkpoints, and its public half in PEM.
pub const REPORT_KEY: &str = "report-signing.key";
/// The public half of [`REPORT_KEY`], the file auditors pin.
pub const REPORT_PUBKEY: &str = "report-signing.pub.pem";

/// Read a hex Ed25519 key, or make and store one (mode 0600) if the file does not exist.
fn load_or_make_key(path: &Path, what: &str) -> Result<SigningKey> {
    match read_optional(path).map_err(|e| Error::io(format!("reading the {what}"), e))? {
        Some(b) => {
            let text = String::from_utf8_lossy(&b);
            let raw = hex::decode(text.trim()).ok().and_then(|v| <[u8; 32]>::try_from(v).ok()).ok_or_else(|| {
                Error::Config(format!("{} is damaged; restore it from the controller backup", path.display()))
            })?;
            Ok(SigningKey::from_bytes(&raw))
        }
        None => {
            let key = SigningKey::from_bytes(&rand::random());
            write_atomic(path, hex::encode(key.to_bytes()).as_bytes(), 0o600)
                .map_err(|e| Error::io(format!("writing the {what}"), e))?;
            Ok(key)
        }
    }
}

impl State {
    /// Load the files from `dir`, making the signing key and the first admin token if missing.
    /// The first admin token is written to `dir/admin.token` (mode 0600).
    ///
    /// # Errors
    /// A file is unreadable or damaged.
    pub fn load(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("policies"))
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let signing = load_or_make_key(&crate::pki::receipt_key_path(dir), "receipt signing key")?;
        let report_signing = load_or_make_key(&dir.join(REPORT_KEY), "report signing key")?;
        // The public half, for auditors to pin (docs/DRILLS.md); written again only if it is
        // missing or does not match the key.
        let pem = tresor_report::sign::public_key_pem(&report_signing.verifying_key());
        let pem_path = dir.join(REPORT_PUBKEY);
        if std::fs::read_to_string(&pem_path).ok().as_deref() != Some(pem.as_str()) {
            write_atomic(&pem_path, pem.as_bytes(), 0o644)
                .map_err(|e| Error::io("writing the report signing public key", e))?;
        }
        let files = Files {
            agents: load_json(&dir.join("agents.json"))?,
            revoked: load_json(&dir.join("revoked.json"))?,
            access: load_json(&dir.join("access.json"))?,
        };
        let state = Self { dir: dir.to_path_buf(), files: Mutex::new(files), signing, report_signing };
        state.bootstrap_admin()?;
        Ok(state)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bootstrap_admin(&self) -> Result<()> {
        let path = self.dir.join("admin.token");
        let has_admin = self.lock().access.values().any(|t| t.role == Role::Admin);
        if has_admin {
            return Ok(());
        }
        let token = new_token("tadm_");
        self.add_access(&token, AccessToken { role: Role::Admin, label: "first admin".into(), expires_unix: 0 })?;
        write_atomic(&path, format!("{token}\n").as_bytes(), 0o600).map_err(|e| Error::io("writing admin.token", e))?;
        tracing::info!(path = %path.display(), "wrote the first admin token");
        Ok(())
    }

    /// Record a person's token.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn add_access(&self, token: &str, entry: AccessToken) -> Result<()> {
        let mut f = self.lock();
        let _ = f.access.insert(token_hash(token), entry);
        save_json(&self.dir.join("access.json"), &f.access, 0o600)
    }

    /// People's tokens: (id = first 12 hex digits of the hash, entry).
    pub fn access_tokens(&self) -> Vec<(String, AccessToken)> {
        self.lock().access.iter().map(|(h, t)| (token_id(h), t.clone())).collect()
    }

    /// Withdraw the person's token whose hash starts with `id`. The last admin token cannot be
    /// withdrawn (nobody could administer the controller any more).
    ///
    /// # Errors
    /// No or several matches, the last admin token, or the file cannot be written.
    pub fn revoke_access(&self, id: &str, now_unix: i64) -> Result<(String, AccessToken)> {
        let mut f = self.lock();
        let id = id.trim().to_lowercase();
        let matches: Vec<String> = f.access.keys().filter(|h| !id.is_empty() && h.starts_with(&id)).cloned().collect();
        let hash = match matches.as_slice() {
            [one] => one.clone(),
            [] => return Err(Error::NotFound(format!("no token with id {id} (see tresorctl token list)"))),
            _ => return Err(Error::InvalidArgument(format!("token id {id} is ambiguous; give more digits"))),
        };
        let entry = f.access[&hash].clone();
        let live_admins = f
            .access
            .values()
            .filter(|t| t.role == Role::Admin && (t.expires_unix == 0 || t.expires_unix > now_unix))
            .count();
        if entry.role == Role::Admin && live_admins <= 1 {
            return Err(Error::FailedPrecondition(
                "this is the last admin token; create another admin token first".into(),
            ));
        }
        let _ = f.access.remove(&hash);
        save_json(&self.dir.join("access.json"), &f.access, 0o600)?;
        Ok((token_id(&hash), entry))
    }

    /// The role a token grants, if it is known and not expired.
    pub fn role_of(&self, token: &str, now_unix: i64) -> Option<Role> {
        let f = self.lock();
        let t = f.access.get(&token_hash(token))?;
        (t.expires_unix == 0 || t.expires_unix > now_unix).then_some(t.role)
    }

    /// Add or update an agent.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn put_agent(&self, id: &AgentId, entry: AgentEntry) -> Result<()> {
        let mut f = self.lock();
        let _ = f.agents.insert(id.clone(), entry);
        save_json(&self.dir.join("agents.json"), &f.agents, 0o644)
    }

    /// All enrolled agents.
    pub fn agents(&self) -> BTreeMap<AgentId, AgentEntry> {
        self.lock().agents.clone()
    }

    /// An agent by id or name; of several agents with one name (re-enrolled after a revocation)
    /// the one not revoked.
    pub fn find_agent(&self, key: &str) -> Option<(AgentId, AgentEntry)> {
        let f = self.lock();
        let mut matches = f.agents.iter().filter(|(id, a)| id.as_str() == key || a.name == key);
        let all: Vec<_> = matches.by_ref().collect();
        all.iter()
            .find(|(id, _)| !f.revoked.contains_key(*id))
            .or(all.first())
            .map(|(id, a)| ((*id).clone(), (*a).clone()))
    }

    /// Revoke an agent; it is refused from now on, also after a catalog rebuild.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn revoke(&self, id: &AgentId, name: &str, now_unix: i64) -> Result<()> {
        let mut f = self.lock();
        let _ = f.revoked.insert(id.clone(), Revocation { name: name.to_string(), revoked_unix: now_unix });
        save_json(&self.dir.join("revoked.json"), &f.revoked, 0o644)
    }

    /// Whether an agent is revoked.
    pub fn is_revoked(&self, id: &AgentId) -> bool {
        self.lock().revoked.contains_key(id)
    }

    /// Sign bytes with the receipt key.
    pub fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        self.signing.sign(bytes).to_bytes().to_vec()
    }

    /// Verify a receipt signature made by this controller.
    pub fn verify(&self, bytes: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else { return false };
        self.verifying_key().verify(bytes, &sig).is_ok()
    }

    /// The public half of the receipt key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Sign a JSON document (a drill report, an audit checkpoint) with the report key.
    ///
    /// # Errors
    /// The document is not a JSON object or has no canonical form.
    pub fn sign_document(&self, doc: &mut serde_json::Value) -> Result<()> {
        tresor_report::sign::sign(doc, &self.report_signing).map_err(|e| Error::Config(format!("signing: {e}")))
    }

    /// A signed checkpoint of the audit log at `head` (`tresor_report::audit::checkpoint`).
    ///
    /// # Errors
    /// `head` is not an audit entry.
    pub fn sign_checkpoint(&self, head: &serde_json::Value, time: &str) -> Result<serde_json::Value> {
        tresor_report::audit::checkpoint(head, time, &self.report_signing)
            .map_err(|e| Error::Config(format!("signing the audit checkpoint: {e}")))
    }

    /// The public half of the report key.
    pub fn report_key(&self) -> VerifyingKey {
        self.report_signing.verifying_key()
    }

    /// Where applied policies are kept.
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.join("policies")
    }

    /// The file of the applied policy `name`.
    pub fn policy_path(&self, name: &str) -> PathBuf {
        self.policy_dir().join(format!("{name}.toml"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_survive_a_restart_and_the_first_admin_token_works() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::load(dir.path()).unwrap();
        let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
        assert_eq!(s.role_of(admin.trim(), 0), Some(Role::Admin));
        assert_eq!(s.role_of("tadm_wrong", 0), None);
        let id = AgentId::new("a-01".into());
        s.put_agent(&id, AgentEntry { name: "db-01".into(), enrolled_unix: 1, cert_not_after_unix: 2 }).unwrap();
        s.revoke(&id, "db-01", 3).unwrap();
        let sig = s.sign(b"x");
        drop(s);
        let s = State::load(dir.path()).unwrap();
        assert!(s.is_revoked(&id));
        assert_eq!(s.find_agent("db-01").unwrap().0, id);
        assert!(s.verify(b"x", &sig), "the signing key is kept");
        assert_eq!(std::fs::read_to_string(dir.path().join("admin.token")).unwrap(), admin, "no second admin token");
    }

    #[test]
    fn the_report_key_is_kept_and_its_pem_verifies_what_it_signs() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::load(dir.path()).unwrap();
        let mut doc = serde_json::json!({"type": "tresor.drill-report.v1", "verdict": "PASS"});
        s.sign_document(&mut doc).unwrap();
        let first = s.report_key();
        assert_ne!(first, s.verifying_key(), "reports and receipts use different keys");
        drop(s);
        let s = State::load(dir.path()).unwrap();
        assert_eq!(s.report_key(), first, "the report key is kept across restarts");
        let pem = std::fs::read_to_string(dir.path().join(REPORT_PUBKEY)).unwrap();
        let pinned = tresor_report::sign::public_key_from_pem(&pem).unwrap();
        tresor_report::sign::verify(&doc, &pinned).unwrap();
        std::fs::write(dir.path().join(REPORT_KEY), "not hex").unwrap();
        let e = State::load(dir.path()).err().expect("a damaged key is refused").to_string();
        assert!(e.contains("report-signing.key is damaged"), "{e}");
    }
}
