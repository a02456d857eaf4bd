//! Refusing a statement without breaking the protocol.
//!
//! How refusals keep PostgreSQL's semantics. A refused statement is never
//! sent upstream. In its place the proxy sends a stand-in PostgreSQL rejects
//! (a query naming an unknown column, or a statement or portal that does not
//! exist), named with a per-session marker no client can know or use, and
//! rewrites that error into the refusal the client should see. So the
//! refusal arrives in its exact place among pipelined responses, an
//! extended-protocol batch is skipped up to its Sync, and an open transaction
//! is aborted, just as PostgreSQL does for a statement it rejects.
//!
//! The marker ("airlock: statement refused <random>") is longer than
//! PostgreSQL's 63-byte identifiers, so no SQL PREPARE can create it; client
//! names with its prefix, and SQL text containing [`REFUSAL_TEXT`], are
//! refused.

use airlock_eventlog::proto::{self, statement_refused::Cause};
use airlock_policy::Kind;

use super::Ctx;
use super::inflight::InFlight;
use super::inflight::queue;
use super::to_upstream::ToUpstream;
use crate::codec::{Diagnostic, FeMessage};
use crate::error_response;
use crate::gate::Judgement;
use crate::metrics;

/// The text every refusal stand-in carries.
pub(super) const REFUSAL_TEXT: &str = "airlock: statement refused";

/// Names reserved for the proxy's stand-ins; a client may not use them.
const RESERVED_PREFIX: &str = "airlock:";

fn reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// A fresh marker for one session.
pub(super) fn new_marker() -> String {
    format!(
        "{REFUSAL_TEXT} {:032x}{:032x}",
        ulid::Ulid::new().random(),
        ulid::Ulid::new().random()
    )
}

impl Ctx {
    /// A query PostgreSQL rejects at parse time, naming the marker as a
    /// column. Kept within 63 bytes, so PostgreSQL neither truncates it nor
    /// says so in a NOTICE.
    pub(super) fn refusal_sql(&self) -> String {
        format!("SELECT \"{}\"", self.sql_marker())
    }

    /// An Execute of a portal that cannot exist (its name is the marker).
    pub(super) fn no_portal(&self) -> FeMessage {
        FeMessage::Execute {
            portal: self.marker.clone(),
            max_rows: 0,
        }
    }

    /// A Bind of a statement that cannot exist, to a portal that cannot.
    pub(super) fn no_statement(&self) -> FeMessage {
        FeMessage::Bind {
            portal: self.marker.clone(),
            statement: self.marker.clone(),
            param_formats: Vec::new(),
            params: Vec::new(),
            result_formats: Vec::new(),
        }
    }

    /// A Parse that fails at parse time (its SQL names the marker).
    pub(super) fn failing_parse(&self) -> FeMessage {
        FeMessage::Parse {
            name: self.marker.clone(),
            query: self.refusal_sql(),
            param_types: Vec::new(),
        }
    }

    /// A simple Query that fails: the stand-in for a Query or FunctionCall.
    pub(super) fn failing_query(&self) -> FeMessage {
        FeMessage::Query {
            sql: self.refusal_sql(),
        }
    }

    /// The part of the marker errors about the SQL stand-in name.
    pub(super) fn sql_marker(&self) -> &str {
        &self.marker[..self.marker.len().min(REFUSAL_TEXT.len() + 33)]
    }

    /// Refusals that depend on the session, not on the policy: SQL naming
    /// the proxy's stand-ins, and cursor commands while a portal holds a
    /// statement that is not simply allowed (FETCH would run it unapproved).
    pub(super) fn session_refusal(&self, sql: &str, judgement: &Judgement) -> Option<&'static str> {
        if sql.contains(REFUSAL_TEXT) {
            return Some("this text is reserved by Airlock");
        }
        if judgement.has(Kind::Cursor) && self.names().has_gated_portal() {
            return Some(
                "FETCH, MOVE and CLOSE are refused while this session has a portal bound to a statement that needs approval; Execute it instead",
            );
        }
        None
    }
}

/// PostgreSQL's longest name (NAMEDATALEN - 1).
const MAX_NAME_BYTES: usize = 63;

impl Ctx {
    /// Statement and portal names the proxy does not accept: longer than
    /// PostgreSQL compares (they could alias each other there and not here), or
    /// reserved for the proxy's stand-ins.
    pub(super) fn names_refused(&self, msg: &FeMessage) -> Option<&'static str> {
        let names: Vec<&str> = match msg {
            FeMessage::Parse { name, .. } => vec![name.as_str()],
            FeMessage::Bind {
                portal, statement, ..
            } => vec![portal.as_str(), statement.as_str()],
            FeMessage::Execute { portal, .. } => vec![portal.as_str()],
            FeMessage::Describe { name, .. } | FeMessage::Close { name, .. } => vec![name.as_str()],
            FeMessage::Query { .. }
            | FeMessage::Sync
            | FeMessage::Flush
            | FeMessage::Terminate
            | FeMessage::CopyData(_)
            | FeMessage::CopyDone
            | FeMessage::CopyFail { .. }
            | FeMessage::Password(_)
            | FeMessage::FunctionCall(_) => vec![],
        };
        if names.iter().any(|n| n.len() > MAX_NAME_BYTES) {
            return Some("statement and portal names longer than 63 bytes are refused");
        }
        if names.iter().any(|n| reserved(n)) {
            return Some("statement and portal names starting with \"airlock:\" are reserved");
        }
        None
    }
}

/// A statement refused, with what the log records of it.
pub(super) struct Refused {
    pub statement: proto::Statement,
    /// Counted as this cause in the metrics; by default, as `cause`.
    pub counted: Option<metrics::Refusal>,
    pub verdict: proto::Verdict,
    pub cause: Cause,
    pub diagnostic: Diagnostic,
    pub request_id: String,
}

impl ToUpstream {
    /// Records a refusal and sends `stand_in` upstream in the statement's
    /// place; the stand-in's error is rewritten into the refusal.
    pub(super) fn refuse(&mut self, r: Refused, stand_in: FeMessage) {
        self.refuse_checked(r, stand_in, None);
    }

    /// [`ToUpstream::refuse`], recording the bound check that refused it.
    pub(super) fn refuse_checked(
        &mut self,
        r: Refused,
        stand_in: FeMessage,
        bound: Option<proto::BoundCheck>,
    ) {
        let counted = r.counted.unwrap_or(match r.diagnostic.code {
            error_response::sqlstate::PROGRAM_LIMIT_EXCEEDED => metrics::Refusal::TooLarge,
            _ => metrics::Refusal::of(r.cause),
        });
        let diagnostic = self.ctx.refused(r, counted, bound);
        let boundary = matches!(stand_in, FeMessage::Query { .. });
        queue(&self.queue).push(InFlight::Substitute {
            diagnostic: Some(diagnostic),
            boundary,
        });
        stand_in.to_frame().encode(&mut self.out);
    }

    /// Refuses an extended-protocol message that refers to something
    /// Airlock did not judge: `stand_in` fails upstream in its place (its
    /// names are reserved, so they never exist) and its error is rewritten.
    pub(super) fn refuse_unjudged(&mut self, message: &str, stand_in: FeMessage) {
        // After a refusal earlier in this batch PostgreSQL skips this message
        // anyway: do not record a second refusal that nobody will see.
        if queue(&self.queue).refused_in_open_batch() {
            queue(&self.queue).push(InFlight::Substitute {
                diagnostic: None,
                boundary: false,
            });
            stand_in.to_frame().encode(&mut self.out);
            return;
        }
        let refused = Refused {
            statement: proto::Statement::default(),
            verdict: proto::Verdict {
                action: proto::verdict::Action::Deny as i32,
                ..Default::default()
            },
            cause: Cause::Policy,
            counted: None,
            diagnostic: error_response::denied(message),
            request_id: String::new(),
        };
        self.refuse(refused, stand_in);
    }
}
