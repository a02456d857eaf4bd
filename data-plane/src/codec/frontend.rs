//! Messages from the client (`Fe*`), parsed from frames.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::wire::*;
use super::*;

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
                b.put_u16(count(param_types.len()));
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
                b.put_u16(count(param_formats.len()));
                for f in param_formats {
                    b.put_i16(*f);
                }
                b.put_u16(count(params.len()));
                for p in params {
                    match p {
                        None => b.put_i32(-1),
                        Some(v) => {
                            b.put_i32(v.len() as i32);
                            b.put_slice(v);
                        }
                    }
                }
                b.put_u16(count(result_formats.len()));
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
