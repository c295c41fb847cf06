//! Everything read back from a vault: packs, sealed objects, and the plaintext decoders behind
//! them (manifests, trees, index segments), key slots, the vault config, escrow key files, codecs,
//! and the S3 answers about versions and Object Lock.
//! Errors are expected; a panic, an abort or an unbounded allocation is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tresor_vault::backend::s3::xml;
use tresor_vault::codec::{self, Codec};
use tresor_vault::config::VaultConfig;
use tresor_vault::crypto::{MasterKey, ObjectType};
use tresor_vault::index::segment::Segment;
use tresor_vault::keys::{EscrowKey, KeySlot};
use tresor_vault::{object, pack, snapshot};

fuzz_target!(|bytes: &[u8]| {
    let k = MasterKey::from_bytes([9; 32]).derive();
    // The first bytes steer the sizes a caller would pass in.
    let n = bytes.iter().take(8).fold(0u64, |a, b| (a << 8) | u64::from(*b));
    // Up to 1 MiB: a larger expected length costs its allocation on every run and finds nothing new.
    let len = (n as usize) % (1 << 20);
    let _ = pack::read_directory_full(&k, bytes);
    let _ = pack::parse_footer(bytes, bytes.len() as u64);
    for kind in [ObjectType::Snapshot, ObjectType::IndexSegment, ObjectType::Document] {
        let _ = object::open_bytes(&k, kind, bytes);
        let _ = object::open_named::<ciborium::Value>(&k, kind, "reports/x.json", bytes);
    }
    let _ = ciborium::from_reader::<snapshot::Manifest, _>(bytes);
    let _ = Segment::from_cbor(bytes);
    let _ = snapshot::decode_tree(bytes, n);
    let _ = KeySlot::from_json(bytes);
    let _ = VaultConfig::from_json(bytes);
    let _ = EscrowKey::from_file_text(&String::from_utf8_lossy(bytes));
    let _ = codec::decode(Codec::Zstd, bytes, len);
    let _ = xml::versioning_status(bytes);
    let _ = xml::object_lock(bytes);
    let _ = xml::version_page(bytes);
    if let Some(c) = bytes.first().copied().and_then(Codec::from_byte) {
        let _ = codec::decode(c, &bytes[1..], len);
    }
});
