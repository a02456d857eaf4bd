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

mod backend;
mod frame;
mod frontend;
mod wire;

pub use backend::{BeMessage, Diagnostic, Severity, TxStatus, diagnostic_field, parse_diagnostic_fields};
pub use frame::{FeStartup, Frame, FrameReader, Limits, ReadError, decode_frame, decode_startup};
pub use frontend::FeMessage;

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

#[cfg(test)]
mod tests;
