//! The event log against a real nats-server with JetStream.

use std::time::Duration;

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{
    ChainError, ChainWriter, Error, EventLog, Expect, NatsSettings, ReadFilter, RequestId, SessionId,
    StoredEvent, new_event, subjects, verify_chain,
};
use airlock_testkit::NatsServer;
use futures::StreamExt;
use prost::Message;

fn source() -> proto::Source {
    proto::Source {
        kind: proto::source::Kind::Proxy as i32,
        id: "proxy-test".into(),
        version: "test".into(),
        host: "localhost".into(),
    }
}

fn executed(session: &SessionId, sql: &str) -> proto::Event {
    let mut e = new_event(
        &source(),
        Body::StatementExecuted(proto::StatementExecuted {
            statement: Some(proto::Statement {
                text: sql.into(),
                protocol: proto::statement::Protocol::Simple as i32,
                ..Default::default()
            }),
            command_tag: "SELECT 1".into(),
            rows: 1,
            ..Default::default()
        }),
    );
    e.session_id = session.to_string();
    e
}

async fn open_log(nats: &NatsServer) -> EventLog {
    let mut settings = NatsSettings::new(nats.url());
    settings.append_timeout = Duration::from_secs(2);
    let log = EventLog::connect(settings).await.expect("connect to nats");
    log.ensure_stream().await.expect("ensure stream");
    log
}

async fn collect(log: &EventLog, from: u64, filter: ReadFilter) -> Vec<StoredEvent> {
    let stream = log.read(from, filter).await.expect("read");
    futures::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        out.push(item.expect("event"));
    }
    out
}

#[tokio::test]
async fn same_event_id_appended_twice_is_stored_once() {
    let nats = NatsServer::start();
    let log = open_log(&nats).await;
    let session = SessionId::generate();
    let subject = subjects::session(&session);
    let event = executed(&session, "SELECT 1");

    let first = log
        .append(&subject, &event, Expect::Anything)
        .await
        .expect("first append");
    let again = log
        .append(&subject, &event, Expect::Anything)
        .await
        .expect("second append");
    assert!(!first.duplicate);
    assert!(
        again.duplicate,
        "JetStream should report the retry as a duplicate"
    );
    assert_eq!(first.sequence, again.sequence);

    let stored = collect(&log, 0, ReadFilter::all()).await;
    assert_eq!(stored.len(), 1, "one event stored: {stored:?}");
    assert_eq!(stored[0].event, event);
}

#[tokio::test]
async fn an_event_id_taken_by_someone_else_fails_the_append_instead_of_passing_as_a_duplicate() {
    // Anyone who can publish learns an event's id from a refused publish
    // and publishes junk under it: the real append would be acknowledged
    // as a duplicate and silently not stored.
    let nats = NatsServer::start();
    let log = open_log(&nats).await;
    let session = SessionId::generate();
    let event = executed(&session, "SELECT 1");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, event.id.as_str());
    let js = async_nats::jetstream::new(log.client().clone());
    js.publish_with_headers("airlock.v1.session.squatter", headers, "junk".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let err = log
        .append(&subjects::session(&session), &event, Expect::Anything)
        .await
        .expect_err("the squatted id is refused");
    assert!(
        matches!(&err, Error::Rejected { detail, .. } if detail.contains("already taken")),
        "{err}"
    );
    // A genuine retry of the same bytes is still a duplicate, not an error.
    let other = executed(&session, "SELECT 2");
    let first = log
        .append(&subjects::session(&session), &other, Expect::Anything)
        .await
        .expect("append");
    let again = log
        .append(&subjects::session(&session), &other, Expect::Anything)
        .await
        .expect("retry");
    assert!(again.duplicate && again.sequence == first.sequence);
}

#[tokio::test]
async fn retry_of_an_acknowledged_conditional_append_is_a_duplicate_not_a_conflict() {
    // A client whose ack was lost retries with the same id and the same
    // expected sequence; that must not look like someone else won.
    let nats = NatsServer::start();
    let log = open_log(&nats).await;
    let request = RequestId::generate();
    let subject = subjects::request(&request);
    let mut event = executed(&SessionId::generate(), "DELETE FROM orders");
    event.request_id = request.to_string();
    let first = log
        .append(&subject, &event, Expect::LastSequence(0))
        .await
        .expect("append");
    let retry = log
        .append(&subject, &event, Expect::LastSequence(0))
        .await
        .expect("retry");
    assert!(retry.duplicate);
    assert_eq!(retry.sequence, first.sequence);
}

#[tokio::test]
async fn stale_expected_sequence_is_refused_with_the_typed_conflict() {
    let nats = NatsServer::start();
    let log = open_log(&nats).await;
    let request = RequestId::generate();
    let subject = subjects::request(&request);
    let mk = || {
        let mut e = executed(&SessionId::generate(), "DELETE FROM orders");
        e.request_id = request.to_string();
        e
    };

    // Two deciders read the same head; the first append wins.
    let head = log.head(&subject).await.expect("head");
    assert_eq!(head.sequence, 0);
    let (mut first, mut second) = (mk(), mk());
    airlock_eventlog::link(&mut first, &head);
    airlock_eventlog::link(&mut second, &head);
    log.append(&subject, &first, Expect::LastSequence(head.sequence))
        .await
        .expect("first decider");
    let err = log
        .append(&subject, &second, Expect::LastSequence(head.sequence))
        .await
        .expect_err("second decider must lose");
    assert!(err.is_conflict(), "want Conflict, got {err:?}");
    match err {
        Error::Conflict {
            subject: s, expected, ..
        } => {
            assert_eq!(s, subject);
            assert_eq!(expected, 0);
        }
        other => panic!("want Conflict, got {other:?}"),
    }

    // Other subjects are unaffected by this subject's sequence.
    let other = subjects::request(&RequestId::generate());
    let mut e = mk();
    e.request_id = other.rsplit('.').next().unwrap_or_default().to_owned();
    e.chain_index = 1;
    log.append(&other, &e, Expect::LastSequence(0))
        .await
        .expect("fresh subject");

    // append_next re-reads the head, so it succeeds where a stale one failed.
    let (appended, linked) = log.append_next(&subject, mk()).await.expect("append_next");
    assert_eq!(linked.chain_index, 2);
    assert!(appended.sequence > head.sequence);
}

#[tokio::test]
async fn reader_from_zero_sees_every_event_in_order_then_live_ones() {
    let nats = NatsServer::start();
    let log = open_log(&nats).await;
    let sessions: Vec<SessionId> = (0..3).map(|_| SessionId::generate()).collect();
    let mut appended = Vec::new();
    for i in 0..9 {
        let s = &sessions[i % 3];
        let e = executed(s, &format!("SELECT {i}"));
        let a = log
            .append(&subjects::session(s), &e, Expect::Anything)
            .await
            .expect("append");
        appended.push((a.sequence, e.id));
    }

    let tail = log.tail(0, ReadFilter::all()).await.expect("tail");
    futures::pin_mut!(tail);
    for (seq, id) in &appended {
        let got = tokio::time::timeout(Duration::from_secs(5), tail.next())
            .await
            .expect("historic event arrives")
            .expect("stream goes on")
            .expect("event decodes");
        assert_eq!((got.sequence, &got.event.id), (*seq, id));
    }

    // Now live events, written by another handle while the reader waits.
    let writer = open_log(&nats).await;
    let live_session = SessionId::generate();
    let mut live = Vec::new();
    for i in 0..3 {
        let e = executed(&live_session, &format!("SELECT live {i}"));
        let a = writer
            .append(&subjects::session(&live_session), &e, Expect::Anything)
            .await
            .expect("append live");
        live.push((a.sequence, e.id));
    }
    for (seq, id) in &live {
        let got = tokio::time::timeout(Duration::from_secs(5), tail.next())
            .await
            .expect("live event arrives")
            .expect("stream goes on")
            .expect("event decodes");
        assert_eq!((got.sequence, &got.event.id), (*seq, id));
    }

    // A bounded read ends at the end; a filtered one sees only its subject,
    // and a read from the middle starts there.
    assert_eq!(collect(&log, 0, ReadFilter::all()).await.len(), 12);
    let one = collect(&log, 0, ReadFilter::subject(subjects::session(&sessions[1]))).await;
    assert_eq!(one.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![2, 5, 8]);
    let from_middle = collect(&log, 7, ReadFilter::all()).await;
    assert_eq!(from_middle.first().map(|e| e.sequence), Some(7));
    assert_eq!(from_middle.len(), 6);
    let none = collect(&log, 0, ReadFilter::subject("airlock.v1.session.nobody")).await;
    assert!(none.is_empty());
}

#[tokio::test]
async fn the_stream_refuses_deletes_and_purges() {
    let nats = NatsServer::start();
    let log = open_log(&nats).await;
    let session = SessionId::generate();
    let a = log
        .append(
            &subjects::session(&session),
            &executed(&session, "SELECT 1"),
            Expect::Anything,
        )
        .await
        .expect("append");

    let js = async_nats::jetstream::new(log.client().clone());
    let mut stream = js.get_stream("AIRLOCK").await.expect("stream");
    let config = stream.info().await.expect("info").config.clone();
    assert!(config.deny_delete && config.deny_purge);
    let delete = stream.delete_message(a.sequence).await;
    assert!(delete.is_err(), "delete must be refused, got {delete:?}");
    let purge = stream.purge().await;
    assert!(purge.is_err(), "purge must be refused, got {purge:?}");
    let subject_purge = stream.purge().filter(subjects::session(&session)).await;
    assert!(subject_purge.is_err(), "subject purge must be refused");
    assert_eq!(
        log.get(a.sequence).await.expect("still there").event.session_id,
        session.to_string()
    );
}

/// Review finding (round 2): anyone able to store a message on a subject
/// (a plain publish, or a JetStream request naming the subject as its
/// reply) could store an unsigned event with the largest chain index; the
/// next genuine events were linked after it and the control plane refused
/// them as replays, stalling a request or a kill. The index now continues
/// the trusted events'.
#[tokio::test]
async fn an_unsigned_event_cannot_push_the_chain_index_of_the_next_genuine_one() {
    use airlock_eventlog::signing::{Role, Signer, Trust, TrustedKey};
    let nats = NatsServer::start();
    let signer = Signer::generate();
    let trust = Trust::new(vec![
        TrustedKey::new(Role::Proxy, signer.verifying_key()).for_writer("proxy-test"),
    ]);
    let log = open_log(&nats)
        .await
        .with_signer(std::sync::Arc::new(signer))
        .with_trust(std::sync::Arc::new(trust));
    let session = SessionId::generate();
    let subject = subjects::session(&session);
    log.append_next(&subject, executed(&session, "SELECT 1"))
        .await
        .expect("first");
    let mut forged = executed(&session, "SELECT 2");
    forged.chain_index = u64::MAX;
    let js = async_nats::jetstream::new(log.client().clone());
    js.publish(subject.clone(), forged.encode_to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let head = log.head(&subject).await.expect("head");
    assert_eq!(head.index, 1, "the forged index is not continued");
    let (_, next) = log
        .append_next(&subject, executed(&session, "SELECT 3"))
        .await
        .expect("next");
    assert_eq!(next.chain_index, 2);
}

/// Review finding (round 3): a stored copy of an older *signed* event
/// (its bytes published again, through a reply subject or by a proxy on a
/// subject it may write) is last on the subject with an old chain index.
/// A writer that took the index from it linked its next genuine event at an
/// index the fold had already passed, and the control plane refused that
/// event as a replay: a session's record or a request's outcome stalled.
/// Writers now continue from at least the index they stored (a session's
/// `ChainWriter`) or the fold reached (`append_next_from`).
#[tokio::test]
async fn a_stored_copy_of_an_older_signed_event_does_not_rewind_the_chain_index() {
    use airlock_eventlog::ChainWriter;
    use airlock_eventlog::signing::{Role, Signer, Trust, TrustedKey};
    let nats = NatsServer::start();
    let signer = Signer::generate();
    let trust = Trust::new(vec![
        TrustedKey::new(Role::Proxy, signer.verifying_key()).for_writer("proxy-test"),
    ]);
    let log = open_log(&nats)
        .await
        .with_signer(std::sync::Arc::new(signer))
        .with_trust(std::sync::Arc::new(trust));
    let session = SessionId::generate();
    let subject = subjects::session(&session);
    let mut writer = ChainWriter::new_chain(subject.clone());
    let (first, _) = writer
        .append(&log, executed(&session, "SELECT 1"))
        .await
        .expect("first");
    for sql in ["SELECT 2", "SELECT 3"] {
        writer
            .append(&log, executed(&session, sql))
            .await
            .expect("append");
    }
    // The first event's exact bytes, stored again: signed, index 1.
    let copy = log.get(first.sequence).await.expect("the first event");
    let js = async_nats::jetstream::new(log.client().clone());
    js.publish(subject.clone(), copy.raw.clone())
        .await
        .expect("publish")
        .await
        .expect("stored");
    assert_eq!(
        log.head(&subject).await.expect("head").index,
        1,
        "the copy is last"
    );

    let (_, fourth) = writer
        .append(&log, executed(&session, "SELECT 4"))
        .await
        .expect("the writer re-reads the head after the conflict");
    assert_eq!(fourth.chain_index, 4, "continues its own index, not the copy's");

    js.publish(subject.clone(), copy.raw.clone())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let (_, fifth) = log
        .append_next_from(&subject, executed(&session, "SELECT 5"), 4)
        .await
        .expect("append after the copy");
    assert_eq!(fifth.chain_index, 5);
}

/// Review finding: a stream that denies deletes and purges but keeps one
/// event per subject, or lets events expire, passed the check, and the log
/// silently lost votes and session records.
#[tokio::test]
async fn an_existing_stream_that_drops_or_expires_events_is_refused() {
    for (what, config) in [
        (
            "keeps only some events per subject",
            async_nats::jetstream::stream::Config {
                max_messages_per_subject: 1,
                ..Default::default()
            },
        ),
        (
            "events may expire",
            async_nats::jetstream::stream::Config {
                allow_message_ttl: true,
                ..Default::default()
            },
        ),
        (
            "persist_mode: async",
            async_nats::jetstream::stream::Config {
                persist_mode: Some(async_nats::jetstream::stream::PersistenceMode::Async),
                ..Default::default()
            },
        ),
    ] {
        let nats = NatsServer::start();
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "AIRLOCK".into(),
            subjects: vec!["airlock.v1.>".into()],
            deny_delete: true,
            deny_purge: true,
            ..config
        })
        .await
        .expect("create a lossy stream");
        let log = EventLog::connect(NatsSettings::new(nats.url()))
            .await
            .expect("connect");
        for err in [
            log.ensure_stream().await.expect_err("refused"),
            log.check_stream().await.expect_err("refused"),
        ] {
            assert!(matches!(err, Error::StreamMisconfigured { .. }), "{err:?}");
            assert!(err.to_string().contains(what), "{err}");
        }
    }
}

#[tokio::test]
async fn an_existing_stream_that_allows_deletes_is_refused_not_loosened() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "AIRLOCK".into(),
        subjects: vec!["airlock.v1.>".into()],
        ..Default::default()
    })
    .await
    .expect("create a loose stream");
    let log = EventLog::connect(NatsSettings::new(nats.url()))
        .await
        .expect("connect");
    let err = log
        .ensure_stream()
        .await
        .expect_err("loose stream must be refused");
    let text = err.to_string();
    assert!(matches!(err, Error::StreamMisconfigured { .. }), "{err:?}");
    assert!(
        text.contains("deletes are allowed") && text.contains("purges are allowed"),
        "{text}"
    );
}

#[tokio::test]
async fn a_session_chain_checks_and_an_altered_event_is_named() {
    let nats = NatsServer::start();
    let log = open_log(&nats).await;
    let session = SessionId::generate();
    let subject = subjects::session(&session);
    let mut writer = ChainWriter::new_chain(&subject);
    let mut ids = Vec::new();
    for i in 0..5 {
        let (_, e) = writer
            .append(&log, executed(&session, &format!("SELECT {i}")))
            .await
            .expect("append");
        ids.push(e.id);
        // Someone else (the control plane filing a kill) writes in between:
        // the writer must re-read the head, not fork the chain.
        if i == 2 {
            let mut kill = new_event(
                &source(),
                Body::SessionKillRequested(proto::SessionKillRequested {
                    reason: "test".into(),
                    ..Default::default()
                }),
            );
            kill.session_id = session.to_string();
            let (_, k) = log.append_next(&subject, kill).await.expect("kill");
            ids.push(k.id);
        }
    }

    let chain = log.read_subject(&subject).await.expect("read chain");
    assert_eq!(chain.iter().map(|e| e.event.id.clone()).collect::<Vec<_>>(), ids);
    let summary = verify_chain(&chain).expect("untouched chain verifies");
    assert_eq!(summary.events, 6);
    assert_eq!(summary.head.index, 6);

    // Alter the third event's statement, as an attacker with disk access might.
    let mut tampered = chain.clone();
    let mut event = tampered[2].event.clone();
    if let Some(Body::StatementExecuted(x)) = event.body.as_mut() {
        x.statement.as_mut().expect("statement").text = "SELECT 'nothing to see'".into();
    }
    tampered[2].raw = event.encode_to_vec().into();
    tampered[2].event = event;
    match verify_chain(&tampered) {
        Err(ChainError::AlteredEvent {
            previous_event_id,
            event_id,
            ..
        }) => {
            assert_eq!(previous_event_id, ids[2], "the altered event is named");
            assert_eq!(event_id, ids[3], "the break is found at its successor");
        }
        other => panic!("want AlteredEvent, got {other:?}"),
    }

    // Removing an event is caught too.
    let mut removed = chain.clone();
    removed.remove(3);
    assert!(matches!(verify_chain(&removed), Err(ChainError::IndexGap { .. })));
}

#[tokio::test]
async fn trace_context_travels_in_the_event_headers() {
    let nats = NatsServer::start();
    let log = open_log(&nats).await;
    let session = SessionId::generate();
    let mut e = executed(&session, "SELECT 1");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    e.trace = Some(proto::TraceContext {
        traceparent: traceparent.into(),
        tracestate: String::new(),
    });
    let a = log
        .append(&subjects::session(&session), &e, Expect::Anything)
        .await
        .expect("append");
    let js = async_nats::jetstream::new(log.client().clone());
    let stream = js.get_stream("AIRLOCK").await.expect("stream");
    let raw = stream.get_raw_message(a.sequence).await.expect("raw message");
    assert_eq!(
        raw.headers.get("traceparent").map(|v| v.as_str()),
        Some(traceparent)
    );
    assert_eq!(
        raw.headers.get("Airlock-Event").map(|v| v.as_str()),
        Some("statement_executed")
    );
    assert_eq!(
        raw.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some(e.id.as_str())
    );
}

#[tokio::test]
async fn with_nats_gone_an_append_fails_clearly_and_a_retry_after_recovery_is_stored_once() {
    let mut nats = NatsServer::start();
    let log = open_log(&nats).await;
    let session = SessionId::generate();
    let subject = subjects::session(&session);
    log.append(&subject, &executed(&session, "SELECT 0"), Expect::Anything)
        .await
        .expect("append while up");

    nats.stop();
    let event = executed(&session, "SELECT 1");
    let started = std::time::Instant::now();
    let err = log
        .append(&subject, &event, Expect::Anything)
        .await
        .expect_err("no NATS: the append must fail, not pretend");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gives up within append_timeout"
    );

    nats.restart();
    // The client reconnects by itself; the caller retries the same event.
    let mut stored = None;
    for _ in 0..50 {
        match log.append(&subject, &event, Expect::Anything).await {
            Ok(a) => {
                stored = Some(a);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let first = stored.expect("append works again after NATS is back");
    let again = log
        .append(&subject, &event, Expect::Anything)
        .await
        .expect("retry");
    assert_eq!(again.sequence, first.sequence);
    let events = collect(&log, 0, ReadFilter::subject(&subject)).await;
    assert_eq!(
        events.len(),
        2,
        "the event before the outage and the retried one, once"
    );
}

#[tokio::test]
async fn an_approval_request_is_stored_with_the_trace_of_its_append() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let _tracing = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test"))),
    );
    let nats = NatsServer::start();
    let log = open_log(&nats).await;
    let request = RequestId::generate();
    let subject = subjects::request(&request);
    let mut e = new_event(
        &source(),
        Body::ApprovalRequested(proto::ApprovalRequested::default()),
    );
    e.request_id = request.to_string();
    let (appended, written) = ChainWriter::new_chain(subject.clone())
        .append(&log, e)
        .await
        .expect("append");
    let trace = written.trace.clone().expect("a trace context on the event");
    assert!(trace.traceparent.starts_with("00-"), "{trace:?}");

    // The stored bytes (what the chain's hash covers) carry it, and so do
    // the headers.
    let stored = log.read_subject(&subject).await.expect("read");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].event.trace.as_ref(), Some(&trace));
    verify_chain(&stored).expect("an intact chain");
    let js = async_nats::jetstream::new(log.client().clone());
    let stream = js.get_stream("AIRLOCK").await.expect("stream");
    let raw = stream
        .get_raw_message(appended.sequence)
        .await
        .expect("raw message");
    assert_eq!(
        raw.headers.get("traceparent").map(|v| v.as_str()),
        Some(trace.traceparent.as_str())
    );
}

/// Issue 17, defect 5: `nats.url` took one server, so a binary could not
/// start while that node was down. A list (YAML, or commas) connects to
/// any member that answers.
#[tokio::test]
async fn a_list_of_servers_connects_to_any_that_answers() {
    let nats = NatsServer::start();
    let down = format!("nats://127.0.0.1:{}", airlock_testkit::free_port());
    for yaml in [
        format!("url: [{down}, {}]", nats.url()),
        format!("url: \"{down}, {}\"", nats.url()),
    ] {
        let settings: NatsSettings = serde_norway::from_str(&yaml).expect("settings");
        let log = EventLog::connect(settings)
            .await
            .unwrap_or_else(|e| panic!("{yaml}: {e}"));
        log.ensure_stream().await.expect("stream");
        let session = SessionId::generate();
        log.append_next(&subjects::session(&session), executed(&session, "SELECT 1"))
            .await
            .expect("append through the live member");
    }
    for (yaml, says) in [
        ("url: []", "names no server"),
        ("url: \"not a url, ::\"", "not a server address"),
    ] {
        let settings: Result<NatsSettings, _> = serde_norway::from_str(yaml);
        let error = match settings {
            Err(e) => e.to_string(),
            Ok(s) => EventLog::connect(s)
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
        };
        assert!(error.contains(says), "{yaml}: {error}");
    }
}

/// Issue 17, defect 4: after a NATS restart a tail stayed silent for about
/// ten seconds (until the client found its consumer missing on the
/// restarted server), and the control plane's view with it. A tail now
/// starts a new consumer after its last event on every reconnect: the next
/// event arrives as soon as it is stored, once, without an error.
#[tokio::test]
async fn a_tail_resumes_within_seconds_after_a_nats_restart() {
    let mut nats = NatsServer::start();
    let log = open_log(&nats).await;
    let session = SessionId::generate();
    let subject = subjects::session(&session);
    log.append(&subject, &executed(&session, "SELECT 0"), Expect::Anything)
        .await
        .expect("append");
    let mut tail = Box::pin(log.tail(0, ReadFilter::subject(&subject)).await.expect("tail"));
    let first = tokio::time::timeout(Duration::from_secs(5), tail.next())
        .await
        .expect("the first event")
        .expect("stream")
        .expect("event");
    nats.restart();
    let event = executed(&session, "SELECT 1");
    let mut appended = None;
    for _ in 0..100 {
        match log.append(&subject, &event, Expect::Anything).await {
            Ok(a) => {
                appended = Some(a);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let appended = appended.expect("append after the restart");
    let since = std::time::Instant::now();
    let next = tokio::time::timeout(Duration::from_secs(30), tail.next())
        .await
        .expect("the tail resumes")
        .expect("stream")
        .expect("an event, not an error");
    let took = since.elapsed();
    eprintln!("the tail delivered the next event {took:?} after it was stored");
    assert_eq!(
        next.sequence, appended.sequence,
        "the next event, not a repeat of {}",
        first.sequence
    );
    assert!(
        took < Duration::from_secs(5),
        "the tail stayed silent for {took:?}"
    );
}

/// Found by the fault suite: an append stored while the cluster lost its
/// quorum, whose acknowledgement never came, was tried again linked after
/// itself (the writer re-read the head, and the head was that very event):
/// other bytes under the same id, refused for good, and the session's
/// record stalled behind it. The writer now takes its own event, last on
/// the subject, for the append's outcome.
#[tokio::test]
async fn an_append_stored_without_its_acknowledgement_is_taken_on_the_next_try() {
    use airlock_eventlog::signing::{Role, Signer, Trust, TrustedKey};
    let nats = NatsServer::start();
    let signer = Signer::generate();
    let trust = Trust::new(vec![
        TrustedKey::new(Role::Proxy, signer.verifying_key()).for_writer("proxy-test"),
    ]);
    let log = open_log(&nats)
        .await
        .with_signer(std::sync::Arc::new(signer))
        .with_trust(std::sync::Arc::new(trust));
    let session = SessionId::generate();
    let subject = subjects::session(&session);
    let event = executed(&session, "SELECT 1");
    // The first try, stored; its writer never heard back.
    let mut lost = ChainWriter::new_chain(subject.clone());
    let (stored, _) = lost.append(&log, event.clone()).await.expect("stored");
    // The retry, by a writer that must re-read the head.
    let mut writer = ChainWriter::new(subject.clone());
    let (again, kept) = writer
        .append(&log, event.clone())
        .await
        .expect("the retry succeeds");
    assert!(again.duplicate);
    assert_eq!(again.sequence, stored.sequence);
    assert_eq!(kept.id, event.id);
    // And the record goes on after it.
    let (next, _) = writer
        .append(&log, executed(&session, "SELECT 2"))
        .await
        .expect("the next event");
    assert_eq!(next.sequence, stored.sequence + 1);
    let events = log.read_subject(&subject).await.expect("read");
    assert_eq!(events.len(), 2);
    verify_chain(&events).expect("one chain");
}
