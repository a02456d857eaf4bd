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

/// Step-up over the API: an approval from a token without the context the
/// rule requires is refused with `step_up_required` naming it; a denial
/// needs none; a token that met it approves, and the vote records it.
#[tokio::test]
async fn an_approval_without_the_required_authentication_context_is_refused() {
    let rules = airlock_e2e::binaries::SEED_RULES.replace(
        "        reason: deletes need a reviewer\n",
        "        reason: deletes need a reviewer\n        require_acrs: [c1]\n",
    );
    let stack = StackBuilder::new().rules(&rules).start_binaries();
    let agent = stack.agent_token();
    let held = hold(&stack, &agent, "DELETE FROM orders WHERE id = 5").await;
    let plain = stack.user_token(ALICE);
    let refused = stack
        .decide(&plain, vote(&held.request_id, proto::Decision::Approve, "ok"))
        .await
        .expect_err("no step-up, no approval");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        airlock_proto::ErrorCode::of(&refused),
        Some(airlock_proto::ErrorCode::StepUpRequired)
    );
    assert_eq!(airlock_proto::ErrorCode::metadata_of(&refused)["acrs"], "c1");
    assert!(
        refused.message().contains("authentication context c1"),
        "{}",
        refused.message()
    );
    // Another context is not this one.
    let other = stack.token(&[
        "--sub", ALICE.0, "--name", ALICE.1, "--group", ALICE.2, "--acr", "c2",
    ]);
    let refused = stack
        .decide(&other, vote(&held.request_id, proto::Decision::Approve, "ok"))
        .await
        .expect_err("c2 is not c1");
    assert!(
        refused.message().contains("token has c2"),
        "{}",
        refused.message()
    );

    let stepped_up = stack.token(&[
        "--sub", ALICE.0, "--name", ALICE.1, "--group", ALICE.2, "--acr", "c1",
    ]);
    stack
        .decide(
            &stepped_up,
            vote(&held.request_id, proto::Decision::Approve, "stale"),
        )
        .await
        .expect("a stepped-up approval");
    assert_eq!(held.outcome.await.expect("task").expect("the DELETE ran"), 1);
    let view = stack
        .reviewer()
        .await
        .get_request(airlock_e2e::authed(
            &stepped_up,
            proto::GetRequestRequest {
                request_id: held.request_id.clone(),
            },
        ))
        .await
        .expect("the request")
        .into_inner();
    let voter = view.votes[0].reviewer.as_ref().expect("the voter");
    assert_eq!(voter.acrs, ["c1"], "the vote records the context met");

    // A denial is never made harder: no step-up needed.
    let held = hold(&stack, &agent, "DELETE FROM orders WHERE id = 6").await;
    stack
        .decide(&plain, vote(&held.request_id, proto::Decision::Deny, "not now"))
        .await
        .expect("a denial without step-up");
    held.outcome.await.expect("task").expect_err("denied");
}
