//! A fleet from the real binaries: two control-plane replicas and two
//! proxies on one log, over NATS as a fleet runs it (TLS only, client
//! certificates, one user per role with the least it needs), with mutual
//! TLS on the proxies' Attach links and on the reviewer's link. A
//! statement held on one proxy is approved through the replica it is not
//! attached to, or through the reviewer; a replica is killed while a
//! statement is held, and the approval still arrives (the proxy fails over
//! and re-announces what it holds).

use std::time::Duration;

use airlock_e2e::binaries::{ALICE, BinaryStack, finish};
use airlock_e2e::review::{self, vote};
use airlock_e2e::{StackBuilder, eventually, satisfies};
use airlock_eventlog::proto;

/// Runs `sql` as the agent through proxy `proxy` (counting from 0) and waits
/// until replica 2 lists it as pending: psql, and the request's id.
async fn hold(
    stack: &BinaryStack,
    proxy: usize,
    agent: &str,
    alice: &str,
    sql: &str,
) -> (std::process::Child, String) {
    let held = stack.psql_at(
        proxy,
        "prod-maintenance",
        agent,
        &["-v", "ON_ERROR_STOP=1", "-c", sql],
    );
    let request = review::pending(&mut stack.reviewer_of(1).await, alice, |text| text == sql).await;
    (held, request.request_id)
}

/// Approves request `id` through replica 2; the held psql then succeeds.
async fn approve(stack: &BinaryStack, alice: &str, id: &str, held: std::process::Child) {
    review::decide(
        &mut stack.reviewer_of(1).await,
        alice,
        vote(id, proto::Decision::Approve, "fleet test"),
    )
    .await
    .expect("approve");
    let out = finish(held).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn approvals_cross_replicas_and_survive_a_replica_dying() {
    let mut stack = StackBuilder::new()
        .replicas(2)
        .proxies(2)
        .secured_nats()
        .control_mtls()
        .reviewer()
        .start_binaries();
    let agent = stack.agent_token();
    let alice = stack.user_token(ALICE);
    // Give the proxies a moment to attach.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Held on proxy 1 (attached to replica 1), approved through replica 2.
    let (held, id) = hold(&stack, 0, &agent, &alice, "DELETE FROM orders WHERE id = 1").await;
    approve(&stack, &alice, &id, held).await;
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM orders"), "9");

    // Held on proxy 2, approved through the reviewer's REST API (the
    // reviewer reaches replica 1 over mutual TLS).
    let (held, id) = hold(&stack, 1, &agent, &alice, "DELETE FROM orders WHERE id = 10").await;
    let url = format!("{}/api/v1/requests/{id}/approve", stack.reviewer_url);
    let http = reqwest::Client::new();
    let status = eventually(
        "replica 1 to know the request",
        Duration::from_secs(10),
        || async {
            let answer = http
                .post(&url)
                .bearer_auth(&alice)
                .json(&serde_json::json!({"reason": "through the reviewer"}))
                .send()
                .await
                .expect("the reviewer answers");
            satisfies(answer.status(), |s| *s != reqwest::StatusCode::NOT_FOUND)
        },
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let out = finish(held).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM orders"), "8");

    // Held on proxy 1; replica 1 dies; the approval (through replica 2)
    // still reaches proxy 1, which fails over to replica 2.
    let (held, id) = hold(&stack, 0, &agent, &alice, "DELETE FROM orders WHERE id = 2").await;
    stack.kill_replica(0);
    approve(&stack, &alice, &id, held).await;
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM orders"), "7");

    // And proxy 2 still works through the surviving replica.
    let (held, id) = hold(&stack, 1, &agent, &alice, "DELETE FROM orders WHERE id = 3").await;
    approve(&stack, &alice, &id, held).await;
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM orders"), "6");

    // An auditor's verify, as the NATS user that may only read, finds the
    // log whole: every decision on its own subject, signed by a replica.
    let out = stack.control_command(&["verify"]).output().expect("verify");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("\"ok\": true"), "{report}");

    // No role was refused anything it tried: the permissions file gives
    // each what it needs.
    let nats = stack.nats_log();
    assert!(!nats.to_lowercase().contains("permissions violation"), "{nats}");
}
