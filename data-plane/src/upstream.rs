//! The proxy's connection to the real PostgreSQL, made with the
//! connection's own credential: the agent never sees it.
//!
//! Owns: TCP connect with a timeout, the startup handshake, password
//! authentication (SCRAM-SHA-256, MD5, cleartext; trust needs none), and
//! collecting ParameterStatus and BackendKeyData. After `connect` the
//! upstream is ready for queries and is driven frame by frame.
//!
//! TLS to the upstream, as libpq's sslmode: `disable` (plain TCP),
//! `require` (encrypted, the server's certificate not checked) and
//! `verify-full` (chain checked against `sslrootcert`, and the host name).
//!
//! Does not own: what is sent afterwards (the session decides).

use std::fmt;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::codec::{Frame, FrameReader, Limits, ReadError, TxStatus, parse_diagnostic_fields};
use crate::server::ClientStream;

/// The largest message accepted from the upstream (PostgreSQL's own cap on
/// a field is 1 GiB).
pub const MAX_UPSTREAM_MESSAGE: usize = 1 << 30;

/// A password that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself. Never log what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// TLS to the upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UpstreamTls {
    #[default]
    Disable,
    /// Encrypted; the certificate is not checked (libpq's `require`).
    Require,
    /// Encrypted; chain checked against this CA file, and the host name.
    VerifyFull { root_cert: std::path::PathBuf },
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub tls: UpstreamTls,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    pub password: Option<Secret>,
    pub connect_timeout: Duration,
}

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
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| UpstreamError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        stream.set_nodelay(true)?;
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
            if k != "user" && k != "database" {
                startup.push((k, v));
            }
        }
        let mut buf = BytesMut::new();
        frontend::startup_message(startup.iter().copied(), &mut buf)?;
        writer.write_all(&buf).await?;

        let mut upstream_auth = Auth::new(config);
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

/// Negotiates TLS as configured (SSLRequest, then the handshake).
async fn tls(
    mut stream: TcpStream,
    config: &UpstreamConfig,
    addr: &str,
) -> Result<Box<dyn ClientStream>, UpstreamError> {
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    let err = |detail: String| UpstreamError::Tls {
        addr: addr.to_owned(),
        detail,
    };
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match &config.tls {
        UpstreamTls::Disable => return Ok(Box::new(stream)),
        UpstreamTls::Require => Arc::new(AnyCertificate(provider())),
        UpstreamTls::VerifyFull { root_cert } => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(root_cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| err(format!("reading sslrootcert {}: {e}", root_cert.display())))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| err(format!("sslrootcert {}: {e}", root_cert.display())))?;
            }
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider()))
                .build()
                .map_err(|e| err(e.to_string()))?
        }
    };
    // SSLRequest.
    stream.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(err("the server does not accept TLS connections".into()));
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(config.host.clone())
        .map_err(|e| err(format!("host name {}: {e}", config.host)))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, stream)
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(Box::new(stream))
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// libpq's `sslmode=require`: any certificate, but handshake signatures are
/// still checked (the session is encrypted to whoever holds the key).
#[derive(Debug)]
struct AnyCertificate(rustls::crypto::CryptoProvider);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Status of a ReadyForQuery frame.
pub fn ready_status(frame: &Frame) -> Option<TxStatus> {
    if frame.tag == b'Z' && frame.body.len() == 1 {
        TxStatus::from_byte(frame.body[0])
    } else {
        None
    }
}

/// Password authentication, one server request at a time.
struct Auth<'a> {
    config: &'a UpstreamConfig,
    scram: Option<ScramSha256>,
}

impl<'a> Auth<'a> {
    fn new(config: &'a UpstreamConfig) -> Auth<'a> {
        Auth { config, scram: None }
    }

    fn password(&self) -> Result<&str, UpstreamError> {
        self.config
            .password
            .as_ref()
            .map(Secret::expose)
            .ok_or_else(|| UpstreamError::PasswordRequired {
                user: self.config.user.clone(),
            })
    }

    /// Answers one Authentication request; `None` when nothing is to be sent.
    fn step(&mut self, frame: &Frame) -> Result<Option<BytesMut>, UpstreamError> {
        let mut body = frame.body.clone();
        if body.len() < 4 {
            return Err(UpstreamError::Protocol("short Authentication message".into()));
        }
        let code = body.get_i32();
        let mut out = BytesMut::new();
        match code {
            0 => return Ok(None),
            3 => frontend::password_message(self.password()?.as_bytes(), &mut out)?,
            5 => {
                if body.len() < 4 {
                    return Err(UpstreamError::Protocol("short MD5 salt".into()));
                }
                let salt = [body[0], body[1], body[2], body[3]];
                let hashed = postgres_protocol::authentication::md5_hash(
                    self.config.user.as_bytes(),
                    self.password()?.as_bytes(),
                    salt,
                );
                frontend::password_message(hashed.as_bytes(), &mut out)?;
            }
            10 => {
                let mut offered = Vec::new();
                while !body.is_empty() {
                    let m = cstr(&mut body)?;
                    if m.is_empty() {
                        break;
                    }
                    offered.push(m);
                }
                if !offered.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(UpstreamError::UnsupportedAuth {
                        method: format!("SASL ({})", offered.join(", ")),
                    });
                }
                // No channel binding: TLS to the upstream is not built yet.
                let scram = ScramSha256::new(self.password()?.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut out)?;
                self.scram = Some(scram);
            }
            11 => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("SASL continue without a SASL exchange".into()))?;
                scram
                    .update(&body)
                    .map_err(|e| UpstreamError::Protocol(format!("SCRAM: {e}")))?;
                frontend::sasl_response(scram.message(), &mut out)?;
            }
            12 => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("SASL final without a SASL exchange".into()))?;
                // Checks the server's signature: a fake upstream is caught here.
                scram
                    .finish(&body)
                    .map_err(|e| UpstreamError::Protocol(format!("SCRAM server signature: {e}")))?;
                return Ok(None);
            }
            2 => {
                return Err(UpstreamError::UnsupportedAuth {
                    method: "Kerberos V5".into(),
                });
            }
            7 | 8 => {
                return Err(UpstreamError::UnsupportedAuth {
                    method: "GSSAPI".into(),
                });
            }
            9 => {
                return Err(UpstreamError::UnsupportedAuth {
                    method: "SSPI".into(),
                });
            }
            other => {
                return Err(UpstreamError::UnsupportedAuth {
                    method: format!("code {other}"),
                });
            }
        }
        Ok(Some(out))
    }
}

fn cstr(b: &mut bytes::Bytes) -> Result<String, UpstreamError> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| UpstreamError::Protocol("unterminated string".into()))?;
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    Ok(s)
}
