//! Airlock's event log on NATS JetStream: the source of truth every other
//! component folds.
//!
//! Owns: the stream's setup (file storage, deletes and purges denied, a
//! duplicate window), appends (deduplicated by event id, optimistic
//! concurrency per subject, acknowledged before returning), reads from a
//! sequence and live tails (ordered consumers), subject names, ids, and the
//! per-subject hash chains and their check.
//!
//! Does not own: what events mean. Folding them into state is the control
//! plane's job; deciding what to append is the caller's.

mod chain;
pub mod checkpoint;
pub mod durable;
mod error;
pub mod ids;
mod log;
mod nats;
pub mod signing;
mod snapshot;
pub mod subjects;
pub mod trace;

pub use airlock_proto::v1 as proto;
pub use chain::{ChainChecker, ChainError, ChainHead, ChainSummary, hash, verify_chain};
pub use error::Error;
pub use ids::{EventId, InvalidId, ProxyId, RequestId, SessionId};
pub use log::{
    Appended, ChainWriter, EVENT_KIND, EventLog, Expect, MAX_EVENT_BYTES, ReadFilter, StoredEvent,
    TRACEPARENT, TRACESTATE, link,
};
pub use nats::{NatsSettings, NatsTls};
pub use snapshot::{SnapshotMeta, SnapshotRejected};

use proto::event::Body;

/// The name of an event's body, as in the proto (`approval_requested`, ...).
/// Also the `Airlock-Event` header, for filtering without decoding.
pub fn body_kind(body: &Body) -> &'static str {
    match body {
        Body::SessionOpened(_) => "session_opened",
        Body::StatementExecuted(_) => "statement_executed",
        Body::StatementRefused(_) => "statement_refused",
        Body::ApprovalRequested(_) => "approval_requested",
        Body::ApprovalVoted(_) => "approval_voted",
        Body::ApprovalGranted(_) => "approval_granted",
        Body::ApprovalDenied(_) => "approval_denied",
        Body::ApprovalExpired(_) => "approval_expired",
        Body::ApprovalCancelled(_) => "approval_cancelled",
        Body::SessionKillRequested(_) => "session_kill_requested",
        Body::SessionClosed(_) => "session_closed",
        Body::PolicyLoaded(_) => "policy_loaded",
        Body::Checkpoint(_) => "checkpoint",
        Body::StatementsExecuted(_) => "statements_executed",
        Body::GrantIssued(_) => "grant_issued",
        Body::GrantUsed(_) => "grant_used",
        Body::GrantRevoked(_) => "grant_revoked",
        Body::GrantExpired(_) => "grant_expired",
        Body::SlackLinked(_) => "slack_linked",
        Body::SlackUnlinked(_) => "slack_unlinked",
    }
}

/// One executed statement as recorded: on its own (`StatementExecuted`) or
/// as one of a group (`StatementsExecuted`).
#[derive(Debug, Clone, Copy)]
pub struct Executed<'a> {
    /// The event id, or the statement's own id within a group.
    pub id: &'a str,
    pub time: Option<&'a prost_types::Timestamp>,
    pub statement: &'a proto::StatementExecuted,
}

/// The statements `event` records as executed, in order: one for a
/// `StatementExecuted`, each of a `StatementsExecuted` group, none for any
/// other event. Readers that count or list statements go through this, so a
/// group counts exactly as that many single events.
pub fn executed_statements(event: &proto::Event) -> Vec<Executed<'_>> {
    match &event.body {
        Some(Body::StatementExecuted(s)) => vec![Executed {
            id: &event.id,
            time: event.time.as_ref(),
            statement: s,
        }],
        Some(Body::StatementsExecuted(group)) => group
            .statements
            .iter()
            .filter_map(|r| {
                r.statement.as_ref().map(|statement| Executed {
                    id: &r.id,
                    time: r.time.as_ref(),
                    statement,
                })
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `event` as the single events it stands for: a `StatementsExecuted` group
/// becomes one `StatementExecuted` event per statement (each with the
/// statement's own id and time and the group's other envelope fields, but
/// no chain link of its own); any other event is returned as it is. For
/// showing a session's timeline; the stored group is what the chain covers.
pub fn split_group(event: &proto::Event) -> Vec<proto::Event> {
    if !matches!(event.body, Some(Body::StatementsExecuted(_))) {
        return vec![event.clone()];
    }
    executed_statements(event)
        .into_iter()
        .map(|x| proto::Event {
            id: x.id.to_owned(),
            time: x.time.cloned(),
            source: event.source.clone(),
            session_id: event.session_id.clone(),
            request_id: x.statement.request_id.clone(),
            trace: event.trace.clone(),
            prev_hash: Vec::new(),
            chain_index: 0,
            signature: None,
            body: Some(Body::StatementExecuted(x.statement.clone())),
        })
        .collect()
}

/// A new event: fresh ULID id, the current time, `source` and `body`. The
/// caller sets session/request ids; the log sets the link, and the trace
/// context where [`trace`] says.
pub fn new_event(source: &proto::Source, body: Body) -> proto::Event {
    let now = std::time::SystemTime::now();
    proto::Event {
        id: EventId::generate().to_string(),
        time: Some(prost_types::Timestamp::from(now)),
        source: Some(source.clone()),
        body: Some(body),
        ..Default::default()
    }
}
