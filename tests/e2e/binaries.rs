//! The real binaries: `airlock-dev-idp` issues tokens, `airlock-control
//! serve` verifies them and serves reviewers; `verify` and `identity check`
//! work for auditors and operators.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use airlock_e2e::authed;
use airlock_eventlog::proto;
use airlock_testkit::{NatsServer, free_port, workspace_binary};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {port}");
}

fn token(dir: &std::path::Path, issuer: &str, args: &[&str]) -> String {
    let out = Command::new(workspace_binary("airlock-dev-idp"))
        .arg("token")
        .arg("--key-file")
        .arg(dir.join("idp.key"))
        .args(["--issuer", issuer, "--audience", "api://airlock"])
        .args(args)
        .output()
        .expect("run airlock-dev-idp token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn control_plane_binary_serves_reviewers_with_real_tokens() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    let nats = NatsServer::start();
    let idp_port = free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let _idp = Child(
        Command::new(workspace_binary("airlock-dev-idp"))
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{idp_port}"), "--issuer", &issuer])
            .arg("--key-file")
            .arg(dir.join("idp.key"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start airlock-dev-idp"),
    );
    wait_port(idp_port);
    let control_port = free_port();
    let health_port = free_port();
    let config = dir.join("airlock.yaml");
    std::fs::write(
        &config,
        format!(
            "nats:\n  url: {}\nidentity:\n  issuer: {issuer}\n  audience: api://airlock\n  group_names:\n    db-reviewers: grp-reviewers\n\
             approvals:\n  reviewers: [db-reviewers]\ncontrol:\n  listen: 127.0.0.1:{control_port}\n  health_listen: 127.0.0.1:{health_port}\n",
            nats.url()
        ),
    )
    .expect("write config");
    let _control = Child(
        Command::new(workspace_binary("airlock-control"))
            .args(["serve", "--config"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .expect("start airlock-control"),
    );
    wait_port(control_port);

    let alice = token(
        &dir,
        &issuer,
        &[
            "--sub",
            "oid-alice",
            "--name",
            "Alice",
            "--group",
            "grp-reviewers",
        ],
    );
    let agent = token(
        &dir,
        &issuer,
        &[
            "--sub",
            "oid-agent",
            "--name",
            "agent-7",
            "--app",
            "--group",
            "grp-agents",
        ],
    );
    let mut reviewer = proto::reviewer_service_client::ReviewerServiceClient::connect(format!(
        "http://127.0.0.1:{control_port}"
    ))
    .await
    .expect("connect");
    let mut listed = None;
    for _ in 0..50 {
        match reviewer
            .list_requests(authed(&alice, proto::ListRequestsRequest::default()))
            .await
        {
            Ok(r) => {
                listed = Some(r.into_inner());
                break;
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("list refused: {s:?}"),
        }
    }
    assert!(listed.expect("listed").requests.is_empty());
    let err = reviewer
        .list_requests(authed("not-a-token", proto::ListRequestsRequest::default()))
        .await
        .expect_err("garbage refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // An operator checks the agent's token.
    let mut check = Command::new(workspace_binary("airlock-control"))
        .args(["identity", "check", "--config"])
        .arg(&config)
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
    wait_port(health_port);
    let mut health = std::net::TcpStream::connect(("127.0.0.1", health_port)).expect("health");
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
    let out = Command::new(workspace_binary("airlock-control"))
        .args(["replay", "--config"])
        .arg(&config)
        .output()
        .expect("replay");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("\"anomalies\": 0") && report.contains("\"events\""),
        "{report}"
    );

    // The auditor's verify passes on an untouched log.
    let out = Command::new(workspace_binary("airlock-control"))
        .args(["verify", "--config"])
        .arg(&config)
        .output()
        .expect("verify");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("\"ok\": true"), "{report}");
}

/// A CA, a control-plane server certificate and a proxy client certificate,
/// written as PEM files into `dir`; and a client certificate no CA vouches for.
fn write_certificates(dir: &std::path::Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "airlock test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).expect("write");
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).expect("sign");
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write");
    };
    leaf(
        "control",
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    leaf("proxy-1", vec![], ExtendedKeyUsagePurpose::ClientAuth);
    let rogue = rcgen::generate_simple_self_signed(vec!["rogue".into()]).expect("rogue");
    std::fs::write(dir.join("rogue.crt"), rogue.cert.pem()).expect("write");
    std::fs::write(dir.join("rogue.key"), rogue.signing_key.serialize_pem()).expect("write");
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
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    write_certificates(&dir);
    let nats = NatsServer::start();
    let pg = airlock_testkit::Postgres::start();
    pg.create_database("shop");
    pg.create_role("maint", "maint-secret");
    pg.psql(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 10); \
         GRANT ALL ON orders TO maint",
    );
    let idp_port = free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let _idp = Child(
        Command::new(workspace_binary("airlock-dev-idp"))
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{idp_port}"), "--issuer", &issuer])
            .arg("--key-file")
            .arg(dir.join("idp.key"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start airlock-dev-idp"),
    );
    wait_port(idp_port);
    let (control_port, proxy_port) = (free_port(), free_port());
    let d = dir.display();
    let config = format!(
        "nats:\n  url: {nats}\nidentity:\n  issuer: {issuer}\n  audience: api://airlock\n\
         \x20 group_names:\n    agents: grp-agents\n    reviewers: grp-reviewers\n\
         approvals:\n  reviewers: [reviewers]\n\
         control:\n  listen: 127.0.0.1:{control_port}\n  tls: {{ cert: {d}/control.crt, key: {d}/control.key, client_ca: {d}/ca.crt }}\n\
         proxy:\n  listen: 127.0.0.1:{proxy_port}\n  control: https://localhost:{control_port}\n  allow_plaintext_loopback: true\n\
         \x20 control_tls: {{ ca: {d}/ca.crt, cert: {d}/proxy-1.crt, key: {d}/proxy-1.key }}\n\
         connections:\n  - name: shop\n    upstream: postgres://maint@127.0.0.1:{pg}/shop\n    password_env: MAINT_PASSWORD\n\
         policies:\n  - policy: agents\n    connection: shop\n    rules:\n      - match: SELECT\n        action: allow\n\
         \x20     - match: DELETE\n        action: require-approval\n    record: true\n",
        nats = nats.url(),
        pg = pg.port(),
    );
    std::fs::write(dir.join("airlock.yaml"), config).expect("config");
    let _control = Child(
        Command::new(workspace_binary("airlock-control"))
            .args(["serve", "--config"])
            .arg(dir.join("airlock.yaml"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start airlock-control"),
    );
    wait_port(control_port);
    let _proxy = Child(
        Command::new(workspace_binary("airlock-proxy"))
            .arg("--config")
            .arg(dir.join("airlock.yaml"))
            .env("MAINT_PASSWORD", "maint-secret")
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start airlock-proxy"),
    );
    wait_port(proxy_port);

    // Not a proxy: no client certificate, or one no CA vouches for.
    let no_cert = tls_channel(control_port, &dir, None)
        .await
        .expect("TLS without a client cert");
    let err = try_attach(no_cert).await.expect_err("no certificate, no Attach");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("client certificate"), "{}", err.message());
    let rogue = match tls_channel(control_port, &dir, Some("rogue")).await {
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
    let agent = token(
        &dir,
        &issuer,
        &[
            "--sub",
            "oid-agent",
            "--name",
            "agent",
            "--app",
            "--group",
            "grp-agents",
        ],
    );
    let alice = token(
        &dir,
        &issuer,
        &[
            "--sub",
            "oid-alice",
            "--name",
            "Alice",
            "--group",
            "grp-reviewers",
        ],
    );
    let held = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={proxy_port} dbname=shop user=agent sslmode=disable"
        ))
        .args(["-X", "-c", "DELETE FROM orders WHERE id > 5"])
        .env("PGPASSWORD", &agent)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    let channel = tls_channel(control_port, &dir, None).await.expect("reviewer TLS");
    let mut reviewer = proto::reviewer_service_client::ReviewerServiceClient::new(channel);
    let mut pending = Vec::new();
    for _ in 0..100 {
        pending = reviewer
            .list_requests(authed(
                &alice,
                proto::ListRequestsRequest {
                    states: vec![proto::RequestState::Pending as i32],
                    ..Default::default()
                },
            ))
            .await
            .map(|r| r.into_inner().requests)
            .unwrap_or_default();
        if !pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let request = pending.first().expect("the DELETE is held");
    reviewer
        .decide(authed(
            &alice,
            proto::DecideRequest {
                request_id: request.request_id.clone(),
                decision: proto::Decision::Approve as i32,
                reason: "over mTLS".into(),
                statement_sha256: vec![],
            },
        ))
        .await
        .expect("approve");
    let out = tokio::task::spawn_blocking(move || held.wait_with_output())
        .await
        .expect("join")
        .expect("psql output");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM orders"),
        "5",
        "the DELETE ran"
    );
}

/// A bad log filter, log format or OTLP protocol stops each binary before it
/// reads its configuration, naming the variable and the value, instead of
/// being ignored.
#[test]
fn a_bad_telemetry_setting_stops_every_binary_naming_it() {
    use airlock_e2e::binaries::fresh_binary;
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
    use airlock_e2e::binaries::{ALICE, Options, ReviewerStack, hold};
    use airlock_e2e::otlp::{ReceivedSpan, Receiver};

    let otlp = Receiver::start().await;
    let export = |endpoint: &str, protocol: &str| {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec()
    };
    let options = Options {
        proxy_env: export(&otlp.http_endpoint, "http/protobuf"),
        control_env: export(&otlp.grpc_endpoint, "grpc"),
        reviewer_env: export(&otlp.grpc_endpoint, "grpc"),
        ..Options::default()
    };
    // Starting the stack blocks; the receiver goes on serving meanwhile.
    let stack = tokio::task::block_in_place(|| ReviewerStack::start(options));

    let held = hold(&stack, &stack.agent_token(), "DELETE FROM orders WHERE id = 3").await;
    let request = held.request_id.clone();
    let alice = stack.user_token(ALICE);
    let url = format!("{}/api/v1/requests/{request}/approve", stack.reviewer_url);
    let http = reqwest::Client::new();
    let mut status = None;
    // The control plane may not have folded the request yet.
    for _ in 0..200 {
        let answer = http
            .post(&url)
            .bearer_auth(&alice)
            .json(&serde_json::json!({"reason": "traced"}))
            .send()
            .await
            .expect("vote");
        if answer.status() != reqwest::StatusCode::NOT_FOUND {
            status = Some(answer.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, Some(reqwest::StatusCode::OK));
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

/// Whether `span` is about request `id` (its field, or its log subject).
fn about(span: &airlock_e2e::otlp::ReceivedSpan, id: &str) -> bool {
    span.attribute("request") == Some(id)
        || span
            .attribute("subject")
            .is_some_and(|s| s.ends_with(&format!(".{id}")))
}
