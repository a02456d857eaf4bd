//! Statements of the proxy's own on a connection of its own (catalog
//! facts, impact estimates, dry runs): sent, and their answers read, up to
//! PostgreSQL's ReadyForQuery.

use bytes::{Buf, BytesMut};
use postgres_protocol::IsNull;
use postgres_protocol::message::frontend;

use super::Upstream;
use crate::codec::{diagnostic_field, parse_diagnostic_fields};
use airlock_eventlog::proto;

pub type Row = Vec<Option<String>>;

/// Runs SQL of the proxy's own over the simple protocol: the rows of its
/// last statement, as text; an error is `Err`.
pub async fn simple(up: &mut Upstream, sql: &str) -> Result<Vec<Row>, String> {
    let answer = simple_answer(up, sql).await?;
    match answer.error {
        Some((_, message)) => Err(message),
        None => Ok(answer.rows),
    }
}

/// Runs SQL of the proxy's own over the simple protocol: the whole answer.
/// `Err` only when the connection fails.
pub async fn simple_answer(up: &mut Upstream, sql: &str) -> Result<Answer, String> {
    let mut buf = BytesMut::new();
    frontend::query(sql, &mut buf).map_err(|e| e.to_string())?;
    up.send(&buf).await.map_err(|e| e.to_string())?;
    answer(up, true).await
}

/// What PostgreSQL answered, up to its ReadyForQuery.
#[derive(Debug, Default)]
pub struct Answer {
    pub rows: Vec<Row>,
    pub tags: Vec<String>,
    /// SQLSTATE and message.
    pub error: Option<(String, String)>,
}

/// `keep_rows`: false reads rows and drops them (a dry run's RETURNING
/// rows are never held in memory).
pub async fn answer(up: &mut Upstream, keep_rows: bool) -> Result<Answer, String> {
    let mut out = Answer::default();
    loop {
        let frame = up.recv().await.map_err(|e| e.to_string())?;
        match frame.tag {
            b'D' if !keep_rows => {}
            b'D' => {
                // The last statement's rows only.
                out.rows
                    .push(data_row(frame.body.clone()).ok_or("a malformed row from PostgreSQL")?);
            }
            b'T' => out.rows.clear(),
            b'C' => out.tags.push(
                String::from_utf8_lossy(frame.body.strip_suffix(b"\0").unwrap_or(&frame.body)).into_owned(),
            ),
            b'E' => {
                let fields = parse_diagnostic_fields(&frame.body);
                let get = |c: u8| diagnostic_field(&fields, c);
                out.error.get_or_insert((get(b'C'), get(b'M')));
            }
            b'Z' => return Ok(out),
            _ => {}
        }
    }
}

/// Runs `text` once over the extended protocol with the agent's exact
/// parameters (types, formats, values); one statement only, as Parse
/// refuses several. Results in text.
pub async fn extended(
    up: &mut Upstream,
    text: &str,
    params: &[proto::Parameter],
    keep_rows: bool,
) -> Result<Answer, String> {
    let mut buf = BytesMut::new();
    let types: Vec<u32> = params.iter().map(|p| p.type_oid).collect();
    frontend::parse("", text, types, &mut buf).map_err(|e| e.to_string())?;
    let formats: Vec<i16> = params.iter().map(|p| p.format as i16).collect();
    frontend::bind(
        "",
        "",
        formats,
        params,
        |p, out: &mut BytesMut| {
            if p.is_null {
                Ok(IsNull::Yes)
            } else {
                out.extend_from_slice(&p.value);
                Ok(IsNull::No)
            }
        },
        [0i16],
        &mut buf,
    )
    .map_err(|_| "the parameters could not be sent".to_owned())?;
    frontend::execute("", 0, &mut buf).map_err(|e| e.to_string())?;
    frontend::sync(&mut buf);
    up.send(&buf).await.map_err(|e| e.to_string())?;
    answer(up, keep_rows).await
}

pub fn data_row(mut body: bytes::Bytes) -> Option<Row> {
    if body.remaining() < 2 {
        return None;
    }
    let n = body.get_i16();
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if body.remaining() < 4 {
            return None;
        }
        let len = body.get_i32();
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = len as usize;
        if body.remaining() < len {
            return None;
        }
        row.push(Some(String::from_utf8_lossy(&body.split_to(len)).into_owned()));
    }
    Some(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_rows_parse_and_malformed_ones_are_refused() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&2i16.to_be_bytes());
        b.extend_from_slice(&3i32.to_be_bytes());
        b.extend_from_slice(b"abc");
        b.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(data_row(b.clone().freeze()), Some(vec![Some("abc".into()), None]));
        b.truncate(b.len() - 2);
        assert_eq!(data_row(b.freeze()), None);
    }
}
