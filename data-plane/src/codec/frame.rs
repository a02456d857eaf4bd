//! Frames: the startup packet (no type byte) and tagged messages, cut from
//! a byte stream within the limits, with their exact bytes kept.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::wire::*;
use super::*;

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
