//! The statement corpus (`corpus.yaml`): every statement's verdict under the
//! named policies, and no bypass attempt allowed. Prints every mismatch, not
//! just the first.

use std::collections::BTreeMap;

use airlock_policy::config::ApprovalDefaults;
use airlock_policy::{Action, Policy, PreparedStatements};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    bypass_never_allowed_under: Vec<String>,
    policies: BTreeMap<String, String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    sql: String,
    expect: BTreeMap<String, String>,
    #[serde(default)]
    kinds: Vec<String>,
    #[serde(default)]
    before: Vec<String>,
    #[serde(default)]
    bypass: bool,
}

fn verdict(policy: &Policy, case: &Case) -> airlock_policy::Verdict {
    let mut session = PreparedStatements::new();
    for statement in &case.before {
        let v = policy.evaluate(statement, "public", &session);
        session.apply(&v.prepared_changes);
    }
    policy.evaluate(&case.sql, "public", &session)
}

#[test]
fn corpus_verdicts() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus.yaml"))?;
    let corpus: Corpus = serde_norway::from_str(&text)?;
    let mut policies = BTreeMap::new();
    for (name, yaml) in &corpus.policies {
        let policy = Policy::from_yaml(yaml, name, &ApprovalDefaults::default())
            .map_err(|e| anyhow::anyhow!("corpus policy {name}: {e}"))?;
        policies.insert(name.clone(), policy);
    }
    let mut failures = Vec::new();
    let bypasses = corpus.cases.iter().filter(|c| c.bypass).count();
    for case in &corpus.cases {
        for (name, expected) in &case.expect {
            let Some(policy) = policies.get(name) else {
                failures.push(format!("{:?}: unknown policy {name}", case.sql));
                continue;
            };
            let v = verdict(policy, case);
            if v.action.name() != expected {
                failures.push(format!(
                    "{:?} under {name}: expected {expected}, got {} ({}; kinds {:?})",
                    case.sql,
                    v.action,
                    v.reason,
                    v.kinds().iter().map(|k| k.name()).collect::<Vec<_>>()
                ));
            }
            let kinds: Vec<&str> = v.kinds().iter().map(|k| k.name()).collect();
            for k in &case.kinds {
                if !kinds.contains(&k.as_str()) {
                    failures.push(format!(
                        "{:?} under {name}: kind {k} missing from {kinds:?}",
                        case.sql
                    ));
                }
            }
        }
        if case.bypass {
            for name in &corpus.bypass_never_allowed_under {
                let v = verdict(&policies[name], case);
                if v.action == Action::Allow {
                    failures.push(format!(
                        "BYPASS {:?} allowed under {name}: {}",
                        case.sql, v.reason
                    ));
                }
            }
        }
    }
    assert!(
        corpus.cases.len() >= 150,
        "corpus has only {} statements",
        corpus.cases.len()
    );
    assert!(
        bypasses * 2 >= corpus.cases.len(),
        "only {bypasses} of {} are bypass attempts",
        corpus.cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}
