//! Real Python drivers (psycopg 3, asyncpg) as agents through the proxy:
//! reads flow; a DELETE with bound parameters waits for a reviewer; a denial
//! is an ordinary error the driver reports with its SQLSTATE.

use std::path::PathBuf;
use std::time::Duration;

use airlock_e2e::review::vote;
use airlock_e2e::{AGENT_TOKEN, Stack, StackBuilder};
use airlock_eventlog::proto;

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.airlock/tools/venv/bin/python");
    assert!(
        p.is_file(),
        "the Python test clients are missing: run ./deploy/local/install-deps.sh (installs psycopg and asyncpg)"
    );
    p
}

/// Runs `program script mode <proxy port> <token> sql params...`, an agent
/// that prints `ok <rows>` or `error <SQLSTATE> <message>`.
fn run_agent(
    program: PathBuf,
    script: &str,
    mode: &str,
    stack: &Stack,
    sql: &str,
    params: &[i32],
) -> tokio::process::Child {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(script);
    tokio::process::Command::new(program)
        .arg(script)
        .arg(mode)
        .arg(stack.proxy().port().to_string())
        .arg(AGENT_TOKEN)
        .arg(sql)
        .args(params.iter().map(|p| p.to_string()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("run the {mode} agent: {e}"))
}

fn agent(stack: &Stack, driver: &str, sql: &str, params: &[i32]) -> tokio::process::Child {
    run_agent(python(), "agent.py", driver, stack, sql, params)
}

async fn output(child: tokio::process::Child) -> String {
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the agent finished")
        .expect("agent output");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !stdout.is_empty(),
        "the agent printed nothing; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The one request held, as alice sees it: its id, once its statement
/// shows `text` with `value` bound first.
async fn held(stack: &Stack, text: &str, value: &str) -> String {
    let request = pending(stack).await;
    let statement = request
        .request
        .as_ref()
        .and_then(|r| r.statement.clone())
        .expect("statement");
    assert_eq!(statement.text, text);
    assert_eq!(
        statement.parameters.first().map(|p| p.display.as_str()),
        Some(value)
    );
    request.request_id
}

async fn pending(stack: &Stack) -> proto::RequestView {
    airlock_e2e::review::pending(&mut stack.reviewer().await, "alice", |_| true).await
}

async fn decide(stack: &Stack, id: &str, decision: proto::Decision) {
    stack
        .decide("alice", vote(id, decision, "checked"))
        .await
        .expect("decide");
}

/// Alice denies the one held request: the agent reports the refusal
/// with its SQLSTATE, and `orders` still has `rows` rows.
async fn denied(stack: &Stack, agent: tokio::process::Child, rows: &str) {
    let request = pending(stack).await;
    decide(stack, &request.request_id, proto::Decision::Deny).await;
    let out = output(agent).await;
    assert!(out.starts_with("error 42501"), "{out}");
    assert!(out.contains("denied by Alice"), "{out}");
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM orders"), rows);
}

#[tokio::test]
async fn psycopg_and_asyncpg_read_and_wait_for_approval() {
    let stack = StackBuilder::new().start().await;
    for (driver, sql) in [
        ("psycopg", "SELECT count(*) FROM orders WHERE id > %s"),
        ("asyncpg", "SELECT count(*) FROM orders WHERE id > $1"),
    ] {
        let out = output(agent(&stack, driver, sql, &[0])).await;
        assert_eq!(out, "ok 10", "{driver} reads");
    }

    // psycopg: a parameterised DELETE, approved.
    let child = agent(&stack, "psycopg", "DELETE FROM orders WHERE id <= %s", &[2]);
    let id = held(&stack, "DELETE FROM orders WHERE id <= $1", "2").await;
    decide(&stack, &id, proto::Decision::Approve).await;
    assert_eq!(output(child).await, "ok 2");
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM orders"), "8");

    // asyncpg: a parameterised DELETE, denied.
    let child = agent(&stack, "asyncpg", "DELETE FROM orders WHERE id > $1", &[5]);
    denied(&stack, child, "8").await;
}

fn node_agent(stack: &Stack, mode: &str, sql: &str, params: &[i32]) -> tokio::process::Child {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients");
    assert!(
        dir.join("node_modules/pg/package.json").is_file(),
        "Node's pg driver is missing: run ./deploy/local/install-deps.sh (installs it into tests/clients)"
    );
    let node = which("node").unwrap_or_else(|| {
        panic!("node was not found on PATH: run ./deploy/local/install-deps.sh (installs nodejs and npm)")
    });
    run_agent(node, "agent.js", mode, stack, sql, params)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}

#[tokio::test]
async fn node_pg_reads_while_a_delete_waits_and_only_approved_bytes_run() {
    let stack = StackBuilder::new().start().await;
    assert_eq!(
        output(node_agent(
            &stack,
            "pg",
            "SELECT count(*) FROM orders WHERE id > $1",
            &[3]
        ))
        .await,
        "ok 7"
    );

    // A named prepared DELETE is held; reads on other sessions go on meanwhile.
    let delete = node_agent(&stack, "pg-prepared", "DELETE FROM orders WHERE id > $1", &[7]);
    let id = held(&stack, "DELETE FROM orders WHERE id > $1", "7").await;
    assert_eq!(
        output(node_agent(&stack, "pg", "SELECT count(*) FROM orders", &[])).await,
        "ok 10",
        "a read is not held behind the DELETE"
    );
    decide(&stack, &id, proto::Decision::Approve).await;
    assert_eq!(output(delete).await, "ok 3");
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM orders"), "7");

    // Denied: an ordinary error with its SQLSTATE; PostgreSQL never sees it.
    let delete = node_agent(&stack, "pg", "DELETE FROM orders WHERE id <= $1", &[7]);
    denied(&stack, delete, "7").await;
}
