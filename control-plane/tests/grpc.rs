//! The control plane against a real nats-server: reviewers decide over
//! gRPC, proxies receive decisions on Attach, and two replicas never both
//! decide one request. Who sees what: reviewers only their groups' requests
//! and sessions, auditors everything and decide nothing, a proxy only what
//! it filed.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use airlock_control::grpc::{AttachAuth, BoxFuture, Control, ReviewerAuth};
use airlock_control::live::Live;
use airlock_control::projection::Projection;
use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{EventLog, NatsSettings, ReadFilter, RequestId, SessionId, new_event, subjects};
use airlock_testkit::{NatsServer, eventually, satisfies};
use futures::StreamExt;
use proto::proxy_service_client::ProxyServiceClient;
use proto::reviewer_service_client::ReviewerServiceClient;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const REVIEWERS: &str = "grp-reviewers";
const FINANCE: &str = "grp-finance-reviewers";
const AUDITORS: &str = "grp-auditors";
const AGENTS: &str = "grp-agents";

struct Tokens(HashMap<&'static str, proto::Identity>);

impl ReviewerAuth for Tokens {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<proto::Identity, String>> {
        Box::pin(async move { self.0.get(token).cloned().ok_or_else(|| "unknown key".to_owned()) })
    }
}

fn identity(subject: &str, kind: proto::identity::Kind, groups: &[&str]) -> proto::Identity {
    proto::Identity {
        subject: subject.into(),
        display_name: subject.into(),
        kind: kind as i32,
        groups: groups
            .iter()
            .map(|g| proto::Group {
                id: (*g).into(),
                name: String::new(),
            })
            .collect(),
        ..Default::default()
    }
}

fn tokens() -> Tokens {
    use proto::identity::Kind;
    Tokens(HashMap::from([
        ("alice", identity("alice", Kind::User, &[REVIEWERS])),
        ("bob", identity("bob", Kind::User, &[REVIEWERS])),
        ("fiona", identity("fiona", Kind::User, &[FINANCE])),
        ("audrey", identity("audrey", Kind::User, &[AUDITORS])),
        ("agent-9", identity("agent-9", Kind::App, &[AGENTS])),
        ("erin", identity("erin", Kind::User, &[AGENTS])),
        ("agent-7", identity("agent-7", Kind::App, &[AGENTS, REVIEWERS])),
    ]))
}

async fn log(nats: &NatsServer) -> EventLog {
    let log = EventLog::connect(NatsSettings::new(nats.url()))
        .await
        .expect("connect");
    log.ensure_stream().await.expect("stream");
    log
}

/// Starts one replica; returns its gRPC address.
async fn replica(nats: &NatsServer, id: &str) -> (String, Arc<Live>, EventLog) {
    replica_with(nats, id, AttachAuth::InsecureLoopback, None).await
}

/// Starts one replica authenticating proxies with `attach`, over TLS when
/// `tls` is given (the address is then `https://localhost:<port>`).
async fn replica_with(
    nats: &NatsServer,
    id: &str,
    attach: AttachAuth,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> (String, Arc<Live>, EventLog) {
    let log = log(nats).await;
    let live = Live::spawn(log.clone(), Projection::new()).await;
    assert!(live.wait_ready(Duration::from_secs(10)).await);
    let source = proto::Source {
        kind: proto::source::Kind::Control as i32,
        id: id.into(),
        ..Default::default()
    };
    let presence = airlock_control::presence::Presence::new(Duration::from_secs(30));
    let control = Control {
        live: live.clone(),
        log: log.clone(),
        auth: Arc::new(tokens()),
        source: source.clone(),
        kill_groups: vec![REVIEWERS.into(), FINANCE.into()],
        auditor_groups: vec![AUDITORS.into()],
        attach,
        presence: presence.clone(),
        floor_acrs: Vec::new(),
        slack: None,
    };
    tokio::spawn(airlock_control::presence::run(
        presence.clone(),
        log.clone(),
        id.into(),
    ));
    tokio::spawn(airlock_control::act::reconcile_forever(
        live.clone(),
        log.clone(),
        source,
        Duration::from_millis(200),
        presence,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut server = tonic::transport::Server::builder();
    let addr = match tls {
        Some(tls) => {
            server = server.tls_config(tls).expect("TLS");
            format!("https://localhost:{port}")
        }
        None => format!("http://127.0.0.1:{port}"),
    };
    tokio::spawn(
        server
            .add_service(proto::reviewer_service_server::ReviewerServiceServer::new(
                control.clone(),
            ))
            .add_service(proto::proxy_service_server::ProxyServiceServer::new(
                control.clone(),
            ))
            .add_service(proto::audit_service_server::AuditServiceServer::new(control))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, live, log)
}

/// Files a held DELETE as proxy-1 would.
async fn file_request(log: &EventLog, required: u32, deadline: Duration) -> (RequestId, SessionId) {
    file_request_for(log, required, deadline, REVIEWERS).await
}

/// Files a held DELETE reviewed by `group`, as proxy-1 would.
async fn file_request_for(
    log: &EventLog,
    required: u32,
    deadline: Duration,
    group: &str,
) -> (RequestId, SessionId) {
    let session = SessionId::generate();
    let request = file_request_in(log, &session, group, "proxy-1", required, deadline).await;
    (request, session)
}

/// Files a held DELETE in `session`, reviewed by `group`, filed by proxy
/// `proxy`, needing `required` approvals.
async fn file_request_in(
    log: &EventLog,
    session: &SessionId,
    group: &str,
    proxy: &str,
    required: u32,
    deadline: Duration,
) -> RequestId {
    let request = RequestId::generate();
    let mut e = new_event(
        &proto::Source::default(),
        Body::ApprovalRequested(proto::ApprovalRequested {
            identity: Some(identity("agent-7", proto::identity::Kind::App, &[AGENTS])),
            statement: Some(proto::Statement {
                text: "DELETE FROM orders WHERE id = 7".into(),
                sha256: vec![42; 32],
                ..Default::default()
            }),
            approvals_required: required,
            reviewer_groups: vec![proto::Group {
                id: group.into(),
                name: "db-reviewers".into(),
            }],
            deadline: Some((SystemTime::now() + deadline).into()),
            proxy_id: proxy.into(),
            ..Default::default()
        }),
    );
    e.request_id = request.to_string();
    e.session_id = session.to_string();
    log.append_next(&subjects::request(&request), e)
        .await
        .expect("file request");
    request
}

/// Opens a session on proxy `proxy`, as it would, and waits until `live`
/// has folded it.
async fn open_session(log: &EventLog, live: &Live, proxy: &str) -> SessionId {
    let session = SessionId::generate();
    let mut opened = new_event(
        &proto::Source::default(),
        Body::SessionOpened(proto::SessionOpened {
            identity: Some(identity("agent-7", proto::identity::Kind::App, &[AGENTS])),
            proxy_id: proxy.into(),
            ..Default::default()
        }),
    );
    opened.session_id = session.to_string();
    let (stored, _) = log
        .append_next(&subjects::session(&session), opened)
        .await
        .expect("opened");
    assert!(live.wait_for(stored.sequence, Duration::from_secs(5)).await);
    session
}

/// Waits until `live` has folded everything in the log.
async fn caught_up(log: &EventLog, live: &Live) {
    let last = log.last_sequence().await.expect("last");
    assert!(live.wait_for(last, Duration::from_secs(5)).await);
}

fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    r
}

async fn decide(
    client: &mut ReviewerServiceClient<Channel>,
    token: &str,
    request: &RequestId,
    decision: proto::Decision,
) -> Result<proto::DecideResponse, tonic::Status> {
    client
        .decide(authed(
            token,
            proto::DecideRequest {
                request_id: request.to_string(),
                decision: decision as i32,
                reason: format!("{token} looked"),
                statement_sha256: vec![],
                max_rows: vec![],
                scope: None,
                break_glass: false,
                slack: None,
            },
        ))
        .await
        .map(|r| r.into_inner())
}

/// The refusal's code, read as any gRPC client reads it: the reason of the
/// `google.rpc.ErrorInfo` in the status details, in Airlock's domain.
fn error_code(s: &tonic::Status) -> String {
    let details = s.get_error_details();
    let Some(info) = details.error_info() else {
        return String::new();
    };
    assert_eq!(info.domain, "airlock", "{s:?}");
    info.reason.clone()
}

/// The kinds of `request`'s events: its own subject and its decision
/// subject, in stream order.
async fn outcomes(log: &EventLog, request: &RequestId) -> Vec<&'static str> {
    let stream = log
        .read(0, ReadFilter::subjects(subjects::lifecycle(request)))
        .await
        .expect("read");
    futures::pin_mut!(stream);
    let mut kinds = Vec::new();
    while let Some(e) = stream.next().await {
        kinds.push(airlock_eventlog::body_kind(
            e.expect("event").event.body.as_ref().expect("body"),
        ));
    }
    kinds
}

#[tokio::test]
async fn a_reviewer_approves_and_the_holding_proxy_is_told() {
    let nats = NatsServer::start();
    let (addr, live, log) = replica(&nats, "replica-1").await;
    let (request, session) = file_request(&log, 1, Duration::from_secs(600)).await;

    // The proxy holding it attaches and announces it.
    let mut proxy = ProxyServiceClient::connect(addr.clone())
        .await
        .expect("proxy connects");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(proto::ProxyMessage {
        message: Some(proto::proxy_message::Message::Hello(proto::ProxyHello {
            proxy_id: "proxy-1".into(),
            held: vec![proto::Held {
                request_id: request.to_string(),
                session_id: session.to_string(),
                statement_sha256: vec![42; 32],
            }],
            ..Default::default()
        })),
    })
    .await
    .expect("hello");
    let mut inbound = proxy
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("attach")
        .into_inner();
    let welcome = inbound.next().await.expect("welcome").expect("ok");
    assert!(matches!(
        welcome.message,
        Some(proto::control_message::Message::Welcome(_))
    ));

    let mut reviewer = ReviewerServiceClient::connect(addr)
        .await
        .expect("reviewer connects");
    assert!(live.wait_for(1, Duration::from_secs(5)).await);
    let pending = reviewer
        .list_requests(authed(
            "alice",
            proto::ListRequestsRequest {
                states: vec![proto::RequestState::Pending as i32],
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(pending.requests.len(), 1);
    // Records are for reviewers: someone outside the reviewer groups cannot
    // even list them.
    let err = reviewer
        .list_requests(authed("erin", proto::ListRequestsRequest::default()))
        .await
        .expect_err("not a reviewer");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(pending.requests[0].request_id, request.to_string());

    // Refusals, each with its reason.
    for (token, code) in [("agent-7", "app_identity"), ("erin", "not_a_reviewer")] {
        let err = decide(&mut reviewer, token, &request, proto::Decision::Approve)
            .await
            .expect_err("refused");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{token}");
        assert_eq!(error_code(&err), code, "{token}: {}", err.message());
    }
    let err = decide(&mut reviewer, "forged", &request, proto::Decision::Approve)
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let done = decide(&mut reviewer, "alice", &request, proto::Decision::Approve)
        .await
        .expect("alice approves");
    assert_eq!(
        done.request.expect("view").state,
        proto::RequestState::Granted as i32
    );

    // The proxy hears of it.
    let notice = loop {
        let m = tokio::time::timeout(Duration::from_secs(5), inbound.next())
            .await
            .expect("a decision arrives")
            .expect("stream open")
            .expect("ok");
        if let Some(proto::control_message::Message::Decision(d)) = m.message {
            break d;
        }
    };
    assert_eq!(notice.request_id, request.to_string());
    assert_eq!(notice.outcome, proto::decision_notice::Outcome::Granted as i32);
    assert_eq!(notice.statement_sha256, vec![42; 32]);
    assert_eq!(
        outcomes(&log, &request).await,
        vec!["approval_requested", "approval_voted", "approval_granted"]
    );
}

#[tokio::test]
async fn a_vote_by_someone_outside_the_reviewer_groups_carries_not_a_reviewer_in_error_info() {
    let nats = NatsServer::start();
    let (addr, _live, log) = replica(&nats, "replica-1").await;
    let (request, _) = file_request(&log, 1, Duration::from_secs(600)).await;
    let mut reviewer = ReviewerServiceClient::connect(addr).await.expect("connect");

    let err = decide(&mut reviewer, "erin", &request, proto::Decision::Approve)
        .await
        .expect_err("erin is not a reviewer");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let details = err.get_error_details();
    let info = details.error_info().expect("an ErrorInfo in the status details");
    assert_eq!(info.reason, "not_a_reviewer");
    assert_eq!(info.domain, "airlock");
    assert_eq!(
        airlock_proto::ErrorCode::of(&err),
        Some(airlock_proto::ErrorCode::NotAReviewer)
    );
    // The refused vote is not in the log.
    assert_eq!(outcomes(&log, &request).await, vec!["approval_requested"]);
}

#[tokio::test]
async fn two_replicas_never_both_decide_one_request() {
    let nats = NatsServer::start();
    let (addr1, _, log) = replica(&nats, "replica-1").await;
    let (addr2, _, _) = replica(&nats, "replica-2").await;
    for _ in 0..5 {
        let (request, _) = file_request(&log, 1, Duration::from_secs(600)).await;
        let mut c1 = ReviewerServiceClient::connect(addr1.clone()).await.expect("c1");
        let mut c2 = ReviewerServiceClient::connect(addr2.clone()).await.expect("c2");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (a, b) = tokio::join!(
            decide(&mut c1, "alice", &request, proto::Decision::Approve),
            decide(&mut c2, "bob", &request, proto::Decision::Deny),
        );
        assert!(a.is_ok() != b.is_ok(), "exactly one vote wins: {a:?} / {b:?}");
        let loser = a.err().or(b.err()).expect("one refusal");
        assert_eq!(error_code(&loser), "already_decided", "{}", loser.message());
        let kinds = outcomes(&log, &request).await;
        assert_eq!(kinds.len(), 3, "one vote and one outcome: {kinds:?}");
    }
}

#[tokio::test]
async fn an_unanswered_request_expires_exactly_once_with_two_replicas() {
    let nats = NatsServer::start();
    let (_, live1, log) = replica(&nats, "replica-1").await;
    let (_, _live2, _) = replica(&nats, "replica-2").await;
    let (request, _) = file_request(&log, 1, Duration::from_millis(300)).await;
    eventually("the request to expire", Duration::from_secs(10), || async {
        let state = live1.read(|s| s.request(request.as_str()).map(|r| r.state()));
        satisfies(state, |s| *s == Some(proto::RequestState::Expired))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await; // more reconcile rounds
    assert_eq!(
        outcomes(&log, &request).await,
        vec!["approval_requested", "approval_expired"]
    );
}

/// Attaches as `proxy_id` holding `sessions`; returns the inbound stream
/// after the Welcome.
async fn attach(
    addr: &str,
    proxy_id: &str,
    sessions: &[&SessionId],
) -> (
    tonic::Streaming<proto::ControlMessage>,
    tokio::sync::mpsc::Sender<proto::ProxyMessage>,
) {
    let mut proxy = ProxyServiceClient::connect(addr.to_owned())
        .await
        .expect("proxy connects");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(proto::ProxyMessage {
        message: Some(proto::proxy_message::Message::Hello(proto::ProxyHello {
            proxy_id: proxy_id.into(),
            session_ids: sessions.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })),
    })
    .await
    .expect("hello");
    let mut inbound = proxy
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("attach")
        .into_inner();
    let welcome = inbound.next().await.expect("welcome").expect("ok");
    assert!(matches!(
        welcome.message,
        Some(proto::control_message::Message::Welcome(_))
    ));
    (inbound, tx)
}

/// The next kill order on `inbound` within `wait`, skipping heartbeats.
async fn next_kill(
    inbound: &mut tonic::Streaming<proto::ControlMessage>,
    wait: Duration,
) -> Option<proto::KillOrder> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, inbound.next()).await {
            Ok(Some(Ok(proto::ControlMessage {
                message: Some(proto::control_message::Message::Kill(k)),
            }))) => return Some(k),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

#[tokio::test]
async fn a_kill_ordered_while_the_proxy_was_away_reaches_it_when_it_attaches() {
    let nats = NatsServer::start();
    let (addr, live, log) = replica(&nats, "replica-1").await;
    let session = SessionId::generate();
    let mut opened = new_event(
        &proto::Source::default(),
        Body::SessionOpened(proto::SessionOpened {
            identity: Some(identity("agent-7", proto::identity::Kind::App, &[AGENTS])),
            proxy_id: "proxy-1".into(),
            ..Default::default()
        }),
    );
    opened.session_id = session.to_string();
    let (stored, _) = log
        .append_next(&subjects::session(&session), opened)
        .await
        .expect("opened");
    assert!(live.wait_for(stored.sequence, Duration::from_secs(5)).await);

    // No proxy attached: the reviewer orders the kill anyway.
    let mut reviewer = ReviewerServiceClient::connect(addr.clone())
        .await
        .expect("reviewer");
    reviewer
        .kill_session(authed(
            "alice",
            proto::KillSessionRequest {
                session_id: session.to_string(),
                reason: "runaway agent".into(),
            },
        ))
        .await
        .expect("kill ordered");

    // The proxy comes back holding the session: the order is delivered, once.
    let (mut inbound, _tx) = attach(&addr, "proxy-1", &[&session]).await;
    let kill = next_kill(&mut inbound, Duration::from_secs(5))
        .await
        .expect("the pending kill arrives");
    assert_eq!(kill.session_id, session.to_string());
    assert_eq!(kill.reason, "runaway agent");
    assert_eq!(kill.requested_by.expect("who").subject, "alice");
    assert!(
        next_kill(&mut inbound, Duration::from_millis(500))
            .await
            .is_none(),
        "sent once per stream"
    );

    // Once the session is closed, the order is moot: a new attach gets none.
    let mut closed = new_event(
        &proto::Source::default(),
        Body::SessionClosed(proto::SessionClosed::default()),
    );
    closed.session_id = session.to_string();
    let (stored, _) = log
        .append_next(&subjects::session(&session), closed)
        .await
        .expect("closed");
    assert!(live.wait_for(stored.sequence, Duration::from_secs(5)).await);
    let (mut again, _tx2) = attach(&addr, "proxy-1", &[&session]).await;
    assert!(next_kill(&mut again, Duration::from_millis(500)).await.is_none());
}

async fn subscribe(
    addr: &str,
    token: &str,
    request: proto::SubscribeRequest,
) -> Result<tonic::Streaming<proto::LogEvent>, tonic::Status> {
    let mut audit = proto::audit_service_client::AuditServiceClient::connect(addr.to_owned())
        .await
        .expect("audit connects");
    audit
        .subscribe(authed(token, request))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn the_audit_stream_resumes_from_a_sequence_without_gaps_or_duplicates() {
    use common::synth;
    let nats = NatsServer::start();
    let (addr, live, log) = replica(&nats, "replica-1").await;
    synth::write_sessions(&log, 5, 5).await;
    assert!(
        live.wait_for(5 * synth::EVENTS_PER_SESSION, Duration::from_secs(5))
            .await
    );

    // An integrator (an auditor) reads part of the log live, then goes away.
    let mut stream = subscribe(&addr, "audrey", proto::SubscribeRequest::default())
        .await
        .expect("subscribe");
    let mut seen = Vec::new();
    for _ in 0..17 {
        let e = stream.next().await.expect("open").expect("event");
        assert!(!e.raw.is_empty() && e.event.is_some());
        seen.push(e.sequence);
    }
    drop(stream);
    synth::write_sessions(&log, 3, 3).await;
    let end = 8 * synth::EVENTS_PER_SESSION;

    // It resumes after the last sequence it saw and follows the log live.
    let last = *seen.last().expect("seen");
    let mut stream = subscribe(
        &addr,
        "audrey",
        proto::SubscribeRequest {
            start_sequence: last + 1,
            ..Default::default()
        },
    )
    .await
    .expect("resume");
    while seen.last() != Some(&end) {
        let e = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the rest arrives")
            .expect("open")
            .expect("event");
        seen.push(e.sequence);
    }
    assert_eq!(seen, (1..=end).collect::<Vec<_>>(), "every event once, in order");
    // Live: an event stored now arrives on the open stream.
    synth::write_session(&log, 99).await;
    let next = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("live event")
        .expect("open")
        .expect("event");
    assert_eq!(next.sequence, end + 1);

    // Filtered by identity: one agent's sessions and requests, nothing else.
    let mut only = subscribe(
        &addr,
        "audrey",
        proto::SubscribeRequest {
            identity: "agent-1".into(),
            stop_at_end: true,
            ..Default::default()
        },
    )
    .await
    .expect("filtered");
    let mut kinds = Vec::new();
    let mut sessions = std::collections::HashSet::new();
    while let Some(e) = only.next().await {
        let e = e.expect("event").event.expect("body");
        sessions.insert(e.session_id.clone());
        kinds.push(airlock_eventlog::body_kind(e.body.as_ref().expect("body")));
    }
    // Sessions are numbered 0..5, then 0..3 again, then 99: agent-1 had two.
    assert_eq!(sessions.len(), 2, "the two sessions of agent-1");
    assert_eq!(kinds.len() as u64, 2 * synth::EVENTS_PER_SESSION, "{kinds:?}");
    assert_eq!(kinds.first(), Some(&"session_opened"));
    assert!(
        kinds.contains(&"approval_granted"),
        "its request's events too: {kinds:?}"
    );

    // A reviewer's own votes, by kind.
    let mut votes = subscribe(
        &addr,
        "audrey",
        proto::SubscribeRequest {
            identity: "reviewer-1".into(),
            kinds: vec!["approval_voted".into()],
            stop_at_end: true,
            ..Default::default()
        },
    )
    .await
    .expect("votes");
    let mut n = 0;
    while let Some(e) = votes.next().await {
        match e.expect("event").event.and_then(|e| e.body) {
            Some(Body::ApprovalVoted(v)) => assert_eq!(v.reviewer.expect("who").subject, "reviewer-1"),
            other => panic!("not a vote: {other:?}"),
        }
        n += 1;
    }
    assert_eq!(n, 3, "reviewer-1 voted on sessions 1, 1 and 99 (n % 7 == 1)");

    // The log is for auditors and reviewers only.
    let err = subscribe(&addr, "erin", proto::SubscribeRequest::default())
        .await
        .expect_err("not a reviewer");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(error_code(&err), "not_a_reviewer", "{}", err.message());
}

#[tokio::test]
async fn quorum_needs_two_different_people() {
    let nats = NatsServer::start();
    let (addr, _, log) = replica(&nats, "replica-1").await;
    let (request, _) = file_request(&log, 2, Duration::from_secs(600)).await;
    let mut c = ReviewerServiceClient::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first = decide(&mut c, "alice", &request, proto::Decision::Approve)
        .await
        .expect("alice approves");
    let view = first.request.expect("view");
    assert_eq!(
        view.state,
        proto::RequestState::Pending as i32,
        "one of two approvals"
    );
    assert_eq!(view.votes.len(), 1);
    let again = decide(&mut c, "alice", &request, proto::Decision::Approve)
        .await
        .expect_err("one vote per person");
    assert_eq!(error_code(&again), "already_voted", "{}", again.message());
    let second = decide(&mut c, "bob", &request, proto::Decision::Approve)
        .await
        .expect("bob approves");
    assert_eq!(
        second.request.expect("view").state,
        proto::RequestState::Granted as i32
    );
    assert_eq!(
        outcomes(&log, &request).await,
        vec![
            "approval_requested",
            "approval_voted",
            "approval_voted",
            "approval_granted"
        ]
    );
}

#[tokio::test]
async fn many_requests_raced_on_two_replicas_end_with_exactly_one_outcome_each() {
    let nats = NatsServer::start();
    let (addr1, _, log) = replica(&nats, "replica-1").await;
    let (addr2, live2, _) = replica(&nats, "replica-2").await;
    let mut filed = Vec::new();
    for i in 0..40 {
        // Every fourth needs two approvals: both votes must land, then one grant.
        let required = if i % 4 == 0 { 2 } else { 1 };
        filed.push((
            file_request(&log, required, Duration::from_secs(600)).await.0,
            required,
        ));
    }
    let last = log.last_sequence().await.expect("last");
    assert!(live2.wait_for(last, Duration::from_secs(10)).await);
    let c1 = ReviewerServiceClient::connect(addr1).await.expect("c1");
    let c2 = ReviewerServiceClient::connect(addr2).await.expect("c2");
    let races = filed.iter().map(|(request, _)| {
        let (mut c1, mut c2) = (c1.clone(), c2.clone());
        async move {
            tokio::join!(
                decide(&mut c1, "alice", request, proto::Decision::Approve),
                decide(&mut c2, "bob", request, proto::Decision::Approve),
            )
        }
    });
    let results = futures::future::join_all(races).await;
    for ((request, required), (a, b)) in filed.iter().zip(results) {
        let kinds = outcomes(&log, request).await;
        let grants = kinds.iter().filter(|k| **k == "approval_granted").count();
        let ends = kinds
            .iter()
            .filter(|k| k.starts_with("approval_") && !matches!(**k, "approval_requested" | "approval_voted"))
            .count();
        assert_eq!((grants, ends), (1, 1), "one outcome, a grant: {kinds:?}");
        let votes = kinds.iter().filter(|k| **k == "approval_voted").count();
        if *required == 2 {
            assert!(a.is_ok() && b.is_ok(), "both votes count: {a:?} / {b:?}");
            assert_eq!(votes, 2, "{kinds:?}");
        } else {
            assert!(a.is_ok() != b.is_ok(), "exactly one vote wins: {a:?} / {b:?}");
            let loser = a.err().or(b.err()).expect("a refusal");
            assert_eq!(error_code(&loser), "already_decided", "{}", loser.message());
            assert_eq!(votes, 1, "{kinds:?}");
        }
    }
}

#[tokio::test]
async fn reviewers_see_only_requests_their_groups_may_review() {
    let nats = NatsServer::start();
    let (addr, live, log) = replica(&nats, "replica-1").await;
    let mut c = ReviewerServiceClient::connect(addr).await.expect("connect");
    let mut watch = c
        .watch(authed("alice", proto::WatchRequest::default()))
        .await
        .expect("watch")
        .into_inner();
    let (theirs, _) = file_request_for(&log, 1, Duration::from_secs(600), "grp-finance-reviewers").await;
    let (ours, _) = file_request(&log, 1, Duration::from_secs(600)).await;
    let last = log.last_sequence().await.expect("last");
    assert!(live.wait_for(last, Duration::from_secs(5)).await);

    let listed = c
        .list_requests(authed("alice", proto::ListRequestsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<&str> = listed.requests.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids, vec![ours.as_str()], "another group's request is not listed");
    let err = c
        .get_request(authed(
            "alice",
            proto::GetRequestRequest {
                request_id: theirs.to_string(),
            },
        ))
        .await
        .expect_err("not hers to see");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(error_code(&err), "not_a_reviewer", "{}", err.message());
    let err = decide(&mut c, "alice", &theirs, proto::Decision::Approve)
        .await
        .expect_err("not hers to decide");
    assert_eq!(error_code(&err), "not_a_reviewer", "{}", err.message());
    // The live stream carries her request, never the other group's.
    let first = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("an event")
        .expect("open")
        .expect("ok");
    assert_eq!(first.request.expect("view").request_id, ours.to_string());
}

async fn get_session(
    client: &mut ReviewerServiceClient<Channel>,
    token: &str,
    session: &SessionId,
) -> Result<proto::SessionView, tonic::Status> {
    client
        .get_session(authed(
            token,
            proto::GetSessionRequest {
                session_id: session.to_string(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn kill(
    client: &mut ReviewerServiceClient<Channel>,
    token: &str,
    session: &SessionId,
) -> Result<proto::KillSessionResponse, tonic::Status> {
    client
        .kill_session(authed(
            token,
            proto::KillSessionRequest {
                session_id: session.to_string(),
                reason: format!("{token} ends it"),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn listed_sessions(client: &mut ReviewerServiceClient<Channel>, token: &str) -> Vec<String> {
    client
        .list_sessions(authed(token, proto::ListSessionsRequest::default()))
        .await
        .expect("list sessions")
        .into_inner()
        .sessions
        .into_iter()
        .map(|s| s.session_id)
        .collect()
}

/// The ids of the requests a session record shows, in its request list and
/// anywhere in its timeline.
fn requests_shown(view: &proto::SessionView) -> std::collections::BTreeSet<String> {
    let mut ids: std::collections::BTreeSet<String> =
        view.requests.iter().map(|r| r.request_id.clone()).collect();
    for e in view.timeline.iter().filter_map(|e| e.event.as_ref()) {
        ids.insert(e.request_id.clone());
        if let Some(Body::StatementExecuted(x)) = &e.body {
            ids.insert(x.request_id.clone());
        }
    }
    ids.remove("");
    ids
}

#[tokio::test]
async fn a_reviewer_of_another_group_can_neither_read_nor_kill_its_session() {
    let nats = NatsServer::start();
    let (addr, live, log) = replica(&nats, "replica-1").await;
    let finance = open_session(&log, &live, "proxy-1").await;
    let theirs = file_request_in(&log, &finance, FINANCE, "proxy-1", 1, Duration::from_secs(600)).await;
    // A session with a request for each group, and one that filed none.
    let mixed = open_session(&log, &live, "proxy-1").await;
    let ours = file_request_in(&log, &mixed, REVIEWERS, "proxy-1", 1, Duration::from_secs(600)).await;
    let hidden = file_request_in(&log, &mixed, FINANCE, "proxy-1", 1, Duration::from_secs(600)).await;
    let mut ran = new_event(
        &proto::Source::default(),
        Body::StatementExecuted(proto::StatementExecuted {
            statement: Some(proto::Statement {
                text: "DELETE FROM invoices WHERE id = 7".into(),
                ..Default::default()
            }),
            request_id: hidden.to_string(),
            ..Default::default()
        }),
    );
    ran.session_id = mixed.to_string();
    log.append_next(&subjects::session(&mixed), ran)
        .await
        .expect("statement");
    let quiet = open_session(&log, &live, "proxy-1").await;
    caught_up(&log, &live).await;
    let mut c = ReviewerServiceClient::connect(addr).await.expect("connect");

    // Alice reviews for REVIEWERS: the finance session is not hers to see
    // or end, and is not listed.
    let err = get_session(&mut c, "alice", &finance)
        .await
        .expect_err("not hers to see");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(error_code(&err), "not_a_reviewer", "{}", err.message());
    assert!(!err.message().contains("DELETE"), "{}", err.message());
    let err = kill(&mut c, "alice", &finance)
        .await
        .expect_err("not hers to end");
    assert_eq!(error_code(&err), "not_a_reviewer", "{}", err.message());
    assert!(
        live.read(|s| s.sessions[finance.as_str()].kill.is_none()),
        "no kill order in the log"
    );
    let listed = listed_sessions(&mut c, "alice").await;
    assert!(!listed.contains(&finance.to_string()), "{listed:?}");
    assert!(listed.contains(&mixed.to_string()) && listed.contains(&quiet.to_string()));

    // In the mixed session she sees her request, and nothing of the other.
    let view = get_session(&mut c, "alice", &mixed).await.expect("hers in part");
    assert_eq!(
        requests_shown(&view),
        [ours.to_string()].into_iter().collect(),
        "only her group's request"
    );
    assert!(
        !view
            .timeline
            .iter()
            .any(|e| format!("{:?}", e.event).contains("invoices")),
        "the statement run under the finance request is left out"
    );
    // Fiona reviews for FINANCE: she sees both of hers in full.
    let view = get_session(&mut c, "fiona", &mixed)
        .await
        .expect("fiona's in part");
    assert_eq!(requests_shown(&view), [hidden.to_string()].into_iter().collect());
    let view = get_session(&mut c, "fiona", &finance).await.expect("fiona's");
    assert_eq!(requests_shown(&view), [theirs.to_string()].into_iter().collect());
    // A session that filed no request is every reviewer's, no one else's.
    get_session(&mut c, "alice", &quiet)
        .await
        .expect("no group claims it");
    let err = get_session(&mut c, "erin", &quiet)
        .await
        .expect_err("not a reviewer");
    assert_eq!(error_code(&err), "not_a_reviewer", "{}", err.message());
    kill(&mut c, "alice", &quiet).await.expect("alice ends it");
    kill(&mut c, "fiona", &finance).await.expect("fiona ends hers");
    // Unknown sessions are not found, whoever asks.
    let err = get_session(&mut c, "alice", &SessionId::generate())
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn an_auditor_reads_everything_and_decides_nothing() {
    let nats = NatsServer::start();
    let (addr, live, log) = replica(&nats, "replica-1").await;
    let finance = open_session(&log, &live, "proxy-1").await;
    let theirs = file_request_in(&log, &finance, FINANCE, "proxy-1", 1, Duration::from_secs(600)).await;
    let (ours, _) = file_request(&log, 1, Duration::from_secs(600)).await;
    caught_up(&log, &live).await;
    let mut c = ReviewerServiceClient::connect(addr.clone())
        .await
        .expect("connect");

    let listed = c
        .list_requests(authed("audrey", proto::ListRequestsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    let mut ids: Vec<String> = listed.requests.into_iter().map(|r| r.request_id).collect();
    ids.sort();
    let mut both = vec![theirs.to_string(), ours.to_string()];
    both.sort();
    assert_eq!(ids, both, "every group's requests");
    c.get_request(authed(
        "audrey",
        proto::GetRequestRequest {
            request_id: theirs.to_string(),
        },
    ))
    .await
    .expect("any request");
    let view = get_session(&mut c, "audrey", &finance)
        .await
        .expect("any session");
    assert_eq!(requests_shown(&view), [theirs.to_string()].into_iter().collect());
    assert!(
        listed_sessions(&mut c, "audrey")
            .await
            .contains(&finance.to_string())
    );

    // Reading is all: no vote, no kill, nothing appended.
    for (request, what) in [(&theirs, "another group's"), (&ours, "any")] {
        let err = decide(&mut c, "audrey", request, proto::Decision::Approve)
            .await
            .expect_err("auditors do not vote");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{what}");
        assert_eq!(error_code(&err), "not_a_reviewer", "{what}: {}", err.message());
        assert!(err.message().contains("auditor"), "{}", err.message());
        assert_eq!(outcomes(&log, request).await, vec!["approval_requested"]);
    }
    let err = kill(&mut c, "audrey", &finance)
        .await
        .expect_err("auditors do not kill");
    assert_eq!(error_code(&err), "not_a_reviewer", "{}", err.message());
    caught_up(&log, &live).await;
    assert!(live.read(|s| s.sessions[finance.as_str()].kill.is_none()));

    // The whole log, whoever's it is.
    let mut all = subscribe(
        &addr,
        "audrey",
        proto::SubscribeRequest {
            stop_at_end: true,
            ..Default::default()
        },
    )
    .await
    .expect("auditors read the log");
    let mut n = 0;
    while let Some(e) = all.next().await {
        e.expect("event");
        n += 1;
    }
    assert_eq!(n, log.last_sequence().await.expect("last"));
}

/// Every event of the log `token` may read, to its end: (subject, kind).
async fn readable(addr: &str, token: &str) -> Result<Vec<(String, &'static str)>, tonic::Status> {
    let mut stream = subscribe(
        addr,
        token,
        proto::SubscribeRequest {
            stop_at_end: true,
            ..Default::default()
        },
    )
    .await?;
    let mut out = Vec::new();
    while let Some(e) = stream.next().await {
        let e = e.expect("event");
        let kind = airlock_eventlog::body_kind(e.event.as_ref().and_then(|e| e.body.as_ref()).expect("body"));
        out.push((e.subject, kind));
    }
    Ok(out)
}

#[tokio::test]
async fn the_audit_stream_shows_reviewers_only_their_groups_and_others_nothing() {
    let nats = NatsServer::start();
    let (addr, live, log) = replica(&nats, "replica-1").await;
    let finance = open_session(&log, &live, "proxy-1").await;
    let theirs = file_request_in(&log, &finance, FINANCE, "proxy-1", 1, Duration::from_secs(600)).await;
    let (ours, _) = file_request(&log, 1, Duration::from_secs(600)).await;
    let quiet = open_session(&log, &live, "proxy-1").await;
    let policy = new_event(
        &proto::Source::default(),
        Body::PolicyLoaded(proto::PolicyLoaded::default()),
    );
    log.append_next("airlock.v1.proxy.proxy-1", policy)
        .await
        .expect("policy loaded");
    caught_up(&log, &live).await;

    // Neither a reviewer nor an auditor: refused, agents included.
    for token in ["erin", "agent-9"] {
        let err = readable(&addr, token).await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{token}");
        assert_eq!(error_code(&err), "not_a_reviewer", "{token}: {}", err.message());
    }
    let err = readable(&addr, "forged").await.expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // Alice: her request, and the session that filed nothing; not the
    // finance session or request, not the fleet's events.
    let alice = readable(&addr, "alice").await.expect("alice reads");
    let subjects_seen: std::collections::BTreeSet<&str> = alice.iter().map(|(s, _)| s.as_str()).collect();
    let expected: std::collections::BTreeSet<String> = [subjects::request(&ours), subjects::session(&quiet)]
        .into_iter()
        .collect();
    assert_eq!(
        subjects_seen,
        expected.iter().map(String::as_str).collect(),
        "{alice:?}"
    );
    // Fiona: the finance session and request, and the session that filed nothing.
    let fiona = readable(&addr, "fiona").await.expect("fiona reads");
    let subjects_seen: std::collections::BTreeSet<&str> = fiona.iter().map(|(s, _)| s.as_str()).collect();
    let expected: std::collections::BTreeSet<String> = [
        subjects::session(&finance),
        subjects::request(&theirs),
        subjects::session(&quiet),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        subjects_seen,
        expected.iter().map(String::as_str).collect(),
        "{fiona:?}"
    );
    // Auditors: all of it, the fleet's events too.
    let audrey = readable(&addr, "audrey").await.expect("audrey reads");
    assert_eq!(audrey.len() as u64, log.last_sequence().await.expect("last"));
    assert!(audrey.iter().any(|(_, k)| *k == "policy_loaded"));
}

/// Opens Attach on `channel` with `hello`; the inbound stream after the
/// Welcome, or the refusal.
async fn attach_on(
    channel: Channel,
    hello: proto::ProxyHello,
) -> Result<
    (
        tonic::Streaming<proto::ControlMessage>,
        tokio::sync::mpsc::Sender<proto::ProxyMessage>,
    ),
    tonic::Status,
> {
    let mut proxy = ProxyServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(proto::ProxyMessage {
        message: Some(proto::proxy_message::Message::Hello(hello)),
    })
    .await
    .expect("hello");
    let mut inbound = proxy
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match inbound.next().await {
        Some(Ok(proto::ControlMessage {
            message: Some(proto::control_message::Message::Welcome(_)),
        })) => Ok((inbound, tx)),
        Some(Err(s)) => Err(s),
        other => panic!("not a welcome: {other:?}"),
    }
}

fn hello(proxy_id: &str, held: &[(&RequestId, &SessionId)], sessions: &[&SessionId]) -> proto::ProxyHello {
    proto::ProxyHello {
        proxy_id: proxy_id.into(),
        held: held
            .iter()
            .map(|(r, s)| proto::Held {
                request_id: r.to_string(),
                session_id: s.to_string(),
                statement_sha256: vec![42; 32],
            })
            .collect(),
        session_ids: sessions.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// The next decision on `inbound` within `wait`, skipping heartbeats.
async fn next_decision(
    inbound: &mut tonic::Streaming<proto::ControlMessage>,
    wait: Duration,
) -> Option<proto::DecisionNotice> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, inbound.next()).await {
            Ok(Some(Ok(proto::ControlMessage {
                message: Some(proto::control_message::Message::Decision(d)),
            }))) => return Some(d),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

#[tokio::test]
async fn a_proxy_hears_only_the_decisions_and_kills_of_what_it_filed() {
    let nats = NatsServer::start();
    let (addr, live, log) = replica(&nats, "replica-1").await;
    let session = open_session(&log, &live, "proxy-b").await;
    let request = file_request_in(&log, &session, REVIEWERS, "proxy-b", 1, Duration::from_secs(600)).await;
    caught_up(&log, &live).await;
    let channel = || async {
        Channel::from_shared(addr.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect")
    };
    // Proxy A claims to hold proxy B's request and session.
    let (mut a, _a) = attach_on(
        channel().await,
        hello("proxy-a", &[(&request, &session)], &[&session]),
    )
    .await
    .expect("proxy-a attaches");
    let (mut b, _b) = attach_on(
        channel().await,
        hello("proxy-b", &[(&request, &session)], &[&session]),
    )
    .await
    .expect("proxy-b attaches");

    let mut reviewer = ReviewerServiceClient::new(channel().await);
    decide(&mut reviewer, "alice", &request, proto::Decision::Approve)
        .await
        .expect("alice approves");
    let notice = next_decision(&mut b, Duration::from_secs(5))
        .await
        .expect("the filing proxy hears it");
    assert_eq!(notice.request_id, request.to_string());
    assert!(
        next_decision(&mut a, Duration::from_millis(800)).await.is_none(),
        "another proxy does not"
    );
    // Nor on a later attach, where decisions made meanwhile are caught up.
    let (mut again, _again) = attach_on(channel().await, hello("proxy-a", &[(&request, &session)], &[]))
        .await
        .expect("proxy-a attaches again");
    assert!(
        next_decision(&mut again, Duration::from_millis(500))
            .await
            .is_none()
    );

    kill(&mut reviewer, "alice", &session)
        .await
        .expect("alice ends it");
    assert!(next_kill(&mut b, Duration::from_secs(5)).await.is_some());
    assert!(next_kill(&mut a, Duration::from_millis(800)).await.is_none());
}

#[tokio::test]
async fn attach_without_a_client_certificate_is_refused_unless_loopback_development_allows_it() {
    let nats = NatsServer::start();
    for attach in [AttachAuth::ClientCertificate, AttachAuth::Refused] {
        let (addr, _live, _log) = replica_with(&nats, "replica-1", attach, None).await;
        let channel = Channel::from_shared(addr)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let err = attach_on(channel, hello("proxy-1", &[], &[]))
            .await
            .map(|_| ())
            .expect_err("no certificate, no Attach");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{attach:?}: {err:?}");
        assert_eq!(error_code(&err), "unauthenticated", "{attach:?}");
        assert!(err.message().contains("client certificate"), "{}", err.message());
    }
    // Loopback development: a client on 127.0.0.1 attaches without one
    // (a client elsewhere would not: see `proxy_auth`'s tests).
    let (addr, _live, _log) = replica(&nats, "replica-1").await;
    let channel = Channel::from_shared(addr)
        .expect("url")
        .connect()
        .await
        .expect("connect");
    attach_on(channel.clone(), hello("proxy-1", &[], &[]))
        .await
        .expect("loopback development");
    let err = attach_on(channel, hello("", &[], &[]))
        .await
        .map(|_| ())
        .expect_err("a proxy id is required");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

/// A CA, a server certificate for localhost, and client certificates named
/// `proxy-a` (common name) and `proxy-b` (DNS name only), signed by
/// the CA.
struct Pki {
    ca: String,
    server: (String, String),
    clients: HashMap<&'static str, (String, String)>,
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    let ca_pem = ca.self_signed(&ca_key).expect("CA cert").pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |cn: Option<&str>, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        server: leaf(
            Some("control"),
            vec!["localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        clients: HashMap::from([
            (
                "proxy-a",
                leaf(Some("proxy-a"), vec![], ExtendedKeyUsagePurpose::ClientAuth),
            ),
            (
                "proxy-b",
                leaf(None, vec!["proxy-b".into()], ExtendedKeyUsagePurpose::ClientAuth),
            ),
        ]),
        ca: ca_pem,
    }
}

#[tokio::test]
async fn a_client_certificate_attaches_only_as_the_proxy_it_names() {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
    let nats = NatsServer::start();
    let pki = pki();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&pki.server.0, &pki.server.1))
        .client_ca_root(Certificate::from_pem(&pki.ca))
        .client_auth_optional(true);
    let (addr, _live, _log) =
        replica_with(&nats, "replica-1", AttachAuth::ClientCertificate, Some(tls)).await;
    let channel = |client: Option<&str>| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca))
            .domain_name("localhost");
        if let Some(name) = client {
            let (cert, key) = &pki.clients[name];
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let endpoint = Channel::from_shared(addr.clone())
            .expect("url")
            .tls_config(tls)
            .expect("client TLS");
        async move { endpoint.connect().await.expect("TLS connect") }
    };

    attach_on(channel(Some("proxy-a")).await, hello("proxy-a", &[], &[]))
        .await
        .expect("its own name");
    attach_on(channel(Some("proxy-b")).await, hello("proxy-b", &[], &[]))
        .await
        .expect("its DNS name");
    let err = attach_on(channel(Some("proxy-a")).await, hello("proxy-b", &[], &[]))
        .await
        .map(|_| ())
        .expect_err("another proxy's name");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains("names proxy-a, not proxy proxy-b"),
        "{}",
        err.message()
    );
    let err = attach_on(channel(None).await, hello("proxy-a", &[], &[]))
        .await
        .map(|_| ())
        .expect_err("no certificate");
    assert!(err.message().contains("client certificate"), "{}", err.message());
}
