//! Postgres wire codec, protocol 3.0 (PostgreSQL docs, "Frontend/Backend
//! Protocol", "Message Formats"). Bytes <-> frames <-> messages.
//!
//! Knows nothing about authentication, sessions or policy. Every length is
//! checked against a named limit before anything is buffered, so a hostile
//! client cannot make the proxy allocate more than the limit. "Incomplete"
//! is never an error: the decoders return `Ok(None)` and the caller reads
//! more.
//!
//! Frames keep their exact bytes: the proxy forwards what the client sent,
//! byte for byte, and an approval is bound to those bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Longest startup packet accepted (PostgreSQL's own limit).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Default cap on one regular message (Query, Parse, Bind, CopyData...).
pub const DEFAULT_MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Cap on a password message: the agent's token travels in it.
pub const MAX_PASSWORD_MESSAGE: usize = 64 * 1024;

/// Protocol version 3.0, as sent in a StartupMessage.
pub const PROTOCOL_3_0: u32 = 196_608;
/// Request codes sent in place of a protocol version.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// Why bytes could not be decoded. Every variant means the connection can
/// no longer be trusted to be in step: the caller answers with an error
/// (SQLSTATE 08P01) and closes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("message '{tag}' declares {len} bytes, over the {max}-byte limit")]
    Oversized { tag: char, len: usize, max: usize },
    #[error("message '{tag}' declares an impossible length {len}")]
    BadLength { tag: char, len: i64 },
    #[error("startup packet of {len} bytes is outside 8..={MAX_STARTUP_PACKET}")]
    BadStartupLength { len: i64 },
    #[error("unsupported protocol version {major}.{minor} (only 3.0 is spoken)")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("unknown message type '{tag}' (0x{byte:02x})", byte = *tag as u32)]
    UnknownTag { tag: char },
    #[error("malformed '{tag}' message: {what}")]
    Malformed { tag: char, what: &'static str },
    #[error("'{tag}' message: {what} is not valid UTF-8")]
    InvalidUtf8 { tag: char, what: &'static str },
}

/// The first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeStartup {
    /// SSLRequest: the client asks for TLS.
    SslRequest,
    /// GSSENCRequest: the client asks for GSSAPI encryption (always refused).
    GssEncRequest,
    /// CancelRequest: cancel the query running on the session with this key.
    CancelRequest { process_id: i32, secret_key: i32 },
    /// StartupMessage for protocol 3.0 with its parameters, in order.
    Startup { params: Vec<(String, String)> },
}

/// Decodes the startup packet (it has no type byte). `Ok(None)`: read more.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<FeStartup>, CodecError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i64::from(i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
    if !(8..=MAX_STARTUP_PACKET as i64).contains(&len) {
        return Err(CodecError::BadStartupLength { len });
    }
    let len = len as usize;
    if buf.len() < len {
        buf.reserve(len - buf.len());
        return Ok(None);
    }
    let mut packet = buf.split_to(len).freeze();
    packet.advance(4);
    let code = packet.get_u32();
    let tag = '\0';
    match code {
        SSL_REQUEST_CODE if packet.is_empty() => Ok(Some(FeStartup::SslRequest)),
        GSSENC_REQUEST_CODE if packet.is_empty() => Ok(Some(FeStartup::GssEncRequest)),
        CANCEL_REQUEST_CODE if packet.len() == 8 => Ok(Some(FeStartup::CancelRequest {
            process_id: packet.get_i32(),
            secret_key: packet.get_i32(),
        })),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE | CANCEL_REQUEST_CODE => Err(CodecError::Malformed {
            tag,
            what: "request packet has the wrong length",
        }),
        PROTOCOL_3_0 => {
            let mut params = Vec::new();
            loop {
                let name = read_cstr(&mut packet, tag, "startup parameter name")?;
                if name.is_empty() {
                    break;
                }
                let value = read_cstr(&mut packet, tag, "startup parameter value")?;
                params.push((name, value));
            }
            if !packet.is_empty() {
                return Err(CodecError::Malformed {
                    tag,
                    what: "bytes after the startup parameters' terminator",
                });
            }
            Ok(Some(FeStartup::Startup { params }))
        }
        other => Err(CodecError::UnsupportedProtocol {
            major: (other >> 16) as u16,
            minor: (other & 0xffff) as u16,
        }),
    }
}

/// One regular message: its type byte and its body (without the length).
/// `Frame::encode` reproduces the exact bytes it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

impl Frame {
    pub fn new(tag: u8, body: impl Into<Bytes>) -> Frame {
        Frame {
            tag,
            body: body.into(),
        }
    }

    /// Bytes on the wire: tag, length, body.
    pub fn wire_len(&self) -> usize {
        5 + self.body.len()
    }

    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.wire_len());
        dst.put_u8(self.tag);
        dst.put_i32((self.body.len() + 4) as i32);
        dst.put_slice(&self.body);
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.wire_len());
        self.encode(&mut b);
        b.freeze()
    }
}

/// Limits for [`decode_frame`], per message type.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Any message but a password message.
    pub max_message: usize,
    /// A password message ('p'), which carries the token.
    pub max_password: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: DEFAULT_MAX_MESSAGE,
            max_password: MAX_PASSWORD_MESSAGE,
        }
    }
}

/// Splits one frame off `buf`. `Ok(None)`: read more. The declared length is
/// checked before waiting for the body, so an oversized message is refused
/// from its first five bytes.
pub fn decode_frame(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Frame>, CodecError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i64::from(i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]));
    if len < 4 {
        return Err(CodecError::BadLength {
            tag: tag as char,
            len,
        });
    }
    let body_len = (len - 4) as usize;
    let max = if tag == b'p' {
        limits.max_password
    } else {
        limits.max_message
    };
    if body_len > max {
        return Err(CodecError::Oversized {
            tag: tag as char,
            len: body_len,
            max,
        });
    }
    if buf.len() < 5 + body_len {
        buf.reserve(5 + body_len - buf.len());
        return Ok(None);
    }
    buf.advance(5);
    let body = buf.split_to(body_len).freeze();
    Ok(Some(Frame { tag, body }))
}

/// A message from the client, decoded from a [`Frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeMessage {
    /// 'Q': a simple-protocol query string (possibly several statements).
    Query { sql: String },
    /// 'P': prepare `query` as statement `name` ("" = unnamed).
    Parse {
        name: String,
        query: String,
        param_types: Vec<u32>,
    },
    /// 'B': bind parameters to a statement, creating a portal.
    Bind {
        portal: String,
        statement: String,
        param_formats: Vec<i16>,
        /// `None` is SQL NULL.
        params: Vec<Option<Bytes>>,
        result_formats: Vec<i16>,
    },
    /// 'D': describe a statement (`b'S'`) or portal (`b'P'`).
    Describe { kind: u8, name: String },
    /// 'E': run a portal; `max_rows` 0 = all.
    Execute { portal: String, max_rows: i32 },
    /// 'S'
    Sync,
    /// 'H'
    Flush,
    /// 'C': close a statement (`b'S'`) or portal (`b'P'`).
    Close { kind: u8, name: String },
    /// 'X'
    Terminate,
    /// 'd'
    CopyData(Bytes),
    /// 'c'
    CopyDone,
    /// 'f'
    CopyFail { message: String },
    /// 'p': a password, or a SASL response (the caller knows which it asked
    /// for). Never log its contents.
    Password(Bytes),
    /// 'F': the legacy function-call message. Kept opaque; the proxy refuses it.
    FunctionCall(Bytes),
}

impl FeMessage {
    /// Interprets a frame. Every field is bounds-checked; trailing bytes are
    /// an error, as in PostgreSQL.
    pub fn parse(frame: &Frame) -> Result<FeMessage, CodecError> {
        let tag = frame.tag as char;
        let mut b = frame.body.clone();
        let msg = match frame.tag {
            b'Q' => FeMessage::Query {
                sql: read_cstr(&mut b, tag, "query string")?,
            },
            b'P' => {
                let name = read_cstr(&mut b, tag, "statement name")?;
                let query = read_cstr(&mut b, tag, "query string")?;
                let n = read_count(&mut b, tag, "parameter type count")?;
                let mut param_types = Vec::with_capacity(n.min(b.remaining() / 4));
                for _ in 0..n {
                    param_types.push(read_u32(&mut b, tag, "parameter type")?);
                }
                FeMessage::Parse {
                    name,
                    query,
                    param_types,
                }
            }
            b'B' => {
                let portal = read_cstr(&mut b, tag, "portal name")?;
                let statement = read_cstr(&mut b, tag, "statement name")?;
                let param_formats = read_formats(&mut b, tag, "parameter format")?;
                let n = read_count(&mut b, tag, "parameter count")?;
                let mut params = Vec::with_capacity(n.min(b.remaining() / 4));
                for _ in 0..n {
                    let len = read_i32(&mut b, tag, "parameter length")?;
                    if len == -1 {
                        params.push(None);
                    } else if len < 0 || len as usize > b.remaining() {
                        return Err(CodecError::Malformed {
                            tag,
                            what: "parameter length outside the message",
                        });
                    } else {
                        params.push(Some(b.split_to(len as usize)));
                    }
                }
                let result_formats = read_formats(&mut b, tag, "result format")?;
                if !(param_formats.len() <= 1 || param_formats.len() == params.len()) {
                    return Err(CodecError::Malformed {
                        tag,
                        what: "parameter format count matches neither 0, 1 nor the parameter count",
                    });
                }
                FeMessage::Bind {
                    portal,
                    statement,
                    param_formats,
                    params,
                    result_formats,
                }
            }
            b'D' | b'C' => {
                let kind = read_u8(&mut b, tag, "target kind")?;
                if kind != b'S' && kind != b'P' {
                    return Err(CodecError::Malformed {
                        tag,
                        what: "target kind is neither 'S' nor 'P'",
                    });
                }
                let name = read_cstr(&mut b, tag, "target name")?;
                if frame.tag == b'D' {
                    FeMessage::Describe { kind, name }
                } else {
                    FeMessage::Close { kind, name }
                }
            }
            b'E' => FeMessage::Execute {
                portal: read_cstr(&mut b, tag, "portal name")?,
                max_rows: read_i32(&mut b, tag, "row limit")?,
            },
            b'S' => FeMessage::Sync,
            b'H' => FeMessage::Flush,
            b'X' => FeMessage::Terminate,
            b'c' => FeMessage::CopyDone,
            b'd' => {
                let data = b.clone();
                b.advance(b.remaining());
                FeMessage::CopyData(data)
            }
            b'f' => FeMessage::CopyFail {
                message: read_cstr(&mut b, tag, "error message")?,
            },
            b'p' => {
                let data = b.clone();
                b.advance(b.remaining());
                FeMessage::Password(data)
            }
            b'F' => {
                let data = b.clone();
                b.advance(b.remaining());
                FeMessage::FunctionCall(data)
            }
            _ => return Err(CodecError::UnknownTag { tag }),
        };
        if b.has_remaining() {
            return Err(CodecError::Malformed {
                tag,
                what: "bytes after the end of the message",
            });
        }
        Ok(msg)
    }

    /// The frame this message encodes to (the inverse of [`FeMessage::parse`]).
    pub fn to_frame(&self) -> Frame {
        let mut b = BytesMut::new();
        let tag = match self {
            FeMessage::Query { sql } => {
                put_cstr(&mut b, sql);
                b'Q'
            }
            FeMessage::Parse {
                name,
                query,
                param_types,
            } => {
                put_cstr(&mut b, name);
                put_cstr(&mut b, query);
                b.put_i16(param_types.len() as i16);
                for t in param_types {
                    b.put_u32(*t);
                }
                b'P'
            }
            FeMessage::Bind {
                portal,
                statement,
                param_formats,
                params,
                result_formats,
            } => {
                put_cstr(&mut b, portal);
                put_cstr(&mut b, statement);
                b.put_i16(param_formats.len() as i16);
                for f in param_formats {
                    b.put_i16(*f);
                }
                b.put_i16(params.len() as i16);
                for p in params {
                    match p {
                        None => b.put_i32(-1),
                        Some(v) => {
                            b.put_i32(v.len() as i32);
                            b.put_slice(v);
                        }
                    }
                }
                b.put_i16(result_formats.len() as i16);
                for f in result_formats {
                    b.put_i16(*f);
                }
                b'B'
            }
            FeMessage::Describe { kind, name } => {
                b.put_u8(*kind);
                put_cstr(&mut b, name);
                b'D'
            }
            FeMessage::Close { kind, name } => {
                b.put_u8(*kind);
                put_cstr(&mut b, name);
                b'C'
            }
            FeMessage::Execute { portal, max_rows } => {
                put_cstr(&mut b, portal);
                b.put_i32(*max_rows);
                b'E'
            }
            FeMessage::Sync => b'S',
            FeMessage::Flush => b'H',
            FeMessage::Terminate => b'X',
            FeMessage::CopyDone => b'c',
            FeMessage::CopyData(d) => {
                b.put_slice(d);
                b'd'
            }
            FeMessage::CopyFail { message } => {
                put_cstr(&mut b, message);
                b'f'
            }
            FeMessage::Password(d) => {
                b.put_slice(d);
                b'p'
            }
            FeMessage::FunctionCall(d) => {
                b.put_slice(d);
                b'F'
            }
        };
        Frame {
            tag,
            body: b.freeze(),
        }
    }
}

/// Transaction status in ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }

    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }
}

/// Severity of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Notice,
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
            Severity::Warning => "WARNING",
        }
    }
}

/// The fields the proxy sets in errors and notices it writes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// SQLSTATE, five characters.
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// A message the proxy itself writes to a client. Messages from the
/// upstream are forwarded as frames, not re-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeMessage<'a> {
    AuthenticationOk,
    AuthenticationCleartextPassword,
    ParameterStatus { name: &'a str, value: &'a str },
    BackendKeyData { process_id: i32, secret_key: i32 },
    ReadyForQuery(TxStatus),
    ErrorResponse(&'a Diagnostic),
    NoticeResponse(&'a Diagnostic),
    CommandComplete { tag: &'a str },
    EmptyQueryResponse,
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
}

impl BeMessage<'_> {
    pub fn encode(&self, dst: &mut BytesMut) {
        let start = dst.len();
        let tag = match self {
            BeMessage::AuthenticationOk | BeMessage::AuthenticationCleartextPassword => b'R',
            BeMessage::ParameterStatus { .. } => b'S',
            BeMessage::BackendKeyData { .. } => b'K',
            BeMessage::ReadyForQuery(_) => b'Z',
            BeMessage::ErrorResponse(_) => b'E',
            BeMessage::NoticeResponse(_) => b'N',
            BeMessage::CommandComplete { .. } => b'C',
            BeMessage::EmptyQueryResponse => b'I',
            BeMessage::ParseComplete => b'1',
            BeMessage::BindComplete => b'2',
            BeMessage::CloseComplete => b'3',
            BeMessage::NoData => b'n',
        };
        dst.put_u8(tag);
        dst.put_i32(0); // length, patched below
        match self {
            BeMessage::AuthenticationOk => dst.put_i32(0),
            BeMessage::AuthenticationCleartextPassword => dst.put_i32(3),
            BeMessage::ParameterStatus { name, value } => {
                put_cstr(dst, name);
                put_cstr(dst, value);
            }
            BeMessage::BackendKeyData {
                process_id,
                secret_key,
            } => {
                dst.put_i32(*process_id);
                dst.put_i32(*secret_key);
            }
            BeMessage::ReadyForQuery(status) => dst.put_u8(status.byte()),
            BeMessage::ErrorResponse(d) | BeMessage::NoticeResponse(d) => {
                let severity = d.severity.as_str();
                put_field(dst, b'S', severity);
                put_field(dst, b'V', severity);
                put_field(dst, b'C', d.code);
                put_field(dst, b'M', &d.message);
                if let Some(detail) = &d.detail {
                    put_field(dst, b'D', detail);
                }
                if let Some(hint) = &d.hint {
                    put_field(dst, b'H', hint);
                }
                dst.put_u8(0);
            }
            BeMessage::CommandComplete { tag } => put_cstr(dst, tag),
            BeMessage::EmptyQueryResponse
            | BeMessage::ParseComplete
            | BeMessage::BindComplete
            | BeMessage::CloseComplete
            | BeMessage::NoData => {}
        }
        let len = (dst.len() - start - 1) as i32;
        dst[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    }
}

/// Fields of an ErrorResponse or NoticeResponse from the upstream, by code.
pub fn parse_diagnostic_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let Some(end) = tail.iter().position(|&c| c == 0) else {
            break;
        };
        out.push((code, String::from_utf8_lossy(&tail[..end]).into_owned()));
        rest = &tail[end + 1..];
    }
    out
}

fn put_cstr(dst: &mut BytesMut, s: &str) {
    // A NUL inside would end the string early on the wire; it cannot come
    // from a parsed message, and text the proxy writes never has one.
    dst.put_slice(s.replace('\0', "").as_bytes());
    dst.put_u8(0);
}

fn put_field(dst: &mut BytesMut, code: u8, value: &str) {
    dst.put_u8(code);
    put_cstr(dst, value);
}

fn read_cstr(b: &mut Bytes, tag: char, what: &'static str) -> Result<String, CodecError> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or(CodecError::Malformed { tag, what })?;
    let s = b.split_to(end);
    b.advance(1);
    String::from_utf8(s.to_vec()).map_err(|_| CodecError::InvalidUtf8 { tag, what })
}

fn read_u8(b: &mut Bytes, tag: char, what: &'static str) -> Result<u8, CodecError> {
    if b.remaining() < 1 {
        return Err(CodecError::Malformed { tag, what });
    }
    Ok(b.get_u8())
}

fn read_i32(b: &mut Bytes, tag: char, what: &'static str) -> Result<i32, CodecError> {
    if b.remaining() < 4 {
        return Err(CodecError::Malformed { tag, what });
    }
    Ok(b.get_i32())
}

fn read_u32(b: &mut Bytes, tag: char, what: &'static str) -> Result<u32, CodecError> {
    if b.remaining() < 4 {
        return Err(CodecError::Malformed { tag, what });
    }
    Ok(b.get_u32())
}

fn read_count(b: &mut Bytes, tag: char, what: &'static str) -> Result<usize, CodecError> {
    if b.remaining() < 2 {
        return Err(CodecError::Malformed { tag, what });
    }
    let n = b.get_i16();
    if n < 0 {
        return Err(CodecError::Malformed { tag, what });
    }
    Ok(n as usize)
}

fn read_formats(b: &mut Bytes, tag: char, what: &'static str) -> Result<Vec<i16>, CodecError> {
    let n = read_count(b, tag, what)?;
    if b.remaining() < n * 2 {
        return Err(CodecError::Malformed { tag, what });
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let f = b.get_i16();
        if f != 0 && f != 1 {
            return Err(CodecError::Malformed {
                tag,
                what: "format code is neither 0 (text) nor 1 (binary)",
            });
        }
        out.push(f);
    }
    Ok(out)
}

/// Reading a frame off a byte stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("connection closed in the middle of a message")]
    UnexpectedEof,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads startup packets and frames from any byte stream, buffering only up
/// to the limits. Cancel safe: a dropped `read_*` future loses nothing, the
/// bytes stay in the buffer for the next call.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    limits: Limits,
}

impl<R: tokio::io::AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, limits: Limits) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
            limits,
        }
    }

    /// The first packet. `Ok(None)`: the peer closed before sending anything.
    pub async fn read_startup(&mut self) -> Result<Option<FeStartup>, ReadError> {
        loop {
            if let Some(s) = decode_startup(&mut self.buf)? {
                return Ok(Some(s));
            }
            if !self.fill().await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::UnexpectedEof)
                };
            }
        }
    }

    /// The next frame. `Ok(None)`: the peer closed cleanly between messages.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(f) = decode_frame(&mut self.buf, &self.limits)? {
                return Ok(Some(f));
            }
            if !self.fill().await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::UnexpectedEof)
                };
            }
        }
    }

    /// Whether a complete frame is already buffered (the client pipelined).
    pub fn has_buffered_frame(&self) -> bool {
        self.buf.len() >= 5 && {
            let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
            len >= 4 && self.buf.len() > len as usize
        }
    }

    /// Reads more bytes into the buffer without taking a frame; false when
    /// the peer has closed. Used to notice a client leaving while its
    /// statement is held. Cancel safe.
    pub async fn fill_more(&mut self) -> Result<bool, ReadError> {
        self.fill().await
    }

    /// Bytes buffered and not yet taken as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    async fn fill(&mut self) -> Result<bool, ReadError> {
        use tokio::io::AsyncReadExt;
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8 * 1024);
        }
        Ok(self.inner.read_buf(&mut self.buf).await? > 0)
    }

    /// Puts bytes read past a boundary (a login's pipelined first query)
    /// in front of whatever is buffered.
    pub fn prepend(&mut self, mut buf: BytesMut) {
        buf.extend_from_slice(&self.buf);
        self.buf = buf;
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The stream and whatever was read past the last frame (for a TLS
    /// upgrade, which must start on a clean boundary).
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }
}

#[cfg(test)]
mod tests;
