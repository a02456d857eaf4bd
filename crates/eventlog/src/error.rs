//! Errors of the event log, named by condition.

use std::time::Duration;

/// What can go wrong talking to the log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS could not be reached at start-up.
    #[error("cannot connect to NATS at {url}: {source} ({hint})")]
    Connect {
        url: String,
        /// What to check, in the words of airlock.yaml.
        hint: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// The `nats:` section cannot be used as written (found before
    /// connecting).
    #[error("{0}")]
    Settings(String),
    /// The stream could not be created, read or checked.
    #[error("JetStream stream {stream}: {detail}")]
    Stream { stream: String, detail: String },
    /// The stream exists but is set up in a way that would weaken the log
    /// (deletes or purges allowed, other subjects). Airlock never loosens it.
    #[error("JetStream stream {stream} is misconfigured: {detail}")]
    StreamMisconfigured { stream: String, detail: String },
    /// Optimistic concurrency: the subject's last sequence was not the one
    /// expected, so someone else appended first. Re-read and judge again.
    #[error("conflict on {subject}: expected last sequence {expected}, the log has moved on ({detail})")]
    Conflict {
        subject: String,
        expected: u64,
        detail: String,
    },
    /// JetStream did not acknowledge the append within the deadline, after
    /// retries with the same event id. The event may or may not be stored;
    /// retrying with the same id is safe (it is stored at most once).
    #[error("append to {subject} not acknowledged after {attempts} attempts in {elapsed:?}: {last}")]
    Unavailable {
        subject: String,
        attempts: u32,
        elapsed: Duration,
        last: String,
    },
    /// JetStream refused the append for a reason retrying will not fix.
    #[error("append to {subject} rejected: {detail}")]
    Rejected { subject: String, detail: String },
    /// A stored message is not a valid event.
    #[error("message {sequence} on {subject} is not a valid event: {detail}")]
    Corrupt {
        sequence: u64,
        subject: String,
        detail: String,
    },
    /// Reading or tailing the log failed.
    #[error("reading the log: {0}")]
    Read(String),
    /// An event handed to `append` is not well formed.
    #[error("invalid event: {0}")]
    InvalidEvent(String),
}

impl Error {
    /// True for the typed optimistic-concurrency conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }
}
