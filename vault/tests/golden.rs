//! Golden vectors: a fixed master key and fixed inputs pin chunk boundaries, chunk ids, encrypted
//! pack bytes and sealed objects. The same values are printed in docs/FORMAT.md. A failure here is
//! a format change: bump the format version and write a decision note; never just update them.

use tresor_vault::chunker::Chunker;
use tresor_vault::codec::{self, Codec};
use tresor_vault::config::ChunkerParams;
use tresor_vault::crypto::{MasterKey, ObjectType};
use tresor_vault::object;
use tresor_vault::pack::{self, PackBuilder};

/// The golden master key: bytes 0x00..0x1f.
fn master() -> MasterKey {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = i as u8;
    }
    MasterKey::from_bytes(k)
}

/// xorshift64* stream seeded with 0x7e50 (documented in FORMAT.md; no library RNG, so the input
/// never changes with a dependency update).
fn golden_input(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x7e50;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn print(label: &str, value: &str) {
    if std::env::var_os("GOLDEN_PRINT").is_some() {
        println!("GOLDEN {label}: {value}");
    }
}

#[test]
fn key_derivation() {
    let keys = master().derive();
    let id = keys.chunk_id(b"tresor");
    print("chunk_id(\"tresor\")", &id.to_hex());
    print("chunker_seed", &format!("{:#018x}", keys.chunker_seed));
    assert_eq!(id.to_hex(), "73f3c749f6caca9a294f4fa28794e8f13744ffe7e7d074cab96e5c47375f4151");
    assert_eq!(format!("{:#018x}", keys.chunker_seed), "0xe537feb5c5709e66");
}

#[test]
fn chunk_boundaries_and_ids() {
    let keys = master().derive();
    let data = golden_input(16 << 20);
    let mut c = Chunker::new(&data[..], &ChunkerParams::default(), keys.chunker_seed);
    let mut got = Vec::new();
    while let Some(ch) = c.next_chunk().unwrap() {
        got.push(format!("{} {}", ch.len(), &keys.chunk_id(ch).to_hex()[..16]));
    }
    print("chunks", &got.join(", "));
    assert_eq!(
        got.join(", "),
        "2755692 78cc12ca18025f0b, 2548268 dbb9f684defeba34, 1099201 6116a8ad1d5e7756, 2497551 e22517467f0865c4, 1227684 a4253385f5516d77, 2010178 21e923184480d64c, 1088163 3904a67e2b5e14b6, 1691939 9540218b83fe21f0, 1268615 287b286493aa9b74, 589925 26a1250f502b3caf"
    );
}

#[test]
fn pack_bytes() {
    let keys = master().derive();
    let raw = golden_input(1000);
    let text = b"tresor golden text ".repeat(100);
    let mut b = PackBuilder::with_salt(&keys, [0xa5; 32], 4096);
    for data in [&raw[..], &text[..]] {
        let (codec, enc) = codec::encode(data, 3);
        b.add(&keys, ObjectType::DataChunk, keys.chunk_id(data), codec, &enc, data.len()).unwrap();
    }
    let (id, bytes, entries) = b.finish();
    assert_eq!(entries[0].codec, Codec::Raw);
    assert_eq!(entries[1].codec, Codec::Zstd);
    print("pack id", &id.to_hex());
    print("pack len", &bytes.len().to_string());
    print("pack first blob (16 bytes)", &hex::encode(&bytes[pack::HEADER_LEN..pack::HEADER_LEN + 16]));
    assert_eq!(bytes.len().to_string(), "1225");
    assert_eq!(hex::encode(&bytes[pack::HEADER_LEN..pack::HEADER_LEN + 16]), "6080da074938cfe0db3bdfe165f28cd7");
    assert_eq!(id.to_hex(), "7637c913f177d3a659f1b98fcf9bd5cae41d198fdbc69f6c1c0b40d1be40f8a2");
}

#[test]
fn sealed_object() {
    let keys = master().derive();
    let (id, bytes) = object::seal_bytes_with_salt(&keys, ObjectType::Snapshot, b"\xa1\x61\x76\x01", [0x5a; 32]);
    print("object id", &id.to_hex());
    print("object bytes", &hex::encode(&bytes));
    assert_eq!(
        hex::encode(&bytes),
        "545253524f423031055a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a8c1e91a025142dc47c7346db07c6cded34c032de83"
    );
    assert_eq!(id.to_hex(), "ca55ef7c8d86ee468d414d7319bd23cf313d1ce5f46fa15306f257e0a037db75");
}

#[test]
fn float_codec() {
    let enc = codec::encode_float(&[1, 2, 3, 4, 5, 6, 7, 8, 9], 2);
    print("float codec", &hex::encode(&enc));
    assert_eq!(hex::encode(&enc), "0200040000000103050700040000000204060809");
    assert_eq!(codec::decode(Codec::Float, &enc, 9).unwrap(), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
}

#[test]
fn document_object() {
    // A signed document (type 9) is a sealed object whose CBOR body is one byte string: here
    // `tresor` (CBOR `46 74 72 65 73 6f 72`).
    let keys = master().derive();
    let (id, bytes) =
        object::seal_bytes_with_salt(&keys, ObjectType::Document, b"\x46\x74\x72\x65\x73\x6f\x72", [0x5a; 32]);
    print("document id", &id.to_hex());
    print("document bytes", &hex::encode(&bytes));
    assert_eq!(
        hex::encode(&bytes),
        "545253524f423031095a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a8cf984a44180eaaaff6f5cdcbd358a04c7f0a1b9b7ad41c3"
    );
    assert_eq!(id.to_hex(), "cf9c3a0fe89244efd3ff3cbdf77a16d39e32873c70481f4da81f3eb380f6bd05");
}

#[test]
fn named_document_object() {
    // The same body stored at `reports/golden.json` as a name-bound object (`TRSROB02`): the AAD
    // is `01 09 01 || salt || len u32 LE || name`.
    let keys = master().derive();
    let name = "reports/golden.json";
    let bytes = object::seal_named_bytes_with_salt(
        &keys,
        ObjectType::Document,
        name,
        b"\x46\x74\x72\x65\x73\x6f\x72",
        [0x5a; 32],
    );
    print("named document bytes", &hex::encode(&bytes));
    assert_eq!(
        hex::encode(&bytes),
        "545253524f423032095a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a8cf984a44180eaaa4003419016ce6b638f7985251e409bf3"
    );
    let body: serde_bytes::ByteBuf = object::open_named(&keys, ObjectType::Document, name, &bytes).unwrap();
    assert_eq!(body.as_slice(), b"tresor");
}

/// The second golden master key, of key epoch 2.
fn second_master() -> MasterKey {
    MasterKey::from_bytes([0x42; 32])
}

#[test]
fn epoch_object() {
    // An object sealed under key epoch 2: its salt is `TRSREPCH || 02 00 00 00 || 20 × 5a`, and
    // its key derives from epoch 2's master key. Chunk ids stay those of epoch 1.
    use tresor_vault::crypto::{EPOCH_SALT_TAG, VaultKeys};
    let keys = VaultKeys::with_epochs(&master(), &[(2, second_master())]);
    let mut salt = [0x5a; 32];
    salt[..8].copy_from_slice(&EPOCH_SALT_TAG);
    salt[8..12].copy_from_slice(&2u32.to_le_bytes());
    let (_, bytes) = object::seal_bytes_with_salt(&keys, ObjectType::Snapshot, b"\xa1\x61\x76\x01", salt);
    print("epoch 2 object bytes", &hex::encode(&bytes));
    assert_eq!(hex::encode(&bytes), EPOCH_OBJECT);
    assert_eq!(keys.chunk_id(b"tresor").to_hex(), master().derive().chunk_id(b"tresor").to_hex());
    let err = object::open_bytes(&master().derive(), ObjectType::Snapshot, &bytes).unwrap_err();
    assert!(err.to_string().contains("key epoch 2"), "{err}");
    assert_eq!(object::open_bytes(&keys, ObjectType::Snapshot, &bytes).unwrap(), b"\xa1\x61\x76\x01");
}

const EPOCH_OBJECT: &str = "545253524f423031055452535245504348020000005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a974c83daa1ac99f9a6a62accae2ca4c4d0236c43c4";

fn golden_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("golden")
}

const GOLDEN_VAULT_ID: &str = "7e57000000000000000000000000000000000000000000000000000000007e57";

/// Writes `tests/golden/slot-v2.json` and `epoch-0000000002.json` (by hand, once, for a new
/// format; the reader test below must pass on the committed files unchanged).
#[test]
#[ignore = "writes the committed golden key files"]
fn write_epoch_golden_files() {
    use tresor_vault::epochs::EpochRecord;
    use tresor_vault::keys::{KdfParams, KeySlot, SlotKind};
    let vault = GOLDEN_VAULT_ID.parse().unwrap();
    let kdf = KdfParams { memory_kib: 8 * 1024, iterations: 1, ..KdfParams::recommended() };
    let slot =
        KeySlot::wrap_with(&vault, SlotKind::Password, "golden", b"golden slot", (1, &master()), [0; 32], kdf).unwrap();
    let record = EpochRecord::begin(
        &vault,
        2,
        (&master(), &second_master()),
        &[(slot.id.clone(), slot.grant_public().unwrap())],
        vec!["0123456789abcdef".into()],
        "golden vector",
    );
    std::fs::create_dir_all(golden_dir()).unwrap();
    std::fs::write(golden_dir().join("slot-v2.json"), slot.to_json()).unwrap();
    std::fs::write(golden_dir().join("epoch-0000000002.json"), record.to_json()).unwrap();
}

#[test]
fn epoch_record_and_version_2_slot() {
    // A version 2 slot opens with its password to epoch 1's master key and its grant secret; the
    // epoch 2 record grants that slot epoch 2's key, links back to epoch 1, and its proof
    // verifies under epoch 1's key.
    use tresor_vault::epochs::EpochRecord;
    use tresor_vault::keys::KeySlot;
    let vault = GOLDEN_VAULT_ID.parse().unwrap();
    let slot = KeySlot::from_json(&std::fs::read(golden_dir().join("slot-v2.json")).unwrap()).unwrap();
    assert_eq!((slot.version, slot.epoch), (2, Some(1)));
    let opened = slot.unwrap(&vault, b"golden slot").unwrap();
    assert_eq!((opened.epoch, opened.master.expose()), (1, master().expose()));
    assert!(slot.bound_to(&vault, &master()), "the slot's binding verifies under epoch 1's key");
    let name = "epochs/0000000002";
    let record =
        EpochRecord::from_json(&std::fs::read(golden_dir().join("epoch-0000000002.json")).unwrap(), &vault, name)
            .unwrap();
    assert_eq!(record.left_out, ["0123456789abcdef"]);
    let second = record.open_grant(&vault, &slot.id, opened.grant_secret.as_ref().unwrap()).unwrap().unwrap();
    assert_eq!(second.expose(), second_master().expose());
    assert_eq!(record.open_previous(&vault, &second).unwrap().expose(), master().expose());
    record.verify(&master()).unwrap();
}
