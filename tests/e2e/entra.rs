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

/// A stand-in for Azure's instance metadata service: hands out the token
/// the test sets, counts the calls, and can be switched off.
struct Imds {
    port: u16,
    token: std::sync::Arc<std::sync::Mutex<(String, u64, bool)>>,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl Imds {
    async fn start(token: &str, ttl: u64) -> Imds {
        use axum::response::IntoResponse;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = std::sync::Arc::new(std::sync::Mutex::new((token.to_owned(), ttl, true)));
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, c) = (state.clone(), calls.clone());
        let app = axum::Router::new().route(
            "/metadata/identity/oauth2/token",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let (s, c) = (s.clone(), c.clone());
                async move {
                    c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let (token, ttl, up) = s.lock().expect("state").clone();
                    if !up || headers.get("metadata").is_none() {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    }
                    axum::Json(serde_json::json!({
                        "access_token": token, "expires_in": ttl.to_string(), "token_type": "Bearer",
                    }))
                    .into_response()
                }
            }),
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Imds {
            port,
            token: state,
            calls,
            _task: task,
        }
    }

    fn serve(&self, token: &str, ttl: u64) {
        let mut s = self.token.lock().expect("state");
        s.0 = token.to_owned();
        s.1 = ttl;
    }

    fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn random_token(label: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "{label}-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Issue: no static database password. `prod-maintenance` logs into
/// PostgreSQL as `maint` with the proxy's own Entra token (from a stand-in
/// for the managed-identity endpoint), whose password the test sets to the
/// current token; it keeps working across a refresh to a new token (the old
/// one then no longer logs in). A connection whose token endpoint is down
/// is reported by `/readyz` and refuses its sessions with the reason, while
/// a password connection works; no token ever reaches the proxy's log.
#[tokio::test]
async fn an_entra_connection_logs_in_with_a_fetched_token_and_keeps_working_across_a_refresh() {
    let first = random_token("first");
    // A 6 s token: the proxy refreshes it from 3 s on.
    let imds = Imds::start(&first, 6).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("a port nobody serves");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let access = format!(
        "connections:
  - name: prod-maintenance
    upstream: postgres://maint@127.0.0.1:{{PG}}/shop
    upstream_auth: entra
    token_endpoint: http://127.0.0.1:{imds}/metadata/identity/oauth2/token
  - name: prod-static
    upstream: postgres://maint_static@127.0.0.1:{{PG}}/shop
    password_env: PROD_MAINT_PASSWORD
  - name: prod-broken
    upstream: postgres://maint@127.0.0.1:{{PG}}/shop
    upstream_auth: entra
    token_endpoint: http://127.0.0.1:{dead_port}/metadata/identity/oauth2/token
policies:
  - policy: db-maintenance-agents
    connection: prod-maintenance
    rules: [{{match: SELECT, action: allow}}]
  - policy: db-maintenance-agents
    connection: prod-static
    rules: [{{match: SELECT, action: allow}}]
  - policy: db-maintenance-agents
    connection: prod-broken
    rules: [{{match: SELECT, action: allow}}]
",
        imds = imds.port
    );
    let stack = StackBuilder::new()
        .database_setup(&format!(
            "ALTER ROLE maint PASSWORD '{first}'; \
             CREATE ROLE maint_static LOGIN PASSWORD 'maint-secret'; GRANT SELECT ON orders TO maint_static"
        ))
        .access(&access)
        .start_binaries();
    let agent = stack.agent_token();
    let count = |dbname: &'static str| {
        let token = agent.clone();
        let port = stack.proxy_port;
        async move {
            let mut config = tokio_postgres::Config::new();
            config
                .host("127.0.0.1")
                .port(port)
                .user("agent-7")
                .dbname(dbname)
                .password(token);
            match config.connect(tokio_postgres::NoTls).await {
                Ok((client, conn)) => {
                    tokio::spawn(conn);
                    client
                        .query_one("SELECT count(*) FROM orders", &[])
                        .await
                        .map(|row| row.get::<_, i64>(0))
                        .map_err(|e| format!("{e:?}"))
                }
                Err(e) => Err(format!("{e:?}")),
            }
        }
    };
    assert_eq!(
        count("prod-maintenance").await,
        Ok(10),
        "logged in with the first token"
    );
    assert!(imds.calls() >= 1);

    // The endpoint hands out a second token; the database now takes only it.
    let second = random_token("second");
    imds.serve(&second, 3600);
    stack
        .pg
        .psql("shop", &format!("ALTER ROLE maint PASSWORD '{second}'"));
    airlock_e2e::eventually(
        "the proxy to log in with the refreshed token",
        Duration::from_secs(15),
        || async move { count("prod-maintenance").await.map_err(|e| vec![e]) },
    )
    .await;
    let calls = imds.calls();
    for _ in 0..5 {
        assert_eq!(count("prod-maintenance").await, Ok(10));
    }
    assert_eq!(imds.calls(), calls, "the token is kept, not fetched per login");

    // The password connection works; the one without a token endpoint is
    // degraded and its sessions are refused with the reason.
    assert_eq!(count("prod-static").await, Ok(10));
    // The agent hears the connection is unavailable (08006), not the
    // upstream's details; the operator sees why in /readyz and the log.
    let refused = count("prod-broken").await.expect_err("no token, no login");
    assert!(
        refused.contains("E08006") && refused.contains("\\\"prod-broken\\\" is unavailable"),
        "{refused}"
    );
    let (status, body) = airlock_e2e::binaries::http_get(stack.proxy_health_ports[0], "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("degraded") && body.contains("connection prod-broken: no upstream token"),
        "{body}"
    );
    assert!(!body.contains("prod-maintenance: no upstream token"), "{body}");

    let log = std::fs::read_to_string(stack.dir.join("proxy-1.log")).expect("proxy log");
    assert!(
        !log.contains(&first) && !log.contains(&second),
        "a token in the proxy's log"
    );
}
