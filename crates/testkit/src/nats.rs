//! A throwaway `nats-server -js`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{Supervised, find_binary, free_port, log_tail, wait_for_port};
use crate::wait::poll_blocking;

/// A `nats-server` with JetStream, its store in a temp dir, on free ports of
/// 127.0.0.1. Dropping it stops the server and removes the store.
#[derive(Debug)]
pub struct NatsServer {
    dir: tempfile::TempDir,
    port: u16,
    monitor_port: u16,
    process: Option<Supervised>,
    secured: Option<Secured>,
}

/// A server that requires TLS and the users of the repository's
/// `deploy/nats/airlock-permissions.conf`.
#[derive(Debug, Clone)]
struct Secured {
    config: PathBuf,
    passwords: Vec<(NatsRole, String)>,
}

/// The users `deploy/nats/airlock-permissions.conf` defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsRole {
    Proxy,
    Control,
    Auditor,
    Reviewer,
    Forwarder,
}

impl NatsRole {
    pub const ALL: [NatsRole; 5] = [
        NatsRole::Proxy,
        NatsRole::Control,
        NatsRole::Auditor,
        NatsRole::Reviewer,
        NatsRole::Forwarder,
    ];

    /// The user name.
    pub fn user(self) -> &'static str {
        match self {
            NatsRole::Proxy => "airlock-proxy",
            NatsRole::Control => "airlock-control",
            NatsRole::Auditor => "airlock-auditor",
            NatsRole::Reviewer => "airlock-reviewer",
            NatsRole::Forwarder => "airlock-forwarder",
        }
    }

    /// The variable the permissions file reads the user's password from.
    pub fn password_env(self) -> &'static str {
        match self {
            NatsRole::Proxy => "AIRLOCK_NATS_PROXY_PASSWORD",
            NatsRole::Control => "AIRLOCK_NATS_CONTROL_PASSWORD",
            NatsRole::Auditor => "AIRLOCK_NATS_AUDITOR_PASSWORD",
            NatsRole::Reviewer => "AIRLOCK_NATS_REVIEWER_PASSWORD",
            NatsRole::Forwarder => "AIRLOCK_NATS_FORWARDER_PASSWORD",
        }
    }
}

impl NatsServer {
    /// Starts a new server. Panics, with the server log, if it does not come up.
    pub fn start() -> NatsServer {
        NatsServer::start_as(|_| None)
    }

    /// A server that speaks only TLS, with a certificate `ca` issued for
    /// 127.0.0.1, verifies client certificates when `verify_clients`, and
    /// lets in only the users of the repository's
    /// `deploy/nats/airlock-permissions.conf`, with passwords made now
    /// ([`NatsServer::password`]).
    pub fn start_secured(ca: &crate::TestCa, verify_clients: bool) -> NatsServer {
        static SERVERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let server_cert = ca.server(&format!("nats-server-{n}"));
        NatsServer::start_as(|dir| {
            let permissions =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/airlock-permissions.conf");
            std::fs::copy(&permissions, dir.join("airlock-permissions.conf"))
                .unwrap_or_else(|e| panic!("copy {}: {e}", permissions.display()));
            let config = dir.join("nats.conf");
            std::fs::write(
                &config,
                format!(
                    "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  \
                     verify: {verify_clients}\n  timeout: 2\n}}\ninclude ./airlock-permissions.conf\n",
                    server_cert.cert.display(),
                    server_cert.key.display(),
                    ca.ca().display(),
                ),
            )
            .expect("write nats.conf");
            let passwords = NatsRole::ALL
                .iter()
                .map(|role| (*role, made_up_password()))
                .collect();
            Some(Secured { config, passwords })
        })
    }

    /// The password of `role`'s user on a [`NatsServer::start_secured`] server.
    pub fn password(&self, role: NatsRole) -> String {
        let secured = self
            .secured
            .as_ref()
            .expect("a server started with start_secured");
        secured
            .passwords
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, p)| p.clone())
            .expect("every role has a password")
    }

    fn start_as(secure: impl Fn(&Path) -> Option<Secured>) -> NatsServer {
        let mut last_log = String::new();
        // Free ports are picked before the server binds them; retry a clash.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("airlock-nats-")
                .tempdir()
                .expect("create a temp dir for the JetStream store");
            let secured = secure(dir.path());
            let mut server = NatsServer {
                dir,
                port: free_port(),
                monitor_port: free_port(),
                process: None,
                secured,
            };
            match server.launch() {
                Ok(()) => return server,
                Err(log) if log.contains("address already in use") => last_log = log,
                Err(log) => panic!("nats-server did not start; its log:\n{log}"),
            }
        }
        panic!("nats-server did not start after 3 tries; its log:\n{last_log}")
    }

    fn launch(&mut self) -> Result<(), String> {
        let binary = find_binary("nats-server", "AIRLOCK_NATS_SERVER", &[]);
        let store = self.dir.path().join("jetstream");
        let log = self.dir.path().join("nats-server.log");
        let mut cmd = Command::new(binary);
        if let Some(secured) = &self.secured {
            cmd.arg("-c").arg(&secured.config);
            for (role, password) in &secured.passwords {
                cmd.env(role.password_env(), password);
            }
        }
        cmd.arg("-js")
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor_port.to_string())
            .arg("-sd")
            .arg(&store)
            .arg("-n")
            .arg(format!("airlock-test-{}", self.port));
        let process = Supervised::spawn(&mut cmd, &log, Some(self.dir.path()));
        self.process = Some(process);
        if wait_for_port(self.port, Duration::from_secs(15))
            && self.jetstream_healthy(Duration::from_secs(15))
        {
            Ok(())
        } else {
            Err(log_tail(&log))
        }
    }

    /// Polls the monitoring endpoint until JetStream reports healthy.
    fn jetstream_healthy(&self, timeout: Duration) -> bool {
        let healthy = || {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.monitor_port)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let req = "GET /healthz?js-enabled-only=true HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
            let mut resp = String::new();
            s.write_all(req.as_bytes()).is_ok()
                && s.read_to_string(&mut resp).is_ok()
                && resp.starts_with("HTTP/1.0 200")
        };
        poll_blocking(timeout, healthy).is_ok()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (survives `stop`/`restart`).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// Stops the server, keeping its store, so a test can see NATS go away.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop("TERM");
        }
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.launch() {
            panic!(
                "nats-server did not restart on port {}; its log:\n{log}",
                self.port
            );
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Supervised::is_running)
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(Supervised::log_tail)
            .unwrap_or_else(|| log_tail(&self.dir.path().join("nats-server.log")))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A password no one guessed: 128 bits from the standard library's
/// randomly keyed hasher (good enough for a throwaway server's users).
fn made_up_password() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// One server for the whole test process, started on first use. Tests that
/// share it must use names (streams, subjects) of their own; tests that stop
/// or restart NATS start their own with [`NatsServer::start`].
pub fn shared_nats() -> &'static NatsServer {
    static SHARED: OnceLock<NatsServer> = OnceLock::new();
    SHARED.get_or_init(NatsServer::start)
}
