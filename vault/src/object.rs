//! Sealed objects: index segments, snapshot manifests, session markers, receipts, documents and
//! the GC mark.
//!
//! ```text
//! "TRSROB01" | type u8 | salt[32] | AES-256-GCM(object key(salt), nonce = 0, aad = ver|type|0|salt, codec u8 | body)
//! "TRSROB02" | type u8 | salt[32] | AES-256-GCM(..., aad = ver|type|1|salt|len u32 LE|storage name, codec u8 | body)
//! ```
//! The body is CBOR; readers ignore map keys they do not know. Index segments and snapshots are
//! named by the BLAKE3 of their stored bytes, so a changed object no longer matches its name.
//! Objects stored under a chosen name (receipts, documents, session markers, the GC mark) are
//! written as `TRSROB02`, bound to that name: one moved or replayed under another name does not
//! open. `TRSROB01` objects of those kinds, written before, still open wherever they lie.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{self, Codec};
use crate::crypto::{self, FORMAT_VERSION, ObjectType, VaultKeys};
use crate::ids::ObjectId;

/// First bytes of a sealed object.
pub const OBJECT_MAGIC: &[u8; 8] = b"TRSROB01";
/// First bytes of a sealed object bound to its storage name.
pub const NAMED_MAGIC: &[u8; 8] = b"TRSROB02";
/// The longest storage name an object is bound to.
const MAX_NAME: usize = 1024;
const HEADER_LEN: usize = 8 + 1 + 32;
/// Upper bound on a decoded object body (a crafted object cannot make us allocate more).
pub const MAX_BODY: usize = 512 << 20;

/// Errors opening a sealed object.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// Framing is wrong.
    #[error("object is malformed: {0}")]
    Malformed(String),
    /// The header names another type than the one expected where it was found.
    #[error("object has type {found}, expected {expected:?} (misplaced or crafted object)")]
    WrongType {
        /// Expected type.
        expected: ObjectType,
        /// Type byte found.
        found: u8,
    },
    /// Decryption failed.
    #[error("object does not decrypt: {0}")]
    Auth(#[from] crypto::AuthError),
    /// Sealed under a key epoch the opener does not hold.
    #[error("object {0}")]
    Epoch(#[from] crypto::EpochMissing),
    /// Body is not what the type requires.
    #[error("object body does not decode: {0}")]
    Body(String),
}

fn object_aad(kind: ObjectType, salt: &[u8]) -> Vec<u8> {
    let mut aad = vec![FORMAT_VERSION, kind as u8, 0];
    aad.extend_from_slice(salt);
    aad
}

fn named_aad(kind: ObjectType, salt: &[u8], name: &str) -> Vec<u8> {
    let mut aad = vec![FORMAT_VERSION, kind as u8, 1];
    aad.extend_from_slice(salt);
    aad.extend_from_slice(&(name.len() as u32).to_le_bytes());
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// Seal `body` as an object of `kind`. Returns the stored bytes and their content id.
pub fn seal<T: Serialize>(keys: &VaultKeys, kind: ObjectType, body: &T) -> (ObjectId, Vec<u8>) {
    let mut cbor = Vec::new();
    // Serialising plain data structs into a Vec cannot fail.
    let _ = ciborium::into_writer(body, &mut cbor);
    let salt = keys.fresh_salt();
    seal_bytes_with_salt(keys, kind, &cbor, salt)
}

/// Seal raw body bytes with a given salt (golden vectors).
pub fn seal_bytes_with_salt(keys: &VaultKeys, kind: ObjectType, cbor: &[u8], salt: [u8; 32]) -> (ObjectId, Vec<u8>) {
    let out = seal_framed(keys, kind, cbor, salt, OBJECT_MAGIC, &object_aad(kind, &salt));
    (ObjectId(*blake3::hash(&out).as_bytes()), out)
}

/// Seal `body` as an object of `kind` bound to its storage `name` (`TRSROB02`).
pub fn seal_named<T: Serialize>(keys: &VaultKeys, kind: ObjectType, name: &str, body: &T) -> Vec<u8> {
    let mut cbor = Vec::new();
    let _ = ciborium::into_writer(body, &mut cbor);
    let salt = keys.fresh_salt();
    seal_named_bytes_with_salt(keys, kind, name, &cbor, salt)
}

/// Seal raw body bytes bound to `name` with a given salt (golden vectors).
pub fn seal_named_bytes_with_salt(
    keys: &VaultKeys,
    kind: ObjectType,
    name: &str,
    cbor: &[u8],
    salt: [u8; 32],
) -> Vec<u8> {
    seal_framed(keys, kind, cbor, salt, NAMED_MAGIC, &named_aad(kind, &salt, name))
}

fn seal_framed(
    keys: &VaultKeys,
    kind: ObjectType,
    cbor: &[u8],
    salt: [u8; 32],
    magic: &[u8; 8],
    aad: &[u8],
) -> Vec<u8> {
    let (codec, encoded) = codec::encode(cbor, 3);
    let mut plain = Vec::with_capacity(encoded.len() + 1);
    plain.push(codec as u8);
    plain.extend_from_slice(&encoded);
    let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + crypto::TAG_LEN);
    out.extend_from_slice(magic);
    out.push(kind as u8);
    out.extend_from_slice(&salt);
    // Salts come from `fresh_salt` (the current epoch) or golden vectors of epoch 1.
    let key = keys.object_key(&salt).unwrap_or_else(|e| unreachable!("new object under an epoch not held: {e}"));
    key.seal_append(&crypto::counter_nonce(0), aad, &plain, &mut out);
    out
}

/// Open an object expected to be of `kind` and decode its body.
pub fn open<T: DeserializeOwned>(keys: &VaultKeys, kind: ObjectType, stored: &[u8]) -> Result<T, ObjectError> {
    let body = open_bytes(keys, kind, stored)?;
    ciborium::from_reader(&body[..]).map_err(|e| ObjectError::Body(e.to_string()))
}

/// Open an object of `kind` read from storage name `name`: a `TRSROB02` object must be bound to
/// that name; a `TRSROB01` one (written before objects were bound) opens as it is.
pub fn open_named<T: DeserializeOwned>(
    keys: &VaultKeys,
    kind: ObjectType,
    name: &str,
    stored: &[u8],
) -> Result<T, ObjectError> {
    let body = open_inner(keys, kind, stored, Some(name))?;
    ciborium::from_reader(&body[..]).map_err(|e| ObjectError::Body(e.to_string()))
}

/// Open an object and return its CBOR body bytes.
pub fn open_bytes(keys: &VaultKeys, kind: ObjectType, stored: &[u8]) -> Result<Vec<u8>, ObjectError> {
    open_inner(keys, kind, stored, None)
}

fn open_inner(keys: &VaultKeys, kind: ObjectType, stored: &[u8], name: Option<&str>) -> Result<Vec<u8>, ObjectError> {
    if stored.len() < HEADER_LEN + crypto::TAG_LEN + 1 {
        return Err(ObjectError::Malformed("object magic missing or object truncated".into()));
    }
    let salt = &stored[9..HEADER_LEN];
    let aad = match (&stored[..8], name) {
        (m, _) if m == OBJECT_MAGIC => object_aad(kind, salt),
        (m, Some(name)) if m == NAMED_MAGIC => {
            if name.len() > MAX_NAME {
                return Err(ObjectError::Malformed(format!("storage name of {} bytes", name.len())));
            }
            named_aad(kind, salt, name)
        }
        (m, None) if m == NAMED_MAGIC => {
            return Err(ObjectError::Malformed("a name-bound object where none is expected".into()));
        }
        _ => return Err(ObjectError::Malformed("object magic missing or object truncated".into())),
    };
    if stored[8] != kind as u8 {
        return Err(ObjectError::WrongType { expected: kind, found: stored[8] });
    }
    let salt_arr: [u8; 32] = salt.try_into().unwrap_or_default();
    let plain = keys.object_key(&salt_arr)?.open(&crypto::counter_nonce(0), &aad, &stored[HEADER_LEN..])?;
    let (&tag, encoded) = plain.split_first().ok_or_else(|| ObjectError::Malformed("empty body".into()))?;
    let codec = Codec::from_byte(tag).ok_or_else(|| ObjectError::Malformed(format!("unknown codec {tag}")))?;
    match codec {
        Codec::Raw => Ok(encoded.to_vec()),
        Codec::Zstd => {
            let size = zstd::zstd_safe::get_frame_content_size(encoded)
                .ok()
                .flatten()
                .ok_or_else(|| ObjectError::Malformed("zstd frame without content size".into()))?;
            if size as usize > MAX_BODY {
                return Err(ObjectError::Malformed(format!("body of {size} bytes exceeds the limit")));
            }
            codec::decode(codec, encoded, size as usize).map_err(|e| ObjectError::Malformed(e.to_string()))
        }
        // Sealed objects never carry tensors; a float body is damage or a forgery.
        Codec::Float => Err(ObjectError::Malformed("float codec in a sealed object".into())),
    }
}

/// The id a stored object must have (its name), checked on every read.
pub fn content_id(stored: &[u8]) -> ObjectId {
    ObjectId(*blake3::hash(stored).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Body {
        a: u32,
        b: String,
    }

    #[derive(serde::Deserialize, PartialEq, Debug)]
    struct Older {
        a: u32,
    }

    #[test]
    fn round_trip_wrong_type_and_unknown_fields() {
        let k = MasterKey::from_bytes([1; 32]).derive();
        let body = Body { a: 7, b: "x".repeat(500) };
        let (id, bytes) = seal(&k, ObjectType::Snapshot, &body);
        assert_eq!(id, content_id(&bytes));
        assert_eq!(open::<Body>(&k, ObjectType::Snapshot, &bytes).unwrap(), body);
        assert_eq!(open::<Older>(&k, ObjectType::Snapshot, &bytes).unwrap(), Older { a: 7 });
        assert!(matches!(open::<Body>(&k, ObjectType::IndexSegment, &bytes), Err(ObjectError::WrongType { .. })));
        let mut crafted = bytes.clone();
        crafted[8] = ObjectType::IndexSegment as u8;
        assert!(matches!(open::<Body>(&k, ObjectType::IndexSegment, &crafted), Err(ObjectError::Auth(_))));
    }

    #[test]
    fn a_named_object_opens_only_under_its_name_and_old_ones_still_open() {
        let k = MasterKey::from_bytes([1; 32]).derive();
        let body = Body { a: 9, b: "receipt".into() };
        let bytes = seal_named(&k, ObjectType::Receipt, "receipts/aa", &body);
        assert_eq!(&bytes[..8], NAMED_MAGIC);
        assert_eq!(open_named::<Body>(&k, ObjectType::Receipt, "receipts/aa", &bytes).unwrap(), body);
        assert!(
            matches!(open_named::<Body>(&k, ObjectType::Receipt, "receipts/bb", &bytes), Err(ObjectError::Auth(_))),
            "moved to another name, it does not open"
        );
        assert!(matches!(open::<Body>(&k, ObjectType::Receipt, &bytes), Err(ObjectError::Malformed(_))));
        // Relabelled as an unbound object it does not open either.
        let mut relabelled = bytes.clone();
        relabelled[..8].copy_from_slice(OBJECT_MAGIC);
        assert!(matches!(
            open_named::<Body>(&k, ObjectType::Receipt, "receipts/aa", &relabelled),
            Err(ObjectError::Auth(_))
        ));
        // An object written before names were bound opens under any name.
        let (_, old) = seal(&k, ObjectType::Receipt, &body);
        assert_eq!(open_named::<Body>(&k, ObjectType::Receipt, "receipts/zz", &old).unwrap(), body);
    }
}
