//! The stack from its binaries, as an operator runs it: nats-server,
//! PostgreSQL, `airlock-dev-idp` (with browser sign-in for test users when
//! the reviewer runs), `airlock-control serve` (one or more replicas),
//! `airlock-proxy` (one or more) and, when asked, `airlock-reviewer`, all on
//! loopback with free ports, configured from `airlock.yaml` in the stack's
//! directory. Started by [`crate::StackBuilder::start_binaries`].
//!
//! The seed policy ([`SEED_RULES`]): SELECT flows; DELETE needs one approval
//! from db-reviewers; UPDATE needs two; DROP needs one from dba-leads (so
//! db-reviewers may not review it); TRUNCATE needs one and expires after
//! three seconds. Each process logs to `<name>.log` in the directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use airlock_eventlog::proto;
use airlock_testkit::{Host, NatsCluster, NatsRole, NatsServer, Net, Postgres, TestCa, free_port};

use crate::review::{self, ReviewerClient};
use crate::{Process, Session, StackBuilder, eventually_blocking};

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
/// The application Airlock asks Graph as, in stacks with `.graph()`.
pub const GRAPH_CLIENT_ID: &str = "airlock-graph-tests";
/// The environment variable holding its secret.
pub const GRAPH_SECRET_ENV: &str = "AIRLOCK_GRAPH_SECRET";

/// The seed policy's rules, as YAML under `rules:`.
pub const SEED_RULES: &str = "      - match: SELECT
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
";

/// The reviewer the proxy's hold notices link to when no reviewer runs.
const NO_REVIEWER_URL: &str = "https://airlock.example";

/// A child process, killed when dropped.
#[derive(Debug)]
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (30 seconds at most) until something listens on `port`.
#[track_caller]
pub fn wait_port(port: u16, what: &str) {
    eventually_blocking(
        &format!("{what} to listen on {port}"),
        Duration::from_secs(30),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
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
            .args(airlock_testkit::release_binaries().then_some("--release"))
            .args(["--bin", "airlock-reviewer", "--bin", "airlock-dev-idp"])
            .args([
                "--bin",
                "airlock-control",
                "--bin",
                "airlock-proxy",
                "--bin",
                "airlock-mcp",
            ])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join(airlock_testkit::binary_profile()).join(name)
}

/// What the reviewer's tests add to their stack (see [`BinaryStack::start`]).
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

/// The running stack. Dropping it stops every process.
#[derive(Debug)]
pub struct BinaryStack {
    pub dir: PathBuf,
    pub pg: Postgres,
    pub issuer: String,
    /// The first proxy's and the first replica's ports.
    pub proxy_port: u16,
    pub control_port: u16,
    pub proxy_ports: Vec<u16>,
    /// Each proxy's `metrics_listen` port (`/metrics`, `/livez`, `/readyz`).
    pub proxy_health_ports: Vec<u16>,
    pub control_ports: Vec<u16>,
    /// The first replica's health endpoint (`/healthz`).
    pub health_port: u16,
    /// The reviewer's base URL (or where notices point when none runs).
    pub reviewer_url: String,
    proxy_tls: bool,
    /// The control plane serves TLS (`ca.crt` in `dir`).
    control_tls: bool,
    replicas: Vec<Option<Child>>,
    /// How each replica was started: its configuration and environment.
    replica_starts: Vec<(PathBuf, Vec<(String, String)>)>,
    /// Each reviewer replica's own port (the balancer's is `reviewer_url`'s
    /// when there are several).
    pub reviewer_ports: Vec<u16>,
    reviewers: Vec<Option<Child>>,
    reviewer_env: Vec<(String, String)>,
    /// `None` while killed ([`BinaryStack::kill_proxy`]).
    proxies: Vec<Option<Child>>,
    /// How each proxy was started: its configuration and environment.
    proxy_starts: Vec<(PathBuf, Vec<(String, String)>)>,
    others: Vec<Child>,
    _nats: Option<NatsServer>,
    /// With [`StackBuilder::nats_cluster`]: the cluster, and with
    /// [`StackBuilder::nats_hosts`] its hosts (dropped after the nodes).
    pub cluster: Option<NatsCluster>,
    pub nats_hosts: Vec<Host>,
    pub net: Option<Net>,
    /// With [`StackBuilder::nats_relays`]: the proxies' and the replicas'
    /// way to each node.
    pub proxy_relays: Vec<crate::relay::Relay>,
    pub control_relays: Vec<crate::relay::Relay>,
    /// The CA of a secured NATS (its files live as long as the stack).
    nats_ca: Option<TestCa>,
    _tmp: tempfile::TempDir,
}

/// The reviewer's tests' name for the stack.
pub type ReviewerStack = BinaryStack;

/// Where everything of one stack listens and lives.
struct Layout {
    dir: PathBuf,
    nats: String,
    /// `nats.replicas`: the stream's replicas.
    replicas: usize,
    /// With relays: the proxies' and the replicas' own `nats.url`.
    proxy_nats: Option<String>,
    control_nats: Option<String>,
    /// With a secured NATS: its CA, and the client certificates of each
    /// role, in `dir`.
    nats_tls: Option<PathBuf>,
    pg: u16,
    issuer: String,
    controls: Vec<u16>,
    healths: Vec<u16>,
    proxies: Vec<u16>,
    proxy_healths: Vec<u16>,
    reviewer: u16,
    reviewer_url: String,
}

pub(crate) fn start(options: StackBuilder) -> BinaryStack {
    let tmp = tempfile::tempdir().expect("temp dir");
    let pg = crate::shop(options.orders);
    for sql in &options.database_setup {
        pg.psql("shop", sql);
    }
    let nats_ca = options.secured_nats.then(|| TestCa::new("airlock test NATS CA"));
    assert!(
        options.nats_cluster == 0 || nats_ca.is_none(),
        "a secured NATS cluster is not built by this harness"
    );
    let (net, nats_hosts) = if options.nats_hosts {
        let net = Net::new();
        let hosts = (1..=options.nats_cluster)
            .map(|i| net.host(&format!("n{i}")))
            .collect();
        (Some(net), hosts)
    } else {
        (None, Vec::new())
    };
    let cluster = match options.nats_cluster {
        0 => None,
        n if options.nats_hosts => Some(NatsCluster::start_on(&nats_hosts[..n])),
        n => Some(NatsCluster::start(n)),
    };
    let nats = match (&nats_ca, &cluster) {
        (_, Some(_)) => None,
        (Some(ca), None) => {
            for role in NatsRole::ALL {
                ca.client(role.user());
            }
            Some(NatsServer::start_secured(ca, true))
        }
        (None, None) => Some(NatsServer::start()),
    };
    let relays = |on: bool| -> Vec<crate::relay::Relay> {
        match (&cluster, on) {
            (Some(c), true) => (0..c.size())
                .map(|i| crate::relay::Relay::start(c.client_addr(i)))
                .collect(),
            _ => Vec::new(),
        }
    };
    let proxy_relays = relays(options.nats_relays);
    let control_relays = relays(options.nats_relays);
    let urls = |relays: &[crate::relay::Relay]| {
        (!relays.is_empty()).then(|| relays.iter().map(|r| r.nats_url()).collect::<Vec<_>>().join(","))
    };
    let nats_url = match (&nats, &cluster) {
        (Some(n), _) => n.url(),
        (None, Some(c)) => c.urls(),
        (None, None) => unreachable!("one or the other was started"),
    };
    let ports = |n: usize| (0..n).map(|_| free_port()).collect::<Vec<_>>();
    let idp_port = free_port();
    let reviewer = free_port();
    let layout = Layout {
        dir: tmp.path().to_path_buf(),
        nats: nats_url,
        proxy_nats: urls(&proxy_relays),
        control_nats: urls(&control_relays),
        replicas: options.nats_cluster.max(1),
        nats_tls: nats_ca.as_ref().map(|ca| ca.dir().to_path_buf()),
        pg: pg.port(),
        issuer: format!("http://127.0.0.1:{idp_port}"),
        controls: ports(options.replicas),
        healths: ports(options.replicas),
        proxies: ports(options.proxies),
        proxy_healths: ports(options.proxies),
        reviewer,
        reviewer_url: if options.reviewer {
            format!("http://127.0.0.1:{reviewer}")
        } else {
            NO_REVIEWER_URL.to_owned()
        },
    };
    let dir = &layout.dir;
    let env = |process: Process| {
        options
            .env
            .iter()
            .filter(move |(p, _, _)| *p == process)
            .map(|(_, k, v)| (k.clone(), v.clone()))
    };

    let mut idp = Command::new(fresh_binary("airlock-dev-idp"));
    idp.arg("serve")
        .args(["--listen", &format!("127.0.0.1:{idp_port}")])
        .args(["--issuer", &layout.issuer])
        .arg("--key-file")
        .arg(dir.join("idp.key"));
    if options.reviewer {
        write_login_config(&layout);
        idp.arg("--login-config").arg(dir.join("login.yaml"));
    }
    if let Some(secret) = &options.graph_secret {
        write_graph_config(&layout);
        idp.arg("--graph-config")
            .arg(dir.join("graph.yaml"))
            .env(GRAPH_SECRET_ENV, secret);
    }
    let others = vec![spawn(&mut idp, dir, "idp")];
    wait_port(idp_port, "airlock-dev-idp");

    if options.proxy_tls {
        let cert =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).expect("cert");
        std::fs::write(dir.join("proxy.crt"), cert.cert.pem()).expect("cert");
        std::fs::write(dir.join("proxy.key"), cert.signing_key.serialize_pem()).expect("key");
    }
    if options.control_mtls {
        write_certificates(dir, options.proxies);
    }
    write_signing_keys(&layout);
    if options.checkpoints {
        let keys = Command::new(fresh_binary("airlock-control"))
            .args(["signing-key", "--private"])
            .arg(dir.join("checkpoint.key"))
            .arg("--public")
            .arg(dir.join("checkpoint.pub"))
            .output()
            .expect("airlock-control signing-key");
        assert!(keys.status.success(), "{}", String::from_utf8_lossy(&keys.stderr));
    }
    std::fs::write(
        dir.join("airlock.yaml"),
        config(&options, &layout, 0, 0, NatsRole::Auditor),
    )
    .expect("config");
    let password = |role: NatsRole| {
        options.secured_nats.then(|| {
            let nats = nats.as_ref().expect("a secured NATS is one server");
            ("AIRLOCK_NATS_PASSWORD".to_owned(), nats.password(role))
        })
    };

    let mut replicas = Vec::new();
    let mut replica_starts = Vec::new();
    for (i, port) in layout.controls.iter().enumerate() {
        let path = config_file(&options, &layout, "replica", i, (i, 0));
        let envs: Vec<(String, String)> = password(NatsRole::Control)
            .into_iter()
            .chain(env(Process::Control))
            .collect();
        let mut control = Command::new(fresh_binary("airlock-control"));
        control
            .args(["serve", "--config"])
            .arg(&path)
            .envs(envs.iter().cloned());
        replicas.push(Some(spawn(&mut control, dir, &format!("control-{}", i + 1))));
        replica_starts.push((path, envs));
        wait_port(*port, "airlock-control");
    }
    let mut proxies = Vec::new();
    let mut proxy_starts = Vec::new();
    for (i, port) in layout.proxies.iter().enumerate() {
        let path = config_file(&options, &layout, "proxy", i, (0, i));
        let envs: Vec<(String, String)> =
            std::iter::once(("PROD_MAINT_PASSWORD".to_owned(), "maint-secret".to_owned()))
                .chain(password(NatsRole::Proxy))
                .chain(env(Process::Proxy))
                .collect();
        let mut proxy = Command::new(fresh_binary("airlock-proxy"));
        proxy.arg("--config").arg(&path).envs(envs.iter().cloned());
        proxies.push(Some(spawn(&mut proxy, dir, &format!("proxy-{}", i + 1))));
        proxy_starts.push((path, envs));
        wait_port(*port, "airlock-proxy");
    }

    let mut stack = BinaryStack {
        dir: dir.clone(),
        pg,
        issuer: layout.issuer.clone(),
        proxy_port: layout.proxies[0],
        control_port: layout.controls[0],
        proxy_ports: layout.proxies.clone(),
        proxy_health_ports: layout.proxy_healths.clone(),
        control_ports: layout.controls.clone(),
        health_port: layout.healths[0],
        reviewer_url: layout.reviewer_url.clone(),
        proxy_tls: options.proxy_tls,
        control_tls: options.control_mtls,
        replicas,
        replica_starts,
        reviewer_ports: Vec::new(),
        reviewers: Vec::new(),
        reviewer_env: Vec::new(),
        proxies,
        proxy_starts,
        others: Vec::new(),
        _nats: nats,
        cluster,
        nats_hosts,
        net,
        proxy_relays,
        control_relays,
        nats_ca,
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
    stack.reviewer_env = env(Process::Reviewer).collect();
    if options.reviewer && options.reviewer_replicas > 1 {
        let text = std::fs::read_to_string(stack.dir.join("airlock.yaml")).expect("config");
        let listen = format!("reviewer:\n  listen: 127.0.0.1:{}\n", layout.reviewer);
        assert!(
            text.contains(&listen),
            "the reviewer section starts with its listen line"
        );
        for i in 0..options.reviewer_replicas {
            let port = free_port();
            let own = text.replace(
                &listen,
                &format!("reviewer:\n  listen: 127.0.0.1:{port}\n  state: nats\n"),
            );
            std::fs::write(stack.dir.join(format!("reviewer-{}.yaml", i + 1)), own).expect("config");
            stack.reviewer_ports.push(port);
            stack.reviewers.push(None);
            stack.start_reviewer(i);
        }
        balance(layout.reviewer, stack.reviewer_ports.clone());
    } else if options.reviewer {
        stack.reviewer_ports.push(layout.reviewer);
        stack.reviewers.push(None);
        stack.start_reviewer(0);
    }
    stack.others = others;
    stack
}

/// A TCP balancer on 127.0.0.1:`port` with no sticky routing: each
/// connection goes to the next of `backends` (ports) that accepts it.
/// Runs as long as the test process.
pub fn balance(port: u16, backends: Vec<u16>) {
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the balancer's port");
    std::thread::spawn(move || {
        let mut next = 0usize;
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let upstream = (0..backends.len()).find_map(|k| {
                let i = (next + k) % backends.len();
                TcpStream::connect(("127.0.0.1", backends[i]))
                    .ok()
                    .map(|s| (i, s))
            });
            let Some((i, upstream)) = upstream else { continue };
            next = (i + 1) % backends.len();
            let (Ok(mut client_r), Ok(mut upstream_r)) = (client.try_clone(), upstream.try_clone()) else {
                continue;
            };
            let (mut client_w, mut upstream_w) = (client, upstream);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_r, &mut upstream_w);
                let _ = upstream_w.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut upstream_r, &mut client_w);
                let _ = client_w.shutdown(Shutdown::Both);
            });
        }
    });
}

/// `GET path` on 127.0.0.1:`port`: the status code and the body (0 and
/// the error when nothing answers).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = match std::net::TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(e) => return (0, e.to_string()),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut response = String::new();
    if let Err(e) = stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.read_to_string(&mut response))
    {
        return (0, e.to_string());
    }
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Starts `command` with its output in `<dir>/<name>.log`.
fn spawn(command: &mut Command, dir: &Path, name: &str) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    let err = log.try_clone().expect("log file");
    Child(
        command
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}")),
    )
}

/// `airlock.yaml` for the first replica and the first proxy; a file of its
/// own, `<kind>-<n>.yaml`, for each further one, and for every one when
/// NATS is secured (each role is its own NATS user).
fn config_file(options: &StackBuilder, layout: &Layout, kind: &str, n: usize, at: (usize, usize)) -> PathBuf {
    if kind == "proxy" && n == 0 && options.configmap {
        let text = config(options, layout, at.0, at.1, NatsRole::Proxy);
        return configmap_version(&layout.dir, &text);
    }
    if n == 0 && !options.secured_nats && !options.nats_relays {
        return layout.dir.join("airlock.yaml");
    }
    let role = if kind == "proxy" {
        NatsRole::Proxy
    } else {
        NatsRole::Control
    };
    let path = layout.dir.join(format!("{kind}-{}.yaml", n + 1));
    std::fs::write(&path, config(options, layout, at.0, at.1, role)).expect("config");
    path
}

/// Writes `text` as a new version of `<dir>/configmap/airlock.yaml` the
/// way the kubelet updates a mounted ConfigMap: into a new directory, then
/// `..data` swapped to it by a rename (the file's own path is never
/// written). Returns the path the proxy reads.
fn configmap_version(dir: &Path, text: &str) -> PathBuf {
    let mounted = dir.join("configmap");
    std::fs::create_dir_all(&mounted).expect("configmap dir");
    let versions = std::fs::read_dir(&mounted).expect("read configmap dir").count();
    let version = format!("..2026_12_03_{versions:02}");
    std::fs::create_dir(mounted.join(&version)).expect("version dir");
    std::fs::write(mounted.join(&version).join("airlock.yaml"), text).expect("write version");
    let tmp = mounted.join("..data_tmp");
    std::os::unix::fs::symlink(&version, &tmp).expect("symlink ..data_tmp");
    std::fs::rename(&tmp, mounted.join("..data")).expect("swap ..data");
    let file = mounted.join("airlock.yaml");
    if std::fs::symlink_metadata(&file).is_err() {
        std::os::unix::fs::symlink("..data/airlock.yaml", &file).expect("symlink airlock.yaml");
    }
    file
}

/// The `nats:` section, for `role`'s user when NATS is secured (its
/// password in `AIRLOCK_NATS_PASSWORD`).
fn nats_section(layout: &Layout, role: NatsRole) -> String {
    let url = match role {
        NatsRole::Proxy => layout.proxy_nats.as_ref(),
        NatsRole::Control => layout.control_nats.as_ref(),
        NatsRole::Auditor | NatsRole::Reviewer | NatsRole::Forwarder => None,
    }
    .unwrap_or(&layout.nats);
    let mut section = format!("nats:\n  url: {url}\n  replicas: {}\n", layout.replicas);
    if let Some(dir) = &layout.nats_tls {
        let d = dir.display();
        let user = role.user();
        section += &format!(
            "  tls: {{ ca: {d}/ca.crt, cert: {d}/{user}.crt, key: {d}/{user}.key }}\n  \
             user: {user}\n  password_env: AIRLOCK_NATS_PASSWORD\n  inbox_prefix: _INBOX_{user}\n"
        );
    }
    section
}

/// The configuration of control-plane replica `replica` and proxy `proxy`
/// (which attaches to the replicas starting from its own number), reading
/// the log as `role` when NATS is secured.
fn config(options: &StackBuilder, layout: &Layout, replica: usize, proxy: usize, role: NatsRole) -> String {
    let d = layout.dir.display();
    let mut control = format!(
        "  listen: 127.0.0.1:{}\n  health_listen: 127.0.0.1:{}\n",
        layout.controls[replica], layout.healths[replica]
    );
    let mut proxy_extra = String::new();
    let scheme_host = if options.control_mtls {
        control +=
            &format!("  tls: {{ cert: {d}/control.crt, key: {d}/control.key, client_ca: {d}/ca.crt }}\n");
        let p = proxy + 1;
        proxy_extra += &format!(
            "  control_tls: {{ ca: {d}/ca.crt, cert: {d}/proxy-{p}.crt, key: {d}/proxy-{p}.key }}\n"
        );
        "https://localhost"
    } else {
        control += "  allow_insecure_attach_loopback: true\n";
        "http://127.0.0.1"
    };
    control += &format!("  signing_key: {d}/control-{}-signing.key\n", replica + 1);
    proxy_extra += &format!("  signing_key: {d}/proxy-{}-signing.key\n", proxy + 1);
    if options.checkpoints {
        control += &format!("  checkpoints: {{ signing_key: {d}/checkpoint.key, interval: 1s }}\n");
    }
    control += &options.control_yaml;
    if options.reviewer {
        // As the reviewer's tests have always run: the control plane
        // appends no expiry of its own during a test.
        control += "  reconcile_interval: 1h\n";
    }
    proxy_extra += &if options.proxy_tls {
        format!("  tls: {{ cert: {d}/proxy.crt, key: {d}/proxy.key }}\n")
    } else {
        "  allow_plaintext_loopback: true\n".to_owned()
    };
    let n = layout.controls.len();
    let attach: Vec<String> = (0..n)
        .map(|i| format!("{scheme_host}:{}", layout.controls[(proxy + i) % n]))
        .collect();
    let reviewer = if options.reviewer {
        let control = if options.control_mtls {
            format!(
                "https://localhost:{}\n  control_tls: {{ ca: {d}/ca.crt, cert: {d}/reviewer.crt, key: {d}/reviewer.key }}",
                layout.controls[0]
            )
        } else {
            format!("http://127.0.0.1:{}", layout.controls[0])
        };
        format!(
            "reviewer:\n  listen: 127.0.0.1:{}\n  control: {}\n  public_url: {}\n  oidc:\n    client_id: {CLIENT_ID}\n{}\n",
            layout.reviewer,
            control,
            layout.reviewer_url,
            options.reviewer_yaml.replace("{DIR}", &d.to_string()),
        )
    } else {
        String::new()
    };
    let graph = if options.graph_secret.is_some() {
        format!(
            "  graph:\n    client_id: {GRAPH_CLIENT_ID}\n    client_secret_env: {GRAPH_SECRET_ENV}\n    endpoint: {}/graph\n",
            layout.issuer
        )
    } else {
        String::new()
    };
    format!(
        "{nats}identity:
  issuer: {issuer}
  audience: api://airlock
{graph}  group_names:
    db-maintenance-agents: {AGENTS}
    db-reviewers: {REVIEWERS}
    dba-leads: {LEADS}
    others: {OTHERS}
approvals:
  reviewers: [db-reviewers]
  timeout: {timeout}ms
control:
{control}{reviewer}proxy:
  listen: 127.0.0.1:{proxy_port}
  metrics_listen: 127.0.0.1:{proxy_health}
  proxy_id: proxy-{proxy_id}
  control: [{attach}]
  reviewer_url: {reviewer_url}
{proxy_extra}{access}{signing}",
        nats = nats_section(layout, role),
        issuer = layout.issuer,
        timeout = options.hold_timeout.as_millis(),
        proxy_port = layout.proxies[proxy],
        proxy_health = layout.proxy_healths[proxy],
        proxy_id = proxy + 1,
        attach = attach.join(", "),
        reviewer_url = layout.reviewer_url,
        access = access(options, layout.pg),
        signing = signing_section(layout),
    )
}

/// `connections:` and `policies:`: the builder's own, or the agents'
/// policy over `prod-maintenance` (the `shop` database as `maint`).
fn access(options: &StackBuilder, pg: u16) -> String {
    if let Some(access) = &options.access {
        return access.replace("{PG}", &pg.to_string());
    }
    format!(
        "connections:
  - name: prod-maintenance
    upstream: postgres://maint@127.0.0.1:{pg}/shop
    password_env: PROD_MAINT_PASSWORD
policies:
  - policy: db-maintenance-agents
    connection: prod-maintenance
    rules:
{rules}    record: true
",
        rules = options.rules.as_deref().unwrap_or(SEED_RULES),
    )
}

/// A signing key pair for every replica and proxy of the stack, as an
/// operator makes them with `airlock-control signing-key`.
fn write_signing_keys(layout: &Layout) {
    let names = (1..=layout.controls.len())
        .map(|i| format!("control-{i}"))
        .chain((1..=layout.proxies.len()).map(|i| format!("proxy-{i}")));
    for name in names {
        airlock_eventlog::signing::Signer::generate()
            .write(
                &layout.dir.join(format!("{name}-signing.key")),
                &layout.dir.join(format!("{name}-signing.pub")),
            )
            .expect("signing key");
    }
}

/// `signing:`: every replica's key as a control key, every proxy's bound to
/// its proxy id.
fn signing_section(layout: &Layout) -> String {
    let d = layout.dir.display();
    let mut out = "signing:\n  trust:\n".to_owned();
    for i in 1..=layout.controls.len() {
        out += &format!("    - {{ role: control, key: {d}/control-{i}-signing.pub }}\n");
    }
    for i in 1..=layout.proxies.len() {
        out += &format!("    - {{ role: proxy, key: {d}/proxy-{i}-signing.pub, id: proxy-{i} }}\n");
    }
    out
}

/// The dev issuer's sign-in page: the test users, and the reviewer as a
/// client.
fn write_login_config(layout: &Layout) {
    let users: String = [ALICE, BOB, ERIN]
        .iter()
        .map(|(sub, name, group)| format!("  - sub: {sub}\n    name: {name}\n    groups: [{group}]\n"))
        .collect();
    std::fs::write(
        layout.dir.join("login.yaml"),
        format!(
            "audience: api://airlock\nclients:\n  - client_id: {CLIENT_ID}\n    redirect_uris: [{}/auth/callback]\n  - client_id: airlock-cli\n    device: true\nusers:\n{users}",
            layout.reviewer_url
        ),
    )
    .expect("login config");
}

/// The dev issuer's Graph stand-in: who is in which group.
fn write_graph_config(layout: &Layout) {
    // Dave runs statements as an agent would and reviews too (the Slack
    // tests); nobody else is a member of anything.
    let members: String = [
        ALICE,
        BOB,
        ERIN,
        ("oid-agent-7", "agent-7", AGENTS),
        ("oid-dave", "Dave Both", REVIEWERS),
    ]
    .iter()
    .map(|(sub, _, group)| format!("  {sub}: [{group}]\n"))
    .collect();
    std::fs::write(
        layout.dir.join("graph.yaml"),
        format!("client_id: {GRAPH_CLIENT_ID}\nclient_secret_env: {GRAPH_SECRET_ENV}\nmembers:\n{members}"),
    )
    .expect("graph config");
}

/// A CA (`ca.crt`), a control-plane server certificate (`control.crt`,
/// `.key`), a client certificate for each proxy (`proxy-<n>.crt`, `.key`,
/// named for its proxy id) and for the reviewer (`reviewer.crt`, `.key`),
/// written as PEM files into `dir`; and a client certificate no CA of the
/// stack vouches for (`rogue.crt`, `.key`).
fn write_certificates(dir: &Path, proxies: usize) {
    let copy = |files: airlock_testkit::CertFiles, name: &str| {
        std::fs::copy(&files.cert, dir.join(format!("{name}.crt"))).expect("copy certificate");
        std::fs::copy(&files.key, dir.join(format!("{name}.key"))).expect("copy key");
    };
    let ca = TestCa::new("airlock test CA");
    std::fs::copy(ca.ca(), dir.join("ca.crt")).expect("copy CA");
    copy(ca.server("control"), "control");
    for n in 1..=proxies {
        let name = format!("proxy-{n}");
        copy(ca.client(&name), &name);
    }
    copy(ca.client("reviewer"), "reviewer");
    copy(TestCa::new("rogue CA").client("rogue"), "rogue");
}

impl BinaryStack {
    /// The stack the reviewer's tests run against: the reviewer, twenty
    /// orders, and what `options` adds.
    pub fn start(options: Options) -> BinaryStack {
        let mut builder = StackBuilder::new()
            .orders(20)
            .reviewer_yaml(&options.reviewer_extra);
        for (process, env) in [
            (Process::Reviewer, &options.reviewer_env),
            (Process::Control, &options.control_env),
            (Process::Proxy, &options.proxy_env),
        ] {
            for (k, v) in env {
                builder = builder.env(process, k, v);
            }
        }
        if options.notifier_token {
            builder = builder.notifier_token();
        }
        builder.start_binaries()
    }

    /// The configuration file of the first replica and proxy (and the
    /// reviewer).
    pub fn config(&self) -> PathBuf {
        self.dir.join("airlock.yaml")
    }

    /// With [`StackBuilder::configmap`]: a new version of the first proxy's
    /// `airlock.yaml`, swapped in as the kubelet does.
    pub fn configmap_swap(&self, text: &str) {
        configmap_version(&self.dir, text);
    }

    /// With [`StackBuilder::configmap`]: the first proxy's `airlock.yaml`.
    pub fn configmap_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("configmap/airlock.yaml")).expect("read the mounted config")
    }

    /// `airlock-control <args> --config airlock.yaml`, to run.
    /// The NATS server's URL: what anyone on the network could publish to.
    pub fn nats_url(&self) -> String {
        match (&self._nats, &self.cluster) {
            (Some(n), _) => n.url(),
            (None, Some(c)) => c.urls(),
            (None, None) => String::new(),
        }
    }

    /// The single NATS server (not a cluster's nodes), to stop and start it.
    pub fn nats_server(&mut self) -> &mut NatsServer {
        self._nats.as_mut().expect("a stack on one NATS server")
    }

    /// The NATS server's log so far (its refusals of clients among it).
    pub fn nats_log(&self) -> String {
        match (&self._nats, &self.cluster) {
            (Some(n), _) => n.log(),
            (None, Some(c)) => (0..c.size()).map(|i| c.log(i)).collect::<Vec<_>>().join("\n"),
            (None, None) => String::new(),
        }
    }

    /// With a secured NATS, it reads the log as `airlock-auditor`.
    pub fn control_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(fresh_binary("airlock-control"));
        command.args(args).arg("--config").arg(self.config());
        if self.nats_ca.is_some() {
            let nats = self._nats.as_ref().expect("a secured NATS is one server");
            command.env("AIRLOCK_NATS_PASSWORD", nats.password(NatsRole::Auditor));
        }
        command
    }

    /// Panics with its output unless `airlock-control verify` passes.
    pub fn assert_verify_passes(&self) {
        let out = self.control_command(&["verify"]).output().expect("verify");
        assert!(
            out.status.success(),
            "verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The reviewer's log so far (to check that no token was written).
    pub fn reviewer_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("reviewer.log")).unwrap_or_default()
    }

    /// Starts reviewer replica `i` (counting from 0) and waits for its port:
    /// `airlock.yaml` for a lone reviewer, `reviewer-<i+1>.yaml` for one of
    /// [`StackBuilder::reviewer_replicas`]. Its log is `reviewer.log` or
    /// `reviewer-<i+1>.log`, begun afresh at each start.
    pub fn start_reviewer(&mut self, i: usize) {
        let own = self.dir.join(format!("reviewer-{}.yaml", i + 1));
        let (config, name) = if own.exists() {
            (own, format!("reviewer-{}", i + 1))
        } else {
            (self.dir.join("airlock.yaml"), "reviewer".to_owned())
        };
        let mut reviewer = Command::new(fresh_binary("airlock-reviewer"));
        reviewer
            .arg("--config")
            .arg(config)
            .envs(self.reviewer_env.iter().cloned());
        self.reviewers[i] = Some(spawn(&mut reviewer, &self.dir, &name));
        wait_port(self.reviewer_ports[i], "airlock-reviewer");
    }

    /// Kills reviewer replica `i` (SIGKILL: no goodbye).
    pub fn kill_reviewer(&mut self, i: usize) {
        self.reviewers[i] = None;
    }

    /// Stops control-plane replica `i` (counting from 0), as a crash would.
    pub fn kill_replica(&mut self, i: usize) {
        drop(self.replicas[i].take());
    }

    /// Starts control-plane replica `i` again, as it was started, and waits
    /// for its port. Its log, `control-<i+1>.log`, begins afresh.
    pub fn start_replica(&mut self, i: usize) {
        let (path, envs) = self.replica_starts[i].clone();
        let mut control = Command::new(fresh_binary("airlock-control"));
        control.args(["serve", "--config"]).arg(path).envs(envs);
        self.replicas[i] = Some(spawn(&mut control, &self.dir, &format!("control-{}", i + 1)));
        wait_port(self.control_ports[i], "airlock-control");
    }

    /// Sends `signal` (a `kill` signal name) to control-plane replica `i`:
    /// `STOP` freezes it with its connections open (to the proxies it is
    /// then silent, as across a partition), `CONT` wakes it.
    pub fn signal_replica(&self, i: usize, signal: &str) {
        let pid = self.replicas[i].as_ref().expect("the replica runs").0.id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} control-plane replica {i}");
    }

    /// Sends `signal` (a `kill` signal name) to the first proxy.
    pub fn signal_proxy(&self, signal: &str) {
        let pid = self.proxies[0].as_ref().expect("the first proxy runs").0.id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} the proxy");
    }

    /// Kills proxy `i` (counting from 0) with SIGKILL: no goodbye, nothing
    /// it had buffered reaches the log.
    pub fn kill_proxy(&mut self, i: usize) {
        drop(self.proxies[i].take());
    }

    /// Starts proxy `i` again, as it was started (same id, same
    /// configuration), and waits for its port. Its log is
    /// `proxy-<i+1>.log`, begun afresh.
    pub fn start_proxy(&mut self, i: usize) {
        let (path, envs) = self.proxy_starts[i].clone();
        let mut proxy = Command::new(fresh_binary("airlock-proxy"));
        proxy.arg("--config").arg(path).envs(envs);
        self.proxies[i] = Some(spawn(&mut proxy, &self.dir, &format!("proxy-{}", i + 1)));
        wait_port(self.proxy_ports[i], "airlock-proxy");
    }

    /// The whole log as `airlock-control export --format <format>` writes
    /// it: one JSON value a line (`jsonl`: events; `ocsf`: records).
    pub fn export(&self, format: &str) -> Vec<serde_json::Value> {
        let out = self
            .control_command(&["export", "--from", "1", "--format", format])
            .output()
            .expect("export");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// A token from the dev issuer: `airlock-dev-idp token <args>`.
    pub fn token(&self, args: &[&str]) -> String {
        self.token_for("api://airlock", args)
    }

    /// [`BinaryStack::token`] for another audience than Airlock's.
    pub fn token_for(&self, audience: &str, args: &[&str]) -> String {
        let out = Command::new(fresh_binary("airlock-dev-idp"))
            .arg("token")
            .arg("--key-file")
            .arg(self.dir.join("idp.key"))
            .args(["--issuer", &self.issuer, "--audience", audience])
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
        self.agent_token_with(&[])
    }

    /// The agent's token, with more `airlock-dev-idp token` arguments
    /// (`--ttl 2s`, say).
    pub fn agent_token_with(&self, more: &[&str]) -> String {
        let agent = [
            "--sub",
            "oid-agent-7",
            "--name",
            "agent-7",
            "--app",
            "--group",
            AGENTS,
        ];
        self.token(&[&agent[..], more].concat())
    }

    /// A session through the first proxy with `token`, its notices
    /// collected.
    pub async fn connect(&self, token: &str) -> Session {
        crate::session(self.proxy_port, token).await
    }

    /// A reviewer's gRPC client of replica `i` (counting from 0).
    /// Over TLS (verifying the control plane's certificate, no client
    /// certificate) when the stack's control plane serves it.
    pub async fn reviewer_of(&self, i: usize) -> ReviewerClient {
        if !self.control_tls {
            return review::connect(format!("http://127.0.0.1:{}", self.control_ports[i])).await;
        }
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        let ca = std::fs::read(self.dir.join("ca.crt")).expect("read ca.crt");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", self.control_ports[i]))
            .expect("URL")
            .tls_config(tls)
            .expect("TLS settings")
            .connect()
            .await
            .expect("the reviewer connects over TLS");
        ReviewerClient::new(channel)
    }

    /// A reviewer's gRPC client of the first replica.
    pub async fn reviewer(&self) -> ReviewerClient {
        self.reviewer_of(0).await
    }

    /// Casts `vote` as the holder of `token` (see [`review::vote`]).
    pub async fn decide(
        &self,
        token: &str,
        vote: proto::DecideRequest,
    ) -> Result<proto::DecideResponse, tonic::Status> {
        review::decide(&mut self.reviewer().await, token, vote).await
    }

    /// See [`review::pending`].
    pub async fn pending(&self, token: &str, matches: impl Fn(&str) -> bool) -> proto::RequestView {
        review::pending(&mut self.reviewer().await, token, matches).await
    }

    /// psql as the agent to connection `dbname` through proxy `proxy`
    /// (counting from 0), over TLS if the proxy serves it: `-X -A -t`, then
    /// `args`. Its output piped.
    pub fn psql_at(&self, proxy: usize, dbname: &str, token: &str, args: &[&str]) -> std::process::Child {
        let ssl = if self.proxy_tls { "require" } else { "disable" };
        Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={} dbname={dbname} user=agent-7 sslmode={ssl}",
                self.proxy_ports[proxy]
            ))
            .args(["-X", "-A", "-t"])
            .args(args)
            .env("PGPASSWORD", token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql")
    }

    /// psql running `sql` through the first proxy, stopping at an error.
    pub fn psql(&self, token: &str, sql: &str) -> std::process::Child {
        self.psql_at(
            0,
            "prod-maintenance",
            token,
            &["-v", "ON_ERROR_STOP=1", "-c", sql],
        )
    }
}

impl Drop for BinaryStack {
    /// A failing test shows what each process said last.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                eprintln!("--- {} (last lines)\n{tail}", path.display());
            }
        }
    }
}

/// Waits (30 seconds at most) for a psql (or any child) to finish; its
/// output.
pub async fn finish(child: std::process::Child) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("psql finished in time")
    .expect("join")
    .expect("psql output")
}

/// A statement held on its own session: the task that waits for its
/// outcome, and the request id from the hold NOTICE.
#[derive(Debug)]
pub struct Held {
    pub request_id: String,
    pub outcome: tokio::task::JoinHandle<Result<u64, tokio_postgres::Error>>,
}

/// Sends `sql` on a new session with `token` and waits for the hold notice.
pub async fn hold(stack: &BinaryStack, token: &str, sql: &str) -> Held {
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
