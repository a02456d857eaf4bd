//! A request lives no longer than the session holding it, and a session no
//! longer than the proxy process holding it: the proxy killed (kill -9,
//! nothing buffered reaches the log) or PostgreSQL closing the connection
//! under a hold ends the request with its cause, no reviewer can approve
//! it, the log closes the sessions the dead proxy held (saying where their
//! record stops), and `verify` still passes.

use std::time::Duration;

use airlock_e2e::binaries::{ALICE, BinaryStack, hold};
use airlock_e2e::review::{authed, vote};
use airlock_e2e::{StackBuilder, eventually};
use airlock_eventlog::proto;

/// How long a proxy may go unheard in these tests (30 s by default, 20 s at
/// least).
const LOST_AFTER: &str = "  proxy_lost_after: 20s\n  reconcile_interval: 200ms\n";

async fn request(stack: &BinaryStack, token: &str, id: &str) -> Result<proto::RequestView, tonic::Status> {
    stack
        .reviewer()
        .await
        .get_request(authed(
            token,
            proto::GetRequestRequest {
                request_id: id.to_owned(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

/// Waits for request `id` to be known and no longer pending.
async fn ended(stack: &BinaryStack, token: &str, id: &str, within: Duration) -> proto::RequestView {
    eventually("the request to end", within, || async {
        let view = request(stack, token, id).await;
        airlock_e2e::satisfies(view, |v| {
            v.as_ref()
                .is_ok_and(|v| v.state != proto::RequestState::Pending as i32)
        })
    })
    .await
    .expect("the request")
}

#[tokio::test]
async fn a_killed_proxys_requests_are_cancelled_and_its_sessions_closed_in_the_log() {
    let mut stack = StackBuilder::new().control_yaml(LOST_AFTER).start_binaries();
    let agent = stack.agent_token();
    let alice = stack.user_token(ALICE);
    let (idle, _notices) = stack.connect(&agent).await;
    idle.simple_query("SELECT 1").await.expect("a read runs");
    let held = hold(&stack, &agent, "DELETE FROM orders WHERE id = 3").await;

    stack.kill_proxy(0);
    let killed = std::time::Instant::now();
    // Gone for 20 s, judged every 200 ms: the request ends soon after.
    let view = ended(&stack, &alice, &held.request_id, Duration::from_secs(40)).await;
    let took = killed.elapsed();
    assert_eq!(view.state, proto::RequestState::Cancelled as i32, "{view:?}");
    assert!(
        view.outcome_reason.contains("not been heard from"),
        "the reason names the lost proxy: {}",
        view.outcome_reason
    );
    assert!(
        took >= Duration::from_secs(20),
        "not before the proxy counts as gone ({took:?})"
    );
    // Nothing to approve any more, and nothing ran.
    let refused = stack
        .decide(
            &alice,
            vote(&held.request_id, proto::Decision::Approve, "too late"),
        )
        .await
        .expect_err("a cancelled request cannot be approved");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert_eq!(
        stack.pg.psql("shop", "SELECT count(*) FROM orders WHERE id = 3"),
        "1"
    );

    // The log closes both sessions of the dead run, each saying where the
    // proxy's own record stops.
    let lines = eventually(
        "both sessions closed in the log",
        Duration::from_secs(10),
        || async {
            let lines = stack.export("jsonl");
            let closes = lines
                .iter()
                .filter(|l| l["kind"] == "session_closed")
                .filter(|l| l["event"]["session_closed"]["cause"] == "CAUSE_PROXY_LOST")
                .count();
            airlock_e2e::satisfies(lines, |_| closes == 2)
        },
    )
    .await;
    for close in lines.iter().filter(|l| l["kind"] == "session_closed") {
        let detail = close["event"]["session_closed"]["detail"]
            .as_str()
            .unwrap_or_default();
        assert!(detail.contains("ends at event #"), "{detail}");
        assert_eq!(close["event"]["source"]["kind"], "KIND_CONTROL");
    }
    let cancel = lines
        .iter()
        .find(|l| l["kind"] == "approval_cancelled")
        .expect("the cancellation is in the log");
    assert_eq!(cancel["event"]["approval_cancelled"]["cause"], "CAUSE_PROXY_LOST");
    stack.assert_verify_passes();

    // The proxy comes back under the same id: its new sessions are its
    // own, and outlive the time that ended the old ones.
    stack.start_proxy(0);
    eventually(
        "the restarted proxy to take logins",
        Duration::from_secs(15),
        || async {
            let mut c = tokio_postgres::Config::new();
            c.host("127.0.0.1")
                .port(stack.proxy_port)
                .user("agent-7")
                .password(&agent)
                .dbname("prod-maintenance");
            c.connect(tokio_postgres::NoTls).await.is_ok()
        },
    )
    .await;
    let (fresh, _notices) = stack.connect(&agent).await;
    tokio::time::sleep(Duration::from_secs(25)).await;
    fresh
        .simple_query("SELECT 1")
        .await
        .expect("a session of the new run is not taken for a lost one");
}

#[tokio::test]
async fn a_hold_that_postgresql_cuts_short_is_cancelled_with_its_cause() {
    let stack = StackBuilder::new().control_yaml(LOST_AFTER).start_binaries();
    let agent = stack.agent_token();
    let alice = stack.user_token(ALICE);
    let held = hold(&stack, &agent, "DELETE FROM orders WHERE id = 4").await;
    let terminated = stack.pg.psql(
        "postgres",
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = 'shop' AND usename = 'maint') t",
    );
    assert_eq!(terminated, "1", "the held session's backend");
    let outcome = tokio::time::timeout(Duration::from_secs(10), held.outcome)
        .await
        .expect("the agent hears in time")
        .expect("join");
    assert!(outcome.is_err(), "the held statement did not run: {outcome:?}");

    // Cancelled by the proxy as the session ended, with the cause; the
    // control plane's own backstop would say the same after 5 s.
    let view = ended(&stack, &alice, &held.request_id, Duration::from_secs(10)).await;
    assert_eq!(view.state, proto::RequestState::Cancelled as i32, "{view:?}");
    assert!(
        view.outcome_reason.contains("the session holding it ended"),
        "{}",
        view.outcome_reason
    );
    let refused = stack
        .decide(
            &alice,
            vote(&held.request_id, proto::Decision::Approve, "too late"),
        )
        .await
        .expect_err("nothing to approve");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        stack.pg.psql("shop", "SELECT count(*) FROM orders WHERE id = 4"),
        "1"
    );
    let lines = stack.export("jsonl");
    let cancel = lines
        .iter()
        .find(|l| l["kind"] == "approval_cancelled")
        .expect("the cancellation is in the log");
    assert_eq!(
        cancel["event"]["approval_cancelled"]["cause"],
        "CAUSE_SESSION_ENDED"
    );
    assert_eq!(
        cancel["event"]["source"]["kind"], "KIND_PROXY",
        "filed by the proxy itself"
    );
    stack.assert_verify_passes();
}
