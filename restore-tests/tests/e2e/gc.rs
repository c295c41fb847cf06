//! GC refuses to delete anything when what it sees of the vault is implausible: a listing error,
//! a pack a snapshot needs missing from the listing, an unreadable snapshot, or an index segment
//! planted to make a live pack look unreferenced; writers neither deduplicate against a planted
//! index entry nor commit over a pack a sweep they missed deleted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use restore_tests::{World, files_below, random_file};
use tresor_vault::gc::{self, GcOptions};
use tresor_vault::{Secret, Vault, backend};

fn open(w: &World) -> Arc<Vault> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let secret = Secret::Password(zeroize::Zeroizing::new(w.password.clone().into_bytes()));
        Arc::new(Vault::open(backend::from_url(w.vault_str()).unwrap(), &secret).await.unwrap())
    })
}

/// A directory `name` in the world holding one random file, backed up; returns the directory.
fn backed_up(w: &World, name: &str, file: &str, len: usize, seed: u64) -> PathBuf {
    let src = w.path(name);
    std::fs::create_dir_all(&src).unwrap();
    random_file(&src.join(file), len, seed);
    w.backup(&[&src]);
    src
}

/// The pack id a file under `data/` is named by.
pub(crate) fn pack_id(p: &Path) -> tresor_vault::ids::PackId {
    p.file_name().unwrap().to_str().unwrap().parse().unwrap()
}

/// What a planted segment hides, and with which lengths.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Planted {
    /// Packs of data chunks only, each chunk given the decoy's length (so the pack looks
    /// unreferenced to a GC that trusts the index).
    DataPacksWithDecoyLengths,
    /// Every pack, each chunk keeping its own length.
    EveryPackWithTrueLengths,
}

/// A key holder plants an index segment placing every chunk of `hidden` packs in the pack
/// `decoy`, which holds none of them. Returns the segment's id and the packs it hides.
pub(crate) fn plant_decoy_segment(
    v: &Vault,
    hidden: &[PathBuf],
    decoy: &Path,
    how: Planted,
) -> (tresor_vault::ids::ObjectId, Vec<PathBuf>) {
    use tresor_vault::index::{PackRef, Segment};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let decoy = pack_id(decoy);
        let decoy_dir = v.read_pack_directory(&decoy).await.unwrap();
        let mut seg = Segment { packs: vec![PackRef { id: decoy, salt: decoy_dir.salt }], ..Segment::default() };
        let mut victims = Vec::new();
        for p in hidden {
            let entries = v.read_pack_directory(&pack_id(p)).await.unwrap().entries;
            let data_only = entries.iter().all(|e| e.kind == tresor_vault::crypto::ObjectType::DataChunk);
            if how == Planted::DataPacksWithDecoyLengths && !data_only {
                continue;
            }
            for e in entries {
                let raw_len =
                    if how == Planted::EveryPackWithTrueLengths { e.raw_len } else { decoy_dir.entries[0].raw_len };
                seg.entries.push((0, 0, tresor_vault::pack::PackEntry { id: e.id, raw_len, ..decoy_dir.entries[0] }));
            }
            victims.push(p.clone());
        }
        assert!(!victims.is_empty(), "a pack to hide");
        seg.entries.sort_by_key(|x| x.2.id);
        (v.write_segment(&seg).await.unwrap(), victims)
    })
}

fn run(w: &World, v: &Arc<Vault>) -> tresor_vault::Result<gc::GcReport> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(gc::run(v.clone(), &w.path("gc-cache"), &GcOptions::default()))
}

#[test]
fn gc_deletes_nothing_on_an_implausible_listing_or_an_unreadable_snapshot() {
    let w = World::new();
    let src = backed_up(&w, "src", "a.bin", 3 << 20, 1);
    std::fs::remove_file(src.join("a.bin")).unwrap();
    random_file(&src.join("b.bin"), 3 << 20, 2);
    w.backup(&[&src]);
    let packs_before = files_below(&w.vault.join("data"));
    let v = open(&w);

    // A pack a snapshot needs is missing from the listing: abort, nothing deleted, no mark.
    let victim = packs_before.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap().clone();
    let aside = w.path("aside.pack");
    std::fs::rename(&victim, &aside).unwrap();
    let err = run(&w, &v).unwrap_err().to_string();
    assert!(err.contains("implausible pack listing"), "{err}");
    assert!(!w.vault.join("gc").exists(), "no mark was written");
    std::fs::rename(&aside, &victim).unwrap();

    // A listing error (the data directory unreadable): abort.
    let data = w.vault.join("data");
    std::fs::rename(&data, w.path("data-aside")).unwrap();
    std::fs::write(&data, b"not a directory").unwrap();
    let err = run(&w, &v).unwrap_err().to_string();
    assert!(err.contains("data"), "a listing error aborts GC, naming what could not be listed: {err}");
    assert!(!w.vault.join("gc").exists(), "no mark was written");
    std::fs::remove_file(&data).unwrap();
    std::fs::rename(w.path("data-aside"), &data).unwrap();

    // An unreadable snapshot: abort.
    let snap = files_below(&w.vault.join("snapshots")).remove(0);
    let good = std::fs::read(&snap).unwrap();
    std::fs::write(&snap, b"garbage").unwrap();
    let err = run(&w, &v).unwrap_err().to_string();
    let id = snap.file_name().unwrap().to_str().unwrap();
    assert!(
        err.contains(&format!("snapshot {id} is unreadable"))
            && err.contains("GC refuses to run until `check` is clean"),
        "{err}"
    );
    std::fs::write(&snap, good).unwrap();

    // With the vault whole again, nothing is unreferenced and nothing is deleted.
    let report = run(&w, &v).unwrap();
    assert_eq!(report.packs_deleted, 0);
    assert_eq!(report.unreferenced, 0, "{report:?}");
    assert_eq!(files_below(&w.vault.join("data")).len(), packs_before.len());
}

/// Signed documents (drill reports, audit checkpoints) are write-once: storing the same body again
/// is a no-op, a different body under a taken name is refused, bad names are refused, and neither
/// forgetting every snapshot nor a full GC sweep (mark, then sweep) touches them.
#[test]
fn signed_documents_are_write_once_and_gc_never_removes_them() {
    let w = World::new();
    let _ = backed_up(&w, "src", "a.bin", 2 << 20, 5);
    let v = open(&w);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let report = br#"{"type":"tresor.drill-report.v1","verdict":"PASS"}"#;
    rt.block_on(async {
        v.put_document("reports/j-1.json", report).await.unwrap();
        v.put_document("reports/j-1.json", report).await.unwrap();
        let err = v.put_document("reports/j-1.json", b"{\"verdict\":\"FAIL\"}").await.unwrap_err().to_string();
        assert!(err.contains("write-once"), "{err}");
        v.put_document("audit/checkpoint-00000000000000000007.json", b"{}").await.unwrap();
        for bad in ["reports/../config", "snapshots/x", "reports/", "reports/.hidden", "audit/a/b"] {
            assert!(v.put_document(bad, b"x").await.is_err(), "{bad} is refused");
        }
        assert_eq!(v.document("reports/j-1.json").await.unwrap(), report);
        for id in w.snapshot_ids() {
            v.forget_snapshot(&id.parse().unwrap()).await.unwrap();
        }
    });
    // Grace zero: the first run marks, the second sweeps every pack.
    let opts = GcOptions { grace: std::time::Duration::ZERO, ..GcOptions::default() };
    for _ in 0..2 {
        rt.block_on(gc::run(v.clone(), &w.path("gc-cache"), &opts)).unwrap();
    }
    assert!(files_below(&w.vault.join("data")).is_empty(), "the sweep removed every pack");
    rt.block_on(async {
        assert_eq!(v.document("reports/j-1.json").await.unwrap(), report);
        assert_eq!(v.document_names("audit/").await.unwrap(), ["audit/checkpoint-00000000000000000007.json"]);
    });
}

/// A key holder plants an index segment that places every chunk of a live snapshot's pack in
/// another pack (a decoy that holds none of them), so that pack looks unreferenced. GC marks it,
/// but before the sweep deletes it, it reads the pack's own directory, finds live chunks, looks
/// them up where the index claims them, and since they do not read there, keeps the pack and
/// names the planted segment. A restore reads each hidden chunk from its genuine entry.
#[test]
fn a_planted_segment_cannot_make_gc_delete_a_live_pack() {
    let w = World::new();
    // 40 MiB of random data fill packs of data chunks only; the tree goes into the last one.
    let src = backed_up(&w, "src", "a.bin", 40 << 20, 11);
    let first: Vec<_> = files_below(&w.vault.join("data"));
    random_file(&src.join("b.bin"), 1 << 20, 12);
    w.backup(&[&src]);
    let second: Vec<_> = files_below(&w.vault.join("data")).into_iter().filter(|p| !first.contains(p)).collect();
    let v = open(&w);
    // The maintainer's cache already holds the genuine segments; the planted one comes later
    // and is looked up first.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _ = rt.block_on(v.sync_index(&w.path("gc-cache"))).unwrap();
    let (planted, victims) = plant_decoy_segment(&v, &first, &second[0], Planted::DataPacksWithDecoyLengths);

    let marked = run(&w, &v).unwrap();
    assert!(marked.packs_marked >= victims.len(), "the victims look unreferenced and are marked: {marked:?}");
    let swept = run(&w, &v).unwrap();
    assert_eq!(swept.packs_deleted, 0, "{swept:?}");
    assert!(victims.iter().all(|p| p.exists()), "the live packs are still there");
    assert!(
        swept.kept.iter().any(|k| k.contains("which the index places in pack") && k.contains("where it does not read")),
        "{swept:?}"
    );
    assert!(
        swept.false_index_entries.iter().any(|s| s.contains(&planted.to_string())),
        "the planted segment is named: {swept:?}"
    );
    // check --read-data names it too.
    let out = w.run(&["--json", "check", "--vault", w.vault_str(), "--read-data"]);
    assert_eq!(out.status.code(), Some(13), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("index/{planted}")) && text.contains("where their pack does not hold them"),
        "{text}"
    );
    // A restore never writes wrong bytes for it: the planted entries give the hidden chunks
    // another length, which would shift every chunk after them, so the file fails by name (exit
    // 3) rather than be rebuilt at the wrong offsets.
    let out = w.path("restored");
    let restored = w.run(&["restore", "--vault", w.vault_str(), "latest", "--to", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&restored.stdout);
    assert_eq!(restored.status.code(), Some(3), "{text}{}", String::from_utf8_lossy(&restored.stderr));
    assert!(text.contains("FAILED") && text.contains("a.bin"), "{text}");
    let _ = planted;
}

/// A planted segment that places live chunks at another pack with their true lengths hides them
/// from lookups (the newest run answers first), but a restore reads each from its genuine entry:
/// the restored tree is exact, and the detour is logged.
#[test]
fn a_restore_reads_around_a_planted_index_entry() {
    let w = World::new();
    let src = backed_up(&w, "src", "a.bin", 6 << 20, 13);
    let first = files_below(&w.vault.join("data"));
    random_file(&src.join("b.bin"), 1 << 20, 14);
    w.backup(&[&src]);
    let second: Vec<_> = files_below(&w.vault.join("data")).into_iter().filter(|p| !first.contains(p)).collect();
    let v = open(&w);
    let _ = plant_decoy_segment(&v, &first, &second[0], Planted::EveryPackWithTrueLengths);
    let out = w.path("restored");
    let restored = w.run(&["restore", "--vault", w.vault_str(), "latest", "--to", out.to_str().unwrap()]);
    let log = String::from_utf8_lossy(&restored.stderr);
    assert!(restored.status.success(), "{log}{}", String::from_utf8_lossy(&restored.stdout));
    assert!(log.contains("chunk read from another index entry"), "the detour is logged: {log}");
    restore_tests::assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
}

/// A sweep that does not see a running writer (here its marker is taken away, as a listing that
/// misses it would) deletes a pack the writer deduplicated against while the writer waits at its
/// commit point. Before the commit point the writer sees that the index was rewritten, finds the
/// pack gone, and commits nothing; the vault stays whole.
#[test]
fn a_writer_commits_nothing_when_a_sweep_it_missed_deleted_a_pack_it_reused() {
    let w = World::new();
    let (v, writer, log) = writer_paused_after_reusing_a_forgotten_pack(&w);
    let marked = run(&w, &v).unwrap();
    assert!(marked.packs_marked >= 1, "{marked:?}");
    let swept = run(&w, &v).unwrap();
    assert!(swept.packs_deleted >= 1, "the pack the writer reused is gone: {swept:?}");
    the_writer_commits_nothing(&w, writer, &log);
}

/// The same pack disappears, but the index is not rewritten (as on storage where a sweep's index
/// compaction is not yet visible): only the mark changed since the writer read it. Re-read at the
/// commit point, the changed mark makes the writer check its reused packs, and it commits nothing.
#[test]
fn a_writer_commits_nothing_when_the_mark_changed_and_a_reused_pack_is_gone() {
    let w = World::new();
    let (v, writer, log) = writer_paused_after_reusing_a_forgotten_pack(&w);
    let index_before = files_below(&w.vault.join("index"));
    let marked = run(&w, &v).unwrap();
    assert!(marked.packs_marked >= 1, "{marked:?}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mark = rt.block_on(tresor_vault::session::read_mark(&v)).unwrap().unwrap();
    for p in &mark.packs {
        std::fs::remove_file(w.vault.join(tresor_vault::layout::pack(p))).unwrap();
    }
    assert_eq!(files_below(&w.vault.join("index")), index_before, "the index is as the writer loaded it");
    the_writer_commits_nothing(&w, writer, &log);
}

/// A vault whose only snapshot is forgotten (its pack unreferenced, but still in the agent's
/// index cache), and a CLI backup of the same file paused at its commit point: it deduplicated
/// against that pack. Its session marker is taken away, as a listing that misses it would.
fn writer_paused_after_reusing_a_forgotten_pack(w: &World) -> (Arc<Vault>, std::process::Child, PathBuf) {
    let src = backed_up(w, "src", "a.bin", 2 << 20, 21);
    let v = open(w);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let first = w.snapshot_ids();
    rt.block_on(async { v.forget_snapshot(&first[0].parse().unwrap()).await.unwrap() });
    let (writer, log) = paused_backup(w, w.agent(), &src);
    for m in files_below(&w.vault.join("sessions")) {
        std::fs::remove_file(m).unwrap();
    }
    (v, writer, log)
}

/// A CLI backup of `src` run by `cmd` (the agent, perhaps under libfaketime), paused for 6 s at
/// its commit point; returns once it is there, with the file its log goes to.
fn paused_backup(w: &World, mut cmd: std::process::Command, src: &Path) -> (std::process::Child, PathBuf) {
    let log = w.path("writer.log");
    let child = cmd
        .env("TRESOR_FAILPOINTS", "before-manifest-put=sleep:6000")
        .args(["backup", "--vault", w.vault_str()])
        .arg(src)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    restore_tests::plane::wait_for("the writer at its commit point", std::time::Duration::from_secs(60), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("failpoint: sleeping")
    });
    (child, log)
}

fn the_writer_commits_nothing(w: &World, mut writer: std::process::Child, log: &Path) {
    let status = writer.wait().unwrap();
    let err = std::fs::read_to_string(log).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("which this backup deduplicated against, was deleted by a garbage collection"), "{err}");
    assert!(w.snapshot_ids().is_empty(), "nothing was committed");
}

/// A sweep that finishes between a writer's index load and its session start: the loaded index
/// names packs the sweep deleted, so the start is refused with `IndexChanged` (the agent loads
/// the index again and retries, up to three times), and a start on a fresh load succeeds.
#[test]
fn a_session_started_on_an_index_a_sweep_replaced_is_refused_with_index_changed() {
    use tresor_vault::backup::{BackupOptions, BackupSession};
    let w = World::new();
    let _ = backed_up(&w, "src", "a.bin", 1 << 20, 41);
    let _ = backed_up(&w, "src2", "b.bin", 1 << 20, 42);
    let v = open(&w);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cache = w.path("writer-cache");
    let loaded = rt.block_on(v.sync_index(&cache)).unwrap();
    let first = w.snapshot_ids();
    rt.block_on(v.forget_snapshot(&first[0].parse().unwrap())).unwrap();
    let opts = GcOptions { grace: std::time::Duration::ZERO, ..GcOptions::default() };
    for _ in 0..2 {
        rt.block_on(gc::run(v.clone(), &w.path("gc-cache"), &opts)).unwrap();
    }
    let refused = rt.block_on(BackupSession::start(v.clone(), loaded, BackupOptions::default()));
    assert!(matches!(refused, Err(tresor_vault::Error::IndexChanged)), "{:?}", refused.err());
    assert!(files_below(&w.vault.join("sessions")).is_empty(), "the refused session left no marker");
    let fresh = rt.block_on(v.sync_index(&cache)).unwrap();
    let session = rt.block_on(BackupSession::start(v.clone(), fresh, BackupOptions::default())).unwrap();
    rt.block_on(session.abort());
}

/// A junk session marker (a planted object, or one damaged in storage) blocks sweeps, for one
/// lease only: the maintainer counts from when it first saw those very bytes, by its own record.
/// Then the marker is moved to `quarantine/` (kept), reported, and the sweep runs.
#[test]
fn a_junk_session_marker_blocks_gc_for_one_lease_then_is_quarantined() {
    let w = World::new();
    let _ = backed_up(&w, "src", "a.bin", 1 << 20, 51);
    let v = open(&w);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for id in w.snapshot_ids() {
        rt.block_on(v.forget_snapshot(&id.parse().unwrap())).unwrap();
    }
    let junk_name = format!("sessions/{}", "ab".repeat(32));
    std::fs::write(w.vault.join(&junk_name), b"not a session marker").unwrap();
    let opts = GcOptions { grace: std::time::Duration::ZERO, ..GcOptions::default() };
    let gc = |v: &Arc<Vault>| rt.block_on(gc::run(v.clone(), &w.path("gc-cache"), &opts)).unwrap();
    let marked = gc(&v);
    assert!(marked.packs_marked >= 1, "{marked:?}");
    let blocked = gc(&v);
    assert_eq!(blocked.packs_deleted, 0, "{blocked:?}");
    assert!(blocked.postponed.as_deref().unwrap_or("").contains("unreadable marker"), "{blocked:?}");

    // A lease later by the maintainer's record (its own clock; nothing the marker says counts).
    let record = w.path("gc-cache").join(v.config().vault_id.to_hex()).join("gc-observed.json");
    let mut seen: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let first_seen = &mut seen["seen"][&junk_name][1];
    *first_seen = (first_seen.as_i64().unwrap() - 16 * 60).into();
    std::fs::write(&record, serde_json::to_vec(&seen).unwrap()).unwrap();
    let swept = gc(&v);
    assert!(swept.quarantined.iter().any(|q| q.contains(&junk_name)), "{swept:?}");
    assert!(swept.packs_deleted >= 1, "the sweep ran: {swept:?}");
    assert!(!w.vault.join(&junk_name).exists());
    assert_eq!(std::fs::read(w.vault.join("quarantine").join(&junk_name)).unwrap(), b"not a session marker");
}

/// A backup killed mid-way (as one whose agent may not delete leaves its marker when it ends):
/// its session marker announces its packs for a day by the maintainer's record, then GC removes it.
#[test]
fn a_session_marker_unchanged_for_a_day_is_removed_by_gc() {
    let w = World::new();
    let src = w.path("src");
    random_file(&src.join("a.bin"), 40 << 20, 61);
    let out = w
        .agent()
        .env("TRESOR_FAILPOINTS", "after-pack-put=kill@1")
        .args(["backup", "--vault", w.vault_str(), src.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&out.status), Some(9));
    let markers = files_below(&w.vault.join("sessions"));
    assert_eq!(markers.len(), 1, "{markers:?}");
    let name = format!("sessions/{}", markers[0].file_name().unwrap().to_str().unwrap());
    let v = open(&w);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let opts = GcOptions { grace: std::time::Duration::ZERO, ..GcOptions::default() };
    let gc = |v: &Arc<Vault>| rt.block_on(gc::run(v.clone(), &w.path("gc-cache"), &opts)).unwrap();
    let first = gc(&v);
    assert_eq!(first.stale_markers_removed, 0, "{first:?}");
    assert!(w.vault.join(&name).exists());
    // A day later by the maintainer's record.
    let record = w.path("gc-cache").join(v.config().vault_id.to_hex()).join("gc-observed.json");
    let mut seen: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let first_seen = &mut seen["seen"][&name][1];
    *first_seen = (first_seen.as_i64().unwrap() - 24 * 3600 - 60).into();
    std::fs::write(&record, serde_json::to_vec(&seen).unwrap()).unwrap();
    let later = gc(&v);
    assert_eq!(later.stale_markers_removed, 1, "{later:?}");
    assert!(!w.vault.join(&name).exists());
}

/// A key holder who can guess content another host will back up plants an index entry for its
/// chunk id that points into a decoy pack. A writer that trusted the index would skip storing the
/// chunk and commit a snapshot no restore can read; it checks the pack's own directory first,
/// stores the chunk, and the snapshot restores.
#[test]
fn a_writer_never_deduplicates_against_a_planted_index_entry() {
    use tresor_vault::index::{PackRef, Segment};
    let w = World::new();
    let _ = backed_up(&w, "decoy", "b.bin", 1 << 20, 31);
    // The guessed content: one chunk (below the chunker's minimum size).
    let src = w.path("src");
    std::fs::create_dir_all(&src).unwrap();
    random_file(&src.join("x.bin"), 100 << 10, 32);
    let content = std::fs::read(src.join("x.bin")).unwrap();
    let v = open(&w);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let decoy = pack_id(&files_below(&w.vault.join("data"))[0]);
        let dir = v.read_pack_directory(&decoy).await.unwrap();
        let id = v.keys().chunk_id(&content);
        let seg = Segment {
            packs: vec![PackRef { id: decoy, salt: dir.salt }],
            entries: vec![(0, 0, tresor_vault::pack::PackEntry { id, ..dir.entries[0] })],
            ..Segment::default()
        };
        v.write_segment(&seg).await.unwrap();
    });
    let out = w.agent().args(["backup", "--vault", w.vault_str()]).arg(&src).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("whose own directory does not hold it there"), "the writer says why it stored it: {err}");
    let to = w.path("restored");
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", to.to_str().unwrap()]);
    let restored = std::fs::read(to.join(src.strip_prefix("/").unwrap()).join("x.bin")).unwrap();
    assert!(restored == content, "the snapshot restores");
    assert!(files_below(&w.cache).iter().any(|p| p.to_string_lossy().contains("/packdirs/")), "the directory is kept");
}

/// Standalone `gc` keeps a record of the snapshots this host committed or saw listed. A listing
/// that lacks one (here a manifest moved aside, as a short or failed listing would) and a vanished
/// `snapshots/` directory make it delete nothing, twice in a row, naming what is missing; a
/// snapshot forgotten with `forget` never trips it, and its data is then collected.
#[test]
fn standalone_gc_deletes_nothing_on_a_short_listing_or_a_missing_directory() {
    let w = World::new();
    let src = backed_up(&w, "src", "a.bin", 1 << 20, 61);
    std::fs::remove_file(src.join("a.bin")).unwrap();
    random_file(&src.join("b.bin"), 1 << 20, 62);
    w.backup(&[&src]);
    let gc = |extra: &[&str]| {
        let mut a = vec!["--json", "gc", "--vault", w.vault_str(), "--grace", "0s"];
        a.extend_from_slice(extra);
        w.run(&a)
    };
    assert!(gc(&[]).status.success());
    let packs = files_below(&w.vault.join("data"));
    let snaps = files_below(&w.vault.join("snapshots"));
    let hidden = snaps.iter().min().unwrap().clone();
    let aside = w.path("aside");
    std::fs::rename(&hidden, &aside).unwrap();
    for _ in 0..2 {
        let out = gc(&[]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(13), "{text}");
        assert!(text.contains(hidden.file_name().unwrap().to_str().unwrap()), "the missing snapshot is named: {text}");
    }
    assert_eq!(files_below(&w.vault.join("data")), packs, "nothing deleted");
    std::fs::rename(&aside, &hidden).unwrap();

    let dir = w.vault.join("snapshots");
    std::fs::rename(&dir, w.path("snapshots-aside")).unwrap();
    let out = gc(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("snapshots/ (the directory is missing"), "{err}");
    std::fs::rename(w.path("snapshots-aside"), &dir).unwrap();
    assert_eq!(files_below(&w.vault.join("data")), packs, "nothing deleted");

    // A deliberate forget: the next two runs mark, then collect a.bin's data.
    let id = hidden.file_name().unwrap().to_str().unwrap().to_string();
    w.ok(&["forget", "--vault", w.vault_str(), &id]);
    let runs: Vec<serde_json::Value> = (0..2)
        .map(|_| {
            let out = gc(&[]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect();
    assert!(runs[1]["packs_deleted"].as_u64().unwrap() >= 1, "{runs:?}");
    w.ok(&["check", "--vault", w.vault_str(), "--read-data"]);
}

/// A standalone writer and a standalone `gc` whose wall clocks are two hours apart, each way,
/// under libfaketime (the daemon's certificates would not validate under it; the daemon test in
/// control/faults.rs uses the clock hook instead). The writer is paused at its commit point
/// holding a reuse of a forgotten snapshot's pack; two GC runs with no grace delete nothing it
/// needs, the writer commits, and the vault checks whole.
#[test]
fn standalone_gc_and_a_writer_with_clocks_two_hours_apart_lose_nothing() {
    for (writer, maintainer) in [("-2h", "+0"), ("+0", "-2h")] {
        let w = World::new();
        let src = backed_up(&w, "src", "a.bin", 2 << 20, 71);
        let first = w.snapshot_ids();
        w.ok(&["forget", "--vault", w.vault_str(), &first[0]]);
        let (mut child, log) = paused_backup(&w, faketime(w.agent(), writer), &src);
        for _ in 0..2 {
            let out = faketime(w.agent(), maintainer)
                .args(["--json", "gc", "--vault", w.vault_str(), "--grace", "0s"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(r["packs_deleted"], 0, "writer {writer}, maintainer {maintainer}: {r}");
        }
        // Only a writer still held at its commit point makes "deleted nothing" mean anything.
        assert!(child.try_wait().unwrap().is_none(), "the writer finished before GC ran: lengthen its pause");
        let status = child.wait().unwrap();
        assert!(status.success(), "writer {writer}: {}", std::fs::read_to_string(&log).unwrap());
        w.ok(&["check", "--vault", w.vault_str(), "--read-data"]);
        let out = w.path("restored");
        w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", out.to_str().unwrap()]);
        restore_tests::assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
    }
}

/// Run `cmd` with its wall clock shifted by `offset` ("-2h", "+0") through libfaketime; the
/// monotonic clock is left alone. The shift is checked once on `date`: a preload that failed
/// would leave the real clock, and the clock tests would pass without any skew.
fn faketime(mut cmd: std::process::Command, offset: &str) -> std::process::Command {
    let lib =
        ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("libfaketime is missing: run scripts/ensure-test-deps.sh");
    static CHECKED: std::sync::Once = std::sync::Once::new();
    CHECKED.call_once(|| {
        let out = std::process::Command::new("date")
            .arg("+%s")
            .env("LD_PRELOAD", lib)
            .env("FAKETIME", "-2h")
            .output()
            .expect("date runs");
        let shifted: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("date +%s prints seconds");
        let real = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((real - 7200 - shifted).abs() < 60, "libfaketime does not shift the clock: {shifted} vs {real}");
    });
    cmd.env("LD_PRELOAD", lib).env("FAKETIME", offset).env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    cmd
}

/// Standalone `forget` by the same retention rules as the controller's, grouped by host and
/// source, by the manifests' times (here set by backups run with their clock 4 to 0 days back):
/// `--keep-daily 2` keeps the newest of each of the two newest days; `--dry-run` forgets nothing.
#[test]
fn standalone_forget_applies_the_retention_rules() {
    let w = World::new();
    let src = w.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut ids = Vec::new();
    for (i, days_back) in [4i64, 3, 2, 1, 0, 0].into_iter().enumerate() {
        random_file(&src.join("f.bin"), 100_000, 90 + i as u64);
        let out = w
            .agent()
            .env("TRESOR_CLOCK_SKEW_SECS", (-days_back * 86_400 + i as i64).to_string())
            .args(["--json", "backup", "--vault", w.vault_str()])
            .arg(&src)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.push(v["snapshot"].as_str().unwrap().to_string());
    }
    let forget = |dry: bool| {
        let mut a = vec!["forget", "--vault", w.vault_str(), "--keep-daily", "2"];
        if dry {
            a.push("--dry-run");
        }
        let v = w.json(&a);
        let mut out: Vec<String> =
            v["forgotten"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap().to_string()).collect();
        out.sort();
        out
    };
    let mut want: Vec<String> = [0, 1, 2, 4].iter().map(|i| ids[*i].clone()).collect();
    want.sort();
    assert_eq!(forget(true), want, "the three older days and the older of today's two");
    assert_eq!(w.snapshot_ids().len(), 6, "a dry run forgets nothing");
    assert_eq!(forget(false), want);
    let mut left = w.snapshot_ids();
    left.sort();
    let mut kept = vec![ids[3].clone(), ids[5].clone()];
    kept.sort();
    assert_eq!(left, kept);
    for _ in 0..2 {
        w.ok(&["gc", "--vault", w.vault_str(), "--grace", "0s"]);
    }
    w.ok(&["check", "--vault", w.vault_str(), "--read-data"]);
}
