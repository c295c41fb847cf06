//! Typed 32-byte identifiers. Each kind of object has its own type so a pack id can never be passed
//! where a chunk id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Error for an id string that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("invalid {kind} id {text:?}: expected 64 hex digits")]
pub struct ParseIdError {
    kind: &'static str,
    text: String,
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Kind name used in messages.
            pub const KIND: &'static str = $kind;

            /// A fresh random id.
            pub fn random() -> Self {
                let mut bytes = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
                Self(bytes)
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lower-case hex, 64 digits.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex digits, for messages.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }

            /// From a slice that must be exactly 32 bytes long.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                <[u8; 32]>::try_from(bytes).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(text, &mut bytes).map_err(|_| ParseIdError {
                    kind: $kind,
                    text: text.chars().take(80).collect(),
                })?;
                Ok(Self(bytes))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let text = String::deserialize(d)?;
                    text.parse().map_err(serde::de::Error::custom)
                } else {
                    let bytes = serde_bytes_compat::ByteBuf::deserialize(d)?;
                    Self::from_slice(&bytes.0).ok_or_else(|| {
                        serde::de::Error::custom(concat!($kind, " id must be 32 bytes"))
                    })
                }
            }
        }
    };
}

define_id!(
    /// Keyed BLAKE3 of a chunk's plaintext.
    ChunkId,
    "chunk"
);
impl ChunkId {
    /// Its first 8 bytes as a number: what a kept pack directory holds per position, enough to
    /// tell its chunks apart (check, and the writers' reuse check).
    pub fn prefix(&self) -> u64 {
        u64::from_le_bytes(self.0[..8].try_into().unwrap_or_default())
    }
}

define_id!(
    /// Unkeyed BLAKE3 of a pack's stored bytes; also its object name.
    PackId,
    "pack"
);
define_id!(
    /// Unkeyed BLAKE3 of a sealed object's stored bytes (index segment, snapshot manifest).
    ObjectId,
    "object"
);
define_id!(
    /// Random id of a backup writer session.
    SessionId,
    "session"
);
define_id!(
    /// Random id of a vault, fixed at init.
    VaultId,
    "vault"
);

/// A snapshot is named by the id of its sealed manifest object.
pub type SnapshotId = ObjectId;
/// An index segment is named by the id of its sealed object.
pub type SegmentId = ObjectId;

/// Minimal byte-buffer deserialisation so ids read as CBOR byte strings without an extra crate.
mod serde_bytes_compat {
    use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
    use std::fmt;

    pub struct ByteBuf(pub Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = seq.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(ByteBuf(out))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
}
