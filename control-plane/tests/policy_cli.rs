//! `airlock-control policy check|explain`, run as the built binary.

use std::path::Path;
use std::process::{Command, Output};

const CONFIG: &str = "\
identity:
  issuer: https://issuer.example/v2.0
  group_names:
    db-maintenance-agents: 6f1d1a52-0c3e-4b43-9d6e-2f1b5d0c9a11
    db-reviewers: 0b7e2f4c-8a5d-4c1e-9f3a-7d2c6b1e4a90
approvals:
  reviewers: [db-reviewers]
  timeout: 15m
connections:
  - name: prod-maintenance
    upstream: postgres://maint@127.0.0.1:5432/shop
    password_env: PROD_MAINT_PASSWORD
policies:
  - policy: db-maintenance-agents
    connection: prod-maintenance
    rules:
      - match: SELECT
        action: allow
      - match: DELETE|DROP|UPDATE
        action: require-approval
    record: true
";

fn airlock_control(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airlock-control"))
        .args(args)
        .output()
        .expect("run airlock-control")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.display().to_string()
}

#[test]
fn check_accepts_the_seed_config_and_a_standalone_policy() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "airlock.yaml", CONFIG);
    let standalone = write(
        dir.path(),
        "agents.yaml",
        "policy: db-maintenance-agents\nconnection: prod-maintenance\nrules:\n  - match: DELETE\n    action: require-approval\n",
    );
    let out = airlock_control(&["policy", "check", &config, &standalone, "--config", &config]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok: policy db-maintenance-agents on prod-maintenance, 2 rules"),
        "{stdout}"
    );
    assert!(stdout.contains("agents.yaml: ok"), "{stdout}");
}

#[test]
fn check_names_file_line_and_a_hint_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.yaml",
        "policy: g\nconnection: c\nreviewers: [r]\nrules:\n  - match: SELECT\n    action: allow\n  - match: DELET\n    action: deny\n",
    );
    let good = write(dir.path(), "airlock.yaml", CONFIG);
    let out = airlock_control(&["policy", "check", &good, &bad]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{bad}:7:")), "{stderr}");
    assert!(stderr.contains("unknown statement kind `DELET`"), "{stderr}");
    assert!(stderr.contains("hint: write one of: SELECT"), "{stderr}");
    // A require-approval rule with no reviewers anywhere, checked alone.
    let lonely = write(
        dir.path(),
        "lonely.yaml",
        "policy: g\nconnection: c\nrules:\n  - match: DELETE\n    action: require-approval\n",
    );
    let out = airlock_control(&["policy", "check", &lonely]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{lonely}:4:")), "{stderr}");
    assert!(stderr.contains("hint: add `reviewers: [group]`"), "{stderr}");
}

#[test]
fn explain_json_shows_the_delete_hidden_in_a_cte() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "airlock.yaml", CONFIG);
    let out = airlock_control(&[
        "policy",
        "explain",
        "--policy",
        &config,
        "--connection",
        "prod-maintenance",
        "--group",
        "db-maintenance-agents",
        "--sql",
        "WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(v["action"], "require-approval");
    assert_eq!(v["kinds"], serde_json::json!(["SELECT", "DELETE"]));
    assert_eq!(v["tables"], serde_json::json!(["public.orders"]));
    assert_eq!(v["rule"]["index"], 2);
    assert_eq!(
        v["rule"]["text"],
        "match: UPDATE|DELETE|DROP, action: require-approval"
    );
    assert_eq!(v["reviewers"], serde_json::json!(["db-reviewers"]));
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()));

    let out = airlock_control(&[
        "policy",
        "explain",
        "--policy",
        &config,
        "--sql",
        "SELECT pg_terminate_backend(1)",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("action: require-approval\nrule:   none (default)"),
        "{text}"
    );
    assert!(text.contains("FUNCTION"), "{text}");
}
