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
    airlock_telemetry::run_binary("airlock-proxy", async move {
        airlock_config::refuse_unless_clean(&args.config, airlock_proxy::check::check(&args.config))?;
        let config = airlock_proxy::config::load(&args.config)?;
        airlock_proxy::run::run(config).await
    })
}
