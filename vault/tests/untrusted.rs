//! Bytes from storage are untrusted: every parser of stored bytes returns an error on garbage and on
//! damaged valid input, and never panics or allocates without bound. The same parsers are fuzz
//! targets (fuzz/fuzz_targets/vault_bytes.rs, `make fuzz`); these run in every `make test`.

use proptest::prelude::*;
use tresor_vault::codec::{self, Codec};
use tresor_vault::config::VaultConfig;
use tresor_vault::crypto::{MasterKey, ObjectType, VaultKeys};
use tresor_vault::index::segment::Segment;
use tresor_vault::keys::{EscrowKey, KeySlot};
use tresor_vault::pack::{self, PackBuilder};
use tresor_vault::{object, snapshot};

fn keys() -> VaultKeys {
    MasterKey::from_bytes([9; 32]).derive()
}

fn valid_pack(k: &VaultKeys) -> Vec<u8> {
    let mut b = PackBuilder::with_salt(k, [3; 32], 1 << 16);
    for i in 0..4u8 {
        let data = vec![i; 300 + usize::from(i) * 100];
        let (c, enc) = codec::encode(&data, 3);
        b.add(k, ObjectType::DataChunk, k.chunk_id(&data), c, &enc, data.len()).unwrap();
    }
    b.finish().1
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn garbage_is_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..4096), n in any::<u64>(), len in 0usize..(16 << 20)) {
        // Random bytes are never a valid pack, object, segment, slot, config or key file: each
        // parser must say so (and never panic).
        let k = keys();
        prop_assert!(pack::read_directory_full(&k, &bytes).is_err());
        prop_assert!(pack::parse_footer(&bytes, bytes.len() as u64).is_err());
        prop_assert!(object::open_bytes(&k, ObjectType::Snapshot, &bytes).is_err());
        prop_assert!(object::open::<snapshot::Manifest>(&k, ObjectType::Snapshot, &bytes).is_err());
        prop_assert!(object::open_named::<snapshot::Manifest>(&k, ObjectType::Receipt, "receipts/x", &bytes).is_err());
        prop_assert!(Segment::from_cbor(&bytes).is_err());
        prop_assert!(KeySlot::from_json(&bytes).is_err());
        prop_assert!(VaultConfig::from_json(&bytes).is_err());
        prop_assert!(EscrowKey::from_file_text(&String::from_utf8_lossy(&bytes)).is_err());
        prop_assert!(codec::decode(Codec::Zstd, &bytes, len).is_err());
        // A raw body "decodes" only to itself, at its own length; a tree only when it is empty.
        prop_assert!(codec::decode(Codec::Raw, &bytes, len).map_or(true, |d| d == bytes && len == bytes.len()));
        prop_assert!(snapshot::decode_tree(&bytes, n).map_or(true, |t| t.is_empty()));
        if let Some(c) = bytes.first().copied().and_then(Codec::from_byte) {
            let _ = codec::decode(c, &bytes[1..], len);
        }
    }

    #[test]
    fn a_damaged_pack_is_an_error(at in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<prop::sample::Index>()) {
        let k = keys();
        let good = valid_pack(&k);
        prop_assert!(pack::read_directory_full(&k, &good).is_ok());
        let mut flipped = good.clone();
        let i = at.index(flipped.len());
        flipped[i] ^= 1 << bit;
        // A flip in a blob is caught when the blob is opened; in the header, directory or footer here.
        if let Ok(dir) = pack::read_directory_full(&k, &flipped) {
            prop_assert_eq!(dir.entries.len(), 4);
        }
        let truncated = &good[..cut.index(good.len())];
        prop_assert!(pack::read_directory_full(&k, truncated).is_err());
    }

    #[test]
    fn a_damaged_object_is_an_error(at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let k = keys();
        let (_, mut bytes) = object::seal(&k, ObjectType::IndexSegment, &serde_json::json!({"v": 1, "x": [1, 2, 3]}));
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        prop_assert!(object::open_bytes(&k, ObjectType::IndexSegment, &bytes).is_err());
    }
}
