//! The real binaries: `airlock-dev-idp` issues tokens, `airlock-control
//! serve` verifies them and serves reviewers; `verify` and `identity check`
//! work for auditors and operators.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use airlock_e2e::binaries::{ALICE, fresh_binary, wait_port};
use airlock_e2e::review::{self, ReviewerClient, authed, vote};
use airlock_e2e::{Process, StackBuilder, eventually, satisfies};
use airlock_eventlog::proto;

#[tokio::test]
async fn control_plane_binary_serves_reviewers_with_real_tokens() {
    let stack = StackBuilder::new().start_binaries();
    let alice = stack.user_token(ALICE);
    let agent = stack.agent_token();
    let mut reviewer = stack.reviewer().await;
    let listed = eventually(
        "the control plane to serve reviewers",
        Duration::from_secs(5),
        || {
            let mut reviewer = reviewer.clone();
            let alice = &alice;
            async move {
                match reviewer
                    .list_requests(authed(alice, proto::ListRequestsRequest::default()))
                    .await
                {
                    Err(s) if s.code() == tonic::Code::Unavailable => Err(s),
                    listed => Ok(listed.unwrap_or_else(|s| panic!("list refused: {s:?}"))),
                }
            }
        },
    )
    .await;
    assert!(listed.into_inner().requests.is_empty());
    let err = reviewer
        .list_requests(authed("not-a-token", proto::ListRequestsRequest::default()))
        .await
        .expect_err("garbage refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // An operator checks the agent's token.
    let mut check = stack
        .control_command(&["identity", "check"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("identity check");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(agent.as_bytes())
        .expect("write token");
    let out = check.wait_with_output().expect("identity check output");
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{json}");
    assert!(
        json.contains("\"kind\": \"app\"") && json.contains("oid-agent"),
        "{json}"
    );
    assert!(!json.contains(&agent), "the token is never printed");

    // The health endpoint says ready once the replica caught up.
    wait_port(stack.health_port, "the health endpoint");
    let mut health = std::net::TcpStream::connect(("127.0.0.1", stack.health_port)).expect("health");
    health
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    std::io::Read::read_to_string(&mut health, &mut response).expect("response");
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    assert!(response.contains("ready"), "{response}");

    // replay rebuilds the state from the log.
    let out = stack.control_command(&["replay"]).output().expect("replay");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("\"anomalies\": 0") && report.contains("\"events\""),
        "{report}"
    );

    // The auditor's verify passes on an untouched log.
    let out = stack.control_command(&["verify"]).output().expect("verify");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("\"ok\": true"), "{report}");
}

async fn tls_channel(
    port: u16,
    dir: &std::path::Path,
    client: Option<&str>,
) -> Result<tonic::transport::Channel, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |f: &str| std::fs::read(dir.join(f)).expect("read cert");
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.crt")))
        .domain_name("localhost");
    if let Some(name) = client {
        tls = tls.identity(Identity::from_pem(
            read(&format!("{name}.crt")),
            read(&format!("{name}.key")),
        ));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())
}

/// Tries an Attach; Ok once the control plane welcomes it.
async fn try_attach(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
    use futures::StreamExt;
    let mut client = proto::proxy_service_client::ProxyServiceClient::new(channel);
    let hello = proto::ProxyMessage {
        message: Some(proto::proxy_message::Message::Hello(proto::ProxyHello {
            proxy_id: "someone".into(),
            ..Default::default()
        })),
    };
    let mut inbound = client
        .attach(futures::stream::iter(vec![hello]).chain(futures::stream::pending()))
        .await?
        .into_inner();
    match inbound.next().await {
        Some(Ok(_)) => Ok(()),
        Some(Err(s)) => Err(s),
        None => Err(tonic::Status::unknown("stream ended")),
    }
}

#[tokio::test]
async fn attach_over_mutual_tls_serves_only_proxies_with_a_certificate() {
    let stack = StackBuilder::new().control_mtls().start_binaries();
    let (dir, control_port) = (&stack.dir, stack.control_port);

    // Not a proxy: no client certificate, or one no CA vouches for.
    let no_cert = tls_channel(control_port, dir, None)
        .await
        .expect("TLS without a client cert");
    let err = try_attach(no_cert).await.expect_err("no certificate, no Attach");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("client certificate"), "{}", err.message());
    let rogue = match tls_channel(control_port, dir, Some("rogue")).await {
        Ok(channel) => try_attach(channel).await.map_err(|s| s.to_string()),
        Err(e) => Err(e),
    };
    assert!(rogue.is_err(), "a certificate from no trusted CA is refused");
    // Plain text to the TLS port gets nowhere.
    let plain =
        proto::proxy_service_client::ProxyServiceClient::connect(format!("http://127.0.0.1:{control_port}"))
            .await;
    if let Ok(mut client) = plain {
        assert!(
            client
                .attach(futures::stream::pending::<proto::ProxyMessage>())
                .await
                .is_err()
        );
    }

    // The real proxy attaches with its certificate: a held DELETE is
    // approved by a reviewer over TLS (with a token, no client certificate)
    // and the decision reaches the proxy.
    let agent = stack.agent_token();
    let alice = stack.user_token(ALICE);
    let held = stack.psql(&agent, "DELETE FROM orders WHERE id > 5");
    let channel = tls_channel(control_port, dir, None).await.expect("reviewer TLS");
    let mut reviewer = ReviewerClient::new(channel);
    let request = review::pending(&mut reviewer, &alice, |_| true).await;
    review::decide(
        &mut reviewer,
        &alice,
        vote(&request.request_id, proto::Decision::Approve, "over mTLS"),
    )
    .await
    .expect("approve");
    let out = airlock_e2e::binaries::finish(held).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stack.pg.psql("shop", "SELECT count(*) FROM orders"),
        "5",
        "the DELETE ran"
    );
}

/// A bad log filter, log format or OTLP protocol stops each binary before it
/// reads its configuration, naming the variable and the value, instead of
/// being ignored.
#[test]
fn a_bad_telemetry_setting_stops_every_binary_naming_it() {
    let binaries: [(&str, &[&str]); 3] = [
        ("airlock-proxy", &["--config", "no-such.yaml"]),
        ("airlock-control", &["serve", "--config", "no-such.yaml"]),
        ("airlock-reviewer", &["--config", "no-such.yaml"]),
    ];
    let bad = [
        ("AIRLOCK_LOG", "info,airlock_proxy=loud"),
        ("AIRLOCK_LOG_FORMAT", "yaml"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ];
    for (binary, args) in binaries {
        for (var, value) in bad {
            let out = Command::new(fresh_binary(binary))
                .args(args)
                .env("AIRLOCK_LOG", "info")
                .env_remove("AIRLOCK_LOG_FORMAT")
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
                .env(var, value)
                .output()
                .expect("run the binary");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{binary} with {var}={value} ran: {stderr}");
            assert!(
                stderr.starts_with(&format!("{binary}: {var}=\"{value}\"")),
                "{binary} with {var}={value}: {stderr}"
            );
        }
    }
}

/// A held statement that a reviewer approves is one trace across the
/// processes: the proxy's append of the request (exported over
/// OTLP/HTTP), then in the control plane (over OTLP/gRPC) the fold of that
/// request as a child of the proxy's span, the vote, the grant's append and
/// its fold. Only the trace context in the event envelope links the two
/// processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_then_approved_statement_is_one_trace_across_proxy_log_and_control_plane() {
    use airlock_e2e::binaries::hold;
    use airlock_e2e::otlp::{ReceivedSpan, Receiver};

    let otlp = Receiver::start().await;
    let mut builder = StackBuilder::new().orders(20).reviewer();
    for (process, endpoint, protocol) in [
        (Process::Proxy, &otlp.http_endpoint, "http/protobuf"),
        (Process::Control, &otlp.grpc_endpoint, "grpc"),
        (Process::Reviewer, &otlp.grpc_endpoint, "grpc"),
    ] {
        builder = builder
            .env(process, "OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env(process, "OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env(process, "OTEL_BSP_SCHEDULE_DELAY", "100");
    }
    // Starting the stack blocks; the receiver goes on serving meanwhile.
    let stack = tokio::task::block_in_place(|| builder.start_binaries());

    let held = hold(&stack, &stack.agent_token(), "DELETE FROM orders WHERE id = 3").await;
    let request = held.request_id.clone();
    let alice = stack.user_token(ALICE);
    let url = format!("{}/api/v1/requests/{request}/approve", stack.reviewer_url);
    let http = reqwest::Client::new();
    // The control plane may not have folded the request yet.
    let status = eventually(
        "the request to be known to the reviewer",
        Duration::from_secs(10),
        || async {
            let answer = http
                .post(&url)
                .bearer_auth(&alice)
                .json(&serde_json::json!({"reason": "traced"}))
                .send()
                .await
                .expect("vote");
            satisfies(answer.status(), |s| *s != reqwest::StatusCode::NOT_FOUND)
        },
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let rows = tokio::time::timeout(Duration::from_secs(20), held.outcome)
        .await
        .expect("the statement finished")
        .expect("join")
        .expect("the approved DELETE ran");
    assert_eq!(rows, 1);

    let find = |spans: &[ReceivedSpan], service: &str, name: &str, kind: Option<&str>| {
        spans
            .iter()
            .find(|s| {
                s.service == service
                    && s.name == name
                    && kind.is_none_or(|k| s.attribute("kind") == Some(k))
                    && about(s, &request)
            })
            .cloned()
    };
    let expected = [
        ("airlock-proxy", "log.append", Some("approval_requested")),
        ("airlock-control", "control.fold", Some("approval_requested")),
        ("airlock-control", "control.vote", None),
        ("airlock-control", "log.append", Some("approval_granted")),
        ("airlock-control", "control.fold", Some("approval_granted")),
    ];
    let spans = otlp
        .wait_for(Duration::from_secs(30), |spans| {
            expected
                .iter()
                .all(|(service, name, kind)| find(spans, service, name, *kind).is_some())
        })
        .await;
    let [requested, folded, vote, granted, _] =
        expected.map(|(service, name, kind)| find(&spans, service, name, kind).expect("arrived"));
    assert_eq!((requested.via, folded.via), ("http/protobuf", "grpc"));

    // One trace: every span about this request is in the proxy's trace...
    for s in spans.iter().filter(|s| about(s, &request)) {
        assert_eq!(
            s.trace_id, requested.trace_id,
            "{} {} is in another trace",
            s.service, s.name
        );
    }
    // ...and the control plane's spans hang from the proxy's through the log.
    assert_eq!(folded.parent_span_id, requested.span_id, "fold under the append");
    assert_eq!(
        vote.parent_span_id, requested.span_id,
        "vote continues the request"
    );
    assert_eq!(granted.parent_span_id, vote.span_id, "grant appended by the vote");
}

/// Whether `span` is about request `id` (its field, or its log subject:
/// the request's own or its decision subject).
fn about(span: &airlock_e2e::otlp::ReceivedSpan, id: &str) -> bool {
    span.attribute("request") == Some(id)
        || span
            .attribute("subject")
            .is_some_and(|s| s.ends_with(&format!(".{id}")) || s.ends_with(&format!(".{id}.decision")))
}

/// Finding 15.6, through the real binaries: anyone who can publish on NATS
/// (the local setup has no NATS credentials) appends a correctly chained
/// `ApprovalGranted` for a held DELETE, unsigned or signed with a proxy's
/// key. The control plane does not fold it, the proxy does not run the
/// statement, the reviewer still sees the request pending, `verify` names
/// the forged events; a reviewer's real approval afterwards still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_published_by_anyone_but_the_control_plane_runs_nothing() {
    use airlock_e2e::binaries::hold;
    use airlock_eventlog::proto::event::Body;
    use airlock_eventlog::signing::Signer;
    use airlock_eventlog::{EventLog, NatsSettings, RequestId, new_event, subjects};

    let stack = tokio::task::block_in_place(|| StackBuilder::new().orders(20).start_binaries());
    let alice = stack.user_token(ALICE);
    let held = hold(&stack, &stack.agent_token(), "DELETE FROM orders WHERE id = 3").await;
    let view = stack.pending(&alice, |sql| sql.contains("id = 3")).await;
    let sha = view
        .request
        .as_ref()
        .and_then(|r| r.statement.as_ref())
        .map(|s| s.sha256.clone())
        .expect("the request names its digest");
    let request = RequestId::parse(&held.request_id).expect("request id");

    let forge = |signer: Option<Signer>| {
        let (nats, request, sha, session) = (
            stack.nats_url(),
            request.clone(),
            sha.clone(),
            view.session_id.clone(),
        );
        async move {
            let mut log = EventLog::connect(NatsSettings::new(nats)).await.expect("nats");
            if let Some(signer) = signer {
                log = log.with_signer(std::sync::Arc::new(signer));
            }
            let source = proto::Source {
                kind: proto::source::Kind::Control as i32,
                id: "control-1".into(),
                ..Default::default()
            };
            let mut grant = new_event(
                &source,
                Body::ApprovalGranted(proto::ApprovalGranted {
                    statement_sha256: sha,
                    ..Default::default()
                }),
            );
            grant.request_id = request.to_string();
            grant.session_id = session;
            log.append_next(&subjects::request(&request), grant)
                .await
                .expect("NATS stores the forged grant")
                .0
        }
    };
    forge(None).await;
    let proxy_key = Signer::load(&stack.dir.join("proxy-1-signing.key")).expect("the proxy's key");
    let forged = forge(Some(proxy_key)).await;

    // Give a wrongly trusting stack ample time to act on them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!held.outcome.is_finished(), "the statement is still held");
    assert_eq!(
        stack.pg.psql("shop", "SELECT count(*) FROM orders WHERE id = 3"),
        "1"
    );
    let mut reviewer = stack.reviewer().await;
    let now = reviewer
        .get_request(authed(
            &alice,
            proto::GetRequestRequest {
                request_id: held.request_id.clone(),
            },
        ))
        .await
        .expect("get request")
        .into_inner();
    assert_eq!(now.state(), proto::RequestState::Pending, "{now:?}");
    assert!(
        now.sequence < forged.sequence,
        "the forged events were not folded"
    );

    // verify names both forged events, and nothing else.
    let out = stack.control_command(&["verify"]).output().expect("verify");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify JSON");
    assert!(!out.status.success(), "{report}");
    assert_eq!(report["writers"]["refused"].as_u64(), Some(2), "{report}");
    let broken = report["broken"].as_array().expect("findings");
    assert_eq!(broken.len(), 2, "{report}");
    assert!(
        broken[0].as_str().is_some_and(|b| b.contains("not signed")),
        "{report}"
    );
    assert!(
        broken[1]
            .as_str()
            .is_some_and(|b| b.contains("approval_granted") && b.contains("proxy")),
        "{report}"
    );

    // A reviewer's approval still goes through, after the forgeries.
    stack
        .decide(
            &alice,
            vote(&held.request_id, proto::Decision::Approve, "checked"),
        )
        .await
        .expect("vote");
    let rows = tokio::time::timeout(Duration::from_secs(20), held.outcome)
        .await
        .expect("released")
        .expect("join")
        .expect("the approved DELETE ran");
    assert_eq!(rows, 1);
}
