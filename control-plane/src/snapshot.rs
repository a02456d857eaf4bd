//! Snapshots of the projection, so a replica starts from the latest one and
//! folds only the events after it instead of the whole log.
//!
//! The encoding is internal to the control plane (protobuf messages defined
//! here, tagged with [`FORMAT`]); change the format tag whenever the
//! encoding or the fold's meaning changes, and old snapshots are ignored
//! rather than misread. A snapshot is only a cache: the eventlog crate
//! refuses one that does not name an event of this log, and `replay` and
//! `verify` never use them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_eventlog::proto;
use airlock_eventlog::{EventLog, SnapshotMeta, SnapshotRejected};
use prost::Message;

use crate::live::Live;
use crate::projection::{Grant, PendingKill, Projection, ProxyView, Request, Session};

/// Name of the projection's snapshot in the bucket.
pub const NAME: &str = "control-projection";
/// The encoding below; bump when it or the fold changes.
/// v2: decisions have a subject of their own, and the fold counts the
/// sequence on it (v1 snapshots, from replicas that folded decisions from
/// the request's subject only, are ignored: a v2 replica folds the log).
/// v3: sessions carry the run of the proxy that opened them, how they
/// closed and their last chain index. A v2 snapshot lacks the run, and a
/// replica would take its open sessions for a lost proxy's: ignored.
/// v4: grants (their subjects) are folded; a v3 snapshot has none.
pub const FORMAT: &str = "airlock.control.projection.v5";

#[derive(Clone, PartialEq, Message)]
struct SnapshotFile {
    #[prost(uint64, tag = "1")]
    sequence: u64,
    #[prost(uint64, tag = "2")]
    anomalies: u64,
    #[prost(message, repeated, tag = "3")]
    requests: Vec<RequestEntry>,
    #[prost(message, repeated, tag = "4")]
    sessions: Vec<SessionEntry>,
    #[prost(message, repeated, tag = "5")]
    proxies: Vec<ProxyEntry>,
    #[prost(message, repeated, tag = "6")]
    session_requests: Vec<SessionRequests>,
    #[prost(message, repeated, tag = "7")]
    grants: Vec<GrantEntry>,
    #[prost(message, repeated, tag = "8")]
    slack_links: Vec<proto::SlackLinkView>,
    #[prost(message, repeated, tag = "9")]
    slack_tickets: Vec<UsedTicket>,
}

#[derive(Clone, PartialEq, Message)]
struct UsedTicket {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(int64, tag = "2")]
    expires: i64,
}

#[derive(Clone, PartialEq, Message)]
struct GrantEntry {
    #[prost(message, optional, tag = "1")]
    view: Option<proto::GrantView>,
    #[prost(bytes = "vec", tag = "2")]
    issued_raw: Vec<u8>,
    #[prost(uint64, tag = "3")]
    issued_sequence: u64,
    #[prost(uint64, tag = "4")]
    head_sequence: u64,
    #[prost(bytes = "vec", tag = "5")]
    head_hash: Vec<u8>,
    #[prost(uint64, tag = "6")]
    head_index: u64,
}

#[derive(Clone, PartialEq, Message)]
struct RequestEntry {
    #[prost(message, optional, tag = "1")]
    view: Option<proto::RequestView>,
    /// v1's last sequence on the request's own subject: not written.
    #[prost(uint64, tag = "2")]
    last_sequence: u64,
    /// Added after v1 was first written: older snapshots decode without it.
    #[prost(message, optional, tag = "3")]
    trace: Option<proto::TraceContext>,
    /// The last sequence on the request's decision subject.
    #[prost(uint64, tag = "4")]
    decision_sequence: u64,
}

#[derive(Clone, PartialEq, Message)]
struct SessionEntry {
    #[prost(message, optional, tag = "1")]
    summary: Option<proto::SessionSummary>,
    #[prost(string, repeated, tag = "2")]
    request_ids: Vec<String>,
    #[prost(uint64, tag = "3")]
    last_sequence: u64,
    #[prost(message, optional, tag = "4")]
    kill: Option<proto::KillOrder>,
}

#[derive(Clone, PartialEq, Message)]
struct ProxyEntry {
    #[prost(string, tag = "1")]
    proxy_id: String,
    #[prost(message, repeated, tag = "2")]
    policies: Vec<proto::policy_loaded::Loaded>,
    #[prost(message, optional, tag = "3")]
    last_seen: Option<prost_types::Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
struct SessionRequests {
    #[prost(string, tag = "1")]
    session_id: String,
    #[prost(string, repeated, tag = "2")]
    request_ids: Vec<String>,
}

/// The projection's bytes.
pub fn encode(p: &Projection) -> Vec<u8> {
    let mut sessions: Vec<SessionEntry> = p
        .sessions
        .values()
        .map(|s| SessionEntry {
            summary: Some(s.summary.clone()),
            request_ids: s.request_ids.clone(),
            last_sequence: s.last_sequence,
            kill: s.kill.as_ref().map(|k| k.order.clone()),
        })
        .collect();
    // Deterministic bytes for the same state.
    sessions.sort_by(|a, b| {
        let id = |e: &SessionEntry| {
            e.summary
                .as_ref()
                .map(|s| s.session_id.clone())
                .unwrap_or_default()
        };
        id(a).cmp(&id(b))
    });
    let mut session_requests: Vec<SessionRequests> = p
        .session_requests
        .iter()
        .map(|(id, r)| SessionRequests {
            session_id: id.clone(),
            request_ids: r.clone(),
        })
        .collect();
    session_requests.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    SnapshotFile {
        sequence: p.sequence,
        anomalies: p.anomalies,
        requests: p
            .requests
            .values()
            .map(|r| RequestEntry {
                view: Some(r.view.clone()),
                last_sequence: 0,
                trace: r.trace.clone(),
                decision_sequence: r.decision_sequence,
            })
            .collect(),
        sessions,
        proxies: p
            .proxies
            .values()
            .map(|v| ProxyEntry {
                proxy_id: v.proxy_id.clone(),
                policies: v.policies.clone(),
                last_seen: v.last_seen,
            })
            .collect(),
        session_requests,
        grants: p
            .grants
            .values()
            .map(|g| GrantEntry {
                view: Some(g.view.clone()),
                issued_raw: g.issued_raw.clone(),
                issued_sequence: g.issued_sequence,
                head_sequence: g.head.sequence,
                head_hash: g.head.hash.clone(),
                head_index: g.head.index,
            })
            .collect(),
        slack_links: p.slack_links.values().cloned().collect(),
        slack_tickets: p
            .slack_tickets
            .iter()
            .map(|(id, expires)| UsedTicket {
                id: id.clone(),
                expires: *expires,
            })
            .collect(),
    }
    .encode_to_vec()
}

/// Decodes what [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<Projection, prost::DecodeError> {
    let file = SnapshotFile::decode(bytes)?;
    let mut p = Projection::new();
    p.sequence = file.sequence;
    p.anomalies = file.anomalies;
    for r in file.requests {
        let view = r.view.unwrap_or_default();
        p.requests.insert(
            view.request_id.clone(),
            Request {
                view,
                decision_sequence: r.decision_sequence,
                trace: r.trace,
            },
        );
    }
    for s in file.sessions {
        let summary = s.summary.unwrap_or_default();
        p.sessions.insert(
            summary.session_id.clone(),
            Session {
                summary,
                request_ids: s.request_ids,
                last_sequence: s.last_sequence,
                kill: s.kill.map(|order| PendingKill { order }),
            },
        );
    }
    for v in file.proxies {
        p.proxies.insert(
            v.proxy_id.clone(),
            ProxyView {
                proxy_id: v.proxy_id,
                policies: v.policies,
                last_seen: v.last_seen,
            },
        );
    }
    for s in file.session_requests {
        p.session_requests.insert(s.session_id, s.request_ids);
    }
    for l in file.slack_links {
        let slack = l.slack.clone().unwrap_or_default();
        p.slack_links.insert((slack.team_id, slack.user_id), l);
    }
    for t in file.slack_tickets {
        p.slack_tickets.insert(t.id, t.expires);
    }
    for g in file.grants {
        let view = g.view.unwrap_or_default();
        p.grants.insert(
            view.grant_id.clone(),
            Grant {
                view,
                issued_raw: g.issued_raw,
                issued_sequence: g.issued_sequence,
                head: airlock_eventlog::ChainHead {
                    sequence: g.head_sequence,
                    hash: g.head_hash,
                    index: g.head_index,
                },
            },
        );
    }
    Ok(p)
}

/// The latest usable snapshot, or an empty projection (with the reason it
/// was not used, for the log).
pub async fn load(log: &EventLog) -> (Projection, Result<SnapshotMeta, String>) {
    let started = Instant::now();
    match log.load_snapshot(NAME, FORMAT).await {
        Ok((meta, bytes)) => {
            let size = bytes.len();
            match tokio::task::spawn_blocking(move || decode(&bytes)).await {
                Ok(Ok(p)) if p.sequence == meta.sequence => {
                    tracing::info!(
                        sequence = meta.sequence,
                        bytes = size,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "loaded a snapshot; folding the rest of the log"
                    );
                    (p, Ok(meta))
                }
                Ok(Ok(p)) => (
                    Projection::new(),
                    Err(format!(
                        "snapshot body covers sequence {}, its metadata says {}",
                        p.sequence, meta.sequence
                    )),
                ),
                Ok(Err(e)) => (Projection::new(), Err(format!("snapshot undecodable: {e}"))),
                Err(e) => (Projection::new(), Err(format!("decoding the snapshot: {e}"))),
            }
        }
        Err(SnapshotRejected::Missing) => (Projection::new(), Err("no snapshot stored".to_owned())),
        Err(e) => (Projection::new(), Err(e.to_string())),
    }
}

/// Stores the current state if it is at least `min_events` past the stored
/// snapshot. Returns the sequence written, if any.
pub async fn save_if_due(live: &Live, log: &EventLog, min_events: u64) -> anyhow::Result<Option<u64>> {
    // The stored snapshot's metadata is not signed on its own (the
    // signature covers it with the bytes): a sequence past what this
    // replica has folded is no snapshot of this log, and must not keep
    // snapshots from being saved.
    let stored = log
        .snapshot_meta(NAME)
        .await?
        .map(|m| m.sequence)
        .filter(|s| *s <= live.sequence())
        .unwrap_or(0);
    if live.sequence() < stored.saturating_add(min_events.max(1)) {
        return Ok(None);
    }
    // Clone under the lock (fast), encode outside it (the tailer goes on).
    let state = live.read(Projection::clone);
    if state.sequence == 0 {
        return Ok(None);
    }
    let started = Instant::now();
    let last = log.get(state.sequence).await?;
    let sequence = state.sequence;
    let bytes = tokio::task::spawn_blocking(move || encode(&state)).await?;
    let meta = SnapshotMeta {
        sequence,
        event_id: last.event.id,
        format: FORMAT.to_owned(),
    };
    log.save_snapshot(NAME, &meta, &bytes).await?;
    live.metrics().observe_snapshot_save(started.elapsed());
    live.metrics().snapshot_stored(sequence, last.stored_at.into());
    tracing::info!(sequence, bytes = bytes.len(), "stored a snapshot");
    Ok(Some(sequence))
}

/// Tells the metrics of the newest stored snapshot (loaded at start, or
/// stored by another replica) when it is newer than the one they know.
pub async fn note_newest(live: &Live, log: &EventLog) -> anyhow::Result<()> {
    let Some(meta) = log.snapshot_meta(NAME).await? else {
        return Ok(());
    };
    if live
        .metrics()
        .snapshot_sequence()
        .is_some_and(|known| known >= meta.sequence)
    {
        return Ok(());
    }
    let last = log.get(meta.sequence).await?;
    live.metrics()
        .snapshot_stored(meta.sequence, last.stored_at.into());
    Ok(())
}

/// Every `interval`, stores a snapshot if `min_events` have been folded
/// since the stored one. Several replicas may each store one: any of them
/// is a correct state for the sequence it names.
pub async fn save_forever(live: Arc<Live>, log: EventLog, interval: Duration, min_events: u64) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    if let Err(e) = note_newest(&live, &log).await {
        tracing::debug!(error = %format!("{e:#}"), "reading the stored snapshot's metadata failed");
    }
    loop {
        tick.tick().await;
        if !live.is_ready() {
            continue;
        }
        if let Err(e) = save_if_due(&live, &log, min_events).await {
            tracing::warn!(error = %format!("{e:#}"), "storing a snapshot failed; will retry");
        }
        if let Err(e) = note_newest(&live, &log).await {
            tracing::debug!(error = %format!("{e:#}"), "reading the stored snapshot's metadata failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_projection_round_trips() {
        let p = Projection::new();
        assert_eq!(decode(&encode(&p)).expect("decodes"), p);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(&[0xff, 0xff, 0xff, 0x01]).is_err());
    }

    #[test]
    fn a_requests_trace_context_is_kept() {
        use airlock_eventlog::proto::event::Body;
        use airlock_eventlog::{RequestId, StoredEvent, new_event, subjects};

        let id = RequestId::generate();
        let mut e = new_event(
            &proto::Source::default(),
            Body::ApprovalRequested(proto::ApprovalRequested::default()),
        );
        e.request_id = id.to_string();
        let trace = proto::TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: "vendor=1".into(),
        };
        e.trace = Some(trace.clone());
        let mut p = Projection::new();
        p.apply(&StoredEvent {
            sequence: 1,
            subject: subjects::request(&id),
            stored_at: time::OffsetDateTime::UNIX_EPOCH,
            raw: prost::Message::encode_to_vec(&e).into(),
            event: e,
        });
        assert_eq!(
            p.request(id.as_str()).and_then(|r| r.trace.as_ref()),
            Some(&trace)
        );
        assert_eq!(decode(&encode(&p)).expect("decodes"), p);
    }
}
