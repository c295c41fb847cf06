//! Faults: agents killed or stopped mid-job, GC racing a writer, the controller killed over and
//! over, the controller down across a scheduled slot, and certificates that live 20 seconds.

use std::path::Path;
use std::time::{Duration, Instant};

use restore_tests::plane::{Plane, VaultSpec, wait_for};
use restore_tests::{assert_same_tree, random_file};

use super::lifecycle::check_vault;

/// A plane with a folder vault "nas" and agents holding their own key slots for it.
fn plane_with(extra: &str, agents: &[&str]) -> (Plane, String, Vec<std::path::PathBuf>) {
    let mut p = Plane::start(extra);
    let nas = p.dir.path().join("nas");
    std::fs::create_dir_all(&nas).unwrap();
    let url = nas.to_str().unwrap().to_string();
    let first = p.password_file(agents[0]);
    p.init_vault(&url, &first, &[]);
    let mut pws = vec![first.clone()];
    for a in &agents[1..] {
        let pw = p.password_file(a);
        p.add_key(&url, &first, &pw, &[]);
        pws.push(pw);
    }
    for (a, pw) in agents.iter().zip(&pws) {
        let spec = VaultSpec { name: "nas".into(), url: url.clone(), password_file: pw.clone(), env: vec![] };
        p.add_agent(a, &[spec], &[]);
    }
    (p, url, pws)
}

fn policy(maintainer: &str, sources: &[(&str, &str, &Path, &str, u32)]) -> String {
    let mut t = format!("name = \"f\"\n[[vault]]\nname = \"nas\"\nmaintainer = \"{maintainer}\"\ngc_grace = \"0s\"\n");
    for (agent, name, path, schedule, keep) in sources {
        t.push_str(&format!(
            "[[source]]\nagent = \"{agent}\"\nname = \"{name}\"\nvault = \"nas\"\npaths = [\"{}\"]\nschedule = \"{schedule}\"\nretention = {{ keep_last = {keep} }}\n",
            path.display()
        ));
    }
    t
}

fn job_of(out: &str) -> String {
    out.split_whitespace().last().unwrap_or_default().to_string()
}

#[test]
fn an_agent_killed_mid_backup_is_retried_without_a_broken_snapshot() {
    let (mut p, url, pws) = plane_with("lease = \"5s\"\n", &["w1"]);
    let data = p.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..6 {
        random_file(&data.join(format!("f{i}.bin")), 6 << 20, i);
    }
    assert!(p.apply_policy(&policy("w1", &[("w1", "data", &data, "0 0 1 1 *", 10)])).status.success());
    // The daemon kills itself with SIGKILL after its second pack put.
    p.kill_agent("w1");
    p.start_agent_with("w1", &[("TRESOR_FAILPOINTS", "after-pack-put=kill@2")]);
    p.wait_connected("w1");
    let job = job_of(&p.ctl_ok(&["backup", "w1/data", "--detach"]));
    wait_for("the agent to die mid-backup", Duration::from_secs(60), || p.agent_exited("w1"));
    p.start_agent("w1");
    let done = p.ctl_json(&["watch", &job]);
    assert_eq!(done["state"], "succeeded", "{done}");
    let snaps = p.snapshots("w1/data");
    assert_eq!(snaps.len(), 1, "exactly one snapshot: {snaps:?}");
    let report = check_vault(&url, &pws[0], &[], true);
    assert!(report["problems"].as_array().unwrap().is_empty(), "{report}");
    let target = p.dir.path().join("restored");
    p.ctl_ok(&["restore", "w1/data", "--to", target.to_str().unwrap()]);
    assert_same_tree(&data, &target.join(data.strip_prefix("/").unwrap()));
}

#[test]
fn a_writer_stopped_past_its_lease_aborts_and_gc_deletes_nothing_referenced() {
    let (mut p, url, pws) = plane_with("lease = \"4s\"\n", &["maint", "w1"]);
    let old = p.dir.path().join("old");
    let data = p.dir.path().join("data");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    random_file(&old.join("a.bin"), 4 << 20, 1);
    random_file(&data.join("a.bin"), 4 << 20, 1); // same content as old/a.bin: deduplicated
    let sources = [("w1", "old", old.as_path(), "0 0 1 1 *", 1), ("w1", "data", data.as_path(), "0 0 1 1 *", 5)];
    assert!(p.apply_policy(&policy("maint", &sources)).status.success());
    p.ctl_ok(&["backup", "w1/old"]);
    std::fs::remove_file(old.join("a.bin")).unwrap();
    random_file(&old.join("b.bin"), 1 << 20, 2);
    p.ctl_ok(&["backup", "w1/old"]);

    // The writer backs up "data" (reusing a.bin's pack) and is held just before its commit point,
    // then stopped past its lease.
    p.kill_agent("w1");
    p.start_agent_with("w1", &[("TRESOR_FAILPOINTS", "before-manifest-put=sleep:3000")]);
    p.wait_connected("w1");
    let job = job_of(&p.ctl_ok(&["backup", "w1/data", "--detach"]));
    wait_for("the writer to reach its commit point", Duration::from_secs(60), || {
        p.agent_log("w1").contains("failpoint: sleeping")
    });
    p.signal_agent("w1", rustix::process::Signal::STOP);
    // A frozen agent does nothing to wait for: its 5 s lease must run out by the clock.
    std::thread::sleep(Duration::from_secs(7));

    // Meanwhile the maintainer forgets the first "old" snapshot (the only one referencing a.bin's
    // pack) and collects twice: the mark is made, the sweep waits for the live writer session.
    let first = p.ctl_json(&["prune", "nas"]);
    assert_eq!(first["forgotten"].as_array().unwrap().len(), 1, "{first}");
    let second = p.ctl_json(&["prune", "nas"]);
    assert_eq!(second["packs_deleted"], 0, "{second}");
    assert!(second["postponed"].as_str().unwrap().contains("writer sessions are live"), "{second}");

    // Woken, the writer finds its lease gone and aborts before the commit; the retry commits.
    p.signal_agent("w1", rustix::process::Signal::CONT);
    wait_for("the fenced writer to abort", Duration::from_secs(60), || p.agent_log("w1").contains("commit refused"));
    p.kill_agent("w1");
    p.start_agent("w1");
    let done = p.ctl_json(&["watch", &job]);
    assert_eq!(done["state"], "succeeded", "{done}");

    // Collect again: both runs succeed and forget nothing more (keep_last holds), and whatever
    // they delete, every remaining snapshot is whole (below).
    for _ in 0..2 {
        let r = p.ctl_json(&["prune", "nas"]);
        assert_eq!(r["state"], "succeeded", "{r}");
        assert_eq!(r["forgotten"].as_array().map(Vec::len), Some(0), "{r}");
    }
    let report = check_vault(&url, &pws[0], &[], true);
    assert!(report["problems"].as_array().unwrap().is_empty(), "{report}");
    assert_eq!(report["unreferenced_packs"], 0, "{report}");
    let target = p.dir.path().join("restored");
    p.ctl_ok(&["restore", "w1/data", "--to", target.to_str().unwrap()]);
    assert_same_tree(&data, &target.join(data.strip_prefix("/").unwrap()));
}

#[test]
fn a_pack_reused_by_a_running_backup_survives_gc() {
    reused_pack_survives_gc_with_clocks(0, 0);
}

/// The same with clocks off by two hours, each way: the writer's clock two hours behind the
/// maintainer's (its marker looks two hours old by its own stamps), then the maintainer's two
/// hours behind the writer's. GC judges liveness by seeing the marker rewritten, by its own
/// clock, so neither sweeps the pack the running writer reuses.
#[test]
fn gc_never_sweeps_a_live_writers_packs_whatever_the_writers_clock_says() {
    reused_pack_survives_gc_with_clocks(-7200, 0);
    reused_pack_survives_gc_with_clocks(7200, -7200);
}

fn reused_pack_survives_gc_with_clocks(writer_skew: i64, maintainer_skew: i64) {
    let (mut p, url, pws) = plane_with("lease = \"20s\"\n", &["maint", "w1"]);
    let (ws, ms) = (writer_skew.to_string(), maintainer_skew.to_string());
    p.kill_agent("maint");
    p.start_agent_with("maint", &[("TRESOR_CLOCK_SKEW_SECS", &ms)]);
    p.wait_connected("maint");
    let old = p.dir.path().join("old");
    let data = p.dir.path().join("data");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    random_file(&old.join("a.bin"), 4 << 20, 7);
    let sources = [("w1", "old", old.as_path(), "0 0 1 1 *", 1), ("w1", "data", data.as_path(), "0 0 1 1 *", 5)];
    assert!(p.apply_policy(&policy("maint", &sources)).status.success());
    p.ctl_ok(&["backup", "w1/old"]);
    std::fs::remove_file(old.join("a.bin")).unwrap();
    random_file(&old.join("b.bin"), 1 << 20, 8);
    p.ctl_ok(&["backup", "w1/old"]);
    random_file(&data.join("a-copy.bin"), 4 << 20, 7); // the same bytes as the forgotten a.bin

    p.kill_agent("w1");
    p.start_agent_with(
        "w1",
        &[("TRESOR_FAILPOINTS", "before-manifest-put=sleep:8000"), ("TRESOR_CLOCK_SKEW_SECS", &ws)],
    );
    p.wait_connected("w1");
    let job = job_of(&p.ctl_ok(&["backup", "w1/data", "--detach"]));
    wait_for("the writer to reach its commit point", Duration::from_secs(60), || {
        p.agent_log("w1").contains("failpoint: sleeping")
    });
    // GC runs while the writer holds a reference to a.bin's pack that no snapshot has yet.
    let committed = p.snapshots("w1/data").len();
    let first = p.ctl_json(&["prune", "nas"]);
    assert!(first["packs_marked"].as_u64().unwrap() >= 1, "{first}");
    let second = p.ctl_json(&["prune", "nas"]);
    assert_eq!(second["packs_deleted"], 0, "the sweep waits for the writer: {second}");
    // Only a writer still held at its commit point makes "deleted nothing" mean anything.
    assert_eq!(p.snapshots("w1/data").len(), committed, "the writer committed before GC ran: lengthen its pause");
    let done = p.ctl_json(&["watch", &job]);
    assert_eq!(done["state"], "succeeded", "{done}");
    // Now the pack is referenced: the next sweep keeps it.
    let third = p.ctl_json(&["prune", "nas"]);
    assert_eq!(third["state"], "succeeded", "{third}");
    let report = check_vault(&url, &pws[0], &[], true);
    assert!(report["problems"].as_array().unwrap().is_empty(), "{third}\n{report}");
    let target = p.dir.path().join("restored");
    p.ctl_ok(&["restore", "w1/data", "--to", target.to_str().unwrap()]);
    assert_same_tree(&data, &target.join(data.strip_prefix("/").unwrap()));
}

#[test]
fn the_controller_killed_a_hundred_times_always_comes_back_whole() {
    let (mut p, url, pws) = plane_with("", &["w1", "gone"]);
    let data = p.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    random_file(&data.join("x.bin"), 256 << 10, 3);
    assert!(p.apply_policy(&policy("w1", &[("w1", "data", &data, "* * * * * *", 1000)])).status.success());
    p.ctl_ok(&["agent", "revoke", "gone"]);
    p.kill_agent("gone");
    let seed = restore_tests::seed_from_env("TRESOR_KILL_SEED", "controller kills");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let vault = Path::new(&url).to_path_buf();
    let mut rebuilt = 0;
    let started = Instant::now();
    for i in 0..100 {
        // Writes in flight: scheduled backups every second, plus tokens and restores queued.
        if i % 3 == 0 {
            let _ = p.ctl(&["token", "create", "--role", "auditor"]);
        }
        let wait = rand::Rng::gen_range(&mut rng, 50..700);
        std::thread::sleep(Duration::from_millis(wait));
        p.kill_controller();
        p.start_controller();
        let log = p.controller_log(p.starts());
        let rebuilt_now = log.contains("does not open") || log.contains("new catalog");
        rebuilt += usize::from(rebuilt_now);
        // Every agent, policy and revocation is back at once; snapshots whose receipts reached
        // the vault are in the catalog (at once, or after the rebuild's scan).
        let agents = p.ctl_json(&["agents"]);
        let names: Vec<&str> = agents.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
        assert_eq!(names.len(), 2, "round {i}: {agents}");
        assert_eq!(p.agent_row("gone")["revoked"], true, "round {i}");
        let status = p.ctl(&["--json", "status"]);
        let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
        assert_eq!(s["sources"].as_array().map(Vec::len), Some(1), "round {i}: the policy is back: {s}");
        // After a rebuilt catalog, and every tenth round, every receipted snapshot is back.
        if rebuilt_now || i % 10 == 9 {
            let receipts: std::collections::BTreeSet<String> = std::fs::read_dir(vault.join("receipts"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            wait_for(&format!("round {i}: every receipted snapshot in the catalog"), Duration::from_secs(60), || {
                let known: std::collections::BTreeSet<String> =
                    p.snapshots("w1/data").iter().map(|s| s["snapshot_id"].as_str().unwrap().to_string()).collect();
                receipts.is_subset(&known)
            });
        }
    }
    eprintln!("100 controller kills in {:?} (seed {seed}); catalog rebuilt {rebuilt} times", started.elapsed());

    // A catalog sled cannot open is set aside and rebuilt from the vault through a scan job.
    let before: Vec<String> =
        p.snapshots("w1/data").iter().map(|s| s["snapshot_id"].as_str().unwrap().to_string()).collect();
    p.kill_controller();
    // Receipts the agent holds reach the vault without the controller: wait until it holds none.
    let pending = p.agents["w1"].state.join("receipts-pending");
    wait_for("the agent's pending receipts in the vault", Duration::from_secs(60), || {
        std::fs::read_dir(&pending).map(|d| d.count() == 0).unwrap_or(false)
    });
    let receipted: std::collections::BTreeSet<String> = std::fs::read_dir(vault.join("receipts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for f in restore_tests::files_below(&p.state.join("catalog.sled")) {
        std::fs::write(&f, b"this is not a sled file").unwrap();
    }
    p.start_controller();
    let log = p.controller_log(p.starts());
    assert!(log.contains("does not open") || log.contains("new catalog"), "{log}");
    wait_for("the snapshots to come back from the vault", Duration::from_secs(60), || {
        let now: std::collections::BTreeSet<String> =
            p.snapshots("w1/data").iter().map(|s| s["snapshot_id"].as_str().unwrap().to_string()).collect();
        before.iter().all(|id| now.contains(id))
    });
    // Snapshots whose receipt reached the vault come back with it verified. (A backup committed
    // while the controller was being killed may have no receipt: it is whole, and retention never
    // forgets it.)
    let verified: std::collections::BTreeSet<String> = p
        .snapshots("w1/data")
        .iter()
        .filter(|s| s["committed_unix"].as_i64().is_some())
        .map(|s| s["snapshot_id"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<_> = receipted.difference(&verified).collect();
    assert!(missing.is_empty(), "receipts not verified after the rebuild: {missing:?}");
    assert_eq!(p.agent_row("gone")["revoked"], true);
    let report = check_vault(&url, &pws[0], &[], false);
    assert!(report["problems"].as_array().unwrap().is_empty(), "{report}");
}

#[test]
fn a_running_job_survives_a_short_controller_outage() {
    let (mut p, _url, _pws) = plane_with("lease = \"30s\"\n", &["w1"]);
    let data = p.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    random_file(&data.join("x.bin"), 2 << 20, 9);
    assert!(p.apply_policy(&policy("w1", &[("w1", "data", &data, "0 0 1 1 *", 10)])).status.success());
    p.kill_agent("w1");
    p.start_agent_with("w1", &[("TRESOR_FAILPOINTS", "before-manifest-put=sleep:6000")]);
    p.wait_connected("w1");
    let job = job_of(&p.ctl_ok(&["backup", "w1/data", "--detach"]));
    wait_for("the job to be under way", Duration::from_secs(60), || p.agent_log("w1").contains("failpoint: sleeping"));
    // The controller dies mid-job and is back before the lease lapses: the agent finishes, keeps
    // the result in its outbox, and delivers it when the controller answers again.
    p.kill_controller();
    // The agent finishes while the controller is away and keeps the result in its outbox.
    let outbox = p.agents["w1"].state.join("outbox");
    wait_for("the result kept in the outbox", Duration::from_secs(60), || {
        std::fs::read_dir(&outbox).map(|d| d.count() > 0).unwrap_or(false)
    });
    p.start_controller();
    let done = p.ctl_json(&["watch", &job]);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(p.snapshots("w1/data").len(), 1);
    assert!(p.agent_log("w1").contains("controller reachable again"), "{}", p.agent_log("w1"));
}

#[test]
fn a_slot_missed_while_the_controller_was_down_runs_once() {
    let (mut p, _url, _pws) = plane_with("", &["w1"]);
    let data = p.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    random_file(&data.join("x.bin"), 64 << 10, 4);
    assert!(p.apply_policy(&policy("w1", &[("w1", "data", &data, "*/10 * * * * *", 1000)])).status.success());
    wait_for("a first scheduled run", Duration::from_secs(60), || !p.snapshots("w1/data").is_empty());
    p.kill_controller();
    let down = chrono_now();
    std::thread::sleep(Duration::from_secs(32)); // three slots pass
    p.start_controller();
    let up = chrono_now();
    // Wait until the scheduler has queued a regular slot after the restart too: by then any
    // second catch-up would have been queued before it.
    let slots = |log: &str| -> Vec<i64> {
        log.lines()
            .filter(|l| l.contains("scheduled backup queued"))
            .filter_map(|l| l.split("slot_unix=").nth(1)?.split_whitespace().next()?.parse().ok())
            .collect()
    };
    wait_for("the catch-up run, then a regular slot after the restart", Duration::from_secs(60), || {
        slots(&p.controller_log(p.starts())).iter().any(|s| *s >= up)
    });
    let log = p.controller_log(p.starts());
    let missed: Vec<i64> = slots(&log).into_iter().filter(|slot| *slot < up).collect();
    assert_eq!(missed.len(), 1, "slots missed between {down} and {up} are caught up once: {missed:?}\n{log}");
    assert!(missed[0] > down, "the caught-up slot is one that was missed");
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[test]
fn twenty_second_certificates_renew_without_a_failed_job() {
    let (p, _url, _pws) = plane_with("cert_lifetime = \"20s\"\n", &["w1"]);
    let data = p.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    random_file(&data.join("x.bin"), 64 << 10, 5);
    assert!(p.apply_policy(&policy("w1", &[("w1", "data", &data, "*/3 * * * * *", 1000)])).status.success());
    let mut expiries = std::collections::BTreeSet::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(65) {
        if let Some(t) = p.agent_row("w1")["cert_not_after_unix"].as_i64() {
            expiries.insert(t);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(expiries.len() >= 3, "the certificate was renewed: {expiries:?}");
    assert!(p.agent_log("w1").matches("certificate renewed").count() >= 3);
    let status = p.ctl(&["--json", "status"]);
    assert_eq!(status.status.code(), Some(0), "{}", String::from_utf8_lossy(&status.stdout));
    assert!(!p.agent_log("w1").contains("job failed"), "{}", p.agent_log("w1"));
    assert!(p.snapshots("w1/data").len() >= 10, "backups kept running");
    // Each renewal reconnects the job stream with the new certificate: allow for one in progress.
    wait_for("the agent connected", Duration::from_secs(30), || p.agent_row("w1")["connected"] == true);
}

/// The storage loses a snapshot's manifest (or serves a listing without it): the maintainer's
/// prune expects every snapshot the controller holds a receipt for, so GC deletes nothing,
/// twice, and the controller audits `gc.listing_short` and alerts, naming the snapshot. A listing
/// that fails outright stops GC the same way (`gc.aborted`).
#[test]
fn a_snapshot_listing_short_of_a_receipted_snapshot_makes_gc_delete_nothing() {
    let (p, url, _pws) = plane_with("", &["w1"]);
    let data = p.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    random_file(&data.join("a.bin"), 1 << 20, 81);
    assert!(p.apply_policy(&policy("w1", &[("w1", "data", &data, "0 0 1 1 *", 10)])).status.success());
    p.ctl_ok(&["backup", "w1/data"]);
    // The two snapshots share no file: whichever is lost, its packs are referenced by nothing
    // else, so only the receipts can keep GC from deleting them.
    std::fs::remove_file(data.join("a.bin")).unwrap();
    random_file(&data.join("b.bin"), 1 << 20, 82);
    p.ctl_ok(&["backup", "w1/data"]);
    let vault = Path::new(&url);
    let packs = restore_tests::files_below(&vault.join("data"));
    let lost = restore_tests::files_below(&vault.join("snapshots")).remove(0);
    let id = lost.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::remove_file(&lost).unwrap();
    for _ in 0..2 {
        let r = p.ctl_json(&["prune", "nas"]);
        assert_eq!(r["state"], "succeeded", "{r}");
        assert_eq!(r["packs_deleted"].as_u64().unwrap_or(0), 0, "{r}");
    }
    assert_eq!(restore_tests::files_below(&vault.join("data")), packs, "nothing deleted");
    wait_for("the alert", Duration::from_secs(60), || {
        let status = String::from_utf8_lossy(&p.ctl(&["status"]).stdout).into_owned();
        status.contains("snapshot listing lacked 1 snapshot") && status.contains(&id)
    });
    let ex = p.dir.path().join("export");
    p.ctl_ok(&["audit", "export", "--out", ex.to_str().unwrap()]);
    let log = std::fs::read_to_string(ex.join("audit.jsonl")).unwrap();
    assert!(log.lines().any(|l| l.contains("\"gc.listing_short\"") && l.contains(&id)), "{log}");

    // A listing that fails (here the directory is gone): GC stops, deletes nothing, and the
    // controller audits and alerts it too.
    std::fs::rename(vault.join("snapshots"), vault.join("snapshots-aside")).unwrap();
    let r = p.ctl_json(&["prune", "nas"]);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(restore_tests::files_below(&vault.join("data")), packs, "nothing deleted");
    wait_for("the stopped GC in the alerts", Duration::from_secs(60), || {
        String::from_utf8_lossy(&p.ctl(&["status"]).stdout).contains("GC stopped on a storage error")
    });
    p.ctl_ok(&["audit", "export", "--out", ex.to_str().unwrap()]);
    let log = std::fs::read_to_string(ex.join("audit.jsonl")).unwrap();
    assert!(log.lines().any(|l| l.contains("\"gc.aborted\"") && l.contains("snapshots/")), "{log}");
    std::fs::rename(vault.join("snapshots-aside"), vault.join("snapshots")).unwrap();
}
