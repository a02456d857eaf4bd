//! Shadow policies: judged beside the enforced ones on live traffic, their
//! verdicts recorded with each statement, and enforcement untouched. How an
//! operator rolls a tighter policy out: shadow it, read where it disagrees,
//! then enforce it.

use std::time::Duration;

use airlock_e2e::StackBuilder;
use airlock_e2e::binaries::{SEED_RULES, hold};

/// The enforced seed policy on the demo connection, with `shadow_rules`
/// as a shadow policy for the same group beside it.
pub(crate) fn with_shadow(shadow_rules: &str) -> String {
    format!(
        "connections:
  - name: prod-maintenance
    upstream: postgres://maint@127.0.0.1:{{PG}}/shop
    password_env: PROD_MAINT_PASSWORD
policies:
  - policy: db-maintenance-agents
    connection: prod-maintenance
    rules:
{SEED_RULES}    record: true
shadow_policies:
  - policy: db-maintenance-agents
    connection: prod-maintenance
    rules:
{shadow_rules}    record: true
"
    )
}

fn access() -> String {
    with_shadow(
        "      - match: SELECT
        tables: [public.orders]
        action: deny
        reason: orders are off limits from next week
      - match: SELECT
        action: allow
",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_verdicts_are_recorded_and_enforcement_is_untouched() {
    let stack = tokio::task::block_in_place(|| StackBuilder::new().access(&access()).start_binaries());
    let agent = stack.agent_token();
    let (client, _notices) = stack.connect(&agent).await;
    // The shadow policy would deny this read; the enforced one allows it.
    let rows = client
        .query("SELECT count(*) FROM orders", &[])
        .await
        .expect("enforced: the read runs");
    assert_eq!(rows[0].get::<_, i64>(0), 10);
    client.simple_query("SELECT 1").await.expect("agreed on by both");
    // Held as before (the shadow policy has no rule for DELETE: its
    // default holds it too).
    let held = hold(&stack, &agent, "DELETE FROM orders WHERE id = 1").await;
    assert!(!held.request_id.is_empty());

    // In the log: each statement's verdict carries the shadow's.
    let lines: Vec<serde_json::Value> =
        airlock_e2e::eventually("the statements in the log", Duration::from_secs(10), || async {
            let out = stack
                .control_command(&["export", "--from", "1"])
                .output()
                .expect("export");
            let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| serde_json::from_str(l).expect("JSON line"))
                .collect();
            let requested = lines.iter().any(|l| l["kind"] == "approval_requested");
            let executed = lines
                .iter()
                .filter(|l| l["kind"] == "statement_executed" || l["kind"] == "statements_executed")
                .count();
            airlock_e2e::satisfies(lines, |_| requested && executed >= 1)
        })
        .await;
    let text = serde_json::to_string(&lines).expect("json");
    assert!(text.contains("shadow_verdict"), "no shadow verdict recorded");
    let count = lines
        .iter()
        .flat_map(|l| {
            let e = &l["event"];
            let mut out = Vec::new();
            if let Some(s) = e.get("statement_executed") {
                out.push(s.clone());
            }
            if let Some(group) = e["statements_executed"]["statements"].as_array() {
                out.extend(group.iter().map(|r| r["statement"].clone()));
            }
            out
        })
        .find(|s| s["statement"]["text"] == "SELECT count(*) FROM orders")
        .expect("the read is recorded");
    assert_eq!(count["verdict"]["action"], "ACTION_ALLOW", "{count}");
    assert_eq!(
        count["verdict"]["shadow_verdict"]["action"], "ACTION_DENY",
        "{count}"
    );
    assert_eq!(
        count["verdict"]["shadow_verdict"]["reason"],
        "orders are off limits from next week"
    );
    let request = lines
        .iter()
        .find(|l| l["kind"] == "approval_requested")
        .expect("request");
    assert_eq!(
        request["event"]["approval_requested"]["verdict"]["shadow_verdict"]["action"],
        "ACTION_REQUIRE_APPROVAL"
    );

    // replay says where they disagree.
    let out = stack.control_command(&["replay"]).output().expect("replay");
    let replay: serde_json::Value = serde_json::from_slice(&out.stdout).expect("replay JSON");
    assert_eq!(
        replay["shadow"]["disagreements"]["allow -> deny"], 1,
        "{}",
        replay["shadow"]
    );
    assert!(
        replay["shadow"]["judged"].as_u64().unwrap_or(0) >= 2,
        "{}",
        replay["shadow"]
    );
}
