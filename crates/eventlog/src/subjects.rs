//! Stream and subject names, in one place. Every event lives under
//! `airlock.v1.>` in one stream; its subject names the chain it belongs to.

use crate::ids::{ProxyId, RequestId, SessionId};

/// Default name of the stream (`nats.stream` in airlock.yaml).
pub const DEFAULT_STREAM: &str = "AIRLOCK";

/// Prefix of every subject.
pub const PREFIX: &str = "airlock.v1";

/// The stream's subjects: everything under the prefix.
pub const ALL: &str = "airlock.v1.>";

/// Checkpoints over ranges of the log.
pub const CHECKPOINT: &str = "airlock.v1.checkpoint";

/// The object-store bucket holding snapshots of state derived from
/// `stream` (object-store bucket names allow letters, digits, `-`, `_`).
pub fn snapshot_bucket(stream: &str) -> String {
    format!("{stream}_SNAPSHOTS")
}

/// Events of one session: opened, statements, kill requests, closed.
pub fn session(id: &SessionId) -> String {
    format!("{PREFIX}.session.{id}")
}

/// The lifecycle of one approval request.
pub fn request(id: &RequestId) -> String {
    format!("{PREFIX}.request.{id}")
}

/// What one proxy or replica says of itself (PolicyLoaded).
pub fn proxy(id: &ProxyId) -> String {
    format!("{PREFIX}.proxy.{id}")
}

/// Wildcards for consumers that want one family of subjects.
pub const ALL_SESSIONS: &str = "airlock.v1.session.*";
pub const ALL_REQUESTS: &str = "airlock.v1.request.*";
pub const ALL_PROXIES: &str = "airlock.v1.proxy.*";

/// What a subject says about the chain it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectKind {
    Session(String),
    Request(String),
    Proxy(String),
    Checkpoint,
    Other,
}

/// Splits a stored subject into its family and id.
pub fn classify(subject: &str) -> SubjectKind {
    let Some(rest) = subject.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('.')) else {
        return SubjectKind::Other;
    };
    match rest.split_once('.') {
        Some(("session", id)) if !id.contains('.') => SubjectKind::Session(id.to_owned()),
        Some(("request", id)) if !id.contains('.') => SubjectKind::Request(id.to_owned()),
        Some(("proxy", id)) if !id.contains('.') => SubjectKind::Proxy(id.to_owned()),
        None if rest == "checkpoint" => SubjectKind::Checkpoint,
        _ => SubjectKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        let s = SessionId::parse("01J0SESSION").expect("valid id");
        assert_eq!(session(&s), "airlock.v1.session.01J0SESSION");
        assert_eq!(classify(&session(&s)), SubjectKind::Session("01J0SESSION".into()));
        assert_eq!(classify(CHECKPOINT), SubjectKind::Checkpoint);
        assert_eq!(classify("airlock.v1.session.a.b"), SubjectKind::Other);
        assert_eq!(classify("other.v1.session.a"), SubjectKind::Other);
    }
}
