//! Maintenance without a controller: `gc` and `forget`, which keep this host's record of the
//! snapshots to expect (`expected.rs`) so a short or failed snapshot listing makes GC delete
//! nothing (the controller keeps the same expectation from its receipts).

use serde_json::json;
use tresor_vault::gc::{self, GcOptions};
use tresor_vault::ids::SnapshotId;

use crate::cli::Global;
use crate::commands::{Outcome, cache_root, open};
use crate::exit;
use crate::expected::Expected;

/// `gc`: collect garbage in two phases (mark now, delete at a later run once the mark is older
/// than `grace`), refusing when the listing lacks a snapshot this host expects.
pub async fn gc(
    g: &Global,
    url: &str,
    grace: std::time::Duration,
    maintenance_interval: std::time::Duration,
    reset_expected: bool,
) -> anyhow::Result<Outcome> {
    let vault = open(g, url).await?;
    let root = cache_root(g)?;
    let mut expected = Expected::load(&vault.cache_dir(&root))?;
    if reset_expected {
        expected.ids.clear();
    }
    // Snapshots `forget` let go that a lock kept: forgotten now if their locks have passed.
    let mut pending = Expected::pending_forgets(&vault.cache_dir(&root))?;
    for id in pending.ids.clone() {
        if vault.forget_snapshot(&id).await?.is_none() {
            pending.ids.remove(&id);
        }
    }
    pending.save()?;
    let forgotten = pending.ids.clone();
    let opts = GcOptions { grace, guard: None, expected: expected.ids.clone(), forgotten, maintenance_interval };
    let report = match gc::run(vault, &root, &opts).await {
        Err(tresor_vault::Error::SnapshotsMissing(missing)) => {
            let text = format!(
                "GC deleted nothing: the vault's snapshot listing lacks {} snapshot(s) this host expects:\n  {}\nIf they were forgotten on purpose elsewhere, run `tresor-agent gc --reset-expected` after checking `snapshots`; otherwise the storage lost them or served a short listing: run `check`.",
                missing.len(),
                missing.join("\n  ")
            );
            return Ok(Outcome { json: json!({"listing_missing": missing}), text, code: exit::DAMAGE });
        }
        r => r?,
    };
    expected.ids = report.listed_snapshots.clone();
    expected.save()?;
    let mut text = format!(
        "{} snapshots, {} packs: {} unreferenced, {} marked, {} deleted ({} bytes)",
        report.snapshots,
        report.packs,
        report.unreferenced,
        report.packs_marked,
        report.packs_deleted,
        report.bytes_freed
    );
    if let Some(p) = &report.postponed {
        text.push_str(&format!("\n  sweep postponed: {p}"));
    }
    for w in &report.waiting {
        text.push_str(&format!("\n  waiting: {w}"));
    }
    if report.locks_extended > 0 || report.old_versions_removed > 0 {
        text.push_str(&format!(
            "\n  Object Lock extended on {} live object(s); {} old version(s) of rewritten objects removed",
            report.locks_extended, report.old_versions_removed
        ));
    }
    for w in report.kept.iter().chain(&report.false_index_entries).chain(&report.quarantined).chain(&report.lock_errors)
    {
        text.push_str(&format!("\n  WARNING {w}"));
    }
    let findings =
        report.kept.len() + report.false_index_entries.len() + report.quarantined.len() + report.lock_errors.len();
    Ok(Outcome {
        json: serde_json::to_value(&report)?,
        text,
        code: if findings == 0 { exit::OK } else { exit::DAMAGE },
    })
}

/// `forget`: remove snapshots given by id and those the retention `rules` let go (their data
/// stays until GC finds it unreferenced), and take them out of this host's record of what to
/// expect. Retention groups snapshots by host and source and reads the manifests' times: without
/// a controller there are no receipts, so an agent that forges its manifests' times can make its
/// own group's snapshots expire early (the controller's retention cannot be fooled so).
pub async fn forget(
    g: &Global,
    url: &str,
    specs: &[String],
    rules: &tresor_proto::retention::Retention,
    tz: chrono_tz::Tz,
    dry_run: bool,
) -> anyhow::Result<Outcome> {
    let vault = open(g, url).await?;
    let root = cache_root(g)?;
    let mut expected = Expected::load(&vault.cache_dir(&root))?;
    let mut chosen: Vec<(SnapshotId, String)> = Vec::new();
    for spec in specs {
        let (id, _) = vault.resolve_snapshot(spec).await?;
        chosen.push((id, "named".into()));
    }
    if !rules.keeps_everything() {
        // (host, source) to each snapshot's id and time.
        let mut groups: std::collections::BTreeMap<(String, String), Vec<Timed>> = Default::default();
        for (id, m) in vault.snapshots().await? {
            // An unreadable manifest has no time to go by: it is never forgotten.
            let (group, time) = match &m {
                Ok(m) => (
                    (m.host.clone(), m.source.clone()),
                    chrono::DateTime::parse_from_rfc3339(&m.time).ok().map(|t| t.timestamp_millis()),
                ),
                Err(_) => (("?".into(), id.to_string()), None),
            };
            groups.entry(group).or_default().push((id.to_string(), time));
        }
        for ((host, source), snaps) in groups {
            for id in tresor_proto::retention::to_forget(&snaps, rules, tz) {
                let id: SnapshotId = id.parse().map_err(|_| anyhow::anyhow!("bad snapshot id {id}"))?;
                if !chosen.iter().any(|(c, _)| *c == id) {
                    chosen.push((id, format!("retention ({rules}) of {host} {source}")));
                }
            }
        }
    }
    if !dry_run {
        // The record first: a snapshot gone from the vault but still expected would stop GC.
        for (id, _) in &chosen {
            expected.ids.remove(id);
        }
        expected.save()?;
    }
    let (mut forgotten, mut locked) = (Vec::new(), Vec::new());
    let verb = if dry_run { "would forget" } else { "forgot" };
    let mut lines = String::new();
    let mut pending = Expected::pending_forgets(&vault.cache_dir(&root))?;
    for (id, why) in &chosen {
        if !dry_run && let Some(kept) = vault.forget_snapshot(id).await? {
            // `gc` forgets it once the lock passes, and stops extending the lock.
            pending.ids.insert(*id);
            lines.push_str(&format!("\n  {id}: not yet (gc forgets it once its lock passes): {kept}"));
            locked.push(json!({"id": id.to_string(), "why": why, "kept": kept}));
            continue;
        }
        pending.ids.remove(id);
        lines.push_str(&format!("\n  {id}: {why}"));
        forgotten.push(json!({"id": id.to_string(), "why": why}));
    }
    if !dry_run {
        pending.save()?;
    }
    let mut text = format!("{verb} {} snapshot(s)", forgotten.len());
    if !locked.is_empty() {
        text.push_str(&format!("; {} kept by Object Lock until their retention passes", locked.len()));
    }
    text.push_str(&lines);
    Ok(Outcome::ok_with(json!({"forgotten": forgotten, "locked": locked, "dry_run": dry_run}), text))
}

/// A snapshot id and its manifest's time (Unix ms), if it has one to go by.
type Timed = (String, Option<i64>);
