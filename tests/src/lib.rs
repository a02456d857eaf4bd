//! The end-to-end harness. One [`StackBuilder`] starts the whole of Airlock
//! for a test: a real nats-server, a real PostgreSQL with the demo `shop`
//! database, the control plane and the proxy, either
//!
//! * in this process ([`StackBuilder::start`] -> [`Stack`]): the control
//!   plane and proxy as libraries, identity and policy as test doubles, so a
//!   test can read the control plane's state and move the proxy through
//!   shutdown; or
//! * as the real binaries, as an operator runs them
//!   ([`StackBuilder::start_binaries`] -> [`BinaryStack`]): airlock-dev-idp,
//!   `airlock-control serve`, `airlock-proxy` and, when asked,
//!   `airlock-reviewer`, all configured from one `airlock.yaml`.
//!
//! And what tests do against either: an agent's session ([`session`]), a
//! reviewer's gRPC calls ([`review`]), waiting ([`eventually`]).

use std::time::Duration;

use airlock_testkit::Postgres;

pub mod bench;
pub mod binaries;
pub mod in_process;
pub mod otlp;
pub mod relay;
pub mod review;

pub use airlock_testkit::{eventually, eventually_blocking, satisfies};
pub use binaries::BinaryStack;
pub use in_process::{AGENT_TOKEN, Stack};
pub use review::authed;

/// The builder's default hold timeout: longer than any test waits.
const HOLD_TIMEOUT: Duration = Duration::from_secs(300);

/// What a test needs from the stack. The first group of options applies to
/// both kinds of stack; the rest only to the real binaries (starting an
/// in-process stack with one of them set is a mistake, and panics).
#[derive(Debug, Clone)]
pub struct StackBuilder {
    pub(crate) orders: u32,
    pub(crate) hold_timeout: Duration,
    pub(crate) proxies: usize,
    // Real binaries only.
    pub(crate) replicas: usize,
    pub(crate) rules: Option<String>,
    pub(crate) access: Option<String>,
    pub(crate) proxy_tls: bool,
    pub(crate) configmap: bool,
    pub(crate) control_mtls: bool,
    pub(crate) secured_nats: bool,
    pub(crate) checkpoints: bool,
    pub(crate) reviewer: bool,
    pub(crate) reviewer_replicas: usize,
    pub(crate) reviewer_yaml: String,
    pub(crate) control_yaml: String,
    pub(crate) nats_cluster: usize,
    pub(crate) nats_hosts: bool,
    pub(crate) nats_relays: bool,
    pub(crate) notifier_token: bool,
    pub(crate) env: Vec<(Process, String, String)>,
    pub(crate) database_setup: Vec<String>,
    /// The Graph stand-in's client secret, when `identity.graph` is on.
    pub(crate) graph_secret: Option<String>,
}

/// A binary of the stack, for per-process settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    Control,
    Proxy,
    Reviewer,
}

impl Default for StackBuilder {
    fn default() -> Self {
        StackBuilder {
            orders: 10,
            hold_timeout: HOLD_TIMEOUT,
            proxies: 1,
            replicas: 1,
            rules: None,
            access: None,
            proxy_tls: false,
            configmap: false,
            control_mtls: false,
            secured_nats: false,
            checkpoints: false,
            reviewer: false,
            reviewer_replicas: 1,
            reviewer_yaml: String::new(),
            control_yaml: String::new(),
            nats_cluster: 0,
            nats_hosts: false,
            nats_relays: false,
            notifier_token: false,
            env: Vec::new(),
            database_setup: Vec::new(),
            graph_secret: None,
        }
    }
}

impl StackBuilder {
    /// One proxy, one control plane, ten orders, holds that outlast the test.
    pub fn new() -> Self {
        Self::default()
    }

    /// SQL run in `shop` as the superuser before any proxy starts (the
    /// proxy reads the catalog at start).
    pub fn database_setup(mut self, sql: &str) -> Self {
        self.database_setup.push(sql.to_owned());
        self
    }

    /// Rows in `shop.orders` (ids 1 to `n`, status `open`, total `id * 100`).
    pub fn orders(mut self, n: u32) -> Self {
        self.orders = n;
        self
    }

    /// How long a held statement waits for reviewers.
    pub fn hold_timeout(mut self, timeout: Duration) -> Self {
        self.hold_timeout = timeout;
        self
    }

    /// Proxies on the same log and control plane. With replicas too, proxy
    /// `i` attaches to replica `i` first.
    pub fn proxies(mut self, n: usize) -> Self {
        assert!(n >= 1, "a stack has a proxy");
        self.proxies = n;
        self
    }

    /// Control-plane replicas on the same log.
    pub fn replicas(mut self, n: usize) -> Self {
        assert!(n >= 1, "a stack has a control plane");
        self.replicas = n;
        self
    }

    /// The YAML list under the policy's `rules:` (each line indented six
    /// spaces), instead of [`binaries::SEED_RULES`].
    pub fn rules(mut self, yaml: &str) -> Self {
        self.rules = Some(yaml.to_owned());
        self
    }

    /// The `connections:` and `policies:` sections whole, instead of the
    /// `prod-maintenance` connection and the agents' policy over it; `{PG}`
    /// stands for PostgreSQL's port, and the proxy has the upstream password
    /// in `PROD_MAINT_PASSWORD`.
    pub fn access(mut self, yaml: &str) -> Self {
        self.access = Some(yaml.to_owned());
        self
    }

    /// The proxy serves TLS (a self-signed certificate) instead of plain
    /// text on loopback.
    pub fn proxy_tls(mut self) -> Self {
        self.proxy_tls = true;
        self
    }

    /// The first proxy reads its `airlock.yaml` as Kubernetes mounts a
    /// ConfigMap: through the symlinks `configmap/airlock.yaml ->
    /// ..data/airlock.yaml` and `..data -> <version dir>`, which
    /// [`binaries::BinaryStack::configmap_swap`] replaces as the kubelet does.
    pub fn configmap(mut self) -> Self {
        self.configmap = true;
        self
    }

    /// The control plane serves gRPC over TLS and lets only clients with a
    /// certificate from its CA attach as proxies; the stack's proxies have
    /// one. The certificates are in the stack's directory (see
    /// [`binaries::BinaryStack::dir`]).
    pub fn control_mtls(mut self) -> Self {
        self.control_mtls = true;
        self
    }

    /// NATS as a fleet runs it: TLS only, client certificates required, and
    /// the users of `deploy/nats/airlock-permissions.conf`: each replica
    /// connects as `airlock-control`, each proxy as `airlock-proxy`, and the
    /// tools of [`BinaryStack::control_command`] as `airlock-auditor`, each
    /// with a client certificate of its own.
    pub fn secured_nats(mut self) -> Self {
        self.secured_nats = true;
        self
    }

    /// The control plane signs a checkpoint of the log every second
    /// (public key: `checkpoint.pub` in the stack's directory).
    pub fn checkpoints(mut self) -> Self {
        self.checkpoints = true;
        self
    }

    /// Starts `airlock-reviewer` too.
    pub fn reviewer(mut self) -> Self {
        self.reviewer = true;
        self
    }

    /// Starts `n` replicas of `airlock-reviewer` with `reviewer.state: nats`,
    /// behind a round-robin TCP balancer with no sticky routing: the
    /// stack's `reviewer_url` is the balancer's; each replica listens on a
    /// port of its own ([`binaries::BinaryStack::reviewer_ports`]).
    pub fn reviewer_replicas(mut self, n: usize) -> Self {
        self.reviewer = true;
        self.reviewer_replicas = n;
        self
    }

    /// YAML lines appended to the `reviewer:` section (indented two spaces);
    /// `{DIR}` stands for the stack's directory. Implies [`Self::reviewer`].
    pub fn reviewer_yaml(mut self, yaml: &str) -> Self {
        self.reviewer = true;
        self.reviewer_yaml = yaml.to_owned();
        self
    }

    /// YAML lines appended to every replica's `control:` section (indented
    /// two spaces), e.g. `  proxy_lost_after: 2s\n`.
    pub fn control_yaml(mut self, yaml: &str) -> Self {
        self.control_yaml = yaml.to_owned();
        self
    }

    /// The log on a JetStream cluster of `n` nodes on loopback instead of
    /// one server, with the stream replicated on every node (`nats.replicas:
    /// n`), every binary given every node's URL.
    pub fn nats_cluster(mut self, n: usize) -> Self {
        self.nats_cluster = n;
        self
    }

    /// With [`Self::nats_cluster`]: each node on a host of its own (a
    /// network namespace on a bridge, see `airlock_testkit::Net`), so
    /// nodes can be partitioned or cut off. Needs root.
    pub fn nats_hosts(mut self) -> Self {
        self.nats_hosts = true;
        self
    }

    /// With [`Self::nats_cluster`]: proxies and replicas reach each node
    /// through a relay of their own (`proxy_relays`, `control_relays` on
    /// the stack), which a test cuts to partition one kind of process from
    /// one node while everything else still reaches it.
    pub fn nats_relays(mut self) -> Self {
        self.nats_relays = true;
        self
    }

    /// Mints a notifier token (an app in db-reviewers) into
    /// `<dir>/notifier.token` before the reviewer starts.
    pub fn notifier_token(mut self) -> Self {
        self.notifier_token = true;
        self
    }

    /// Group overage resolved through Graph: the dev issuer serves its Graph
    /// stand-in (members: the agent in db-maintenance-agents, Alice and Bob
    /// in db-reviewers, Erin in others) and every binary's `identity.graph`
    /// points at it, with a client secret made now.
    pub fn graph(mut self) -> Self {
        let secret: String = {
            use rand::RngCore;
            let mut bytes = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        };
        for process in [Process::Control, Process::Proxy, Process::Reviewer] {
            self.env
                .push((process, binaries::GRAPH_SECRET_ENV.to_owned(), secret.clone()));
        }
        self.graph_secret = Some(secret);
        self
    }

    /// An environment variable for every process of one binary.
    pub fn env(mut self, process: Process, key: &str, value: &str) -> Self {
        self.env.push((process, key.to_owned(), value.to_owned()));
        self
    }

    /// Starts the stack in this process.
    pub async fn start(self) -> Stack {
        let defaults = StackBuilder::default();
        let binaries_only = self.replicas != defaults.replicas
            || self.rules.is_some()
            || self.access.is_some()
            || self.proxy_tls
            || self.configmap
            || self.control_mtls
            || self.checkpoints
            || self.reviewer
            || self.reviewer_replicas != defaults.reviewer_replicas
            || self.notifier_token
            || !self.env.is_empty();
        assert!(
            !binaries_only,
            "{self:?} asks for what only the real binaries have: use start_binaries"
        );
        in_process::start(self).await
    }

    /// Starts the stack from the workspace's binaries (rebuilt first if stale).
    pub fn start_binaries(self) -> BinaryStack {
        binaries::start(self)
    }
}

/// A PostgreSQL with the demo database: `shop` with an `orders` table of
/// `orders` rows, and the role `maint` (password `maint-secret`) the proxy
/// logs in as. Its statement log is on, so a test can show a statement never
/// reached it.
pub(crate) fn shop(orders: u32) -> Postgres {
    let pg =
        Postgres::start_with(airlock_testkit::PostgresOptions::default().setting("log_statement", "all"));
    pg.create_database("shop");
    pg.create_role("maint", "maint-secret");
    pg.psql(
        "shop",
        &format!(
            "CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL DEFAULT 'open', total int); \
             INSERT INTO orders (id, total) SELECT g, g * 100 FROM generate_series(1, {orders}) g; \
             GRANT ALL ON orders TO maint"
        ),
    );
    pg
}

/// An agent's session: its client, and the notices the proxy sends it
/// (a hold's notice names the request).
pub type Session = (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
);

/// Connects to the proxy on `port` as `agent-7` with `token` as the
/// password, to the `prod-maintenance` connection, in plain text.
pub async fn session(port: u16, token: &str) -> Session {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(port)
        .user("agent-7")
        .password(token)
        .dbname("prod-maintenance")
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    session_with(&c).await
}

/// Connects with `config` (no TLS), collecting the notices.
pub async fn session_with(config: &tokio_postgres::Config) -> Session {
    let (client, mut conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("the agent connects through the proxy");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use futures::StreamExt;
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
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

/// Extracts the request id from a hold NOTICE.
pub fn request_id(notice: &str) -> Option<String> {
    let rest = notice.split("request ").nth(1)?;
    Some(
        rest.split(|c: char| !c.is_ascii_alphanumeric())
            .next()?
            .to_owned(),
    )
}
