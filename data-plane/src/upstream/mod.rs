//! The proxy's connection to the real PostgreSQL, made with the
//! connection's own credential: the agent never sees it.
//!
//! Owns: TCP connect with a timeout, the startup handshake, password
//! authentication (SCRAM-SHA-256, MD5, cleartext; trust needs none), and
//! collecting ParameterStatus and BackendKeyData. After `connect` the
//! upstream is ready for queries and is driven frame by frame.
//!
//! TLS in [`tls`], password exchange in [`auth`], the credential in
//! [`config`].
//!
//! Does not own: what is sent afterwards (the session decides).

mod auth;
mod config;
pub mod query;
mod tls;

use std::fmt;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::codec::{Frame, FrameReader, Limits, ReadError, TxStatus, parse_diagnostic_fields};
use crate::conn::ClientStream;
pub use config::{Secret, UpstreamConfig, UpstreamTls};

use auth::{Auth, cstr};
use tls::tls;

/// The largest message accepted from the upstream (PostgreSQL's own cap on
/// a field is 1 GiB).
pub const MAX_UPSTREAM_MESSAGE: usize = 1 << 30;

/// Why the upstream could not be reached or logged into. Messages name the
/// upstream and user, never the password.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to upstream {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("upstream refused the login of {user}: {message} (SQLSTATE {sqlstate})")]
    Refused {
        user: String,
        sqlstate: String,
        message: String,
    },
    #[error("upstream asks for a password for {user}, but the connection has none configured")]
    PasswordRequired { user: String },
    #[error("no Entra token for the upstream login (upstream_auth: entra): {0}")]
    Token(#[source] airlock_identity::TokenError),
    #[error("upstream asks for {method} authentication, which Airlock does not support")]
    UnsupportedAuth { method: String },
    #[error("upstream {addr} TLS: {detail}")]
    Tls { addr: String, detail: String },
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    #[error("upstream connection: {0}")]
    Read(#[from] ReadError),
    #[error("upstream connection: {0}")]
    Io(#[from] std::io::Error),
}

/// A logged-in upstream connection, ready for queries.
pub struct Upstream {
    pub reader: FrameReader<tokio::io::ReadHalf<Box<dyn ClientStream>>>,
    pub writer: tokio::io::WriteHalf<Box<dyn ClientStream>>,
    /// ParameterStatus values PostgreSQL reported at startup.
    pub parameters: Vec<(String, String)>,
    /// The upstream's own cancel key (never given to the client).
    pub process_id: i32,
    pub secret_key: i32,
    pub addr: String,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("process_id", &self.process_id)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Connects and logs in. `params` are extra startup parameters
    /// (application_name, client_encoding, ...); `user` and `database` come
    /// from the config and cannot be overridden by them.
    pub async fn connect(
        config: &UpstreamConfig,
        params: &[(String, String)],
    ) -> Result<Upstream, UpstreamError> {
        let addr = format!("{}:{}", config.host, config.port);
        let timeout = config.connect_timeout;
        match tokio::time::timeout(timeout, Self::connect_inner(config, params, &addr)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout { addr, timeout }),
        }
    }

    async fn connect_inner(
        config: &UpstreamConfig,
        params: &[(String, String)],
        addr: &str,
    ) -> Result<Upstream, UpstreamError> {
        // The token first: without one there is no point reaching the server.
        let token = match &config.token {
            Some(source) => Some(Secret::new(
                source.token().await.map_err(UpstreamError::Token)?.expose(),
            )),
            None => None,
        };
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| UpstreamError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        stream.set_nodelay(true)?;
        // Configuration allows an Entra token only to a verified server or
        // to loopback; checked again here on the address actually reached,
        // so neither a resolver nor another constructor sends it elsewhere.
        if token.is_some() && !matches!(config.tls, UpstreamTls::VerifyFull { .. }) {
            let peer_is_loopback = stream.peer_addr().is_ok_and(|a| a.ip().is_loopback());
            if !peer_is_loopback {
                return Err(UpstreamError::Tls {
                    addr: addr.to_owned(),
                    detail: "an Entra token is sent only over verify-full TLS (or to loopback)".into(),
                });
            }
        }
        let stream = tls(stream, config, addr).await?;
        let (r, mut writer) = tokio::io::split(stream);
        let mut reader = FrameReader::new(
            r,
            Limits {
                max_message: MAX_UPSTREAM_MESSAGE,
                max_password: MAX_UPSTREAM_MESSAGE,
            },
        );

        let mut startup: Vec<(&str, &str)> = vec![("user", &config.user), ("database", &config.database)];
        for (k, v) in params {
            let forced = READS_AS_PROXY.iter().any(|(n, _)| n.eq_ignore_ascii_case(k));
            if k != "user" && k != "database" && !forced {
                startup.push((k, v));
            }
        }
        // Startup parameters are also what RESET and DISCARD ALL return to,
        // and no role, database or system default overrides them.
        startup.extend(READS_AS_PROXY.iter().copied());
        let mut buf = BytesMut::new();
        frontend::startup_message(startup.iter().copied(), &mut buf)?;
        writer.write_all(&buf).await?;

        let mut upstream_auth = Auth::new(config, token.as_ref().or(config.password.as_ref()));
        let mut parameters = Vec::new();
        let mut key = None;
        loop {
            let frame = reader
                .read_frame()
                .await?
                .ok_or_else(|| UpstreamError::Protocol("closed during startup".into()))?;
            match frame.tag {
                b'R' => {
                    if let Some(reply) = upstream_auth.step(&frame)? {
                        writer.write_all(&reply).await?;
                    }
                }
                b'S' => {
                    let mut body = frame.body.clone();
                    let name = cstr(&mut body)?;
                    let value = cstr(&mut body)?;
                    parameters.push((name, value));
                }
                b'K' => {
                    let mut body = frame.body.clone();
                    if body.len() < 8 {
                        return Err(UpstreamError::Protocol("short BackendKeyData".into()));
                    }
                    key = Some((body.get_i32(), body.get_i32()));
                }
                b'Z' => {
                    for (name, value) in &parameters {
                        if !reads_as_proxy(name, value) {
                            return Err(UpstreamError::Protocol(format!(
                                "PostgreSQL reports {name}={value}; Airlock reads statements only under {}",
                                describe_reading()
                            )));
                        }
                    }
                    let (process_id, secret_key) = key.unwrap_or((0, 0));
                    return Ok(Upstream {
                        reader,
                        writer,
                        parameters,
                        process_id,
                        secret_key,
                        addr: addr.to_owned(),
                    });
                }
                b'E' => {
                    let fields = parse_diagnostic_fields(&frame.body);
                    let get = |c: u8| {
                        fields
                            .iter()
                            .find(|(k, _)| *k == c)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    return Err(UpstreamError::Refused {
                        user: config.user.clone(),
                        sqlstate: get(b'C'),
                        message: get(b'M'),
                    });
                }
                b'N' => {}
                other => {
                    return Err(UpstreamError::Protocol(format!(
                        "unexpected message '{}' during startup",
                        other as char
                    )));
                }
            }
        }
    }

    /// Sends bytes to the upstream as they are.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        self.writer.write_all(bytes).await?;
        Ok(())
    }

    /// The next frame from the upstream.
    pub async fn recv(&mut self) -> Result<Frame, UpstreamError> {
        self.reader
            .read_frame()
            .await?
            .ok_or_else(|| UpstreamError::Protocol("upstream closed the connection".into()))
    }
}

/// The settings under which PostgreSQL reads statement text as the proxy
/// does (UTF-8, a backslash in '...' is an ordinary character). The proxy
/// logs in with them and ends a session whose upstream ever reports another
/// value (see the policy crate's `classify::reading` for the statements
/// that would change them, which are refused before they run).
pub const READS_AS_PROXY: &[(&str, &str)] =
    &[("client_encoding", "UTF8"), ("standard_conforming_strings", "on")];

/// Whether a ParameterStatus `name`=`value` leaves PostgreSQL reading
/// statements as the proxy does (parameters other than those are free).
pub fn reads_as_proxy(name: &str, value: &str) -> bool {
    let norm = |s: &str| s.trim().to_ascii_lowercase().replace(['-', '_'], "");
    match READS_AS_PROXY.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        Some((_, wanted)) => {
            norm(value) == norm(wanted) || (norm(wanted) == "utf8" && norm(value) == "unicode")
        }
        None => true,
    }
}

fn describe_reading() -> String {
    READS_AS_PROXY
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Status of a ReadyForQuery frame.
pub fn ready_status(frame: &Frame) -> Option<TxStatus> {
    if frame.tag == b'Z' && frame.body.len() == 1 {
        TxStatus::from_byte(frame.body[0])
    } else {
        None
    }
}
