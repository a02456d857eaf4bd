//! A throwaway PostgreSQL cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use crate::INSTALL_HINT;
use crate::process::{Supervised, find_binary, free_port, log_tail, running_as_root, wait_for_port};
use crate::wait::poll_blocking;

/// The superuser of every harness cluster. It is trusted on loopback; every
/// other role authenticates with SCRAM-SHA-256 unless `hba_lines` say otherwise.
pub const SUPERUSER: &str = "postgres";

/// Settings for a cluster.
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// `-c name=value` server settings, e.g. `("log_statement", "all")`.
    pub settings: Vec<(String, String)>,
    /// pg_hba.conf lines placed before the defaults (first match wins).
    pub hba_lines: Vec<String>,
    /// Serve TLS with a self-signed certificate for 127.0.0.1 (made with
    /// openssl at start; see [`Postgres::server_cert`]).
    pub tls: bool,
}

impl PostgresOptions {
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn hba(mut self, line: &str) -> Self {
        self.hba_lines.push(line.to_owned());
        self
    }

    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }
}

/// A PostgreSQL server initialised into a temp dir and listening on a free
/// port of 127.0.0.1. Started as the `postgres` OS user when the tests run as
/// root, since PostgreSQL refuses to run as root. Dropping it stops the
/// server (fast shutdown) and removes the cluster.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    options: PostgresOptions,
    process: Option<Supervised>,
}

impl Postgres {
    /// initdb and start a cluster with default settings.
    pub fn start() -> Postgres {
        Postgres::start_with(PostgresOptions::default())
    }

    /// initdb and start a cluster. Panics, with the server log, on failure.
    pub fn start_with(options: PostgresOptions) -> Postgres {
        let postgres = find_binary("postgres", "AIRLOCK_PG_POSTGRES", &pg_bin_dirs());
        let bin = postgres
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let dir = tempfile::Builder::new()
            .prefix("airlock-pg-")
            .tempdir()
            .expect("create a temp dir for the PostgreSQL cluster");
        let mut pg = Postgres {
            dir,
            bin,
            port: 0,
            options,
            process: None,
        };
        pg.initdb();
        let mut last_log = String::new();
        for _ in 0..3 {
            pg.port = free_port();
            match pg.launch() {
                Ok(()) => return pg,
                Err(log) if log.contains("could not bind") || log.contains("already in use") => {
                    last_log = log
                }
                Err(log) => panic!("PostgreSQL did not start; its log:\n{log}"),
            }
        }
        panic!("PostgreSQL did not start after 3 tries; its log:\n{last_log}")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Wraps a PostgreSQL server program so that it runs as `postgres` when we
    /// are root.
    fn server_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if !path.is_file() {
            panic!(
                "`{}` is missing next to `postgres`; {INSTALL_HINT}",
                path.display()
            );
        }
        if running_as_root() {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid", SUPERUSER, "--regid", SUPERUSER, "--init-groups", "--"])
                .arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    fn initdb(&mut self) {
        std::fs::create_dir_all(self.socket_dir()).expect("create the socket dir");
        if running_as_root() {
            // The cluster's files must belong to the postgres user.
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{SUPERUSER}:{SUPERUSER}"))
                .arg(self.dir.path())
                .status();
            assert!(
                matches!(status, Ok(s) if s.success()),
                "chown the cluster dir to the `{SUPERUSER}` OS user failed: running as root, PostgreSQL must run as `{SUPERUSER}` \
                 (create it with `useradd --system {SUPERUSER}`, or {INSTALL_HINT})"
            );
        }
        let out = self
            .server_command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--auth=trust",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut hba = String::new();
        for line in &self.options.hba_lines {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str(&format!(
            "local all all trust\n\
             host all {SUPERUSER} 127.0.0.1/32 trust\n\
             host all {SUPERUSER} ::1/128 trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host all all ::1/128 scram-sha-256\n"
        ));
        std::fs::write(self.data_dir().join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        if self.options.tls {
            let data = self.data_dir();
            let openssl = find_binary("openssl", "AIRLOCK_OPENSSL", &[]);
            // A throwaway CA, and a server certificate for 127.0.0.1 it signs.
            std::fs::write(
                data.join("server.ext"),
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
            )
            .expect("write server.ext");
            let steps: [&[&str]; 3] = [
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=airlock-test-ca",
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                ],
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/CN=localhost",
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                ],
                &[
                    "x509",
                    "-req",
                    "-in",
                    "server.csr",
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    "server.ext",
                    "-out",
                    "server.crt",
                ],
            ];
            for args in steps {
                let out = Command::new(&openssl)
                    .args(args)
                    .current_dir(&data)
                    .output()
                    .expect("run openssl");
                assert!(
                    out.status.success(),
                    "openssl {args:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            // The server reads its key only if nobody else can.
            std::fs::set_permissions(
                data.join("server.key"),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .expect("chmod server.key");
            if running_as_root() {
                let _ = Command::new("chown")
                    .arg(format!("{SUPERUSER}:{SUPERUSER}"))
                    .arg(data.join("server.key"))
                    .arg(data.join("server.crt"))
                    .status();
            }
            self.options.settings.push(("ssl".into(), "on".into()));
        }
    }

    /// The CA that signed the server's certificate (PEM), when started
    /// with TLS.
    pub fn server_ca(&self) -> PathBuf {
        self.data_dir().join("ca.crt")
    }

    fn launch(&mut self) -> Result<(), String> {
        let mut cmd = self.server_command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.socket_dir())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(["-c", "max_connections=200"]);
        for (k, v) in &self.options.settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        let log = self.log_path();
        self.process = Some(Supervised::spawn(&mut cmd, &log, Some(self.dir.path())));
        if !wait_for_port(self.port, Duration::from_secs(30)) {
            return Err(log_tail(&log));
        }
        // Accepting TCP is not accepting queries: wait for the end of recovery.
        poll_blocking(Duration::from_secs(30), || self.try_psql("postgres", "SELECT 1"))
            .map(drop)
            .map_err(|_| log_tail(&log))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// A libpq URL for the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs SQL through `psql` as the superuser; returns unaligned, tuples-only
    /// output. Panics with psql's error on failure.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        match self.try_psql(database, sql) {
            Ok(out) => out,
            Err(e) => panic!("psql -d {database} -c {sql:?} failed: {e}"),
        }
    }

    /// Like [`Postgres::psql`] but returns psql's error text instead of panicking.
    pub fn try_psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let psql = find_binary("psql", "AIRLOCK_PSQL", std::slice::from_ref(&self.bin));
        let out: Output = Command::new(psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", database, "-c", sql])
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .output()
            .map_err(|e| format!("could not run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Creates a database owned by the superuser; returns its name.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        name.to_owned()
    }

    /// Creates a login role with a SCRAM-SHA-256 password.
    pub fn create_role(&self, name: &str, password: &str) {
        let password = password.replace('\'', "''");
        self.psql(
            "postgres",
            &format!("SET password_encryption = 'scram-sha-256'; CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'"),
        );
    }

    /// The server log so far (with `log_statement=all`, every statement run).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the server (fast shutdown), keeping the cluster for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop("INT");
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.launch() {
            panic!(
                "PostgreSQL did not restart on port {}; its log:\n{log}",
                self.port
            );
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where Debian and others keep the server binaries, newest version first.
fn pg_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    dirs.into_iter().map(|(_, p)| p).collect()
}

/// One cluster for the whole test process, started on first use. Tests that
/// share it should work in a database of their own ([`Postgres::create_database`]).
pub fn shared_postgres() -> &'static Postgres {
    static SHARED: OnceLock<Postgres> = OnceLock::new();
    SHARED.get_or_init(Postgres::start)
}
