//! The proxy between real clients and a real PostgreSQL, with a test double
//! for identity and policy (the real ones are tested in their own crates).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_eventlog::proto;
use airlock_eventlog::proto::event::Body;
use airlock_eventlog::signing::Trust;
use airlock_eventlog::{EventLog, NatsSettings, ReadFilter};
use airlock_proxy::attach::Holds;
use airlock_proxy::gate::{Action, Agent, Binding, BoxFuture, Gate, HoldSpec, Judgement, Refusal};
use airlock_proxy::record::Recorder;
use airlock_proxy::server::{Server, ServerSettings, TlsFiles};
use airlock_proxy::session::Deps;
use airlock_proxy::upstream::{Secret, UpstreamConfig};
use airlock_testkit::{NatsServer, Postgres, PostgresOptions, eventually, satisfies};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

const TOKEN: &str = "token-of-agent-7";

/// Accepts one token; binds database `shop`; denies DROP, holds DELETE.
/// What a held statement gets when no control plane is attached: 57P03,
/// "cannot connect now" (the tests here run no control plane, so a held
/// statement is refused, never run).
const HELD_WITHOUT_CONTROL: &str = "57P03";

struct TestGate {
    upstream: UpstreamConfig,
}

impl Gate for TestGate {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Agent, Refusal>> {
        Box::pin(async move {
            if token == TOKEN {
                Ok(Agent {
                    identity: proto::Identity {
                        subject: "oid-agent-7".into(),
                        display_name: "agent-7".into(),
                        kind: proto::identity::Kind::App as i32,
                        ..Default::default()
                    },
                })
            } else {
                Err(Refusal::bad_token("token refused: bad signature"))
            }
        })
    }

    fn bind(&self, agent: &Agent, database: &str) -> Result<Binding, Refusal> {
        if database == "shop" {
            Ok(Binding {
                connection: "shop".into(),
                upstream: self.upstream.clone(),
                policies: vec![proto::PolicyRef {
                    name: "db-maintenance-agents".into(),
                    digest: "test".into(),
                }],
                record: true,
                session: Default::default(),
            })
        } else {
            Err(Refusal::unauthenticated(format!(
                "no policy binds {} to connection \"{database}\"",
                agent.identity.display_name
            )))
        }
    }

    fn policy_generation(&self) -> u64 {
        0
    }

    fn judge(&self, _: &Binding, sql: &str) -> Judgement {
        let upper = sql.to_uppercase();
        let action = if upper.contains("DROP") {
            Action::Deny {
                message:
                    "refused by policy db-maintenance-agents, rule 3 (DROP): schema changes are not allowed"
                        .into(),
            }
        } else if upper.contains("DELETE") {
            Action::Hold(Box::new(HoldSpec {
                approvals: 1,
                reviewers: vec![],
                timeout: Duration::from_secs(60),
                require_acrs: vec![],
                plan: Err("the test gate reads no catalog".into()),
                dry_run: None,
                fingerprint: Default::default(),
                break_glass: None,
                max_grant_ttl: None,
            }))
        } else {
            Action::Allow
        };
        Judgement::only(action, proto::Verdict::default())
    }
}

struct Fixture {
    pg: Postgres,
    addr: SocketAddr,
    log: EventLog,
    holds: Arc<Holds>,
    nats: NatsServer,
    _server: tokio::task::JoinHandle<()>,
}

async fn start(settings: impl FnOnce(&mut ServerSettings)) -> Fixture {
    start_with_gate(settings, |upstream| Arc::new(TestGate { upstream })).await
}

async fn start_with_gate(
    settings: impl FnOnce(&mut ServerSettings),
    gate: impl FnOnce(UpstreamConfig) -> Arc<dyn Gate>,
) -> Fixture {
    start_trusting(settings, gate, None).await
}

/// A fixture whose proxy trusts exactly `trust` (as a configured proxy
/// does) when given; otherwise it takes the log's word.
async fn start_trusting(
    settings: impl FnOnce(&mut ServerSettings),
    gate: impl FnOnce(UpstreamConfig) -> Arc<dyn Gate>,
    trust: Option<Trust>,
) -> Fixture {
    start_recording(settings, gate, trust, 1024).await
}

/// The fixture with a record buffer of `capacity` events.
async fn start_recording(
    settings: impl FnOnce(&mut ServerSettings),
    gate: impl FnOnce(UpstreamConfig) -> Arc<dyn Gate>,
    trust: Option<Trust>,
    capacity: usize,
) -> Fixture {
    let pg = Postgres::start_with(PostgresOptions::default().setting("log_statement", "all"));
    pg.create_database("shop");
    pg.create_role("maint", "maint-secret");
    pg.psql(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, total int); INSERT INTO orders SELECT g, g * 10 FROM generate_series(1, 5) g; \
         GRANT ALL ON orders TO maint",
    );
    let upstream = UpstreamConfig {
        tls: Default::default(),
        host: "127.0.0.1".into(),
        port: pg.port(),
        user: "maint".into(),
        database: "shop".into(),
        password: Some(Secret::new("maint-secret")),
        token: None,
        connect_timeout: Duration::from_secs(5),
    };
    let mut s = ServerSettings::new("127.0.0.1:0".parse().expect("addr"));
    s.allow_plaintext_loopback = true;
    settings(&mut s);
    let server = Server::bind(s).await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let nats = NatsServer::start();
    let mut log = EventLog::connect(NatsSettings::new(nats.url()))
        .await
        .expect("nats");
    if let Some(trust) = trust {
        log = log.with_trust(Arc::new(trust));
    }
    log.ensure_stream().await.expect("stream");
    let holds = Holds::new();
    let deps = Deps {
        gate: gate(upstream),
        log: log.clone(),
        recorder: Recorder::spawn(log.clone(), 2, capacity, Duration::from_millis(2)),
        // Not attached unless a test attaches it.
        holds: holds.clone(),
        source: proto::Source {
            kind: proto::source::Kind::Proxy as i32,
            id: "proxy-test".into(),
            ..Default::default()
        },
        reviewer_url: None,
        expiry_grace: Duration::from_secs(2),
        impact: Default::default(),
        cancels: airlock_proxy::cancel::Cancels::new(),
        metrics: airlock_proxy::metrics::Metrics::new(&Default::default()),
        phase: tokio::sync::watch::channel(airlock_proxy::session::Phase::Running).1,
    };
    let handle = tokio::spawn(server.run(Arc::new(deps)));
    Fixture {
        pg,
        addr,
        log,
        holds,
        nats,
        _server: handle,
    }
}

fn config(addr: SocketAddr, password: &str, db: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(addr.port())
        .user("agent-7")
        .password(password)
        .dbname(db)
        .ssl_mode(tokio_postgres::config::SslMode::Disable)
        .connect_timeout(Duration::from_secs(5));
    c
}

async fn connect(addr: SocketAddr) -> Client {
    let (client, conn) = config(addr, TOKEN, "shop")
        .connect(NoTls)
        .await
        .expect("connect through proxy");
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn allowed_reads_return_rows_over_both_protocols() {
    let f = start(|_| {}).await;
    let client = connect(f.addr).await;
    let rows = client
        .query(
            "SELECT id, total FROM orders WHERE id <= $1 ORDER BY id",
            &[&3i32],
        )
        .await
        .expect("extended-protocol select");
    assert_eq!(
        rows.iter().map(|r| r.get::<_, i32>(1)).collect::<Vec<_>>(),
        vec![10, 20, 30]
    );
    let simple = client
        .simple_query("SELECT count(*) FROM orders")
        .await
        .expect("simple select");
    let count = simple.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(count.as_deref(), Some("5"));
}

#[tokio::test]
async fn a_denied_drop_is_an_error_and_the_session_goes_on() {
    let f = start(|_| {}).await;
    let client = connect(f.addr).await;
    for sql in ["DROP TABLE orders", "drop table orders"] {
        let err = client.simple_query(sql).await.expect_err("DROP must be refused");
        let db = err
            .as_db_error()
            .expect("a server error, not a dropped connection");
        assert_eq!(db.code(), &SqlState::INSUFFICIENT_PRIVILEGE);
        assert!(db.message().contains("rule 3 (DROP)"), "{}", db.message());
    }
    // Extended protocol too.
    let err = client
        .execute("DROP TABLE orders", &[])
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    // The session goes on, and the table is still there.
    let rows = client
        .query("SELECT count(*) FROM orders", &[])
        .await
        .expect("next statement works");
    assert_eq!(rows[0].get::<_, i64>(0), 5);
    assert_eq!(f.pg.psql("shop", "SELECT count(*) FROM orders"), "5");
    assert!(
        !f.pg.server_log().contains("DROP TABLE orders"),
        "the upstream never saw the DROP"
    );
}

#[tokio::test]
async fn a_refusal_inside_a_transaction_aborts_it_as_postgres_would() {
    let f = start(|_| {}).await;
    let client = connect(f.addr).await;
    client.simple_query("BEGIN").await.expect("begin");
    client
        .simple_query("INSERT INTO orders VALUES (100, 1)")
        .await
        .expect("insert in transaction");
    let err = client
        .simple_query("DROP TABLE orders")
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    let err = client
        .simple_query("SELECT 1")
        .await
        .expect_err("transaction is aborted");
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    client.simple_query("COMMIT").await.expect("commit (rolls back)");
    assert_eq!(
        f.pg.psql("shop", "SELECT count(*) FROM orders WHERE id = 100"),
        "0"
    );
}

#[tokio::test]
async fn without_a_control_plane_a_gated_statement_fails_closed() {
    let f = start(|_| {}).await;
    let client = connect(f.addr).await;
    let err = client
        .simple_query("DELETE FROM orders")
        .await
        .expect_err("fails closed");
    // 57P03, "cannot connect now": retryable once the control plane is back.
    assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW));
    assert!(
        db_message(&err).contains("control plane is unreachable"),
        "{}",
        db_message(&err)
    );
    assert_eq!(f.pg.psql("shop", "SELECT count(*) FROM orders"), "5");
    assert!(!f.pg.server_log().contains("DELETE FROM orders"));
}

#[tokio::test]
async fn the_session_is_recorded_in_the_log() {
    let f = start(|_| {}).await;
    let client = connect(f.addr).await;
    client
        .simple_query("SELECT count(*) FROM orders")
        .await
        .expect("select");
    client
        .query("SELECT id FROM orders WHERE id = $1", &[&2i32])
        .await
        .expect("extended select");
    let _ = client.simple_query("DROP TABLE orders").await;
    drop(client);
    let want = [
        "session_opened",
        "statement_executed",
        "statement_executed",
        "statement_refused",
        "session_closed",
    ];
    let (events, singles) = eventually("the session's events", Duration::from_secs(5), || async {
        let stream = f
            .log
            .read(0, ReadFilter::subject("airlock.v1.session.*"))
            .await
            .expect("read");
        futures::pin_mut!(stream);
        let mut events = Vec::new();
        // Statements recorded together count as the single events they
        // stand for.
        let mut singles = Vec::new();
        while let Some(e) = stream.next().await {
            let e = e.expect("event");
            singles.extend(airlock_eventlog::split_group(&e.event));
            events.push(e);
        }
        let kinds: Vec<&str> = singles
            .iter()
            .map(|single| airlock_eventlog::body_kind(single.body.as_ref().expect("body")))
            .collect();
        if kinds == want {
            Ok((events, singles))
        } else {
            Err(kinds)
        }
    })
    .await;
    // The simple SELECT: its text, tag and row count.
    match &singles[1].body {
        Some(proto::event::Body::StatementExecuted(x)) => {
            assert_eq!(
                x.statement.as_ref().map(|s| s.text.as_str()),
                Some("SELECT count(*) FROM orders")
            );
            assert_eq!(x.command_tag, "SELECT 1");
            assert_eq!(x.rows, 1);
        }
        other => panic!("{other:?}"),
    }
    match &singles[3].body {
        Some(proto::event::Body::StatementRefused(x)) => {
            assert_eq!(x.sqlstate, "42501");
            assert_eq!(
                x.statement.as_ref().map(|s| s.text.as_str()),
                Some("DROP TABLE orders")
            );
        }
        other => panic!("{other:?}"),
    }
    airlock_eventlog::verify_chain(&events).expect("the session's chain verifies");
}

#[tokio::test]
async fn bad_tokens_unknown_connections_and_risky_parameters_are_refused() {
    let f = start(|_| {}).await;
    let err = config(f.addr, "forged", "shop")
        .connect(NoTls)
        .await
        .map(|_| ())
        .expect_err("bad token");
    // As PostgreSQL answers a wrong password.
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));
    assert!(db_message(&err).contains("bad signature"), "{}", db_message(&err));
    assert!(!db_message(&err).contains("forged") && !format!("{err:?}").contains("forged"));

    let err = config(f.addr, TOKEN, "billing")
        .connect(NoTls)
        .await
        .map(|_| ())
        .expect_err("no policy");
    assert!(
        db_message(&err).contains("no policy binds agent-7 to connection \"billing\""),
        "{}",
        db_message(&err)
    );

    let mut c = config(f.addr, TOKEN, "shop");
    c.options("-c role=postgres");
    let err = c.connect(NoTls).await.map(|_| ()).expect_err("options refused");
    assert!(
        db_message(&err).contains("\"options\" is not allowed"),
        "{}",
        db_message(&err)
    );
}

#[tokio::test]
async fn a_client_that_never_sends_its_token_is_cut_off_at_the_startup_timeout() {
    let f = start(|s| s.startup_timeout = Duration::from_secs(1)).await;
    let mut stream = tokio::net::TcpStream::connect(f.addr).await.expect("connect");
    let body = b"\x00\x03\x00\x00user\0agent-7\0database\0shop\0\0";
    let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(body);
    stream.write_all(&startup).await.expect("startup");
    // The password request, then nothing from us: the proxy must close.
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "the connection stayed open past the startup timeout"
    );
    assert_eq!(got.first(), Some(&b'R'), "{got:?}");
}

/// Issue 17, defect 7: sockets that connect and never log in took
/// connection slots until every agent was refused (53300). Connections
/// still logging in now have a limit of their own, below the total, so
/// logged-in agents and new logins always have room.
#[tokio::test]
async fn sockets_that_never_log_in_cannot_take_every_slot() {
    let f = start(|s| {
        s.max_connections = 4;
        s.max_unauthenticated = 2;
        s.startup_timeout = Duration::from_secs(60);
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(tokio::net::TcpStream::connect(f.addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = tokio::net::TcpStream::connect(f.addr).await.expect("connect");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut got))
        .await
        .expect("refused at once")
        .expect("read");
    let text = String::from_utf8_lossy(&got);
    assert_eq!(got.first(), Some(&b'E'), "{text}");
    assert!(
        text.contains("53300") && text.contains("still logging in"),
        "{text}"
    );

    // One idle socket gives up: an agent logs in and works while the other
    // still waits, and once logged in it no longer counts as logging in.
    drop(idle.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (client, conn) = config(f.addr, TOKEN, "shop")
        .connect(NoTls)
        .await
        .expect("an agent logs in");
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.expect("and works");
    idle.push(tokio::net::TcpStream::connect(f.addr).await.expect("connect"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Three of four slots are taken, two by logins in progress: a login is
    // refused for those, not for the total.
    let refused = config(f.addr, TOKEN, "shop")
        .connect(NoTls)
        .await
        .map(|_| ())
        .expect_err("two logins in progress already");
    assert!(
        db_message(&refused).contains("still logging in"),
        "{}",
        db_message(&refused)
    );
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (other, conn) = config(f.addr, TOKEN, "shop")
        .connect(NoTls)
        .await
        .expect("room again");
    tokio::spawn(conn);
    other.simple_query("SELECT 1").await.expect("works");
    client
        .simple_query("SELECT 1")
        .await
        .expect("the first still works");
}

/// Messages of a raw backend stream: (tag, body).
fn messages(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if len < 4 || rest.len() < 1 + len {
            break;
        }
        out.push((rest[0], rest[5..1 + len].to_vec()));
        rest = &rest[1 + len..];
    }
    out
}

/// Issue 17, defect 1: with NATS down, a login got its FATAL only after
/// AuthenticationOk and ReadyForQuery, and when NATS came back the log
/// gained the session's opening and never its close. Now the client is
/// refused before it is told it is in, and the close follows the opening.
#[tokio::test]
async fn a_login_that_cannot_be_recorded_is_refused_before_the_client_is_in_and_closed_in_the_log() {
    let mut f = start(|_| {}).await;
    f.nats.stop();
    let mut stream = tokio::net::TcpStream::connect(f.addr).await.expect("connect");
    let body = b"\x00\x03\x00\x00user\0agent-7\0database\0shop\0\0";
    let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(body);
    let mut password = vec![b'p'];
    password.extend_from_slice(&((TOKEN.len() + 5) as i32).to_be_bytes());
    password.extend_from_slice(TOKEN.as_bytes());
    password.push(0);
    stream.write_all(&startup).await.expect("startup");
    stream.write_all(&password).await.expect("password");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut got))
        .await
        .expect("the login ends")
        .expect("read");
    let messages = messages(&got);
    let tags: Vec<char> = messages.iter().map(|(t, _)| *t as char).collect();
    assert!(
        !messages
            .iter()
            .any(|(t, b)| *t == b'R' && b.as_slice() == [0, 0, 0, 0]),
        "AuthenticationOk was sent: {tags:?}"
    );
    assert!(!tags.contains(&'Z'), "ReadyForQuery was sent: {tags:?}");
    let (_, error) = messages.iter().find(|(t, _)| *t == b'E').expect("an error");
    let error = String::from_utf8_lossy(error);
    assert!(
        error.contains("57P03") && error.contains("cannot record sessions"),
        "{error}"
    );

    f.nats.restart();
    let events = eventually(
        "the opening and its close in the log",
        Duration::from_secs(30),
        || async {
            let events = f.log.read_all(ReadFilter::default()).await.unwrap_or_default();
            let opened = events
                .iter()
                .filter(|e| matches!(e.event.body, Some(Body::SessionOpened(_))))
                .count();
            let closed = events
                .iter()
                .filter(|e| matches!(e.event.body, Some(Body::SessionClosed(_))))
                .count();
            satisfies(events, |_| opened == 1 && closed == 1)
        },
    )
    .await;
    let close = events
        .iter()
        .find_map(|e| match &e.event.body {
            Some(Body::SessionClosed(c)) => Some(c.clone()),
            _ => None,
        })
        .expect("closed");
    assert!(close.detail.contains("login refused"), "{close:?}");
}

/// Issue 17, defect 2: with NATS down and the record buffer full, the
/// session's close was dropped along with its refusals. The close's room
/// is taken at login, and it says how many refusals had no event.
#[tokio::test]
async fn a_full_buffer_drops_no_close_and_the_close_counts_unrecorded_refusals() {
    let mut f = start_recording(|_| {}, |upstream| Arc::new(TestGate { upstream }), None, 3).await;
    let (client, conn) = config(f.addr, TOKEN, "shop").connect(NoTls).await.expect("login");
    let connection = tokio::spawn(conn);
    f.nats.stop();
    for _ in 0..5 {
        client
            .simple_query("DROP TABLE orders")
            .await
            .expect_err("refused by policy");
    }
    drop(client);
    let _ = connection.await;
    f.nats.restart();
    let close = eventually("the close in the log", Duration::from_secs(30), || async {
        let events = f.log.read_all(ReadFilter::default()).await.unwrap_or_default();
        let close = events.iter().find_map(|e| match &e.event.body {
            Some(Body::SessionClosed(c)) => Some(c.clone()),
            _ => None,
        });
        close.ok_or(events.len())
    })
    .await;
    assert_eq!(close.statements_refused, 5, "{close:?}");
    assert!(
        close.detail.contains("could not be recorded one by one"),
        "{close:?}"
    );
    let events = f.log.read_all(ReadFilter::default()).await.expect("read");
    let refusals = events
        .iter()
        .filter(|e| matches!(e.event.body, Some(Body::StatementRefused(_))))
        .count();
    assert!(
        refusals < 5,
        "the buffer was full: some refusals had no room ({refusals})"
    );
    let unrecorded: u64 = close
        .detail
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("a count");
    assert_eq!(
        refusals as u64 + unrecorded,
        5,
        "every refusal is either recorded or counted"
    );
}

/// Review finding: with room for the close but none for the opening, the
/// close was sent anyway and became the session's first event. A login
/// whose opening was never queued leaves nothing in the log.
#[tokio::test]
async fn a_login_refused_for_a_full_buffer_leaves_no_close_without_an_opening() {
    let f = start_recording(|_| {}, |upstream| Arc::new(TestGate { upstream }), None, 1).await;
    let err = config(f.addr, TOKEN, "shop")
        .connect(NoTls)
        .await
        .map(|_| ())
        .expect_err("no room to record the opening");
    assert!(
        db_message(&err).contains("cannot record sessions"),
        "{}",
        db_message(&err)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = f.log.read_all(ReadFilter::default()).await.expect("read");
    assert!(
        !events.iter().any(|e| matches!(
            e.event.body,
            Some(Body::SessionClosed(_)) | Some(Body::SessionOpened(_))
        )),
        "{events:?}"
    );
}

#[tokio::test]
async fn plain_text_is_refused_unless_allowed_on_loopback() {
    let f = start(|s| s.allow_plaintext_loopback = false).await;
    let err = config(f.addr, TOKEN, "shop")
        .connect(NoTls)
        .await
        .map(|_| ())
        .expect_err("TLS required");
    assert!(db_message(&err).contains("requires TLS"), "{}", db_message(&err));
}

#[tokio::test]
async fn psql_connects_over_tls_with_sslmode_require() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).expect("cert");
    std::fs::write(dir.path().join("proxy.crt"), cert.cert.pem()).expect("write cert");
    std::fs::write(dir.path().join("proxy.key"), cert.signing_key.serialize_pem()).expect("write key");
    let files = TlsFiles {
        cert: dir.path().join("proxy.crt"),
        key: dir.path().join("proxy.key"),
    };
    let f = start(move |s| {
        s.allow_plaintext_loopback = false;
        s.tls = Some(files);
    })
    .await;
    let out = tokio::process::Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} dbname=shop user=agent-7 sslmode=require",
            f.addr.port()
        ))
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT count(*) FROM orders",
            "-c",
            "SHOW ssl",
        ])
        .env("PGPASSWORD", TOKEN)
        .output()
        .await
        .expect("run psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().next(), Some("5"));
}

#[tokio::test]
async fn a_malformed_message_closes_that_connection_only() {
    let f = start(|_| {}).await;
    let healthy = connect(f.addr).await;

    // Log in by hand, then send garbage.
    let mut raw = tokio::net::TcpStream::connect(f.addr).await.expect("connect");
    let mut startup = Vec::new();
    let body = b"\x00\x03\x00\x00user\0agent-7\0database\0shop\0\0";
    startup.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    startup.extend_from_slice(body);
    raw.write_all(&startup).await.expect("startup");
    let mut buf = vec![0u8; 9];
    raw.read_exact(&mut buf).await.expect("auth request");
    assert_eq!(&buf[..1], b"R");
    let mut pw = vec![b'p'];
    pw.extend_from_slice(&((TOKEN.len() + 5) as i32).to_be_bytes());
    pw.extend_from_slice(TOKEN.as_bytes());
    pw.push(0);
    raw.write_all(&pw).await.expect("password");
    // A Query whose string is not NUL-terminated.
    raw.write_all(b"Q\0\0\0\x08abcd").await.expect("garbage");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the proxy closes the broken connection");
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("08P01") && text.contains("protocol violation"),
        "the client is told why: {text:?}"
    );

    let rows = healthy
        .query("SELECT 1", &[])
        .await
        .expect("other sessions carry on");
    assert_eq!(rows.len(), 1);
}

/// The events of `session` in the log, once there are at least `count`.
async fn session_events(
    log: &EventLog,
    session: &airlock_eventlog::SessionId,
    count: usize,
) -> Vec<airlock_eventlog::StoredEvent> {
    eventually(
        &format!("{count} events of the session in the log"),
        Duration::from_secs(10),
        || async {
            let stored = log
                .read_subject(&airlock_eventlog::subjects::session(session))
                .await
                .expect("read");
            if stored.len() >= count {
                Ok(stored)
            } else {
                Err(stored.len())
            }
        },
    )
    .await
}

fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// A hand-driven client, for message sequences no driver sends.
struct Raw {
    stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
}

impl Raw {
    async fn login(addr: SocketAddr) -> Raw {
        use airlock_proxy::codec::FeMessage;
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let body = b"\x00\x03\x00\x00user\0agent-7\0database\0shop\0\0";
        let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        startup.extend_from_slice(body);
        stream.write_all(&startup).await.expect("startup");
        let mut raw = Raw {
            stream,
            buf: bytes::BytesMut::new(),
        };
        let (tag, _) = raw.next().await;
        assert_eq!(tag, b'R');
        let mut pw = TOKEN.as_bytes().to_vec();
        pw.push(0);
        raw.send(&[FeMessage::Password(pw.into())]).await;
        raw.until_ready().await;
        raw
    }

    async fn send(&mut self, msgs: &[airlock_proxy::codec::FeMessage]) {
        let mut out = Vec::new();
        for m in msgs {
            out.extend_from_slice(&m.to_frame().to_bytes());
        }
        self.stream.write_all(&out).await.expect("send");
    }

    async fn next(&mut self) -> (u8, bytes::Bytes) {
        use airlock_proxy::codec::{Limits, decode_frame};
        loop {
            if let Some(f) = decode_frame(&mut self.buf, &Limits::default()).expect("valid frame") {
                return (f.tag, f.body);
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.buf))
                .await
                .expect("answer in time")
                .expect("read");
            assert!(n > 0, "connection closed; buffered: {:?}", self.buf);
        }
    }

    /// Messages up to ReadyForQuery: (tags seen, SQLSTATEs of errors).
    async fn until_ready(&mut self) -> (Vec<char>, Vec<String>) {
        let mut tags = Vec::new();
        let mut errors = Vec::new();
        loop {
            let (tag, body) = self.next().await;
            if tag == b'E' {
                let fields = airlock_proxy::codec::parse_diagnostic_fields(&body);
                errors.extend(fields.into_iter().filter(|(c, _)| *c == b'C').map(|(_, v)| v));
            }
            tags.push(tag as char);
            if tag == b'Z' {
                return (tags, errors);
            }
        }
    }
}

/// The real policy gate (the seed policy, plus cursors allowed) behind a
/// fixed login, for sequences whose judgement depends on the policy crate.
struct SeedPolicy {
    inner: Arc<airlock_proxy::policy_gate::PolicyGate>,
}

/// What every policy fixture here shares: the identity, the reviewers, the
/// `shop` connection and the agents' policy header; `policy_yaml` adds rules.
const POLICY_HEAD: &str = "
identity:
  issuer: https://issuer.invalid/v2.0
  audience: api://airlock
  group_names:
    db-maintenance-agents: grp-agents
    db-reviewers: grp-reviewers
approvals:
  reviewers: [db-reviewers]
connections:
  - name: shop
    upstream: postgres://maint@127.0.0.1:1/shop
policies:
  - policy: db-maintenance-agents
    connection: shop
    record: true
";

/// The agents' policy: rules allowing `allow`, holding DELETE, DROP and
/// UPDATE.
fn policy_yaml(allow: &str) -> String {
    format!(
        "{POLICY_HEAD}    rules:
      - match: {allow}
        action: allow
      - match: DELETE|DROP|UPDATE
        action: require-approval
"
    )
}

/// The seed policy, plus cursors and DEALLOCATE allowed.
fn seed_yaml() -> String {
    policy_yaml("SELECT|CURSOR|DEALLOCATE")
}

/// The seed policy loosened as operators do: session settings and function
/// calls allowed.
fn lenient_yaml() -> String {
    policy_yaml("SELECT|SET|FUNCTION|CURSOR")
}

impl SeedPolicy {
    fn gate(upstream: UpstreamConfig) -> Arc<dyn Gate> {
        Self::with(&seed_yaml(), upstream)
    }

    fn lenient(upstream: UpstreamConfig) -> Arc<dyn Gate> {
        Self::with(&lenient_yaml(), upstream)
    }

    fn with(yaml: &str, upstream: UpstreamConfig) -> Arc<dyn Gate> {
        Arc::new(SeedPolicy {
            inner: Self::policy_gate(yaml, upstream),
        })
    }

    /// The real policy gate under `yaml` (kept by tests that reload it).
    fn policy_gate(yaml: &str, upstream: UpstreamConfig) -> Arc<airlock_proxy::policy_gate::PolicyGate> {
        let identity = airlock_identity::IdentityConfig::new("https://issuer.invalid/v2.0", "api://airlock");
        let verifier = airlock_identity::Verifier::new(identity).expect("verifier");
        let policies = airlock_policy::PolicySet::from_config_yaml(yaml, "seed.yaml").expect("seed policy");
        let names = policies.group_names.clone();
        Arc::new(airlock_proxy::policy_gate::PolicyGate::new(
            verifier,
            policies,
            vec![("shop".into(), upstream)],
            names,
            Duration::from_secs(60),
        ))
    }
}

impl Gate for SeedPolicy {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Agent, Refusal>> {
        Box::pin(async move {
            if token != TOKEN {
                return Err(Refusal::unauthenticated("token refused"));
            }
            Ok(Agent {
                identity: proto::Identity {
                    subject: "oid-agent-7".into(),
                    display_name: "agent-7".into(),
                    kind: proto::identity::Kind::App as i32,
                    groups: vec![proto::Group {
                        id: "grp-agents".into(),
                        name: "db-maintenance-agents".into(),
                    }],
                    ..Default::default()
                },
            })
        })
    }

    fn bind(&self, agent: &Agent, database: &str) -> Result<Binding, Refusal> {
        self.inner.bind(agent, database)
    }

    fn judge(&self, binding: &Binding, sql: &str) -> Judgement {
        self.inner.judge(binding, sql)
    }

    fn policy_generation(&self) -> u64 {
        self.inner.policy_generation()
    }
}

/// Protocol messages and checks shared by the raw-protocol tests below.
fn parse(name: &str, sql: &str) -> airlock_proxy::codec::FeMessage {
    airlock_proxy::codec::FeMessage::Parse {
        name: name.into(),
        query: sql.into(),
        param_types: vec![],
    }
}

fn bind(portal: &str, statement: &str) -> airlock_proxy::codec::FeMessage {
    airlock_proxy::codec::FeMessage::Bind {
        portal: portal.into(),
        statement: statement.into(),
        param_formats: vec![],
        params: vec![],
        result_formats: vec![],
    }
}

fn execute(portal: &str) -> airlock_proxy::codec::FeMessage {
    airlock_proxy::codec::FeMessage::Execute {
        portal: portal.into(),
        max_rows: 0,
    }
}

fn describe_statement(name: &str) -> airlock_proxy::codec::FeMessage {
    airlock_proxy::codec::FeMessage::Describe {
        kind: b'S',
        name: name.into(),
    }
}

fn count(f: &Fixture) -> String {
    f.pg.psql("shop", "SELECT count(*) FROM orders")
}

fn assert_untouched(f: &Fixture) {
    assert_eq!(count(f), "5", "rows were deleted");
}

/// Tags of the next `n` messages.
async fn tags(raw: &mut Raw, n: usize) -> Vec<char> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(raw.next().await.0 as char);
    }
    out
}

/// Reads up to a ReadyForQuery or a FATAL: the FATAL's SQLSTATE if the
/// session ended, and every other error's before it.
async fn answer(raw: &mut Raw) -> (Option<String>, Vec<String>) {
    let mut errors = Vec::new();
    loop {
        let (tag, body) = raw.next().await;
        if tag == b'Z' {
            return (None, errors);
        }
        if tag == b'E' {
            let fields = airlock_proxy::codec::parse_diagnostic_fields(&body);
            let code = fields
                .iter()
                .find(|(c, _)| *c == b'C')
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            if fields.iter().any(|(c, v)| *c == b'S' && v == "FATAL") {
                return (Some(code), errors);
            }
            errors.push(code);
        }
    }
}

mod attacks {
    //! Message sequences that try to run a held or denied statement
    //! without approval. Without a control plane every hold is refused at
    //! once, so any DELETE that reaches PostgreSQL is a bypass.
    use super::*;
    use airlock_proxy::codec::FeMessage;

    #[tokio::test]
    async fn a_query_after_parse_describe_and_flush_is_answered_as_postgresql_answers_it() {
        // asyncpg prepares with Parse, Describe and Flush, and may send a
        // simple Query before any Sync (issue 24, cause 1).
        let f = start(|_| {}).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[
            parse("s1", "SELECT 1"),
            describe_statement("s1"),
            FeMessage::Flush,
        ])
        .await;
        assert_eq!(tags(&mut raw, 3).await, vec!['1', 't', 'T']);
        raw.send(&[FeMessage::Query {
            sql: "SELECT 42".into(),
        }])
        .await;
        // No ReadyForQuery of the proxy's own Sync reaches the client.
        assert_eq!(raw.until_ready().await, (vec!['T', 'D', 'C', 'Z'], vec![]));
        // The prepared statement is still there and runs; nothing is left over.
        raw.send(&[bind("", "s1"), execute(""), FeMessage::Sync]).await;
        assert_eq!(raw.until_ready().await, (vec!['2', 'D', 'C', 'Z'], vec![]));
        // The same, pipelined in one write without the Flush.
        raw.send(&[
            parse("s2", "SELECT 2"),
            describe_statement("s2"),
            FeMessage::Query {
                sql: "SELECT 43".into(),
            },
        ])
        .await;
        assert_eq!(
            raw.until_ready().await,
            (vec!['1', 't', 'T', 'T', 'D', 'C', 'Z'], vec![])
        );
    }

    #[tokio::test]
    async fn a_query_after_a_failed_message_of_its_batch_is_judged_and_the_session_stays_in_step() {
        // Round 3 of the review: a Describe that fails puts PostgreSQL in
        // skip-to-Sync mode; a Query the proxy forwarded then would be
        // skipped and the proxy's model shifted by one.
        let f = start(|_| {}).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[describe_statement("nosuch"), FeMessage::Flush]).await;
        assert_eq!(raw.next().await.0, b'E', "26000: no such statement");
        raw.send(&[FeMessage::Query {
            sql: "DELETE FROM orders".into(),
        }])
        .await;
        assert_eq!(raw.until_ready().await.1, vec![HELD_WITHOUT_CONTROL]);
        // A failing Parse, pipelined with the Query in one write.
        raw.send(&[
            parse("", "SELECT * FROM no_such_table"),
            FeMessage::Query {
                sql: "DELETE FROM orders".into(),
            },
        ])
        .await;
        assert_eq!(
            raw.until_ready().await.1,
            vec!["42P01".to_string(), HELD_WITHOUT_CONTROL.to_string()]
        );
        // Still in step: a held protocol DELETE is still held, a read still reads.
        raw.send(&[
            parse("", "DELETE FROM orders"),
            bind("", ""),
            execute(""),
            FeMessage::Sync,
        ])
        .await;
        assert_eq!(raw.until_ready().await.1, vec![HELD_WITHOUT_CONTROL]);
        raw.send(&[FeMessage::Query {
            sql: "SELECT count(*) FROM orders".into(),
        }])
        .await;
        assert_eq!(raw.until_ready().await, (vec!['T', 'D', 'C', 'Z'], vec![]));
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn a_query_after_a_bind_in_an_open_batch_still_ends_the_session() {
        // After a Bind, PostgreSQL's implicit transaction may hold work that
        // a Sync of the proxy's would commit early: not done; the session ends.
        let f = start(|_| {}).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[
            parse("", "SELECT 1"),
            bind("", ""),
            FeMessage::Flush,
            FeMessage::Query {
                sql: "SELECT 2".into(),
            },
        ])
        .await;
        let mut codes = Vec::new();
        loop {
            let (tag, body) = raw.next().await;
            if tag == b'E' {
                let fields = airlock_proxy::codec::parse_diagnostic_fields(&body);
                codes.extend(fields.into_iter().filter(|(c, _)| *c == b'C').map(|(_, v)| v));
                break;
            }
        }
        assert_eq!(codes, vec!["08P01"]);
        // Then the connection closes.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), raw.stream.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .expect("read");
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn rebinding_the_unnamed_statement_does_not_change_what_a_portal_runs() {
        let f = start(|_| {}).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[
            parse("", "DELETE FROM orders"),
            bind("", ""),
            parse("", "SELECT 1"),
            execute(""),
            FeMessage::Sync,
        ])
        .await;
        let (_, errors) = raw.until_ready().await;
        assert_eq!(
            errors,
            vec![HELD_WITHOUT_CONTROL],
            "the portal's DELETE is judged, and refused"
        );
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn reusing_a_statement_name_does_not_launder_it() {
        let f = start(|_| {}).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[parse("s", "DELETE FROM orders"), FeMessage::Sync])
            .await;
        raw.until_ready().await;
        // PostgreSQL refuses the duplicate name and keeps the DELETE.
        raw.send(&[parse("s", "SELECT 1"), FeMessage::Sync]).await;
        let (_, errors) = raw.until_ready().await;
        assert_eq!(errors, vec!["42P05"]);
        raw.send(&[bind("p", "s"), execute("p"), FeMessage::Sync]).await;
        let (_, errors) = raw.until_ready().await;
        assert_eq!(
            errors,
            vec![HELD_WITHOUT_CONTROL],
            "still judged as the DELETE it is"
        );
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn a_pipelined_redefinition_cannot_launder_a_statement() {
        let f = start(|_| {}).await;
        let mut raw = Raw::login(f.addr).await;
        // All in one write, before any answer: define s as the DELETE,
        // redefine it (PostgreSQL refuses: the name is taken), then run s.
        raw.send(&[
            parse("s", "DELETE FROM orders"),
            FeMessage::Sync,
            parse("s", "SELECT 1"),
            FeMessage::Sync,
            bind("p", "s"),
            execute("p"),
            FeMessage::Sync,
        ])
        .await;
        let (_, e1) = raw.until_ready().await;
        let (_, e2) = raw.until_ready().await;
        let (_, e3) = raw.until_ready().await;
        assert!(e1.is_empty(), "{e1:?}");
        assert_eq!(e2, vec!["42P05"], "PostgreSQL keeps the DELETE under s");
        assert_eq!(
            e3,
            vec![HELD_WITHOUT_CONTROL],
            "the ambiguous name is refused, not run as SELECT"
        );
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn sql_and_protocol_prepared_statements_cannot_be_mixed() {
        let f = start_with_gate(|_| {}, SeedPolicy::gate).await;
        let mut raw = Raw::login(f.addr).await;
        // A name taken by SQL PREPARE cannot be redefined through Parse.
        raw.send(&[FeMessage::Query {
            sql: "PREPARE x AS SELECT 1".into(),
        }])
        .await;
        assert!(raw.until_ready().await.1.is_empty());
        raw.send(&[parse("x", "DELETE FROM orders"), FeMessage::Sync])
            .await;
        assert_eq!(raw.until_ready().await.1, vec!["42501"]);
        // A statement prepared through Parse (held: parsing runs nothing)
        // cannot be run with SQL EXECUTE.
        raw.send(&[parse("y", "DELETE FROM orders"), FeMessage::Sync])
            .await;
        assert!(raw.until_ready().await.1.is_empty());
        raw.send(&[FeMessage::Query {
            sql: "EXECUTE y".into(),
        }])
        .await;
        assert_eq!(raw.until_ready().await.1, vec!["42501"]);
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn a_name_folded_differently_from_postgresql_cannot_launder_a_statement() {
        // PostgreSQL folds unquoted names in ASCII only: `EXECUTE ÉX` runs
        // the statement named "Éx" (here the protocol-level DELETE), not
        // the SELECT prepared as "éx". The Kelvin sign is kept too, where
        // Unicode would lower it to `k`.
        let f = start_with_gate(|_| {}, SeedPolicy::gate).await;
        let mut raw = Raw::login(f.addr).await;
        for (protocol_name, sql_name, executed) in [("Éx", "éx", "ÉX"), ("\u{212A}", "k", "\u{212A}")] {
            raw.send(&[parse(protocol_name, "DELETE FROM orders"), FeMessage::Sync])
                .await;
            assert!(
                raw.until_ready().await.1.is_empty(),
                "the Parse itself runs nothing"
            );
            raw.send(&[FeMessage::Query {
                sql: format!("PREPARE {sql_name} AS SELECT 1"),
            }])
            .await;
            assert!(raw.until_ready().await.1.is_empty());
            raw.send(&[FeMessage::Query {
                sql: format!("EXECUTE {executed}"),
            }])
            .await;
            assert_eq!(
                raw.until_ready().await.1,
                vec!["42501"],
                "EXECUTE {executed} is not the SELECT prepared as {sql_name}"
            );
            assert_untouched(&f);
        }
    }

    #[tokio::test]
    async fn no_route_changes_how_postgresql_reads_text() {
        // Under SJIS, the bytes of `Ё` (D0 81) followed by a backslash are
        // a half-width kana and one double-byte character: the quote after
        // them ends the string, and the DELETE the proxy read as part of
        // an E'' literal runs. Every route to such a setting is refused,
        // even by a policy that allows SET and function calls.
        let f = start_with_gate(|_| {}, SeedPolicy::lenient).await;
        let mut raw = Raw::login(f.addr).await;
        for sql in [
            "SET client_encoding = 'SJIS'",
            "SET NAMES 'BIG5'",
            "SET LOCAL standard_conforming_strings = off",
            "SELECT set_config('client_encoding', 'GBK', false)",
            "SELECT 1 WHERE set_config('standard_conforming_strings', 'off', false) IS NOT NULL",
            // Round 2: quoted names and table functions.
            "SET \"client_encoding\" = 'SJIS'",
            "SET \"CLIENT_ENCODING\" TO 'SJIS'",
            "SET \"standard_conforming_strings\" = off",
            "SELECT \"set_config\"('client_encoding', 'SJIS', false)",
            "SELECT * FROM set_config('client_encoding', 'SJIS', false)",
            "SELECT * FROM pg_catalog.\"set_config\"('standard_conforming_strings', 'off', false)",
        ] {
            raw.send(&[FeMessage::Query { sql: sql.into() }]).await;
            assert_eq!(raw.until_ready().await.1, vec!["42501"], "{sql}");
        }
        // Harmless forms still run.
        for sql in [
            "SET client_encoding = 'UTF8'",
            "RESET ALL",
            "SET statement_timeout = '5s'",
        ] {
            raw.send(&[FeMessage::Query { sql: sql.into() }]).await;
            assert!(raw.until_ready().await.1.is_empty(), "{sql}");
        }
        raw.send(&[FeMessage::Query {
            sql: "SELECT E'Ё\\'; DELETE FROM orders; --'".into(),
        }])
        .await;
        assert!(
            raw.until_ready().await.1.is_empty(),
            "read as one literal, as the proxy read it"
        );
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn a_temporary_pg_settings_cannot_smuggle_a_setting_name() {
        // A review found it: the session's temporary schema is searched
        // before pg_catalog, and in a char(n) column 'client_encoding '
        // equals 'client_encoding', so PostgreSQL would set the encoding
        // while the literal names no setting the gate knows. Only
        // pg_catalog.pg_settings pins a computed name.
        let f = start_with_gate(
            |_| {},
            |upstream| {
                SeedPolicy::with(
                    &policy_yaml("SELECT|SET|FUNCTION|CURSOR|CREATE|INSERT|ALTER"),
                    upstream,
                )
            },
        )
        .await;
        let mut raw = Raw::login(f.addr).await;
        for sql in [
            "CREATE TEMP TABLE t (name char(30))",
            "INSERT INTO t VALUES ('client_encoding')",
            "ALTER TABLE t RENAME TO pg_settings",
        ] {
            raw.send(&[FeMessage::Query { sql: sql.into() }]).await;
            assert!(raw.until_ready().await.1.is_empty(), "{sql}");
        }
        raw.send(&[FeMessage::Query {
            sql: "SELECT set_config(name, 'SJIS', false) FROM pg_settings WHERE name = 'client_encoding '"
                .into(),
        }])
        .await;
        assert_eq!(raw.until_ready().await.1, vec!["42501"]);
        // The catalog's own view pins the name: a harmless setting runs.
        raw.send(&[FeMessage::Query {
            sql: "SELECT set_config(name, '8MB', false) FROM pg_catalog.pg_settings WHERE name = 'work_mem'"
                .into(),
        }])
        .await;
        assert!(raw.until_ready().await.1.is_empty());
        // Still read as UTF8: this is one literal, not a DELETE.
        raw.send(&[FeMessage::Query {
            sql: "SELECT E'Ё\\'; DELETE FROM orders; --'".into(),
        }])
        .await;
        assert!(raw.until_ready().await.1.is_empty());
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn a_session_whose_upstream_reads_text_differently_is_ended() {
        // A function the classifier cannot see into changes the encoding:
        // PostgreSQL reports it in a ParameterStatus, and the proxy ends
        // the session rather than judge anything under the wrong reading.
        let f = start(|_| {}).await;
        f.pg.psql(
            "shop",
            "CREATE FUNCTION sneaky() RETURNS text LANGUAGE sql \
             AS $$ SELECT set_config('client_encoding', 'SJIS', false) $$",
        );
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[FeMessage::Query {
            sql: "SELECT sneaky()".into(),
        }])
        .await;
        loop {
            let (tag, body) = raw.next().await;
            if tag == b'E' {
                let fields = airlock_proxy::codec::parse_diagnostic_fields(&body);
                assert!(
                    fields.iter().any(|(c, v)| *c == b'C' && v == "0A000"),
                    "{fields:?}"
                );
                assert!(
                    fields.iter().any(|(c, v)| *c == b'S' && v == "FATAL"),
                    "{fields:?}"
                );
                break;
            }
            assert_ne!(tag, b'Z', "the session went on under SJIS");
        }
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn a_statement_sent_right_behind_an_encoding_change_is_not_read_under_it() {
        // Round 2 of the review: the ParameterStatus that reports a new
        // encoding arrives only with PostgreSQL's ReadyForQuery, and a
        // statement sent in the same write was already read under SJIS, so
        // the DELETE hidden in an E'' literal ran before the proxy ended
        // the session. Text that could read differently now waits for the
        // answer to anything before it that may change the reading.
        let f = start_with_gate(|_| {}, SeedPolicy::lenient).await;
        f.pg.psql(
            "shop",
            "CREATE FUNCTION sneaky() RETURNS text LANGUAGE sql \
             AS $$ SELECT set_config('client_encoding', 'SJIS', false) $$; \
             CREATE FUNCTION loose() RETURNS text LANGUAGE sql \
             AS $$ SELECT set_config('standard_conforming_strings', 'off', false) $$",
        );
        let hidden = [
            ("SELECT sneaky()", "SELECT E'Ё\\'; DELETE FROM orders; --'"),
            ("SELECT loose()", "SELECT '\\''; DELETE FROM orders; --'"),
        ];
        // Simple protocol: both queries in one write.
        for (change, then) in hidden {
            let mut raw = Raw::login(f.addr).await;
            raw.send(&[
                FeMessage::Query { sql: change.into() },
                FeMessage::Query { sql: then.into() },
            ])
            .await;
            let (fatal, errors) = answer(&mut raw).await;
            assert_eq!(fatal.as_deref(), Some("0A000"), "{change}; {then}: {errors:?}");
            assert_untouched(&f);
        }
        // Extended protocol, one batch: the second Parse cannot wait for an
        // answer before Sync, so it is refused; after a Sync it waits, and
        // the session ends on the report.
        for (change, then) in hidden {
            let mut raw = Raw::login(f.addr).await;
            raw.send(&[
                parse("", change),
                bind("", ""),
                execute(""),
                parse("", then),
                bind("", ""),
                execute(""),
                FeMessage::Sync,
            ])
            .await;
            // (The refusal fails the batch, which rolls the setting back:
            // whether PostgreSQL then reports a change is its business.)
            let (fatal, errors) = answer(&mut raw).await;
            assert!(fatal.is_none() || fatal.as_deref() == Some("0A000"), "{fatal:?}");
            assert_eq!(errors, vec!["42501"], "the second Parse is refused in its batch");
            assert_untouched(&f);

            let mut raw = Raw::login(f.addr).await;
            raw.send(&[
                parse("", change),
                bind("", ""),
                execute(""),
                FeMessage::Sync,
                parse("", then),
                bind("", ""),
                execute(""),
                FeMessage::Sync,
            ])
            .await;
            let (fatal, errors) = answer(&mut raw).await;
            assert_eq!(fatal.as_deref(), Some("0A000"), "{change}; {then}: {errors:?}");
            assert!(errors.is_empty(), "{change}: {errors:?}");
            assert_untouched(&f);

            // The change is reported only with the batch's ReadyForQuery,
            // not with the Execute's completion: a client that waits for
            // the completion (Flush) and then parses in the same batch is
            // refused too (review round 3).
            let mut raw = Raw::login(f.addr).await;
            raw.send(&[parse("", change), bind("", ""), execute(""), FeMessage::Flush])
                .await;
            loop {
                let (tag, _) = raw.next().await;
                if tag == b'C' {
                    break;
                }
                assert_ne!(tag, b'E', "{change} runs");
            }
            raw.send(&[parse("", then), bind("", ""), execute(""), FeMessage::Sync])
                .await;
            let (fatal, errors) = answer(&mut raw).await;
            assert!(fatal.is_none() || fatal.as_deref() == Some("0A000"), "{fatal:?}");
            assert_eq!(errors, vec!["42501"], "{change}; {then}: the Parse is refused");
            assert_untouched(&f);
        }
        // ASCII text without backslashes reads the same under every
        // setting: it is not held back (the pipeline stays a pipeline).
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[
            FeMessage::Query {
                sql: "SELECT count(*) FROM orders".into(),
            },
            FeMessage::Query {
                sql: "SELECT 'plain'".into(),
            },
        ])
        .await;
        assert!(raw.until_ready().await.1.is_empty());
        assert!(raw.until_ready().await.1.is_empty());
    }

    #[tokio::test]
    async fn a_held_statement_is_not_planned_before_it_is_approved() {
        // PostgreSQL plans a statement at Bind, and planning evaluates
        // STABLE functions with constant arguments: a Bind forwarded before
        // the approval ran this one (and its side effect) for a statement
        // that was then refused.
        let f = start(|_| {}).await;
        f.pg.psql(
            "shop",
            "CREATE SEQUENCE planned; \
             CREATE FUNCTION bump() RETURNS int LANGUAGE plpgsql STABLE \
             AS $$ BEGIN PERFORM nextval('planned'); RETURN 1; END $$",
        );
        let held = "SELECT count(*) FROM orders WHERE id = bump() -- DELETE";
        // The oracle: directly, a Bind alone does run bump().
        let (direct, conn) = tokio_postgres::connect(&f.pg.url("shop"), NoTls)
            .await
            .expect("direct");
        tokio::spawn(conn);
        let mut direct = direct;
        let tx = direct.transaction().await.expect("begin");
        let statement = tx.prepare(held).await.expect("prepare");
        let _portal = tx.bind(&statement, &[]).await.expect("bind");
        tx.rollback().await.expect("rollback");
        let after_direct =
            f.pg.psql("shop", "SELECT last_value || ' ' || is_called FROM planned");
        assert_eq!(after_direct, "1 true", "planning at Bind ran the function");
        // Through the proxy: held at Bind (and refused, no control plane),
        // so nothing is planned and the sequence does not move.
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[
            FeMessage::Query { sql: "BEGIN".into() },
            parse("", held),
            bind("", ""),
            execute(""),
            FeMessage::Sync,
            FeMessage::Query { sql: "COMMIT".into() },
        ])
        .await;
        assert!(raw.until_ready().await.1.is_empty(), "BEGIN");
        assert_eq!(raw.until_ready().await.1, vec![HELD_WITHOUT_CONTROL]);
        raw.until_ready().await;
        assert_eq!(
            f.pg.psql("shop", "SELECT last_value || ' ' || is_called FROM planned"),
            after_direct,
            "the held statement was planned"
        );
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn execute_of_a_sql_prepared_statement_is_not_judged_ahead_of_time() {
        // A protocol statement whose text is EXECUTE p would be judged as
        // p is now, and run as p is when its portal runs (after a
        // DEALLOCATE and a new PREPARE p): refused.
        let f = start_with_gate(|_| {}, SeedPolicy::gate).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[FeMessage::Query {
            sql: "PREPARE p AS SELECT 1".into(),
        }])
        .await;
        assert!(raw.until_ready().await.1.is_empty());
        raw.send(&[parse("s", "EXECUTE p"), FeMessage::Sync]).await;
        assert_eq!(raw.until_ready().await.1, vec!["42501"]);
        // As a simple query it is judged when it runs, and flows.
        raw.send(&[FeMessage::Query {
            sql: "EXECUTE p".into(),
        }])
        .await;
        assert!(raw.until_ready().await.1.is_empty());
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn explain_does_not_make_a_call_harmless() {
        // The planner evaluates table_to_xml('orders', ...) while planning
        // a plain EXPLAIN: it reads the whole table by name. It is judged as
        // the call it is, and never reaches PostgreSQL.
        let f = start_with_gate(|_| {}, SeedPolicy::gate).await;
        let mut raw = Raw::login(f.addr).await;
        let sql = "EXPLAIN SELECT 1 WHERE table_to_xml('orders', true, false, '')::text = 'leak'";
        raw.send(&[FeMessage::Query { sql: sql.into() }]).await;
        let errors = raw.until_ready().await.1;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_ne!(errors[0], "42883", "it reached PostgreSQL");
        assert!(
            !f.pg.server_log().contains("table_to_xml"),
            "PostgreSQL saw the statement"
        );
    }

    #[tokio::test]
    async fn parameter_types_are_never_taken_from_another_statement() {
        // Describe s (int4), Close s, Parse s again (float4), pipelined: the
        // first ParameterDescription must not be used for the second s. The
        // bytes 00 00 00 64 are int4 100 but float4 1.4e-43: a reviewer
        // shown "100" would approve a meaning PostgreSQL does not run.
        let f = start(|_| {}).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[
            parse("s", "DELETE FROM orders WHERE id < $1::int4"),
            FeMessage::Describe {
                kind: b'S',
                name: "s".into(),
            },
            FeMessage::Close {
                kind: b'S',
                name: "s".into(),
            },
            parse("s", "DELETE FROM orders WHERE id < $1::float4"),
            FeMessage::Flush,
        ])
        .await;
        // Every answer is in before the Bind: ParseComplete,
        // ParameterDescription (int4), NoData, CloseComplete, ParseComplete.
        for expected in [b'1', b't', b'n', b'3', b'1'] {
            assert_eq!(raw.next().await.0, expected);
        }
        raw.send(&[
            FeMessage::Bind {
                portal: String::new(),
                statement: "s".into(),
                param_formats: vec![1],
                params: vec![Some(bytes::Bytes::from_static(&[0, 0, 0, 100]))],
                result_formats: vec![],
            },
            execute(""),
            FeMessage::Sync,
        ])
        .await;
        assert_eq!(raw.until_ready().await.1, vec![HELD_WITHOUT_CONTROL]);
        // What the log (and a reviewer) was shown of the held statement.
        let shown = eventually_refused(&f.log).await;
        let parameter = &shown.parameters[0];
        assert!(shown.text.contains("float4"), "{}", shown.text);
        assert_ne!(parameter.type_oid, 23, "shown as int4: {parameter:?}");
        assert_ne!(parameter.display, "100", "{parameter:?}");
        assert_eq!(parameter.value, [0, 0, 0, 100], "the exact bytes are kept");
        assert_untouched(&f);
    }

    /// The statement of the first StatementRefused in the log.
    async fn eventually_refused(log: &EventLog) -> proto::Statement {
        use futures::StreamExt;
        eventually(
            "a StatementRefused in the log",
            Duration::from_secs(5),
            || async {
                let mut events = Box::pin(
                    log.read(0, airlock_eventlog::ReadFilter::all())
                        .await
                        .expect("read"),
                );
                while let Some(e) = events.next().await {
                    if let Some(proto::event::Body::StatementRefused(r)) = e.expect("event").event.body {
                        return Some(r.statement.expect("statement"));
                    }
                }
                None
            },
        )
        .await
    }

    #[tokio::test]
    async fn text_postgresql_reads_differently_from_the_parser_never_runs() {
        // sqlparser and PostgreSQL disagreed on where a string or comment
        // ends: a non-ASCII dollar-quote tag, an operator running into
        // `--`. The parser saw one SELECT; PostgreSQL ran the DELETE too.
        let f = start_with_gate(|_| {}, SeedPolicy::gate).await;
        let mut raw = Raw::login(f.addr).await;
        for sql in [
            "SELECT $€$ --$€$; DELETE FROM orders;",
            "SELECT '{\"a\":1}'::jsonb ?--'\n chr(97); DELETE FROM orders; --'",
            "SELECT '[1,2)'::int4range &>--'\n int4range(0,1); DELETE FROM orders; --'",
        ] {
            raw.send(&[FeMessage::Query { sql: sql.into() }]).await;
            assert_eq!(raw.until_ready().await.1.len(), 1, "{sql:?} was refused");
            assert_untouched(&f);
        }
        let cte = "WITH a AS (SELECT '{}'::jsonb ?--'\n chr(97)), d AS (DELETE FROM orders RETURNING 1) \
                   SELECT 1 FROM a --') SELECT 1 FROM a";
        raw.send(&[parse("", cte), bind("", ""), execute(""), FeMessage::Sync])
            .await;
        assert_eq!(
            raw.until_ready().await.1.len(),
            1,
            "refused over the extended protocol"
        );
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn an_unknown_connection_is_postgresqls_unknown_database() {
        // The real gate's binding: an unknown dbname is 3D000, as for a
        // database that does not exist, so drivers report it as such.
        let f = start_with_gate(|_| {}, SeedPolicy::gate).await;
        let err = config(f.addr, TOKEN, "no-such-connection")
            .connect(NoTls)
            .await
            .map(|_| ())
            .expect_err("refused");
        assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME));
        assert!(
            db_message(&err).contains("no connection named"),
            "{}",
            db_message(&err)
        );
    }

    #[tokio::test]
    async fn sql_cannot_drop_or_redefine_a_protocol_statement() {
        let f = start_with_gate(|_| {}, SeedPolicy::gate).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[parse("s", "SELECT 1"), FeMessage::Sync]).await;
        assert!(raw.until_ready().await.1.is_empty());
        raw.send(&[FeMessage::Query {
            sql: "DEALLOCATE s".into(),
        }])
        .await;
        assert_eq!(
            raw.until_ready().await.1,
            vec!["42501"],
            "DEALLOCATE of a Parse name is refused"
        );
        raw.send(&[bind("", "s"), execute(""), FeMessage::Sync]).await;
        assert!(raw.until_ready().await.1.is_empty(), "s is still the SELECT");
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn names_postgres_would_shorten_are_refused() {
        let f = start(|_| {}).await;
        let mut raw = Raw::login(f.addr).await;
        let long = format!("{}x", "a".repeat(63));
        raw.send(&[parse(&long, "SELECT 1"), FeMessage::Sync]).await;
        let (tag, body) = raw.next().await;
        assert_eq!(tag, b'E');
        let fields = airlock_proxy::codec::parse_diagnostic_fields(&body);
        assert!(
            fields.iter().any(|(c, v)| *c == b'C' && v == "08P01"),
            "{fields:?}"
        );
    }

    #[tokio::test]
    async fn explain_analyse_is_not_a_read() {
        let f = start_with_gate(|_| {}, SeedPolicy::gate).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[FeMessage::Query {
            sql: "EXPLAIN (ANALYSE) DELETE FROM orders".into(),
        }])
        .await;
        assert_eq!(
            raw.until_ready().await.1,
            vec![HELD_WITHOUT_CONTROL],
            "held (and refused: no control plane)"
        );
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn a_held_portal_cannot_be_run_with_fetch() {
        let f = start_with_gate(|_| {}, SeedPolicy::gate).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[FeMessage::Query { sql: "BEGIN".into() }]).await;
        assert!(raw.until_ready().await.1.is_empty());
        raw.send(&[
            parse("", "DELETE FROM orders RETURNING *"),
            bind("c", ""),
            FeMessage::Sync,
        ])
        .await;
        // The Bind itself is held (and refused here): the portal never
        // exists upstream, so there is nothing for FETCH to run.
        assert_eq!(raw.until_ready().await.1, vec![HELD_WITHOUT_CONTROL]);
        raw.send(&[FeMessage::Query {
            sql: "FETCH ALL FROM c".into(),
        }])
        .await;
        assert_eq!(raw.until_ready().await.1.len(), 1, "FETCH fails");
        raw.send(&[FeMessage::Query { sql: "COMMIT".into() }]).await;
        raw.until_ready().await;
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn copy_over_the_extended_protocol_is_refused() {
        let f = start_with_gate(|_| {}, SeedPolicy::gate).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[parse("", "COPY orders FROM STDIN"), FeMessage::Sync])
            .await;
        assert_eq!(raw.until_ready().await.1, vec!["42501"]);
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn the_proxys_reserved_names_cannot_be_used() {
        let f = start(|_| {}).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[
            parse("s", "DELETE FROM orders"),
            bind("airlock: statement refused", "s"),
            bind("p", "s"),
            execute("p"),
            FeMessage::Sync,
        ])
        .await;
        let (tag, body) = raw.next().await;
        let fields = airlock_proxy::codec::parse_diagnostic_fields(&body);
        assert_eq!(tag, b'E');
        assert!(
            fields.iter().any(|(c, v)| *c == b'C' && v == "08P01"),
            "{fields:?}"
        );
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn statements_the_proxy_never_judged_cannot_be_bound() {
        let f = start(|_| {}).await;
        let mut raw = Raw::login(f.addr).await;
        // A SQL-level PREPARE (of a harmless statement, so it is allowed) ...
        raw.send(&[FeMessage::Query {
            sql: "PREPARE x AS SELECT count(*) FROM orders".into(),
        }])
        .await;
        let (_, errors) = raw.until_ready().await;
        assert!(errors.is_empty(), "{errors:?}");
        // ... cannot be run through the extended protocol unjudged.
        raw.send(&[bind("p", "x"), execute("p"), FeMessage::Sync]).await;
        let (_, errors) = raw.until_ready().await;
        assert_eq!(errors, vec!["42501"]);
        // Nor can a portal that was never bound here.
        raw.send(&[execute("nope"), FeMessage::Sync]).await;
        let (_, errors) = raw.until_ready().await;
        assert_eq!(errors, vec!["42501"]);
        // The session goes on.
        raw.send(&[FeMessage::Query {
            sql: "SELECT 1".into(),
        }])
        .await;
        let (_, errors) = raw.until_ready().await;
        assert!(errors.is_empty());
    }

    #[tokio::test]
    async fn a_client_cannot_forge_the_refusal_message() {
        let f = start(|_| {}).await;
        let mut raw = Raw::login(f.addr).await;
        // SQL that names the stand-ins' text is refused outright, so it can
        // neither be used to learn the marker nor to pose as a refusal.
        raw.send(&[FeMessage::Query {
            sql: "SELECT \"airlock: statement refused\"".into(),
        }])
        .await;
        let (_, errors) = raw.until_ready().await;
        assert_eq!(errors, vec!["42501"]);
        assert!(
            !f.pg
                .server_log()
                .contains("SELECT \"airlock: statement refused\""),
            "the reserved text never reaches PostgreSQL"
        );
        // And a real refusal right after is still reported as one.
        raw.send(&[FeMessage::Query {
            sql: "DROP TABLE orders".into(),
        }])
        .await;
        let (_, errors) = raw.until_ready().await;
        assert_eq!(errors, vec!["42501"]);
        assert_untouched(&f);
    }
}

#[tokio::test]
async fn a_forged_grant_from_the_network_runs_nothing() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proto::proxy_service_server::ProxyServiceServer::new(
                ForgingControl {
                    log: None,
                    junk_after: false,
                },
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let f = start(|_| {}).await;
    // Attach the fixture's proxy to the forger.
    tokio::spawn(airlock_proxy::attach::run(
        vec![url],
        "proxy-test".into(),
        f.holds.clone(),
    ));
    eventually(
        "the proxy to attach to the forger",
        Duration::from_secs(5),
        || async { f.holds.is_attached() },
    )
    .await;
    let client = connect(f.addr).await;
    let err = client
        .simple_query("DELETE FROM orders")
        .await
        .expect_err("a grant that is not in the log runs nothing");
    assert!(
        db_message(&err).contains("could not be confirmed"),
        "{}",
        db_message(&err)
    );
    assert_eq!(f.pg.psql("shop", "SELECT count(*) FROM orders"), "5");
}

/// A control plane that grants every hold it is told about: what an
/// attacker on the network could send. With `log`, it first appends an
/// `ApprovalGranted` to the request's chain (correctly linked, signed by the
/// log's signer or not at all): what anyone able to publish on NATS, or a
/// stolen proxy key, could do.
struct ForgingControl {
    log: Option<EventLog>,
    /// Then publish junk on the request's subject, as anyone could.
    junk_after: bool,
}

#[tonic::async_trait]
impl proto::proxy_service_server::ProxyService for ForgingControl {
    type AttachStream = tokio_stream::wrappers::ReceiverStream<Result<proto::ControlMessage, tonic::Status>>;

    async fn attach(
        &self,
        request: tonic::Request<tonic::Streaming<proto::ProxyMessage>>,
    ) -> Result<tonic::Response<Self::AttachStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let log = self.log.clone();
        let junk = self.junk_after;
        tokio::spawn(async move {
            use proto::control_message::Message;
            let msg = |m| Ok(proto::ControlMessage { message: Some(m) });
            let _ = tx
                .send(msg(Message::Welcome(proto::Welcome {
                    replica_id: "forger".into(),
                    heartbeat_interval: None,
                })))
                .await;
            while let Some(Ok(m)) = inbound.next().await {
                let Some(proto::proxy_message::Message::Holding(h)) = m.message else {
                    continue;
                };
                let Some(held) = h.held else { continue };
                if let Some(log) = &log {
                    forge_grant(log, &held, junk).await;
                }
                let _ = tx
                    .send(msg(Message::Decision(proto::DecisionNotice {
                        request_id: held.request_id,
                        session_id: held.session_id,
                        outcome: proto::decision_notice::Outcome::Granted as i32,
                        statement_sha256: held.statement_sha256,
                        ..Default::default()
                    })))
                    .await;
            }
        });
        Ok(tonic::Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

/// Appends a grant for `held` to its request's chain, then (with `junk`)
/// messages no trusted writer signed.
async fn forge_grant(log: &EventLog, held: &proto::Held, junk: bool) {
    let source = proto::Source {
        kind: proto::source::Kind::Control as i32,
        id: "control-1".into(),
        ..Default::default()
    };
    let mut grant = airlock_eventlog::new_event(
        &source,
        Body::ApprovalGranted(proto::ApprovalGranted {
            bounds: Vec::new(),
            bounded: false,
            every_table: false,
            break_glass: false,
            statement_sha256: held.statement_sha256.clone(),
            // As a control plane writes it: who approved.
            approvers: vec![proto::Approver {
                reviewer: Some(proto::Identity {
                    subject: "oid-alice".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }),
    );
    grant.request_id = held.request_id.clone();
    grant.session_id = held.session_id.clone();
    let request = airlock_eventlog::RequestId::parse(&held.request_id).expect("request id");
    let subject = airlock_eventlog::subjects::request(&request);
    // After the proxy's ApprovalRequested, as a replica would.
    eventually("the request in the log", Duration::from_secs(5), || async {
        satisfies(log.last(&subject).await.ok().flatten().is_some(), |x| *x)
    })
    .await;
    let appended = log.append_next(&subject, grant).await;
    assert!(appended.is_ok(), "the forged grant is stored: {appended:?}");
    if junk {
        let js = async_nats::jetstream::new(log.client().clone());
        for payload in [vec![0xff, 0xff], b"not an event".to_vec()] {
            let stored = js.publish(subject.clone(), payload.into()).await;
            stored.expect("publish").await.expect("stored");
        }
        let unsigned = EventLog::connect(log.settings().clone()).await.expect("nats");
        let mut e =
            airlock_eventlog::new_event(&source, Body::ApprovalDenied(proto::ApprovalDenied::default()));
        e.request_id = held.request_id.clone();
        unsigned
            .append_next(&subject, e)
            .await
            .expect("stored after the junk");
    }
}

/// Runs `DELETE FROM orders WHERE id = 1` on a proxy that trusts `trust`,
/// attached to a control plane that writes grants to the log signed by
/// `forger` (or unsigned); the agent's outcome.
async fn delete_granted_by(
    trust: Trust,
    forger: Option<airlock_eventlog::signing::Signer>,
    junk_after: bool,
) -> (Result<(), String>, Fixture) {
    let f = start_trusting(|_| {}, |upstream| Arc::new(TestGate { upstream }), Some(trust)).await;
    let mut forging_log = EventLog::connect(f.log.settings().clone()).await.expect("nats");
    if let Some(forger) = forger {
        forging_log = forging_log.with_signer(Arc::new(forger));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proto::proxy_service_server::ProxyServiceServer::new(
                ForgingControl {
                    log: Some(forging_log),
                    junk_after,
                },
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    tokio::spawn(airlock_proxy::attach::run(
        vec![url],
        "proxy-test".into(),
        f.holds.clone(),
    ));
    eventually("the proxy to attach", Duration::from_secs(5), || async {
        f.holds.is_attached()
    })
    .await;
    let client = connect(f.addr).await;
    let outcome = client
        .simple_query("DELETE FROM orders WHERE id = 1")
        .await
        .map(|_| ())
        .map_err(|e| db_message(&e));
    (outcome, f)
}

/// Finding 15.6: the log trusted any writer. A grant in the log runs a held
/// statement only if a control-plane key the proxy trusts signed it.
#[tokio::test]
async fn a_grant_in_the_log_runs_only_if_a_trusted_control_key_signed_it() {
    use airlock_eventlog::signing::{Role, Signer, TrustedKey};
    let (control, proxy) = (Signer::generate(), Signer::generate());
    let trust = || {
        Trust::new(vec![
            TrustedKey::new(Role::Control, control.verifying_key()),
            TrustedKey::new(Role::Proxy, proxy.verifying_key()),
        ])
    };
    let refused = |outcome: Result<(), String>, f: &Fixture, what: &str| {
        let err = outcome.expect_err(what);
        assert!(err.contains("could not be confirmed"), "{what}: {err}");
        assert_eq!(f.pg.psql("shop", "SELECT count(*) FROM orders"), "5", "{what}");
        assert!(
            !f.pg.server_log().contains("DELETE FROM orders"),
            "{what}: the DELETE reached PostgreSQL"
        );
    };

    // Anyone who can publish on NATS: a correctly chained, unsigned grant.
    let (outcome, f) = delete_granted_by(trust(), None, false).await;
    refused(outcome, &f, "an unsigned grant");
    // A key nobody listed.
    let (outcome, f) = delete_granted_by(trust(), Some(Signer::generate()), false).await;
    refused(outcome, &f, "a grant signed by an unknown key");
    // A proxy's own key (a stolen or compromised proxy): proxies do not grant.
    let (outcome, f) = delete_granted_by(trust(), Some(proxy.clone()), false).await;
    refused(outcome, &f, "a grant signed by a proxy key");

    // The same path with the trusted control key runs it: the refusals
    // above are the signatures' doing.
    let (outcome, f) = delete_granted_by(trust(), Some(control.clone()), false).await;
    outcome.expect("a grant signed by the trusted control key runs the statement");
    assert_eq!(f.pg.psql("shop", "SELECT count(*) FROM orders"), "4");

    // Junk anyone published after the grant (not events, an unsigned
    // denial) is passed over, as the control plane passes over it.
    let (outcome, f) = delete_granted_by(trust(), Some(control), true).await;
    outcome.expect("junk after a genuine grant does not cancel it");
    assert_eq!(f.pg.psql("shop", "SELECT count(*) FROM orders"), "4");
}

#[tokio::test]
async fn a_session_ended_for_a_protocol_violation_cancels_its_running_query() {
    use airlock_proxy::codec::FeMessage;
    let f = start(|_| {}).await;
    let mut raw = Raw::login(f.addr).await;
    raw.send(&[FeMessage::Query {
        sql: "SELECT pg_sleep(30)".into(),
    }])
    .await;
    // Wait until PostgreSQL is running it (a cancel that arrives before a
    // query starts cancels nothing, in PostgreSQL too).
    let active =
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'";
    let running = |n: &'static str| {
        let pg = &f.pg;
        move || async move { satisfies(pg.psql("postgres", active), |got| got == n) }
    };
    eventually("PostgreSQL to run pg_sleep", Duration::from_secs(5), running("1")).await;
    // A Query whose string is not NUL-terminated ends the session.
    raw.stream.write_all(b"Q\0\0\0\x08abcd").await.expect("garbage");
    eventually(
        "the running query to be cancelled",
        Duration::from_secs(5),
        running("0"),
    )
    .await;
}

/// A full recording buffer: a statement waits for room, then is refused;
/// room freed within the wait lets it run.
#[tokio::test]
async fn a_full_record_buffer_makes_a_statement_wait_then_refuses_it() {
    let nats = NatsServer::start();
    let log = EventLog::connect(NatsSettings::new(nats.url()))
        .await
        .expect("nats");
    log.ensure_stream().await.expect("stream");
    let recorder = Recorder::spawn(log, 1, 1, Duration::ZERO);
    let session = airlock_eventlog::SessionId::generate();
    let held = recorder.reserve(&session).expect("the only slot");
    assert!(recorder.reserve(&session).is_err(), "full");
    let started = std::time::Instant::now();
    assert!(
        recorder
            .reserve_within(&session, Duration::from_millis(300))
            .await
            .is_err(),
        "still full after the wait: refused"
    );
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited");
    // Room comes back while a statement waits: it gets it.
    let waiting = {
        let recorder = recorder.clone();
        let session = session.clone();
        tokio::spawn(async move { recorder.reserve_within(&session, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(held);
    let slot = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("not stuck")
        .expect("join");
    assert!(slot.is_ok(), "the freed room went to the waiting statement");
}

/// A busy session's statements are recorded together: the statements queued
/// within the linger become one `StatementsExecuted` event, in order, each
/// with its own id and time; anything else (an approved statement, an event
/// someone waits for, the session's end) is its own event, in its place;
/// the chain verifies; and readers count every statement.
#[tokio::test]
async fn a_busy_sessions_statements_are_recorded_together_in_order() {
    use proto::event::Body;
    let nats = NatsServer::start();
    let log = EventLog::connect(NatsSettings::new(nats.url()))
        .await
        .expect("nats");
    log.ensure_stream().await.expect("stream");
    let recorder = Recorder::spawn(log.clone(), 2, 1024, Duration::from_millis(300));
    let session = airlock_eventlog::SessionId::generate();
    let source = proto::Source {
        kind: proto::source::Kind::Proxy as i32,
        id: "test-proxy".into(),
        ..Default::default()
    };
    let event = |body: Body| {
        let mut e = airlock_eventlog::new_event(&source, body);
        e.session_id = session.to_string();
        e
    };
    let executed = |text: &str, request_id: &str| {
        event(Body::StatementExecuted(proto::StatementExecuted {
            statement: Some(proto::Statement {
                text: text.into(),
                ..Default::default()
            }),
            request_id: request_id.into(),
            command_tag: "SELECT 1".into(),
            rows: 1,
            ..Default::default()
        }))
    };
    let mut sent = Vec::new();
    let mut record = |e: proto::Event| {
        sent.push(e.clone());
        recorder.record(&session, e).expect("room");
    };
    record(event(Body::SessionOpened(proto::SessionOpened::default())));
    for i in 0..40 {
        record(executed(&format!("SELECT {i}"), ""));
    }
    // A statement that ran after an approval ends the group.
    record(executed("DELETE FROM orders", "01ARZ3NDEKTSV4RRFFQ69G5FAV"));
    for i in 40..45 {
        record(executed(&format!("SELECT {i}"), ""));
    }
    record(event(Body::SessionClosed(proto::SessionClosed::default())));
    assert!(recorder.flush(Duration::from_secs(10)).await, "written");

    let stored = session_events(&log, &session, 5).await;
    let kinds: Vec<&str> = stored
        .iter()
        .map(|e| airlock_eventlog::body_kind(e.event.body.as_ref().expect("body")))
        .collect();
    assert_eq!(
        kinds,
        [
            "session_opened",
            "statements_executed",
            "statement_executed",
            "statements_executed",
            "session_closed"
        ],
        "40 statements in one event, the approved one alone, then the next 5"
    );
    airlock_eventlog::verify_chain(&stored).expect("the chain verifies");
    // Split back, the log says exactly what was recorded, in order, with
    // each statement's own id and time.
    let singles: Vec<proto::Event> = stored
        .iter()
        .flat_map(|e| airlock_eventlog::split_group(&e.event))
        .collect();
    assert_eq!(singles.len(), sent.len());
    for (got, want) in singles.iter().zip(&sent) {
        assert_eq!(got.id, want.id);
        assert_eq!(got.time, want.time);
        assert_eq!(got.body, want.body);
        assert_eq!(got.session_id, want.session_id);
    }
    let counted: usize = stored
        .iter()
        .map(|e| airlock_eventlog::executed_statements(&e.event).len())
        .sum();
    assert_eq!(counted, 46);

    // The linger: a statement that completes shortly after another, while
    // the writer waits for company, joins it.
    let quiet = airlock_eventlog::SessionId::generate();
    for text in ["SELECT 'a'", "SELECT 'b'"] {
        let mut e = executed(text, "");
        e.session_id = quiet.to_string();
        recorder.record(&quiet, e).expect("room");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recorder.flush(Duration::from_secs(10)).await, "written");
    let stored = session_events(&log, &quiet, 1).await;
    assert_eq!(stored.len(), 1, "one event for both");
    let texts: Vec<&str> = airlock_eventlog::executed_statements(&stored[0].event)
        .iter()
        .map(|x| x.statement.statement.as_ref().map_or("", |s| s.text.as_str()))
        .collect();
    assert_eq!(texts, ["SELECT 'a'", "SELECT 'b'"]);
}

/// A record too large for one event of the log (a statement of several
/// MiB) is written with its text cut and its digest kept, and the session's
/// later events follow: the writer is not stuck retrying it.
#[tokio::test]
async fn a_statement_too_large_for_the_log_is_recorded_cut_and_the_session_goes_on() {
    use proto::event::Body;
    let nats = NatsServer::start();
    let log = EventLog::connect(NatsSettings::new(nats.url()))
        .await
        .expect("nats");
    log.ensure_stream().await.expect("stream");
    let recorder = Recorder::spawn(log.clone(), 2, 1024, Duration::ZERO);
    let session = airlock_eventlog::SessionId::generate();
    let source = proto::Source::default();
    let huge = format!("SELECT '{}'", "é".repeat(1_500_000));
    let refused = {
        let mut e = airlock_eventlog::new_event(
            &source,
            Body::StatementRefused(proto::StatementRefused {
                statement: Some(proto::Statement {
                    text: huge.clone(),
                    sha256: vec![7; 32],
                    parameters: vec![proto::Parameter::default(); 1000],
                    ..Default::default()
                }),
                sqlstate: "42501".into(),
                ..Default::default()
            }),
        );
        e.session_id = session.to_string();
        e
    };
    // An allowed INSERT binding two values of 700 KiB (asyncpg's suite
    // binds such values): its text is short, its parameters are not.
    let big = vec![b'a'; 700 * 1024];
    let inserted = {
        let parameter = proto::Parameter {
            value: big.clone(),
            display: String::from_utf8(big.clone()).expect("ASCII"),
            ..Default::default()
        };
        let mut e = airlock_eventlog::new_event(
            &source,
            Body::StatementExecuted(proto::StatementExecuted {
                statement: Some(proto::Statement {
                    text: "INSERT INTO t VALUES ($1, $2)".into(),
                    sha256: vec![9; 32],
                    parameters: vec![parameter; 2],
                    ..Default::default()
                }),
                command_tag: "INSERT 0 1".into(),
                ..Default::default()
            }),
        );
        e.session_id = session.to_string();
        e
    };
    let mut closed =
        airlock_eventlog::new_event(&source, Body::SessionClosed(proto::SessionClosed::default()));
    closed.session_id = session.to_string();
    recorder.record(&session, refused).expect("room");
    recorder.record(&session, inserted).expect("room");
    recorder.record(&session, closed).expect("room");
    let stored = session_events(&log, &session, 3).await;
    assert_eq!(
        stored.len(),
        3,
        "the refusal, the insert and the session's end are all in the log"
    );
    match &stored[1].event.body {
        Some(Body::StatementExecuted(x)) => {
            let s = x.statement.as_ref().expect("statement");
            assert_eq!(
                s.text,
                "INSERT INTO t VALUES ($1, $2) [the recorder kept the first 1024 bytes of each parameter]"
            );
            assert_eq!(s.parameters.len(), 2);
            for p in &s.parameters {
                assert_eq!(p.value, big[..1024]);
                assert!(
                    p.display.ends_with(&format!(" … [{} bytes]", big.len())),
                    "{}",
                    p.display
                );
            }
            assert_eq!(s.sha256, vec![9; 32], "the digest of the exact bytes stays");
        }
        other => panic!("{other:?}"),
    }
    match &stored[0].event.body {
        Some(Body::StatementRefused(x)) => {
            let s = x.statement.as_ref().expect("statement");
            assert!(s.text.len() < 100 * 1024, "cut to {} bytes", s.text.len());
            assert!(huge.starts_with(s.text.split(" … [cut").next().expect("start")));
            assert!(
                s.text
                    .contains(&format!("[cut by the recorder: {} bytes in all]", huge.len())),
                "{}",
                &s.text[s.text.len() - 120..]
            );
            assert!(s.text.ends_with("[the recorder kept 256 of 1000 parameters]"));
            assert_eq!(s.parameters.len(), 256);
            assert_eq!(s.sha256, vec![7; 32], "the digest of the exact bytes stays");
            assert_eq!(x.sqlstate, "42501");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(stored[2].event.body, Some(Body::SessionClosed(_))));
    airlock_eventlog::verify_chain(&stored).expect("the chain verifies");
}

/// Sequences real drivers send that PostgreSQL accepts (issue: the drivers'
/// own test suites through Airlock), each as the raw protocol the driver
/// sends, with PostgreSQL's own behaviour as the reference.
mod driver_patterns {
    use super::*;
    use airlock_proxy::codec::FeMessage;

    #[tokio::test]
    async fn the_process_id_a_client_is_given_is_its_backends() {
        // Drivers ignore notifications from their own backend by comparing
        // the pid in NotificationResponse with BackendKeyData's.
        let f = start(|_| {}).await;
        let mut stream = tokio::net::TcpStream::connect(f.addr).await.expect("connect");
        let body = b"\x00\x03\x00\x00user\0agent-7\0database\0shop\0\0";
        let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        startup.extend_from_slice(body);
        stream.write_all(&startup).await.expect("startup");
        let mut raw = Raw {
            stream,
            buf: bytes::BytesMut::new(),
        };
        assert_eq!(raw.next().await.0, b'R');
        let mut pw = TOKEN.as_bytes().to_vec();
        pw.push(0);
        raw.send(&[FeMessage::Password(pw.into())]).await;
        let mut given = None;
        loop {
            let (tag, body) = raw.next().await;
            if tag == b'K' {
                given = Some(i32::from_be_bytes([body[0], body[1], body[2], body[3]]));
            }
            if tag == b'Z' {
                break;
            }
        }
        let given = given.expect("BackendKeyData");
        raw.send(&[FeMessage::Query {
            sql: "LISTEN airlock_pids; NOTIFY airlock_pids".into(),
        }])
        .await;
        let mut notified = None;
        loop {
            let (tag, body) = raw.next().await;
            if tag == b'A' {
                notified = Some(i32::from_be_bytes([body[0], body[1], body[2], body[3]]));
            }
            if tag == b'Z' {
                break;
            }
        }
        assert_eq!(
            notified,
            Some(given),
            "the notification names the pid the client was given"
        );
    }

    #[tokio::test]
    async fn a_cancel_is_answered_only_once_postgresql_has_taken_it() {
        // A stand-in upstream that takes its time to close after a
        // CancelRequest, as PostgreSQL's postmaster closes only after
        // signalling the backend.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut packet = [0u8; 16];
            s.read_exact(&mut packet).await.expect("cancel request");
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
        let started = std::time::Instant::now();
        airlock_proxy::cancel::relay(&addr, (1, 2)).await;
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "returned after {:?}, before the upstream closed",
            started.elapsed()
        );
    }
}

mod review_query_in_batch {
    //! Review of a68187f (a simple Query inside an open batch of Parse,
    //! Describe, Close and Flush runs behind a Sync of the proxy's own;
    //! record-only policies). Each test names what it probes.
    use super::*;
    use airlock_proxy::codec::FeMessage;

    fn query(sql: &str) -> FeMessage {
        FeMessage::Query { sql: sql.into() }
    }

    fn describe(kind: u8, name: &str) -> FeMessage {
        FeMessage::Describe {
            kind,
            name: name.into(),
        }
    }

    fn close(kind: u8, name: &str) -> FeMessage {
        FeMessage::Close {
            kind,
            name: name.into(),
        }
    }

    /// A raw session straight to the fixture's PostgreSQL (the superuser
    /// is trusted on loopback): the oracle.
    async fn direct(f: &Fixture) -> Raw {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", f.pg.port()))
            .await
            .expect("connect");
        let body = b"\x00\x03\x00\x00user\0postgres\0database\0shop\0\0";
        let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        startup.extend_from_slice(body);
        let mut raw = Raw {
            stream,
            buf: bytes::BytesMut::new(),
        };
        raw.stream.write_all(&startup).await.expect("startup");
        raw.until_ready().await;
        raw
    }

    /// Whatever arrives within `ms`: tags (the session must stay open).
    async fn quiet_for(raw: &mut Raw, ms: u64) -> Vec<char> {
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(ms), raw.next()).await {
                Ok((tag, _)) => seen.push(tag as char),
                Err(_) => return seen,
            }
        }
    }

    /// A loader agent: reads, INSERT and COPY (FROM STDIN) allowed;
    /// DELETE, DROP and UPDATE held, as in the seed policy.
    fn loader_yaml() -> String {
        policy_yaml("SELECT|INSERT|COPY")
    }

    /// The record-only policy the commit introduces: every kind allowed,
    /// `unparsed: allow`, `default: allow`, `record: true`.
    fn record_only_yaml() -> String {
        let every: Vec<&str> = airlock_policy::config::judged_kinds().map(|k| k.name()).collect();
        format!(
            "{POLICY_HEAD}    unparsed: allow
    default: allow
    rules:
      - match: {}
        action: allow
",
            every.join("|")
        )
    }

    /// Starts a fixture whose gate is the real one under `yaml`; returns
    /// the gate too, to reload it.
    async fn start_policy(yaml: String) -> (Fixture, Arc<airlock_proxy::policy_gate::PolicyGate>) {
        let slot: Arc<std::sync::Mutex<Option<Arc<airlock_proxy::policy_gate::PolicyGate>>>> = Arc::default();
        let s = slot.clone();
        let f = start_with_gate(
            |_| {},
            move |upstream| {
                let g = SeedPolicy::policy_gate(&yaml, upstream);
                *s.lock().expect("slot") = Some(g.clone());
                Arc::new(SeedPolicy { inner: g })
            },
        )
        .await;
        let g = slot.lock().expect("slot").clone().expect("gate");
        (f, g)
    }

    /// Once the proxy's model is one boundary behind PostgreSQL's, a name
    /// redefinition PostgreSQL refused is confirmed by the next batch's
    /// ParseComplete: the proxy believes `s` is the SELECT, PostgreSQL
    /// still has the DELETE, and binding `s` runs it.
    async fn launder_through_a_lagging_model(raw: &mut Raw) {
        // PostgreSQL refuses the redefinition (42P05): s stays the DELETE.
        raw.send(&[parse("s", "SELECT 1"), FeMessage::Sync]).await;
        assert_eq!(answer(raw).await, (None, vec!["42P05".to_string()]));
        // Its ParseComplete is taken for the refused redefinition's.
        raw.send(&[parse("y", "SELECT 2"), FeMessage::Sync]).await;
        assert_eq!(answer(raw).await, (None, vec![]));
        // The proxy binds "SELECT 1"; PostgreSQL runs the DELETE.
        raw.send(&[bind("", "s"), execute(""), FeMessage::Sync]).await;
        let _ = answer(raw).await;
    }

    #[tokio::test]
    async fn postgresql_ignores_a_sync_sent_during_copy_from_stdin() {
        // The oracle for the two tests below: in COPY IN (started by a
        // simple Query) PostgreSQL ignores Sync and Flush; one
        // ReadyForQuery ends the COPY.
        let f = start(|_| {}).await;
        let mut pg = direct(&f).await;
        pg.send(&[query("COPY orders FROM STDIN")]).await;
        assert_eq!(tags(&mut pg, 1).await, vec!['G']);
        pg.send(&[FeMessage::Sync, FeMessage::CopyDone]).await;
        assert_eq!(pg.until_ready().await, (vec!['C', 'Z'], vec![]));
        assert!(quiet_for(&mut pg, 500).await.is_empty(), "no answer to the Sync");
    }

    #[tokio::test]
    async fn copy_started_behind_the_proxys_own_sync_is_not_seen_and_a_held_delete_runs() {
        // The own Sync's ReadyForQuery clears the proxy's COPY flag (every
        // 'Z' does, to_client.rs) after the reading side set it for the
        // COPY sent behind that Sync: the proxy believes COPY is over while
        // PostgreSQL is in it. A Sync then is counted as a batch boundary
        // PostgreSQL never answers, the name model lags by one, and a
        // redefinition PostgreSQL refused is taken as done.
        let (f, _) = start_policy(loader_yaml()).await;
        let mut raw = Raw::login(f.addr).await;
        // A held statement may be parsed (parsing runs nothing).
        raw.send(&[parse("s", "DELETE FROM orders"), FeMessage::Sync])
            .await;
        assert_eq!(answer(&mut raw).await, (None, vec![]));
        // asyncpg-style: Parse, then a simple Query before any Sync.
        raw.send(&[parse("x", "SELECT 1"), query("COPY orders FROM STDIN")])
            .await;
        assert_eq!(tags(&mut raw, 2).await, vec!['1', 'G']);
        // In COPY, a Sync is nothing to PostgreSQL (see the oracle above).
        raw.send(&[FeMessage::Sync, FeMessage::CopyDone]).await;
        assert_eq!(raw.until_ready().await, (vec!['C', 'Z'], vec![]));
        launder_through_a_lagging_model(&mut raw).await;
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn a_second_copy_in_the_same_query_string_keeps_the_proxy_in_copy_mode() {
        // After the first COPY's CopyDone, PostgreSQL starts the second
        // COPY of the query string: a Parse sent then is COPY input to it.
        // Were the proxy out of COPY mode at the CopyDone, it would count
        // that Parse and its Sync, and its model would slip.
        let (f, _) = start_policy(loader_yaml()).await;
        let mut raw = login_with_s(&f, "DELETE FROM orders").await;
        raw.send(&[query("COPY orders FROM STDIN; COPY orders FROM STDIN")])
            .await;
        assert_eq!(tags(&mut raw, 1).await, vec!['G']);
        raw.send(&[FeMessage::CopyDone]).await;
        assert_eq!(tags(&mut raw, 2).await, vec!['C', 'G']);
        raw.send(&[parse("s", "SELECT 1"), FeMessage::Sync]).await;
        assert_eq!(answer(&mut raw).await, (Some("08P01".to_string()), vec![]));
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn copy_started_behind_a_pipelined_query_is_not_seen_either() {
        // The same root cause without the commit's path: any ReadyForQuery
        // answering something sent before the COPY clears the flag.
        let (f, _) = start_policy(loader_yaml()).await;
        let mut raw = login_with_s(&f, "DELETE FROM orders").await;
        raw.send(&[query("SELECT 1"), query("COPY orders FROM STDIN")])
            .await;
        assert_eq!(tags(&mut raw, 5).await, vec!['T', 'D', 'C', 'Z', 'G']);
        raw.send(&[FeMessage::Sync, FeMessage::CopyDone]).await;
        assert_eq!(raw.until_ready().await, (vec!['C', 'Z'], vec![]));
        launder_through_a_lagging_model(&mut raw).await;
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn a_query_after_an_error_in_its_batch_runs_where_postgresql_would_skip_it() {
        // A known, documented difference (docs/proxy.md): PostgreSQL skips a
        // Query that follows an error in an unsynced batch
        // (ignore_till_sync); behind the proxy's own Sync it is judged and
        // runs. What matters for the gate: it is judged like any Query and
        // the session stays in step with PostgreSQL.
        let f = start(|_| {}).await;
        let update = "UPDATE orders SET total = 0 WHERE id = 1";
        let total = |f: &Fixture| f.pg.psql("shop", "SELECT total FROM orders WHERE id = 1");
        let mut pg = direct(&f).await;
        pg.send(&[parse("", "SELECT * FROM no_such_table"), query(update)])
            .await;
        assert_eq!(tags(&mut pg, 1).await, vec!['E']);
        assert!(
            quiet_for(&mut pg, 500).await.is_empty(),
            "PostgreSQL skips the Query"
        );
        pg.send(&[FeMessage::Sync]).await;
        assert_eq!(pg.until_ready().await.0, vec!['Z']);
        assert_eq!(total(&f), "10", "PostgreSQL did not run it");
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[parse("", "SELECT * FROM no_such_table"), query(update)])
            .await;
        assert_eq!(
            raw.until_ready().await,
            (vec!['E', 'C', 'Z'], vec!["42P01".to_string()])
        );
        assert_eq!(total(&f), "0", "through Airlock the allowed UPDATE ran");
        // The client's own Sync is answered, and the session is in step.
        raw.send(&[FeMessage::Sync]).await;
        assert_eq!(raw.until_ready().await, (vec!['Z'], vec![]));
        raw.send(&[query("DELETE FROM orders")]).await;
        assert_eq!(raw.until_ready().await.1, vec![HELD_WITHOUT_CONTROL]);
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn a_close_postgresql_skipped_after_an_error_is_not_believed() {
        // Describe of a missing portal fails; the Close after it is skipped
        // by PostgreSQL; the Query runs behind the own Sync; s is still
        // the DELETE and stays held.
        let f = start(|_| {}).await;
        let mut raw = login_with_s(&f, "DELETE FROM orders").await;
        raw.send(&[describe(b'P', "nosuch"), close(b'S', "s"), query("SELECT 1")])
            .await;
        assert_eq!(answer(&mut raw).await, (None, vec!["34000".to_string()]));
        raw.send(&[parse("s", "SELECT 1"), FeMessage::Sync]).await;
        assert_eq!(answer(&mut raw).await, (None, vec!["42P05".to_string()]));
        raw.send(&[parse("t", "SELECT 2"), FeMessage::Sync]).await;
        assert_eq!(answer(&mut raw).await, (None, vec![]));
        raw.send(&[bind("", "s"), execute(""), FeMessage::Sync]).await;
        assert_eq!(
            answer(&mut raw).await,
            (None, vec![HELD_WITHOUT_CONTROL.to_string()])
        );
        // A Close PostgreSQL did do is believed: s may then be redefined.
        raw.send(&[close(b'S', "s"), FeMessage::Flush, query("SELECT 1")])
            .await;
        assert_eq!(answer(&mut raw).await, (None, vec![]));
        raw.send(&[
            parse("s", "SELECT 3"),
            bind("", "s"),
            execute(""),
            FeMessage::Sync,
        ])
        .await;
        assert_eq!(answer(&mut raw).await, (None, vec![]));
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn a_query_in_a_failed_transactions_batch_is_judged_and_the_session_stays_in_step() {
        let f = start(|_| {}).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[query("BEGIN"), query("SELECT 1/0")]).await;
        assert_eq!(answer(&mut raw).await, (None, vec![]));
        assert_eq!(answer(&mut raw).await, (None, vec!["22012".to_string()]));
        // The Parse fails (25P02); the held Query is refused; in one write.
        raw.send(&[
            parse("", "SELECT 1"),
            describe(b'S', ""),
            query("DELETE FROM orders"),
            parse("d", "DELETE FROM orders"),
            FeMessage::Flush,
            query("ROLLBACK"),
        ])
        .await;
        // The stand-in fails as the DELETE would have (25P02, not rewritten).
        let (fatal, errors) = answer(&mut raw).await;
        assert_eq!(fatal, None);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0], "25P02");
        // d's Parse failed in the aborted transaction: d does not exist.
        assert_eq!(answer(&mut raw).await, (None, vec!["25P02".to_string()]));
        raw.send(&[bind("", "d"), execute(""), FeMessage::Sync]).await;
        let (fatal, errors) = answer(&mut raw).await;
        assert_eq!(fatal, None);
        assert_eq!(errors.len(), 1, "{errors:?}");
        raw.send(&[
            parse("d", "DELETE FROM orders"),
            bind("", "d"),
            execute(""),
            FeMessage::Sync,
        ])
        .await;
        assert_eq!(
            answer(&mut raw).await,
            (None, vec![HELD_WITHOUT_CONTROL.to_string()])
        );
        raw.send(&[query("SELECT count(*) FROM orders")]).await;
        assert_eq!(raw.until_ready().await, (vec!['T', 'D', 'C', 'Z'], vec![]));
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn many_queries_flushes_and_errors_in_one_write_stay_in_step() {
        let f = start(|_| {}).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[
            FeMessage::Flush,
            query("SELECT 1"),
            parse("a", "SELECT 1"),
            describe(b'S', "a"),
            query("DELETE FROM orders"),
            query("SELECT 2"),
            describe(b'S', "nosuch"),
            close(b'P', "nosuch"),
            query("DELETE FROM orders"),
            FeMessage::Flush,
            FeMessage::Flush,
            query("DROP TABLE orders"),
            parse("b", "SELECT * FROM no_such_table"),
            FeMessage::FunctionCall(bytes::Bytes::from_static(b"\0\0\0\x01\0\0\0\0\0\0")),
            parse("", "DELETE FROM orders"),
            bind("", ""),
            execute(""),
            FeMessage::Sync,
        ])
        .await;
        let mut all = Vec::new();
        for _ in 0..7 {
            let (fatal, errors) = answer(&mut raw).await;
            assert_eq!(fatal, None, "{all:?}");
            all.push(errors);
        }
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            all,
            vec![
                s(&[]),
                s(&[HELD_WITHOUT_CONTROL]),
                s(&[]),
                s(&["26000", HELD_WITHOUT_CONTROL]),
                s(&["42501"]),
                s(&["42P01", "42501"]),
                s(&[HELD_WITHOUT_CONTROL]),
            ]
        );
        assert!(quiet_for(&mut raw, 300).await.is_empty());
        raw.send(&[bind("", "a"), execute(""), FeMessage::Sync]).await;
        assert_eq!(raw.until_ready().await, (vec!['2', 'D', 'C', 'Z'], vec![]));
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn a_refusal_already_answered_does_not_stop_a_query_and_the_session_stays_in_step() {
        let f = start(|_| {}).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[parse("", "DROP TABLE orders"), FeMessage::Flush])
            .await;
        assert_eq!(tags(&mut raw, 1).await, vec!['E']);
        // The stand-in's error is in: the Query runs behind the own Sync.
        raw.send(&[query("DELETE FROM orders")]).await;
        assert_eq!(
            answer(&mut raw).await,
            (None, vec![HELD_WITHOUT_CONTROL.to_string()])
        );
        raw.send(&[query("SELECT count(*) FROM orders")]).await;
        assert_eq!(raw.until_ready().await, (vec!['T', 'D', 'C', 'Z'], vec![]));
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn a_query_in_a_batch_still_waits_behind_an_unanswered_encoding_change() {
        let f = start_with_gate(|_| {}, SeedPolicy::lenient).await;
        f.pg.psql(
            "shop",
            "CREATE FUNCTION sneaky() RETURNS text LANGUAGE sql \
             AS $$ SELECT set_config('client_encoding', 'SJIS', false) $$",
        );
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[
            query("SELECT sneaky()"),
            parse("", "SELECT 1"),
            FeMessage::Flush,
            query("SELECT E'Ё\\'; DELETE FROM orders; --'"),
        ])
        .await;
        let (fatal, _) = answer(&mut raw).await;
        assert_eq!(fatal.as_deref(), Some("0A000"));
        assert_untouched(&f);
    }

    /// Review finding: a statement prepared (Parse) before a reload kept
    /// the judgement made then, so a rule tightened by the reload (deny,
    /// or a hold with step-up) never applied to it on pooled connections.
    /// It is judged again at its Bind.
    #[tokio::test]
    async fn a_statement_prepared_before_a_reload_is_judged_by_the_new_policies() {
        let (f, gate) = start_policy(policy_yaml("SELECT|DELETE")).await;
        let mut raw = login_with_s(&f, "DELETE FROM orders WHERE id = 1").await;
        // The operator now holds every DELETE.
        gate.replace_policies(
            airlock_policy::PolicySet::from_config_yaml(&policy_yaml("SELECT"), "tightened.yaml")
                .expect("policy"),
        );
        raw.send(&[bind("", "s"), execute(""), FeMessage::Sync]).await;
        assert_eq!(
            answer(&mut raw).await,
            (None, vec![HELD_WITHOUT_CONTROL.to_string()]),
            "held under the new policy, not allowed under the old"
        );
        assert_untouched(&f);
        // And a statement prepared after the reload is judged as usual.
        raw.send(&[
            parse("t", "SELECT count(*) FROM orders"),
            bind("", "t"),
            execute(""),
            FeMessage::Sync,
        ])
        .await;
        assert_eq!(answer(&mut raw).await, (None, vec![]));
    }

    /// Review finding: a portal bound (allowed) before a reload that now
    /// holds its statement ran at its Execute under the old judgement.
    #[tokio::test]
    async fn a_portal_bound_before_a_reload_that_tightens_it_does_not_run() {
        let (f, gate) = start_policy(policy_yaml("SELECT|DELETE")).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[query("BEGIN")]).await;
        assert_eq!(answer(&mut raw).await, (None, vec![]));
        raw.send(&[
            parse("s", "DELETE FROM orders WHERE id = 1"),
            bind("p", "s"),
            FeMessage::Sync,
        ])
        .await;
        assert_eq!(answer(&mut raw).await, (None, vec![]), "bound, allowed");
        // Reloading the same policies changes nothing.
        gate.replace_policies(
            airlock_policy::PolicySet::from_config_yaml(&policy_yaml("SELECT|DELETE"), "same.yaml")
                .expect("policy"),
        );
        // Now every DELETE is held.
        gate.replace_policies(
            airlock_policy::PolicySet::from_config_yaml(&policy_yaml("SELECT"), "tightened.yaml")
                .expect("policy"),
        );
        raw.send(&[execute("p"), FeMessage::Sync]).await;
        let (fatal, errors) = answer(&mut raw).await;
        assert_eq!(fatal, None);
        assert_eq!(errors, vec!["42501".to_string()], "refused at Execute");
        raw.send(&[query("ROLLBACK")]).await;
        let _ = answer(&mut raw).await;
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn record_only_unparsed_text_moves_a_protocol_name_and_a_reload_keeps_the_lie() {
        // Under `unparsed: allow` the proxy's own guard on names shared by
        // SQL PREPARE and Parse (judgement.sql_names) is gone: the text is
        // not parsed, so its DEALLOCATE/PREPARE are not seen. PostgreSQL's
        // s becomes the DELETE while the proxy's stays "SELECT 1" (the
        // record of the Execute names the SELECT). When the operator
        // reloads to a gating policy, binding s runs the DELETE unapproved.
        let (f, gate) = start_policy(record_only_yaml()).await;
        let mut raw = login_with_s(&f, "SELECT 1").await;
        // The parsed form is refused even by a record-only policy.
        raw.send(&[query("DEALLOCATE s")]).await;
        assert_eq!(answer(&mut raw).await, (None, vec!["42501".to_string()]));
        // The unparsed form is not (a non-ASCII dollar-quote tag).
        raw.send(&[query(
            "SELECT $€$x$€$; DEALLOCATE s; PREPARE s AS DELETE FROM orders",
        )])
        .await;
        assert_eq!(answer(&mut raw).await, (None, vec![]));
        // The operator stops the record-only regime.
        let gating = policy_yaml("SELECT");
        gate.replace_policies(
            airlock_policy::PolicySet::from_config_yaml(&gating, "review.yaml").expect("policy"),
        );
        raw.send(&[query("DELETE FROM orders")]).await;
        assert_eq!(
            answer(&mut raw).await,
            (None, vec![HELD_WITHOUT_CONTROL.to_string()]),
            "now gated"
        );
        raw.send(&[bind("", "s"), execute(""), FeMessage::Sync]).await;
        let _ = answer(&mut raw).await;
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn record_only_unparsed_text_runs_as_sent_and_a_hidden_encoding_change_still_ends_the_session() {
        // docs/policy.md: the record-only refusals of EXECUTE of unknown
        // names and of reading settings apply to statements that parse.
        // Text that does not parse (here a non-ASCII dollar-quote tag, with
        // the rest in what sqlparser takes for a comment) runs as sent; a
        // setting change hidden in it ends the session when PostgreSQL
        // reports it.
        let (f, _) = start_policy(record_only_yaml()).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[query("SELECT $€$ --$€$; EXECUTE p;")]).await;
        assert_eq!(
            answer(&mut raw).await,
            (None, vec!["26000".to_string()]),
            "PostgreSQL: no such p"
        );
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[query("SELECT $€$ --$€$; SET client_encoding = 'SJIS';")])
            .await;
        let (fatal, errors) = answer(&mut raw).await;
        assert_eq!(
            (fatal, errors),
            (Some("0A000".to_string()), vec![]),
            "the session ends"
        );
        // Parsed, the same commands are refused.
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[query("EXECUTE p")]).await;
        assert_eq!(answer(&mut raw).await, (None, vec!["42501".to_string()]));
        raw.send(&[query("SET client_encoding = 'SJIS'")]).await;
        assert_eq!(answer(&mut raw).await, (None, vec!["42501".to_string()]));
    }

    #[tokio::test]
    async fn a_denied_parse_pipelined_with_a_query_is_answered_like_a_failing_one() {
        // A Parse PostgreSQL fails (42P01) pipelined with a Query: the
        // Query runs behind the own Sync (the commit's own test). A Parse
        // the proxy denies, in the same place: the session ends (08P01,
        // "after Bind or Execute", though there was none), unless the
        // client waited for the refusal first. Same wire sequence for the
        // client, two outcomes decided by timing.
        let f = start(|_| {}).await;
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[parse("", "DROP TABLE orders"), query("SELECT 1")])
            .await;
        assert_eq!(answer(&mut raw).await, (None, vec!["42501".to_string()]));
        assert_untouched(&f);
    }

    fn loads(rules: &str, extra: &str) -> Result<airlock_policy::PolicySet, String> {
        let yaml = format!("{POLICY_HEAD}{extra}    rules:\n{rules}");
        airlock_policy::PolicySet::from_config_yaml(&yaml, "review.yaml").map_err(|e| e.to_string())
    }

    #[test]
    fn record_only_is_accepted_only_when_nothing_is_gated() {
        let every: Vec<&str> = airlock_policy::config::judged_kinds().map(|k| k.name()).collect();
        let all = every.join("|");
        let but_delete = every
            .iter()
            .filter(|k| **k != "DELETE")
            .copied()
            .collect::<Vec<_>>()
            .join("|");
        let unparsed = "    unparsed: allow\n";
        let default = "    default: allow\n";
        // The intended form.
        assert!(
            loads(
                &format!("      - match: {all}\n        action: allow\n"),
                unparsed
            )
            .is_ok()
        );
        // Listed as a YAML sequence of single kinds and pipes, with repeats.
        let seq = every
            .iter()
            .map(|k| format!("\"{k}\""))
            .collect::<Vec<_>>()
            .join(", ");
        assert!(
            loads(
                &format!("      - match: [{seq}, SELECT|SELECT]\n        action: allow\n"),
                unparsed
            )
            .is_ok()
        );
        // Split over rules: fine; `tables: []` is any table.
        assert!(loads(
            &format!(
                "      - match: {but_delete}\n        action: allow\n      - match: DELETE\n        tables: []\n        action: allow\n"
            ),
            default
        )
        .is_ok());
        // Refused: a missing kind, a table- or function-scoped kind, any
        // hold or deny (even shadowed by an earlier allow), and no record.
        for (rules, why) in [
            (
                format!("      - match: {but_delete}\n        action: allow\n"),
                "missing DELETE",
            ),
            (
                format!(
                    "      - match: {but_delete}\n        action: allow\n      - match: DELETE\n        tables: [public.x]\n        action: allow\n"
                ),
                "table-scoped DELETE",
            ),
            (
                format!(
                    "      - match: {but_delete}\n        action: allow\n      - match: DELETE\n        functions: [f]\n        action: allow\n"
                ),
                "function-scoped DELETE",
            ),
            (
                format!(
                    "      - match: {all}\n        action: allow\n      - match: DELETE\n        action: deny\n"
                ),
                "a shadowed deny",
            ),
            (
                format!(
                    "      - match: {all}\n        action: allow\n      - functions: [pg_sleep]\n        action: deny\n"
                ),
                "a function deny",
            ),
        ] {
            assert!(loads(&rules, unparsed).is_err(), "{why}: unparsed");
            assert!(loads(&rules, default).is_err(), "{why}: default");
        }
        let no_record = format!(
            "{}    unparsed: allow\n    rules:\n      - match: {all}\n        action: allow\n",
            POLICY_HEAD.replace("    record: true\n", "")
        );
        assert!(
            airlock_policy::PolicySet::from_config_yaml(&no_record, "r.yaml").is_err(),
            "record: false"
        );
    }

    /// A session whose protocol statement `s` is `text`, answered.
    async fn login_with_s(f: &Fixture, text: &str) -> Raw {
        let mut raw = Raw::login(f.addr).await;
        raw.send(&[parse("s", text), FeMessage::Sync]).await;
        assert_eq!(answer(&mut raw).await, (None, vec![]));
        raw
    }

    /// A DO block that turns the protocol statement `s` (parsed as
    /// `SELECT 1`) into a DELETE: PostgreSQL shares one namespace between
    /// protocol and SQL prepared statements, and DO's dynamic SQL may
    /// DEALLOCATE and PREPARE in it.
    const REDEFINE_S: &str =
        "DO $$BEGIN EXECUTE 'DEALLOCATE s'; EXECUTE 'PREPARE s AS DELETE FROM orders'; END$$";

    #[tokio::test]
    async fn after_a_do_block_by_simple_query_no_earlier_name_is_trusted() {
        // Review of the fallback classifier: DO is now read (kind DO), so
        // it is no longer unparsed text; it must still make the proxy forget
        // every name, or `s` would be judged as the SELECT it was.
        let (f, _gate) = start_policy(record_only_yaml()).await;
        let mut raw = login_with_s(&f, "SELECT 1").await;
        raw.send(&[query(REDEFINE_S)]).await;
        assert_eq!(answer(&mut raw).await, (None, vec![]), "the DO block runs");
        raw.send(&[bind("", "s"), execute(""), FeMessage::Sync]).await;
        assert_eq!(answer(&mut raw).await, (None, vec!["42501".to_string()]));
        assert_untouched(&f);
    }

    #[tokio::test]
    async fn after_a_do_block_by_the_extended_protocol_no_earlier_name_is_trusted() {
        // Review: only the simple protocol forgot names after opaque text;
        // a DO block (or unparsed text) sent with Parse, Bind and Execute
        // left `s` judged as the SELECT it was. In one batch too: the Bind
        // of `s` behind the DO's Execute is refused, not waited on.
        let (f, _gate) = start_policy(record_only_yaml()).await;
        let mut raw = login_with_s(&f, "SELECT 1").await;
        raw.send(&[
            parse("", REDEFINE_S),
            bind("", ""),
            execute(""),
            bind("p", "s"),
            execute("p"),
            FeMessage::Sync,
        ])
        .await;
        assert_eq!(answer(&mut raw).await, (None, vec!["42501".to_string()]));
        assert_untouched(&f);
        // And in the next batch, once the DO has been answered.
        raw.send(&[bind("", "s"), execute(""), FeMessage::Sync]).await;
        assert_eq!(answer(&mut raw).await, (None, vec!["42501".to_string()]));
        assert_untouched(&f);
        // What is parsed after it is known.
        raw.send(&[
            parse("t", "SELECT 2"),
            bind("", "t"),
            execute(""),
            FeMessage::Sync,
        ])
        .await;
        assert_eq!(answer(&mut raw).await, (None, vec![]));
    }
}

/// Review finding: an agent in two groups whose policies both hold a
/// statement got the hold of the first policy in the file, so the second's
/// step-up (and reviewers, quorum, wait) was dropped. Both now combine, in
/// either order.
#[tokio::test]
async fn a_statement_two_policies_hold_needs_what_both_ask() {
    let second = "
  - policy: db-leads
    connection: shop
    rules:
      - match: SELECT
        action: allow
      - match: DELETE
        action: require-approval
        reviewers: [db-reviewers, grp-dba]
        approvals: 2
        timeout: 5m
        require_acrs: [c1]
";
    let first = policy_yaml("SELECT").replace(
        "    db-reviewers: grp-reviewers\n",
        "    db-reviewers: grp-reviewers\n    db-leads: grp-leads\n",
    );
    let upstream = UpstreamConfig {
        tls: Default::default(),
        host: "127.0.0.1".into(),
        port: 1,
        user: "maint".into(),
        database: "shop".into(),
        password: None,
        token: None,
        connect_timeout: Duration::from_secs(1),
    };
    let both = proto::Identity {
        subject: "oid-agent-7".into(),
        kind: proto::identity::Kind::App as i32,
        groups: ["grp-agents", "grp-leads"]
            .iter()
            .map(|id| proto::Group {
                id: (*id).into(),
                name: String::new(),
            })
            .collect(),
        ..Default::default()
    };
    for yaml in [format!("{first}{second}"), {
        // The other order: db-leads first.
        let (head, rules) = first
            .split_once("  - policy: db-maintenance-agents")
            .expect("policy");
        format!(
            "{head}{}  - policy: db-maintenance-agents{rules}",
            second.trim_start_matches('\n')
        )
    }] {
        let gate = SeedPolicy::policy_gate(&yaml, upstream.clone());
        let agent = Agent {
            identity: both.clone(),
        };
        let binding = gate.bind(&agent, "shop").expect("bound by both policies");
        assert_eq!(binding.policies.len(), 2);
        let judged = gate.judge(&binding, "DELETE FROM orders WHERE id = 1");
        match judged.action {
            Action::Hold(spec) => {
                assert_eq!(spec.require_acrs, ["c1"], "{yaml}");
                assert_eq!(spec.approvals, 2);
                assert_eq!(spec.timeout, Duration::from_secs(300));
                let reviewers: Vec<&str> = spec.reviewers.iter().map(|g| g.name.as_str()).collect();
                assert_eq!(reviewers, ["db-reviewers"], "only the groups both allow");
            }
            other => panic!("{other:?}"),
        }
    }
}
