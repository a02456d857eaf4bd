//! The PostgreSQL client under every tool call: one connection to
//! `airlock-proxy` (never to the database), logged in with the agent's own
//! token as the password, and one statement at a time in the extended
//! protocol with text parameters and text results, so any column type
//! renders without a decoder of its own.
//!
//! What it owns: TLS to the proxy (the token is never sent in plain text
//! except to a loopback address), the caps (rows and bytes kept, one
//! message's size), and telling the caller
//! as soon as the proxy says it is holding the statement. What it does not:
//! judging anything (the proxy does) or deciding what a hold means to an
//! MCP client (`session`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::IsNull;
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest backend message read whole, but a row: a larger one (an
/// error quoting a huge value, say) is read past and dropped, never
/// buffered.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// The longest error or notice field kept (message, detail, hint).
const MAX_FIELD_CHARS: usize = 8 * 1024;
/// How long connecting and logging in may take.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(20);
/// PostgreSQL keeps 63 bytes of `application_name`.
const APPLICATION_NAME_BYTES: usize = 63;
/// The start of the proxy's hold notice (`error_response::held`).
const HOLD_NOTICE: &str = "Airlock is holding this statement for approval: request ";

/// Where the proxy is and how to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`.
    pub addr: String,
    /// The name the proxy's certificate must carry.
    pub server_name: ServerName<'static>,
    pub tls: Arc<rustls::ClientConfig>,
    /// The proxy is on a loopback address.
    pub loopback: bool,
    /// A proxy that does not speak TLS may be given the token in plain
    /// text: only on loopback, and only when asked for (development).
    pub plaintext_ok: bool,
}

impl Target {
    /// `host:port` with the trust roots in `ca` (PEM), or the system's.
    pub fn new(host: &str, port: u16, ca: Option<&[u8]>) -> Result<Target, String> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(pem) => {
                let mut reader = std::io::BufReader::new(pem);
                let certs: Vec<_> = rustls::pki_types::pem::PemObject::pem_reader_iter(&mut reader)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("the proxy's CA file: {e}"))?;
                if certs.is_empty() {
                    return Err("the proxy's CA file holds no certificate".into());
                }
                for c in certs {
                    roots.add(c).map_err(|e| format!("the proxy's CA file: {e}"))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
            }
        }
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS versions: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = host.parse::<IpAddr>().ok();
        let server_name = match ip {
            Some(ip) => ServerName::IpAddress(ip.into()),
            None => {
                ServerName::try_from(host.to_owned()).map_err(|_| format!("{host} is not a host name"))?
            }
        };
        let loopback = ip.map(|i| i.is_loopback()).unwrap_or(host == "localhost");
        let addr = match ip {
            Some(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        Ok(Target {
            addr,
            server_name,
            tls: Arc::new(tls),
            loopback,
            plaintext_ok: false,
        })
    }
}

/// An error or notice as PostgreSQL (or the proxy) sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DbError {
    pub severity: String,
    pub sqlstate: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Raised by PostgreSQL (it names its source file and routine), not
    /// by the proxy.
    #[serde(skip)]
    pub from_server: bool,
}

impl DbError {
    fn from_fields(mut fields: ErrorFields<'_>) -> DbError {
        let mut e = DbError::default();
        while let Ok(Some(f)) = fields.next() {
            let mut v = String::from_utf8_lossy(f.value_bytes()).into_owned();
            if v.len() > MAX_FIELD_CHARS {
                let mut cut = MAX_FIELD_CHARS;
                while !v.is_char_boundary(cut) {
                    cut -= 1;
                }
                v.truncate(cut);
                v.push_str("... (cut)");
            }
            match f.type_() {
                b'S' => e.severity = v,
                b'C' => e.sqlstate = v,
                b'M' => e.message = v,
                b'D' => e.detail = Some(v),
                b'H' => e.hint = Some(v),
                // Where in PostgreSQL's source it was raised: only the
                // server sends these, never the proxy.
                b'F' | b'L' | b'R' => e.from_server = true,
                _ => {}
            }
        }
        e
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.sqlstate, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// The connection is unusable after one of these.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot reach the Airlock proxy at {addr}: {source}")]
    Unreachable { addr: String, source: std::io::Error },
    #[error("the Airlock proxy at {0} did not answer in time")]
    Timeout(String),
    #[error(
        "the Airlock proxy at {0} does not speak TLS; the token is sent in plain text only to a loopback address, with --allow-plaintext-loopback"
    )]
    NoTls(String),
    #[error("TLS with the Airlock proxy: {0}")]
    Tls(std::io::Error),
    #[error("the Airlock proxy refused the login: {0}")]
    LoginRefused(DbError),
    #[error(
        "the Airlock proxy asked for an authentication this client does not offer (only the token as password)"
    )]
    Authentication,
    #[error("the connection to the Airlock proxy broke: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection to the Airlock proxy closed{0}")]
    Closed(String),
    #[error("the Airlock proxy sent an unexpected message of {0} bytes")]
    MessageTooLarge(usize),
    #[error("unexpected protocol message from the Airlock proxy: {0}")]
    Protocol(String),
}

/// How much of an answer to keep.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_rows: usize,
    pub max_bytes: usize,
}

/// A column of an answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Column {
    pub name: String,
    /// The PostgreSQL type OID.
    pub type_oid: u32,
}

/// What a statement returned, within the caps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub columns: Vec<Column>,
    /// Text values, NULL as `None`.
    pub rows: Vec<Vec<Option<String>>>,
    /// The command tag (`SELECT 3`, `DELETE 1`).
    pub command: Option<String>,
    /// Rows were left out: `"rows"` (over `max_rows`) or `"bytes"`.
    pub truncated: Option<&'static str>,
    /// Notices other than the hold's, the first few.
    pub notices: Vec<String>,
    /// The error that ended the statement, if any.
    pub error: Option<DbError>,
    /// The session's transaction state after it: `I` idle, `T` in a
    /// transaction, `E` in a failed one.
    pub transaction: u8,
}

/// What the proxy said when it held the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub request_id: String,
    /// The notice whole: the rule, how long it waits, where to review.
    pub notice: String,
    pub review_url: Option<String>,
}

impl Hold {
    /// The hold a notice's text names, or `None`. Only the proxy's own
    /// notice is taken for a hold (see `Conn::run`): one raised by a
    /// database function with the same words stays an ordinary notice.
    pub fn from_notice(message: &str) -> Option<Hold> {
        let rest = message.strip_prefix(HOLD_NOTICE)?;
        let id: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        if id.is_empty() || id.len() > 64 {
            return None;
        }
        let review_url = message
            .split(" Review it at ")
            .nth(1)
            .map(|u| u.trim_end_matches('.').to_owned())
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"));
        Some(Hold {
            request_id: id,
            notice: message.to_owned(),
            review_url,
        })
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One logged-in session through the proxy.
pub struct Conn {
    io: Box<dyn Io>,
    buf: BytesMut,
    out: BytesMut,
    /// The proxy's cancel key for this session (BackendKeyData).
    key: Option<(i32, i32)>,
    /// Rows larger than this are read past, not buffered (the byte cap).
    row_limit: usize,
}

/// What [`Conn::next`] read.
enum Incoming {
    Message(Message),
    /// A message too large to keep, read past: its tag and length.
    Skipped(u8, usize),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

/// `application_name` for the proxy's session record: what the MCP client
/// calls itself, printable ASCII, cut to what PostgreSQL keeps.
pub fn application_name(client: Option<(&str, &str)>) -> String {
    let raw = match client {
        Some((name, version)) if !name.is_empty() => format!("airlock-mcp: {name}/{version}"),
        _ => "airlock-mcp".to_owned(),
    };
    let mut clean: String = raw
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    while clean.len() > APPLICATION_NAME_BYTES {
        clean.pop();
    }
    clean
}

impl Conn {
    /// Connects to the proxy, TLS first, and logs in to `database` (the
    /// connection's name) with `token` as the password.
    pub async fn connect(
        target: &Target,
        database: &str,
        application_name: &str,
        token: &str,
    ) -> Result<Conn, WireError> {
        tokio::time::timeout(
            LOGIN_TIMEOUT,
            Self::login(target, database, application_name, token),
        )
        .await
        .map_err(|_| WireError::Timeout(target.addr.clone()))?
    }

    async fn login(
        target: &Target,
        database: &str,
        application_name: &str,
        token: &str,
    ) -> Result<Conn, WireError> {
        let mut tcp = TcpStream::connect(&target.addr)
            .await
            .map_err(|source| WireError::Unreachable {
                addr: target.addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let mut out = BytesMut::new();
        frontend::ssl_request(&mut out);
        tcp.write_all(&out).await?;
        out.clear();
        let answer = tcp.read_u8().await?;
        let io: Box<dyn Io> = match answer {
            b'S' => {
                let connector = tokio_rustls::TlsConnector::from(target.tls.clone());
                let tls = connector
                    .connect(target.server_name.clone(), tcp)
                    .await
                    .map_err(WireError::Tls)?;
                Box::new(tls)
            }
            b'N' if target.loopback && target.plaintext_ok => Box::new(tcp),
            b'N' => return Err(WireError::NoTls(target.addr.clone())),
            other => {
                return Err(WireError::Protocol(format!(
                    "answer {other:#x} to the TLS request"
                )));
            }
        };
        let mut conn = Conn {
            io,
            buf: BytesMut::with_capacity(8192),
            out,
            key: None,
            row_limit: MAX_MESSAGE_BYTES,
        };
        let params = [
            ("user", "airlock-mcp"),
            ("database", database),
            ("application_name", application_name),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params, &mut conn.out)?;
        conn.flush().await?;
        loop {
            let Incoming::Message(m) = conn.next().await? else {
                return Err(WireError::Protocol("an oversized message during login".into()));
            };
            match m {
                Message::BackendKeyData(k) => conn.key = Some((k.process_id(), k.secret_key())),
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(token.as_bytes(), &mut conn.out)?;
                    conn.flush().await?;
                }
                Message::AuthenticationOk | Message::ParameterStatus(_) => {}
                Message::NoticeResponse(_) => {}
                Message::ErrorResponse(e) => {
                    return Err(WireError::LoginRefused(DbError::from_fields(e.fields())));
                }
                Message::ReadyForQuery(_) => return Ok(conn),
                Message::AuthenticationMd5Password(_)
                | Message::AuthenticationSasl(_)
                | Message::AuthenticationGss
                | Message::AuthenticationSspi
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential => return Err(WireError::Authentication),
                other => return Err(WireError::Protocol(name(&other).into())),
            }
        }
    }

    /// Runs one statement: Parse, Bind (text parameters, text results),
    /// Describe, Execute, Sync; keeps what fits in `caps`. `held`
    /// is called once, when the proxy says it is holding the statement;
    /// the answer comes when the statement ends (ran, refused, denied).
    pub async fn run(
        &mut self,
        sql: &str,
        params: &[Option<String>],
        caps: Caps,
        mut held: impl FnMut(Hold),
    ) -> Result<Answer, WireError> {
        frontend::parse("", sql, std::iter::empty(), &mut self.out)?;
        let bound = frontend::bind(
            "",
            "",
            std::iter::once(0i16),
            params.iter(),
            |p, buf| match p {
                Some(text) => {
                    buf.extend_from_slice(text.as_bytes());
                    Ok(IsNull::No)
                }
                None => Ok(IsNull::Yes),
            },
            std::iter::once(0i16),
            &mut self.out,
        );
        if let Err(e) = bound {
            self.out.clear();
            return Err(WireError::Protocol(match e {
                frontend::BindError::Conversion(e) => e.to_string(),
                frontend::BindError::Serialization(e) => e.to_string(),
            }));
        }
        frontend::describe(b'P', "", &mut self.out)?;
        // No row limit on Execute: an approved write runs under row bounds
        // the proxy checks only on a statement run to its end, and a
        // limited Execute of it is refused. Rows past the caps are read
        // and dropped.
        frontend::execute("", 0, &mut self.out)?;
        frontend::sync(&mut self.out);
        self.flush().await?;

        let mut answer = Answer::default();
        let mut bytes = 0usize;
        let mut held_once = false;
        let mut results = false;
        // A row over the byte cap cannot be kept: read past it.
        self.row_limit = caps.max_bytes.saturating_add(64);
        loop {
            let message = match self.next().await? {
                Incoming::Message(m) => m,
                Incoming::Skipped(b'D', _) => {
                    answer.truncated.get_or_insert("bytes");
                    continue;
                }
                Incoming::Skipped(b'E', len) => {
                    answer.error = Some(DbError {
                        severity: "ERROR".into(),
                        message: format!(
                            "PostgreSQL answered with an error of {len} bytes, too large to show"
                        ),
                        ..DbError::default()
                    });
                    continue;
                }
                Incoming::Skipped(b'N', _) => continue,
                Incoming::Skipped(_, len) => return Err(WireError::MessageTooLarge(len)),
            };
            match message {
                Message::ParseComplete | Message::BindComplete | Message::NoData => {}
                Message::ParameterStatus(_) | Message::NotificationResponse(_) => {}
                Message::RowDescription(d) => {
                    results = true;
                    let mut fields = d.fields();
                    while let Some(f) = fields.next().map_err(|e| WireError::Protocol(e.to_string()))? {
                        answer.columns.push(Column {
                            name: f.name().to_owned(),
                            type_oid: f.type_oid(),
                        });
                    }
                }
                Message::DataRow(row) => {
                    results = true;
                    if answer.truncated.is_some() {
                        continue;
                    }
                    if answer.rows.len() >= caps.max_rows {
                        answer.truncated = Some("rows");
                        continue;
                    }
                    let size = row.buffer().len();
                    if bytes + size > caps.max_bytes {
                        answer.truncated = Some("bytes");
                        continue;
                    }
                    bytes += size;
                    let mut values = Vec::with_capacity(answer.columns.len());
                    let mut ranges = row.ranges();
                    while let Some(r) = ranges.next().map_err(|e| WireError::Protocol(e.to_string()))? {
                        values.push(r.map(|r| String::from_utf8_lossy(&row.buffer()[r]).into_owned()));
                    }
                    answer.rows.push(values);
                }
                Message::PortalSuspended => {
                    answer.truncated.get_or_insert("rows");
                }
                Message::CommandComplete(c) => {
                    results = true;
                    answer.command = Some(
                        c.tag()
                            .map_err(|e| WireError::Protocol(e.to_string()))?
                            .to_owned(),
                    );
                }
                Message::EmptyQueryResponse => answer.command = Some(String::new()),
                Message::NoticeResponse(n) => {
                    let notice = DbError::from_fields(n.fields());
                    // The proxy's hold notice: its own (no source location,
                    // SQLSTATE 00000), before any result. A function raising
                    // the same words is an ordinary notice.
                    let proxys = !notice.from_server && notice.sqlstate == "00000" && !results;
                    match Hold::from_notice(&notice.message).filter(|_| proxys) {
                        Some(hold) if !held_once => {
                            held_once = true;
                            held(hold);
                        }
                        _ if answer.notices.len() < 10 => answer.notices.push(notice.message),
                        _ => {}
                    }
                }
                Message::ErrorResponse(e) => answer.error = Some(DbError::from_fields(e.fields())),
                Message::ReadyForQuery(r) => {
                    answer.transaction = r.status();
                    if self.buf.capacity() > 1 << 20 && self.buf.is_empty() {
                        self.buf = BytesMut::with_capacity(8192);
                    }
                    return Ok(answer);
                }
                other => return Err(WireError::Protocol(name(&other).into())),
            }
        }
    }

    async fn flush(&mut self) -> Result<(), WireError> {
        self.io.write_all(&self.out).await?;
        self.io.flush().await?;
        self.out.clear();
        Ok(())
    }

    /// Asks the proxy to cancel what this session is running (a held
    /// statement is cancelled there, nothing of it run), on a connection
    /// of its own.
    pub async fn cancel(target: &Target, key: (i32, i32)) -> Result<(), WireError> {
        let mut tcp = TcpStream::connect(&target.addr)
            .await
            .map_err(|source| WireError::Unreachable {
                addr: target.addr.clone(),
                source,
            })?;
        let mut out = BytesMut::new();
        frontend::ssl_request(&mut out);
        tcp.write_all(&out).await?;
        out.clear();
        frontend::cancel_request(key.0, key.1, &mut out);
        match tcp.read_u8().await? {
            b'S' => {
                let connector = tokio_rustls::TlsConnector::from(target.tls.clone());
                let mut tls = connector
                    .connect(target.server_name.clone(), tcp)
                    .await
                    .map_err(WireError::Tls)?;
                tls.write_all(&out).await?;
                tls.flush().await?;
            }
            b'N' if target.loopback && target.plaintext_ok => tcp.write_all(&out).await?,
            b'N' => return Err(WireError::NoTls(target.addr.clone())),
            other => {
                return Err(WireError::Protocol(format!(
                    "answer {other:#x} to the TLS request"
                )));
            }
        }
        Ok(())
    }

    /// The proxy's cancel key for this session.
    pub fn key(&self) -> Option<(i32, i32)> {
        self.key
    }

    /// The next backend message, reading as needed. A message over its
    /// limit (a row over the byte cap, anything else over
    /// [`MAX_MESSAGE_BYTES`]) is read past without being kept.
    async fn next(&mut self) -> Result<Incoming, WireError> {
        loop {
            if self.buf.len() >= 5 {
                let tag = self.buf[0];
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                let limit = if tag == b'D' {
                    self.row_limit
                } else {
                    MAX_MESSAGE_BYTES
                };
                if len > limit {
                    self.skip(1 + len).await?;
                    return Ok(Incoming::Skipped(tag, len));
                }
            }
            if let Some(m) = Message::parse(&mut self.buf)? {
                return Ok(Incoming::Message(m));
            }
            self.buf.reserve(8192);
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                let why = if self.buf.has_remaining() {
                    " in the middle of a message"
                } else {
                    ""
                };
                return Err(WireError::Closed(why.into()));
            }
        }
    }
}

impl Conn {
    /// Reads past `total` bytes (a whole message, tag included) without
    /// keeping them.
    async fn skip(&mut self, total: usize) -> Result<(), WireError> {
        let from_buf = total.min(self.buf.len());
        self.buf.advance(from_buf);
        let mut left = total - from_buf;
        let mut scratch = vec![0u8; 64 * 1024];
        while left > 0 {
            let want = left.min(scratch.len());
            let n = self.io.read(&mut scratch[..want]).await?;
            if n == 0 {
                return Err(WireError::Closed(" in the middle of a message".into()));
            }
            left -= n;
        }
        Ok(())
    }
}

fn name(m: &Message) -> &'static str {
    match m {
        Message::AuthenticationOk => "AuthenticationOk",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CommandComplete(_) => "CommandComplete",
        Message::DataRow(_) => "DataRow",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        Message::AuthenticationSaslContinue(_) | Message::AuthenticationSaslFinal(_) => "a SASL message",
        Message::AuthenticationGssContinue(_) => "a GSS message",
        _ => "another message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxys_hold_notice_names_the_request_and_where_to_review_it() {
        let n = "Airlock is holding this statement for approval: request 01JABCDEF (rule 2: DELETE needs approval). \
                 Waiting up to 300s for a reviewer. Review it at https://review.example/requests/01JABCDEF.";
        let h = Hold::from_notice(n).expect("a hold");
        assert_eq!(h.request_id, "01JABCDEF");
        assert_eq!(
            h.review_url.as_deref(),
            Some("https://review.example/requests/01JABCDEF")
        );
        assert_eq!(h.notice, n);
        let without = "Airlock is holding this statement for approval: request r1 (x). Waiting up to 5s for a reviewer.";
        assert_eq!(
            Hold::from_notice(without).map(|h| (h.request_id, h.review_url)),
            Some(("r1".into(), None))
        );
    }

    #[test]
    fn other_notices_are_not_holds() {
        for n in [
            "relation \"x\" already exists, skipping",
            "Airlock is holding this statement for approval: request ",
            "airlock is holding this statement for approval: request r1",
            "Airlock is holding this statement for approval: request (x)",
        ] {
            assert_eq!(Hold::from_notice(n), None, "{n}");
        }
        let javascript =
            "Airlock is holding this statement for approval: request r1. Review it at javascript:alert(1).";
        assert_eq!(Hold::from_notice(javascript).and_then(|h| h.review_url), None);
    }

    #[test]
    fn application_name_is_printable_and_short() {
        assert_eq!(application_name(None), "airlock-mcp");
        assert_eq!(
            application_name(Some(("claude-code", "1.2.3"))),
            "airlock-mcp: claude-code/1.2.3"
        );
        let odd = application_name(Some(("a\u{1b}[31mb\u{202e}", "1")));
        assert!(odd.chars().all(|c| (' '..='~').contains(&c)), "{odd}");
        let long = application_name(Some((&"x".repeat(200), "1")));
        assert_eq!(long.len(), 63);
        assert!(long.starts_with("airlock-mcp: "));
    }

    #[test]
    fn a_target_knows_loopback_and_names() {
        let t = Target::new("127.0.0.1", 6432, None).unwrap();
        assert!(t.loopback);
        assert_eq!(t.addr, "127.0.0.1:6432");
        let t = Target::new("proxy.example", 6432, None).unwrap();
        assert!(!t.loopback);
        let t = Target::new("[::1]", 6432, None).unwrap();
        assert!(t.loopback);
        assert_eq!(t.addr, "[::1]:6432");
        assert!(Target::new("proxy.example", 1, Some(b"not a certificate")).is_err());
    }
}
