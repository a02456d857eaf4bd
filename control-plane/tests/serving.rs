//! What operators and load balancers see of a replica, against a real
//! nats-server: the gRPC health service asked with a real client, and the
//! Prometheus metrics scraped over HTTP as a scraper would.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use airlock_control::grpc::health::{SERVICES, Serving};
use airlock_control::grpc::{BoxFuture, Control, ReviewerAuth};
use airlock_control::live::Live;
use airlock_control::projection::Projection;
use airlock_control::snapshot;
use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{EventLog, NatsSettings, RequestId, SessionId, new_event, subjects};
use airlock_testkit::{NatsServer, eventually, satisfies};
use futures::StreamExt;
use proto::reviewer_service_client::ReviewerServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const REVIEWERS: &str = "grp-reviewers";

/// One reviewer, alice.
struct Alice;

impl ReviewerAuth for Alice {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<proto::Identity, String>> {
        Box::pin(async move {
            if token != "alice" {
                return Err("unknown key".to_owned());
            }
            Ok(proto::Identity {
                subject: "alice".into(),
                display_name: "alice".into(),
                kind: proto::identity::Kind::User as i32,
                groups: vec![proto::Group {
                    id: REVIEWERS.into(),
                    name: String::new(),
                }],
                ..Default::default()
            })
        })
    }
}

/// A replica as `serve` runs one: reviewer and health services on gRPC,
/// due outcomes reconciled, `/metrics` on HTTP.
struct Replica {
    grpc: String,
    metrics: std::net::SocketAddr,
    live: Arc<Live>,
    log: EventLog,
    serving: Serving,
}

async fn replica(nats: &NatsServer) -> Replica {
    let log = EventLog::connect(NatsSettings::new(nats.url()))
        .await
        .expect("connect");
    log.ensure_stream().await.expect("stream");
    let live = Live::spawn(log.clone(), Projection::new()).await;
    assert!(live.wait_ready(Duration::from_secs(10)).await);
    let source = proto::Source {
        kind: proto::source::Kind::Control as i32,
        id: "replica-1".into(),
        ..Default::default()
    };
    let presence = airlock_control::presence::Presence::new(Duration::from_secs(30));
    let control = Control {
        live: live.clone(),
        log: log.clone(),
        auth: Arc::new(Alice),
        source: source.clone(),
        kill_groups: vec![REVIEWERS.into()],
        auditor_groups: Vec::new(),
        attach: airlock_control::grpc::AttachAuth::InsecureLoopback,
        presence: presence.clone(),
        floor_acrs: Vec::new(),
        slack: None,
    };
    tokio::spawn(airlock_control::act::reconcile_forever(
        live.clone(),
        log.clone(),
        source,
        Duration::from_millis(100),
        presence,
    ));
    let (serving, health) = Serving::start(live.clone()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let grpc = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(proto::reviewer_service_server::ReviewerServiceServer::new(
                control,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics = http.local_addr().expect("addr");
    let app = airlock_control::metrics::router(live.clone());
    tokio::spawn(async move { axum::serve(http, app).await });
    Replica {
        grpc,
        metrics,
        live,
        log,
        serving,
    }
}

async fn check(client: &mut HealthClient<Channel>, service: &str) -> Result<ServingStatus, tonic::Status> {
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status())
}

#[tokio::test]
async fn health_is_serving_when_caught_up_and_not_while_the_log_is_gone_or_shutting_down() {
    let mut nats = NatsServer::start();
    let r = replica(&nats).await;
    let channel = Channel::from_shared(r.grpc.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = HealthClient::new(channel);

    eventually(
        "SERVING once caught up with a reachable log",
        Duration::from_secs(5),
        || {
            let mut client = client.clone();
            async move {
                let status = check(&mut client, "").await.ok();
                satisfies(status, |s| *s == Some(ServingStatus::Serving))
            }
        },
    )
    .await;
    for service in SERVICES {
        assert_eq!(
            check(&mut client, service).await.expect("known service"),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    assert_eq!(
        check(&mut client, "airlock.v1.NoSuchService")
            .await
            .expect_err("unknown")
            .code(),
        tonic::Code::NotFound
    );
    let mut watch = client
        .watch(HealthCheckRequest { service: "".into() })
        .await
        .expect("watch")
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(15), watch.next())
            .await
            .expect("a status in time")
            .expect("stream open")
            .expect("ok")
            .status()
    };
    assert_eq!(next().await, ServingStatus::Serving);

    // The log goes away: NOT_SERVING, told to watchers too.
    nats.stop();
    assert_eq!(next().await, ServingStatus::NotServing);
    assert_eq!(
        check(&mut client, proto::reviewer_service_server::SERVICE_NAME)
            .await
            .expect("known"),
        ServingStatus::NotServing
    );
    assert!(!r.live.log_reachable());

    // It comes back: SERVING again.
    nats.restart();
    assert_eq!(next().await, ServingStatus::Serving);

    // Shutdown begins: NOT_SERVING at once, and it stays so.
    r.serving.shutting_down().await;
    assert_eq!(
        check(&mut client, "").await.expect("known"),
        ServingStatus::NotServing
    );
    assert_eq!(next().await, ServingStatus::NotServing);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        check(&mut client, "").await.expect("known"),
        ServingStatus::NotServing
    );
}

/// `GET /metrics`, as a scraper sends it: the content type and the body.
async fn scrape(addr: std::net::SocketAddr) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: control\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers end");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .expect("a content type");
    (content_type, body.to_owned())
}

/// The value of one series (`name{labels}`) in a scrape.
fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{body}"))
        .trim()
        .parse()
        .expect("a number")
}

async fn metric(r: &Replica, series: &str) -> f64 {
    value(&scrape(r.metrics).await.1, series)
}

/// Files a held DELETE as a proxy would, for the reviewer group.
async fn file_request(log: &EventLog, deadline: Duration) -> RequestId {
    let request = RequestId::generate();
    let mut e = new_event(
        &proto::Source::default(),
        Body::ApprovalRequested(proto::ApprovalRequested {
            identity: Some(proto::Identity {
                subject: "agent-7".into(),
                kind: proto::identity::Kind::App as i32,
                ..Default::default()
            }),
            statement: Some(proto::Statement {
                text: "DELETE FROM orders WHERE id = 7".into(),
                sha256: vec![42; 32],
                ..Default::default()
            }),
            approvals_required: 1,
            reviewer_groups: vec![proto::Group {
                id: REVIEWERS.into(),
                name: "db-reviewers".into(),
            }],
            deadline: Some((SystemTime::now() + deadline).into()),
            ..Default::default()
        }),
    );
    e.request_id = request.to_string();
    e.session_id = SessionId::generate().to_string();
    log.append_next(&subjects::request(&request), e)
        .await
        .expect("file request");
    request
}

async fn caught_up(r: &Replica) {
    let last = r.log.last_sequence().await.expect("last");
    assert!(r.live.wait_for(last, Duration::from_secs(5)).await);
}

/// Scrapes until `series` reads `wanted` (ten seconds at most); the reading.
async fn metric_becomes(r: &Replica, series: &str, wanted: f64) -> f64 {
    eventually(
        &format!("{series} to read {wanted}"),
        Duration::from_secs(10),
        || async { satisfies(metric(r, series).await, |got| *got == wanted) },
    )
    .await
}

#[tokio::test]
async fn metrics_move_with_requests_decisions_and_snapshots() {
    let nats = NatsServer::start();
    let r = replica(&nats).await;

    let (content_type, body) = scrape(r.metrics).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(
            &body,
            &format!("airlock_control_build_info{{version=\"{version}\"}}")
        ),
        1.0
    );
    for outcome in ["granted", "denied", "expired"] {
        let series = format!("airlock_control_decisions_total{{outcome=\"{outcome}\"}}");
        assert_eq!(value(&body, &series), 0.0, "{series}");
    }
    assert_eq!(value(&body, "airlock_control_pending_requests"), 0.0);
    assert_eq!(value(&body, "airlock_control_log_reachable"), 1.0);
    assert_eq!(value(&body, "airlock_control_fold_lag_events"), 0.0);
    assert!(
        value(&body, "airlock_control_snapshot_age_seconds").is_nan(),
        "no snapshot yet"
    );

    // A held request is pending...
    let request = file_request(&r.log, Duration::from_secs(600)).await;
    caught_up(&r).await;
    assert_eq!(metric(&r, "airlock_control_pending_requests").await, 1.0);

    // ...until a reviewer grants it: one decision, timed.
    let mut reviewer = ReviewerServiceClient::connect(r.grpc.clone())
        .await
        .expect("connect");
    let mut decide = tonic::Request::new(proto::DecideRequest {
        request_id: request.to_string(),
        decision: proto::Decision::Approve as i32,
        reason: "looked".into(),
        statement_sha256: vec![],
        max_rows: vec![],
        scope: None,
        break_glass: false,
        slack: None,
    });
    decide
        .metadata_mut()
        .insert("authorization", "Bearer alice".parse().expect("header"));
    reviewer.decide(decide).await.expect("alice approves");
    let (_, body) = scrape(r.metrics).await;
    assert_eq!(
        value(&body, "airlock_control_decisions_total{outcome=\"granted\"}"),
        1.0
    );
    assert_eq!(value(&body, "airlock_control_pending_requests"), 0.0);
    assert_eq!(value(&body, "airlock_control_decide_duration_seconds_count"), 1.0);
    assert!(value(&body, "airlock_control_decide_duration_seconds_sum") > 0.0);

    // One left unanswered expires, and that is counted too.
    file_request(&r.log, Duration::from_millis(300)).await;
    assert_eq!(
        metric_becomes(&r, "airlock_control_decisions_total{outcome=\"expired\"}", 1.0).await,
        1.0
    );
    assert_eq!(metric(&r, "airlock_control_pending_requests").await, 0.0);

    // A snapshot stored: its age is known and no events are past it.
    caught_up(&r).await;
    snapshot::save_if_due(&r.live, &r.log, 1)
        .await
        .expect("save")
        .expect("due");
    let (_, body) = scrape(r.metrics).await;
    let age = value(&body, "airlock_control_snapshot_age_seconds");
    assert!((0.0..60.0).contains(&age), "snapshot age {age}");
    assert_eq!(value(&body, "airlock_control_snapshot_behind_events"), 0.0);
    assert_eq!(
        value(&body, "airlock_control_snapshot_save_duration_seconds_count"),
        1.0
    );
}
