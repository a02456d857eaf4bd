//! Health for orchestrators, through the real binaries: every binary tells
//! liveness (`/livez`: restart me) from readiness (`/readyz`: send me
//! work). A control plane that goes away makes the proxy and the reviewer
//! unready, never dead; a draining proxy is unready from the signal on.

use std::time::Duration;

use airlock_e2e::StackBuilder;
use airlock_e2e::binaries::{BinaryStack, http_get};
use airlock_testkit::eventually_blocking;

/// Waits until `GET path` on `port` answers `status` with a body holding
/// `says`; the body.
fn until(port: u16, path: &str, status: u16, says: &str) -> String {
    eventually_blocking(
        &format!("GET {path} on {port} to answer {status} ({says})"),
        Duration::from_secs(15),
        || {
            let (got, body) = http_get(port, path);
            if got == status && body.contains(says) {
                Ok(body)
            } else {
                Err((got, body))
            }
        },
    )
}

fn reviewer_port(stack: &BinaryStack) -> u16 {
    url::Url::parse(&stack.reviewer_url)
        .ok()
        .and_then(|u| u.port())
        .expect("the reviewer's port")
}

#[tokio::test(flavor = "multi_thread")]
async fn liveness_and_readiness_are_told_apart_on_every_binary() {
    let rules = "      - match: SELECT\n        action: allow\n      - functions: [pg_sleep]\n        action: allow\n";
    let mut stack =
        tokio::task::block_in_place(|| StackBuilder::new().rules(rules).reviewer().start_binaries());
    let proxy = stack.proxy_health_ports[0];
    let control = stack.health_port;
    let reviewer = reviewer_port(&stack);
    tokio::task::block_in_place(|| {
        // Everything up: alive and ready.
        until(proxy, "/readyz", 200, "ready");
        until(control, "/readyz", 200, "ready");
        until(reviewer, "/readyz", 200, "ok");
        for port in [proxy, control, reviewer] {
            assert_eq!(http_get(port, "/livez"), (200, "alive\n".to_owned()));
        }

        // The control plane goes away: the proxy can hold nothing and the
        // reviewer can show nothing, so neither is ready; both are alive
        // (a restart would not bring the control plane back).
        stack.kill_replica(0);
        let body = until(proxy, "/readyz", 503, "no Attach stream");
        assert!(!body.contains("NATS"), "NATS is still up: {body}");
        until(reviewer, "/readyz", 503, "\"control_reachable\":false");
        assert_eq!(http_get(proxy, "/livez").0, 200);
        assert_eq!(http_get(reviewer, "/livez").0, 200);
    });

    // A draining proxy is unready from the signal on, while its open
    // session finishes (the read needs no control plane).
    let token = stack.agent_token();
    let session = stack.psql(&token, "SELECT pg_sleep(4)");
    tokio::time::sleep(Duration::from_millis(800)).await;
    stack.signal_proxy("TERM");
    tokio::task::block_in_place(|| {
        let body = until(proxy, "/readyz", 503, "draining");
        assert!(body.contains("not ready"), "{body}");
        assert_eq!(http_get(proxy, "/livez").0, 200);
    });
    let out = airlock_e2e::binaries::finish(session).await;
    assert!(
        out.status.success(),
        "the open session finished during the drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
