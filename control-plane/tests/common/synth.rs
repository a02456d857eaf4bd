//! A realistic log written fast: sessions as proxies record them (opened,
//! a read, a held DELETE approved by a reviewer and run, a refused DROP,
//! closed), each on its own hash chains, many sessions at once. Shared by
//! the control plane's tests and its log benchmark.

use std::time::{Duration, SystemTime};

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{ChainWriter, EventLog, RequestId, SessionId, new_event, signing, subjects};
use futures::StreamExt;

/// Events written per session.
pub const EVENTS_PER_SESSION: u64 = 9;

pub fn person(subject: &str, groups: &[&str], kind: proto::identity::Kind) -> proto::Identity {
    proto::Identity {
        subject: subject.into(),
        display_name: format!("{subject} (test)"),
        kind: kind as i32,
        groups: groups
            .iter()
            .map(|g| proto::Group {
                id: (*g).into(),
                name: (*g).into(),
            })
            .collect(),
        ..Default::default()
    }
}

fn statement(sql: &str) -> proto::Statement {
    use sha2::Digest;
    proto::Statement {
        text: sql.into(),
        sha256: sha2::Sha256::digest(sql.as_bytes()).to_vec(),
        ..Default::default()
    }
}

fn verdict(action: proto::verdict::Action) -> proto::Verdict {
    proto::Verdict {
        action: action as i32,
        policy: "agents".into(),
        rule_index: 1,
        ..Default::default()
    }
}

/// Writes one session's events; returns its id.
#[allow(dead_code)]
pub async fn write_session(log: &EventLog, n: u64) -> SessionId {
    write_session_as(log, log, n).await
}

/// Writes one session's events, the proxy's through `proxy` and the
/// decisions through `control` (two handles signing with their own keys);
/// returns its id.
pub async fn write_session_as(proxy: &EventLog, control: &EventLog, n: u64) -> SessionId {
    use proto::identity::Kind;
    let source = proto::Source {
        kind: proto::source::Kind::Proxy as i32,
        id: "synth-proxy".into(),
        ..Default::default()
    };
    let session = SessionId::generate();
    let request = RequestId::generate();
    let agent = person(&format!("agent-{}", n % 50), &["agents"], Kind::App);
    let reviewer = person(&format!("reviewer-{}", n % 7), &["reviewers"], Kind::User);
    let mut s = ChainWriter::new_chain(subjects::session(&session));
    let mut r = ChainWriter::new_chain(subjects::request(&request));
    let on_session = |body: Body| {
        let mut e = new_event(&source, body);
        e.session_id = session.to_string();
        e
    };
    let on_request = |body: Body| {
        let mut e = new_event(&source, body);
        e.session_id = session.to_string();
        e.request_id = request.to_string();
        e
    };
    let delete = statement(&format!("DELETE FROM orders WHERE id = {n}"));
    let steps: Vec<(bool, Body)> = vec![
        (
            true,
            Body::SessionOpened(proto::SessionOpened {
                identity: Some(agent.clone()),
                proxy_id: "synth-proxy".into(),
                record: true,
                ..Default::default()
            }),
        ),
        (
            true,
            Body::StatementExecuted(proto::StatementExecuted {
                statement: Some(statement(&format!("SELECT * FROM orders WHERE id = {n}"))),
                verdict: Some(verdict(proto::verdict::Action::Allow)),
                command_tag: "SELECT 1".into(),
                rows: 1,
                ..Default::default()
            }),
        ),
        (
            true,
            // A busy stretch: three statements recorded together.
            Body::StatementsExecuted(proto::StatementsExecuted {
                statements: (0..3)
                    .map(|i| proto::RecordedStatement {
                        id: airlock_eventlog::EventId::generate().to_string(),
                        time: Some(SystemTime::now().into()),
                        statement: Some(proto::StatementExecuted {
                            statement: Some(statement(&format!("SELECT {i} FROM orders WHERE id = {n}"))),
                            verdict: Some(verdict(proto::verdict::Action::Allow)),
                            command_tag: "SELECT 1".into(),
                            rows: 1,
                            ..Default::default()
                        }),
                    })
                    .collect(),
            }),
        ),
        (
            false,
            Body::ApprovalRequested(proto::ApprovalRequested {
                identity: Some(agent.clone()),
                statement: Some(delete.clone()),
                approvals_required: 1,
                reviewer_groups: vec![proto::Group {
                    id: "reviewers".into(),
                    name: "reviewers".into(),
                }],
                deadline: Some((SystemTime::now() + Duration::from_secs(3600)).into()),
                ..Default::default()
            }),
        ),
        (
            false,
            Body::ApprovalVoted(proto::ApprovalVoted {
                reviewer: Some(reviewer.clone()),
                decision: proto::Decision::Approve as i32,
                reason: "checked the ticket".into(),
                statement_sha256: delete.sha256.clone(),
                approvals: 1,
                approvals_required: 1,
                max_rows: vec![],
                scope: None,
                break_glass: false,
                slack: None,
                relayed_by: None,
            }),
        ),
        (false, Body::ApprovalGranted(proto::ApprovalGranted::default())),
        (
            true,
            Body::StatementExecuted(proto::StatementExecuted {
                statement: Some(delete.clone()),
                verdict: Some(verdict(proto::verdict::Action::RequireApproval)),
                request_id: request.to_string(),
                command_tag: "DELETE 1".into(),
                rows: 1,
                ..Default::default()
            }),
        ),
        (
            true,
            Body::StatementRefused(proto::StatementRefused {
                statement: Some(statement("DROP TABLE orders")),
                verdict: Some(verdict(proto::verdict::Action::Deny)),
                cause: proto::statement_refused::Cause::Policy as i32,
                sqlstate: "42501".into(),
                ..Default::default()
            }),
        ),
        (true, Body::SessionClosed(proto::SessionClosed::default())),
    ];
    for (on_session_chain, body) in steps {
        let result = if on_session_chain {
            s.append(proxy, on_session(body)).await
        } else if signing::writer_role(&body) == signing::Role::Control {
            r.append(control, on_request(body)).await
        } else {
            r.append(proxy, on_request(body)).await
        };
        result.expect("append a synthetic event");
    }
    session
}

/// Writes `sessions` sessions, `concurrency` at a time. Returns their ids.
#[allow(dead_code)]
pub async fn write_sessions(log: &EventLog, sessions: u64, concurrency: usize) -> Vec<SessionId> {
    write_sessions_as(log, log, sessions, concurrency).await
}

/// [`write_sessions`] with the proxy's and the control plane's events
/// appended through their own handles ([`write_session_as`]). Used by the
/// log benchmark, not by every test that includes this file.
#[allow(dead_code)]
pub async fn write_sessions_as(
    proxy: &EventLog,
    control: &EventLog,
    sessions: u64,
    concurrency: usize,
) -> Vec<SessionId> {
    futures::stream::iter(0..sessions)
        .map(|n| write_session_as(proxy, control, n))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}
