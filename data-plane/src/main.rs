//! `airlock-proxy --config airlock.yaml`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Airlock's Postgres-compatible gate: agents connect here with their Entra
/// ID token as the password.
#[derive(Debug, Parser)]
#[command(name = "airlock-proxy", version)]
struct Args {
    #[arg(long, default_value = "airlock.yaml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _telemetry = airlock_telemetry::init("airlock-proxy").ok();
    let config = match airlock_proxy::config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("airlock-proxy: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("airlock-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(airlock_proxy::run::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airlock-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
