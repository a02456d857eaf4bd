//! A throwaway `nats-server -js`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
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
}

impl NatsServer {
    /// Starts a new server. Panics, with the server log, if it does not come up.
    pub fn start() -> NatsServer {
        let mut last_log = String::new();
        // Free ports are picked before the server binds them; retry a clash.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("airlock-nats-")
                .tempdir()
                .expect("create a temp dir for the JetStream store");
            let mut server = NatsServer {
                dir,
                port: free_port(),
                monitor_port: free_port(),
                process: None,
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

/// One server for the whole test process, started on first use. Tests that
/// share it must use names (streams, subjects) of their own; tests that stop
/// or restart NATS start their own with [`NatsServer::start`].
pub fn shared_nats() -> &'static NatsServer {
    static SHARED: OnceLock<NatsServer> = OnceLock::new();
    SHARED.get_or_init(NatsServer::start)
}
