//! The promise, checked end to end: the agent's DELETE pauses, surfaces to
//! the reviewer, and runs only after a human approves, with the exchange in
//! the session record; a denied DELETE never reaches the database.

use std::time::Duration;

use airlock_e2e::review::vote;
use airlock_e2e::{AGENT_TOKEN, Stack, StackBuilder, authed, eventually, request_id, satisfies};
use airlock_eventlog::proto;
use tokio_postgres::error::SqlState;

async fn held_request(notices: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    let notice = tokio::time::timeout(Duration::from_secs(10), notices.recv())
        .await
        .expect("a hold notice arrives")
        .expect("notice");
    assert!(notice.contains("holding this statement for approval"), "{notice}");
    assert!(notice.contains("https://airlock.example/requests/"), "{notice}");
    request_id(&notice).expect("the notice names the request")
}

/// The held statement's task, once released (ten seconds at most).
async fn released<T>(held: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("released")
        .expect("task")
}

/// The request, as alice reads it through the control plane.
async fn request_view(stack: &Stack, id: &str) -> proto::RequestView {
    stack
        .reviewer()
        .await
        .get_request(authed(
            "alice",
            proto::GetRequestRequest {
                request_id: id.to_owned(),
            },
        ))
        .await
        .expect("get request")
        .into_inner()
}

/// The session's record, as alice reads it through the control plane.
async fn session_record(stack: &Stack, session_id: &str) -> proto::SessionView {
    stack
        .reviewer()
        .await
        .get_session(authed(
            "alice",
            proto::GetSessionRequest {
                session_id: session_id.to_owned(),
            },
        ))
        .await
        .expect("session record")
        .into_inner()
}

/// What the record's timeline holds, by kind.
fn timeline_kinds(view: &proto::SessionView) -> Vec<&'static str> {
    view.timeline
        .iter()
        .filter_map(|e| e.event.as_ref()?.body.as_ref().map(airlock_eventlog::body_kind))
        .collect()
}

/// Waits for `id`'s request to be cancelled in the control plane.
async fn cancelled(stack: &Stack, id: &str) {
    eventually("the request to be cancelled", Duration::from_secs(5), || async {
        let state = stack.live.read(|s| s.request(id).map(|r| r.state()));
        satisfies(state, |s| *s == Some(proto::RequestState::Cancelled))
    })
    .await;
}

#[tokio::test]
async fn a_delete_waits_for_approval_then_runs() {
    let stack = StackBuilder::new().start().await;
    let (agent, mut notices) = stack.agent().await;
    let held = tokio::spawn(async move {
        let r = agent.simple_query("DELETE FROM orders WHERE id <= 3").await;
        (agent, r)
    });
    let id = held_request(&mut notices).await;

    // Reads flow while the DELETE waits, on another session.
    let (other, _) = stack.agent().await;
    let rows = other
        .query("SELECT count(*) FROM orders", &[])
        .await
        .expect("select flows");
    assert_eq!(rows[0].get::<_, i64>(0), 10);
    assert!(!held.is_finished(), "the DELETE is still waiting");
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM orders"), "10");

    // The reviewer sees who wants to run exactly what.
    let view = request_view(&stack, &id).await;
    let asked = view.request.expect("request");
    assert_eq!(
        asked.identity.as_ref().map(|i| i.display_name.as_str()),
        Some("agent-7")
    );
    assert_eq!(
        asked.statement.as_ref().map(|s| s.text.as_str()),
        Some("DELETE FROM orders WHERE id <= 3")
    );
    assert_eq!(
        asked.connection.as_ref().map(|c| c.name.as_str()),
        Some("prod-maintenance")
    );

    // The agent cannot approve its own request.
    let err = stack
        .decide(AGENT_TOKEN, vote(&id, proto::Decision::Approve, "me"))
        .await
        .expect_err("no self-approval");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    stack
        .decide(
            "alice",
            vote(&id, proto::Decision::Approve, "cleanup of test orders"),
        )
        .await
        .expect("alice approves");
    let (agent, result) = released(held).await;
    result.expect("the DELETE ran");
    assert_eq!(
        stack.pg.psql("shop", "SELECT count(*) FROM orders"),
        "7",
        "rows gone"
    );
    // The session goes on.
    agent.simple_query("SELECT 1").await.expect("next statement");
}

#[tokio::test]
async fn a_denied_delete_never_reaches_the_database() {
    let stack = StackBuilder::new().start().await;
    let (agent, mut notices) = stack.agent().await;
    let held = tokio::spawn(async move {
        let r = agent.simple_query("DELETE FROM orders").await;
        (agent, r)
    });
    let id = held_request(&mut notices).await;
    stack
        .decide(
            "bob",
            vote(&id, proto::Decision::Deny, "not during business hours"),
        )
        .await
        .expect("bob denies");
    let (agent, result) = released(held).await;
    let err = result.expect_err("denied");
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    let msg = err
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(msg.contains("denied by Bob: not during business hours"), "{msg}");
    assert_eq!(
        stack.pg.psql("shop", "SELECT count(*) FROM orders"),
        "10",
        "rows still there"
    );
    assert!(
        !stack.pg.server_log().contains("DELETE FROM orders"),
        "PostgreSQL's statement log shows no DELETE"
    );
    agent.simple_query("SELECT 1").await.expect("the session goes on");
}

#[tokio::test]
async fn an_unanswered_delete_expires_and_is_refused() {
    let stack = StackBuilder::new()
        .hold_timeout(Duration::from_secs(1))
        .start()
        .await;
    let (agent, mut notices) = stack.agent().await;
    let held = tokio::spawn(async move { agent.simple_query("DELETE FROM orders").await });
    let _ = held_request(&mut notices).await;
    let err = released(held).await.expect_err("expired");
    let msg = err
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(msg.contains("expired"), "{msg}");
    // A timeout, which the agent may retry.
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM orders"), "10");
}

#[tokio::test]
async fn the_session_record_ties_identity_statement_approver_and_outcome() {
    let stack = StackBuilder::new().start().await;
    let (agent, mut notices) = stack.agent().await;
    let held = tokio::spawn(async move {
        let r = agent
            .simple_query("UPDATE orders SET status = 'closed' WHERE id = 1")
            .await;
        (agent, r)
    });
    let id = held_request(&mut notices).await;
    stack
        .decide("alice", vote(&id, proto::Decision::Approve, "ticket 42"))
        .await
        .expect("approve");
    let (agent, r) = held.await.expect("task");
    r.expect("update ran");
    drop(agent);

    let session_id = stack
        .live
        .read(|s| s.request(&id).map(|r| r.view.session_id.clone()))
        .expect("request folded");
    // The StatementExecuted for the approved UPDATE arrives asynchronously.
    let view = eventually(
        "the executed UPDATE in the session record",
        Duration::from_secs(5),
        || async {
            let view = session_record(&stack, &session_id).await;
            let done = view.timeline.iter().any(|e| {
                matches!(&e.event.as_ref().and_then(|e| e.body.clone()), Some(proto::event::Body::StatementExecuted(x)) if x.request_id == id)
            });
            if done { Ok(view) } else { Err(timeline_kinds(&view)) }
        },
    )
    .await;
    let summary = view.summary.clone().expect("summary");
    assert_eq!(
        summary.identity.as_ref().map(|i| i.subject.as_str()),
        Some("oid-agent-7")
    );
    let kinds = timeline_kinds(&view);
    for want in [
        "session_opened",
        "approval_requested",
        "approval_voted",
        "approval_granted",
        "statement_executed",
    ] {
        assert!(kinds.contains(&want), "{want} missing from {kinds:?}");
    }
    let executed = view
        .timeline
        .iter()
        .find_map(|e| match e.event.as_ref()?.body.as_ref()? {
            proto::event::Body::StatementExecuted(x) if x.request_id == id => Some(x.clone()),
            _ => None,
        })
        .expect("executed");
    assert_eq!(executed.command_tag, "UPDATE 1");
    let request = &view.requests[0];
    assert_eq!(
        request.votes[0]
            .reviewer
            .as_ref()
            .map(|r| r.display_name.as_str()),
        Some("Alice")
    );
    assert_eq!(request.votes[0].reason, "ticket 42");
}

#[tokio::test]
async fn over_the_extended_protocol_a_delete_is_held_at_execute_with_its_parameters() {
    let stack = StackBuilder::new().start().await;
    let (agent, mut notices) = stack.agent().await;
    let held = tokio::spawn(async move {
        let r = agent.execute("DELETE FROM orders WHERE id <= $1", &[&4i32]).await;
        (agent, r)
    });
    let id = held_request(&mut notices).await;
    let view = request_view(&stack, &id).await;
    let statement = view.request.and_then(|r| r.statement).expect("statement");
    assert_eq!(statement.text, "DELETE FROM orders WHERE id <= $1");
    assert_eq!(statement.protocol, proto::statement::Protocol::Extended as i32);
    assert_eq!(
        statement
            .parameters
            .iter()
            .map(|p| p.display.as_str())
            .collect::<Vec<_>>(),
        vec!["4"],
        "the reviewer sees the bound value"
    );
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM orders"), "10");
    stack
        .decide("alice", vote(&id, proto::Decision::Approve, "ok"))
        .await
        .expect("approve");
    let (agent, r) = released(held).await;
    assert_eq!(r.expect("the DELETE ran"), 4, "four rows deleted");
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM orders"), "6");

    // Denied over the extended protocol: an ordinary error; nothing ran.
    let held = tokio::spawn(async move {
        let r = agent.execute("DELETE FROM orders WHERE id > $1", &[&0i32]).await;
        (agent, r)
    });
    let id = held_request(&mut notices).await;
    stack
        .decide("bob", vote(&id, proto::Decision::Deny, "no"))
        .await
        .expect("deny");
    let (agent, r) = released(held).await;
    let err = r.expect_err("denied");
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err:?}");
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM orders"), "6");
    assert!(!stack.pg.server_log().contains("DELETE FROM orders WHERE id > $1"));
    // The session goes on, with prepared statements working.
    let rows = agent
        .query("SELECT count(*) FROM orders WHERE id > $1", &[&0i32])
        .await
        .expect("next statement");
    assert_eq!(rows[0].get::<_, i64>(0), 6);
}

#[tokio::test]
async fn cancelling_a_held_statement_cancels_its_request() {
    let stack = StackBuilder::new().start().await;
    let (agent, mut notices) = stack.agent().await;
    let cancel = agent.cancel_token();
    let held = tokio::spawn(async move {
        let r = agent.simple_query("DELETE FROM orders").await;
        (agent, r)
    });
    let id = held_request(&mut notices).await;
    cancel
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel sent");
    let (agent, r) = released(held).await;
    let err = r.expect_err("cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM orders"), "10");
    // The request is cancelled in the control plane; nobody can approve it now.
    cancelled(&stack, &id).await;
    let err = stack
        .decide("alice", vote(&id, proto::Decision::Approve, "late"))
        .await
        .expect_err("too late");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    agent.simple_query("SELECT 1").await.expect("the session goes on");
}

#[tokio::test]
async fn cancelling_a_running_query_reaches_postgres_even_through_another_proxy() {
    use futures::StreamExt;
    let stack = StackBuilder::new().proxies(2).start().await;
    let other_proxy = stack.proxies[1];
    // Someone listening on NATS, as anyone with access to it could.
    let nats = stack.log.client().clone();
    let mut overheard = nats
        .subscribe(format!("{}.*", airlock_proxy::cancel::CANCEL_SUBJECT))
        .await
        .expect("subscribe");
    let (agent, _) = stack.agent().await;
    let cancel = agent.cancel_token();
    let started = std::time::Instant::now();
    let running = tokio::spawn(async move {
        let result = agent.simple_query("SELECT pg_sleep(30)").await;
        (agent, result)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The cancel lands on a proxy that does not hold the session.
    let socket = tokio::net::TcpStream::connect(other_proxy)
        .await
        .expect("connect proxy-2");
    cancel
        .cancel_query_raw(socket, tokio_postgres::NoTls)
        .await
        .expect("cancel sent");
    let (agent, result) = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("cancelled in time")
        .expect("task");
    let err = result.expect_err("cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // What went over NATS is sealed (not the old 8 bytes of process id
    // and secret: the unit tests check the secret is not in it), and sent
    // again it cancels nothing.
    let message = tokio::time::timeout(Duration::from_secs(5), overheard.next())
        .await
        .expect("the cancel went over NATS")
        .expect("a message");
    assert_eq!(message.payload.len(), 61, "a sealed cancel");
    // Seen twice in full runs under load: the second statement cancelled
    // though the replay should be refused. Not understood yet; a settle
    // time tells a late first cancel apart from an accepted replay (the
    // first is done once PostgreSQL has answered it).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let running = tokio::spawn(async move { agent.simple_query("SELECT pg_sleep(1.5)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.publish(message.subject.clone(), message.payload.clone())
        .await
        .expect("replay");
    nats.flush().await.expect("flush");
    let rows = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("finished")
        .expect("task")
        .expect("a replayed cancel cancels nothing");
    assert!(!rows.is_empty());
}

#[tokio::test]
async fn a_reviewer_kills_a_session_and_its_running_query_stops() {
    let stack = StackBuilder::new().start().await;
    let (agent, _) = stack.agent().await;
    let started = std::time::Instant::now();
    let running = tokio::spawn(async move { agent.simple_query("SELECT pg_sleep(30)").await });
    // Find the session and kill it.
    let session_id = eventually(
        "the session to be known to the control plane",
        Duration::from_secs(5),
        || async { stack.live.read(|s| s.sessions.keys().next().cloned()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The agent's own token cannot kill; a reviewer can.
    let err = stack
        .reviewer()
        .await
        .kill_session(authed(
            AGENT_TOKEN,
            proto::KillSessionRequest {
                session_id: session_id.clone(),
                reason: "no".into(),
            },
        ))
        .await
        .expect_err("an app cannot kill");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    stack
        .reviewer()
        .await
        .kill_session(authed(
            "alice",
            proto::KillSessionRequest {
                session_id: session_id.clone(),
                reason: "runaway query".into(),
            },
        ))
        .await
        .expect("alice kills");
    let err = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("ended in time")
        .expect("task")
        .expect_err("killed");
    let db = err.as_db_error().expect("a FATAL from the proxy");
    assert_eq!(db.code(), &SqlState::ADMIN_SHUTDOWN);
    assert!(
        db.message().contains("Alice") && db.message().contains("runaway query"),
        "{}",
        db.message()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The upstream query was cancelled, not left running.
    eventually("pg_sleep to stop upstream", Duration::from_secs(5), || async {
        let active = stack.pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'",
        );
        satisfies(active, |n| n == "0")
    })
    .await;
    // The log still says what was running when the session was ended.
    let unfinished = eventually(
        "the statement running at the kill in the session record",
        Duration::from_secs(5),
        || async {
            let view = session_record(&stack, &session_id).await;
            view.timeline
                .iter()
                .find_map(|e| match e.event.as_ref()?.body.as_ref()? {
                    proto::event::Body::StatementExecuted(x)
                        if x.statement
                            .as_ref()
                            .is_some_and(|s| s.text == "SELECT pg_sleep(30)") =>
                    {
                        Some(x.clone())
                    }
                    _ => None,
                })
                .ok_or_else(|| timeline_kinds(&view))
        },
    )
    .await;
    assert!(unfinished.unfinished, "{unfinished:?}");
    assert!(
        unfinished
            .error_message
            .contains("the session ended before PostgreSQL finished answering: killed by")
            && unfinished.error_message.contains("runaway query"),
        "{}",
        unfinished.error_message
    );
}

#[tokio::test]
async fn shutting_down_refuses_held_statements_then_ends_sessions() {
    use airlock_proxy::session::Phase;
    let stack = StackBuilder::new().start().await;
    let (idle, _) = stack.agent().await;
    let (agent, mut notices) = stack.agent().await;
    let held = tokio::spawn(async move { agent.simple_query("DELETE FROM orders").await });
    let id = held_request(&mut notices).await;

    stack.shutdown_phase(Phase::Draining);
    let err = released(held).await.expect_err("refused");
    let msg = err
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(
        msg.contains("shutting down") && msg.contains("nothing was run"),
        "{msg}"
    );
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM orders"), "10");
    // Nobody can approve it any more.
    cancelled(&stack, &id).await;

    // Draining: open sessions go on; new connections are not accepted.
    idle.simple_query("SELECT 1")
        .await
        .expect("an open session goes on while draining");
    eventually(
        "new connections to be refused while draining",
        Duration::from_secs(5),
        || async { tokio::net::TcpStream::connect(stack.proxy()).await.is_err() },
    )
    .await;

    // Stopping: the rest end with a clear FATAL.
    stack.shutdown_phase(Phase::Stopping);
    eventually(
        "sessions to end when the proxy stops",
        Duration::from_secs(5),
        || async { idle.simple_query("SELECT 1").await.is_err() },
    )
    .await;
}

#[tokio::test]
async fn a_held_statement_in_a_transaction_and_in_a_pipeline_behaves_as_postgres_would() {
    let stack = StackBuilder::new().start().await;
    let (agent, mut notices) = stack.agent().await;
    let agent = std::sync::Arc::new(agent);

    // In a transaction that inserted `insert`, a DELETE of `delete` is
    // held: its request, and the task that waits for its outcome.
    let mut held_in_a_transaction = async |insert: i32, delete: i32| {
        agent.simple_query("BEGIN").await.expect("begin");
        agent
            .simple_query(&format!("INSERT INTO orders (id) VALUES ({insert})"))
            .await
            .expect("insert");
        let a = agent.clone();
        let sql = format!("DELETE FROM orders WHERE id = {delete}");
        let held = tokio::spawn(async move { a.simple_query(&sql).await });
        (held_request(&mut notices).await, held)
    };

    // Inside a transaction, approved: everything commits together.
    let (id, held) = held_in_a_transaction(100, 1).await;
    stack
        .decide("alice", vote(&id, proto::Decision::Approve, "ok"))
        .await
        .expect("approve");
    held.await.expect("task").expect("delete ran");
    agent.simple_query("COMMIT").await.expect("commit");
    assert_eq!(
        stack
            .pg
            .psql("shop", "SELECT count(*) FROM orders WHERE id IN (1, 100)"),
        "1",
        "id 1 gone, id 100 in"
    );

    // Inside a transaction, denied: the transaction is aborted, as if
    // PostgreSQL had refused the statement; COMMIT rolls back.
    let (id, held) = held_in_a_transaction(101, 2).await;
    stack
        .decide("bob", vote(&id, proto::Decision::Deny, "no"))
        .await
        .expect("deny");
    held.await.expect("task").expect_err("denied");
    let err = agent
        .simple_query("SELECT 1")
        .await
        .expect_err("aborted transaction");
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    agent.simple_query("COMMIT").await.expect("commit (rolls back)");
    assert_eq!(
        stack
            .pg
            .psql("shop", "SELECT count(*) FROM orders WHERE id IN (2, 101)"),
        "1",
        "id 2 still there, id 101 rolled back"
    );

    // Pipelined: a read, a held DELETE and another read sent together (the
    // statements prepared first, so each is one Bind/Execute on the wire, in
    // this order); the answers come back in order once the DELETE is
    // approved.
    let count_all = agent
        .prepare("SELECT count(*) FROM orders")
        .await
        .expect("prepare");
    let delete = agent
        .prepare("DELETE FROM orders WHERE id = $1")
        .await
        .expect("prepare");
    let (a, b, c) = (agent.clone(), agent.clone(), agent.clone());
    let (s1, s2, s3) = (count_all.clone(), delete, count_all);
    let pipeline = tokio::spawn(async move {
        futures::future::join3(a.query(&s1, &[]), b.execute(&s2, &[&3i32]), c.query(&s3, &[])).await
    });
    let id = held_request(&mut notices).await;
    stack
        .decide("alice", vote(&id, proto::Decision::Approve, "ok"))
        .await
        .expect("approve");
    let (before, deleted, after) = tokio::time::timeout(Duration::from_secs(10), pipeline)
        .await
        .expect("pipeline done")
        .expect("task");
    let count =
        |r: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>| r.expect("read")[0].get::<_, i64>(0);
    assert_eq!(deleted.expect("delete"), 1);
    assert_eq!(
        count(before) - count(after),
        1,
        "the reads around it see before and after"
    );
}

/// A statement that needs approval but is too large to put before a
/// reviewer (its ApprovalRequested would not fit in one event of the log) is
/// refused saying so, not as "log unavailable", and the session goes on.
#[tokio::test]
async fn a_held_statement_too_large_for_the_log_is_refused_saying_so() {
    let stack = StackBuilder::new().start().await;
    let (agent, _) = stack.agent().await;
    let filler = "x".repeat(1024 * 1024 - 64);
    let sql = format!("DELETE FROM orders WHERE note = '{filler}'");
    let err = agent.simple_query(&sql).await.expect_err("refused");
    let db = err.as_db_error().expect("an error from the proxy");
    assert_eq!(db.code().code(), "54000", "{}", db.message());
    assert!(
        db.message().contains("too large to put before a reviewer")
            && db.message().contains("nothing was run"),
        "{}",
        db.message()
    );
    agent.simple_query("SELECT 1").await.expect("the session goes on");
}
