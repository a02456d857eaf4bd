//! An approval enforces what the reviewer saw: the approved statement runs
//! in a transaction of the proxy's and is rolled back when it would change
//! more rows of a table than its bound. Through the real binaries against
//! real PostgreSQL: the race (rows matching the predicate inserted between
//! the approval screen and the execution), a bound raised by the reviewer,
//! and an agent's own transaction kept (savepoint) or failed as after any
//! error, over both query protocols.

use std::time::Duration;

use airlock_e2e::binaries::{ALICE, BinaryStack};
use airlock_e2e::{StackBuilder, request_id};
use serde_json::{Value, json};

const DATABASE: &str = "
CREATE TABLE public.order_lines (order_id int REFERENCES public.orders ON DELETE CASCADE, n int);
INSERT INTO public.order_lines SELECT id, k FROM public.orders, generate_series(1, 2) k WHERE id <= 10;
CREATE TABLE public.audit (order_id int);
CREATE FUNCTION public.audit_delete() RETURNS trigger LANGUAGE plpgsql
  AS $$ BEGIN INSERT INTO public.audit (order_id) VALUES (OLD.id); RETURN OLD; END $$;
CREATE TRIGGER orders_audit AFTER DELETE ON public.orders FOR EACH ROW EXECUTE FUNCTION public.audit_delete();
CREATE TABLE public.notes (body text);
GRANT ALL ON public.order_lines, public.audit, public.notes TO maint;
ANALYZE public.orders, public.order_lines;
";

const RULES: &str = "      - match: SELECT
        action: allow
      - match: INSERT
        tables: [public.notes]
        action: allow
      - match: DELETE
        action: require-approval
        dry_run: true
";

fn start() -> BinaryStack {
    tokio::task::block_in_place(|| {
        StackBuilder::new()
            .orders(100)
            .database_setup(DATABASE)
            .rules(RULES)
            .reviewer()
            .start_binaries()
    })
}

/// The log, one exported line per event.
fn export(stack: &BinaryStack) -> Vec<String> {
    let out = stack
        .control_command(&["export", "--from", "1"])
        .output()
        .expect("export");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn count(stack: &BinaryStack, table: &str) -> i64 {
    stack
        .pg
        .psql("shop", &format!("SELECT count(*) FROM public.{table}"))
        .parse()
        .expect("a count")
}

/// Rows matching `id <= 10` that appear after the request was filed,
/// written straight to PostgreSQL.
fn race(stack: &BinaryStack, ids: &[i32]) {
    let values: Vec<String> = ids.iter().map(|i| format!("({i}, {})", i * 100)).collect();
    stack.pg.psql(
        "shop",
        &format!(
            "INSERT INTO public.orders (id, total) VALUES {}",
            values.join(", ")
        ),
    );
}

/// Alice approves `id` through the REST API, with `max_rows` when given.
async fn approve(stack: &BinaryStack, id: &str, max_rows: Option<Value>) -> Value {
    let alice = stack.user_token(ALICE);
    let mut body = json!({"reason": "checked"});
    if let Some(m) = max_rows {
        body["max_rows"] = m;
    }
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/requests/{id}/approve", stack.reviewer_url))
        .bearer_auth(&alice)
        .json(&body)
        .send()
        .await
        .expect("approve");
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{v}");
    v
}

/// Waits for the hold notice on `notices`; the request id.
async fn held(notices: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    let notice = tokio::time::timeout(Duration::from_secs(30), notices.recv())
        .await
        .expect("held in time")
        .expect("notice");
    request_id(&notice).expect("a request id")
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_default()
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_that_appear_after_approval_are_refused_and_a_raised_bound_runs() {
    let stack = start();
    let agent = stack.agent_token();
    let (client, mut notices) = stack.connect(&agent).await;
    let client = std::sync::Arc::new(client);
    let sql = "DELETE FROM orders WHERE id <= 10 RETURNING id";
    let c = client.clone();
    let run = tokio::spawn(async move { c.simple_query(sql).await });
    let id = held(&mut notices).await;
    // The race: three more rows match by the time it runs.
    race(&stack, &[0, -1, -2]);
    approve(&stack, &id, None).await;
    let e = run.await.expect("task").expect_err("refused past its bound");
    assert_eq!(sqlstate(&e), "ZA001", "{e:?}");
    assert_eq!(
        message(&e),
        format!(
            "request {id} was approved for at most 10 rows of public.orders; it would have changed 13; nothing was changed"
        )
    );
    // Every row is still there, cascades and trigger writes undone.
    assert_eq!(count(&stack, "orders"), 103);
    assert_eq!(count(&stack, "order_lines"), 20);
    assert_eq!(count(&stack, "audit"), 0);
    // The session goes on, outside any transaction.
    let rows = client
        .simple_query("SELECT 1")
        .await
        .expect("the session goes on");
    assert!(!rows.is_empty());

    // Asked again, more rows appear again; raising the bound for orders
    // alone is not enough (the audit rows its trigger writes are bounded
    // by the dry run's count too); raising both, it runs.
    let c = client.clone();
    let run = tokio::spawn(async move { c.simple_query(sql).await });
    let id = held(&mut notices).await;
    race(&stack, &[-3, -4]);
    approve(&stack, &id, Some(json!({"public.orders": 20}))).await;
    let e = run.await.expect("task").expect_err("audit rows past their bound");
    assert!(
        message(&e).contains("at most 13 rows of public.audit; it would have changed 15"),
        "{e:?}"
    );
    assert_eq!(count(&stack, "orders"), 105);
    let c = client.clone();
    let run = tokio::spawn(async move { c.simple_query(sql).await });
    let id = held(&mut notices).await;
    approve(
        &stack,
        &id,
        Some(json!({"public.orders": 20, "public.audit": 20})),
    )
    .await;
    let answer = run.await.expect("task").expect("runs within the raised bound");
    let returned = answer
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(returned, 15, "RETURNING rows once the check passed");
    assert_eq!(count(&stack, "orders"), 90);
    assert_eq!(count(&stack, "order_lines"), 0);
    assert_eq!(count(&stack, "audit"), 15);
    // The check is in the log: the refusal with its counts, the run with
    // its counts.
    let log = export(&stack);
    let event = |kind: &str, has: &str| {
        log.iter()
            .find(|l| l.contains(&format!("\"kind\":\"{kind}\"")) && l.contains(has))
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} with {has} in the log"))
    };
    let refused = event("statement_refused", "CAUSE_BOUND_EXCEEDED");
    assert!(
        refused.contains("\"exceeded\":true") && refused.contains("public.order_lines"),
        "{refused}"
    );
    let ran = event("statement_executed", "DELETE 15");
    assert!(ran.contains("\"max_rows\":\"20\""), "{ran}");
    // And replay counts them.
    let out = stack.control_command(&["replay"]).output().expect("replay");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("replay JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["statements_refused"]["bound_exceeded"], 2, "{report}");
    assert_eq!(report["statements_bounded"], 1, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn inside_the_agents_transaction_a_savepoint_keeps_its_work_and_a_refusal_fails_it() {
    let stack = start();
    let agent = stack.agent_token();
    let (client, mut notices) = stack.connect(&agent).await;
    let client = std::sync::Arc::new(client);
    // Refused inside a transaction: failed until ROLLBACK, as after any
    // error; the agent's earlier work goes with it, as PostgreSQL would.
    client
        .simple_query("BEGIN; INSERT INTO notes VALUES ('before')")
        .await
        .expect("begin");
    let c = client.clone();
    let run = tokio::spawn(async move { c.simple_query("DELETE FROM orders WHERE id <= 10").await });
    let id = held(&mut notices).await;
    race(&stack, &[0]);
    approve(&stack, &id, None).await;
    let e = run.await.expect("task").expect_err("refused");
    assert_eq!(sqlstate(&e), "ZA001");
    let e = client
        .simple_query("SELECT 1")
        .await
        .expect_err("the transaction failed");
    assert_eq!(sqlstate(&e), "25P02", "{e:?}");
    client.simple_query("ROLLBACK").await.expect("rollback");
    assert_eq!(count(&stack, "orders"), 101);
    assert_eq!(count(&stack, "notes"), 0);

    // Within its bounds: the savepoint is released, the agent's earlier
    // work and the statement commit together with the agent's COMMIT.
    client
        .simple_query("BEGIN; INSERT INTO notes VALUES ('kept')")
        .await
        .expect("begin");
    let c = client.clone();
    let run = tokio::spawn(async move { c.simple_query("DELETE FROM orders WHERE id <= 10").await });
    let id = held(&mut notices).await;
    approve(&stack, &id, None).await;
    run.await.expect("task").expect("runs within its bounds");
    assert_eq!(count(&stack, "orders"), 101, "not committed yet");
    // (SELECT 1: after a statement that ran a trigger, this session's
    // reads of tables are held until its transaction ends.)
    let rows = client
        .simple_query("SELECT 1")
        .await
        .expect("the transaction is usable");
    assert!(!rows.is_empty());
    client.simple_query("COMMIT").await.expect("commit");
    assert_eq!(count(&stack, "orders"), 90);
    assert_eq!(count(&stack, "notes"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_extended_protocol_the_bound_holds_and_the_session_goes_on() {
    let stack = start();
    let agent = stack.agent_token();
    let (client, mut notices) = stack.connect(&agent).await;
    let client = std::sync::Arc::new(client);
    let delete = "DELETE FROM orders WHERE id <= $1";
    // Outside a transaction: refused past its bound, nothing changed.
    let c = client.clone();
    let run = tokio::spawn(async move { c.execute(delete, &[&10i32]).await });
    let id = held(&mut notices).await;
    race(&stack, &[0, -1]);
    approve(&stack, &id, None).await;
    let e = run.await.expect("task").expect_err("refused past its bound");
    assert_eq!(sqlstate(&e), "ZA001", "{e:?}");
    assert!(
        message(&e).contains("at most 10 rows of public.orders; it would have changed 12"),
        "{e:?}"
    );
    assert_eq!(count(&stack, "orders"), 102);
    assert_eq!(count(&stack, "order_lines"), 20);
    let one: i32 = client
        .query_one("SELECT 1", &[])
        .await
        .expect("the session goes on")
        .get(0);
    assert_eq!(one, 1);
    // Inside the agent's transaction: refused, the transaction failed as
    // after any error; then, within its bounds, kept with the agent's work.
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .execute("INSERT INTO notes VALUES ($1)", &[&"lost"])
        .await
        .expect("insert");
    let c = client.clone();
    let run = tokio::spawn(async move { c.execute(delete, &[&10i32]).await });
    let id = held(&mut notices).await;
    race(&stack, &[-2]);
    approve(&stack, &id, None).await;
    let e = run.await.expect("task").expect_err("refused");
    assert_eq!(sqlstate(&e), "ZA001", "{e:?}");
    let e = client
        .query_one("SELECT 1", &[])
        .await
        .expect_err("failed transaction");
    assert_eq!(sqlstate(&e), "25P02", "{e:?}");
    client.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(count(&stack, "notes"), 0);
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .execute("INSERT INTO notes VALUES ($1)", &[&"kept"])
        .await
        .expect("insert");
    let c = client.clone();
    let run = tokio::spawn(async move { c.execute(delete, &[&10i32]).await });
    let id = held(&mut notices).await;
    approve(&stack, &id, None).await;
    let deleted = run.await.expect("task").expect("within its bounds");
    assert_eq!(deleted, 13, "the command tag the agent would have had");
    let one: i32 = client.query_one("SELECT 1", &[]).await.expect("usable").get(0);
    assert_eq!(one, 1);
    client.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(count(&stack, "orders"), 90);
    assert_eq!(count(&stack, "notes"), 1);
    assert_eq!(count(&stack, "audit"), 13);
}

/// Review finding: a dry run that changed nothing gave the grant no bounds,
/// and the statement ran unbounded once rows appeared. Its target is now
/// bounded at what the dry run saw: nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_that_changed_nothing_bounds_its_target_at_zero() {
    let stack = tokio::task::block_in_place(|| {
        StackBuilder::new()
            .orders(100)
            .database_setup(&format!(
                "{DATABASE}\nCREATE TABLE public.purge_list (order_id int); GRANT ALL ON public.purge_list TO maint; \
                 ANALYZE public.purge_list;"
            ))
            .rules(RULES)
            .reviewer()
            .start_binaries()
    });
    let agent = stack.agent_token();
    let (client, mut notices) = stack.connect(&agent).await;
    let sql = "DELETE FROM orders WHERE id IN (SELECT order_id FROM purge_list)";
    let run = tokio::spawn(async move { client.simple_query(sql).await });
    let id = held(&mut notices).await;
    // The list fills after the reviewer saw "changed no rows".
    stack.pg.psql(
        "shop",
        "INSERT INTO public.purge_list SELECT g FROM generate_series(1, 50) g",
    );
    approve(&stack, &id, None).await;
    let e = run.await.expect("task").expect_err("refused");
    assert_eq!(sqlstate(&e), "ZA001", "{e:?}");
    assert!(message(&e).contains("at most 0 rows of public.orders"), "{e:?}");
    assert_eq!(count(&stack, "orders"), 100);
}

/// Review finding: the proxy's own statements, sent as simple Queries,
/// destroyed the client's unnamed prepared statement, so the approved Bind
/// of a driver that uses it (node-postgres, psycopg, libpq's PQexecParams)
/// failed. Through node-postgres's unnamed statement: bounded and run.
#[tokio::test(flavor = "multi_thread")]
async fn a_driver_using_the_unnamed_statement_runs_its_approved_delete_under_bounds() {
    let stack = start();
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients");
    assert!(
        dir.join("node_modules/pg/package.json").is_file(),
        "Node's pg driver is missing: run ./deploy/local/install-deps.sh (installs it into tests/clients)"
    );
    let agent = stack.agent_token();
    let child = tokio::process::Command::new("node")
        .arg(dir.join("agent.js"))
        .args(["pg", &stack.proxy_port.to_string(), &agent])
        .arg("DELETE FROM orders WHERE id <= $1")
        .arg("10")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (run ./deploy/local/install-deps.sh)");
    let alice = stack.user_token(ALICE);
    let pending = airlock_e2e::review::pending(&mut stack.reviewer().await, &alice, |_| true).await;
    approve(&stack, &pending.request_id, None).await;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the agent finished")
        .expect("output");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 10", "{out:?}");
    assert_eq!(count(&stack, "orders"), 90);
    let ran = export(&stack)
        .into_iter()
        .find(|l| l.contains("\"kind\":\"statement_executed\"") && l.contains("DELETE 10"))
        .expect("the DELETE in the log");
    assert!(ran.contains("\"bound\""), "it ran under bounds: {ran}");
}

/// Review finding: the estimate named a leaf partition while the counters
/// named its partitioned table, so an estimate-only bound never tripped.
/// Both now name the topmost parent.
#[tokio::test(flavor = "multi_thread")]
async fn a_bound_on_a_leaf_partition_counts_the_rows_it_really_changes() {
    let stack = tokio::task::block_in_place(|| {
        StackBuilder::new()
            .database_setup(
                "CREATE TABLE public.events (id int, note text) PARTITION BY RANGE (id);
                 CREATE TABLE public.events_1 PARTITION OF public.events FOR VALUES FROM (0) TO (1000);
                 INSERT INTO public.events SELECT g, 'x' FROM generate_series(1, 500) g;
                 GRANT ALL ON public.events, public.events_1 TO maint;
                 ANALYZE public.events;",
            )
            .rules(
                "      - match: SELECT
        action: allow
      - match: DELETE
        action: require-approval
",
            )
            .reviewer()
            .start_binaries()
    });
    let agent = stack.agent_token();
    let (client, mut notices) = stack.connect(&agent).await;
    let run = tokio::spawn(async move { client.simple_query("DELETE FROM events_1 WHERE id <= 2").await });
    let id = held(&mut notices).await;
    // Rows matching it appear: far past twice the estimate plus ten.
    stack.pg.psql(
        "shop",
        "INSERT INTO public.events SELECT 1, 'late' FROM generate_series(1, 100)",
    );
    approve(&stack, &id, None).await;
    let e = run.await.expect("task").expect_err("refused");
    assert_eq!(sqlstate(&e), "ZA001", "{e:?}");
    assert!(message(&e).contains("rows of public.events;"), "{e:?}");
    assert_eq!(count(&stack, "events"), 600);
}
