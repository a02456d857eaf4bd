//! Decision delivery: how long after a reviewer's vote is acknowledged the
//! proxy holding the statement has the decision on its Attach stream, and
//! how long after a proxy's `ApprovalRequested` is stored reviewers see it
//! on `Watch`. One control-plane replica over gRPC on loopback, a real
//! nats-server. Reviewer tokens come from a table (token verification is
//! the identity crate's and has its own tests).
//!
//! `cargo bench -p airlock-control --bench decision`
//! (`AIRLOCK_BENCH_DECISIONS`, default 1000). The last line is JSON.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use airlock_control::grpc::{BoxFuture, Control, ReviewerAuth};
use airlock_control::live::Live;
use airlock_control::projection::Projection;
use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{EventLog, NatsSettings, RequestId, SessionId, new_event, subjects};
use airlock_testkit::NatsServer;
use futures::StreamExt;

struct Table(HashMap<&'static str, proto::Identity>);

impl ReviewerAuth for Table {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<proto::Identity, String>> {
        Box::pin(async move { self.0.get(token).cloned().ok_or_else(|| "unknown".to_owned()) })
    }
}

fn person(subject: &str, kind: proto::identity::Kind) -> proto::Identity {
    proto::Identity {
        subject: subject.into(),
        display_name: subject.into(),
        kind: kind as i32,
        groups: vec![proto::Group {
            id: "reviewers".into(),
            name: "reviewers".into(),
        }],
        ..Default::default()
    }
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", "Bearer alice".parse().unwrap());
    r
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut micros: Vec<f64>) -> serde_json::Value {
    micros.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&micros, 0.50), percentile(&micros, 0.99));
    println!(
        "{name}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        p50 / 1000.0,
        p99 / 1000.0,
        micros.last().copied().unwrap_or(0.0) / 1000.0,
        micros.len()
    );
    serde_json::json!({ "p50_ms": p50 / 1000.0, "p99_ms": p99 / 1000.0, "samples": micros.len() })
}

fn main() {
    let n: usize = std::env::var("AIRLOCK_BENCH_DECISIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let nats = NatsServer::start();
        let log = EventLog::connect(NatsSettings::new(nats.url())).await.expect("connect");
        log.ensure_stream().await.expect("stream");
        let live = Live::spawn(log.clone(), Projection::new()).await;
        assert!(live.wait_ready(Duration::from_secs(10)).await);
        let control = Control {
            live: live.clone(),
            log: log.clone(),
            auth: Arc::new(Table(HashMap::from([(
                "alice",
                person("alice", proto::identity::Kind::User),
            )]))),
            source: proto::Source {
                kind: proto::source::Kind::Control as i32,
                id: "bench-replica".into(),
                ..Default::default()
            },
            kill_groups: vec!["reviewers".into()],
            auditor_groups: Vec::new(),
            attach: airlock_control::grpc::AttachAuth::InsecureLoopback,
            presence: airlock_control::presence::Presence::new(Duration::from_secs(30)),
            floor_acrs: Vec::new(),
            slack: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(proto::reviewer_service_server::ReviewerServiceServer::new(control.clone()))
                .add_service(proto::proxy_service_server::ProxyServiceServer::new(control))
                // As `serve` does (tonic's default): no Nagle delay on replies.
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
                    s.inspect(|s| {
                        let _ = s.set_nodelay(true);
                    })
                })),
        );

        // The proxy's Attach stream.
        let mut proxy = proto::proxy_service_client::ProxyServiceClient::connect(addr.clone())
            .await
            .expect("proxy");
        let (to_control, rx) = tokio::sync::mpsc::channel(64);
        to_control
            .send(proto::ProxyMessage {
                message: Some(proto::proxy_message::Message::Hello(proto::ProxyHello {
                    proxy_id: "bench-proxy".into(),
                    ..Default::default()
                })),
            })
            .await
            .expect("hello");
        let mut from_control = proxy
            .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("attach")
            .into_inner();
        let mut reviewer = proto::reviewer_service_client::ReviewerServiceClient::connect(addr)
            .await
            .expect("reviewer");
        let mut watch = reviewer
            .watch(authed(proto::WatchRequest::default()))
            .await
            .expect("watch")
            .into_inner();

        let (mut after_ack, mut from_call, mut listed) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let request = RequestId::generate();
            let session = SessionId::generate();
            let sql = format!("DELETE FROM orders WHERE id = {i}");
            let digest = {
                use sha2::Digest;
                sha2::Sha256::digest(sql.as_bytes()).to_vec()
            };
            let mut e = new_event(
                &proto::Source::default(),
                Body::ApprovalRequested(proto::ApprovalRequested {
                    identity: Some(person("agent", proto::identity::Kind::App)),
                    statement: Some(proto::Statement {
                        text: sql,
                        sha256: digest.clone(),
                        ..Default::default()
                    }),
                    approvals_required: 1,
                    reviewer_groups: vec![proto::Group {
                        id: "reviewers".into(),
                        name: "reviewers".into(),
                    }],
                    deadline: Some((SystemTime::now() + Duration::from_secs(600)).into()),
                    proxy_id: "bench-proxy".into(),
                    ..Default::default()
                }),
            );
            e.request_id = request.to_string();
            e.session_id = session.to_string();
            to_control
                .send(proto::ProxyMessage {
                    message: Some(proto::proxy_message::Message::Holding(proto::Holding {
                        held: Some(proto::Held {
                            request_id: request.to_string(),
                            session_id: session.to_string(),
                            statement_sha256: digest,
                        }),
                    })),
                })
                .await
                .expect("holding");
            log.append_next(&subjects::request(&request), e).await.expect("file");
            let stored = Instant::now();
            // Reviewers see it.
            loop {
                let w = watch.next().await.expect("watch open").expect("watch ok");
                if w.request.as_ref().is_some_and(|r| r.request_id == request.as_str()) {
                    break;
                }
            }
            listed.push(stored.elapsed().as_secs_f64() * 1e6);

            let call = Instant::now();
            reviewer
                .decide(authed(proto::DecideRequest {
                    request_id: request.to_string(),
                    decision: proto::Decision::Approve as i32,
                    reason: "bench".into(),
                    statement_sha256: vec![],
                    max_rows: vec![],
                    scope: None,
                    break_glass: false,
                    slack: None,
                }))
                .await
                .expect("decide");
            let acked = Instant::now();
            loop {
                let m = from_control.next().await.expect("attach open").expect("attach ok");
                if let Some(proto::control_message::Message::Decision(d)) = m.message
                    && d.request_id == request.as_str()
                {
                    break;
                }
            }
            after_ack.push(acked.elapsed().as_secs_f64() * 1e6);
            from_call.push(call.elapsed().as_secs_f64() * 1e6);
        }
        let a = summary("vote acknowledged -> decision on the proxy's Attach stream", after_ack);
        let b = summary("Decide called -> decision on the proxy's Attach stream", from_call);
        let c = summary("ApprovalRequested stored -> on reviewers' Watch stream", listed);
        println!(
            "{}",
            serde_json::json!({ "decisions": n, "ack_to_proxy": a, "call_to_proxy": b, "requested_to_watch": c })
        );
    });
}
