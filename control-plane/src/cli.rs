//! The `airlock-control` command line. `main` only calls [`main`].

// Printing results to standard output is what a CLI is for.
#![allow(clippy::print_stdout)]

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "airlock-control",
    version,
    about = "Airlock control plane: approvals, decisions, audit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a control-plane replica (gRPC for proxies, reviewers, integrators).
    Serve {
        #[arg(long, default_value = "airlock.yaml")]
        config: PathBuf,
    },
    /// Rebuild the state from the whole log, as a new replica would, and
    /// print it (requests by state, sessions, anomalies, fold rate).
    Replay {
        #[arg(long, default_value = "airlock.yaml")]
        config: PathBuf,
    },
    /// Check the log: every hash chain, every checkpoint (digest and
    /// signature), and events that do not fit. Exit 1 naming the first bad
    /// event.
    Verify {
        #[arg(long, default_value = "airlock.yaml")]
        config: PathBuf,
        /// Checkpoint public key (PEM); repeat for rotated keys. Default:
        /// the public half of `control.checkpoints.signing_key`, if readable.
        #[arg(long = "checkpoint-key")]
        checkpoint_keys: Vec<PathBuf>,
    },
    /// Write the log as JSON lines: one object per event (see the README
    /// for the schema), or with --format ocsf OCSF 1.3.0 records.
    Export {
        #[arg(long, default_value = "airlock.yaml")]
        config: PathBuf,
        /// First stream sequence to write (1: the beginning).
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last stream sequence to write (default: the end of the log now).
        #[arg(long)]
        to: Option<u64>,
        #[arg(long, default_value = "jsonl", value_parser = clap::builder::PossibleValuesParser::new(crate::export::FORMATS))]
        format: String,
        /// Write here instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Create an Ed25519 key pair for a writer of the log: the private key
    /// for `proxy.signing_key`, `control.signing_key` or
    /// `control.checkpoints.signing_key`, and the public key to list in
    /// `signing.trust` (and give auditors).
    #[command(alias = "checkpoint-key")]
    SigningKey {
        #[arg(long)]
        private: PathBuf,
        #[arg(long)]
        public: PathBuf,
    },
    /// Identity tools.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Check a whole airlock.yaml for every binary that reads it.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Policy tools: lint policy files, explain a statement's verdict,
    /// simulate candidate policies over the log.
    Policy {
        #[command(subcommand)]
        command: crate::policy_cmd::PolicyCommand,
    },
    /// Review from a terminal: list, show, approve, deny; grants, revoke.
    Review {
        #[command(subcommand)]
        command: crate::review_cmd::ReviewCommand,
    },
    /// Stream the log to a SIEM (HTTPS, Splunk HEC, syslog over TLS), as
    /// OCSF or native records, at least once, resuming where it stopped.
    Forward(crate::forward::ForwardArgs),
    /// Sign in with the device flow (a code to enter in a browser) and keep
    /// the token for `review`.
    Login(crate::review_cmd::LoginArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check every section every binary reads (the control plane's, the
    /// proxy's and the reviewer's, where present), the files they name and
    /// the environment variables that hold secrets: each problem as
    /// `file:line: key: what` on standard error, exit 1 on any. The
    /// binaries refuse to start on the same problems.
    Check {
        #[arg(long, default_value = "airlock.yaml")]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Read a token on standard input; print the identity it maps to as
    /// JSON, or why it is refused (exit 1). The token is never printed.
    Check {
        #[arg(long, default_value = "airlock.yaml")]
        config: PathBuf,
    },
}

/// Parses flags and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Pure and offline: no telemetry or runtime, so stdout carries only the result.
    let command = match cli.command {
        Command::Policy { command }
            if !matches!(command, crate::policy_cmd::PolicyCommand::Simulate { .. }) =>
        {
            return crate::policy_cmd::run(command);
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => return config_check(&config),
        // A client of the reviewer API: no telemetry, stdout for results.
        Command::Review { command } => return client(crate::review_cmd::review(command)),
        Command::Login(args) => return client(crate::review_cmd::login(args)),
        other => other,
    };
    airlock_telemetry::run_binary("airlock-control", run(command))
}

/// Runs a client command on a small runtime; an error on standard error.
#[allow(clippy::print_stderr)]
fn client(f: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("airlock-control: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("airlock-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `config check`: offline, like `policy`; what it found on standard
/// error, a one-line verdict on standard output.
#[allow(clippy::print_stderr)]
fn config_check(path: &std::path::Path) -> ExitCode {
    let (parts, problems) = crate::check::check_all(path);
    if problems.is_empty() {
        println!("{}: ok ({})", path.display(), parts.join(", "));
        return ExitCode::SUCCESS;
    }
    for p in &problems {
        eprintln!("{p}");
    }
    println!(
        "{}: {} problem{}",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    ExitCode::FAILURE
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { config: path } => {
            airlock_config::refuse_unless_clean(&path, crate::check::check(&path))?;
            let config = crate::config::load(&path)?;
            crate::serve::serve(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { config } => {
            let config = crate::config::load(&config)?;
            let mut log = airlock_eventlog::EventLog::connect(config.nats).await?;
            match &config.signing {
                Some(signing) => {
                    log = log.with_trust(std::sync::Arc::new(signing.load().context("signing.trust")?));
                }
                None => eprintln!(
                    "airlock-control: no `signing:` section: every event is folded as it is, whoever \
                     wrote it; list the writers' keys to fold only theirs"
                ),
            }
            let report = crate::verify::replay(&log).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            config,
            checkpoint_keys,
        } => {
            let config = crate::config::load(&config)?;
            let mut keys = Vec::new();
            for path in &checkpoint_keys {
                keys.push(crate::checkpoint::load_public_key(path)?);
            }
            if keys.is_empty()
                && let Some(c) = &config.control.checkpoints
                && let Ok(signer) = crate::checkpoint::CheckpointSigner::load(&c.signing_key)
            {
                keys.push(signer.verifying_key());
            }
            let trust = match &config.signing {
                Some(signing) => Some(signing.load().context("signing.trust")?),
                None => None,
            };
            let log = airlock_eventlog::EventLog::connect(config.nats).await?;
            let report = crate::verify::verify(&log, &keys, trust.as_ref()).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.writers.checked && !report.writers.signed.is_empty() {
                eprintln!(
                    "airlock-control: the log holds signed events but the configuration has no \
                     `signing:` section listing the writers' public keys: who wrote them was not checked"
                );
                return Ok(ExitCode::FAILURE);
            }
            if report.writers.unsigned > 0 {
                eprintln!(
                    "airlock-control: {} events are unsigned (written before event signing, or by \
                     no Airlock writer): their writers cannot be told",
                    report.writers.unsigned
                );
            }
            if !report.signatures_checked {
                eprintln!(
                    "airlock-control: the log holds signed checkpoints but no public key was given \
                     (--checkpoint-key): their signatures were not checked"
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Export {
            config,
            from,
            to,
            format,
            output,
        } => {
            let ocsf = format == "ocsf";
            let config = crate::config::load(&config)?;
            let log = airlock_eventlog::EventLog::connect(config.nats).await?;
            let written = match output {
                Some(path) => {
                    let file = std::fs::File::create(&path)
                        .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
                    crate::export::export(&log, from, to, ocsf, &mut std::io::BufWriter::new(file)).await?
                }
                None => {
                    let stdout = std::io::stdout();
                    crate::export::export(&log, from, to, ocsf, &mut std::io::BufWriter::new(stdout.lock()))
                        .await?
                }
            };
            eprintln!("airlock-control: exported {written} events");
            Ok(ExitCode::SUCCESS)
        }
        Command::SigningKey { private, public } => {
            let id = crate::checkpoint::generate_key(&private, &public)?;
            println!(
                "key {id}: private key {}, public key {}",
                private.display(),
                public.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { command } => crate::policy_cmd::simulate(command).await,
        Command::Review { command } => crate::review_cmd::review(command).await,
        Command::Login(args) => crate::review_cmd::login(args).await,
        Command::Forward(args) => crate::forward::forward(args).await.map(|()| ExitCode::SUCCESS),
        Command::Config {
            command: ConfigCommand::Check { config },
        } => Ok(config_check(&config)),
        Command::Identity {
            command: IdentityCommand::Check { config },
        } => {
            let text = std::fs::read_to_string(&config)?;
            let section: airlock_identity::IdentitySection = serde_norway::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: identity section: {e}", config.display()))?;
            let mut token = String::new();
            std::io::stdin().read_to_string(&mut token)?;
            let result = airlock_identity::check_token(&section.identity, &token).await;
            let report = airlock_identity::CheckReport::from_result(&result);
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if result.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
