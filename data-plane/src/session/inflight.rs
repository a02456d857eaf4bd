//! What was sent upstream and not yet answered, in order, and how
//! PostgreSQL's answers are matched to it. Pure: no I/O.
//!
//! The rules, from PostgreSQL's protocol: a simple Query is answered by one
//! ReadyForQuery (with any number of command completions and errors before
//! it); an Execute by its CommandComplete, EmptyQueryResponse,
//! PortalSuspended or ErrorResponse; after an error in an extended batch
//! PostgreSQL skips everything up to the Sync, whose ReadyForQuery ends the
//! batch. A refusal's stand-in fails upstream where the refused message
//! would have been answered.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use airlock_eventlog::proto;

use crate::codec::Diagnostic;
use crate::record::Slot;

/// A statement sent upstream and not yet answered, in order.
pub(super) enum InFlight {
    /// A simple-protocol Query: answered by one ReadyForQuery.
    Simple(Running),
    /// An extended-protocol Execute: answered by CommandComplete (or an
    /// error); skipped if an earlier message of its batch failed.
    Extended(Running),
    /// A Sync: its ReadyForQuery ends a batch. `own`: the proxy's, sent to
    /// end a batch before a Query the client sent inside it; its
    /// ReadyForQuery is not the client's.
    Sync { own: bool },
    /// A refusal's stand-in; `boundary` for a simple Query (or a
    /// FunctionCall), whose ReadyForQuery ends it. `diagnostic` is what the
    /// client sees instead of the stand-in's error (none when PostgreSQL
    /// skips the stand-in after an earlier refusal of its batch).
    Substitute {
        diagnostic: Option<Diagnostic>,
        boundary: bool,
    },
    /// A simple Query of the proxy's own (bounded execution): its answer
    /// goes to `reply`, never to the client.
    Own(Own),
}

/// A Query of the proxy's own, and what PostgreSQL answered so far.
pub(super) struct Own {
    pub reply: tokio::sync::oneshot::Sender<OwnAnswer>,
    pub answer: OwnAnswer,
}

/// What PostgreSQL answered a Query of the proxy's own.
#[derive(Debug, Default)]
pub(super) struct OwnAnswer {
    /// The last statement's rows, as text.
    pub rows: Vec<crate::upstream::query::Row>,
    /// The first error: SQLSTATE and message, and the message itself.
    pub error: Option<(String, String)>,
    pub error_frame: Option<bytes::Bytes>,
    /// The ReadyForQuery status: b'I', b'T' or b'E'.
    pub status: u8,
}

/// An approved statement run under bounds: PostgreSQL's whole answer,
/// held back from the client until its rows are counted.
pub(super) struct HeldBack {
    pub running: Running,
    /// Every message PostgreSQL sent for it, up to its ReadyForQuery.
    pub frames: bytes::BytesMut,
    /// The answer outgrew what the proxy holds back: `frames` is not it.
    pub overflowed: bool,
    /// Its ReadyForQuery status.
    pub status: u8,
}

/// A statement PostgreSQL is running, and what is learnt of it.
pub(super) struct Running {
    pub statement: proto::Statement,
    pub verdict: proto::Verdict,
    pub request_id: String,
    pub started: Instant,
    pub tags: Vec<String>,
    /// (SQLSTATE, message) of its error.
    pub error: Option<(String, String)>,
    /// Room for the record, reserved before the statement was sent.
    pub slot: Option<Slot>,
    /// What the gate learns once the statement succeeded (SQL PREPARE).
    pub on_finish: Option<crate::gate::OnFinish>,
    /// DEALLOCATE ALL or DISCARD ALL: on success, forget every statement.
    pub drops_all: bool,
    /// It may change a setting that decides how PostgreSQL reads the next
    /// statement's text (see [`may_change_reading`]).
    pub may_change_reading: bool,
    /// A simple Query with COPY FROM STDIN: its ReadyForQuery, and only
    /// its, ends COPY mode (a ReadyForQuery of something sent before it
    /// may arrive after the proxy entered COPY mode for it).
    pub copies_in: bool,
    /// Run under bounds: PostgreSQL's answer is held back and handed here
    /// at its ReadyForQuery, instead of going to the client.
    pub held_back: Option<tokio::sync::oneshot::Sender<HeldBack>>,
    /// The bound check it ran under, for its record.
    pub bound: Option<proto::BoundCheck>,
}

/// Whether a statement of these kinds may change how PostgreSQL reads
/// later statements (`client_encoding`, `standard_conforming_strings`),
/// which PostgreSQL reports only in a ParameterStatus just before its
/// ReadyForQuery. Reads, SHOW, cursors and transaction control run no code
/// of their own; anything else may run a function or trigger that calls
/// `set_config`.
pub(super) fn may_change_reading(kinds: &[airlock_policy::Kind]) -> bool {
    use airlock_policy::Kind;
    !kinds
        .iter()
        .all(|k| matches!(k, Kind::Select | Kind::Show | Kind::Transaction | Kind::Cursor))
}

/// Whether PostgreSQL reads `text` the same way under every client
/// encoding and string setting it could be switched to: every client
/// encoding keeps ASCII as ASCII (only a byte of 0x80 or more starts a
/// multibyte character, which may swallow a backslash or quote after it),
/// and the string settings change only what a backslash means.
pub(super) fn reads_the_same_everywhere(text: &str) -> bool {
    text.bytes().all(|b| b < 0x80 && b != b'\\')
}

/// What a statement whose reading depends on settings must wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadingWait {
    /// Nothing unanswered may change the settings: send it.
    Clear,
    /// Something that may is unanswered, and a ReadyForQuery will end it:
    /// wait for PostgreSQL's answer (and its ParameterStatus) first.
    Ready,
    /// Something that may is in the open extended batch, before any Sync:
    /// no answer can be waited for; the statement is refused.
    OpenBatch,
}

impl Running {
    pub fn new(
        statement: proto::Statement,
        judgement: &crate::gate::Judgement,
        request_id: String,
        slot: Option<Slot>,
    ) -> Running {
        Running {
            statement,
            verdict: judgement.verdict.clone(),
            request_id,
            started: Instant::now(),
            tags: Vec::new(),
            error: None,
            slot,
            on_finish: judgement.on_finish.clone(),
            drops_all: judgement.drops_all,
            may_change_reading: may_change_reading(&judgement.kinds),
            copies_in: false,
            held_back: None,
            bound: None,
        }
    }
}

/// What a ReadyForQuery ends.
pub(super) enum Ready {
    /// A simple Query, to be recorded.
    Query(Box<Running>),
    /// A batch, a refused Query's stand-in, or nothing known.
    Batch,
    /// The batch the proxy ended with its own Sync: the client did not ask
    /// for this ReadyForQuery and does not see it.
    OwnSync,
    /// A Query of the proxy's own.
    Own(Own),
}

/// The in-flight queue, shared by the two directions of a session.
pub(super) type Queue = Arc<Mutex<InFlightQueue>>;

/// Locks the queue (a panic elsewhere does not poison it for the rest).
pub(super) fn queue(q: &Queue) -> std::sync::MutexGuard<'_, InFlightQueue> {
    q.lock().unwrap_or_else(|p| p.into_inner())
}

/// The queue of what PostgreSQL has yet to answer.
#[derive(Default)]
pub(super) struct InFlightQueue {
    items: VecDeque<InFlight>,
    /// An Execute that may change how text is read was sent in the open
    /// batch. PostgreSQL reports such a change only with the ReadyForQuery
    /// that ends the batch, not with the Execute's completion.
    batch_changes_reading: bool,
    /// For each Sync in `items`, in order: whether its batch ran one.
    syncs_after_change: VecDeque<bool>,
    /// A held-back Execute PostgreSQL skipped (an earlier error in its
    /// batch), for the reading side, which waits for it.
    skipped_held: Option<Running>,
}

impl InFlightQueue {
    pub fn push(&mut self, item: InFlight) {
        match &item {
            InFlight::Extended(r) if r.may_change_reading => self.batch_changes_reading = true,
            InFlight::Sync { .. } => {
                self.syncs_after_change.push_back(self.batch_changes_reading);
                self.batch_changes_reading = false;
            }
            InFlight::Simple(_) | InFlight::Extended(_) | InFlight::Substitute { .. } | InFlight::Own(_) => {}
        }
        self.items.push_back(item);
    }

    /// A command completed (its tag, or EMPTY / SUSPENDED). Returns the
    /// extended-protocol statement this finishes; a simple Query keeps
    /// collecting tags until its ReadyForQuery.
    pub fn completed(&mut self, tag: String) -> Option<Running> {
        self.answered(|r| r.tags.push(tag))
    }

    /// PostgreSQL reported an error (that is not a stand-in's).
    pub fn failed(&mut self, error: (String, String)) -> Option<Running> {
        self.answered(|r| r.error = Some(error))
    }

    fn answered(&mut self, note: impl FnOnce(&mut Running)) -> Option<Running> {
        match self.items.front_mut() {
            Some(InFlight::Extended(_)) => match self.items.pop_front() {
                Some(InFlight::Extended(mut r)) => {
                    note(&mut r);
                    Some(r)
                }
                _ => None,
            },
            Some(InFlight::Simple(r)) => {
                note(r);
                None
            }
            Some(InFlight::Sync { .. })
            | Some(InFlight::Substitute { .. })
            | Some(InFlight::Own(_))
            | None => None,
        }
    }

    /// A held-back Execute that PostgreSQL skipped, once.
    pub fn take_skipped_held(&mut self) -> Option<Running> {
        self.skipped_held.take()
    }

    /// A Query of the proxy's own is what PostgreSQL answers now.
    pub fn own_front(&mut self) -> Option<&mut Own> {
        match self.items.front_mut() {
            Some(InFlight::Own(o)) => Some(o),
            _ => None,
        }
    }

    /// A statement run under bounds is what PostgreSQL answers now: its
    /// answer is held back.
    pub fn held_back_front(&self) -> bool {
        matches!(
            self.items.front(),
            Some(InFlight::Simple(r) | InFlight::Extended(r)) if r.held_back.is_some()
        )
    }

    /// An error naming this session's marker: if a stand-in is what
    /// PostgreSQL answers now, the refusal the client sees in its place.
    pub fn stand_in_failed(&mut self) -> Option<Diagnostic> {
        match self.items.front_mut() {
            Some(InFlight::Substitute { diagnostic, .. }) => diagnostic.take(),
            _ => None,
        }
    }

    /// ReadyForQuery: the end of a Query or of a batch. Settles everything
    /// up to it; returns what it ends. Execute statements still queued
    /// before it were skipped after an error.
    pub fn ready(&mut self) -> Ready {
        while let Some(item) = self.items.pop_front() {
            match item {
                InFlight::Simple(r) => return Ready::Query(Box::new(r)),
                InFlight::Sync { own } => {
                    self.syncs_after_change.pop_front();
                    return if own { Ready::OwnSync } else { Ready::Batch };
                }
                InFlight::Substitute { boundary: true, .. } => return Ready::Batch,
                InFlight::Own(o) => return Ready::Own(o),
                InFlight::Extended(mut r) if r.held_back.is_some() => {
                    r.error = Some((
                        "26000".into(),
                        "PostgreSQL skipped it after an earlier error in its batch".into(),
                    ));
                    self.skipped_held = Some(r);
                }
                InFlight::Extended(_) | InFlight::Substitute { boundary: false, .. } => {}
            }
        }
        Ready::Batch
    }

    /// Whether a statement whose reading depends on the session's settings
    /// may be sent now (see [`ReadingWait`]).
    pub fn reading_wait(&self) -> ReadingWait {
        if self.batch_changes_reading {
            ReadingWait::OpenBatch
        } else if self.syncs_after_change.iter().any(|c| *c)
            || self
                .items
                .iter()
                .any(|i| matches!(i, InFlight::Simple(r) if r.may_change_reading))
        {
            ReadingWait::Ready
        } else {
            ReadingWait::Clear
        }
    }

    /// Whether a refusal earlier in the open batch will already fail it:
    /// PostgreSQL then skips later messages, so a second refusal would
    /// never be seen and is not recorded.
    pub fn refused_in_open_batch(&self) -> bool {
        self.items
            .iter()
            .rev()
            .take_while(|i| {
                !matches!(
                    i,
                    InFlight::Sync { .. }
                        | InFlight::Simple(_)
                        | InFlight::Substitute { boundary: true, .. }
                        | InFlight::Own(_)
                )
            })
            .any(|i| {
                matches!(
                    i,
                    InFlight::Substitute {
                        diagnostic: Some(_),
                        ..
                    }
                )
            })
    }

    /// Every statement still unanswered (the session is ending).
    pub fn drain_running(&mut self) -> Vec<Running> {
        self.batch_changes_reading = false;
        self.syncs_after_change.clear();
        self.items
            .drain(..)
            .filter_map(|i| match i {
                InFlight::Simple(r) | InFlight::Extended(r) => Some(r),
                InFlight::Sync { .. } | InFlight::Substitute { .. } | InFlight::Own(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    impl Ready {
        fn query(self) -> Option<Running> {
            match self {
                Ready::Query(r) => Some(*r),
                Ready::Batch | Ready::OwnSync | Ready::Own(_) => None,
            }
        }
    }

    #[test]
    fn the_proxys_own_sync_is_told_apart_from_the_clients() {
        let mut q = InFlightQueue::default();
        q.push(InFlight::Sync { own: true });
        q.push(InFlight::Simple(running("SELECT 42")));
        q.push(InFlight::Sync { own: false });
        assert!(matches!(q.ready(), Ready::OwnSync));
        assert_eq!(text(q.ready().query()), Some("SELECT 42".into()));
        assert!(matches!(q.ready(), Ready::Batch));
    }

    use super::*;
    use crate::codec::Severity;

    fn running(text: &str) -> Running {
        Running {
            statement: proto::Statement {
                text: text.into(),
                ..Default::default()
            },
            verdict: proto::Verdict::default(),
            request_id: String::new(),
            started: Instant::now(),
            tags: Vec::new(),
            error: None,
            slot: None,
            on_finish: None,
            drops_all: false,
            may_change_reading: false,
            copies_in: false,
            held_back: None,
            bound: None,
        }
    }

    fn changing(text: &str) -> Running {
        Running {
            may_change_reading: true,
            ..running(text)
        }
    }

    #[test]
    fn text_waits_only_behind_an_unanswered_statement_that_may_change_settings() {
        let mut q = InFlightQueue::default();
        assert_eq!(q.reading_wait(), ReadingWait::Clear);
        q.push(InFlight::Simple(running("SELECT 1")));
        assert_eq!(q.reading_wait(), ReadingWait::Clear, "a read changes nothing");
        q.push(InFlight::Simple(changing("SELECT sneaky()")));
        assert_eq!(q.reading_wait(), ReadingWait::Ready);
        q.ready().query();
        q.ready().query();
        assert_eq!(q.reading_wait(), ReadingWait::Clear, "answered");
        // Extended: nothing to wait for until a Sync follows it, even once
        // it completed (the change is reported only with ReadyForQuery).
        q.push(InFlight::Extended(changing("SELECT sneaky()")));
        assert_eq!(q.reading_wait(), ReadingWait::OpenBatch);
        assert!(q.completed("SELECT 1".into()).is_some());
        assert_eq!(
            q.reading_wait(),
            ReadingWait::OpenBatch,
            "completed, batch still open"
        );
        q.push(InFlight::Sync { own: false });
        assert_eq!(q.reading_wait(), ReadingWait::Ready);
        q.push(InFlight::Extended(running("SELECT 1")));
        q.push(InFlight::Sync { own: false });
        assert_eq!(
            q.reading_wait(),
            ReadingWait::Ready,
            "the changing batch is unanswered"
        );
        q.ready().query();
        assert_eq!(q.reading_wait(), ReadingWait::Clear, "its ReadyForQuery came");
        q.push(InFlight::Extended(changing("INSERT ...")));
        assert_eq!(q.reading_wait(), ReadingWait::OpenBatch);
    }

    #[test]
    fn which_kinds_and_texts_can_change_the_reading() {
        use airlock_policy::Kind;
        assert!(!may_change_reading(&[Kind::Select, Kind::Transaction]));
        assert!(!may_change_reading(&[]));
        for k in [
            Kind::Function,
            Kind::Insert,
            Kind::Set,
            Kind::Call,
            Kind::Do,
            Kind::Execute,
        ] {
            assert!(may_change_reading(&[Kind::Select, k]), "{k}");
        }
        assert!(reads_the_same_everywhere("SELECT 'plain' -- ok"));
        assert!(!reads_the_same_everywhere("SELECT E'\\''"));
        assert!(!reads_the_same_everywhere("SELECT 'Ё'"));
    }

    fn refusal() -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code: "42501",
            message: "refused".into(),
            detail: None,
            hint: None,
        }
    }

    fn text(r: Option<Running>) -> Option<String> {
        r.map(|r| r.statement.text)
    }

    #[test]
    fn a_simple_query_collects_every_tag_until_ready() {
        let mut q = InFlightQueue::default();
        q.push(InFlight::Simple(running("SELECT 1; SELECT 2")));
        assert!(q.completed("SELECT 1".into()).is_none());
        assert!(q.completed("SELECT 1".into()).is_none());
        let r = q.ready().query().expect("the query");
        assert_eq!(r.tags, ["SELECT 1", "SELECT 1"]);
        assert!(q.ready().query().is_none());
    }

    #[test]
    fn an_execute_is_finished_by_its_completion_and_the_sync_by_ready() {
        let mut q = InFlightQueue::default();
        q.push(InFlight::Extended(running("a")));
        q.push(InFlight::Extended(running("b")));
        q.push(InFlight::Sync { own: false });
        assert_eq!(text(q.completed("DELETE 1".into())), Some("a".into()));
        let b = q.failed(("23505".into(), "dup".into())).expect("b");
        assert_eq!(b.error.as_ref().map(|e| e.0.as_str()), Some("23505"));
        assert!(q.ready().query().is_none());
        assert!(q.drain_running().is_empty());
    }

    #[test]
    fn executes_skipped_after_an_error_are_dropped_at_ready() {
        let mut q = InFlightQueue::default();
        q.push(InFlight::Extended(running("fails")));
        q.push(InFlight::Extended(running("skipped")));
        q.push(InFlight::Sync { own: false });
        q.push(InFlight::Simple(running("next")));
        assert!(q.failed(("42P01".into(), "no table".into())).is_some());
        assert!(
            q.ready().query().is_none(),
            "the Sync's ReadyForQuery ends the batch"
        );
        assert_eq!(text(q.ready().query()), Some("next".into()));
    }

    #[test]
    fn a_stand_in_error_becomes_its_refusal_once() {
        let mut q = InFlightQueue::default();
        q.push(InFlight::Substitute {
            diagnostic: Some(refusal()),
            boundary: true,
        });
        assert_eq!(q.stand_in_failed().map(|d| d.message), Some("refused".into()));
        assert!(q.stand_in_failed().is_none());
        assert!(q.ready().query().is_none());
    }

    #[test]
    fn a_second_refusal_in_a_batch_is_known_to_be_skipped() {
        let mut q = InFlightQueue::default();
        assert!(!q.refused_in_open_batch());
        q.push(InFlight::Substitute {
            diagnostic: Some(refusal()),
            boundary: false,
        });
        assert!(q.refused_in_open_batch());
        q.push(InFlight::Sync { own: false });
        assert!(!q.refused_in_open_batch(), "a Sync opens a new batch");
    }

    #[test]
    fn errors_outside_any_statement_change_nothing() {
        let mut q = InFlightQueue::default();
        assert!(q.failed(("08P01".into(), "x".into())).is_none());
        q.push(InFlight::Sync { own: false });
        assert!(q.completed("SELECT 1".into()).is_none());
        assert!(q.stand_in_failed().is_none());
        assert!(q.ready().query().is_none());
    }
}
