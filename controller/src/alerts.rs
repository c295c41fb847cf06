//! Alerts: conditions found by [`problems`] are sent once when they start and once when they
//! clear, to a webhook (HTTP POST of JSON) and/or a command (JSON on stdin). Delivery runs on its
//! own task behind a bounded queue, so a slow receiver never stalls the scheduler.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::config::Alerts;
use crate::core::{Controller, now_unix};
use crate::error::Result;

/// One condition that needs a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What kind: backup_failed, rpo_overdue, agent_offline, cert_expiring, check_failed.
    pub kind: &'static str,
    /// What it is about ("AGENT/SOURCE" or an agent name).
    pub subject: String,
    /// For people.
    pub message: String,
}

/// An alert as delivered.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// "firing" or "resolved".
    pub state: &'static str,
    /// The condition.
    #[serde(flatten)]
    pub problem: Problem,
    /// When (Unix seconds).
    pub at_unix: i64,
}

/// Bound of the delivery queue, in alerts; when full, new alerts are logged and dropped (the
/// condition is still in `tresorctl status` and in the metrics).
pub const ALERT_QUEUE: usize = 64;
/// How often conditions are evaluated.
pub const EVALUATE_EVERY: Duration = Duration::from_secs(2);

/// Everything that is failing or overdue now.
///
/// # Errors
/// Catalog failures.
pub fn problems(ctl: &Controller) -> Result<Vec<Problem>> {
    let now = now_unix();
    let mut out = Vec::new();
    let maintainers: BTreeMap<String, String> =
        ctl.policies().values().flat_map(|p| p.vaults.iter().map(|v| (v.maintainer.clone(), v.name.clone()))).collect();
    for policy in ctl.policies().values() {
        for s in &policy.sources {
            let key = format!("{}/{}", s.agent, s.name);
            let rec = ctl.source_state(&key)?;
            let rpo = s.rpo.as_secs() as i64;
            let since = rec.rpo_since();
            if rec.overdue(now, rpo) {
                let message = if rec.last_success_unix == 0 {
                    format!(
                        "{key}: no good backup since the policy was applied {} min ago (RPO target {} min)",
                        (now - since) / 60,
                        rpo / 60
                    )
                } else {
                    format!("{key}: last good backup {} min ago, RPO target {} min", (now - since) / 60, rpo / 60)
                };
                out.push(Problem { kind: "rpo_overdue", subject: key.clone(), message });
            }
            if rec.failures > 0 {
                out.push(Problem {
                    kind: "backup_failed",
                    subject: key.clone(),
                    message: format!("{key}: backup failed ({} time(s) in a row): {}", rec.failures, rec.last_error),
                });
            }
            if !rec.refused_result.is_empty() {
                out.push(Problem {
                    kind: "result_refused",
                    subject: key.clone(),
                    message: format!("{key}: a backup result of its agent was refused: {}", rec.refused_result),
                });
            }
            if !rec.last_check_error.is_empty() {
                out.push(Problem {
                    kind: "check_failed",
                    subject: format!("{}/{}", s.vault, key),
                    message: format!("vault {} (checked for {key}): {}", s.vault, rec.last_check_error),
                });
            }
        }
    }
    for c in ctl.copy_status(now)? {
        if c.overdue {
            out.push(Problem {
                kind: "copy_overdue",
                subject: format!("{}→{}", c.from, c.to),
                message: format!(
                    "second site {} of vault {}: {} of {} snapshot(s) not copied yet, the oldest of them at one site only for {} s (copy_rpo {} s)",
                    c.to,
                    c.from,
                    c.snapshots - c.copied,
                    c.snapshots,
                    c.lag_seconds,
                    c.rpo_seconds
                ),
            });
        }
        if !c.last_error.is_empty() {
            out.push(Problem {
                kind: "copy_failed",
                subject: format!("{}→{}", c.from, c.to),
                message: format!("copy of vault {} to {} failed: {}", c.from, c.to, c.last_error),
            });
        }
    }
    for v in ctl.policies().values().flat_map(|p| p.vaults.iter()) {
        let rec = ctl.catalog.vault(&v.name)?;
        if !rec.gc_warning.is_empty() {
            out.push(Problem {
                kind: "gc_kept_live_packs",
                subject: v.name.clone(),
                message: format!(
                    "vault {}: GC kept packs a planted or damaged index segment would have had deleted, set aside a session marker that does not open, found the snapshot listing short, or stopped on a storage error; run check: {}",
                    v.name, rec.gc_warning
                ),
            });
        }
    }
    for v in ctl.policies().values().flat_map(|p| p.vaults.iter()) {
        let rec = ctl.catalog.vault(&v.name)?;
        if !rec.lock_error.is_empty() {
            out.push(Problem {
                kind: "object_lock_extension_failed",
                subject: v.name.clone(),
                message: format!(
                    "vault {}: the maintainer could not extend the Object Lock of live objects, which may become deletable when their locks run out: {}",
                    v.name, rec.lock_error
                ),
            });
        }
        if !rec.revoke_slots.is_empty() {
            let why = if rec.revoke_error.is_empty() {
                "waiting for the maintainer's next prune".to_string()
            } else {
                format!("the maintainer could not remove them: {}", rec.revoke_error)
            };
            out.push(Problem {
                kind: "revocation_pending",
                subject: v.name.clone(),
                message: format!(
                    "vault {}: key slots of revoked agents ({}) still open data written from now on; {why}",
                    v.name,
                    rec.revoke_slots.join(", ")
                ),
            });
        }
    }
    out.extend(storage_problems(ctl));
    // A damaged drill record must not stop the other alerts: it becomes a problem of its own.
    match drill_problems(ctl, now) {
        Ok(p) => out.extend(p),
        Err(e) => out.push(Problem {
            kind: "drill_state_unreadable",
            subject: "catalog".into(),
            message: format!("drill states cannot be read from the catalog: {e}"),
        }),
    }
    let offline_after = ctl.config.agent_offline_after.as_secs() as i64;
    let lifetime = ctl.config.cert_lifetime.as_secs() as i64;
    for a in ctl.agent_infos() {
        if a.revoked {
            continue;
        }
        let seen = a.last_seen_unix.max(a.enrolled_unix);
        if !a.connected && now - seen > offline_after {
            let role = maintainers.get(&a.name).map(|v| format!(" (maintainer of vault {v})")).unwrap_or_default();
            out.push(Problem {
                kind: "agent_offline",
                subject: a.name.clone(),
                message: format!("agent {}{role} not seen for {} s", a.name, now - seen),
            });
        }
        // Connected agents renew at two thirds of the life; one with less than a third left is not
        // renewing.
        if a.cert_not_after_unix - now < lifetime / 3 {
            out.push(Problem {
                kind: "cert_expiring",
                subject: a.name.clone(),
                message: format!(
                    "the certificate of agent {} expires in {} s",
                    a.name,
                    (a.cert_not_after_unix - now).max(0)
                ),
            });
        }
    }
    Ok(out)
}

/// What connected agents see of their storage: a target that cannot confirm durability, and an
/// endpoint of a cluster they failed over from (a node down, as a vault's agents see it).
fn storage_problems(ctl: &Controller) -> Vec<Problem> {
    let mut out = Vec::new();
    for a in ctl.agent_infos().into_iter().filter(|a| !a.revoked) {
        for v in &a.vaults {
            let subject = format!("{}/{}", v.name, a.name);
            if !v.durability_unverified.is_empty() {
                out.push(Problem {
                    kind: "durability_unverified",
                    subject: subject.clone(),
                    message: format!(
                        "vault {} (agent {}): durability unverified: {}; a crash of the storage may lose acknowledged backups",
                        v.name, a.name, v.durability_unverified
                    ),
                });
            }
            if !v.endpoint_failover.is_empty() {
                out.push(Problem {
                    kind: "storage_endpoint_failover",
                    subject,
                    message: format!("vault {} (agent {}): {}", v.name, a.name, v.endpoint_failover),
                });
            }
        }
    }
    out
}

/// Drills: a plan overdue, and the newest drill of a source FAIL.
fn drill_problems(ctl: &Controller, now: i64) -> Result<Vec<Problem>> {
    let mut out = Vec::new();
    for p in ctl.plan_states(now)? {
        if p.overdue {
            let key = format!("{}/{}", p.policy, p.plan.name);
            let last = if p.record.last_run_unix == 0 {
                "never ran".to_string()
            } else {
                format!("last ran {} min ago", (now - p.record.last_run_unix) / 60)
            };
            out.push(Problem {
                kind: "drill_overdue",
                subject: key.clone(),
                message: format!("drill plan {key}: {last}, a scheduled drill is missing"),
            });
        }
    }
    for (source, d) in ctl.newest_drills()? {
        if d.verdict != "PASS" {
            out.push(Problem {
                kind: "drill_failed",
                subject: source.clone(),
                message: format!(
                    "the newest drill of {source} ({}) FAILED: RTO {:.0} s of {:.0} s, RPO {:.0} s of {:.0} s; see tresorctl report show {}",
                    d.drill_id, d.rto_s, d.rto_target_s, d.rpo_s, d.rpo_target_s, d.drill_id
                ),
            });
        }
    }
    Ok(out)
}

/// Evaluate conditions until `stop`, sending starts and ends to the delivery task.
pub async fn run(ctl: Arc<Controller>, mut stop: watch::Receiver<bool>) {
    let (tx, rx) = mpsc::channel::<Alert>(ALERT_QUEUE);
    let delivery = tokio::spawn(deliver(ctl.config.alerts.clone(), rx));
    let mut active: BTreeMap<(String, String), Problem> = BTreeMap::new();
    loop {
        match problems(&ctl) {
            Ok(now) => {
                let current: BTreeMap<(String, String), Problem> =
                    now.into_iter().map(|p| ((p.kind.to_string(), p.subject.clone()), p)).collect();
                for (k, p) in &current {
                    if !active.contains_key(k) {
                        send(&tx, Alert { state: "firing", problem: p.clone(), at_unix: now_unix() });
                    }
                }
                for (k, p) in &active {
                    if !current.contains_key(k) {
                        send(&tx, Alert { state: "resolved", problem: p.clone(), at_unix: now_unix() });
                    }
                }
                active = current;
                ctl.set_alerts_active(active.len());
            }
            Err(e) => tracing::error!(error = %e, "cannot evaluate alert conditions"),
        }
        tokio::select! {
            _ = stop.changed() => break,
            () = tokio::time::sleep(EVALUATE_EVERY) => {}
        }
    }
    drop(tx);
    let _ = delivery.await;
}

fn send(tx: &mpsc::Sender<Alert>, a: Alert) {
    tracing::warn!(kind = a.problem.kind, subject = %a.problem.subject, state = a.state, "{}", a.problem.message);
    if tx.try_send(a).is_err() {
        tracing::error!("alert queue full; alert dropped (see tresorctl status)");
    }
}

async fn deliver(cfg: Alerts, mut rx: mpsc::Receiver<Alert>) {
    while let Some(a) = rx.recv().await {
        let body = serde_json::to_vec(&a).unwrap_or_default();
        if let Some(url) = &cfg.webhook {
            for attempt in 1..=3u32 {
                match post(url, &body).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(url, attempt, error = %e, "alert webhook failed");
                        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                    }
                }
            }
        }
        if let Some(cmd) = &cfg.command
            && let Err(e) = run_command(cmd, &body).await
        {
            tracing::warn!(command = ?cmd, error = %e, "alert command failed");
        }
    }
}

/// What of the controller's environment an alert command sees: search path, locale and time
/// zone. Tokens and key paths in the controller's environment never reach it.
const ALERT_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ", "HOME"];

async fn run_command(cmd: &[String], body: &[u8]) -> std::io::Result<()> {
    let mut child = tokio::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .env_clear()
        .envs(ALERT_ENV.iter().filter_map(|k| std::env::var_os(k).map(|v| (*k, v))))
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body).await?;
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .map_err(|_| std::io::Error::other("timed out after 30 s"))??;
    if status.success() { Ok(()) } else { Err(std::io::Error::other(format!("exited with {status}"))) }
}

/// POST `body` to an `http://host:port/path` URL (HTTP/1.1, one request per connection).
async fn post(url: &str, body: &[u8]) -> std::io::Result<()> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        std::io::Error::other("only http:// webhooks are sent directly; put a relay in front for https")
    })?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr = if host.contains(':') { host.to_string() } else { format!("{host}:80") };
    let work = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply).await?;
        let line = String::from_utf8_lossy(&reply);
        let code = line.split_whitespace().nth(1).unwrap_or("");
        if code.starts_with('2') { Ok(()) } else { Err(std::io::Error::other(format!("webhook answered {code:?}"))) }
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| std::io::Error::other("timed out after 10 s"))?
}
