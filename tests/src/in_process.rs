//! The stack in one test process: a control-plane replica and proxies as
//! libraries, on loopback, over a real nats-server and PostgreSQL. Identity
//! and policy are test doubles (a token table, a keyword gate), so a test
//! sees the control plane's state and drives the proxy's shutdown phases.
//! Started by [`crate::StackBuilder::start`].

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
use airlock_proxy::session::{Deps, Phase};
use airlock_proxy::upstream::{Secret, UpstreamConfig};
use airlock_testkit::{NatsServer, Postgres};

use crate::review::{self, ReviewerClient};
use crate::{Session, StackBuilder, eventually};

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

    fn policy_generation(&self) -> u64 {
        0
    }

    fn judge(&self, _: &Binding, sql: &str) -> Judgement {
        let upper = sql.trim_start().to_uppercase();
        let gated = ["DELETE", "DROP", "UPDATE"].iter().any(|k| upper.contains(k));
        let (action, rule) = if gated {
            (
                Action::Hold(Box::new(HoldSpec {
                    approvals: 1,
                    reviewers: vec![proto::Group {
                        id: REVIEWERS.into(),
                        name: "db-reviewers".into(),
                    }],
                    timeout: self.timeout,
                    require_acrs: vec![],
                    plan: Err("the test gate reads no catalog".into()),
                    dry_run: None,
                    fingerprint: Default::default(),
                    break_glass: None,
                    max_grant_ttl: None,
                })),
                "DELETE|DROP|UPDATE -> require-approval",
            )
        } else {
            (Action::Allow, "SELECT -> allow")
        };
        Judgement::only(
            action,
            proto::Verdict {
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
        )
    }
}

/// The running stack. Dropping it stops everything.
#[allow(missing_debug_implementations)]
pub struct Stack {
    pub pg: Postgres,
    pub nats: NatsServer,
    pub log: EventLog,
    pub live: Arc<Live>,
    pub control_url: String,
    /// Every proxy's address; the first is `proxy-1`.
    pub proxies: Vec<SocketAddr>,
    /// What `proxy-1` holds.
    pub holds: Arc<Holds>,
    phase: tokio::sync::watch::Sender<Phase>,
}

pub(crate) async fn start(options: StackBuilder) -> Stack {
    let pg = crate::shop(options.orders);
    let nats = NatsServer::start();
    let log = EventLog::connect(NatsSettings::new(nats.url()))
        .await
        .expect("nats");
    log.ensure_stream().await.expect("stream");
    // As in production, every writer signs with its own key and every
    // reader trusts exactly the stack's writers.
    use airlock_eventlog::signing::{Role, Signer, Trust, TrustedKey};
    let control_key = Signer::generate();
    let proxy_keys: Vec<Signer> = (0..options.proxies).map(|_| Signer::generate()).collect();
    let mut trusted = vec![TrustedKey::new(Role::Control, control_key.verifying_key())];
    for (i, key) in proxy_keys.iter().enumerate() {
        trusted
            .push(TrustedKey::new(Role::Proxy, key.verifying_key()).for_writer(format!("proxy-{}", i + 1)));
    }
    let log = log.with_trust(Arc::new(Trust::new(trusted)));
    let (live, control_url) = spawn_control(&log.clone().with_signer(Arc::new(control_key))).await;
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
    let mut proxies = Vec::new();
    let mut first = None;
    for (i, key) in (1..=options.proxies).zip(proxy_keys) {
        let gate = SeedGate {
            upstream: upstream.clone(),
            timeout: options.hold_timeout,
        };
        let signed = log.clone().with_signer(Arc::new(key));
        let (addr, holds, phase) = spawn_proxy(&signed, &control_url, gate, &format!("proxy-{i}")).await;
        proxies.push(addr);
        first.get_or_insert((holds, phase));
    }
    let (holds, phase) = first.expect("a stack has a proxy");
    Stack {
        pg,
        nats,
        log,
        live,
        control_url,
        proxies,
        holds,
        phase,
    }
}

/// A control-plane replica, caught up with the log, serving reviewers and
/// proxies on a free port; its state and its URL.
async fn spawn_control(log: &EventLog) -> (Arc<Live>, String) {
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
    let presence = airlock_control::presence::Presence::new(Duration::from_secs(30));
    let control = Control {
        live: live.clone(),
        log: log.clone(),
        auth: Arc::new(Tokens::standard()),
        source: source.clone(),
        kill_groups: vec![REVIEWERS.into()],
        auditor_groups: Vec::new(),
        attach: airlock_control::grpc::AttachAuth::InsecureLoopback,
        presence: presence.clone(),
        floor_acrs: Vec::new(),
        slack: None,
    };
    tokio::spawn(airlock_control::presence::run(
        presence.clone(),
        log.clone(),
        "control-1".into(),
    ));
    tokio::spawn(airlock_control::act::reconcile_forever(
        live.clone(),
        log.clone(),
        source,
        Duration::from_millis(200),
        presence,
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
    (live, control_url)
}

/// Starts a proxy attached to the control plane; its address, what it
/// holds, and the sender of its shutdown phase.
async fn spawn_proxy(
    log: &EventLog,
    control_url: &str,
    gate: SeedGate,
    id: &str,
) -> (SocketAddr, Arc<Holds>, tokio::sync::watch::Sender<Phase>) {
    let holds = Holds::new();
    let (phase_tx, phase) = tokio::sync::watch::channel(Phase::Running);
    tokio::spawn(airlock_proxy::attach::run(
        vec![control_url.to_owned()],
        id.into(),
        holds.clone(),
    ));
    let mut settings = ServerSettings::new("127.0.0.1:0".parse().expect("addr"));
    settings.allow_plaintext_loopback = true;
    let server = Server::bind(settings).await.expect("bind proxy");
    let proxy = server.local_addr().expect("addr");
    let cancels = airlock_proxy::cancel::Cancels::with_key(fleet_cancel_key());
    tokio::spawn(cancels.clone().listen(log.client().clone()));
    let deps = Deps {
        gate: Arc::new(gate),
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
        impact: Default::default(),
        cancels,
        metrics: airlock_proxy::metrics::Metrics::new(&Default::default()),
        phase,
    };
    tokio::spawn(server.run(Arc::new(deps)));
    eventually(
        &format!("{id} to attach to the control plane"),
        Duration::from_secs(5),
        || async { holds.is_attached() },
    )
    .await;
    (proxy, holds, phase_tx)
}

impl Stack {
    /// `proxy-1`'s address.
    pub fn proxy(&self) -> SocketAddr {
        self.proxies[0]
    }

    /// Moves `proxy-1` to a shutdown phase (as SIGTERM does).
    pub fn shutdown_phase(&self, phase: Phase) {
        let _ = self.phase.send(phase);
    }

    /// An agent's session through `proxy-1`, with its notices collected.
    pub async fn agent(&self) -> Session {
        crate::session(self.proxy().port(), AGENT_TOKEN).await
    }

    pub async fn reviewer(&self) -> ReviewerClient {
        review::connect(self.control_url.clone()).await
    }

    /// Casts `vote` as the holder of `token` (see [`review::vote`]).
    pub async fn decide(
        &self,
        token: &str,
        vote: proto::DecideRequest,
    ) -> Result<proto::DecideResponse, tonic::Status> {
        review::decide(&mut self.reviewer().await, token, vote).await
    }
}

/// The cancel key every in-process proxy of this test process shares, as
/// a fleet's proxies share theirs; made anew for each test process.
fn fleet_cancel_key() -> airlock_proxy::cancel::CancelKey {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let bytes = KEY.get_or_init(rand::random);
    airlock_proxy::cancel::CancelKey::new(bytes).expect("32 bytes")
}
