//! Notifications from the real `airlock-reviewer` to a local receiver: a
//! Slack incoming-webhook message, a Teams Adaptive Card and a generic JSON
//! payload signed with HMAC-SHA256 over timestamp and body, each linking to
//! the request page; retries after a failure; and a webhook that never
//! answers delays neither the vote nor the statement on the agent's session.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_e2e::binaries::{ALICE, hold};
use airlock_e2e::{Process, StackBuilder, eventually, satisfies};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "test-webhook-key-made-for-this-run";

#[derive(Debug, Clone)]
struct Received {
    hook: String,
    headers: HeaderMap,
    body: Bytes,
    json: Value,
}

#[derive(Debug, Default)]
struct Receiver {
    got: Mutex<Vec<Received>>,
    flaky_calls: Mutex<u32>,
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    Path(hook): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if hook == "dead" {
        // Accepts the connection and never answers.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    r.got.lock().expect("lock").push(Received {
        hook: hook.clone(),
        headers,
        body,
        json,
    });
    if hook == "flaky" {
        let mut calls = r.flaky_calls.lock().expect("lock");
        *calls += 1;
        if *calls == 1 {
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    StatusCode::OK
}

async fn start_receiver() -> (SocketAddr, Arc<Receiver>) {
    let receiver = Arc::new(Receiver::default());
    let app = Router::new()
        .route("/{hook}", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, receiver)
}

/// Waits for a delivery to `hook` whose JSON satisfies `matches`.
async fn delivered(r: &Receiver, hook: &str, matches: impl Fn(&Value) -> bool) -> Received {
    eventually(
        &format!("a matching delivery to /{hook}"),
        Duration::from_secs(20),
        || async {
            let got = r.got.lock().expect("lock");
            let found = got.iter().find(|x| x.hook == hook && matches(&x.json)).cloned();
            found.ok_or_else(|| got.iter().map(|x| x.hook.clone()).collect::<Vec<_>>())
        },
    )
    .await
}

/// The reviewer's metrics, as scraped now.
async fn metrics(http: &reqwest::Client, reviewer_url: &str) -> String {
    http.get(format!("{reviewer_url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// Checks the generic webhook's signature as a receiver would.
fn verify_signature(r: &Received) {
    let timestamp = r.headers["x-airlock-timestamp"].to_str().expect("timestamp");
    let signature = r.headers["x-airlock-signature"].to_str().expect("signature");
    let sent: i64 = timestamp.parse().expect("unix seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!((now - sent).abs() < 300, "a fresh timestamp");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    let hex = signature.strip_prefix("v1=").expect("v1= prefix");
    mac.verify_slice(&hex::decode(hex).expect("hex"))
        .expect("the signature verifies over timestamp and body");
    // And a changed body does not.
    let mut tampered = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).expect("key");
    tampered.update(format!("{timestamp}.{}x", String::from_utf8_lossy(&r.body)).as_bytes());
    assert!(tampered.verify_slice(&hex::decode(hex).expect("hex")).is_err());
}

#[tokio::test]
async fn slack_teams_and_signed_generic_webhooks_and_a_dead_one_delays_nothing() {
    let (addr, receiver) = start_receiver().await;
    let closed = airlock_testkit::free_port();
    let base = format!("http://{addr}");
    let extra = format!(
        "  notifications:\n    token_file: {{DIR}}/notifier.token\n    attempts: 3\n    backoff: 200ms\n    timeout: 2s\n    webhooks:\n\
         \x20     - {{ kind: generic, url: {base}/dead, secret_env: AIRLOCK_TEST_WEBHOOK_SECRET }}\n\
         \x20     - {{ kind: slack, url: http://127.0.0.1:{closed}/nobody-listens }}\n\
         \x20     - {{ kind: slack, url: {base}/slack }}\n\
         \x20     - {{ kind: teams, url: {base}/teams }}\n\
         \x20     - {{ kind: generic, url: {base}/generic, secret_env: AIRLOCK_TEST_WEBHOOK_SECRET }}\n\
         \x20     - {{ kind: slack, url: {base}/flaky, on: [requested] }}\n"
    );
    let stack = StackBuilder::new()
        .orders(20)
        .reviewer_yaml(&extra)
        .env(Process::Reviewer, "AIRLOCK_TEST_WEBHOOK_SECRET", SECRET)
        .notifier_token()
        .start_binaries();
    // The notifier watches from "now": let it connect first.
    let http = reqwest::Client::new();
    eventually("the notifier to connect", Duration::from_secs(20), || async {
        let connected = metrics(&http, &stack.reviewer_url)
            .await
            .lines()
            // The whole line: the HELP text begins with "1 while ...".
            .any(|l| l.trim() == "airlock_reviewer_notifier_connected 1");
        if connected {
            Ok(())
        } else {
            Err(stack.reviewer_log())
        }
    })
    .await;

    let agent = stack.agent_token();
    // Hostile text for chat formats: Slack mentions, code fences, entities.
    let statement = "DELETE FROM orders WHERE status = '<@channel> ```&'";
    let held = hold(&stack, &agent, statement).await;
    let link = format!("{}/requests/{}", stack.reviewer_url, held.request_id);

    let slack = delivered(&receiver, "slack", |j| {
        j["text"].as_str().is_some_and(|t| t.contains(&link))
    })
    .await;
    let blocks = slack.json["blocks"].to_string();
    assert!(blocks.contains("agent-7"), "{blocks}");
    assert!(
        blocks.contains("&lt;@channel&gt;"),
        "Slack control characters escaped: {blocks}"
    );
    assert!(!blocks.contains("<@channel>"), "{blocks}");
    assert_eq!(slack.json["blocks"][3]["elements"][0]["url"], link.as_str());

    let teams = delivered(&receiver, "teams", |j| j["type"] == "message").await;
    let attachment = &teams.json["attachments"][0];
    assert_eq!(
        attachment["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(attachment["content"]["type"], "AdaptiveCard");
    assert_eq!(attachment["content"]["actions"][0]["type"], "Action.OpenUrl");
    assert_eq!(attachment["content"]["actions"][0]["url"], link.as_str());
    assert_eq!(attachment["content"]["body"][1]["text"], statement);

    let generic = delivered(&receiver, "generic", |j| j["type"] == "request.created").await;
    verify_signature(&generic);
    assert_eq!(generic.json["url"], link.as_str());
    assert_eq!(generic.json["request"]["id"], held.request_id.as_str());
    assert_eq!(generic.json["request"]["statement"]["text"], statement);
    assert_eq!(generic.json["request"]["identity"]["kind"], "app");
    assert_eq!(generic.headers["x-airlock-event"], "request.created");

    // The flaky endpoint failed once and got the retry.
    delivered(&receiver, "flaky", |j| {
        j["text"].as_str().is_some_and(|t| t.contains(&link))
    })
    .await;
    eventually("a retry after a 500", Duration::from_secs(20), || async {
        satisfies(*receiver.flaky_calls.lock().expect("lock"), |calls| *calls >= 2)
    })
    .await;

    // A vote while one webhook hangs and another is unreachable: neither the
    // reviewer's answer nor the agent's statement waits for them.
    let alice = stack.user_token(ALICE);
    let started = Instant::now();
    let voted = http
        .post(format!(
            "{}/api/v1/requests/{}/approve",
            stack.reviewer_url, held.request_id
        ))
        .bearer_auth(&alice)
        .json(&json!({"reason": "webhook test"}))
        .send()
        .await
        .expect("vote");
    let vote_took = started.elapsed();
    assert_eq!(voted.status(), 200);
    let outcome = tokio::time::timeout(Duration::from_secs(10), held.outcome)
        .await
        .expect("the statement finished")
        .expect("join");
    let done_took = started.elapsed();
    assert!(vote_took < Duration::from_secs(1), "the vote took {vote_took:?}");
    assert!(
        done_took < Duration::from_secs(2),
        "the statement finished after {done_took:?}"
    );
    assert_eq!(
        outcome.expect("the approved DELETE ran"),
        0,
        "no order has that status"
    );

    // The outcome is notified too.
    let decided = delivered(&receiver, "generic", |j| j["type"] == "request.decided").await;
    verify_signature(&decided);
    assert_eq!(decided.json["request"]["state"], "granted");
    assert_eq!(decided.json["request"]["votes"][0]["reason"], "webhook test");
    delivered(&receiver, "slack", |j| {
        j["text"].as_str().is_some_and(|t| t.contains("granted"))
    })
    .await;

    let metrics = metrics(&http, &stack.reviewer_url).await;
    assert!(
        metrics.contains("airlock_reviewer_webhook_deliveries_total{result=\"retried\"}"),
        "{metrics}"
    );
    let log = stack.reviewer_log();
    assert!(!log.contains(SECRET), "the webhook key is never logged");
    assert!(
        !log.contains("nobody-listens"),
        "webhook URL paths (often secrets) are never logged"
    );
}

/// `airlock_reviewer_notifier_leader` and `_connected` on replica port `port`.
fn leading(port: u16) -> bool {
    let (_, body) = airlock_e2e::binaries::http_get(port, "/metrics");
    // Whole lines: the HELP texts begin with "1 while ...".
    let has = |series: &str| body.lines().any(|l| l.trim() == series);
    has("airlock_reviewer_notifier_leader 1") && has("airlock_reviewer_notifier_connected 1")
}

/// Issue: notifications sent once per fleet. Two reviewer replicas with
/// notifications configured and `reviewer.state: nats`: one holds the lease
/// and sends each notification once; killed, the other takes over within
/// the lease's bound and the next request is notified once, by it.
#[tokio::test(flavor = "multi_thread")]
async fn two_reviewer_replicas_notify_once_and_the_survivor_takes_over() {
    let (addr, receiver) = start_receiver().await;
    let extra = format!(
        "  notifications:\n    token_file: {{DIR}}/notifier.token\n    webhooks:\n\
         \x20     - {{ kind: slack, url: http://{addr}/slack, on: [requested] }}\n"
    );
    let mut stack = tokio::task::block_in_place(|| {
        StackBuilder::new()
            .reviewer_yaml(&extra)
            .reviewer_replicas(2)
            .notifier_token()
            .start_binaries()
    });
    let ports = stack.reviewer_ports.clone();
    let leader = eventually(
        "one replica to lead the notifier",
        Duration::from_secs(30),
        || async {
            let leaders: Vec<usize> = (0..ports.len()).filter(|&i| leading(ports[i])).collect();
            if leaders.len() == 1 {
                Ok(leaders[0])
            } else {
                Err(leaders)
            }
        },
    )
    .await;
    let agent = stack.agent_token();
    let count = |id: &str| {
        receiver
            .got
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.json["text"].as_str().is_some_and(|t| t.contains(id)))
            .count()
    };

    let first = hold(&stack, &agent, "DELETE FROM orders WHERE id = 1").await;
    delivered(&receiver, "slack", |j| {
        j["text"].as_str().is_some_and(|t| t.contains(&first.request_id))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&first.request_id), 1, "sent once, by one replica");

    let killed = Instant::now();
    tokio::task::block_in_place(|| stack.kill_reviewer(leader));
    let survivor = 1 - leader;
    eventually(
        "the survivor to take the lease",
        Duration::from_secs(30),
        || async { satisfies(leading(ports[survivor]), |l| *l) },
    )
    .await;
    eprintln!(
        "the survivor leads {:?} after the leader was killed",
        killed.elapsed()
    );
    let second = hold(&stack, &agent, "DELETE FROM orders WHERE id = 2").await;
    delivered(&receiver, "slack", |j| {
        j["text"].as_str().is_some_and(|t| t.contains(&second.request_id))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&second.request_id), 1, "sent once, by the survivor");
    assert_eq!(count(&first.request_id), 1, "the first is not sent again");
}
