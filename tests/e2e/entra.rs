//! Entra at enterprise scale, with the real binaries: tokens with group
//! overage resolved through Microsoft Graph (the dev issuer's stand-in),
//! for the agent at the proxy and for reviewers at the control plane.

use std::time::Duration;

use airlock_e2e::StackBuilder;
use airlock_e2e::binaries::{ALICE, ERIN, hold};
use airlock_e2e::review::vote;
use airlock_eventlog::proto;

/// How many membership questions the dev issuer's Graph stand-in answered.
fn graph_calls(issuer: &str) -> u64 {
    let port: u16 = issuer
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("issuer port");
    let (status, body) = airlock_e2e::binaries::http_get(port, "/graph/calls");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    json["calls"].as_u64().expect("calls")
}

#[tokio::test]
async fn group_overage_is_resolved_through_graph_for_the_agent_and_the_reviewers() {
    let stack = StackBuilder::new().graph().start_binaries();
    // The agent's token lists no groups: Entra would have said "ask Graph".
    let agent = stack.agent_token_with(&["--overage"]);
    let held = hold(&stack, &agent, "DELETE FROM orders WHERE id = 3").await;
    assert!(graph_calls(&stack.issuer) >= 1, "the proxy asked Graph");

    let mut reviewer = stack.reviewer().await;
    let erin = stack.token(&["--sub", ERIN.0, "--name", ERIN.1, "--overage"]);
    let alice = stack.token(&["--sub", ALICE.0, "--name", ALICE.1, "--overage"]);
    let view = airlock_e2e::review::pending(&mut reviewer, &alice, |sql| sql.contains("DELETE")).await;
    let asked = view
        .request
        .as_ref()
        .and_then(|r| r.identity.as_ref())
        .expect("identity");
    assert_eq!(
        asked.groups_source, "graph",
        "the record says where the groups came from"
    );
    assert!(
        asked.groups.iter().any(|g| g.name == "db-maintenance-agents"),
        "{:?}",
        asked.groups
    );

    // Erin is in no reviewer group, by Graph: her vote is refused.
    let refused = stack
        .decide(
            &erin,
            vote(&held.request_id, proto::Decision::Approve, "looks fine"),
        )
        .await
        .expect_err("a non-member cannot vote");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // Alice is in db-reviewers, by Graph: her approval runs the statement.
    stack
        .decide(
            &alice,
            vote(&held.request_id, proto::Decision::Approve, "stale order"),
        )
        .await
        .expect("a member approves");
    let deleted = tokio::time::timeout(Duration::from_secs(20), held.outcome)
        .await
        .expect("released in time")
        .expect("task")
        .expect("the DELETE ran");
    assert_eq!(deleted, 1);
}
