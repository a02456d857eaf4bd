//! The reviewer web UI in a real browser: Debian's headless Chromium driven
//! by playwright-core (tests/browser/review.js). A reviewer signs in through
//! `airlock-dev-idp`, sees the held statement with its exact text and the
//! agent's identity, and approves it (the statement then completes on the
//! agent's session) or denies it (the agent gets the refusal).
//!
//! Chromium, Node.js and playwright-core are installed by
//! `deploy/local/install-deps.sh`; a missing one fails the test with that
//! hint, never skips it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use airlock_e2e::StackBuilder;
use airlock_e2e::binaries::{ALICE, BinaryStack, Held, hold};
use serde_json::{Value, json};

const HINT: &str = "run ./deploy/local/install-deps.sh (installs Debian's chromium, Node.js and \
                    tests/browser's pinned playwright-core)";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Chromium's path: `AIRLOCK_CHROMIUM`, else Debian's.
fn chromium() -> PathBuf {
    let path = std::env::var_os("AIRLOCK_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(path.is_file(), "{} is missing: {HINT}", path.display());
    path
}

fn check_tools() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "node is missing: {HINT}"
    );
    assert!(
        browser_dir()
            .join("node_modules/playwright-core/package.json")
            .is_file(),
        "playwright-core is not installed in tests/browser: {HINT}"
    );
    chromium();
}

/// Something the test does while the browser waits: its answer.
type During<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send + 'a>>;

/// Runs the browser as Alice; returns what it saw. With `live` and no
/// `scope`, the browser says READY once the inbox is open, `live` then
/// holds another statement, and the browser waits for it to appear there
/// by itself. With `scope`, the browser approves in that scope and says
/// GRANTED, `live` then uses the grant, and the browser waits for the use
/// to show on the grant's page and revokes it.
async fn review(
    stack: &BinaryStack,
    request_id: &str,
    decision: &str,
    screenshot: Option<&Path>,
    live: Option<During<'_>>,
    scope: Option<Value>,
) -> (Value, Option<String>) {
    use tokio::io::AsyncBufReadExt;
    check_tools();
    let profile = tempfile::tempdir().expect("a fresh user-data-dir");
    let reason = if decision == "deny" {
        "denied in the browser test"
    } else {
        "approved in the browser test"
    };
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(browser_dir().join("review.js"))
        .arg(&stack.reviewer_url)
        .arg(request_id)
        .arg(decision)
        .arg(json!({"user": ALICE.0, "reason": reason, "scope": scope}).to_string())
        .env("AIRLOCK_CHROMIUM", chromium())
        .env("AIRLOCK_USER_DATA", profile.path())
        .current_dir(browser_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    match screenshot {
        Some(path) => cmd.env("AIRLOCK_SCREENSHOT", path),
        None => cmd.env_remove("AIRLOCK_SCREENSHOT"),
    };
    match (&live, &scope) {
        (Some(_), None) => cmd.env("AIRLOCK_LIVE_CHECK", "1"),
        _ => cmd.env_remove("AIRLOCK_LIVE_CHECK"),
    };
    let mut child = cmd.spawn().expect("run node");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut live = live;
    let mut arrived = None;
    let mut last = String::new();
    while let Some(line) = lines.next_line().await.expect("read the browser's output") {
        if line == "READY" || line == "GRANTED" {
            if let Some(hold_another) = live.take() {
                arrived = Some(hold_another.await);
            }
        } else if !line.trim().is_empty() {
            last = line;
        }
    }
    let out = child.wait_with_output().await.expect("node ends");
    assert!(
        out.status.success(),
        "the browser run failed\nstdout: {last}\nstderr: {}\nreviewer log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        stack.reviewer_log()
    );
    (
        serde_json::from_str(&last).expect("the browser's JSON report"),
        arrived,
    )
}

/// What every browser run must have seen.
fn check_seen(seen: &Value, statement: &str) {
    assert_eq!(seen["statement"], statement, "the exact statement text: {seen}");
    assert_eq!(seen["requestStatement"], statement, "{seen}");
    // innerText shows the badge as styled (upper case).
    let identity = seen["identity"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        identity.contains("agent-7")
            && identity.contains("app")
            && identity.contains("db-maintenance-agents"),
        "the agent's identity, kind and group: {identity}"
    );
    let card = seen["card"].as_str().unwrap_or_default();
    assert!(card.contains("prod-maintenance"), "the connection: {card}");
    assert!(
        card.contains("deletes need a reviewer"),
        "the rule's reason: {card}"
    );
    assert!(card.contains("0 of 1"), "approvals given of needed: {card}");
    assert!(card.contains("time left"), "{card}");
    assert!(
        seen["idpPage"]
            .as_str()
            .unwrap_or_default()
            .contains("DEVELOPMENT AND TESTS ONLY"),
        "{seen}"
    );
    assert!(
        seen["header"]
            .as_str()
            .unwrap_or_default()
            .contains("Alice Reviewer"),
        "{seen}"
    );
    let session = seen["cookies"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "airlock_session"))
        .unwrap_or_else(|| panic!("a session cookie: {seen}"));
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Strict");
}

async fn outcome(held: Held) -> Result<u64, tokio_postgres::Error> {
    tokio::time::timeout(Duration::from_secs(30), held.outcome)
        .await
        .expect("the held statement finishes")
        .expect("join")
}

#[tokio::test]
async fn a_reviewer_approves_a_held_delete_in_the_browser_and_it_completes() {
    let stack = StackBuilder::new().orders(20).reviewer().start_binaries();
    let agent = stack.agent_token();
    // Something else waiting too, so the inbox shows more than one request.
    let (other, _notices) = stack.connect(&agent).await;
    let _update = tokio::spawn(async move {
        other
            .execute(
                "UPDATE orders SET status = $1 WHERE id = $2",
                &[&"refunded", &8i32],
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let statement = "DELETE FROM orders\nWHERE status = 'open' AND id <= 3 -- <b>stale</b> test orders";
    // The agent reads before it asks, and says why.
    let (session, mut notices) = stack.connect(&agent).await;
    session
        .simple_query("SELECT count(*) FROM orders")
        .await
        .expect("read");
    let sent = format!("/* airlock-reason: <i>cleanup</i> of stale test orders */ {statement}");
    let text = sent.clone();
    let outcome_task = tokio::spawn(async move {
        let r = session.execute(text.as_str(), &[]).await;
        drop(session);
        r
    });
    let notice = tokio::time::timeout(Duration::from_secs(20), notices.recv())
        .await
        .expect("held in time")
        .expect("notice");
    let held = airlock_e2e::binaries::Held {
        request_id: airlock_e2e::request_id(&notice).expect("request id"),
        outcome: outcome_task,
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let screenshot = std::env::var_os("AIRLOCK_SCREENSHOT").map(PathBuf::from);
    let (seen, _) = review(
        &stack,
        &held.request_id,
        "approve",
        screenshot.as_deref(),
        None,
        None,
    )
    .await;
    check_seen(&seen, &sent);
    // The reviewer saw the agent's words as text, labelled unverified, what
    // the session did before, the estimate, and the bound it approves.
    let reason = seen["agentReason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("not verified") && reason.contains("<i>cleanup</i> of stale test orders"),
        "{seen}"
    );
    let recent = seen["recent"].as_str().unwrap_or_default();
    assert!(
        recent.contains("SELECT count(*) FROM orders") && recent.contains("allow"),
        "{seen}"
    );
    assert!(
        seen["estimate"]
            .as_str()
            .unwrap_or_default()
            .contains("of public.orders"),
        "{seen}"
    );
    assert_eq!(
        seen["bounds"][0][0], "max_rows:public.orders",
        "the approval's bound, offered to change: {seen}"
    );
    assert!(
        seen["notice"]
            .as_str()
            .unwrap_or_default()
            .contains("vote to approve was recorded"),
        "{seen}"
    );
    assert_eq!(
        seen["state"].as_str().map(str::to_lowercase).as_deref(),
        Some("granted"),
        "{seen}"
    );
    assert_eq!(
        seen["shadow"],
        Value::Null,
        "no shadow policy, no shadow line: {seen}"
    );

    let rows = outcome(held)
        .await
        .expect("the approved DELETE ran on the agent's session");
    assert_eq!(rows, 3);
    assert_eq!(
        stack.pg.psql("shop", "SELECT count(*) FROM orders WHERE id <= 3"),
        "0"
    );
}

/// Whether `sql` runs on a fresh session of `token` without being held.
async fn runs_unheld(stack: &BinaryStack, token: &str, sql: &str) -> bool {
    let (client, mut notices) = stack.connect(token).await;
    tokio::select! {
        r = client.simple_query(sql) => {
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
async fn a_reviewer_approves_in_scope_in_the_browser_sees_the_use_and_revokes_the_grant() {
    let stack = tokio::task::block_in_place(|| StackBuilder::new().orders(20).reviewer().start_binaries());
    let agent = stack.agent_token();
    let held = hold(&stack, &agent, "DELETE FROM orders WHERE id = 1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grant_id = held.request_id.clone();
    let (stack_ref, agent_ref) = (&stack, agent.clone());
    // Once granted: wait for the grant to be live, then use it once.
    let use_it: During<'_> = Box::pin(async move {
        let alice = stack_ref.user_token(ALICE);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let v: Value = reqwest::Client::new()
                .get(format!("{}/api/v1/grants/{grant_id}", stack_ref.reviewer_url))
                .bearer_auth(&alice)
                .send()
                .await
                .expect("reviewer answers")
                .json()
                .await
                .unwrap_or(Value::Null);
            if v["state"] == "active" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no active grant: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ran = runs_unheld(stack_ref, &agent_ref, "delete from orders where id = 2").await;
        if ran { "ran" } else { "held" }.to_owned()
    });
    let scope = json!({"ttl": "30m", "max_uses": 3, "max_rows": 1});
    let (seen, used) = review(
        &stack,
        &held.request_id,
        "approve",
        None,
        Some(use_it),
        Some(scope),
    )
    .await;
    assert_eq!(
        used.as_deref(),
        Some("ran"),
        "the grant's use ran without a hold: {seen}"
    );
    assert!(
        seen["shape"]
            .as_str()
            .unwrap_or_default()
            .contains("DELETE FROM orders WHERE id = ?"),
        "the reviewer was shown the shape: {seen}"
    );
    let row = seen["grantRow"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        row.contains("active") && row.contains("of 3") && row.contains("agent-7"),
        "the grant among the active ones: {seen}"
    );
    let card = seen["grantCard"].as_str().unwrap_or_default();
    assert!(card.contains("1 of 3 (2 left)"), "uses and what is left: {seen}");
    assert!(card.contains("at most 1 rows"), "{seen}");
    assert!(
        seen["grantUses"].as_str().unwrap_or_default().contains("proxy"),
        "{seen}"
    );
    assert!(
        seen["revokedNotice"]
            .as_str()
            .unwrap_or_default()
            .contains("Revoked"),
        "{seen}"
    );
    assert_eq!(
        seen["grantState"].as_str().map(str::to_lowercase).as_deref(),
        Some("revoked"),
        "{seen}"
    );
    assert!(
        seen["revokedBy"]
            .as_str()
            .unwrap_or_default()
            .contains("cleanup finished"),
        "{seen}"
    );
    assert_eq!(outcome(held).await.expect("the approved DELETE ran"), 1);
    // Revoked: the same shape is held again.
    assert!(!runs_unheld(&stack, &agent, "DELETE FROM orders WHERE id = 3").await);
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM orders"), "18");
}

#[tokio::test]
async fn a_reviewer_denies_a_held_delete_in_the_browser_and_the_agent_is_refused() {
    // A shadow policy that would refuse the DELETE outright: the request
    // page says so, and the enforced hold is what happens.
    let access = crate::shadow::with_shadow(
        "      - match: DELETE
        tables: [public.orders]
        action: deny
        reason: <i>orders</i> are never deleted from next week
      - match: SELECT
        action: allow
",
    );
    let stack = StackBuilder::new()
        .orders(20)
        .access(&access)
        .reviewer()
        .start_binaries();
    let agent = stack.agent_token();
    let statement = "DELETE FROM orders WHERE id = 17";
    let held = hold(&stack, &agent, statement).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let agent_again = agent.clone();
    let stack_ref = &stack;
    let another: During<'_> = Box::pin(async move {
        hold(stack_ref, &agent_again, "DELETE FROM orders WHERE id = 18")
            .await
            .request_id
    });
    let (seen, arrived) = review(&stack, &held.request_id, "deny", None, Some(another), None).await;
    check_seen(&seen, statement);
    let arrived = arrived.expect("another request was held");
    assert_eq!(
        seen["liveArrival"],
        arrived.as_str(),
        "the open inbox showed the new request by itself (server-sent events): {seen}"
    );
    assert!(
        seen["notice"]
            .as_str()
            .unwrap_or_default()
            .contains("vote to deny was recorded"),
        "{seen}"
    );
    assert_eq!(
        seen["state"].as_str().map(str::to_lowercase).as_deref(),
        Some("denied"),
        "{seen}"
    );
    assert_eq!(
        seen["shadow"],
        "would deny (not enforced): policy db-maintenance-agents, rule #1 match: DELETE, tables: [public.orders], action: deny — <i>orders</i> are never deleted from next week",
        "the shadow policy's verdict, its reason as text: {seen}"
    );

    let err = outcome(held).await.expect_err("the denied DELETE never ran");
    let text = format!("{err:?}");
    assert!(
        text.contains("42501") || err.as_db_error().is_some_and(|d| d.code().code() == "42501"),
        "{text}"
    );
    assert!(
        text.contains("denied in the browser test"),
        "the reviewer's reason reaches the agent: {text}"
    );
    assert_eq!(
        stack.pg.psql("shop", "SELECT count(*) FROM orders WHERE id = 17"),
        "1"
    );
}

/// Issue: reviewer replicas share state. Two replicas with
/// `reviewer.state: nats` behind a balancer with no sticky routing: one
/// sign-in in a real browser is served by either replica, and by each of
/// them again after it restarts (a fresh process, nothing in its memory).
#[tokio::test(flavor = "multi_thread")]
async fn one_sign_in_is_served_by_either_reviewer_replica_and_survives_their_restarts() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    check_tools();
    let mut stack = tokio::task::block_in_place(|| StackBuilder::new().reviewer_replicas(2).start_binaries());
    let profile = tempfile::tempdir().expect("a fresh user-data-dir");
    let mut child = tokio::process::Command::new("node")
        .arg(browser_dir().join("replicas.js"))
        .arg(&stack.reviewer_url)
        .arg(ALICE.0)
        .env("AIRLOCK_CHROMIUM", chromium())
        .env("AIRLOCK_USER_DATA", profile.path())
        .current_dir(browser_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run node");
    let mut input = child.stdin.take().expect("stdin");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the browser answers in time")
            .expect("read the browser's output")
            .expect("the browser is still running")
    };
    assert_eq!(next().await, "SIGNED_IN");
    let mut visits = 0;
    let mut visit = async |what: &str| {
        input.write_all(b"VISIT\n").await.expect("tell the browser");
        let line = next().await;
        let page: Value =
            serde_json::from_str(line.strip_prefix("PAGE ").expect("a PAGE line")).expect("json");
        assert_eq!(page["status"], 200, "{what}: {page}");
        assert_eq!(page["signInOffered"], false, "{what}: still signed in: {page}");
        assert!(
            page["header"].as_str().unwrap_or_default().contains(ALICE.1),
            "{what}: the inbox is Alice's: {page}"
        );
        visits += 1;
    };
    visit("through the balancer").await;
    tokio::task::block_in_place(|| stack.kill_reviewer(0));
    visit("replica 2 alone").await;
    tokio::task::block_in_place(|| {
        stack.start_reviewer(0);
        stack.kill_reviewer(1);
    });
    visit("replica 1, restarted, alone").await;
    tokio::task::block_in_place(|| {
        stack.start_reviewer(1);
        stack.kill_reviewer(0);
    });
    visit("replica 2, restarted, alone").await;
    assert_eq!(visits, 4);
    drop(input);
    let _ = child.wait().await;
    let log = std::fs::read_to_string(stack.dir.join("reviewer-2.log")).unwrap_or_default();
    assert!(log.contains("kept in NATS KV"), "{log}");
}

/// Issue: step-up for approvals. The DELETE rule requires authentication
/// context c1: Alice's first sign-in has none, so her click on Approve
/// sends the browser back to the issuer asking for c1 (the `claims`
/// parameter); after that sign-in she approves again, the vote is recorded
/// with the context it met, and the statement runs.
#[tokio::test]
async fn approving_a_delete_that_needs_step_up_sends_the_reviewer_to_sign_in_again() {
    let rules = airlock_e2e::binaries::SEED_RULES.replace(
        "        reason: deletes need a reviewer\n",
        "        reason: deletes need a reviewer\n        require_acrs: [c1]\n",
    );
    let stack = StackBuilder::new()
        .orders(20)
        .rules(&rules)
        .reviewer()
        .start_binaries();
    let agent = stack.agent_token();
    let statement = "DELETE FROM orders WHERE id = 4";
    let held = hold(&stack, &agent, statement).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (seen, _) = review(&stack, &held.request_id, "approve", None, None, None).await;
    assert!(
        seen["card"]
            .as_str()
            .unwrap_or_default()
            .contains("authentication context c1"),
        "the request says approving needs step-up: {seen}"
    );
    assert_eq!(
        seen["stepUpClaims"], r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#,
        "the sign-in asked the issuer for c1: {seen}"
    );
    assert!(
        seen["stepUpPage"]
            .as_str()
            .unwrap_or_default()
            .contains("authentication context c1"),
        "{seen}"
    );
    assert!(
        seen["steppedUpNotice"]
            .as_str()
            .unwrap_or_default()
            .contains("Approve again"),
        "{seen}"
    );
    assert!(
        seen["votes"]
            .as_str()
            .unwrap_or_default()
            .contains("sign-in met c1"),
        "the vote records the context it met: {seen}"
    );
    assert_eq!(
        seen["state"].as_str().map(str::to_lowercase).as_deref(),
        Some("granted"),
        "{seen}"
    );
    assert_eq!(outcome(held).await.expect("the approved DELETE ran"), 1);
}
