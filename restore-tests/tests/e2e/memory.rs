//! Memory does not grow with the vault: back up 200 MB of new data into a vault whose index holds
//! 5 million entries, and compare the agent's peak RSS with the same run on 50,000 entries.

use std::sync::Arc;

use restore_tests::{World, random_file};
use tresor_vault::codec::Codec;
use tresor_vault::crypto::ObjectType;
use tresor_vault::ids::{ChunkId, PackId};
use tresor_vault::index::{MAX_SEGMENT_ENTRIES, PackRef, Segment};
use tresor_vault::pack::PackEntry;
use tresor_vault::{Secret, Vault, backend};

/// Write `entries` index entries (random chunks in fake packs) through the library.
fn fill_index(w: &World, entries: usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let secret = Secret::Password(zeroize_free(w.password.as_bytes()));
        let vault = Arc::new(Vault::open(backend::from_url(w.vault_str()).unwrap(), &secret).await.unwrap());
        let mut left = entries;
        while left > 0 {
            let n = left.min(MAX_SEGMENT_ENTRIES);
            let packs: Vec<(PackRef, Vec<PackEntry>)> = (0..n.div_ceil(1000))
                .map(|p| {
                    let count = (n - p * 1000).min(1000);
                    let dir = (0..count)
                        .map(|i| PackEntry {
                            kind: ObjectType::DataChunk,
                            codec: Codec::Raw,
                            id: ChunkId::random(),
                            offset: 40 + i as u32 * 100,
                            stored_len: 100,
                            raw_len: 84,
                        })
                        .collect();
                    (PackRef { id: PackId::random(), salt: [7; 32] }, dir)
                })
                .collect();
            vault.write_segment(&Segment::from_packs(0, &packs)).await.unwrap();
            left -= n;
        }
    });
}

fn zeroize_free(b: &[u8]) -> zeroize::Zeroizing<Vec<u8>> {
    zeroize::Zeroizing::new(b.to_vec())
}

fn peak_backup(entries: usize) -> u64 {
    let w = World::new();
    fill_index(&w, entries);
    let src = w.path("src");
    for i in 0..10 {
        random_file(&src.join(format!("new{i}.bin")), 20 << 20, 500 + i as u64);
    }
    let out = w.backup(&[&src]);
    assert_eq!(out["manifest"]["summary"]["bytes_new"].as_u64(), Some(200 << 20));
    out["peak_rss_bytes"].as_u64().expect("peak_rss_bytes reported")
}

#[test]
fn peak_memory_does_not_grow_with_the_index() {
    let small = peak_backup(50_000);
    let large = peak_backup(5_000_000);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("peak RSS: 50,000 entries {:.1} MiB, 5,000,000 entries {:.1} MiB", mib(small), mib(large));
    assert!(large < 192 << 20, "peak RSS {:.1} MiB with 5M index entries exceeds 192 MiB", mib(large));
    assert!(
        large.abs_diff(small) < 32 << 20,
        "peak RSS grew from {:.1} to {:.1} MiB with the index",
        mib(small),
        mib(large)
    );
}
