//! Output helpers and the job watcher.

use std::io::{IsTerminal, Write};

use serde_json::json;
use tresor_proto::pb;
use tresor_proto::pb::job_result::Kind;

use crate::client::{Admin, status_err};
use crate::exit;

/// A result: pretty JSON with `--json`, else the text (nothing for empty text).
pub fn out(json_mode: bool, value: serde_json::Value, text: String) {
    if json_mode {
        println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    } else if !text.is_empty() {
        println!("{text}");
    }
}

/// A source's or plan's state in a word.
pub fn state_word(failing: bool, overdue: bool) -> &'static str {
    match (failing, overdue) {
        (true, _) => "FAILING",
        (false, true) => "OVERDUE",
        _ => "ok",
    }
}

/// Bytes for people.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// A Unix time for people (UTC), or "never".
pub fn when(t: i64) -> String {
    if t <= 0 {
        return "never".into();
    }
    chrono::DateTime::from_timestamp(t, 0).map_or_else(|| t.to_string(), |d| d.format("%Y-%m-%d %H:%M:%SZ").to_string())
}

fn summary(ev: &pb::JobEvent) -> (serde_json::Value, String) {
    let Some(r) = &ev.result else { return (json!({}), String::new()) };
    match &r.kind {
        Some(Kind::Backup(b)) => {
            let s = b.snapshot.clone().unwrap_or_default();
            let mut text = format!(
                "snapshot {} of {}/{} saved: {} files, {} in total, {} new, in {:.1} s",
                s.snapshot_id,
                s.agent,
                s.source,
                s.files,
                human(s.bytes_total),
                human(s.bytes_new),
                s.duration_ms as f64 / 1000.0
            );
            for sk in &b.skipped {
                text.push_str(&format!("\n  skipped {sk}"));
            }
            (
                json!({"snapshot_id": s.snapshot_id, "files": s.files, "bytes_total": s.bytes_total, "bytes_new": s.bytes_new, "duration_ms": s.duration_ms, "skipped": b.skipped}),
                text,
            )
        }
        Some(Kind::Drill(d)) => {
            let failed = d.checks.iter().filter(|c| !c.ok).count();
            let text = format!(
                "drill of snapshot {} finished on {}: {} checks, {failed} failed, RTO {:.1} s; the verdict is in its report (tresorctl report show {})",
                &d.snapshot_id[..d.snapshot_id.len().min(12)],
                ev.agent,
                d.checks.len(),
                d.rto_seconds,
                ev.job_id
            );
            (
                json!({"drill_id": ev.job_id, "snapshot_id": d.snapshot_id, "checks": d.checks.len(), "failed": failed, "rto_seconds": d.rto_seconds}),
                text,
            )
        }
        Some(Kind::Restore(r)) => {
            let verb = if r.dry_run { "would restore" } else { "restored" };
            let text = format!(
                "{verb} snapshot {} on {} to {}: {} files ({}), {} other entries, {} already in place, in {:.1} s",
                &r.snapshot_id[..r.snapshot_id.len().min(12)],
                ev.agent,
                r.target,
                r.files,
                human(r.bytes),
                r.others,
                r.already_in_place,
                r.seconds
            );
            (
                json!({"snapshot_id": r.snapshot_id, "agent": ev.agent, "target": r.target, "files": r.files, "bytes": r.bytes, "others": r.others, "already_in_place": r.already_in_place, "seconds": r.seconds, "dry_run": r.dry_run}),
                text,
            )
        }
        Some(Kind::Check(c)) => (
            json!({"ok": c.ok, "packs_read": c.packs_read, "chunks_verified": c.chunks_verified}),
            format!("check passed: {} packs read, {} chunks verified", c.packs_read, c.chunks_verified),
        ),
        Some(Kind::Scan(s)) => (
            json!({"vault_id": s.vault_id, "snapshots": s.snapshots.len()}),
            format!("vault {} scanned: {} snapshots", s.vault_id, s.snapshots.len()),
        ),
        Some(Kind::Prune(p)) => {
            let mut text = format!(
                "forgot {} snapshots; GC deleted {} packs ({}), marked {} of {} unreferenced packs for the next run",
                p.forgotten.len(),
                p.packs_deleted,
                human(p.bytes_freed),
                p.packs_marked,
                p.packs_unreferenced
            );
            if !p.postponed.is_empty() {
                text.push_str(&format!("\nsweep postponed: {}", p.postponed));
            }
            (
                json!({"forgotten": p.forgotten, "packs_deleted": p.packs_deleted, "bytes_freed": p.bytes_freed, "packs_marked": p.packs_marked, "packs_unreferenced": p.packs_unreferenced, "segments_compacted": p.segments_compacted, "postponed": p.postponed}),
                text,
            )
        }
        Some(Kind::Copy(r)) => {
            let mut text = format!(
                "copied {} snapshot(s) ({} packs, {}; {} packs already there) and {} signed document(s); the copy holds {}",
                r.copied.len(),
                r.packs_copied,
                human(r.bytes_copied),
                r.packs_present,
                r.documents_copied,
                r.held.len()
            );
            for f in &r.failed {
                text.push_str(&format!("\nFAILED {f}"));
            }
            for w in &r.slots_waiting {
                text.push_str(&format!("\nslot removed at the source, kept at the copy by Object Lock: {w}"));
            }
            (
                json!({"copied": r.copied, "held": r.held, "failed": r.failed, "packs_copied": r.packs_copied, "packs_present": r.packs_present, "bytes_copied": r.bytes_copied, "receipts_copied": r.receipts_copied, "documents_copied": r.documents_copied, "created": r.created, "epochs_copied": r.epochs_copied, "slots_copied": r.slots_copied, "slots_removed": r.slots_removed, "slots_waiting": r.slots_waiting}),
                text,
            )
        }
        _ => (json!({}), String::new()),
    }
}

/// Follow a job to its end; returns the exit code.
pub async fn watch(c: &mut Admin, job_id: &str, json_mode: bool) -> anyhow::Result<u8> {
    follow(c, job_id, json_mode, true).await
}

/// Follow a job showing only its progress; the caller prints the outcome.
pub async fn watch_quiet(c: &mut Admin, job_id: &str, json_mode: bool) -> anyhow::Result<u8> {
    follow(c, job_id, json_mode, false).await
}

async fn follow(c: &mut Admin, job_id: &str, json_mode: bool, print_outcome: bool) -> anyhow::Result<u8> {
    let mut stream = c.watch_job(pb::JobHandle { job_id: job_id.to_string() }).await.map_err(status_err)?.into_inner();
    let tty = std::io::stderr().is_terminal() && !json_mode;
    let mut last_line = String::new();
    while let Some(ev) = stream.message().await.map_err(status_err)? {
        let line = match ev.state.as_str() {
            "queued" if ev.attempt > 0 => {
                format!("{} {job_id}: attempt {} failed ({}); retrying", ev.kind, ev.attempt, ev.error)
            }
            "queued" => format!("{} {job_id}: queued for {}", ev.kind, ev.agent),
            "running" => format!(
                "{} {job_id}: running on {} (attempt {}) {} {}",
                ev.kind,
                ev.agent,
                ev.attempt,
                ev.phase,
                if ev.bytes_done > 0 { human(ev.bytes_done) } else { String::new() }
            ),
            _ => String::new(),
        };
        if !json_mode && !line.is_empty() && line != last_line {
            let mut err = std::io::stderr();
            let _ = if tty { write!(err, "\r\x1b[2K{line}") } else { writeln!(err, "{line}") };
            last_line = line;
        }
        match ev.state.as_str() {
            "succeeded" => {
                if tty {
                    eprintln!();
                }
                if !print_outcome {
                    return Ok(exit::OK);
                }
                let (mut j, text) = summary(&ev);
                if let Some(o) = j.as_object_mut() {
                    let _ = o.insert("job_id".into(), job_id.into());
                    let _ = o.insert("state".into(), "succeeded".into());
                }
                if json_mode {
                    println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
                } else {
                    println!("{text}");
                }
                return Ok(exit::OK);
            }
            "failed" => {
                if tty {
                    eprintln!();
                }
                if json_mode && print_outcome {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &json!({"job_id": job_id, "state": "failed", "error": ev.error, "attempts": ev.attempt})
                        )
                        .unwrap_or_default()
                    );
                } else {
                    eprintln!("{} {job_id} failed after {} attempt(s): {}", ev.kind, ev.attempt, ev.error);
                }
                return Ok(exit::JOB_FAILED);
            }
            _ => {}
        }
    }
    anyhow::bail!("the controller closed the watch of job {job_id} before it ended; run `tresorctl watch {job_id}`")
}
