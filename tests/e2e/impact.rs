//! What a reviewer decides on, through the real binaries against real
//! PostgreSQL: the impact estimate (EXPLAIN, never run), the dry run (run
//! once and rolled back, cascades and trigger writes counted, the tables
//! untouched), what may not be tried and why, the agent's own reason and
//! the session's recent statements, over both query protocols.

use std::time::Duration;

use airlock_e2e::binaries::{ALICE, BinaryStack};
use airlock_e2e::{StackBuilder, request_id};
use serde_json::Value;

/// Orders with lines that cascade and a trigger that writes an audit row
/// per deleted order; a function that is not known to only read.
const DATABASE: &str = "
CREATE TABLE public.order_lines (order_id int REFERENCES public.orders ON DELETE CASCADE, n int);
INSERT INTO public.order_lines SELECT id, k FROM public.orders, generate_series(1, 2) k WHERE id <= 10;
CREATE TABLE public.audit (order_id int, at timestamptz DEFAULT now());
CREATE FUNCTION public.audit_delete() RETURNS trigger LANGUAGE plpgsql
  AS $$ BEGIN INSERT INTO public.audit (order_id) VALUES (OLD.id); RETURN OLD; END $$;
CREATE TRIGGER orders_audit AFTER DELETE ON public.orders FOR EACH ROW EXECUTE FUNCTION public.audit_delete();
CREATE FUNCTION public.pick() RETURNS int LANGUAGE sql STABLE AS $$ SELECT 3 $$;
GRANT ALL ON public.order_lines, public.audit TO maint;
ANALYZE public.orders, public.order_lines;
";

const RULES: &str = "      - match: SELECT
        action: allow
      - match: SET
        action: allow
      - match: DELETE
        action: require-approval
        dry_run: true
        reason: deletes need a reviewer
      - match: UPDATE
        action: require-approval
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

fn counts(stack: &BinaryStack) -> [String; 3] {
    ["orders", "order_lines", "audit"]
        .map(|t| stack.pg.psql("shop", &format!("SELECT count(*) FROM public.{t}")))
}

/// The request as the reviewer's REST API shows it to alice.
async fn request(stack: &BinaryStack, id: &str) -> Value {
    let alice = stack.user_token(ALICE);
    let url = format!("{}/api/v1/requests/{id}", stack.reviewer_url);
    for _ in 0..100 {
        let r = reqwest::Client::new()
            .get(&url)
            .bearer_auth(&alice)
            .send()
            .await
            .expect("GET");
        if r.status() == 200 {
            return r.json().await.expect("JSON");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("request {id} never listed");
}

/// The rows a table reports in a list of TableRows.
fn rows_of<'a>(tables: &'a Value, table: &str) -> Option<&'a Value> {
    tables.as_array()?.iter().find(|t| t["table"] == table)
}

async fn hold_simple(
    stack: &BinaryStack,
    token: &str,
    before: &[&str],
    sql: &str,
) -> (String, tokio::task::JoinHandle<()>) {
    let (client, mut notices) = stack.connect(token).await;
    for s in before {
        client
            .simple_query(s)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    let sql = sql.to_owned();
    let task = tokio::spawn(async move {
        let _ = client.simple_query(&sql).await;
    });
    let notice = tokio::time::timeout(Duration::from_secs(30), notices.recv())
        .await
        .expect("held in time")
        .expect("notice");
    (request_id(&notice).expect("request id"), task)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_delete_shows_its_estimate_and_exact_dry_run_and_nothing_changes() {
    let stack = start();
    let agent = stack.agent_token();
    let before = counts(&stack);
    let (id, task) = hold_simple(
        &stack,
        &agent,
        &[
            "SELECT count(*) FROM orders",
            "SET airlock.reason = 'session-wide reason'",
        ],
        "/* airlock-reason: stale orders from <ticket 42> */ DELETE FROM orders WHERE id <= 10",
    )
    .await;
    let r = request(&stack, &id).await;
    // The estimate: about ten rows of public.orders, from the plan.
    let estimate = &r["impact"]["estimate"];
    assert_eq!(estimate["unavailable"], "", "{estimate}");
    let est = rows_of(&estimate["tables"], "public.orders").unwrap_or_else(|| panic!("{estimate}"));
    let n = est["rows"].as_u64().expect("rows");
    assert!((5..=20).contains(&n), "an estimate of about 10 rows: {estimate}");
    assert_eq!(estimate["top_node"], "ModifyTable");
    // The dry run: exactly ten orders, their twenty lines by cascade, and
    // ten audit rows written by the trigger.
    let dry = &r["impact"]["dry_run"];
    assert_eq!(dry["unavailable"], "", "{dry}");
    assert_eq!(dry["command_tag"], "DELETE 10");
    assert_eq!(
        rows_of(&dry["tables"], "public.orders").expect("orders")["deleted"],
        10,
        "{dry}"
    );
    assert_eq!(
        rows_of(&dry["tables"], "public.order_lines").expect("lines")["deleted"],
        20,
        "{dry}"
    );
    assert_eq!(
        rows_of(&dry["tables"], "public.audit").expect("audit")["inserted"],
        10,
        "{dry}"
    );
    // Rolled back: PostgreSQL holds every row still.
    assert_eq!(counts(&stack), before, "the dry run changed nothing");
    // The agent's words for this statement win over the session's.
    assert_eq!(r["agent_reason"], "stale orders from <ticket 42>");
    assert_eq!(r["agent_reason_truncated"], false);
    let recent: Vec<(String, String)> = r["recent_statements"]
        .as_array()
        .expect("recent")
        .iter()
        .map(|s| {
            (
                s["text"].as_str().unwrap_or("").to_owned(),
                s["action"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        recent,
        [
            ("SELECT count(*) FROM orders".to_owned(), "allow".to_owned()),
            (
                "SET airlock.reason = 'session-wide reason'".to_owned(),
                "allow".to_owned()
            )
        ]
    );
    // The page a reviewer opens shows them, escaped and labelled.
    let alice = stack.user_token(ALICE);
    let page = reqwest::Client::new()
        .get(format!("{}/requests/{id}", stack.reviewer_url))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("page");
    let html = page.text().await.expect("html");
    assert!(
        html.contains("stale orders from &lt;ticket 42&gt;"),
        "escaped reason"
    );
    assert!(html.contains("not verified"), "labelled as the requester's words");
    assert!(html.contains("changed exactly"), "the dry run");
    assert!(html.contains("SELECT count(*) FROM orders"), "recent statements");
    task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn extended_protocol_parameters_are_estimated_and_dry_run_as_bound() {
    let stack = start();
    let agent = stack.agent_token();
    let (client, mut notices) = stack.connect(&agent).await;
    client
        .execute("SET airlock.reason = 'cleanup run 7'", &[])
        .await
        .expect("set");
    let task = tokio::spawn(async move {
        let _ = client
            .execute("DELETE FROM orders WHERE id <= $1", &[&4i32])
            .await;
    });
    let notice = tokio::time::timeout(Duration::from_secs(30), notices.recv())
        .await
        .expect("held")
        .expect("notice");
    let id = request_id(&notice).expect("id");
    let r = request(&stack, &id).await;
    let dry = &r["impact"]["dry_run"];
    assert_eq!(dry["command_tag"], "DELETE 4", "{dry}");
    assert_eq!(
        rows_of(&dry["tables"], "public.order_lines").expect("lines")["deleted"],
        8
    );
    let est = rows_of(&r["impact"]["estimate"]["tables"], "public.orders").expect("estimate");
    assert!((1..=10).contains(&est["rows"].as_u64().unwrap_or(0)), "{est}");
    assert_eq!(r["agent_reason"], "cleanup run 7", "the session's reason");
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM public.orders"), "100");
    task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn what_may_not_be_tried_is_not_and_the_reviewer_is_told_why() {
    let stack = start();
    let agent = stack.agent_token();
    // A function call that is not known to only read: planning could run
    // it, so neither an estimate nor a dry run.
    let (id, task) = hold_simple(&stack, &agent, &[], "DELETE FROM orders WHERE id = public.pick()").await;
    let r = request(&stack, &id).await;
    let est = r["impact"]["estimate"]["unavailable"].as_str().unwrap_or("");
    let dry = r["impact"]["dry_run"]["unavailable"].as_str().unwrap_or("");
    assert!(est.contains("public.pick"), "{r}");
    assert!(
        dry.contains("public.pick") && dry.starts_with("not dry-run"),
        "{r}"
    );
    task.abort();
    // A rule without dry_run: an estimate only.
    let (id, task) = hold_simple(&stack, &agent, &[], "UPDATE orders SET total = 0 WHERE id = 1").await;
    let r = request(&stack, &id).await;
    assert!(r["impact"]["dry_run"].is_null(), "{r}");
    assert_eq!(r["impact"]["estimate"]["unavailable"], "", "{r}");
    task.abort();
    // Two statements in one Query: EXPLAIN takes one at a time.
    let (id, task) = hold_simple(
        &stack,
        &agent,
        &[],
        "DELETE FROM orders WHERE id = 1; DELETE FROM orders WHERE id = 2",
    )
    .await;
    let r = request(&stack, &id).await;
    let est = r["impact"]["estimate"]["unavailable"].as_str().unwrap_or("");
    assert!(est.contains("several statements"), "{r}");
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM public.orders"), "100");
    task.abort();
}
