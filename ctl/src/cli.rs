//! tresorctl's commands.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use tresor_proto::pb;

use crate::audit::AuditAction;
use crate::client::{self, Settings, status_err};
use crate::docs::{DrillAction, ReportAction};
use crate::exit;
use crate::print::{human, out, when};

/// tresorctl: run a Tresor controller — agents, policies, snapshots, backups and restores.
#[derive(Debug, Parser)]
#[command(name = "tresorctl", version, about, after_help = exit::HELP)]
pub struct Cli {
    /// Print JSON on stdout (errors as JSON on stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// Controller URL, e.g. https://controller:7443.
    #[arg(long, global = true, env = "TRESOR_CONTROLLER", value_name = "URL")]
    controller: Option<String>,
    /// The controller's CA certificate (its state_dir/ca.pem).
    #[arg(long, global = true, env = "TRESOR_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// File holding your access token.
    #[arg(long, global = true, env = "TRESOR_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// tresorctl.toml (default ~/.config/tresor/tresorctl.toml if present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// What is failing or overdue (exit 4 if anything is).
    Status,
    /// Ask the controller's gRPC health service (no token needed); exit 0 when it serves.
    Health,
    /// List agents.
    Agents,
    /// Tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Agents.
    Agent {
        #[command(subcommand)]
        action: AgentAction,
    },
    /// Policies.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// List snapshots, optionally of one AGENT or AGENT/SOURCE.
    Snapshots {
        /// AGENT or AGENT/SOURCE.
        selector: Option<String>,
    },
    /// Back up a source now; waits and shows progress unless --detach.
    Backup {
        /// AGENT/SOURCE.
        selector: String,
        /// Return once the job is queued.
        #[arg(long)]
        detach: bool,
    },
    /// Restore a source's snapshot with one command.
    Restore {
        /// AGENT/SOURCE.
        selector: String,
        /// Snapshot id or unique prefix (default: the newest).
        #[arg(long, conflicts_with = "at")]
        snapshot: Option<String>,
        /// The newest snapshot committed at or before this RFC 3339 time.
        #[arg(long)]
        at: Option<String>,
        /// Target directory on the agent (absolute, inside one of its restore_roots in agent.toml).
        #[arg(long, value_name = "PATH")]
        to: String,
        /// Restore on another agent (it needs its own key slot for the vault).
        #[arg(long, value_name = "AGENT")]
        on: Option<String>,
        /// Only show what would be restored.
        #[arg(long)]
        dry_run: bool,
        /// Write into a non-empty target.
        #[arg(long)]
        force: bool,
        /// Restore only this path of the snapshot and what is below it (repeatable).
        #[arg(long, value_name = "PATH")]
        include: Vec<String>,
        /// Restore from this second site of the source's vault (its copy_to) instead.
        #[arg(long, value_name = "VAULT")]
        from_vault: Option<String>,
        /// Return once the job is queued.
        #[arg(long)]
        detach: bool,
    },
    /// Copy a vault to its second site now (its copy_to, by its copy agent): what the copy
    /// should hold and lacks, and its keys; waits unless --detach.
    Copy {
        /// The vault's name in the policies.
        vault: String,
        /// Return once the job is queued.
        #[arg(long)]
        detach: bool,
    },
    /// Wait for a job and show its progress.
    Watch {
        /// Job id.
        job: String,
    },
    /// Rebuild the catalog's snapshots from the vaults (a scan job per vault).
    RebuildCatalog,
    /// Apply retention to a vault now: forget what the policies say, then collect garbage (on the
    /// vault's maintainer); waits unless --detach.
    Prune {
        /// The vault's name in the policies.
        vault: String,
        /// Only list what would be forgotten.
        #[arg(long)]
        dry_run: bool,
        /// Return once the job is queued.
        #[arg(long)]
        detach: bool,
    },
    /// Restore drills: run one now, list them and the plans.
    Drill {
        #[command(subcommand)]
        action: DrillAction,
    },
    /// Signed drill reports: show (JSON or HTML), verify offline.
    Report {
        #[command(subcommand)]
        action: ReportAction,
    },
    /// The audit log: show, export, verify (offline with --log).
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Make a token: a one-time agent enrollment token (default), or a person's token.
    Create {
        /// agent, admin, operator or auditor.
        #[arg(long, default_value = "agent")]
        role: String,
        /// Lifetime, e.g. 1h or 30d (default: 1h for agent tokens, none for people).
        #[arg(long)]
        ttl: Option<String>,
        /// Who it is for.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List people's tokens (ids, roles, labels; never the tokens).
    List,
    /// Withdraw a person's token by its id from `token list`.
    Revoke {
        /// Token id (or a unique start of it).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum AgentAction {
    /// Revoke an agent: refused from now on, also after a catalog rebuild.
    Revoke {
        /// Agent name or id.
        agent: String,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyAction {
    /// Validate and apply a policy file (replaces the policy of the same name).
    Apply {
        /// The TOML file.
        file: PathBuf,
    },
    /// Remove an applied policy: its sources are no longer scheduled; snapshots stay.
    Remove {
        /// The policy's name.
        name: String,
    },
}

async fn health(settings: &Settings, j: bool) -> anyhow::Result<u8> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let ch = client::channel(settings).await?;
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    let mut rows = Vec::new();
    let mut all = true;
    for service in ["", "tresor.v1.AgentService", "tresor.v1.AdminService"] {
        let r = h.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.map_err(status_err)?;
        let st = ServingStatus::try_from(r.into_inner().status).unwrap_or(ServingStatus::Unknown);
        all &= st == ServingStatus::Serving;
        rows.push((if service.is_empty() { "controller" } else { service }, st.as_str_name()));
    }
    let text = rows.iter().map(|(s, st)| format!("{s}: {st}")).collect::<Vec<_>>().join("\n");
    let value = json!(rows.iter().map(|(s, st)| json!({"service": s, "status": st})).collect::<Vec<_>>());
    out(j, value, text);
    Ok(if all { exit::OK } else { exit::FAILURE })
}

/// Run the command; returns the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    if let Command::Report { action: ReportAction::Verify { file, pubkey } } = &cli.command {
        return crate::docs::report_verify(file, pubkey, cli.json);
    }
    if let Command::Audit { action: action @ AuditAction::Verify { log: Some(_), .. } } = cli.command {
        return crate::audit::audit(None, action, cli.json).await;
    }
    let settings =
        Settings::resolve(cli.controller.clone(), cli.ca_file.clone(), cli.token_file.clone(), cli.config.as_deref())?;
    let j = cli.json;
    if let Command::Health = cli.command {
        return health(&settings, j).await;
    }
    let mut c = client::connect(&settings).await?;
    match cli.command {
        // Both were answered above without a connection; answering again here costs nothing.
        Command::Health => health(&settings, j).await,
        Command::Report { action: ReportAction::Verify { file, pubkey } } => {
            crate::docs::report_verify(&file, &pubkey, j)
        }
        Command::Report { action: ReportAction::Show { id, html, lang, out } } => {
            crate::docs::report_show(&mut c, &id, html, &lang, out.as_deref()).await
        }
        Command::Drill { action } => crate::docs::drill(&mut c, action, j).await,
        Command::Audit { action } => crate::audit::audit(Some(&mut c), action, j).await,
        Command::Status => {
            let r = c.status(pb::StatusRequest {}).await.map_err(status_err)?.into_inner();
            let mut text = String::from(
                "SOURCE                     VAULT        LAST GOOD              NEXT RUN               STATE\n",
            );
            for s in &r.sources {
                let state = crate::print::state_word(s.failing, s.overdue);
                text.push_str(&format!(
                    "{:<26} {:<12} {:<22} {:<22} {state}\n",
                    format!("{}/{}", s.agent, s.source),
                    s.vault,
                    when(s.last_success_unix),
                    when(s.next_run_unix)
                ));
            }
            for c in &r.copies {
                let state = if !c.last_error.is_empty() {
                    "FAILING"
                } else if c.overdue {
                    "OVERDUE"
                } else {
                    "ok"
                };
                text.push_str(&format!(
                    "copy {} -> {}: {} of {} snapshot(s), lag {} s (copy_rpo {} s), last good {}  {state}\n",
                    c.from,
                    c.to,
                    c.copied,
                    c.snapshots,
                    c.lag_seconds,
                    c.rpo_seconds,
                    when(c.last_success_unix)
                ));
            }
            text.push_str(&format!("jobs: {} running, {} queued\n", r.jobs_running, r.jobs_queued));
            for p in &r.problems {
                text.push_str(&format!("PROBLEM: {p}\n"));
            }
            if r.problems.is_empty() {
                text.push_str("all good");
            }
            let sources: Vec<_> = r.sources.iter().map(|s| json!({"agent": s.agent, "source": s.source, "vault": s.vault, "last_success_unix": s.last_success_unix, "last_error": s.last_error, "rpo_seconds": s.rpo_seconds, "overdue": s.overdue, "failing": s.failing, "next_run_unix": s.next_run_unix})).collect();
            let copies: Vec<_> = r.copies.iter().map(|c| json!({"from": c.from, "to": c.to, "snapshots": c.snapshots, "copied": c.copied, "lag_seconds": c.lag_seconds, "rpo_seconds": c.rpo_seconds, "last_success_unix": c.last_success_unix, "last_error": c.last_error, "overdue": c.overdue})).collect();
            out(
                j,
                json!({"sources": sources, "copies": copies, "problems": r.problems, "jobs_running": r.jobs_running, "jobs_queued": r.jobs_queued}),
                text.trim_end().to_string(),
            );
            Ok(if r.problems.is_empty() { exit::OK } else { exit::PROBLEMS })
        }
        Command::Agents => {
            let r = c.list_agents(pb::ListAgentsRequest {}).await.map_err(status_err)?.into_inner();
            let mut text = String::from(
                "NAME             ID                   STATE         LAST SEEN              CERT UNTIL             VAULTS\n",
            );
            let mut rows = Vec::new();
            for a in &r.agents {
                let state = if a.revoked {
                    "revoked"
                } else if a.connected {
                    "connected"
                } else {
                    "offline"
                };
                let vaults: Vec<String> = a
                    .vaults
                    .iter()
                    .map(|v| {
                        if v.error.is_empty() {
                            v.name.clone()
                        } else {
                            format!("{} (UNREACHABLE: {})", v.name, v.error)
                        }
                    })
                    .collect();
                text.push_str(&format!(
                    "{:<16} {:<20} {:<13} {:<22} {:<22} {}\n",
                    a.name,
                    a.agent_id,
                    state,
                    when(a.last_seen_unix),
                    when(a.cert_not_after_unix),
                    vaults.join(", ")
                ));
                rows.push(json!({"name": a.name, "agent_id": a.agent_id, "connected": a.connected, "revoked": a.revoked, "last_seen_unix": a.last_seen_unix, "cert_not_after_unix": a.cert_not_after_unix, "enrolled_unix": a.enrolled_unix, "hostname": a.hostname, "vaults": a.vaults.iter().map(|v| json!({"name": v.name, "vault_id": v.vault_id, "error": v.error, "key_epoch": v.key_epoch, "endpoint": v.endpoint, "endpoint_failover": v.endpoint_failover, "durability_unverified": v.durability_unverified})).collect::<Vec<_>>()}));
            }
            out(j, json!(rows), format!("{}{} agents", text, r.agents.len()));
            Ok(exit::OK)
        }
        Command::Token { action: TokenAction::Create { role, ttl, label } } => {
            let ttl_seconds = match ttl {
                Some(t) => u32::try_from(
                    tresor_proto::parse_duration(&t).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?.as_secs(),
                )
                .context("--ttl is too long")?,
                None => 0,
            };
            let r = c
                .create_token(pb::CreateTokenRequest { role: role.clone(), ttl_seconds, label })
                .await
                .map_err(status_err)?
                .into_inner();
            let until = if r.expires_unix == 0 {
                "no expiry".to_string()
            } else {
                format!("valid until {}", when(r.expires_unix))
            };
            let hint = if role == "agent" {
                "\nuse it once: tresor-agent enroll --controller URL --token-file FILE (or --token)"
            } else {
                "\nkeep it in a file readable only by its holder; tresorctl reads it with --token-file"
            };
            out(
                j,
                json!({"token": r.token, "role": role, "expires_unix": r.expires_unix}),
                format!("{}\n{role} token, {until}{hint}", r.token),
            );
            Ok(exit::OK)
        }
        Command::Token { action: TokenAction::List } => {
            let r = c.list_tokens(pb::ListTokensRequest {}).await.map_err(status_err)?.into_inner();
            let mut text = String::from("ID            ROLE      EXPIRES                LABEL\n");
            for t in &r.tokens {
                let exp = if t.expires_unix == 0 { "never".to_string() } else { when(t.expires_unix) };
                text.push_str(&format!("{:<13} {:<9} {:<22} {}\n", t.id, t.role, exp, t.label));
            }
            let rows: Vec<_> = r
                .tokens
                .iter()
                .map(|t| json!({"id": t.id, "role": t.role, "label": t.label, "expires_unix": t.expires_unix}))
                .collect();
            out(j, json!(rows), format!("{}{} tokens", text, r.tokens.len()));
            Ok(exit::OK)
        }
        Command::Token { action: TokenAction::Revoke { id } } => {
            let r = c.revoke_token(pb::RevokeTokenRequest { id }).await.map_err(status_err)?.into_inner();
            let t = r.token.unwrap_or_default();
            out(
                j,
                json!({"revoked": t.id, "role": t.role, "label": t.label}),
                format!("token {} ({} {}) withdrawn", t.id, t.role, t.label),
            );
            Ok(exit::OK)
        }
        Command::Policy { action: PolicyAction::Remove { name } } => {
            let r =
                c.remove_policy(pb::RemovePolicyRequest { name: name.clone() }).await.map_err(status_err)?.into_inner();
            out(
                j,
                json!({"removed": name, "sources": r.sources}),
                format!(
                    "policy {name} removed; its {} sources are no longer scheduled (their snapshots stay)",
                    r.sources
                ),
            );
            Ok(exit::OK)
        }
        Command::Agent { action: AgentAction::Revoke { agent } } => {
            let r =
                c.revoke_agent(pb::RevokeAgentRequest { agent: agent.clone() }).await.map_err(status_err)?.into_inner();
            out(
                j,
                json!({"revoked": r.agent_id}),
                format!("agent {agent} ({}) revoked; it is refused from now on", r.agent_id),
            );
            Ok(exit::OK)
        }
        Command::Policy { action: PolicyAction::Apply { file } } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let r = c
                .apply_policy(pb::ApplyPolicyRequest { toml: text, file_name: file.display().to_string() })
                .await
                .map_err(status_err)?
                .into_inner();
            let mut t = format!("policy {} applied: {} sources", r.policy, r.sources);
            for w in &r.warnings {
                t.push_str(&format!("\nwarning: {w}"));
            }
            out(j, json!({"policy": r.policy, "sources": r.sources, "warnings": r.warnings}), t);
            Ok(exit::OK)
        }
        Command::Snapshots { selector } => {
            let r = c
                .list_snapshots(pb::ListSnapshotsRequest { selector: selector.unwrap_or_default() })
                .await
                .map_err(status_err)?
                .into_inner();
            let mut text =
                String::from("ID        AGENT/SOURCE              COMMITTED              FILES   SIZE       NEW\n");
            let mut rows = Vec::new();
            for s in &r.snapshots {
                let committed =
                    s.receipt.as_ref().map_or("no receipt".to_string(), |r| when(r.committed_unix_ms / 1000));
                text.push_str(&format!(
                    "{:<9} {:<25} {:<22} {:<7} {:<10} {}\n",
                    &s.snapshot_id[..s.snapshot_id.len().min(8)],
                    format!("{}/{}", s.agent, s.source),
                    committed,
                    s.files,
                    human(s.bytes_total),
                    human(s.bytes_new)
                ));
                rows.push(json!({"snapshot_id": s.snapshot_id, "vault_id": s.vault_id, "agent": s.agent, "source": s.source, "committed_unix": s.receipt.as_ref().map(|r| r.committed_unix_ms / 1000), "manifest_time": s.manifest_time, "files": s.files, "bytes_total": s.bytes_total, "bytes_new": s.bytes_new, "paths": s.paths}));
            }
            out(j, json!(rows), format!("{}{} snapshots", text, r.snapshots.len()));
            Ok(exit::OK)
        }
        Command::Backup { selector, detach } => {
            let h = c
                .start_backup(pb::StartBackupRequest { selector: selector.clone() })
                .await
                .map_err(status_err)?
                .into_inner();
            if detach {
                out(j, json!({"job_id": h.job_id}), format!("backup of {selector} queued as job {}", h.job_id));
                return Ok(exit::OK);
            }
            crate::print::watch(&mut c, &h.job_id, j).await
        }
        Command::Copy { vault, detach } => {
            let h = c.start_copy(pb::StartCopyRequest { vault: vault.clone() }).await.map_err(status_err)?.into_inner();
            if detach {
                out(j, json!({"job_id": h.job_id}), format!("copy of vault {vault} queued as job {}", h.job_id));
                return Ok(exit::OK);
            }
            crate::print::watch(&mut c, &h.job_id, j).await
        }
        Command::Restore { selector, snapshot, at, to, on, dry_run, force, include, from_vault, detach } => {
            let h = c
                .start_restore(pb::StartRestoreRequest {
                    selector: selector.clone(),
                    snapshot: snapshot.unwrap_or_default(),
                    at: at.unwrap_or_default(),
                    target: to,
                    on_agent: on.unwrap_or_default(),
                    force,
                    dry_run,
                    include,
                    from_vault: from_vault.unwrap_or_default(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if detach {
                out(j, json!({"job_id": h.job_id}), format!("restore of {selector} queued as job {}", h.job_id));
                return Ok(exit::OK);
            }
            crate::print::watch(&mut c, &h.job_id, j).await
        }
        Command::Watch { job } => crate::print::watch(&mut c, &job, j).await,
        Command::Prune { vault, dry_run, detach } => {
            let r = c
                .start_prune(pb::StartPruneRequest { vault: vault.clone(), dry_run })
                .await
                .map_err(status_err)?
                .into_inner();
            let mut text = format!("{vault}: retention keeps {} snapshots and forgets {}:", r.keep, r.forget.len());
            for s in &r.forget {
                let t = s.receipt.as_ref().map_or(0, |r| r.committed_unix_ms / 1000);
                text.push_str(&format!(
                    "\n  forget {} {}/{} committed {}",
                    &s.snapshot_id[..s.snapshot_id.len().min(12)],
                    s.agent,
                    s.source,
                    when(t)
                ));
            }
            let forget: Vec<_> = r.forget.iter().map(|s| s.snapshot_id.clone()).collect();
            if dry_run || detach || r.job_id.is_empty() {
                out(j, json!({"vault": vault, "keep": r.keep, "forget": forget, "job_id": r.job_id}), text);
                return Ok(exit::OK);
            }
            if !j {
                println!("{text}");
            }
            crate::print::watch(&mut c, &r.job_id, j).await
        }
        Command::RebuildCatalog => {
            let r = c.rebuild_catalog(pb::RebuildCatalogRequest {}).await.map_err(status_err)?.into_inner();
            let mut t = format!(
                "queued a scan of {} vaults on their maintainers; snapshots return as the scans finish",
                r.vaults
            );
            for p in &r.problems {
                t.push_str(&format!("\nproblem: {p}"));
            }
            out(j, json!({"vaults": r.vaults, "problems": r.problems}), t);
            Ok(if r.problems.is_empty() { exit::OK } else { exit::FAILURE })
        }
    }
}
