//! The front door: the only code that sees sockets, TLS, timeouts and
//! connection limits. Accepts clients, negotiates TLS, reads the startup
//! packet, asks for the token, then hands the connection to a session.
//!
//! Startup parameters. Forwarded to the upstream: `application_name`,
//! `client_encoding` (UTF8 only: the policy reads statements as UTF-8, and a
//! multi-byte client encoding could make the proxy and PostgreSQL read
//! different statements), `DateStyle`, `TimeZone`, `IntervalStyle`,
//! `extra_float_digits`, and `default_transaction_read_only` when it is on
//! (off is refused: it could undo a read-only default). Refused, with an
//! error naming the parameter: `options`, `role`, `session_authorization`,
//! `search_path` and `replication`, which could change privileges or what a
//! table name means. Any other parameter is dropped (logged at debug
//! level), timeouts included: a startup value outranks a role's or
//! database's, so `statement_timeout=0` would lift an administrator's limit
//! without the policy judging it, as it judges `SET`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use airlock_reload::LiveCert;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::codec::{BeMessage, FeStartup, FrameReader, Limits, ReadError};
use crate::conn::{ClientStream, Login, fatal};
use crate::error_response;
use crate::session;

/// The `proxy:` section of airlock.yaml, as far as the front door uses it.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// Accept plain-text logins from loopback addresses (development only).
    pub allow_plaintext_loopback: bool,
    pub max_connections: usize,
    /// Connections not yet past login at most (within `max_connections`):
    /// clients that connect and never log in cannot starve the rest.
    pub max_unauthenticated: usize,
    /// Time a client has from connecting to finishing login.
    pub startup_timeout: Duration,
    pub limits: Limits,
}

impl ServerSettings {
    pub fn new(listen: SocketAddr) -> ServerSettings {
        ServerSettings {
            listen,
            tls: None,
            allow_plaintext_loopback: false,
            max_connections: 1000,
            max_unauthenticated: 250,
            startup_timeout: Duration::from_secs(15),
            limits: Limits::default(),
        }
    }
}

/// PEM certificate chain and private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Failing to start the server (bad TLS files, address in use).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("reading TLS {what} {path}: {detail}")]
    Tls {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Builds the TLS acceptor from PEM files. The certificate is served
/// through a [`LiveCert`], so a renewed pair on disk is taken into use
/// without a restart (see [`Server::certificate`]).
pub fn tls_acceptor(files: &TlsFiles) -> Result<(tokio_rustls::TlsAcceptor, Arc<LiveCert>), ServerError> {
    let live = LiveCert::load(&files.cert, &files.key).map_err(|detail| ServerError::Tls {
        what: "certificate and key",
        path: files.cert.clone(),
        detail,
    })?;
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map(|b| b.with_no_client_auth().with_cert_resolver(live.clone()))
            .map_err(|e| ServerError::Tls {
                what: "configuration",
                path: files.cert.clone(),
                detail: e.to_string(),
            })?;
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), live))
}

/// A listening proxy.
pub struct Server {
    listener: TcpListener,
    settings: ServerSettings,
    tls: Option<tokio_rustls::TlsAcceptor>,
    certificate: Option<Arc<LiveCert>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("settings", &self.settings)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Server {
    pub async fn bind(settings: ServerSettings) -> Result<Server, ServerError> {
        let (tls, certificate) = match settings.tls.as_ref().map(tls_acceptor).transpose()? {
            Some((acceptor, live)) => (Some(acceptor), Some(live)),
            None => (None, None),
        };
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: settings.listen,
                source,
            })?;
        Ok(Server {
            listener,
            settings,
            tls,
            certificate,
        })
    }

    /// The certificate served to clients, to watch for renewal.
    pub fn certificate(&self) -> Option<Arc<LiveCert>> {
        self.certificate.clone()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until the task is dropped. Each runs on its own
    /// task: one client's trouble never touches another's.
    pub async fn run(self, deps: Arc<session::Deps>) {
        let limit = Arc::new(Semaphore::new(self.settings.max_connections));
        let logging_in = Arc::new(Semaphore::new(self.settings.max_unauthenticated.max(1)));
        let settings = Arc::new(self.settings);
        let mut phase = deps.phase.clone();
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                // Draining: stop accepting; the listener closes on return.
                Ok(_) = phase.wait_for(|p| *p != session::Phase::Running) => return,
            };
            let (socket, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tokio::spawn(refuse_busy(socket, error_response::too_many_connections()));
                continue;
            };
            let Ok(pending) = logging_in.clone().try_acquire_owned() else {
                tokio::spawn(refuse_busy(socket, error_response::too_many_logging_in()));
                continue;
            };
            let (settings, deps, tls) = (settings.clone(), deps.clone(), self.tls.clone());
            tokio::spawn(async move {
                handle(socket, peer, &settings, tls, deps, pending).await;
                drop(permit);
            });
        }
    }
}

/// Over `max_connections` or `max_unauthenticated`: PostgreSQL's own
/// answer, 53300.
async fn refuse_busy(mut socket: TcpStream, error: crate::codec::Diagnostic) {
    let mut out = BytesMut::new();
    BeMessage::ErrorResponse(&error).encode(&mut out);
    let _ = socket.write_all(&out).await;
}

async fn handle(
    socket: TcpStream,
    peer: SocketAddr,
    settings: &ServerSettings,
    tls: Option<tokio_rustls::TlsAcceptor>,
    deps: Arc<session::Deps>,
    pending: tokio::sync::OwnedSemaphorePermit,
) {
    let deadline = tokio::time::Instant::now() + settings.startup_timeout;
    let mut login =
        match tokio::time::timeout_at(deadline, negotiate(socket, peer, deadline, settings, tls)).await {
            Ok(Ok(Some(Opening::Login(login)))) => login,
            Ok(Ok(Some(Opening::Cancel {
                process_id,
                secret_key,
            }))) => {
                // A cancel request is no login: it does not wait holding a
                // place among the connections logging in.
                drop(pending);
                deps.cancels.cancel(process_id, secret_key).await;
                return;
            }
            Ok(Ok(None)) => return, // the client left
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "connection refused during startup");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "startup timed out");
                return;
            }
        };
    login.unauthenticated = Some(pending);
    session::run(login, deps).await;
}

/// What a new connection turned out to be.
#[derive(Debug)]
pub enum Opening {
    Login(Login),
    Cancel { process_id: i32, secret_key: i32 },
}

/// Why a connection ended before login.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("{0}")]
    Refused(String),
}

/// SSLRequest / GSSENCRequest / startup, up to a validated StartupMessage.
async fn negotiate(
    socket: TcpStream,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
    settings: &ServerSettings,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<Option<Opening>, StartupError> {
    let mut reader = FrameReader::new(Box::new(socket) as Box<dyn ClientStream>, settings.limits);
    let mut encrypted = false;
    let mut gss_refused = false;
    loop {
        let Some(first) = reader.read_startup().await? else {
            return Ok(None);
        };
        match first {
            FeStartup::SslRequest if !encrypted => {
                let (mut stream, leftover) = reader.into_parts();
                if !leftover.is_empty() {
                    // Bytes sent before the TLS handshake could be injected
                    // by anyone on the path (CVE-2021-23214): refuse.
                    return Err(StartupError::Refused(
                        "data sent after SSLRequest before TLS".into(),
                    ));
                }
                match &tls {
                    Some(acceptor) => {
                        stream.write_all(b"S").await.map_err(ReadError::Io)?;
                        let tls_stream = acceptor.accept(stream).await.map_err(StartupError::Tls)?;
                        reader = FrameReader::new(Box::new(tls_stream), settings.limits);
                        encrypted = true;
                    }
                    None => {
                        stream.write_all(b"N").await.map_err(ReadError::Io)?;
                        reader = FrameReader::new(stream, settings.limits);
                    }
                }
            }
            FeStartup::GssEncRequest if !encrypted && !gss_refused => {
                let (mut stream, leftover) = reader.into_parts();
                if !leftover.is_empty() {
                    return Err(StartupError::Refused("data sent after GSSENCRequest".into()));
                }
                stream.write_all(b"N").await.map_err(ReadError::Io)?;
                reader = FrameReader::new(stream, settings.limits);
                gss_refused = true;
            }
            FeStartup::SslRequest | FeStartup::GssEncRequest => {
                let refusal = error_response::encryption_requested_twice();
                fatal(&mut reader, &refusal).await;
                return Err(StartupError::Refused(refusal.message));
            }
            FeStartup::CancelRequest {
                process_id,
                secret_key,
            } => {
                tracing::debug!(%peer, process_id, "cancel request");
                return Ok(Some(Opening::Cancel {
                    process_id,
                    secret_key,
                }));
            }
            FeStartup::Startup { params } => {
                let loopback = peer.ip().is_loopback();
                let plaintext_ok = settings.allow_plaintext_loopback && loopback;
                if !(encrypted || plaintext_ok) {
                    let refusal = error_response::tls_required();
                    fatal(&mut reader, &refusal).await;
                    return Err(StartupError::Refused(refusal.message));
                }
                let params = match screen_params(params) {
                    Ok(p) => p,
                    Err(msg) => {
                        fatal(
                            &mut reader,
                            &error_response::startup_parameter_refused(msg.clone()),
                        )
                        .await;
                        return Err(StartupError::Refused(msg));
                    }
                };
                return Ok(Some(Opening::Login(Login {
                    io: reader,
                    peer,
                    tls: encrypted,
                    params,
                    deadline,
                    unauthenticated: None,
                })));
            }
        }
    }
}

/// Parameters forwarded to the upstream as they are.
const FORWARDED_PARAMS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
];
/// Parameters that could change privileges or name resolution: refused.
const REFUSED_PARAMS: &[&str] = &[
    "options",
    "role",
    "session_authorization",
    "search_path",
    "replication",
];

/// Applies the startup-parameter rules in the module docs. Keeps `user` and
/// `database` for the session.
pub fn screen_params(params: Vec<(String, String)>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (name, value) in params {
        if REFUSED_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(&name)) {
            return Err(format!(
                "startup parameter \"{name}\" is not allowed through Airlock (it could change privileges or \
                 what table names mean); remove it from the connection string"
            ));
        }
        if name.eq_ignore_ascii_case("client_encoding") {
            let v = value.trim().trim_matches('\'').replace(['-', '_'], "");
            if !v.eq_ignore_ascii_case("UTF8") && !v.eq_ignore_ascii_case("UNICODE") {
                return Err(format!(
                    "client_encoding \"{value}\" is not allowed through Airlock; use UTF8"
                ));
            }
        }
        // Read-only may be asked for, never undone: `off` would override a
        // role's or database's read-only default, as `BEGIN READ WRITE`
        // would (which a policy judges as SET).
        if name.eq_ignore_ascii_case("default_transaction_read_only") {
            let on = value.trim().trim_matches('\'').to_ascii_lowercase();
            if !matches!(on.as_str(), "on" | "true" | "yes" | "1") {
                return Err(format!(
                    "startup parameter \"{name}\" may only be turned on through Airlock (off could undo a \
                     read-only default); remove it from the connection string"
                ));
            }
            out.push((name, value));
            continue;
        }
        if name == "user" || name == "database" || FORWARDED_PARAMS.contains(&name.as_str()) {
            out.push((name, value));
        } else {
            tracing::debug!(parameter = %name, "dropping startup parameter");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::screen_params;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn risky_parameters_are_refused_and_unlisted_ones_dropped() {
        // A startup timeout outranks a role's: `0` would lift an
        // administrator's limit unjudged (a review found it), so timeouts
        // are dropped like other unlisted parameters.
        let kept = screen_params(params(&[
            ("user", "agent"),
            ("database", "shop"),
            ("statement_timeout", "0"),
            ("idle_in_transaction_session_timeout", "0"),
            ("lock_timeout", "0"),
            ("session_replication_role", "replica"),
            ("application_name", "app"),
        ]))
        .expect("accepted");
        let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["user", "database", "application_name"]);
        for risky in ["options", "role", "search_path", "Session_Authorization"] {
            let err = screen_params(params(&[(risky, "x")])).expect_err(risky);
            assert!(err.contains(&format!("\"{risky}\" is not allowed")), "{err}");
        }
        let err = screen_params(params(&[("client_encoding", "SJIS")])).expect_err("SJIS");
        assert!(err.contains("use UTF8"), "{err}");
        // Read-only may be asked for (pgx's target_session_attrs checks
        // it), never undone.
        let kept = screen_params(params(&[("default_transaction_read_only", "on")])).expect("on");
        assert_eq!(kept, params(&[("default_transaction_read_only", "on")]));
        for off in ["off", "false", "0", "", "of"] {
            let err = screen_params(params(&[("default_transaction_read_only", off)])).expect_err(off);
            assert!(err.contains("may only be turned on"), "{err}");
        }
    }
}
