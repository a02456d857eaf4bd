//! The event log against a nats-server that speaks only TLS and lets in
//! only the users of `deploy/nats/airlock-permissions.conf`: each role does
//! what it needs and the server refuses the rest; a wrong CA, a wrong
//! password and a client without TLS each fail with a message naming the
//! cause.

use std::time::Duration;

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{
    Error, EventLog, Expect, NatsSettings, NatsTls, ReadFilter, RequestId, SessionId, SnapshotMeta,
    new_event, subjects,
};
use airlock_testkit::{NatsRole, NatsServer, TestCa};

fn source(kind: proto::source::Kind) -> proto::Source {
    proto::Source {
        kind: kind as i32,
        id: "secured-test".into(),
        ..Default::default()
    }
}

/// Settings for `role`'s user, its password in a file (as a mounted secret).
fn settings(nats: &NatsServer, ca: &TestCa, role: NatsRole) -> NatsSettings {
    let file = ca.dir().join(format!("{}.password", role.user()));
    std::fs::write(&file, format!("{}\n", nats.password(role))).expect("write password file");
    let mut s = NatsSettings::new(nats.url());
    s.tls = Some(NatsTls {
        ca: Some(ca.ca()),
        ..NatsTls::default()
    });
    s.user = Some(role.user().to_owned());
    s.password_file = Some(file);
    s.inbox_prefix = Some(format!("_INBOX_{}", role.user()));
    s.append_timeout = Duration::from_secs(8);
    s
}

fn event(body: Body, session: &SessionId, request: Option<&RequestId>) -> proto::Event {
    let kind = match body {
        Body::ApprovalGranted(_) | Body::ApprovalVoted(_) => proto::source::Kind::Control,
        _ => proto::source::Kind::Proxy,
    };
    let mut e = new_event(&source(kind), body);
    e.session_id = session.to_string();
    if let Some(r) = request {
        e.request_id = r.to_string();
    }
    e
}

fn granted() -> Body {
    Body::ApprovalGranted(proto::ApprovalGranted {
        statement_sha256: vec![7; 32],
        ..Default::default()
    })
}

#[tokio::test]
async fn each_role_does_what_it_needs_and_the_server_refuses_the_rest() {
    let ca = TestCa::new("nats test CA");
    let nats = NatsServer::start_secured(&ca, false);
    let session = SessionId::generate();
    let request = RequestId::generate();

    // A proxy may not create the stream (review finding: it could create
    // one that keeps one event per subject, which a check then accepted).
    let proxy = EventLog::connect(settings(&nats, &ca, NatsRole::Proxy))
        .await
        .expect("proxy connects over TLS");
    let err = proxy
        .ensure_stream()
        .await
        .expect_err("a proxy creates no stream");
    assert!(
        err.to_string().contains("Permissions Violation") || err.to_string().contains("timed out"),
        "{err}"
    );

    // The control plane creates the stream and decides; the proxy checks it.
    let control = EventLog::connect(settings(&nats, &ca, NatsRole::Control))
        .await
        .expect("control connects over TLS");
    control.ensure_stream().await.expect("control creates the stream");
    proxy.check_stream().await.expect("the proxy checks the stream");

    // A proxy files a request and the facts of its session.
    let requested = event(
        Body::ApprovalRequested(proto::ApprovalRequested::default()),
        &session,
        Some(&request),
    );
    proxy
        .append(&subjects::request(&request), &requested, Expect::LastSequence(0))
        .await
        .expect("a proxy files a request");
    let closed = event(
        Body::SessionClosed(proto::SessionClosed::default()),
        &session,
        None,
    );
    proxy
        .append(&subjects::session(&session), &closed, Expect::Anything)
        .await
        .expect("a proxy records its session");

    // A proxy's decision is refused by the server, not just ignored later.
    let forged = event(granted(), &session, Some(&request));
    let err = proxy
        .append(&subjects::decision(&request), &forged, Expect::Anything)
        .await
        .expect_err("a proxy may not write a decision");
    match &err {
        Error::Rejected { detail, .. } => {
            assert!(detail.contains("Permissions Violation"), "{err}");
        }
        other => panic!("expected the server's refusal, got {other}"),
    }

    // The control plane's decision goes in; the proxy reads it back (it
    // confirms grants in the log before running a held statement).
    let grant = event(granted(), &session, Some(&request));
    control
        .append(&subjects::decision(&request), &grant, Expect::LastSequence(0))
        .await
        .expect("the control plane decides");
    let lifecycle = proxy
        .read_all(ReadFilter::subjects(subjects::lifecycle(&request)))
        .await
        .expect("a proxy reads a request's lifecycle");
    let ids: Vec<&str> = lifecycle.iter().map(|e| e.event.id.as_str()).collect();
    assert_eq!(
        ids,
        [requested.id.as_str(), grant.id.as_str()],
        "the forged decision is not stored"
    );

    // An auditor reads everything and writes nothing.
    let auditor = EventLog::connect(settings(&nats, &ca, NatsRole::Auditor))
        .await
        .expect("auditor connects over TLS");
    let all = auditor
        .read_all(ReadFilter::all())
        .await
        .expect("an auditor reads the log");
    assert_eq!(all.len(), 3, "request, session record, grant");
    let late = event(
        Body::SessionClosed(proto::SessionClosed::default()),
        &session,
        None,
    );
    let err = auditor
        .append(&subjects::session(&session), &late, Expect::Anything)
        .await
        .expect_err("an auditor may not write");
    assert!(err.to_string().contains("Permissions Violation"), "{err}");
    assert_eq!(
        control.last_sequence().await.expect("last"),
        3,
        "nothing else was stored"
    );

    // The SIEM forwarder reads on a durable reader of its own and
    // acknowledges there; it writes nothing.
    let forwarder = EventLog::connect(settings(&nats, &ca, NatsRole::Forwarder))
        .await
        .expect("the forwarder connects over TLS");
    let mut durable = forwarder
        .durable("airlock-forward", 1)
        .await
        .expect("a durable reader");
    let delivered = durable
        .fetch(10, Duration::from_secs(2))
        .await
        .expect("the forwarder reads");
    assert_eq!(delivered.len(), 3);
    delivered[2].ack().await.expect("the forwarder acknowledges");
    assert_eq!(durable.ack_floor().await.expect("its position"), 3);
    let err = forwarder
        .append(&subjects::session(&session), &late, Expect::Anything)
        .await
        .expect_err("a forwarder may not write");
    assert!(err.to_string().contains("Permissions Violation"), "{err}");

    // Review finding: every role could subscribe to every inbox and hear
    // the control plane's answers (consumer names, the events it reads).
    // Each role now hears only its own.
    use futures::StreamExt as _;
    let mut overhearing = auditor
        .client()
        .subscribe("_INBOX_airlock-control.>")
        .await
        .expect("the subscription is sent (the server refuses it)");
    auditor.client().flush().await.expect("flush");
    control
        .read_all(ReadFilter::all())
        .await
        .expect("the control plane reads");
    let heard = tokio::time::timeout(Duration::from_secs(1), overhearing.next()).await;
    assert!(
        !matches!(heard, Ok(Some(_))),
        "an auditor heard the control plane's answers"
    );

    // The control plane keeps snapshots in their object store: stored,
    // replaced (the old one purged), read back.
    let at = SnapshotMeta {
        sequence: 3,
        event_id: grant.id.clone(),
        format: "test".into(),
    };
    for bytes in [b"first".as_slice(), b"second".as_slice()] {
        control
            .save_snapshot("replica-1", &at, bytes)
            .await
            .expect("the control plane stores a snapshot");
    }
    let (_, bytes) = control
        .load_snapshot("replica-1", "test")
        .await
        .expect("and reads it back");
    assert_eq!(bytes, b"second");
    // A proxy may not write there.
    assert!(proxy.save_snapshot("replica-1", &at, b"forged").await.is_err());
}

#[tokio::test]
async fn a_wrong_ca_a_wrong_password_and_no_tls_each_say_what_is_wrong() {
    let ca = TestCa::new("nats test CA");
    let nats = NatsServer::start_secured(&ca, false);

    // The server's certificate is checked against the CA given.
    let other = TestCa::new("another CA");
    let mut wrong_ca = settings(&nats, &ca, NatsRole::Proxy);
    wrong_ca.tls = Some(NatsTls {
        ca: Some(other.ca()),
        ..NatsTls::default()
    });
    let err = EventLog::connect(wrong_ca).await.expect_err("wrong CA");
    assert!(
        err.to_string().contains("not signed by the CA in nats.tls.ca"),
        "{err}"
    );

    let file = ca.dir().join("wrong.password");
    std::fs::write(&file, "not-the-password").expect("write");
    let mut wrong_password = settings(&nats, &ca, NatsRole::Proxy);
    wrong_password.password_file = Some(file);
    let err = EventLog::connect(wrong_password)
        .await
        .expect_err("wrong password");
    let text = err.to_string();
    assert!(text.contains("refused these credentials"), "{text}");
    assert!(
        !text.contains("not-the-password"),
        "the password is never shown: {text}"
    );

    // No TLS configured against a server that requires it: nothing is sent
    // in clear, and the message says to configure TLS.
    let mut plain = settings(&nats, &ca, NatsRole::Proxy);
    plain.tls = None;
    let err = EventLog::connect(plain).await.expect_err("no TLS configured");
    assert!(err.to_string().contains("requires TLS"), "{err}");

    // And TLS asked of a server without it.
    let open = NatsServer::start();
    let mut tls_to_plain = NatsSettings::new(open.url());
    tls_to_plain.tls = Some(NatsTls {
        ca: Some(ca.ca()),
        ..NatsTls::default()
    });
    let err = EventLog::connect(tls_to_plain)
        .await
        .expect_err("server without TLS");
    assert!(err.to_string().contains("the server does not offer it"), "{err}");
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_the_server_verifies_clients() {
    let ca = TestCa::new("nats test CA");
    let nats = NatsServer::start_secured(&ca, true);
    let mut without = settings(&nats, &ca, NatsRole::Control);
    let err = EventLog::connect(without.clone())
        .await
        .expect_err("no client certificate");
    assert!(
        err.to_string().contains("set nats.tls.cert and nats.tls.key"),
        "{err}"
    );
    let client = ca.client("airlock-control");
    without.tls = Some(NatsTls {
        ca: Some(ca.ca()),
        cert: Some(client.cert),
        key: Some(client.key),
    });
    let log = EventLog::connect(without)
        .await
        .expect("connects with a client certificate");
    log.ensure_stream().await.expect("and works");
}
