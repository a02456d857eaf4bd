//! Which proxies are alive, against a real nats-server: replicas wired as
//! `serve` wires them (presence, reconcile, Attach). Each test is a finding
//! of the review of the first version of presence, kept as a regression
//! test: a healthy proxy must never have its sessions closed.

use std::sync::Arc;
use std::time::Duration;

use airlock_control::grpc::{AttachAuth, BoxFuture, Control, ReviewerAuth};
use airlock_control::live::Live;
use airlock_control::presence::Presence;
use airlock_control::projection::Projection;
use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{ChainWriter, EventLog, NatsSettings, SessionId, new_event, subjects};
use airlock_testkit::NatsServer;
use futures::StreamExt;
use proto::proxy_service_client::ProxyServiceClient;

struct Nobody;

impl ReviewerAuth for Nobody {
    fn verify<'a>(&'a self, _token: &'a str) -> BoxFuture<'a, Result<proto::Identity, String>> {
        Box::pin(async { Err("nobody".to_owned()) })
    }
}

async fn connect(nats: &NatsServer) -> EventLog {
    let log = EventLog::connect(NatsSettings::new(nats.url()))
        .await
        .expect("connect");
    log.ensure_stream().await.expect("stream");
    log
}

/// A replica as `serve` wires one (presence, reconcile every 200 ms, Attach).
async fn replica(nats: &NatsServer, id: &str, lost_after: Duration) -> String {
    let log = connect(nats).await;
    let live = Live::spawn(log.clone(), Projection::new()).await;
    assert!(live.wait_ready(Duration::from_secs(10)).await);
    let source = proto::Source {
        kind: proto::source::Kind::Control as i32,
        id: id.into(),
        ..Default::default()
    };
    let presence = Presence::new(lost_after);
    let control = Control {
        live: live.clone(),
        log: log.clone(),
        auth: Arc::new(Nobody),
        source: source.clone(),
        kill_groups: vec![],
        auditor_groups: vec![],
        attach: AttachAuth::InsecureLoopback,
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
        live,
        log,
        source,
        Duration::from_millis(200),
        presence,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proto::proxy_service_server::ProxyServiceServer::new(control))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://127.0.0.1:{port}")
}

/// A proxy run attached to `addr`, holding `sessions`.
async fn attach(
    addr: &str,
    proxy: &str,
    instance: &str,
    sessions: &[String],
) -> (
    tonic::Streaming<proto::ControlMessage>,
    tokio::sync::mpsc::Sender<proto::ProxyMessage>,
) {
    let mut client = ProxyServiceClient::connect(addr.to_owned())
        .await
        .expect("connects");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(proto::ProxyMessage {
        message: Some(proto::proxy_message::Message::Hello(proto::ProxyHello {
            proxy_id: proxy.into(),
            instance: instance.into(),
            session_ids: sessions.to_vec(),
            ..Default::default()
        })),
    })
    .await
    .expect("hello");
    let mut inbound = client
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

async fn open(log: &EventLog, sid: &SessionId, proxy: &str, instance: &str) {
    let source = proto::Source {
        kind: proto::source::Kind::Proxy as i32,
        id: proxy.into(),
        ..Default::default()
    };
    let mut e = new_event(
        &source,
        Body::SessionOpened(proto::SessionOpened {
            proxy_id: proxy.into(),
            proxy_instance: instance.into(),
            ..Default::default()
        }),
    );
    e.session_id = sid.to_string();
    ChainWriter::new_chain(subjects::session(sid))
        .append(log, e)
        .await
        .expect("opened");
}

/// (cause, writer) of every SessionClosed of `sid`.
async fn closes(log: &EventLog, sid: &SessionId) -> Vec<(String, String)> {
    log.read_subject_events(&subjects::session(sid))
        .await
        .expect("read")
        .into_iter()
        .filter_map(|e| match &e.event.body {
            Some(Body::SessionClosed(c)) => Some((
                proto::session_closed::Cause::try_from(c.cause)
                    .map(|c| c.as_str_name().to_owned())
                    .unwrap_or_default(),
                e.event.source.as_ref().map(|s| s.id.clone()).unwrap_or_default(),
            )),
            _ => None,
        })
        .collect()
}

/// Waits for an announcement from `replica`, so its next one is about
/// ANNOUNCE_EVERY (2 s) away. Only makes the demonstration deterministic.
async fn just_announced(log: &EventLog, replica: &str) {
    let mut heard = log
        .client()
        .subscribe(airlock_control::presence::SUBJECT)
        .await
        .expect("subscribe");
    loop {
        let m = heard.next().await.expect("announcement");
        let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
        let body: serde_json::Value = serde_json::from_str(v["body"].as_str().unwrap_or("{}")).expect("json");
        if body["replica"] == replica {
            return;
        }
    }
}

/// Finding: a run no replica had announced yet counted as lost at once. A
/// proxy that starts and attaches to replica A had the sessions it opened
/// in its first ~2 s closed by replica B as PROXY_LOST.
#[tokio::test]
async fn a_fresh_runs_first_sessions_are_not_closed_by_another_replica() {
    let nats = NatsServer::start();
    let lost = Duration::from_secs(3);
    let a = replica(&nats, "replica-a", lost).await;
    let _b = replica(&nats, "replica-b", lost).await;
    let log = connect(&nats).await;
    // Both replicas have listened a full period: they judge from now on.
    tokio::time::sleep(lost + Duration::from_millis(500)).await;
    just_announced(&log, "replica-a").await;
    // A proxy starts, attaches to replica-a, and a client logs in at once.
    let run = ulid::Ulid::new().to_string();
    let (_inbound, _tx) = attach(&a, "proxy-1", &run, &[]).await;
    let sid = SessionId::generate();
    open(&log, &sid, "proxy-1", &run).await;
    tokio::time::sleep(lost * 2).await;
    assert_eq!(
        closes(&log, &sid).await,
        vec![],
        "the live, attached run's session is open"
    );
}

/// Finding: listening survived a disconnect (only a reconnect reset it),
/// so during a NATS outage longer than lost_after every run attached to
/// another replica counted as lost.
#[tokio::test]
async fn no_run_is_lost_while_the_replica_is_disconnected() {
    let mut nats = NatsServer::start();
    let lost = Duration::from_secs(3);
    let a = replica(&nats, "replica-a", lost).await;
    let log = connect(&nats).await;
    let p = Presence::new(lost);
    tokio::spawn(airlock_control::presence::run(
        p.clone(),
        log.clone(),
        "observer".into(),
    ));
    let run = ulid::Ulid::new().to_string();
    let (_inbound, _tx) = attach(&a, "proxy-1", &run, &[]).await;
    tokio::time::sleep(lost + Duration::from_secs(1)).await;
    let now = tokio::time::Instant::now();
    assert!(!p.lost("proxy-1", &run, now), "alive while announced");
    nats.stop();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = tokio::time::Instant::now();
        assert!(
            !p.lost("proxy-1", &run, now),
            "judged lost while it may have missed news"
        );
    }
    nats.restart();
}

/// Finding: a healthy proxy attached to replica A had its sessions closed
/// by replica B after a NATS outage longer than lost_after (B judged while
/// disconnected, and acted on a judgement made before awaits on the log),
/// and A forwarded kill orders for them.
#[tokio::test]
async fn a_nats_outage_does_not_close_a_healthy_proxys_sessions() {
    let mut nats = NatsServer::start();
    let lost = Duration::from_secs(3);
    let a = replica(&nats, "replica-a", lost).await;
    let _b = replica(&nats, "replica-b", lost).await;
    let log = connect(&nats).await;
    let sids: Vec<SessionId> = (0..5).map(|_| SessionId::generate()).collect();
    let ids: Vec<String> = sids.iter().map(|s| s.to_string()).collect();
    let run = ulid::Ulid::new().to_string();
    let (mut inbound, _tx) = attach(&a, "proxy-1", &run, &ids).await;
    // Announced before its sessions exist: no close from the fresh-run race.
    tokio::time::sleep(lost + Duration::from_secs(1)).await;
    for sid in &sids {
        open(&log, sid, "proxy-1", &run).await;
    }
    tokio::time::sleep(lost + Duration::from_secs(1)).await;
    for sid in &sids {
        assert!(closes(&log, sid).await.is_empty(), "healthy before the outage");
    }
    nats.stop();
    tokio::time::sleep(Duration::from_secs(9)).await;
    nats.restart();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let mut closed = 0;
    for sid in &sids {
        let c = closes(&log, sid).await;
        closed += c.iter().filter(|(cause, _)| cause == "CAUSE_PROXY_LOST").count();
    }
    let mut kills = 0;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(500), inbound.next()).await {
        if let Some(proto::control_message::Message::Kill(_)) = m.message {
            kills += 1;
        }
    }
    assert_eq!((closed, kills), (0, 0), "the healthy proxy's sessions stay open");
}
