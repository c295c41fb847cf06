//! `tresorctl`: talks to the controller's AdminService. Thin: parse, call, print.

mod audit;
mod cli;
mod client;
mod docs;
mod print;

use std::process::ExitCode;

use clap::Parser;

/// Exit codes, documented in `--help`, README.md and docs/OPERATIONS.md.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The command failed.
    pub const FAILURE: u8 = 1;
    /// Usage error.
    pub const USAGE: u8 = 2;
    /// `status`: something is failing or overdue.
    pub const PROBLEMS: u8 = 4;
    /// The job ran and failed.
    pub const JOB_FAILED: u8 = 5;
    /// The token is missing, unknown, expired, or its role is too low.
    pub const DENIED: u8 = 6;
    /// The named agent, source, snapshot or job does not exist.
    pub const NOT_FOUND: u8 = 7;
    /// The controller cannot be reached.
    pub const UNREACHABLE: u8 = 8;
    /// A signed document does not verify: changed, unsigned, or signed by another key.
    pub const TAMPERED: u8 = 9;
    /// The help text.
    pub const HELP: &str = "Exit codes: 0 ok, 1 failure, 2 usage error, 4 status found problems (failing or overdue), \
5 the job failed (or the drill FAILED), 6 not allowed (token missing, unknown, expired or role too low), 7 not found, 8 controller unreachable, \
9 a signed report or the audit log does not verify.\n\
Connection: --controller/TRESOR_CONTROLLER, --ca-file/TRESOR_CA_FILE, --token-file/TRESOR_TOKEN_FILE, or --config tresorctl.toml.";
}

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let json = cli.json;
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = client::exit_code_for(&e);
            if json {
                eprintln!("{}", serde_json::json!({"error": format!("{e:#}"), "exit_code": code}));
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}
