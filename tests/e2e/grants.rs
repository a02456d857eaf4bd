//! Grants: a reviewer approves one statement and, in the same act, allows
//! statements of its shape (or of a kind on a table) from the same identity
//! on the same connection, a number of times, for a while. Through the
//! real binaries, two proxies and two control-plane replicas, against real
//! PostgreSQL and NATS: uses run without a hold and are each in the log
//! before they run, exactly `max_uses` of them however two proxies race,
//! another identity or shape is held, a revocation stops every proxy at
//! once, a use past its row bound is rolled back.

use std::time::{Duration, Instant};

use airlock_e2e::binaries::{AGENTS, ALICE, BinaryStack};
use airlock_e2e::{StackBuilder, request_id};
use serde_json::{Value, json};

const RULES: &str = "      - match: SELECT
        action: allow
      - match: DELETE
        action: require-approval
";

fn start(orders: u32) -> BinaryStack {
    tokio::task::block_in_place(|| {
        StackBuilder::new()
            .orders(orders)
            .rules(RULES)
            .proxies(2)
            .replicas(2)
            .reviewer()
            .start_binaries()
    })
}

/// Another agent of the same group: its own identity.
fn other_agent(stack: &BinaryStack) -> String {
    stack.token(&[
        "--sub",
        "oid-agent-8",
        "--name",
        "agent-8",
        "--app",
        "--group",
        AGENTS,
    ])
}

/// The grant uses in the log, in stream order: (grant id, number).
fn uses(stack: &BinaryStack) -> Vec<(String, u64)> {
    stack
        .export("jsonl")
        .iter()
        .filter(|e| e["kind"] == "grant_used")
        .map(|e| {
            let id = e["event"]["request_id"].as_str().unwrap_or("").to_owned();
            (id, e["event"]["grant_used"]["number"].as_u64().unwrap_or(0))
        })
        .collect()
}

/// Grant ids of the executed statements in the log (alone or grouped).
fn executed_grants(stack: &BinaryStack) -> Vec<String> {
    let mut out = Vec::new();
    for e in stack.export("jsonl") {
        let one = e["event"]["statement_executed"].clone();
        let group = e["event"]["statements_executed"]["statements"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for s in std::iter::once(one).chain(group.into_iter().map(|g| g["statement"].clone())) {
            if let Some(g) = s["grant_id"].as_str() {
                out.push(g.to_owned());
            }
        }
    }
    out
}

/// `airlock-control replay`'s report.
fn replay(stack: &BinaryStack) -> Value {
    let out = stack.control_command(&["replay"]).output().expect("replay");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("replay's JSON")
}

fn count(stack: &BinaryStack) -> i64 {
    stack
        .pg
        .psql("shop", "SELECT count(*) FROM public.orders")
        .parse()
        .expect("a count")
}

async fn rest(stack: &BinaryStack, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let alice = stack.user_token(ALICE);
    let r = reqwest::Client::new()
        .request(method, format!("{}{path}", stack.reviewer_url))
        .bearer_auth(&alice)
        .json(&body)
        .send()
        .await
        .expect("reviewer answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Holds `sql` on a session of `token` at proxy `proxy`; Alice approves
/// it with `scope`; returns once it ran, with the request (grant) id.
async fn approve_in_scope(stack: &BinaryStack, token: &str, sql: &str, scope: Value) -> String {
    let (client, mut notices) = airlock_e2e::session(stack.proxy_ports[0], token).await;
    let sql = sql.to_owned();
    let run = tokio::spawn(async move { client.simple_query(&sql).await.map(|_| client) });
    let notice = tokio::time::timeout(Duration::from_secs(30), notices.recv())
        .await
        .expect("held in time")
        .expect("a notice");
    let id = request_id(&notice).expect("a request id");
    let (status, v) = rest(
        stack,
        reqwest::Method::POST,
        &format!("/api/v1/requests/{id}/approve"),
        json!({"reason": "cleanup ticket 42", "scope": scope}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    run.await.expect("task").expect("the approved statement ran");
    // The grant is issued and reaches both proxies.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = rest(
            stack,
            reqwest::Method::GET,
            &format!("/api/v1/grants/{id}"),
            json!({}),
        )
        .await;
        if status == 200 && v["state"] == "active" {
            break;
        }
        assert!(Instant::now() < deadline, "no active grant {id}: {status} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    id
}

/// Runs `sql` on `client`: `Ok(true)` when it ran without a hold, `Ok(false)`
/// when it was held (the session is then dropped, cancelling the request).
async fn runs_unheld(port: u16, token: &str, sql: &str) -> bool {
    let (client, mut notices) = airlock_e2e::session(port, token).await;
    let q = client.simple_query(sql);
    tokio::select! {
        r = q => {
            r.expect("the statement ran");
            true
        }
        n = notices.recv() => {
            assert!(n.is_some_and(|n| n.contains("request")), "a hold notice");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fingerprint_grant_runs_its_shape_five_times_for_its_identity_only() {
    let stack = start(100);
    let agent = stack.agent_token();
    let grant = approve_in_scope(
        &stack,
        &agent,
        "DELETE FROM orders WHERE id = 1",
        json!({"match": "fingerprint", "ttl": "30m", "max_uses": 5, "max_rows": 1}),
    )
    .await;
    // The request showed its shape.
    let (_, request) = rest(
        &stack,
        reqwest::Method::GET,
        &format!("/api/v1/requests/{grant}"),
        json!({}),
    )
    .await;
    assert_eq!(
        request["fingerprint"]["normalized"], "DELETE FROM orders WHERE id = ?",
        "{request}"
    );
    // Five more of that shape, on either proxy, run without a hold.
    for id in 2..=6 {
        let port = stack.proxy_ports[id % 2];
        let sql = format!("delete from ORDERS where id = {id} -- same shape");
        assert!(runs_unheld(port, &agent, &sql).await, "use {id} was held");
    }
    assert_eq!(count(&stack), 94);
    // The sixth is held; so is the same shape from another identity, and
    // another shape from this one.
    assert!(!runs_unheld(stack.proxy_ports[0], &agent, "DELETE FROM orders WHERE id = 7").await);
    assert!(
        !runs_unheld(
            stack.proxy_ports[1],
            &other_agent(&stack),
            "DELETE FROM orders WHERE id = 8"
        )
        .await
    );
    assert!(!runs_unheld(stack.proxy_ports[0], &agent, "DELETE FROM orders WHERE total = 8").await);
    assert_eq!(count(&stack), 94);
    // Each use is in the log, numbered in order, before its statement's
    // record names the grant.
    assert_eq!(
        uses(&stack),
        (1..=5).map(|n| (grant.clone(), n)).collect::<Vec<_>>()
    );
    let (_, v) = rest(
        &stack,
        reqwest::Method::GET,
        &format!("/api/v1/grants/{grant}"),
        json!({}),
    )
    .await;
    assert_eq!(v["state"], "used_up", "{v}");
    assert_eq!(v["uses"], 5);
    assert_eq!(v["recent_uses"].as_array().map(Vec::len), Some(5));
    let executed_under_grant = executed_grants(&stack).iter().filter(|g| **g == grant).count();
    assert_eq!(executed_under_grant, 5);
    // An auditor's replay counts them.
    let report = replay(&stack);
    assert_eq!(report["grants"]["issued"], 1, "{report}");
    assert_eq!(report["grants"]["uses"], 5, "{report}");
    stack.assert_verify_passes();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_proxies_racing_on_one_grant_never_exceed_its_uses() {
    let stack = start(300);
    let agent = stack.agent_token();
    let max_uses = 40;
    let grant = approve_in_scope(
        &stack,
        &agent,
        "DELETE FROM orders WHERE id = 1",
        json!({"match": "fingerprint", "ttl": "30m", "max_uses": max_uses, "max_rows": 1}),
    )
    .await;
    // 100 tries, 50 on each proxy, both at once; each proxy's session stops
    // at its first hold.
    let mut tasks = Vec::new();
    for p in 0..2usize {
        let port = stack.proxy_ports[p];
        let token = agent.clone();
        tasks.push(tokio::spawn(async move {
            let (client, mut notices) = airlock_e2e::session(port, &token).await;
            let mut ran = 0u32;
            for i in 0..50u32 {
                let id = 2 + p as u32 * 50 + i;
                let sql = format!("DELETE FROM orders WHERE id = {id}");
                let q = client.simple_query(&sql);
                tokio::select! {
                    r = q => { r.expect("ran"); ran += 1; }
                    _ = notices.recv() => break,
                }
            }
            ran
        }));
    }
    let mut ran = 0;
    for t in tasks {
        ran += t.await.expect("task");
    }
    assert_eq!(ran, max_uses, "statements run under the grant");
    assert_eq!(count(&stack), 300 - 1 - i64::from(max_uses));
    let numbers: Vec<u64> = uses(&stack)
        .into_iter()
        .filter(|(g, _)| *g == grant)
        .map(|(_, n)| n)
        .collect();
    assert_eq!(numbers, (1..=u64::from(max_uses)).collect::<Vec<_>>());
    stack.assert_verify_passes();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_stops_both_proxies_at_once_and_a_use_past_its_row_bound_is_rolled_back() {
    let stack = start(100);
    let agent = stack.agent_token();
    let grant = approve_in_scope(
        &stack,
        &agent,
        "DELETE FROM orders WHERE id <= 1",
        json!({"match": "fingerprint", "ttl": "30m", "max_uses": 50, "max_rows": 1}),
    )
    .await;
    assert!(runs_unheld(stack.proxy_ports[1], &agent, "DELETE FROM orders WHERE id <= 2").await);
    assert_eq!(count(&stack), 98);
    // Two rows would change: the use is refused and rolled back.
    let (client, _notices) = airlock_e2e::session(stack.proxy_ports[0], &agent).await;
    let e = client
        .simple_query("DELETE FROM orders WHERE id <= 4")
        .await
        .expect_err("past the grant's row bound");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("ZA001"), "{e:?}");
    assert_eq!(count(&stack), 98);
    // Revoked: neither proxy runs another use, from the moment the
    // revocation is answered.
    let started = Instant::now();
    let (status, v) = rest(
        &stack,
        reqwest::Method::DELETE,
        &format!("/api/v1/grants/{grant}"),
        json!({"reason": "done"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "revoked");
    assert!(!runs_unheld(stack.proxy_ports[0], &agent, "DELETE FROM orders WHERE id <= 3").await);
    assert!(!runs_unheld(stack.proxy_ports[1], &agent, "DELETE FROM orders WHERE id <= 3").await);
    let took = started.elapsed();
    eprintln!("revocation to both proxies holding: {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(count(&stack), 98);
    let (status, _) = rest(
        &stack,
        reqwest::Method::DELETE,
        &format!("/api/v1/grants/{grant}"),
        json!({}),
    )
    .await;
    assert_eq!(status, 409, "a revoked grant is not revoked again");
    let (_, active) = rest(
        &stack,
        reqwest::Method::GET,
        "/api/v1/grants?state=active",
        json!({}),
    )
    .await;
    assert_eq!(active["grants"].as_array().map(Vec::len), Some(0), "{active}");
}

/// How long a proxy applies grants after it last heard from the control
/// plane (the proxy's `grants::LEASE`).
const LEASE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_that_cannot_hear_the_control_plane_stops_applying_grants_within_its_lease() {
    let stack = start(100);
    let agent = stack.agent_token();
    approve_in_scope(
        &stack,
        &agent,
        "DELETE FROM orders WHERE id = 1",
        json!({"match": "fingerprint", "ttl": "30m", "max_uses": 50, "max_rows": 1}),
    )
    .await;
    // Both control-plane replicas frozen: their connections to the proxies
    // stay open and say nothing, as across a partition.
    stack.signal_replica(0, "STOP");
    stack.signal_replica(1, "STOP");
    let frozen = Instant::now();
    // Heard from less than a lease ago: the grant still applies.
    assert!(runs_unheld(stack.proxy_ports[1], &agent, "DELETE FROM orders WHERE id = 2").await);
    // A lease after the freeze (the last word heard came before it), both
    // proxies hold instead.
    tokio::time::sleep_until((frozen + LEASE + Duration::from_millis(500)).into()).await;
    assert!(!runs_unheld(stack.proxy_ports[0], &agent, "DELETE FROM orders WHERE id = 3").await);
    assert!(!runs_unheld(stack.proxy_ports[1], &agent, "DELETE FROM orders WHERE id = 4").await);
    assert_eq!(count(&stack), 98);
    // Heard again: the grant applies again.
    stack.signal_replica(0, "CONT");
    stack.signal_replica(1, "CONT");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if runs_unheld(stack.proxy_ports[0], &agent, "DELETE FROM orders WHERE id = 5").await {
            break;
        }
        assert!(Instant::now() < deadline, "the grant never applied again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(count(&stack), 97);
    stack.assert_verify_passes();
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_wider_than_a_reviewer_may_grant_are_refused() {
    // The agents' policy allows grants of at most 2 h.
    let stack = tokio::task::block_in_place(|| {
        StackBuilder::new()
            .orders(20)
            .access(&format!(
                "connections:
  - name: prod-maintenance
    upstream: postgres://maint@127.0.0.1:{{PG}}/shop
    password_env: PROD_MAINT_PASSWORD
policies:
  - policy: db-maintenance-agents
    connection: prod-maintenance
    max_grant_ttl: 2h
    rules:
{RULES}"
            ))
            .reviewer()
            .start_binaries()
    });
    let agent = stack.agent_token();
    let (client, mut notices) = airlock_e2e::session(stack.proxy_port, &agent).await;
    let run = tokio::spawn(async move { client.simple_query("DELETE FROM orders WHERE id = 1").await });
    let notice = tokio::time::timeout(Duration::from_secs(30), notices.recv())
        .await
        .expect("held")
        .expect("notice");
    let id = request_id(&notice).expect("id");
    for (scope, says) in [
        (
            json!({"match": "fingerprint", "ttl": "3h", "max_uses": 5, "max_rows": 1}),
            "the policy's max_grant_ttl",
        ),
        (
            json!({"match": "fingerprint", "ttl": "30m", "max_uses": 5}),
            "max_rows is required",
        ),
        (
            json!({"match": "anything", "ttl": "30m", "max_uses": 5, "max_rows": 1}),
            "fingerprint, rule",
        ),
        (
            json!({"match": "fingerprint", "ttl": "9h", "max_uses": 5, "max_rows": 1}),
            "maximum",
        ),
        (
            json!({"match": "fingerprint", "ttl": "30m", "max_uses": 0, "max_rows": 1}),
            "max_uses",
        ),
        (
            json!({"match": "fingerprint", "ttl": "soon", "max_uses": 5, "max_rows": 1}),
            "ttl",
        ),
        (
            json!({"match": "rule", "ttl": "30m", "max_uses": 5, "max_rows": 1, "kinds": ["DELETE"], "tables": ["public.customers"]}),
            "public.customers",
        ),
        (
            json!({"match": "rule", "ttl": "30m", "max_uses": 5, "max_rows": 1, "kinds": ["DROP"], "tables": ["public.orders"]}),
            "DROP",
        ),
    ] {
        let (status, v) = rest(
            &stack,
            reqwest::Method::POST,
            &format!("/api/v1/requests/{id}/approve"),
            json!({"scope": scope}),
        )
        .await;
        assert_eq!(status, 400, "{scope}: {v}");
        assert!(v.to_string().contains(says), "{scope}: {v}");
    }
    // Nothing was voted: a plain approval still runs it.
    let (status, v) = rest(
        &stack,
        reqwest::Method::POST,
        &format!("/api/v1/requests/{id}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    run.await.expect("task").expect("ran");
    let (_, grants) = rest(&stack, reqwest::Method::GET, "/api/v1/grants", json!({})).await;
    assert_eq!(grants["grants"].as_array().map(Vec::len), Some(0), "{grants}");
}

const GLASS_ACCESS: &str = "connections:
  - name: prod-maintenance
    upstream: postgres://maint@127.0.0.1:{PG}/shop
    password_env: PROD_MAINT_PASSWORD
policies:
  - policy: db-maintenance-agents
    connection: prod-maintenance
    break_glass: {groups: [dba-leads]}
    rules:
      - match: SELECT
        action: allow
      - match: DELETE
        action: require-approval
    record: true
  - policy: dba-leads
    connection: prod-maintenance
    break_glass: {groups: [dba-leads], max_ttl: 30m, clients: [airlock-reviewer]}
    rules:
      - match: SELECT
        action: allow
      - match: DELETE
        action: require-approval
        approvals: 2
    record: true
";

const LENA: (&str, &str, &str) = ("oid-lena", "Lena Lead", airlock_e2e::binaries::LEADS);

async fn approve_as(stack: &BinaryStack, token: &str, id: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/requests/{id}/approve", stack.reviewer_url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("reviewer answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_breaks_glass_on_their_own_statement_loudly_and_agents_and_others_cannot() {
    let stack = tokio::task::block_in_place(|| {
        StackBuilder::new()
            .orders(20)
            .access(GLASS_ACCESS)
            .reviewer()
            .start_binaries()
    });
    let lena = stack.user_token(LENA);
    let reason = "orders service down, INC-4711: removing the poison row";
    // Lena's own DELETE, which needs two reviewers, she approves herself.
    let (client, mut notices) = airlock_e2e::session(stack.proxy_port, &lena).await;
    let run = tokio::spawn(async move { client.simple_query("DELETE FROM orders WHERE id = 1").await });
    let notice = tokio::time::timeout(Duration::from_secs(30), notices.recv())
        .await
        .expect("held")
        .expect("notice");
    let id = request_id(&notice).expect("id");
    // Not with the credential her session logged in with: whatever holds
    // it (an agent given her token) must not approve its own statement.
    let (status, v) = approve_as(&stack, &lena, &id, json!({"reason": reason, "break_glass": true})).await;
    assert_eq!(status, 403, "{v}");
    assert!(v.to_string().contains("sign-in of your own"), "{v}");
    // Nor through another client the policy does not name (a tool on the
    // same machine that can mint her tokens for other clients).
    let lena_elsewhere = stack.token(&[
        "--sub",
        LENA.0,
        "--name",
        LENA.1,
        "--group",
        LENA.2,
        "--client-id",
        "some-other-tool",
    ]);
    let (status, v) = approve_as(
        &stack,
        &lena_elsewhere,
        &id,
        json!({"reason": reason, "break_glass": true}),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    assert!(v.to_string().contains("break_glass.clients"), "{v}");
    // Nor may the session's own credential read the request.
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/requests/{id}", stack.reviewer_url))
        .bearer_auth(&lena)
        .send()
        .await
        .expect("reviewer answers");
    assert_eq!(r.status().as_u16(), 403, "the session's credential reads nothing");
    // Signed in to the reviewer as herself, through its own client.
    let lena_reviewing = stack.token(&[
        "--sub",
        LENA.0,
        "--name",
        LENA.1,
        "--group",
        LENA.2,
        "--client-id",
        "airlock-reviewer",
    ]);
    let (status, v) = approve_as(
        &stack,
        &lena_reviewing,
        &id,
        json!({"reason": "urgent", "break_glass": true}),
    )
    .await;
    assert_eq!(status, 400, "too short a reason: {v}");
    let (status, v) = approve_as(
        &stack,
        &lena_reviewing,
        &id,
        json!({"reason": reason, "break_glass": true}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    run.await.expect("task").expect("her statement ran");
    assert_eq!(count(&stack), 19);
    // Flagged on the request and the session, counted.
    let (_, request) = rest(
        &stack,
        reqwest::Method::GET,
        &format!("/api/v1/requests/{id}"),
        json!({}),
    )
    .await;
    assert_eq!(request["break_glass"], true, "{request}");
    assert_eq!(request["state"], "granted");
    let session = request["session_id"].as_str().expect("session id").to_owned();
    let (_, s) = rest(
        &stack,
        reqwest::Method::GET,
        &format!("/api/v1/sessions/{session}"),
        json!({}),
    )
    .await;
    assert_eq!(s["summary"]["break_glass"], true, "{s}");
    // In the log for auditors: the vote and the grant say so.
    let log = stack.export("jsonl");
    let flagged = |kind: &str, body: &str| {
        log.iter().any(|e| {
            e["kind"] == kind
                && e["event"][body]["break_glass"] == true
                && e["event"]["request_id"] == id.as_str()
        })
    };
    assert!(flagged("approval_voted", "approval_voted"));
    assert!(flagged("approval_granted", "approval_granted"));
    // And in replay: who broke glass, on which request, why.
    let report = replay(&stack);
    let glass = report["break_glass"].as_array().cloned().unwrap_or_default();
    assert_eq!(glass.len(), 1, "{report}");
    assert_eq!(glass[0]["request_id"], id.as_str());
    assert_eq!(glass[0]["subject"], LENA.0);
    assert_eq!(glass[0]["reason"], reason);
    // An agent in the break-glass group's policy cannot: it is an app.
    let agent = stack.agent_token();
    let (client, mut notices) = airlock_e2e::session(stack.proxy_port, &agent).await;
    let held = tokio::spawn(async move { client.simple_query("DELETE FROM orders WHERE id = 2").await });
    let notice = tokio::time::timeout(Duration::from_secs(30), notices.recv())
        .await
        .expect("held")
        .expect("notice");
    let agent_request = request_id(&notice).expect("id");
    let (status, v) = approve_as(
        &stack,
        &agent,
        &agent_request,
        json!({"reason": reason, "break_glass": true}),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    // Nor may Lena break glass on the agent's request: only her own.
    let (status, v) = approve_as(
        &stack,
        &lena_reviewing,
        &agent_request,
        json!({"reason": reason, "break_glass": true}),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    // Nor Alice, a reviewer who is not in the group.
    let alice = stack.user_token(ALICE);
    let (status, v) = approve_as(
        &stack,
        &alice,
        &agent_request,
        json!({"reason": reason, "break_glass": true}),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    held.abort();
    assert_eq!(count(&stack), 19);
    stack.assert_verify_passes();
}

/// `airlock-control review ...` with the stack's configuration and a token file.
fn review(stack: &BinaryStack, token: &std::path::Path, args: &[&str]) -> String {
    let mut all = vec!["review"];
    all.extend_from_slice(args);
    let out = stack
        .control_command(&all)
        .arg("--token-file")
        .arg(token)
        .env_remove("AIRLOCK_TOKEN")
        .output()
        .expect("airlock-control review");
    assert!(
        out.status.success(),
        "review {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_signs_in_with_the_device_flow_then_lists_shows_approves_in_scope_and_revokes() {
    use tokio::io::AsyncBufReadExt;
    let stack = tokio::task::block_in_place(|| {
        StackBuilder::new()
            .orders(20)
            .rules(RULES)
            .reviewer()
            .start_binaries()
    });
    let token = stack.dir.join("cli-token");
    // `login`: the device flow against the development issuer; Alice
    // enters the code on its page.
    let mut login = tokio::process::Command::from(stack.control_command(&["login"]));
    login
        .arg("--token-file")
        .arg(&token)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = login.spawn().expect("airlock-control login");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let (page, code) = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("login prints a code")
            .expect("stderr")
            .expect("a line");
        if let Some(rest) = line.strip_prefix("To sign in, open ") {
            let (page, code) = rest.split_once(" and enter the code ").expect("page and code");
            break (page.to_owned(), code.trim().to_owned());
        }
    };
    let r = reqwest::Client::new()
        .post(&page)
        .form(&[("user_code", code.to_lowercase().as_str()), ("user", ALICE.0)])
        .send()
        .await
        .expect("the verification page");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("login ends")
        .expect("status");
    assert!(status.success());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token)
            .expect("token file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the token file is its owner's only");
    }
    // The agent's DELETE waits.
    let agent = stack.agent_token();
    let (client, mut notices) = airlock_e2e::session(stack.proxy_port, &agent).await;
    let run = tokio::spawn(async move {
        client
            .simple_query("DELETE FROM orders WHERE id = 1")
            .await
            .map(|_| client)
    });
    let notice = tokio::time::timeout(Duration::from_secs(30), notices.recv())
        .await
        .expect("held")
        .expect("notice");
    let id = request_id(&notice).expect("id");
    let listed = review(&stack, &token, &["list"]);
    assert!(listed.contains(&id) && listed.contains("pending"), "{listed}");
    assert!(
        listed.lines().next().is_some_and(|h| h.starts_with("ID")),
        "{listed}"
    );
    let shown = review(&stack, &token, &["show", &id]);
    assert!(shown.contains("DELETE FROM orders WHERE id = 1"), "{shown}");
    assert!(
        shown.contains("DELETE FROM orders WHERE id = ?"),
        "the shape: {shown}"
    );
    assert!(shown.contains("agent-7"), "{shown}");
    let json: Value = serde_json::from_str(&review(&stack, &token, &["show", &id, "--json"])).expect("JSON");
    assert_eq!(json["id"], id.as_str());
    let approved = review(
        &stack,
        &token,
        &[
            "approve",
            &id,
            "--reason",
            "cleanup",
            "--scope",
            "fingerprint",
            "--max-uses",
            "3",
            "--max-rows",
            "1",
        ],
    );
    assert!(approved.contains("granted"), "{approved}");
    let client = run.await.expect("task").expect("ran");
    // The grant is listed, and a use of it shows.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let grants = review(&stack, &token, &["grants"]);
        if grants.contains(&id) {
            assert!(grants.contains("active") && grants.contains("0/3"), "{grants}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no grant listed: {grants}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .simple_query("DELETE FROM orders WHERE id = 2")
        .await
        .expect("a use");
    let one = review(&stack, &token, &["grants", &id]);
    assert!(one.contains("1/3") && one.contains("use 1 at"), "{one}");
    let revoked = review(&stack, &token, &["revoke", &id, "--reason", "done"]);
    assert!(revoked.contains("revoked grant"), "{revoked}");
    let json: Value = serde_json::from_str(&review(
        &stack,
        &token,
        &["grants", "--state", "revoked", "--json"],
    ))
    .expect("JSON");
    assert_eq!(json["grants"][0]["id"], id.as_str(), "{json}");
    // A wrong token is refused with the API's words.
    std::fs::write(&token, "not-a-token").expect("write");
    let out = stack
        .control_command(&["review", "list"])
        .arg("--token-file")
        .arg(&token)
        .output()
        .expect("review");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
