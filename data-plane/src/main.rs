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
    /// This proxy's id, in place of `proxy.proxy_id`: one file for a fleet,
    /// each instance named at start (a pod's name, a host's).
    #[arg(long)]
    proxy_id: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    airlock_telemetry::run_binary("airlock-proxy", async move {
        airlock_config::refuse_unless_clean(&args.config, airlock_proxy::check::check(&args.config))?;
        let mut config = airlock_proxy::config::load(&args.config)?;
        if let Some(id) = args.proxy_id {
            airlock_eventlog::ProxyId::parse(&id).map_err(|e| anyhow::anyhow!("--proxy-id: {e}"))?;
            config.proxy.proxy_id = Some(id);
        }
        airlock_proxy::run::run(config).await
    })
}
