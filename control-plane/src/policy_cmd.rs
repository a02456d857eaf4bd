//! `airlock-control policy check|explain|simulate`: lint policy files, show
//! the verdict a statement would get, and judge the log's statements again
//! under a candidate ([`crate::simulate`]). `check` and `explain` are pure:
//! no runtime, no log, no network; they run before telemetry starts so
//! `--json` output is the only thing on stdout.

// Printing results to standard output is what these commands are for.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlock_policy::config::ApprovalDefaults;
use airlock_policy::{Decision, PolicySet, PreparedStatements, Verdict};
use clap::Subcommand;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Lint policy files: airlock.yaml files (their `policies:`) and
    /// standalone policy files. Exits non-zero if any has an error.
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The airlock.yaml whose `approvals:` defaults apply to standalone files.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Judge the statements recorded in the log again under candidate
    /// policies and report what would change (reads the log, never writes it).
    Simulate {
        /// The airlock.yaml naming the log (`nats:`) and its writers' keys (`signing:`).
        #[arg(long, default_value = "airlock.yaml")]
        config: PathBuf,
        /// The candidate: an airlock.yaml (its `policies:`) or a standalone policy file.
        #[arg(long)]
        policy: PathBuf,
        /// First event: a stream sequence or an RFC 3339 time.
        #[arg(long)]
        from: Option<crate::simulate::Bound>,
        /// Last event: a stream sequence or an RFC 3339 time.
        #[arg(long)]
        to: Option<crate::simulate::Bound>,
        /// Only sessions of this identity (its object id or display name, exactly).
        #[arg(long)]
        identity: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the verdict a statement gets under a policy.
    Explain {
        /// An airlock.yaml or a standalone policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Which connection's policy, when the file has several.
        #[arg(long)]
        connection: Option<String>,
        /// Which group's policy (name or object id), when the file has several.
        #[arg(long)]
        group: Option<String>,
        /// The statement (or several, separated by `;`).
        #[arg(long)]
        sql: String,
        /// Schema for unqualified table names (default: the connection's, else `public`).
        #[arg(long)]
        schema: Option<String>,
        /// The airlock.yaml whose `approvals:` defaults apply to a standalone file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `policy simulate`: connects to the log named by `config`.
pub async fn simulate(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    let PolicyCommand::Simulate {
        config,
        policy,
        from,
        to,
        identity,
        json,
    } = command
    else {
        return Ok(run(command));
    };
    let text = std::fs::read_to_string(&config).map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
    let defaults = ApprovalDefaults::from_config_yaml(&text, &config.display().to_string())?;
    let candidate = load(&policy, &defaults)?;
    let config = crate::config::load(&config)?;
    let mut log = airlock_eventlog::EventLog::connect(config.nats).await?;
    match &config.signing {
        Some(signing) => {
            log = log.with_trust(std::sync::Arc::new(
                signing
                    .load()
                    .map_err(|e| anyhow::anyhow!("signing.trust: {e}"))?,
            ))
        }
        None => eprintln!(
            "airlock-control: no `signing:` section: every event is simulated as it is, whoever wrote it"
        ),
    }
    let started = std::time::Instant::now();
    let report = crate::simulate::run(
        &log,
        crate::simulate::Simulation::new(candidate, from, to, identity),
    )
    .await?;
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "airlock-control: {} statements from {} events in {took:.2}s ({:.0} statements/s)",
        report.statements,
        report.events_read,
        report.statements as f64 / took.max(1e-9)
    );
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::simulate::text(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a policy subcommand; errors go to stderr.
pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Simulate { .. } => {
            eprintln!("airlock-control: policy simulate needs the log: run it through the CLI");
            ExitCode::FAILURE
        }
        PolicyCommand::Check { files, config } => check(&files, config.as_deref()),
        PolicyCommand::Explain {
            policy,
            connection,
            group,
            sql,
            schema,
            config,
            json,
        } => {
            match explain(
                &policy,
                connection.as_deref(),
                group.as_deref(),
                &sql,
                schema.as_deref(),
                config.as_deref(),
            ) {
                Ok(verdict) => {
                    if json {
                        println!("{}", verdict_json(&verdict));
                    } else {
                        print!("{}", verdict_text(&verdict));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("airlock-control: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn defaults(config: Option<&Path>) -> anyhow::Result<ApprovalDefaults> {
    let Some(path) = config else {
        return Ok(ApprovalDefaults::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(ApprovalDefaults::from_config_yaml(
        &text,
        &path.display().to_string(),
    )?)
}

fn load(path: &Path, defaults: &ApprovalDefaults) -> anyhow::Result<PolicySet> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(PolicySet::from_yaml(
        &text,
        &path.display().to_string(),
        defaults,
    )?)
}

fn check(files: &[PathBuf], config: Option<&Path>) -> ExitCode {
    let defaults = match defaults(config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for file in files {
        match load(file, &defaults) {
            Ok(set) => {
                for p in &set.policies {
                    println!(
                        "{}: ok: policy {} on {}, {} rules, digest {}",
                        file.display(),
                        p.name,
                        p.connection,
                        p.rules.len(),
                        p.digest()
                    );
                }
            }
            Err(e) => {
                failed = true;
                eprintln!("{e:#}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn explain(
    file: &Path,
    connection: Option<&str>,
    group: Option<&str>,
    sql: &str,
    schema: Option<&str>,
    config: Option<&Path>,
) -> anyhow::Result<Verdict> {
    let set = load(file, &defaults(config)?)?;
    let policy = set.select_one(connection, group)?;
    let schema = schema.unwrap_or_else(|| set.default_schema(&policy.connection));
    Ok(policy.evaluate(sql, schema, &PreparedStatements::new()))
}

/// Which rule (or what else) decided, in a line.
pub(crate) fn decided_by_text(v: &Verdict) -> String {
    match &v.decision {
        Decision::Rule { index, text } => format!("rule {index} ({text})"),
        other => decided_by(other).to_owned(),
    }
}

fn decided_by(d: &Decision) -> &'static str {
    match d {
        Decision::Rule { .. } => "rule",
        Decision::Default => "default",
        Decision::Unparsed { .. } => "unparsed",
        Decision::Oversized { .. } => "oversized",
        Decision::TransactionControl => "transaction-control",
        Decision::Empty => "empty",
    }
}

/// The `--json` object: `action`, `kinds`, `tables`, `rule`, `reason`, and
/// the rest of the verdict.
fn verdict_json(v: &Verdict) -> serde_json::Value {
    let rule = match &v.decision {
        Decision::Rule { index, text } => json!({ "index": index, "text": text }),
        _ => serde_json::Value::Null,
    };
    json!({
        "action": v.action,
        "kinds": v.kinds(),
        "tables": v.tables(),
        "rule": rule,
        "decided_by": decided_by(&v.decision),
        "reason": v.reason,
        "parsed": v.parsed(),
        "policy": v.policy,
        "policy_digest": v.policy_digest,
        "reviewers": v.reviewers,
        "approvals": v.approvals,
        "timeout_secs": v.timeout.as_secs(),
        "effects": v.effects,
    })
}

fn verdict_text(v: &Verdict) -> String {
    let mut out = format!("action: {}\n", v.action);
    match &v.decision {
        Decision::Rule { index, text } => out.push_str(&format!("rule:   {index} ({text})\n")),
        other => out.push_str(&format!("rule:   none ({})\n", decided_by(other))),
    }
    out.push_str(&format!("reason: {}\n", v.reason));
    if !v.reviewers.is_empty() {
        out.push_str(&format!(
            "hold:   {} approval(s) from {} within {}s\n",
            v.approvals,
            v.reviewers.join(", "),
            v.timeout.as_secs()
        ));
    }
    out.push_str(&format!("policy: {} ({})\n", v.policy, v.policy_digest));
    for e in &v.effects {
        let what: Vec<&str> = e
            .effect
            .tables
            .iter()
            .chain(&e.effect.functions)
            .map(String::as_str)
            .collect();
        out.push_str(&format!(
            "  {:<16} {:<40} -> {} ({})\n",
            e.effect.kind.name(),
            what.join(", "),
            e.action,
            decided_by(&e.decision)
        ));
    }
    out
}
