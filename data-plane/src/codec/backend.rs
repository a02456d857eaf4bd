//! Messages the proxy itself writes to a client (`Be*`), and reading the
//! fields of PostgreSQL's own errors.

use bytes::{BufMut, BytesMut};

use super::wire::*;

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
/// One field of a parsed ErrorResponse or NoticeResponse (`C` the
/// SQLSTATE, `M` the message, ...); empty when it has none.
pub fn diagnostic_field(fields: &[(u8, String)], code: u8) -> String {
    fields
        .iter()
        .find(|(k, _)| *k == code)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

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
