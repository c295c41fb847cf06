//! `tresor-agent`: thin binary over the agent library modules.

mod cli;
mod commands;
mod copy;
mod daemon;
mod exit;
mod expected;
mod files;
mod host;
mod maintain;
mod progress;
mod secret;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TRESOR_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let json = cli.global.json;
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(&cli) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    match result {
        None => {
            eprintln!("interrupted; nothing half-written was committed");
            ExitCode::from(exit::INTERRUPTED)
        }
        Some(Ok(mut out)) => {
            if json {
                if let (Some(obj), Some(peak)) = (out.json.as_object_mut(), peak_rss_bytes()) {
                    obj.insert("peak_rss_bytes".into(), peak.into());
                }
                if let (Some(obj), Some(storage)) = (out.json.as_object_mut(), commands::storage_json()) {
                    obj.entry("storage").or_insert(storage);
                }
                println!("{}", serde_json::to_string_pretty(&out.json).unwrap_or_default());
            } else {
                println!("{}", out.text);
            }
            ExitCode::from(out.code)
        }
        Some(Err(e)) => {
            let code = exit::code_for(&e);
            if json {
                let storage = commands::storage_json();
                eprintln!("{}", serde_json::json!({"error": format!("{e:#}"), "exit_code": code, "storage": storage}));
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<commands::Outcome> {
    let g = &cli.global;
    match &cli.command {
        Command::Init { vault, escrow_key_out, object_lock, object_lock_mode } => {
            let lock =
                object_lock.map(|d| tresor_vault::backend::Retention { mode: *object_lock_mode, seconds: d.as_secs() });
            commands::init(g, &vault.vault, escrow_key_out, lock).await
        }
        Command::Copy { from, to, to_credentials, snapshots, object_lock, object_lock_mode, uploads } => {
            let lock =
                object_lock.map(|d| tresor_vault::backend::Retention { mode: *object_lock_mode, seconds: d.as_secs() });
            let to = copy::Site { url: to.clone(), credentials: to_credentials.clone() };
            copy::copy(g, from, &to, snapshots, lock, *uploads).await
        }
        Command::RecoverHidden { vault, dry_run } => commands::recover_hidden(&vault.vault, *dry_run).await,
        Command::Backup {
            vault,
            tags,
            host,
            force,
            sources,
            probes,
            pg_dump,
            pre_hook,
            post_hook,
            hook_timeout,
            probe,
            paths,
        } => {
            let options = tresor_sources::capture::SourceOptions {
                hooks: tresor_sources::hooks::Hooks {
                    pre: pre_hook.clone(),
                    post: post_hook.clone(),
                    timeout: *hook_timeout,
                },
                probes: probes.clone(),
                probe_command: probe.probe_command.clone(),
                probe_timeout: probe.probe_timeout,
                pg_dump: *pg_dump,
                pg_bindir: g.pg_bindir.clone(),
            };
            commands::backup(g, &vault.vault, paths, sources, options, tags, host.clone(), *force).await
        }
        Command::Verify { vault, snapshot, probe, qdrant, probes, path } => {
            let opts = tresor_sources::verify::VerifyOptions {
                probe_command: probe.probe_command.clone(),
                probe_timeout: probe.probe_timeout,
                qdrant: qdrant.clone(),
                probes: probes.clone(),
                pg_bindir: g.pg_bindir.clone(),
            };
            commands::verify(g, &vault.vault, snapshot, &opts, path).await
        }
        Command::QdrantRecover { file, collection } => commands::qdrant_recover(file, collection).await,
        Command::Snapshots { vault } => commands::snapshots(g, &vault.vault).await,
        Command::Documents { vault, out } => commands::documents(g, &vault.vault, out.as_deref()).await,
        Command::Ls { vault, snapshot } => commands::ls(g, &vault.vault, snapshot).await,
        Command::Restore { vault, snapshot, to, include, force } => {
            commands::restore(g, &vault.vault, snapshot, to, include, *force).await
        }
        Command::Check { vault, read_data, read_data_subset, seed } => {
            commands::check(g, &vault.vault, *read_data, read_data_subset.as_deref(), *seed).await
        }
        Command::Key { action } => commands::key(g, action).await,
        Command::Gc { vault, grace, maintenance_interval, reset_expected } => {
            maintain::gc(g, &vault.vault, *grace, *maintenance_interval, *reset_expected).await
        }
        Command::Forget { vault, snapshots, keep, tz, dry_run } => {
            maintain::forget(g, &vault.vault, snapshots, &keep.rules(), *tz, *dry_run).await
        }
        Command::Enroll { controller, token, token_file, config, state_dir, name } => {
            commands::enroll(
                controller,
                token.as_deref(),
                token_file.as_deref(),
                config.as_deref(),
                state_dir.as_deref(),
                name.as_deref(),
            )
            .await
        }
        Command::Run { config } => {
            let cfg = daemon::config::AgentConfig::load(config)?;
            daemon::run(cfg).await?;
            Ok(commands::Outcome { json: serde_json::json!({}), text: String::new(), code: exit::OK })
        }
    }
}

/// The process's peak resident memory so far (VmHWM), reported with --json for capacity planning.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
