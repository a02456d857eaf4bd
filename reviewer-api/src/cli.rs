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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("airlock-reviewer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _telemetry = runtime.block_on(async { airlock_telemetry::init("airlock-reviewer").ok() });
    let config = match crate::config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("airlock-reviewer: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airlock-reviewer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
