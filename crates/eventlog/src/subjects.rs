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

/// One approval request as the proxy holding it files it: requested,
/// cancelled.
pub fn request(id: &RequestId) -> String {
    format!("{PREFIX}.request.{id}")
}

/// The control plane's decisions on one request: votes, the outcome. A
/// subject of its own, below the request's, so NATS permissions can let
/// proxies file requests (`airlock.v1.request.*`) and only the control
/// plane decide (`airlock.v1.request.*.decision`). Logs written before it
/// existed hold decisions on the request's own subject; readers take both.
pub fn decision(id: &RequestId) -> String {
    format!("{PREFIX}.request.{id}.{DECISION}")
}

/// The last token of a decision subject.
const DECISION: &str = "decision";

/// Both subjects of a request's lifecycle, for readers that want all of it.
pub fn lifecycle(id: &RequestId) -> Vec<String> {
    vec![request(id), decision(id)]
}

/// One grant (an approval in scope): issued, each use, its revocation or
/// expiry. The id is the approved request's.
pub fn grant(id: &RequestId) -> String {
    format!("{PREFIX}.grant.{id}")
}

/// What one proxy or replica says of itself (PolicyLoaded).
pub fn proxy(id: &ProxyId) -> String {
    format!("{PREFIX}.proxy.{id}")
}

/// Wildcards for consumers that want one family of subjects.
pub const ALL_SESSIONS: &str = "airlock.v1.session.*";
pub const ALL_REQUESTS: &str = "airlock.v1.request.*";
pub const ALL_DECISIONS: &str = "airlock.v1.request.*.decision";
pub const ALL_PROXIES: &str = "airlock.v1.proxy.*";
pub const ALL_GRANTS: &str = "airlock.v1.grant.*";
pub const ALL_SLACK_LINKS: &str = "airlock.v1.link.slack.*.*";

/// What a subject says about the chain it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectKind {
    Session(String),
    Request(String),
    /// The decision subject of a request (the id is the request's).
    Decision(String),
    Proxy(String),
    Grant(String),
    /// A Slack user's link: (team, user).
    SlackLink(String, String),
    Checkpoint,
    Other,
}

/// Whether `id` is a Slack team or user id as Slack writes them (upper
/// case letters and digits): safe in a subject.
pub fn slack_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// The link of Slack user `user` of workspace `team` to an identity
/// (`SlackLinked`, `SlackUnlinked`). Both ids must pass [`slack_id`].
pub fn slack_link(team: &str, user: &str) -> String {
    format!("{PREFIX}.link.slack.{team}.{user}")
}

/// Splits a stored subject into its family and id.
pub fn classify(subject: &str) -> SubjectKind {
    let Some(rest) = subject.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('.')) else {
        return SubjectKind::Other;
    };
    match rest.split_once('.') {
        Some(("session", id)) if !id.contains('.') => SubjectKind::Session(id.to_owned()),
        Some(("request", id)) if !id.contains('.') => SubjectKind::Request(id.to_owned()),
        Some(("request", rest)) => match rest.split_once('.') {
            Some((id, DECISION)) if !id.is_empty() => SubjectKind::Decision(id.to_owned()),
            _ => SubjectKind::Other,
        },
        Some(("proxy", id)) if !id.contains('.') => SubjectKind::Proxy(id.to_owned()),
        Some(("grant", id)) if !id.contains('.') && !id.is_empty() => SubjectKind::Grant(id.to_owned()),
        Some(("link", rest)) => match rest.strip_prefix("slack.").and_then(|r| r.split_once('.')) {
            Some((team, user)) if slack_id(team) && slack_id(user) => {
                SubjectKind::SlackLink(team.to_owned(), user.to_owned())
            }
            _ => SubjectKind::Other,
        },
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
        let r = RequestId::parse("01J0REQUEST").expect("valid id");
        assert_eq!(decision(&r), "airlock.v1.request.01J0REQUEST.decision");
        assert_eq!(
            classify(&decision(&r)),
            SubjectKind::Decision("01J0REQUEST".into())
        );
        assert_eq!(classify(&request(&r)), SubjectKind::Request("01J0REQUEST".into()));
        assert_eq!(classify("airlock.v1.request.a.other"), SubjectKind::Other);
        assert_eq!(classify("airlock.v1.request.a.decision.x"), SubjectKind::Other);
        assert_eq!(classify("airlock.v1.request..decision"), SubjectKind::Other);
        assert_eq!(classify("other.v1.session.a"), SubjectKind::Other);
        assert_eq!(classify(&grant(&r)), SubjectKind::Grant("01J0REQUEST".into()));
        assert_eq!(classify("airlock.v1.grant.a.b"), SubjectKind::Other);
        assert_eq!(
            classify(&slack_link("T1", "U2")),
            SubjectKind::SlackLink("T1".into(), "U2".into())
        );
        assert_eq!(classify("airlock.v1.link.slack.T1.U2.x"), SubjectKind::Other);
        assert_eq!(classify("airlock.v1.link.slack.t1.U2"), SubjectKind::Other);
        assert!(!slack_id("U1.*") && !slack_id("") && slack_id("U024BE7LH"));
    }
}
