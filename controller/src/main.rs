//! `tresor-controller`: thin binary over the controller library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tresor_controller::config::ControllerConfig;
use tresor_controller::core::Controller;

/// Tresor controller: schedules jobs for agents, keeps the catalog, holds no vault keys.
#[derive(Debug, Parser)]
#[command(name = "tresor-controller", version, about, after_help = "Exit codes: 0 ok, 1 failure, 2 usage error.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller.
    Serve {
        /// controller.toml.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Set the sled catalog aside (kept, never deleted); the next `serve` starts a fresh catalog
    /// and queues a scan job per vault on its maintainer. Run it while the controller is stopped.
    RebuildCatalog {
        /// controller.toml.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TRESOR_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let cfg = ControllerConfig::load(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(async {
                let ctl = Controller::open(cfg)?;
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                drop(tokio::spawn(async move {
                    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                    }
                    tracing::info!("shutting down");
                    let _ = stop_tx.send(true);
                }));
                tresor_controller::server::serve(ctl, stop_rx).await?;
                Ok(())
            })
        }
        Command::RebuildCatalog { config } => {
            let cfg = ControllerConfig::load(&config)?;
            let path = cfg.state_dir.join("catalog.sled");
            if !path.exists() {
                println!("no catalog at {}; the next start builds one from the vaults", path.display());
                return Ok(());
            }
            let aside = cfg.state_dir.join(format!("catalog.old-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S")));
            std::fs::rename(&path, &aside).map_err(|e| {
                anyhow::anyhow!("cannot set {} aside (is the controller still running?): {e}", path.display())
            })?;
            println!(
                "catalog set aside as {}; start the controller: it queues a scan of every vault on its maintainer \
                 and rebuilds snapshots from the vaults' receipts. Agents, policies and revocations are kept in {}.",
                aside.display(),
                cfg.state_dir.display()
            );
            Ok(())
        }
    }
}
