//! Reading and writing the protocol's primitive fields (C strings, integers,
//! counts, format codes), each checked against what is left of a message.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::CodecError;

pub(super) fn put_cstr(dst: &mut BytesMut, s: &str) {
    // A NUL inside would end the string early on the wire; it cannot come
    // from a parsed message, and text the proxy writes never has one.
    dst.put_slice(s.replace('\0', "").as_bytes());
    dst.put_u8(0);
}

pub(super) fn put_field(dst: &mut BytesMut, code: u8, value: &str) {
    dst.put_u8(code);
    put_cstr(dst, value);
}

pub(super) fn read_cstr(b: &mut Bytes, tag: char, what: &'static str) -> Result<String, CodecError> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or(CodecError::Malformed { tag, what })?;
    let s = b.split_to(end);
    b.advance(1);
    String::from_utf8(s.to_vec()).map_err(|_| CodecError::InvalidUtf8 { tag, what })
}

pub(super) fn read_u8(b: &mut Bytes, tag: char, what: &'static str) -> Result<u8, CodecError> {
    if b.remaining() < 1 {
        return Err(CodecError::Malformed { tag, what });
    }
    Ok(b.get_u8())
}

pub(super) fn read_i32(b: &mut Bytes, tag: char, what: &'static str) -> Result<i32, CodecError> {
    if b.remaining() < 4 {
        return Err(CodecError::Malformed { tag, what });
    }
    Ok(b.get_i32())
}

pub(super) fn read_u32(b: &mut Bytes, tag: char, what: &'static str) -> Result<u32, CodecError> {
    if b.remaining() < 4 {
        return Err(CodecError::Malformed { tag, what });
    }
    Ok(b.get_u32())
}

pub(super) fn read_count(b: &mut Bytes, tag: char, what: &'static str) -> Result<usize, CodecError> {
    if b.remaining() < 2 {
        return Err(CodecError::Malformed { tag, what });
    }
    // Unsigned, as PostgreSQL reads it: up to 65535 parameters.
    Ok(usize::from(b.get_u16()))
}

pub(super) fn read_formats(b: &mut Bytes, tag: char, what: &'static str) -> Result<Vec<i16>, CodecError> {
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

/// A count as the protocol writes it: unsigned, 16 bits. The messages the
/// proxy writes are ones it decoded (or its own, far smaller), so their
/// counts fit.
pub(super) fn count(n: usize) -> u16 {
    debug_assert!(
        n <= usize::from(u16::MAX),
        "a count of {n} does not fit the protocol"
    );
    u16::try_from(n).unwrap_or(u16::MAX)
}
