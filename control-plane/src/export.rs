//! `airlock-control export`: the log as JSON lines, for auditors and for
//! tools that do not speak protobuf. One object per event, in stream order:
//!
//! ```json
//! {"sequence": 42, "subject": "airlock.v1.session.<id>", "stored_at": "2026-11-24T10:00:00.123Z",
//!  "sha256": "<hex SHA-256 of the stored bytes>", "kind": "statement_executed",
//!  "event": { ...airlock.v1.Event in the proto3 JSON mapping, proto field names... }}
//! ```
//!
//! `event` follows the proto3 JSON mapping with the .proto's field names:
//! 64-bit integers are strings, bytes are base64, timestamps RFC 3339,
//! enums by name, fields at their default value left out. `sha256` and the
//! next event's `prev_hash` let a reader check each chain link without
//! access to NATS; `verify` checks everything against the log itself.

use std::io::Write;

use airlock_eventlog::{EventLog, ReadFilter, StoredEvent, body_kind, hash};
use anyhow::Context;
use futures::StreamExt;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde::Serialize;

/// `jsonl`: the native lines above; `ocsf`: OCSF records, one JSON object
/// per line (see `ocsf`).
pub const FORMATS: &[&str] = &["jsonl", "ocsf"];

/// Turns stored events into export lines.
#[derive(Debug)]
pub struct Exporter {
    event: MessageDescriptor,
    options: SerializeOptions,
}

#[derive(Serialize)]
struct Line<'a> {
    sequence: u64,
    subject: &'a str,
    stored_at: String,
    sha256: String,
    kind: &'a str,
    event: serde_json::Value,
}

impl Exporter {
    pub fn new() -> anyhow::Result<Exporter> {
        let pool = DescriptorPool::decode(airlock_proto::FILE_DESCRIPTOR_SET)
            .context("reading the compiled .proto descriptors")?;
        let event = pool
            .get_message_by_name("airlock.v1.Event")
            .context("airlock.v1.Event missing from the descriptors")?;
        Ok(Exporter {
            event,
            options: SerializeOptions::new().use_proto_field_name(true),
        })
    }

    /// One JSON object for `stored`, from its exact stored bytes.
    pub fn line(&self, stored: &StoredEvent) -> anyhow::Result<String> {
        Ok(serde_json::to_string(&self.value(stored)?)?)
    }

    /// [`Exporter::line`], as a value.
    pub fn value(&self, stored: &StoredEvent) -> anyhow::Result<serde_json::Value> {
        let message = DynamicMessage::decode(self.event.clone(), stored.raw.as_ref())
            .with_context(|| format!("event at sequence {} does not decode", stored.sequence))?;
        let event = message
            .serialize_with_options(serde_json::value::Serializer, &self.options)
            .with_context(|| format!("event at sequence {} has no JSON form", stored.sequence))?;
        let stored_at = stored
            .stored_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let line = Line {
            sequence: stored.sequence,
            subject: &stored.subject,
            stored_at,
            sha256: hex::encode(hash(&stored.raw)),
            kind: stored.event.body.as_ref().map(body_kind).unwrap_or(""),
            event,
        };
        Ok(serde_json::to_value(&line)?)
    }
}

/// Makes sure `sessions` knows the session of `line` (read from the log
/// when its opening came before the reader's start). An error reading the
/// log is returned: the caller decides whether to go on without.
pub async fn know_session(
    log: &EventLog,
    sessions: &mut crate::ocsf::Sessions,
    line: &serde_json::Value,
) -> Result<(), airlock_eventlog::Error> {
    let Some(id) = line["event"]["session_id"].as_str().filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    if line["kind"] == "session_opened" || sessions.get(id).is_some() {
        return Ok(());
    }
    let Ok(session) = id.parse::<airlock_eventlog::SessionId>() else {
        return Ok(());
    };
    match log.first(&airlock_eventlog::subjects::session(&session)).await {
        Ok(Some(first)) => {
            if let Some(airlock_eventlog::proto::event::Body::SessionOpened(_)) = &first.event.body
                && let Ok(exporter) = Exporter::new()
                && let Ok(opened) = exporter.value(&first)
            {
                sessions.learn(&opened);
            }
        }
        Ok(None) => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Writes events `from..=to` (to: the end of the log as it is now) to `out`,
/// as native lines (`ocsf` false) or OCSF records. Returns how many events
/// were read.
pub async fn export(
    log: &EventLog,
    from: u64,
    to: Option<u64>,
    ocsf: bool,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let exporter = Exporter::new()?;
    let mut sessions = crate::ocsf::Sessions::default();
    let stream = log.read(from, ReadFilter::all()).await?;
    futures::pin_mut!(stream);
    let mut written = 0u64;
    while let Some(item) = stream.next().await {
        let stored = item?;
        if to.is_some_and(|to| stored.sequence > to) {
            break;
        }
        if ocsf {
            let line = exporter.value(&stored)?;
            if let Err(e) = know_session(log, &mut sessions, &line).await {
                tracing::warn!(error = %e, "reading a session's opening for its records");
            }
            for record in crate::ocsf::records(&line, &mut sessions, true) {
                writeln!(out, "{record}").context("writing the export")?;
            }
        } else {
            writeln!(out, "{}", exporter.line(&stored)?).context("writing the export")?;
        }
        written += 1;
    }
    out.flush().context("writing the export")?;
    Ok(written)
}
