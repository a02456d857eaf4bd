//! Hash chains. Every event records the SHA-256 of the stored bytes of the
//! previous event on its subject (`prev_hash`) and its position in that chain
//! (`chain_index`, from 1). Altering an event changes its hash, which no
//! longer matches what its successor recorded; removing or inserting one
//! breaks the index sequence. The last event of a chain has no successor to
//! vouch for it: signed `Checkpoint`s cover that.
//!
//! This module is pure (no I/O): it checks events already read.

// Chain errors are rare and carry everything an auditor needs to find the
// tampered event; their size does not matter on this path.
#![allow(clippy::result_large_err)]

use sha2::{Digest, Sha256};

use crate::StoredEvent;
use crate::subjects::{SubjectKind, classify};

/// SHA-256 of stored event bytes.
pub fn hash(raw: &[u8]) -> [u8; 32] {
    Sha256::digest(raw).into()
}

/// The end of a chain: what the next event must link to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// Stream sequence of the last event on the subject (0: none yet).
    pub sequence: u64,
    /// Hash of that event's stored bytes (empty: none yet).
    pub hash: Vec<u8>,
    /// Its `chain_index` (0: none yet).
    pub index: u64,
}

impl ChainHead {
    /// The head of a subject with no events.
    pub fn empty() -> ChainHead {
        ChainHead {
            sequence: 0,
            hash: Vec::new(),
            index: 0,
        }
    }

    pub fn of(event: &StoredEvent) -> ChainHead {
        ChainHead {
            sequence: event.sequence,
            hash: hash(&event.raw).to_vec(),
            index: event.event.chain_index,
        }
    }
}

/// A chain that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    pub subject: String,
    pub events: usize,
    pub head: ChainHead,
}

/// Why a chain does not check. Each names the event where the check failed
/// and, where it can be told, the event that was tampered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("empty chain: no events to check")]
    Empty,
    #[error(
        "chain {subject} broken: event {event_id} (seq {sequence}) records prev hash {recorded}, \
         but the event before it, {previous_event_id} (seq {previous_sequence}), hashes to {actual}: \
         event {previous_event_id} was altered"
    )]
    AlteredEvent {
        subject: String,
        /// The event whose recorded link does not match.
        event_id: String,
        sequence: u64,
        /// The event that no longer matches the hash its successor recorded.
        previous_event_id: String,
        previous_sequence: u64,
        recorded: String,
        actual: String,
    },
    #[error(
        "chain {subject} broken: event {event_id} (seq {sequence}) has index {found}, expected {expected}: \
         events were removed or inserted before it"
    )]
    IndexGap {
        subject: String,
        event_id: String,
        sequence: u64,
        expected: u64,
        found: u64,
    },
    #[error(
        "chain {subject} does not start at its beginning: first event {event_id} (seq {sequence}) has index \
         {index} and a prev hash: the events before it are missing"
    )]
    MissingStart {
        subject: String,
        event_id: String,
        sequence: u64,
        index: u64,
    },
    #[error("event {event_id} (seq {sequence}) is on {found}, not on chain {subject}")]
    WrongSubject {
        subject: String,
        event_id: String,
        sequence: u64,
        found: String,
    },
    #[error(
        "event {event_id} (seq {sequence}) on {subject} names {field} {value:?}, which does not match its subject"
    )]
    IdMismatch {
        subject: String,
        event_id: String,
        sequence: u64,
        field: &'static str,
        value: String,
    },
}

/// What a chain check keeps of the last event of a chain.
#[derive(Debug, Clone)]
struct Link {
    event_id: String,
    sequence: u64,
    index: u64,
    hash: [u8; 32],
}

/// Checks that `stored` follows `previous` on `subject` (or starts the chain).
fn check_next(subject: &str, previous: Option<&Link>, stored: &StoredEvent) -> Result<Link, ChainError> {
    let e = &stored.event;
    if stored.subject != subject {
        return Err(ChainError::WrongSubject {
            subject: subject.to_owned(),
            event_id: e.id.clone(),
            sequence: stored.sequence,
            found: stored.subject.clone(),
        });
    }
    check_ids(subject, stored)?;
    match previous {
        None => {
            if e.chain_index != 1 || !e.prev_hash.is_empty() {
                return Err(ChainError::MissingStart {
                    subject: subject.to_owned(),
                    event_id: e.id.clone(),
                    sequence: stored.sequence,
                    index: e.chain_index,
                });
            }
        }
        Some(prev) => {
            let expected = prev.index + 1;
            if e.chain_index != expected {
                return Err(ChainError::IndexGap {
                    subject: subject.to_owned(),
                    event_id: e.id.clone(),
                    sequence: stored.sequence,
                    expected,
                    found: e.chain_index,
                });
            }
            if e.prev_hash.as_slice() != prev.hash.as_slice() {
                return Err(ChainError::AlteredEvent {
                    subject: subject.to_owned(),
                    event_id: e.id.clone(),
                    sequence: stored.sequence,
                    previous_event_id: prev.event_id.clone(),
                    previous_sequence: prev.sequence,
                    recorded: hex::encode(&e.prev_hash),
                    actual: hex::encode(prev.hash),
                });
            }
        }
    }
    Ok(Link {
        event_id: e.id.clone(),
        sequence: stored.sequence,
        index: e.chain_index,
        hash: hash(&stored.raw),
    })
}

/// Checks one chain: `events` are every event of one subject in stream order,
/// from the first. Returns the head on success, or the first break.
pub fn verify_chain(events: &[StoredEvent]) -> Result<ChainSummary, ChainError> {
    let first = events.first().ok_or(ChainError::Empty)?;
    let subject = first.subject.clone();
    let mut previous: Option<Link> = None;
    for stored in events {
        previous = Some(check_next(&subject, previous.as_ref(), stored)?);
    }
    let last = events.last().unwrap_or(first);
    Ok(ChainSummary {
        subject,
        events: events.len(),
        head: ChainHead::of(last),
    })
}

/// Checks every chain of a log read in stream order, one event at a time,
/// keeping only the head of each chain (so a log of any length is checked
/// in memory proportional to its number of subjects). After a chain breaks,
/// its later events are not judged again: the first break is the finding.
#[derive(Debug, Default)]
pub struct ChainChecker {
    heads: std::collections::HashMap<String, Link>,
    broken: std::collections::HashSet<String>,
}

impl ChainChecker {
    pub fn new() -> ChainChecker {
        ChainChecker::default()
    }

    /// Checks the next event of the log (every subject is a chain).
    pub fn check(&mut self, stored: &StoredEvent) -> Result<(), ChainError> {
        if self.broken.contains(&stored.subject) {
            return Ok(());
        }
        match check_next(&stored.subject, self.heads.get(&stored.subject), stored) {
            Ok(link) => {
                self.heads.insert(stored.subject.clone(), link);
                Ok(())
            }
            Err(e) => {
                self.broken.insert(stored.subject.clone());
                Err(e)
            }
        }
    }

    /// Chains seen so far.
    pub fn chains(&self) -> usize {
        self.heads.len()
            + self
                .broken
                .iter()
                .filter(|s| !self.heads.contains_key(*s))
                .count()
    }
}

/// An event on a session or request subject must carry that id, so an event
/// cannot be filed under someone else's chain.
fn check_ids(subject: &str, stored: &StoredEvent) -> Result<(), ChainError> {
    let e = &stored.event;
    let (field, value, want) = match classify(subject) {
        SubjectKind::Session(id) => ("session_id", &e.session_id, id),
        // A grant's id is the approved request's: its events carry it.
        SubjectKind::Request(id) | SubjectKind::Decision(id) | SubjectKind::Grant(id) => {
            ("request_id", &e.request_id, id)
        }
        // A link's events name the Slack user of their subject.
        SubjectKind::SlackLink(team, user) => {
            use crate::proto::event::Body;
            let slack = match &e.body {
                Some(Body::SlackLinked(l)) => l.slack.as_ref(),
                Some(Body::SlackUnlinked(u)) => u.slack.as_ref(),
                _ => None,
            };
            let named = slack
                .map(|s| format!("{}.{}", s.team_id, s.user_id))
                .unwrap_or_default();
            let want = format!("{team}.{user}");
            if named == want {
                return Ok(());
            }
            return Err(ChainError::IdMismatch {
                subject: subject.to_owned(),
                event_id: e.id.clone(),
                sequence: stored.sequence,
                field: "slack",
                value: named,
            });
        }
        SubjectKind::Proxy(_) | SubjectKind::Checkpoint | SubjectKind::Other => return Ok(()),
    };
    if *value == want {
        Ok(())
    } else {
        Err(ChainError::IdMismatch {
            subject: subject.to_owned(),
            event_id: e.id.clone(),
            sequence: stored.sequence,
            field,
            value: value.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{self, event::Body};
    use prost::Message;

    const SUBJECT: &str = "airlock.v1.session.S1";

    fn chain(n: usize) -> Vec<StoredEvent> {
        let mut out: Vec<StoredEvent> = Vec::new();
        for i in 0..n {
            let mut e = proto::Event {
                id: format!("E{i}"),
                session_id: "S1".into(),
                body: Some(Body::SessionClosed(proto::SessionClosed::default())),
                ..Default::default()
            };
            let head = out.last().map(ChainHead::of).unwrap_or_else(ChainHead::empty);
            crate::link(&mut e, &head);
            out.push(stored(i as u64 + 1, SUBJECT, e));
        }
        out
    }

    fn stored(sequence: u64, subject: &str, event: proto::Event) -> StoredEvent {
        StoredEvent {
            sequence,
            subject: subject.into(),
            stored_at: time::OffsetDateTime::UNIX_EPOCH,
            raw: event.encode_to_vec().into(),
            event,
        }
    }

    #[test]
    fn an_intact_chain_verifies() {
        let c = chain(4);
        let summary = verify_chain(&c).expect("verifies");
        assert_eq!(
            (summary.events, summary.head.index, summary.head.sequence),
            (4, 4, 4)
        );
        assert_eq!(verify_chain(&[]), Err(ChainError::Empty));
    }

    #[test]
    fn an_inserted_event_is_caught() {
        let mut c = chain(3);
        let mut forged = c[1].event.clone();
        forged.id = "FORGED".into();
        c.insert(2, stored(99, SUBJECT, forged));
        assert!(
            matches!(verify_chain(&c), Err(ChainError::IndexGap { event_id, .. }) if event_id == "FORGED")
        );
    }

    #[test]
    fn a_chain_missing_its_start_is_caught() {
        let c = chain(3);
        assert!(
            matches!(verify_chain(&c[1..]), Err(ChainError::MissingStart { event_id, .. }) if event_id == "E1")
        );
    }

    #[test]
    fn an_event_filed_under_another_session_is_caught() {
        let mut c = chain(2);
        let mut e = c[1].event.clone();
        e.session_id = "S2".into();
        c[1] = stored(2, SUBJECT, e);
        assert!(matches!(
            verify_chain(&c),
            Err(ChainError::IdMismatch {
                field: "session_id",
                ..
            })
        ));
        let mut c = chain(2);
        c[1].subject = "airlock.v1.session.S2".into();
        assert!(matches!(verify_chain(&c), Err(ChainError::WrongSubject { .. })));
    }

    #[test]
    fn altering_the_first_event_names_it() {
        let mut c = chain(3);
        let mut e = c[0].event.clone();
        e.source = Some(proto::Source {
            id: "someone-else".into(),
            ..Default::default()
        });
        c[0] = stored(1, SUBJECT, e);
        match verify_chain(&c) {
            Err(ChainError::AlteredEvent {
                previous_event_id, ..
            }) => assert_eq!(previous_event_id, "E0"),
            other => panic!("want AlteredEvent, got {other:?}"),
        }
    }
}
