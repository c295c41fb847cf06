//! Drills, their signed reports and the audit log: `drill run|list`, `report show|verify`,
//! `audit show|export|verify`. Verification needs only files and the pinned public key.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};
use tresor_proto::pb;
use tresor_report::html::Lang;

use crate::client::{Admin, status_err};
use crate::exit;
use crate::print::{out, when};

#[derive(Debug, Subcommand)]
pub enum DrillAction {
    /// Run a restore drill of AGENT/SOURCE now and wait for its verdict (exit 5 if it FAILED).
    Run {
        /// AGENT/SOURCE.
        selector: String,
        /// The drill plan to follow (default: the source's first plan, else defaults).
        #[arg(long)]
        plan: Option<String>,
        /// Snapshot id or prefix (default: the plan's choice).
        #[arg(long)]
        snapshot: Option<String>,
        /// Keep the sandbox for inspection.
        #[arg(long)]
        keep: bool,
        /// Return once the drill is queued.
        #[arg(long)]
        detach: bool,
    },
    /// Drills and drill plans, newest first (exit 4 if a plan is overdue or a newest drill FAILED).
    List {
        /// AGENT or AGENT/SOURCE.
        selector: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReportAction {
    /// Print a drill's signed report: JSON, or the HTML page (--html).
    Show {
        /// Drill id (or a unique prefix).
        id: String,
        /// The accessible HTML page instead of the JSON.
        #[arg(long)]
        html: bool,
        /// Language of the HTML page: de or en.
        #[arg(long, default_value = "de")]
        lang: String,
        /// Write to this file instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Check a signed report file offline against the pinned public key (exit 9 if it was changed,
    /// is unsigned, or was signed by another key). Needs no controller.
    Verify {
        /// The report (JSON).
        file: PathBuf,
        /// The controller's report-signing public key (PEM), the trust anchor to pin.
        #[arg(long, value_name = "FILE", env = "TRESOR_REPORT_PUBKEY")]
        pubkey: PathBuf,
    },
}

/// Text from reports and the log (file names from backed-up hosts among it) with control
/// characters shown as escapes, so nothing printed can drive the terminal.
pub(crate) fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

/// `drill run` and `drill list`.
pub async fn drill(c: &mut Admin, action: DrillAction, j: bool) -> anyhow::Result<u8> {
    match action {
        DrillAction::Run { selector, plan, snapshot, keep, detach } => {
            let req = pb::StartDrillRequest {
                selector: selector.clone(),
                plan: plan.unwrap_or_default(),
                snapshot: snapshot.unwrap_or_default(),
                keep,
            };
            let h = c.start_drill(req).await.map_err(status_err)?.into_inner();
            if detach {
                out(j, json!({"drill_id": h.job_id}), format!("drill of {selector} queued as {}", h.job_id));
                return Ok(exit::OK);
            }
            crate::print::watch_quiet(c, &h.job_id, j).await?;
            // A drill that could not run still has a report (FAIL), unless the job never reached
            // an agent. The job's end is announced just before its report is kept: ask a few times.
            for _ in 0..20 {
                match c.get_report(pb::GetReportRequest { drill_id: h.job_id.clone() }).await {
                    Ok(r) => {
                        let doc: Value = serde_json::from_str(&r.get_ref().json).context("the report is not JSON")?;
                        let pass = doc["verdict"] == "PASS";
                        out(j, doc.clone(), verdict_text(&doc));
                        return Ok(if pass { exit::OK } else { exit::JOB_FAILED });
                    }
                    Err(s) if s.code() == tonic::Code::NotFound => {
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    }
                    Err(s) => return Err(status_err(s)),
                }
            }
            eprintln!("drill {} ended without a report; see tresorctl watch {}", h.job_id, h.job_id);
            Ok(exit::JOB_FAILED)
        }
        DrillAction::List { selector } => {
            let r = c
                .list_drills(pb::ListDrillsRequest { selector: selector.unwrap_or_default() })
                .await
                .map_err(status_err)?
                .into_inner();
            let mut text = String::from(
                "DRILL                 SOURCE                  STARTED                    VERDICT  RTO (s) / TARGET   RPO (s) / TARGET\n",
            );
            let mut newest = std::collections::BTreeMap::new();
            for d in &r.drills {
                let _ = newest.entry(d.source.clone()).or_insert(d.verdict.clone());
                text.push_str(&format!(
                    "{:<21} {:<23} {:<26} {:<8} {:>7.1} / {:<8.0} {:>7.0} / {:<8.0}\n",
                    printable(&d.drill_id),
                    printable(&d.source),
                    printable(&d.started),
                    printable(&d.verdict),
                    d.rto_s,
                    d.rto_target_s,
                    d.rpo_s,
                    d.rpo_target_s
                ));
            }
            text.push_str("\nPLAN                          SOURCE                  LAST RUN               LAST     NEXT RUN               STATE\n");
            for p in &r.plans {
                let state = crate::print::state_word(p.failing, p.overdue);
                text.push_str(&format!(
                    "{:<29} {:<23} {:<22} {:<8} {:<22} {state}\n",
                    format!("{}/{}", p.policy, p.plan),
                    p.source,
                    when(p.last_run_unix),
                    if p.last_verdict.is_empty() { "-" } else { &p.last_verdict },
                    when(p.next_run_unix)
                ));
            }
            let problems = r.plans.iter().any(|p| p.overdue || p.failing) || newest.values().any(|v| v != "PASS");
            let drills: Vec<Value> = r.drills.iter().map(|d| json!({"drill_id": d.drill_id, "source": d.source, "policy": d.policy, "plan": d.plan, "trigger": d.trigger, "snapshot": d.snapshot, "started": d.started, "verdict": d.verdict, "rto_s": d.rto_s, "rto_target_s": d.rto_target_s, "rpo_s": d.rpo_s, "rpo_target_s": d.rpo_target_s, "sandbox": d.sandbox})).collect();
            let plans: Vec<Value> = r.plans.iter().map(|p| json!({"policy": p.policy, "plan": p.plan, "source": p.source, "last_run_unix": p.last_run_unix, "last_verdict": p.last_verdict, "last_drill_id": p.last_drill_id, "next_run_unix": p.next_run_unix, "overdue": p.overdue, "failing": p.failing})).collect();
            out(j, json!({"drills": drills, "plans": plans}), format!("{}{} drills", text, r.drills.len()));
            Ok(if problems { exit::PROBLEMS } else { exit::OK })
        }
    }
}

fn verdict_text(doc: &Value) -> String {
    let n = |v: &Value| v.as_f64().unwrap_or(0.0);
    let mut t = format!(
        "drill {} of {} (snapshot {}): {}\n  RTO {:.1} s (target {:.0} s) {}, RPO {:.0} s (target {:.0} s) {}, read check {:.1} s",
        doc["drill_id"].as_str().unwrap_or(""),
        doc["source"].as_str().unwrap_or(""),
        doc["snapshot"].as_str().unwrap_or("").chars().take(12).collect::<String>(),
        doc["verdict"].as_str().unwrap_or(""),
        n(&doc["rto"]["measured_s"]),
        n(&doc["rto"]["target_s"]),
        doc["rto"]["result"].as_str().unwrap_or(""),
        n(&doc["rpo"]["measured_s"]),
        n(&doc["rpo"]["target_s"]),
        doc["rpo"]["result"].as_str().unwrap_or(""),
        n(&doc["read_check_s"]),
    );
    for c in doc["checks"].as_array().into_iter().flatten().filter(|c| c["result"] != "PASS") {
        t.push_str(&format!(
            "\n  FAIL {} {} ({}): {}",
            c["level"].as_str().unwrap_or(""),
            c["subject"].as_str().unwrap_or(""),
            c["check"].as_str().unwrap_or(""),
            c["detail"].as_str().unwrap_or("")
        ));
    }
    t.push_str(&format!("\n  report: tresorctl report show {}", doc["drill_id"].as_str().unwrap_or("")));
    t.lines().map(printable).collect::<Vec<_>>().join("\n")
}

/// `report show`.
pub async fn report_show(
    c: &mut Admin,
    id: &str,
    html: bool,
    lang: &str,
    out_file: Option<&Path>,
) -> anyhow::Result<u8> {
    let lang = match lang {
        "de" => Lang::De,
        "en" => Lang::En,
        other => anyhow::bail!("--lang {other:?}: give de or en"),
    };
    let r = c.get_report(pb::GetReportRequest { drill_id: id.to_string() }).await.map_err(status_err)?.into_inner();
    let text = if html {
        let report = tresor_report::drill::DrillReport::from_json(&r.json).map_err(|e| {
            let what = if e.is_data() { "does not match the schema of this tresorctl" } else { "is not JSON" };
            anyhow::anyhow!("the report {what}: {e}")
        })?;
        tresor_report::html::render(&report, lang)
    } else {
        r.json
    };
    match out_file {
        Some(p) => {
            std::fs::write(p, text.as_bytes()).with_context(|| format!("cannot write {}", p.display()))?;
            eprintln!("wrote {}", p.display());
        }
        None => println!("{text}"),
    }
    Ok(exit::OK)
}

/// `report verify`: offline, with nothing but the file and the pinned key.
pub fn report_verify(file: &Path, pubkey: &Path, j: bool) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let doc: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let key = read_key(pubkey)?;
    let id = tresor_report::sign::key_id(&key);
    match tresor_report::sign::verify(&doc, &key) {
        Ok(()) => {
            out(
                j,
                json!({"file": file, "valid": true, "key_id": id}),
                format!("{}: signature valid (key {id})", file.display()),
            );
            Ok(exit::OK)
        }
        Err(e) => {
            out(
                j,
                json!({"file": file, "valid": false, "key_id": id, "error": e.to_string()}),
                format!("{}: NOT VALID: {e}", file.display()),
            );
            Ok(exit::TAMPERED)
        }
    }
}

pub(crate) fn read_key(pubkey: &Path) -> anyhow::Result<tresor_report::sign::VerifyingKey> {
    let pem = std::fs::read_to_string(pubkey).with_context(|| format!("cannot read {}", pubkey.display()))?;
    tresor_report::sign::public_key_from_pem(&pem).with_context(|| pubkey.display().to_string())
}
