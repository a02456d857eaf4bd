//! `airlock-control policy check|explain`: lint policy files and show the
//! verdict a statement would get. Pure: no runtime, no log, no network; runs
//! before telemetry starts so `--json` output is the only thing on stdout.

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

/// Runs a policy subcommand; errors go to stderr.
pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
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
