//! Prometheus `/metrics` over plain HTTP/1.1 on its own address (keep it on loopback or behind
//! the scrape network). The text format is simple enough not to need an HTTP framework.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::core::Controller;

/// Render the metrics text.
pub fn render(ctl: &Controller) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
    let mut last = vec![];
    let mut dur = vec![];
    let mut new = vec![];
    let mut total = vec![];
    let mut dedup = vec![];
    let mut fails = vec![];
    let mut overdue = vec![];
    let now = crate::core::now_unix();
    for p in ctl.policies().values() {
        for s in &p.sources {
            let key = format!("{}/{}", s.agent, s.name);
            let Ok(r) = ctl.source_state(&key) else { continue };
            let l = format!("agent=\"{}\",source=\"{}\",vault=\"{}\"", s.agent, s.name, s.vault);
            last.push((l.clone(), r.last_success_unix as f64));
            dur.push((l.clone(), r.last_duration_ms as f64 / 1000.0));
            new.push((l.clone(), r.last_bytes_new as f64));
            total.push((l.clone(), r.last_bytes_total as f64));
            let ratio = if r.last_bytes_new > 0 { r.last_bytes_total as f64 / r.last_bytes_new as f64 } else { 0.0 };
            dedup.push((l.clone(), ratio));
            fails.push((l.clone(), r.failures_total as f64));
            overdue.push((l, f64::from(u8::from(r.overdue(now, s.rpo.as_secs() as i64)))));
        }
    }
    gauge("tresor_source_last_success_timestamp_seconds", "Receipt time of the last good backup.", last);
    gauge("tresor_source_last_duration_seconds", "Duration of the last good backup.", dur);
    gauge("tresor_source_last_bytes_new", "Bytes new in the last good backup.", new);
    gauge("tresor_source_last_bytes_total", "Bytes in the last good backup.", total);
    gauge("tresor_source_dedup_ratio", "Bytes in total over bytes new, last good backup.", dedup);
    gauge("tresor_source_failures_total", "Failed backup attempts.", fails);
    gauge("tresor_source_overdue", "1 when the last good backup is older than the RPO target.", overdue);
    let agents = ctl.agent_infos();
    gauge(
        "tresor_agent_connected",
        "1 when the agent has its job stream open.",
        agents
            .iter()
            .filter(|a| !a.revoked)
            .map(|a| (format!("agent=\"{}\"", a.name), f64::from(u8::from(a.connected))))
            .collect(),
    );
    gauge(
        "tresor_agent_cert_expiry_timestamp_seconds",
        "Expiry of the agent's newest certificate.",
        agents
            .iter()
            .filter(|a| !a.revoked)
            .map(|a| (format!("agent=\"{}\"", a.name), a.cert_not_after_unix as f64))
            .collect(),
    );
    let now = crate::core::now_unix();
    let plans = ctl.plan_states(now).unwrap_or_default();
    let plan_label = |p: &crate::drills::PlanState| {
        format!("policy=\"{}\",plan=\"{}\",source=\"{}/{}\"", p.policy, p.plan.name, p.plan.agent, p.plan.source)
    };
    gauge(
        "tresor_drill_plan_overdue",
        "1 when a drill plan missed a scheduled drill (past its grace).",
        plans.iter().map(|p| (plan_label(p), f64::from(u8::from(p.overdue)))).collect(),
    );
    gauge(
        "tresor_drill_plan_failing",
        "1 when the plan's last drill FAILED.",
        plans.iter().map(|p| (plan_label(p), f64::from(u8::from(p.failing)))).collect(),
    );
    let newest = ctl.newest_drills().unwrap_or_default();
    let src = |s: &str| format!("source=\"{s}\"");
    gauge(
        "tresor_drill_last_pass",
        "1 when the newest drill of the source passed, 0 when it FAILED.",
        newest.values().map(|d| (src(&d.source), f64::from(u8::from(d.verdict == "PASS")))).collect(),
    );
    gauge(
        "tresor_drill_last_timestamp_seconds",
        "Start of the newest drill of the source.",
        newest.values().map(|d| (src(&d.source), d.started_unix as f64)).collect(),
    );
    gauge(
        "tresor_drill_last_rto_seconds",
        "Measured RTO of the newest drill of the source.",
        newest.values().map(|d| (src(&d.source), d.rto_s)).collect(),
    );
    gauge(
        "tresor_drill_last_rpo_seconds",
        "Achieved RPO of the newest drill of the source.",
        newest.values().map(|d| (src(&d.source), d.rpo_s)).collect(),
    );
    let copies = ctl.copy_status(now).unwrap_or_default();
    let pair = |c: &tresor_proto::pb::CopyStatus| format!("from=\"{}\",to=\"{}\"", c.from, c.to);
    gauge(
        "tresor_copy_lag_seconds",
        "How long the oldest snapshot the second site should hold and lacks has existed at one site only (0: none).",
        copies.iter().map(|c| (pair(c), c.lag_seconds as f64)).collect(),
    );
    gauge(
        "tresor_copy_overdue",
        "1 when the second site's lag is past its copy_rpo.",
        copies.iter().map(|c| (pair(c), f64::from(u8::from(c.overdue)))).collect(),
    );
    gauge(
        "tresor_copy_last_success_timestamp_seconds",
        "End of the last copy job that copied everything it was sent for.",
        copies.iter().map(|c| (pair(c), c.last_success_unix as f64)).collect(),
    );
    gauge(
        "tresor_copy_snapshots_missing",
        "Snapshots the second site should hold and lacks.",
        copies.iter().map(|c| (pair(c), f64::from(c.snapshots - c.copied))).collect(),
    );
    gauge(
        "tresor_alerts_active",
        "Alert conditions active now (see tresorctl status).",
        vec![(String::new(), ctl.alerts_active() as f64)],
    );
    out
}

/// Scrapes answered at once; more connections wait for a slot.
const SCRAPES_AT_ONCE: usize = 4;

/// Serve `/metrics` until `stop` turns true.
pub async fn serve(ctl: Arc<Controller>, addr: SocketAddr, mut stop: watch::Receiver<bool>) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot serve /metrics");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(SCRAPES_AT_ONCE));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (mut sock, _) = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
        };
        let ctl = ctl.clone();
        drop(tokio::spawn(async move {
            let _permit = permit;
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /metrics ") {
                ("200 OK", render(&ctl))
            } else {
                ("404 Not Found", "only /metrics is served here\n".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        }));
    }
}
