//! The whole stack from its binaries, reviewer included: nats-server,
//! PostgreSQL, `airlock-dev-idp` (with browser sign-in for test users),
//! `airlock-control serve`, `airlock-proxy` and `airlock-reviewer`, all on
//! loopback with free ports. For the reviewer's REST, webhook and browser
//! tests.
//!
//! The seed policy: SELECT flows; DELETE needs one approval from
//! db-reviewers; UPDATE needs two; DROP needs one from dba-leads (so
//! db-reviewers may not review it); TRUNCATE needs one and expires after
//! three seconds.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use airlock_testkit::{NatsServer, Postgres, PostgresOptions, free_port};

pub const AGENTS: &str = "6f1d1a52-0c3e-4b43-9d6e-2f1b5d0c9a11";
pub const REVIEWERS: &str = "0b7e2f4c-8a5d-4c1e-9f3a-7d2c6b1e4a90";
pub const LEADS: &str = "5c2d9e11-3f4a-4b6c-8d7e-9f0a1b2c3d4e";
pub const OTHERS: &str = "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d";

/// Test users the dev issuer's sign-in page offers: (sub, name, groups).
pub const ALICE: (&str, &str, &str) = ("oid-alice", "Alice Reviewer", REVIEWERS);
pub const BOB: (&str, &str, &str) = ("oid-bob", "Bob Reviewer", REVIEWERS);
pub const ERIN: (&str, &str, &str) = ("oid-erin", "Erin Outsider", OTHERS);

/// The client id the reviewer signs in with.
pub const CLIENT_ID: &str = "airlock-reviewer-tests";

/// A child process, killed when dropped.
#[derive(Debug)]
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_port(port: u16, what: &str) {
    for _ in 0..600 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} does not listen on {port}");
}

/// Path of a workspace binary, built (or rebuilt if stale) once per test
/// process: a test of the reviewer must not run yesterday's reviewer.
pub fn fresh_binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q"])
            .args(["--bin", "airlock-reviewer", "--bin", "airlock-dev-idp"])
            .args(["--bin", "airlock-control", "--bin", "airlock-proxy"])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("debug").join(name)
}

/// What a test adds to the stack.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// YAML lines appended to the `reviewer:` section (indented two spaces);
    /// `{DIR}` stands for the stack's directory.
    pub reviewer_extra: String,
    /// Environment for the reviewer process.
    pub reviewer_env: Vec<(String, String)>,
    /// Environment for the control-plane process.
    pub control_env: Vec<(String, String)>,
    /// Environment for the proxy process.
    pub proxy_env: Vec<(String, String)>,
    /// Mint a notifier token (an identity in db-reviewers) into
    /// `<dir>/notifier.token` before the reviewer starts.
    pub notifier_token: bool,
}

/// The running stack.
#[derive(Debug)]
pub struct ReviewerStack {
    pub dir: PathBuf,
    pub pg: Postgres,
    pub issuer: String,
    pub proxy_port: u16,
    pub control_port: u16,
    pub reviewer_url: String,
    _nats: NatsServer,
    _children: Vec<Child>,
    _tmp: tempfile::TempDir,
}

impl ReviewerStack {
    pub fn start(options: Options) -> ReviewerStack {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let pg = Postgres::start_with(PostgresOptions::default().setting("log_statement", "all"));
        pg.create_database("shop");
        pg.create_role("maint", "maint-secret");
        pg.psql(
            "shop",
            "CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL DEFAULT 'open'); \
             INSERT INTO orders (id) SELECT g FROM generate_series(1, 20) g; GRANT ALL ON orders TO maint",
        );
        let nats = NatsServer::start();
        let (idp_port, control_port, proxy_port, reviewer_port) =
            (free_port(), free_port(), free_port(), free_port());
        let issuer = format!("http://127.0.0.1:{idp_port}");
        let reviewer_url = format!("http://127.0.0.1:{reviewer_port}");

        let users: String = [ALICE, BOB, ERIN]
            .iter()
            .map(|(sub, name, group)| format!("  - sub: {sub}\n    name: {name}\n    groups: [{group}]\n"))
            .collect();
        std::fs::write(
            dir.join("login.yaml"),
            format!(
                "audience: api://airlock\nclients:\n  - client_id: {CLIENT_ID}\n    redirect_uris: [{reviewer_url}/auth/callback]\nusers:\n{users}"
            ),
        )
        .expect("login config");
        let mut children = vec![Child(
            Command::new(fresh_binary("airlock-dev-idp"))
                .arg("serve")
                .args(["--listen", &format!("127.0.0.1:{idp_port}"), "--issuer", &issuer])
                .arg("--key-file")
                .arg(dir.join("idp.key"))
                .arg("--login-config")
                .arg(dir.join("login.yaml"))
                .stderr(Stdio::null())
                .spawn()
                .expect("start airlock-dev-idp"),
        )];
        wait_port(idp_port, "airlock-dev-idp");

        let config = format!(
            r#"
nats:
  url: {nats}
identity:
  issuer: {issuer}
  audience: api://airlock
  group_names:
    db-maintenance-agents: {AGENTS}
    db-reviewers: {REVIEWERS}
    dba-leads: {LEADS}
    others: {OTHERS}
approvals:
  reviewers: [db-reviewers]
  timeout: 5m
control:
  listen: 127.0.0.1:{control_port}
  reconcile_interval: 1h
reviewer:
  listen: 127.0.0.1:{reviewer_port}
  control: http://127.0.0.1:{control_port}
  public_url: {reviewer_url}
  oidc:
    client_id: {CLIENT_ID}
{reviewer_extra}
proxy:
  listen: 127.0.0.1:{proxy_port}
  control: http://127.0.0.1:{control_port}
  allow_plaintext_loopback: true
  reviewer_url: {reviewer_url}
connections:
  - name: prod-maintenance
    upstream: postgres://maint@127.0.0.1:{pg_port}/shop
    password_env: PROD_MAINT_PASSWORD
policies:
  - policy: db-maintenance-agents
    connection: prod-maintenance
    rules:
      - match: SELECT
        action: allow
      - match: DELETE
        action: require-approval
        reason: deletes need a reviewer
      - match: UPDATE
        action: require-approval
        approvals: 2
        reason: updates need two reviewers
      - match: DROP
        action: require-approval
        reviewers: [dba-leads]
        reason: schema changes need a DBA lead
      - match: TRUNCATE
        action: require-approval
        timeout: 3s
        reason: truncations must be decided quickly
    record: true
"#,
            nats = nats.url(),
            pg_port = pg.port(),
            reviewer_extra = options
                .reviewer_extra
                .replace("{DIR}", &dir.display().to_string()),
        );
        std::fs::write(dir.join("airlock.yaml"), config).expect("config");
        children.push(Child(
            Command::new(fresh_binary("airlock-control"))
                .args(["serve", "--config"])
                .arg(dir.join("airlock.yaml"))
                .envs(options.control_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stderr(Stdio::null())
                .spawn()
                .expect("start airlock-control"),
        ));
        wait_port(control_port, "airlock-control");
        children.push(Child(
            Command::new(fresh_binary("airlock-proxy"))
                .arg("--config")
                .arg(dir.join("airlock.yaml"))
                .env("PROD_MAINT_PASSWORD", "maint-secret")
                .envs(options.proxy_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stderr(Stdio::null())
                .spawn()
                .expect("start airlock-proxy"),
        ));
        wait_port(proxy_port, "airlock-proxy");
        let mut stack = ReviewerStack {
            dir,
            pg,
            issuer,
            proxy_port,
            control_port,
            reviewer_url,
            _nats: nats,
            _children: children,
            _tmp: tmp,
        };
        if options.notifier_token {
            let token = stack.token(&[
                "--sub",
                "oid-notifier",
                "--name",
                "Airlock notifier",
                "--app",
                "--group",
                REVIEWERS,
            ]);
            std::fs::write(stack.dir.join("notifier.token"), token).expect("notifier token");
        }
        let log = std::fs::File::create(stack.dir.join("reviewer.log")).expect("reviewer log");
        stack._children.push(Child(
            Command::new(fresh_binary("airlock-reviewer"))
                .arg("--config")
                .arg(stack.dir.join("airlock.yaml"))
                .envs(options.reviewer_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("start airlock-reviewer"),
        ));
        wait_port(reviewer_port, "airlock-reviewer");
        stack
    }

    /// The reviewer's log so far (to check that no token was written).
    pub fn reviewer_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("reviewer.log")).unwrap_or_default()
    }

    pub fn token(&self, args: &[&str]) -> String {
        let out = Command::new(fresh_binary("airlock-dev-idp"))
            .arg("token")
            .arg("--key-file")
            .arg(self.dir.join("idp.key"))
            .args(["--issuer", &self.issuer, "--audience", "api://airlock"])
            .args(args)
            .output()
            .expect("mint a token");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A person's token: (sub, name, group).
    pub fn user_token(&self, user: (&str, &str, &str)) -> String {
        self.token(&["--sub", user.0, "--name", user.1, "--group", user.2])
    }

    /// The agent's app-only token.
    pub fn agent_token(&self) -> String {
        self.token(&[
            "--sub",
            "oid-agent-7",
            "--name",
            "agent-7",
            "--app",
            "--group",
            AGENTS,
        ])
    }

    /// A session through the proxy with `token`, its notices collected.
    pub async fn connect(
        &self,
        token: &str,
    ) -> (
        tokio_postgres::Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.proxy_port)
            .user("agent-7")
            .password(token)
            .dbname("prod-maintenance")
            .ssl_mode(tokio_postgres::config::SslMode::Disable);
        let (client, mut conn) = c
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect through the proxy");
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
}

/// A statement held on its own session: the task that waits for its
/// outcome, and the request id from the hold NOTICE.
#[derive(Debug)]
pub struct Held {
    pub request_id: String,
    pub outcome: tokio::task::JoinHandle<Result<u64, tokio_postgres::Error>>,
}

/// Sends `sql` on a new session with `token` and waits for the hold notice.
pub async fn hold(stack: &ReviewerStack, token: &str, sql: &str) -> Held {
    let (client, mut notices) = stack.connect(token).await;
    let sql = sql.to_owned();
    let outcome = tokio::spawn(async move {
        let r = client.execute(sql.as_str(), &[]).await;
        drop(client);
        r
    });
    let notice = tokio::time::timeout(Duration::from_secs(20), notices.recv())
        .await
        .expect("a hold notice in time")
        .expect("a notice");
    let request_id = crate::request_id(&notice).unwrap_or_else(|| panic!("no request id in {notice:?}"));
    Held { request_id, outcome }
}
