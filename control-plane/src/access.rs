//! Who may read what, and who may act on it: the rules every reviewer and
//! audit call applies, judged from the caller's groups and the folded
//! state. Pure: no I/O. Authenticating the caller is the gRPC layer's;
//! judging a vote is `decide`'s (which checks the request's groups again).
//!
//! Two roles, from airlock.yaml:
//! * reviewers (`approvals.reviewers`) may use the reviewer service; each
//!   request's own reviewer groups narrow what they see and decide;
//! * auditors (`control.auditors`) read everything and decide nothing.
//!
//! The rules:
//! * a request is visible to auditors and to members of its reviewer groups;
//! * a session belongs to the groups of the requests it filed: it is visible
//!   to auditors and to whoever may review at least one of them, and only
//!   the requests among them the caller may review are shown with it. A
//!   session that has filed no request yet is claimed by no group: every
//!   reviewer may see it (and kill it), as the reviewers of last resort;
//! * killing a session takes a person with reviewer rights over it (the
//!   rule above without the auditor clause);
//! * the log: auditors read all of it; reviewers read the events of the
//!   requests and sessions they may see; nobody else reads any.
//!
//! The session rule is judged on the requests known when asked: a session
//! visible to every reviewer stops being so once it files a request for
//! another group.

use airlock_eventlog::proto::{self, event::Body};

use crate::decide::in_reviewer_groups;
use crate::projection::Projection;

/// Group lists of the two roles, by name and by object id.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    pub reviewers: Vec<String>,
    pub auditors: Vec<String>,
}

impl Roles {
    /// The verified `identity` with the roles its groups give it.
    pub fn caller(&self, identity: proto::Identity) -> Caller {
        Caller {
            reviewer: in_groups(&identity, &self.reviewers),
            auditor: in_groups(&identity, &self.auditors),
            identity,
        }
    }
}

/// Whether `identity` is in one of `groups`, by object id or by name.
fn in_groups(identity: &proto::Identity, groups: &[String]) -> bool {
    identity.groups.iter().any(|g| {
        groups
            .iter()
            .any(|k| *k == g.id || (!g.name.is_empty() && *k == g.name))
    })
}

/// A verified caller and its roles.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: proto::Identity,
    /// In `approvals.reviewers`.
    pub reviewer: bool,
    /// In `control.auditors`.
    pub auditor: bool,
}

impl Caller {
    /// Whether the caller is a person (not an application): only people
    /// vote and kill.
    pub fn is_person(&self) -> bool {
        self.identity.kind == proto::identity::Kind::User as i32
    }

    /// Whether the caller may see a request filed as `asked`.
    pub fn may_read_request(&self, asked: &proto::ApprovalRequested) -> bool {
        self.auditor || in_reviewer_groups(&self.identity, asked)
    }

    /// Whether the caller may see request `id` of `state`; an unknown
    /// request is nobody's (auditors aside).
    pub fn may_read_request_id(&self, state: &Projection, id: &str) -> bool {
        self.auditor
            || state
                .request(id)
                .is_some_and(|r| in_reviewer_groups(&self.identity, r.requested()))
    }

    /// Whether the caller has reviewer rights over a session that filed
    /// requests whose reviewability by the caller `reviewable` gives: at
    /// least one is theirs, or there is none and the caller is a reviewer.
    pub fn reviews_session_with(&self, reviewable: impl IntoIterator<Item = bool>) -> bool {
        if !self.reviewer {
            return false;
        }
        let mut filed = false;
        for mine in reviewable {
            if mine {
                return true;
            }
            filed = true;
        }
        !filed
    }

    /// Whether the caller has reviewer rights over session `id` of
    /// `state` (who may kill it).
    pub fn reviews_session(&self, state: &Projection, id: &str) -> bool {
        let filed = state
            .session_requests
            .get(id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        self.reviews_session_with(filed.iter().map(|r| {
            state
                .request(r)
                .is_some_and(|r| in_reviewer_groups(&self.identity, r.requested()))
        }))
    }

    /// Whether the caller may see session `id` of `state`.
    pub fn may_read_session(&self, state: &Projection, id: &str) -> bool {
        self.auditor || self.reviews_session(state, id)
    }

    /// Whether the caller may see `event` of a session it may see: not if
    /// it names a request the caller may not see (an approved statement,
    /// a refusal after a denial).
    pub fn may_read_session_event(&self, state: &Projection, event: &proto::Event) -> bool {
        self.auditor
            || requests_named(event)
                .into_iter()
                .all(|id| self.may_read_request_id(state, id))
    }
}

/// Every request `event` names: its envelope's, and those of the
/// statements it records.
pub fn requests_named(event: &proto::Event) -> Vec<&str> {
    let mut named = vec![event.request_id.as_str()];
    match &event.body {
        Some(Body::StatementExecuted(x)) => named.push(&x.request_id),
        Some(Body::StatementRefused(x)) => named.push(&x.request_id),
        Some(Body::StatementsExecuted(g)) => named.extend(
            g.statements
                .iter()
                .filter_map(|x| x.statement.as_ref().map(|s| s.request_id.as_str())),
        ),
        _ => {}
    }
    named.retain(|id| !id.is_empty());
    named.sort_unstable();
    named.dedup();
    named
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_eventlog::StoredEvent;

    const REVIEWERS: &str = "grp-reviewers";
    const FINANCE: &str = "grp-finance";
    const AUDITORS: &str = "grp-auditors";

    fn roles() -> Roles {
        Roles {
            reviewers: vec![REVIEWERS.into(), FINANCE.into()],
            auditors: vec![AUDITORS.into()],
        }
    }

    fn person(groups: &[&str]) -> Caller {
        roles().caller(proto::Identity {
            subject: "someone".into(),
            kind: proto::identity::Kind::User as i32,
            groups: groups
                .iter()
                .map(|g| proto::Group {
                    id: (*g).into(),
                    name: String::new(),
                })
                .collect(),
            ..Default::default()
        })
    }

    fn stored(sequence: u64, subject: String, event: proto::Event) -> StoredEvent {
        let raw = prost::Message::encode_to_vec(&event);
        StoredEvent {
            sequence,
            subject,
            stored_at: time::OffsetDateTime::UNIX_EPOCH,
            event,
            raw: raw.into(),
        }
    }

    /// A state with session `s1` (a request for `FINANCE`, `r1`), and
    /// session `s2` (no request).
    fn state() -> Projection {
        let mut p = Projection::new();
        let opened = |sid: &str| {
            let mut e = airlock_eventlog::new_event(
                &proto::Source::default(),
                Body::SessionOpened(proto::SessionOpened::default()),
            );
            e.session_id = sid.into();
            e
        };
        p.apply(&stored(1, "airlock.v1.session.s1".into(), opened("s1")));
        p.apply(&stored(2, "airlock.v1.session.s2".into(), opened("s2")));
        let mut asked = airlock_eventlog::new_event(
            &proto::Source::default(),
            Body::ApprovalRequested(proto::ApprovalRequested {
                reviewer_groups: vec![proto::Group {
                    id: FINANCE.into(),
                    name: "finance".into(),
                }],
                ..Default::default()
            }),
        );
        asked.session_id = "s1".into();
        asked.request_id = "r1".into();
        p.apply(&stored(3, "airlock.v1.request.r1".into(), asked));
        p
    }

    #[test]
    fn a_session_belongs_to_the_groups_of_its_requests() {
        let s = state();
        let (alice, fiona, audrey) = (person(&[REVIEWERS]), person(&[FINANCE]), person(&[AUDITORS]));
        assert!(!alice.may_read_session(&s, "s1"), "another group's request");
        assert!(!alice.reviews_session(&s, "s1"));
        assert!(fiona.may_read_session(&s, "s1") && fiona.reviews_session(&s, "s1"));
        assert!(audrey.may_read_session(&s, "s1"), "auditors read everything");
        assert!(!audrey.reviews_session(&s, "s1"), "and act on nothing");
    }

    #[test]
    fn a_session_with_no_request_is_every_reviewers_and_no_one_elses() {
        let s = state();
        assert!(person(&[REVIEWERS]).reviews_session(&s, "s2"));
        assert!(person(&[FINANCE]).reviews_session(&s, "s2"));
        assert!(!person(&["grp-agents"]).may_read_session(&s, "s2"));
        let audrey = person(&[AUDITORS]);
        assert!(audrey.may_read_session(&s, "s2") && !audrey.reviews_session(&s, "s2"));
    }

    #[test]
    fn events_naming_a_request_follow_that_request() {
        let s = state();
        let mut ran = airlock_eventlog::new_event(
            &proto::Source::default(),
            Body::StatementExecuted(proto::StatementExecuted {
                request_id: "r1".into(),
                ..Default::default()
            }),
        );
        ran.session_id = "s1".into();
        assert_eq!(requests_named(&ran), vec!["r1"]);
        assert!(!person(&[REVIEWERS]).may_read_session_event(&s, &ran));
        assert!(person(&[FINANCE]).may_read_session_event(&s, &ran));
        assert!(person(&[AUDITORS]).may_read_session_event(&s, &ran));
        let group = proto::Event {
            body: Some(Body::StatementsExecuted(proto::StatementsExecuted {
                statements: vec![
                    proto::RecordedStatement::default(),
                    proto::RecordedStatement {
                        statement: Some(proto::StatementExecuted {
                            request_id: "r9".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ],
            })),
            ..Default::default()
        };
        assert_eq!(requests_named(&group), vec!["r9"]);
        assert!(
            !person(&[FINANCE]).may_read_session_event(&s, &group),
            "an unknown request is no one's"
        );
    }

    #[test]
    fn roles_match_groups_by_id_or_name() {
        let by_name = roles().caller(proto::Identity {
            groups: vec![proto::Group {
                id: "0b7e".into(),
                name: AUDITORS.into(),
            }],
            ..Default::default()
        });
        assert!(by_name.auditor && !by_name.reviewer && !by_name.is_person());
    }
}
