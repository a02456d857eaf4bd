//! The `airlock-reviewer` command line. `main` only calls [`main`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Airlock's reviewer API and web UI: see who wants to run exactly what, and
/// approve or deny.
#[derive(Debug, Parser)]
#[command(name = "airlock-reviewer", version)]
struct Args {
    #[arg(long, default_value = "airlock.yaml")]
    config: PathBuf,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    airlock_telemetry::run_binary("airlock-reviewer", async move {
        airlock_config::refuse_unless_clean(&args.config, crate::check::check(&args.config))?;
        let config = crate::config::load(&args.config)?;
        crate::run(config).await
    })
}
