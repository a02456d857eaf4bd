//! A whole Airlock stack in one test process: a real nats-server, a real
//! PostgreSQL with the demo `shop` database, a control-plane replica and a
//! proxy, both on loopback. Identity and policy are test doubles until the
//! identity and policy crates are wired into the binaries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_control::grpc::{Control, ReviewerAuth};
use airlock_control::live::Live;
use airlock_control::projection::Projection;
use airlock_eventlog::proto;
use airlock_eventlog::{EventLog, NatsSettings};
use airlock_proxy::attach::Holds;
use airlock_proxy::gate::{Action, Agent, Binding, BoxFuture, Gate, HoldSpec, Judgement, Refusal};
use airlock_proxy::record::Recorder;
use airlock_proxy::server::{Server, ServerSettings};
use airlock_proxy::session::Deps;
use airlock_proxy::upstream::{Secret, UpstreamConfig};
use airlock_testkit::{NatsServer, Postgres, PostgresOptions};

pub mod binaries;
pub mod otlp;

pub const AGENT_TOKEN: &str = "token-agent-7";
pub const REVIEWERS: &str = "grp-db-reviewers";
pub const AGENTS: &str = "grp-db-maintenance-agents";

pub fn identity(subject: &str, name: &str, kind: proto::identity::Kind, groups: &[&str]) -> proto::Identity {
    proto::Identity {
        subject: subject.into(),
        display_name: name.into(),
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

pub fn agent() -> proto::Identity {
    identity("oid-agent-7", "agent-7", proto::identity::Kind::App, &[AGENTS])
}

/// Reviewer tokens: alice and bob review; erin does not; the agent's own
/// token is an app identity.
#[derive(Debug)]
pub struct Tokens(pub HashMap<String, proto::Identity>);

impl Tokens {
    pub fn standard() -> Tokens {
        use proto::identity::Kind::User;
        Tokens(HashMap::from([
            (
                "alice".to_owned(),
                identity("oid-alice", "Alice", User, &[REVIEWERS]),
            ),
            ("bob".to_owned(), identity("oid-bob", "Bob", User, &[REVIEWERS])),
            ("erin".to_owned(), identity("oid-erin", "Erin", User, &[AGENTS])),
            (AGENT_TOKEN.to_owned(), agent()),
        ]))
    }
}

impl ReviewerAuth for Tokens {
    fn verify<'a>(
        &'a self,
        token: &'a str,
    ) -> airlock_control::grpc::BoxFuture<'a, Result<proto::Identity, String>> {
        Box::pin(async move {
            self.0
                .get(token)
                .cloned()
                .ok_or_else(|| "unknown token".to_owned())
        })
    }
}

/// The seed policy: SELECT allowed; DELETE, DROP, UPDATE need approval.
/// A test double on keywords; the real classifier lives in the policy crate.
struct SeedGate {
    upstream: UpstreamConfig,
    timeout: Duration,
}

impl Gate for SeedGate {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Agent, Refusal>> {
        Box::pin(async move {
            if token == AGENT_TOKEN {
                Ok(Agent { identity: agent() })
            } else {
                Err(Refusal::unauthenticated("token refused"))
            }
        })
    }

    fn bind(&self, _: &Agent, database: &str) -> Result<Binding, Refusal> {
        if database != "prod-maintenance" {
            return Err(Refusal::unauthenticated(format!(
                "no policy for connection {database}"
            )));
        }
        Ok(Binding {
            connection: "prod-maintenance".into(),
            upstream: self.upstream.clone(),
            policies: vec![proto::PolicyRef {
                name: "db-maintenance-agents".into(),
                digest: "seed".into(),
            }],
            record: true,
            session: Default::default(),
        })
    }

    fn judge(&self, _: &Binding, sql: &str) -> Judgement {
        let upper = sql.trim_start().to_uppercase();
        let gated = ["DELETE", "DROP", "UPDATE"].iter().any(|k| upper.contains(k));
        let (action, rule) = if gated {
            (
                Action::Hold(HoldSpec {
                    approvals: 1,
                    reviewers: vec![proto::Group {
                        id: REVIEWERS.into(),
                        name: "db-reviewers".into(),
                    }],
                    timeout: self.timeout,
                }),
                "DELETE|DROP|UPDATE -> require-approval",
            )
        } else {
            (Action::Allow, "SELECT -> allow")
        };
        Judgement {
            action,
            verdict: proto::Verdict {
                action: if gated {
                    proto::verdict::Action::RequireApproval as i32
                } else {
                    proto::verdict::Action::Allow as i32
                },
                policy: "db-maintenance-agents".into(),
                rule: rule.into(),
                reason: if gated {
                    "changes need a reviewer".into()
                } else {
                    String::new()
                },
                parsed: true,
                ..Default::default()
            },
            on_finish: None,
            executes_prepared: false,
            sql_names: Vec::new(),
            drops_all: false,
            kinds: Vec::new(),
        }
    }
}

/// The running stack.
#[allow(missing_debug_implementations)]
pub struct Stack {
    pub pg: Postgres,
    pub nats: NatsServer,
    pub log: EventLog,
    pub live: Arc<Live>,
    pub control_url: String,
    pub proxy: SocketAddr,
    pub holds: Arc<Holds>,
    upstream: UpstreamConfig,
    hold_timeout: Duration,
    phase: tokio::sync::watch::Sender<airlock_proxy::session::Phase>,
}

/// Starts a proxy attached to the control plane; returns its address.
async fn spawn_proxy(
    log: &EventLog,
    control_url: &str,
    upstream: UpstreamConfig,
    hold_timeout: Duration,
    id: &str,
) -> (
    SocketAddr,
    Arc<Holds>,
    tokio::sync::watch::Sender<airlock_proxy::session::Phase>,
) {
    let holds = Holds::new();
    let (phase_tx, phase) = tokio::sync::watch::channel(airlock_proxy::session::Phase::Running);
    tokio::spawn(airlock_proxy::attach::run(
        vec![control_url.to_owned()],
        id.into(),
        holds.clone(),
    ));
    let mut settings = ServerSettings::new("127.0.0.1:0".parse().expect("addr"));
    settings.allow_plaintext_loopback = true;
    let server = Server::bind(settings).await.expect("bind proxy");
    let proxy = server.local_addr().expect("addr");
    let cancels = airlock_proxy::cancel::Cancels::new();
    tokio::spawn(cancels.clone().listen(log.client().clone()));
    let deps = Deps {
        gate: Arc::new(SeedGate {
            upstream,
            timeout: hold_timeout,
        }),
        log: log.clone(),
        recorder: Recorder::spawn(log.clone(), 2, 4096, Duration::from_millis(2)),
        holds: holds.clone(),
        source: proto::Source {
            kind: proto::source::Kind::Proxy as i32,
            id: id.into(),
            ..Default::default()
        },
        reviewer_url: Some("https://airlock.example".into()),
        expiry_grace: Duration::from_secs(2),
        cancels,
        metrics: airlock_proxy::metrics::Metrics::new(&Default::default()),
        phase,
    };
    tokio::spawn(server.run(Arc::new(deps)));
    for _ in 0..100 {
        if holds.is_attached() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(holds.is_attached(), "proxy {id} attached to the control plane");
    (proxy, holds, phase_tx)
}

impl Stack {
    pub async fn start(hold_timeout: Duration) -> Stack {
        let pg = Postgres::start_with(PostgresOptions::default().setting("log_statement", "all"));
        pg.create_database("shop");
        pg.create_role("maint", "maint-secret");
        pg.psql(
            "shop",
            "CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL DEFAULT 'open'); \
             INSERT INTO orders (id) SELECT g FROM generate_series(1, 10) g; \
             GRANT ALL ON orders TO maint",
        );
        let nats = NatsServer::start();
        let log = EventLog::connect(NatsSettings::new(nats.url()))
            .await
            .expect("nats");
        log.ensure_stream().await.expect("stream");

        // Control plane.
        let live = Live::spawn(log.clone(), Projection::new()).await;
        assert!(
            live.wait_ready(Duration::from_secs(10)).await,
            "control plane caught up"
        );
        let source = proto::Source {
            kind: proto::source::Kind::Control as i32,
            id: "control-1".into(),
            ..Default::default()
        };
        let control = Control {
            live: live.clone(),
            log: log.clone(),
            auth: Arc::new(Tokens::standard()),
            source: source.clone(),
            kill_groups: vec![REVIEWERS.into()],
        };
        tokio::spawn(airlock_control::act::reconcile_forever(
            live.clone(),
            log.clone(),
            source,
            Duration::from_millis(200),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind control");
        let control_url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(proto::reviewer_service_server::ReviewerServiceServer::new(
                    control.clone(),
                ))
                .add_service(proto::proxy_service_server::ProxyServiceServer::new(control))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );

        // Proxy.
        let upstream = UpstreamConfig {
            tls: Default::default(),
            host: "127.0.0.1".into(),
            port: pg.port(),
            user: "maint".into(),
            database: "shop".into(),
            password: Some(Secret::new("maint-secret")),
            connect_timeout: Duration::from_secs(5),
        };
        let (proxy, holds, phase) =
            spawn_proxy(&log, &control_url, upstream.clone(), hold_timeout, "proxy-1").await;
        Stack {
            pg,
            nats,
            log,
            live,
            control_url,
            proxy,
            holds,
            upstream,
            hold_timeout,
            phase,
        }
    }

    /// Another proxy of the fleet on the same log and control plane.
    pub async fn second_proxy(&self) -> SocketAddr {
        spawn_proxy(
            &self.log,
            &self.control_url,
            self.upstream.clone(),
            self.hold_timeout,
            "proxy-2",
        )
        .await
        .0
    }

    /// Moves proxy-1 to a shutdown phase (as SIGTERM does).
    pub fn shutdown_phase(&self, phase: airlock_proxy::session::Phase) {
        let _ = self.phase.send(phase);
    }

    /// An agent's connection through the proxy, with its notices collected.
    pub async fn agent(
        &self,
    ) -> (
        tokio_postgres::Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.proxy.port())
            .user("agent-7")
            .password(AGENT_TOKEN)
            .dbname("prod-maintenance")
            .ssl_mode(tokio_postgres::config::SslMode::Disable);
        let (client, mut conn) = c.connect(tokio_postgres::NoTls).await.expect("agent connects");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            use futures::StreamExt;
            while let Some(m) = messages.next().await {
                match m {
                    Ok(tokio_postgres::AsyncMessage::Notice(n)) => {
                        let _ = tx.send(n.message().to_owned());
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        (client, rx)
    }

    pub async fn reviewer(
        &self,
    ) -> proto::reviewer_service_client::ReviewerServiceClient<tonic::transport::Channel> {
        proto::reviewer_service_client::ReviewerServiceClient::connect(self.control_url.clone())
            .await
            .expect("reviewer connects")
    }
}

/// A gRPC request with a reviewer's bearer token.
pub fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// Extracts the request id from a hold NOTICE.
pub fn request_id(notice: &str) -> Option<String> {
    let rest = notice.split("request ").nth(1)?;
    Some(
        rest.split(|c: char| !c.is_ascii_alphanumeric())
            .next()?
            .to_owned(),
    )
}
