//! Ed25519 signatures over a JSON document's canonical form (RFC 8785) without its `signature`
//! member; the signature then goes into that member:
//! `"signature": {"alg": "Ed25519", "key_id": "<16 hex>", "value": "<base64 of 64 bytes>"}`.
//! Anyone holding the public key (PEM, SubjectPublicKeyInfo) verifies a document offline; any change
//! to any member, or a signature by another key, is detected.

use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePublicKey};
use ed25519_dalek::{Signer, Verifier};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::{Value, json};

use crate::jcs;

/// The member that carries the signature.
pub const SIGNATURE_FIELD: &str = "signature";

/// Why a document does not verify (or cannot be signed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    /// Only JSON objects are signed.
    #[error("the document is not a JSON object")]
    NotAnObject,
    /// No `signature` member.
    #[error("the document carries no signature")]
    Unsigned,
    /// The `signature` member is not what this format writes.
    #[error("the signature member is malformed: {0}")]
    Malformed(String),
    /// Signed by another key than the pinned one.
    #[error("signed by key {signed_by}, not by the pinned key {pinned}")]
    WrongKey {
        /// The key id in the document.
        signed_by: String,
        /// The pinned key's id.
        pinned: String,
    },
    /// The bytes changed after signing.
    #[error("the signature does not match: the document was changed after it was signed")]
    Mismatch,
    /// No canonical form.
    #[error("{0}")]
    Canonical(#[from] jcs::JcsError),
    /// A key file could not be read.
    #[error("not an Ed25519 public key in PEM: {0}")]
    Key(String),
}

/// A short, stable name for a public key: the first 16 hex digits of BLAKE3 over its 32 bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&blake3::hash(key.as_bytes()).as_bytes()[..8])
}

/// The bytes that are signed: the canonical form of `doc` without its signature member.
pub fn signed_bytes(doc: &Value) -> Result<Vec<u8>, SignError> {
    let mut unsigned = doc.as_object().ok_or(SignError::NotAnObject)?.clone();
    unsigned.remove(SIGNATURE_FIELD);
    Ok(jcs::canonical(&Value::Object(unsigned))?)
}

/// Sign `doc` in place (a previous signature is replaced).
pub fn sign(doc: &mut Value, key: &SigningKey) -> Result<(), SignError> {
    let bytes = signed_bytes(doc)?;
    let sig = key.sign(&bytes);
    let member = json!({
        "alg": "Ed25519",
        "key_id": key_id(&key.verifying_key()),
        "value": base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
    });
    doc.as_object_mut().ok_or(SignError::NotAnObject)?.insert(SIGNATURE_FIELD.into(), member);
    Ok(())
}

/// Verify `doc` against the pinned key.
pub fn verify(doc: &Value, pinned: &VerifyingKey) -> Result<(), SignError> {
    let member = doc.as_object().ok_or(SignError::NotAnObject)?.get(SIGNATURE_FIELD).ok_or(SignError::Unsigned)?;
    let field =
        |name: &str| member.get(name).and_then(Value::as_str).ok_or_else(|| SignError::Malformed(format!("no {name}")));
    if field("alg")? != "Ed25519" {
        return Err(SignError::Malformed(format!("algorithm {} (only Ed25519)", field("alg")?)));
    }
    let (signed_by, pinned_id) = (field("key_id")?.to_string(), key_id(pinned));
    if signed_by != pinned_id {
        return Err(SignError::WrongKey { signed_by, pinned: pinned_id });
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(field("value")?)
        .map_err(|e| SignError::Malformed(format!("value is not base64: {e}")))?;
    let sig =
        ed25519_dalek::Signature::from_slice(&raw).map_err(|_| SignError::Malformed("value is not 64 bytes".into()))?;
    pinned.verify(&signed_bytes(doc)?, &sig).map_err(|_| SignError::Mismatch)
}

/// The public key as PEM (SubjectPublicKeyInfo), the file auditors pin.
pub fn public_key_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF).unwrap_or_default()
}

/// Read a public key written by [`public_key_pem`] (or `openssl pkey -pubout`).
pub fn public_key_from_pem(text: &str) -> Result<VerifyingKey, SignError> {
    VerifyingKey::from_public_key_pem(text.trim()).map_err(|e| SignError::Key(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn report() -> Value {
        json!({"type": "tresor.drill-report.v1", "drill": "d-1", "verdict": "PASS", "rto_s": 12.5,
               "checks": [{"name": "structure", "result": "PASS", "chunks": 420}], "source": "gpu-01/models"})
    }

    #[test]
    fn a_signed_document_verifies_after_reformatting_and_key_round_trip() {
        let mut doc = report();
        sign(&mut doc, &key(1)).unwrap();
        let pem = public_key_pem(&key(1).verifying_key());
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
        let pinned = public_key_from_pem(&pem).unwrap();
        let reread: Value = serde_json::from_str(&serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        verify(&reread, &pinned).unwrap();
    }

    #[test]
    fn every_kind_of_tampering_is_detected() {
        let mut doc = report();
        sign(&mut doc, &key(1)).unwrap();
        let pinned = key(1).verifying_key();
        let mut changed = doc.clone();
        changed["verdict"] = json!("FAIL");
        assert_eq!(verify(&changed, &pinned), Err(SignError::Mismatch));
        let mut removed = doc.clone();
        removed["checks"][0].as_object_mut().unwrap().remove("chunks");
        assert_eq!(verify(&removed, &pinned), Err(SignError::Mismatch));
        let mut added = doc.clone();
        added["note"] = json!("all fine");
        assert_eq!(verify(&added, &pinned), Err(SignError::Mismatch));
        let mut unsigned = doc.clone();
        unsigned.as_object_mut().unwrap().remove("signature");
        assert_eq!(verify(&unsigned, &pinned), Err(SignError::Unsigned));
        let mut resigned = changed.clone();
        sign(&mut resigned, &key(2)).unwrap();
        assert!(matches!(verify(&resigned, &pinned), Err(SignError::WrongKey { .. })));
        // A forged key id over another key's signature still fails.
        resigned["signature"]["key_id"] = json!(key_id(&pinned));
        assert_eq!(verify(&resigned, &pinned), Err(SignError::Mismatch));
        assert!(matches!(public_key_from_pem("not a key"), Err(SignError::Key(_))));
    }

    proptest! {
        #[test]
        fn any_changed_string_is_detected(s in "\\PC{0,20}", t in "\\PC{0,20}") {
            prop_assume!(s != t);
            let mut doc = json!({"a": s, "b": [1, 2.5, null]});
            sign(&mut doc, &key(3)).unwrap();
            let mut changed = doc.clone();
            changed["a"] = json!(t);
            prop_assert_eq!(verify(&changed, &key(3).verifying_key()), Err(SignError::Mismatch));
        }
    }
}
