//! `airlock-control forward`: the log streamed to a SIEM by the real
//! binary, against receivers in this test (an HTTPS endpoint, a syslog
//! listener over TLS). Every event arrives (at least once; after dropping
//! repeats by event id, exactly the log's events) across a forwarder killed
//! mid-stream and started again, and across a receiver down for 30 s; a
//! record the receiver refuses is parked, counted and does not hold up the
//! rest; OCSF records, forwarded and exported, validate against OCSF's
//! JSON Schema for their classes (OCSF 1.3.0 as compiled by the OCSF
//! project, in the `ocsf-json-schema` package from PyPI).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_e2e::binaries::{ALICE, BinaryStack, fresh_binary};
use airlock_e2e::{StackBuilder, eventually};
use airlock_testkit::TestCa;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const RULES: &str = "      - match: SELECT
        action: allow
      - match: DELETE
        action: require-approval
      - match: DROP
        action: deny
";

/// A record the HTTPS receiver refuses (413), wherever it appears.
const REFUSED: &str = "PARK_ME_PLEASE";

fn start() -> BinaryStack {
    tokio::task::block_in_place(|| {
        StackBuilder::new()
            .orders(20)
            .rules(RULES)
            .reviewer()
            .start_binaries()
    })
}

fn tls_acceptor(ca: &TestCa) -> tokio_rustls::TlsAcceptor {
    let files = ca.server("siem");
    let cert = rustls::pki_types::pem::PemObject::pem_file_iter(&files.cert)
        .expect("cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("cert");
    let key = rustls::pki_types::pem::PemObject::from_pem_file(&files.key).expect("key");
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(cert, key)
            .expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Accepts TLS connections for axum, handshakes inline (a test's load).
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Ok((tcp, addr)) = self.tcp.accept().await
                && let Ok(tls) = self.acceptor.accept(tcp).await
            {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// An HTTPS SIEM endpoint: keeps every record of every batch it accepts.
struct Receiver {
    port: u16,
    acceptor: tokio_rustls::TlsAcceptor,
    records: Arc<Mutex<Vec<Value>>>,
    batches: Arc<Mutex<u64>>,
    server: Option<JoinHandle<()>>,
}

impl Receiver {
    async fn start(ca: &TestCa) -> Receiver {
        let mut r = Receiver {
            port: 0,
            acceptor: tls_acceptor(ca),
            records: Arc::default(),
            batches: Arc::default(),
            server: None,
        };
        r.up().await;
        r
    }

    async fn up(&mut self) {
        let tcp = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the receiver");
        self.port = tcp.local_addr().unwrap().port();
        let (records, batches) = (self.records.clone(), self.batches.clone());
        let app = Router::new().route(
            "/ingest",
            post(move |axum::Json(batch): axum::Json<Vec<Value>>| {
                let (records, batches) = (records.clone(), batches.clone());
                async move {
                    if batch.iter().any(|r| r.to_string().contains(REFUSED)) {
                        return StatusCode::PAYLOAD_TOO_LARGE;
                    }
                    records.lock().unwrap().extend(batch);
                    *batches.lock().unwrap() += 1;
                    StatusCode::OK
                }
            }),
        );
        let listener = TlsListener {
            tcp,
            acceptor: self.acceptor.clone(),
        };
        self.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    /// Down: the port refuses connections (and open ones end).
    async fn down(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
            let _ = s.await;
        }
    }

    fn ids(&self) -> Vec<String> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .map(|r| r["event"]["id"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

/// Starts `airlock-control forward` with `args`; its log is appended to
/// `forward.log` in the stack's directory.
fn forwarder(stack: &BinaryStack, args: &[&str]) -> tokio::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stack.dir.join("forward.log"))
        .expect("the forwarder's log");
    tokio::process::Command::new(fresh_binary("airlock-control"))
        .arg("forward")
        .arg("--config")
        .arg(stack.config())
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start the forwarder")
}

/// Sessions doing reads, and one DELETE held and approved.
async fn traffic(stack: &BinaryStack, sessions: usize, tag: &str) {
    let token = stack.agent_token();
    for s in 0..sessions {
        let (client, _notices) = stack.connect(&token).await;
        for i in 0..4 {
            client
                .simple_query(&format!("SELECT {i} AS n, '{tag}-{s}' AS tag"))
                .await
                .expect("a read runs");
        }
        drop(client);
    }
}

async fn approve_a_delete(stack: &BinaryStack, id: i32) {
    let token = stack.agent_token();
    let held = airlock_e2e::binaries::hold(
        stack,
        &token,
        &format!("DELETE FROM public.orders WHERE id = {id}"),
    )
    .await;
    let alice = stack.user_token(ALICE);
    let status = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/requests/{}/approve",
            stack.reviewer_url, held.request_id
        ))
        .bearer_auth(&alice)
        .json(&json!({"reason": "ticket"}))
        .send()
        .await
        .expect("approve")
        .status();
    assert_eq!(status.as_u16(), 200);
    held.outcome
        .await
        .expect("the session's task")
        .expect("the approved DELETE ran");
}

/// The ids of the events the receiver should get: all but the refused.
fn wanted(logged: &[Value]) -> HashSet<String> {
    logged
        .iter()
        .filter(|l| !l.to_string().contains(REFUSED))
        .map(|l| l["event"]["id"].as_str().unwrap().to_owned())
        .collect()
}

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.airlock/tools/venv/bin/python");
    assert!(
        p.is_file(),
        "the OCSF schema check is missing: run ./deploy/local/install-deps.sh (installs ocsf-json-schema)"
    );
    p
}

/// Checks `records` against OCSF 1.3.0's JSON Schema; returns the summary.
fn validate_ocsf(records: &[Value]) -> Value {
    use std::io::Write;
    let mut child = std::process::Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/ocsf_validate.py"))
        .arg("1.3.0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run the OCSF check");
    {
        let mut stdin = child.stdin.take().unwrap();
        for r in records {
            writeln!(stdin, "{r}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "OCSF records do not validate:\n{text}");
    serde_json::from_str(text.lines().last().expect("a summary")).expect("the summary")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_reaches_the_siem_across_a_forwarder_restart_and_a_30s_outage() {
    let stack = start();
    let ca = TestCa::new("siem-ca");
    let mut receiver = Receiver::start(&ca).await;
    let park = stack.dir.join("parked.jsonl");
    let url = format!("https://localhost:{}/ingest", receiver.port);
    let args = [
        "--to",
        &url,
        "--ca",
        &ca.ca().display().to_string(),
        "--format",
        "native",
        "--name",
        "siem",
        "--batch",
        "7",
        "--max-backoff",
        "2s",
        "--park",
        &park.display().to_string(),
    ];
    let args: Vec<&str> = args.to_vec();
    let mut forward = forwarder(&stack, &args);

    traffic(&stack, 4, "first").await;
    // A record the receiver refuses: parked, and the rest still go.
    let (client, _n) = stack.connect(&stack.agent_token()).await;
    client
        .simple_query(&format!("SELECT '{REFUSED}'"))
        .await
        .expect("runs");
    drop(client);
    approve_a_delete(&stack, 1).await;
    eventually("the first records to arrive", Duration::from_secs(30), || async {
        receiver.ids().len() > 20
    })
    .await;

    // Killed mid-stream, while events keep coming; started again.
    forward.kill().await.expect("kill the forwarder");
    traffic(&stack, 3, "while-stopped").await;
    let mut forward = forwarder(&stack, &args);

    // Caught up after the restart, then the receiver down for 30 s while
    // events keep coming.
    let so_far = wanted(&stack.export("jsonl"));
    eventually(
        "the restarted forwarder to catch up",
        Duration::from_secs(30),
        || async { so_far.is_subset(&receiver.ids().into_iter().collect()) },
    )
    .await;

    // Killed while it retries a batch the receiver did not take, started
    // again at once with newer events waiting: the unsent batch is not
    // taken as acknowledged with the newer ones.
    receiver.down().await;
    traffic(&stack, 2, "unsent").await;
    let log = stack.dir.join("forward.log");
    eventually(
        "the forwarder to retry a batch",
        Duration::from_secs(30),
        || async { std::fs::read_to_string(&log).is_ok_and(|l| l.contains("did not take the batch")) },
    )
    .await;
    forward.kill().await.expect("kill the forwarder");
    receiver.up().await;
    traffic(&stack, 2, "after-the-kill").await;
    let mut forward = forwarder(&stack, &args);
    let so_far = wanted(&stack.export("jsonl"));
    eventually(
        "the unsent batch to arrive after the restart",
        Duration::from_secs(30),
        || async { so_far.is_subset(&receiver.ids().into_iter().collect()) },
    )
    .await;

    receiver.down().await;
    let down_at = receiver.ids().len();
    traffic(&stack, 3, "while-down").await;
    approve_a_delete(&stack, 2).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        receiver.ids().len(),
        down_at,
        "nothing arrives while the receiver is down"
    );
    receiver.up().await;

    let logged: Vec<Value> = stack.export("jsonl");
    let want = wanted(&logged);
    eventually(
        "every event to reach the receiver",
        Duration::from_secs(60),
        || async {
            let got: HashSet<String> = receiver.ids().into_iter().collect();
            want.is_subset(&got)
        },
    )
    .await;
    forward.kill().await.expect("stop");

    let ids = receiver.ids();
    let got: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(
        got, want,
        "after dropping repeats: exactly the log's events, but the refused one"
    );
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *counts.entry(id).or_default() += 1;
    }
    let repeats = ids.len() - got.len();
    eprintln!(
        "{} records for {} events ({repeats} repeats)",
        ids.len(),
        got.len()
    );
    // The same event's record is the same bytes each time it is sent.
    let records = receiver.records.lock().unwrap().clone();
    for r in &records {
        let twin = records
            .iter()
            .find(|o| o["event"]["id"] == r["event"]["id"])
            .unwrap();
        assert_eq!(r, twin);
    }

    // The refused record: parked once, with why, and counted in the log.
    let parked = std::fs::read_to_string(&park).expect("the park file");
    let parked: Vec<Value> = parked.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert!(
        parked[0]["reason"].as_str().unwrap().contains("413"),
        "{parked:?}"
    );
    assert!(parked[0]["record"].to_string().contains(REFUSED));
    let logged_ids: HashSet<String> = logged
        .iter()
        .map(|l| l["event"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(logged_ids.contains(parked[0]["id"].as_str().unwrap()));
}

/// A syslog listener over TLS: keeps each message, octet-counted.
async fn syslog_listener(ca: &TestCa) -> (u16, Arc<Mutex<Vec<String>>>) {
    let acceptor = tls_acceptor(ca);
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let messages: Arc<Mutex<Vec<String>>> = Arc::default();
    let keep = messages.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = tcp.accept().await else {
                continue;
            };
            let (acceptor, keep) = (acceptor.clone(), keep.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(conn).await else {
                    return;
                };
                let mut reader = BufReader::new(tls);
                loop {
                    // MSG-LEN SP SYSLOG-MSG (RFC 5425).
                    let mut len = Vec::new();
                    if reader.read_until(b' ', &mut len).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let n: usize = String::from_utf8_lossy(&len)
                        .trim()
                        .parse()
                        .expect("an octet count");
                    let mut msg = vec![0u8; n];
                    if reader.read_exact(&mut msg).await.is_err() {
                        return;
                    }
                    keep.lock().unwrap().push(String::from_utf8(msg).expect("UTF-8"));
                }
            });
        }
    });
    (port, messages)
}

#[tokio::test(flavor = "multi_thread")]
async fn ocsf_records_over_syslog_and_from_export_validate_against_the_ocsf_schema() {
    let stack = start();
    let ca = TestCa::new("syslog-ca");
    let (port, messages) = syslog_listener(&ca).await;
    let to = format!("syslog+tls://localhost:{port}");
    let mut forward = forwarder(
        &stack,
        &[
            "--to",
            &to,
            "--ca",
            &ca.ca().display().to_string(),
            "--format",
            "ocsf",
            "--name",
            "syslog",
        ],
    );

    traffic(&stack, 2, "ocsf").await;
    approve_a_delete(&stack, 3).await;
    // Denied by a reviewer, and refused by policy.
    let token = stack.agent_token();
    let held = airlock_e2e::binaries::hold(&stack, &token, "DELETE FROM public.orders WHERE id = 4").await;
    reqwest::Client::new()
        .post(format!(
            "{}/api/v1/requests/{}/deny",
            stack.reviewer_url, held.request_id
        ))
        .bearer_auth(stack.user_token(ALICE))
        .json(&json!({"reason": "no"}))
        .send()
        .await
        .expect("deny");
    assert!(held.outcome.await.expect("the session's task").is_err(), "denied");
    let (client, _n) = stack.connect(&token).await;
    assert!(client.simple_query("DROP TABLE public.orders").await.is_err());
    drop(client);

    let exported = stack.export("ocsf");
    let want: HashSet<String> = exported
        .iter()
        .map(|r| r["metadata"]["uid"].as_str().unwrap().to_owned())
        .collect();
    let records = || -> Vec<Value> {
        messages
            .lock()
            .unwrap()
            .iter()
            .map(|m| {
                assert!(m.starts_with("<"), "{m}");
                let json = &m[m.find("] ").expect("structured data, then the message") + 2..];
                serde_json::from_str(
                    json.strip_prefix('\u{feff}')
                        .expect("a BOM before the UTF-8 message"),
                )
                .expect("the message is an OCSF record")
            })
            .collect()
    };
    eventually("every record over syslog", Duration::from_secs(60), || async {
        let got: HashSet<String> = records()
            .iter()
            .map(|r| r["metadata"]["uid"].as_str().unwrap().to_owned())
            .collect();
        want.is_subset(&got)
    })
    .await;
    forward.kill().await.expect("stop");

    // RFC 5424 headers: authpriv, version 1, the kind as MSGID.
    for m in messages.lock().unwrap().iter() {
        let header: Vec<&str> = m.splitn(7, ' ').collect();
        assert!(header[0].starts_with("<8") && header[0].ends_with(">1"), "{m}");
        assert_eq!(header[3], "airlock");
    }
    let forwarded = records();
    let summary = validate_ocsf(&forwarded);
    assert_eq!(summary["invalid"], 0);
    assert_eq!(summary["classes"], json!([3002, 6002, 6005]), "{summary}");
    let summary = validate_ocsf(&exported);
    assert_eq!(summary["records"].as_u64(), Some(exported.len() as u64));

    // What an auditor reads: the approved DELETE with its agent, the
    // denial, the refusal.
    let deleted = exported
        .iter()
        .find(|r| r["activity_id"] == 7 && r["status_id"] == 1)
        .expect("the approved DELETE ran");
    assert_eq!(deleted["actor"]["user"]["uid"], "oid-agent-7");
    assert_eq!(deleted["database"]["name"], "prod-maintenance");
    assert!(deleted["metadata"]["correlation_uid"].as_str().is_some());
    assert!(
        exported
            .iter()
            .any(|r| r["activity_name"] == "Approval Denied" && r["severity_id"] == 3)
    );
    let refused = exported
        .iter()
        .find(|r| r["status_detail"] == "CAUSE_POLICY")
        .expect("the DROP refused by policy");
    assert_eq!(refused["status_code"], "42501");
    assert!(
        exported
            .iter()
            .any(|r| r["class_uid"] == 3002 && r["activity_id"] == 1)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn splunk_hec_gets_every_record_with_its_token_and_event_time() {
    let stack = start();
    let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let keep = got.clone();
    let app = Router::new().route(
        "/services/collector/event",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let keep = keep.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                if auth != "Splunk hec-token-for-this-test" {
                    return (StatusCode::FORBIDDEN, "{\"code\":4}");
                }
                // HEC's batch form: event objects one after another.
                let mut events = serde_json::Deserializer::from_str(&body).into_iter::<Value>();
                let mut out = keep.lock().unwrap();
                for e in events.by_ref() {
                    out.push((auth.clone(), e.expect("a JSON event object")));
                }
                (StatusCode::OK, "{\"text\":\"Success\",\"code\":0}")
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    traffic(&stack, 2, "splunk").await;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stack.dir.join("forward.log"))
        .unwrap();
    let mut forward = tokio::process::Command::new(fresh_binary("airlock-control"))
        .arg("forward")
        .arg("--config")
        .arg(stack.config())
        .args([
            "--to",
            &format!("splunk+http://127.0.0.1:{port}"),
            "--format",
            "ocsf",
            "--name",
            "splunk",
        ])
        .env("SPLUNK_HEC_TOKEN", "hec-token-for-this-test")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start the forwarder");
    let want: HashSet<String> = stack
        .export("ocsf")
        .iter()
        .map(|r| r["metadata"]["uid"].as_str().unwrap().to_owned())
        .collect();
    eventually("every record in Splunk", Duration::from_secs(60), || async {
        let ids: HashSet<String> = got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, e)| e["event"]["metadata"]["uid"].as_str().unwrap_or("").to_owned())
            .collect();
        want.is_subset(&ids)
    })
    .await;
    forward.kill().await.expect("stop");
    for (_, e) in got.lock().unwrap().iter() {
        assert_eq!(e["source"], "airlock");
        assert_eq!(e["sourcetype"], "airlock:event");
        let ms = e["event"]["time"].as_i64().expect("the record's time");
        let secs = e["time"].as_f64().expect("HEC time in seconds");
        assert!((secs * 1000.0 - ms as f64).abs() < 1.0, "{secs} vs {ms}");
    }
}
