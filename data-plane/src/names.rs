//! Prepared statements and portals as PostgreSQL has them, so the proxy
//! judges an Execute by what will really run.
//!
//! The client's messages are applied as pending operations and become
//! PostgreSQL's state only when PostgreSQL confirms them (ParseComplete,
//! BindComplete, CloseComplete). After an error PostgreSQL skips everything
//! up to the batch's Sync, so pending operations of that batch are dropped.
//! Lookups see pending operations first (in order, as PostgreSQL will apply
//! them), then confirmed state, and count every pending operation as one
//! that may or may not take effect: a name that could mean two different
//! statements is ambiguous, and the session waits for PostgreSQL's answers
//! before using it. At the end of a transaction PostgreSQL drops every
//! portal; so does this. Pure: no I/O.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::gate::Judgement;

/// Most statements or portals one session may have at once.
pub const MAX_NAMES: usize = 10_000;

/// A statement as parsed, with its judgement.
#[derive(Debug, Clone)]
pub struct Statement {
    pub text: String,
    pub judgement: Judgement,
    pub param_types: Vec<u32>,
    /// The exact Parse message.
    pub parse: Bytes,
}

/// A portal: a statement with its parameters, as bound.
#[derive(Debug, Clone)]
pub struct Portal {
    pub statement_name: String,
    /// The statement as it was when bound (a later Parse of the same name
    /// does not change what this portal runs).
    pub statement: Statement,
    pub parameters: Vec<airlock_eventlog::proto::Parameter>,
    /// The exact Bind message.
    pub bind: Bytes,
    /// For a statement that needs approval: the request under which its
    /// Bind was approved (such a portal exists only once approved).
    pub approved: Option<String>,
    /// Approved with row bounds: it runs once, under them.
    pub bounded: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Parse(String, Statement),
    Bind(String, Portal),
    Close {
        statement: bool,
        name: String,
    },
    /// A Sync or a simple Query: answered by ReadyForQuery.
    Boundary,
    /// Opaque text ran (unparsed text a record-only policy allowed, a DO
    /// block): it may have made or dropped any statement or portal, so no
    /// name from before it is known (see `after_unseen`), and once it is
    /// answered every older name is forgotten.
    Unseen,
}

/// What a name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<T> {
    One(T),
    Missing,
    /// Different statements are possible, depending on answers not yet seen.
    Ambiguous,
}

impl<T: Copy> Lookup<T> {
    fn among(candidates: Vec<T>, same: impl Fn(&T, &T) -> bool) -> Lookup<T> {
        match candidates.first() {
            None => Lookup::Missing,
            Some(first) if candidates.iter().all(|c| same(first, c)) => Lookup::One(*first),
            Some(_) => Lookup::Ambiguous,
        }
    }
}

impl<T> Lookup<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Lookup<U> {
        match self {
            Lookup::One(t) => Lookup::One(f(t)),
            Lookup::Missing => Lookup::Missing,
            Lookup::Ambiguous => Lookup::Ambiguous,
        }
    }

    pub fn one(self) -> Option<T> {
        match self {
            Lookup::One(t) => Some(t),
            Lookup::Missing | Lookup::Ambiguous => None,
        }
    }
}

#[derive(Debug, Default)]
pub struct Names {
    statements: HashMap<String, Statement>,
    portals: HashMap<String, Portal>,
    pending: VecDeque<Op>,
    /// A portal of a statement that is not simply allowed was forgotten
    /// (opaque text ran): it may still exist until the transaction ends.
    gated_forgotten: bool,
}

/// A lookup that reached opaque text: nothing older is known. With no
/// later definition in an earlier batch the name is missing (the opaque
/// text may have made it, unjudged); with one, that definition may still
/// fail (the opaque text may have taken the name), so the caller waits for
/// answers (the opaque text is in an earlier batch, whose Sync is sent).
fn after_unseen<T>(candidates: Vec<T>) -> Lookup<T> {
    if candidates.is_empty() {
        Lookup::Missing
    } else {
        Lookup::Ambiguous
    }
}

/// A portal whose statement is not simply allowed: SQL FETCH or MOVE on it
/// would run it unapproved.
fn gated(p: &Portal) -> bool {
    !matches!(p.statement.judgement.action, crate::gate::Action::Allow)
}

impl Names {
    pub fn parse(&mut self, name: String, statement: Statement) {
        self.pending.push_back(Op::Parse(name, statement));
    }

    pub fn bind(&mut self, portal: String, p: Portal) {
        self.pending.push_back(Op::Bind(portal, p));
    }

    pub fn close(&mut self, statement: bool, name: String) {
        self.pending.push_back(Op::Close { statement, name });
    }

    pub fn boundary(&mut self) {
        self.pending.push_back(Op::Boundary);
    }

    /// Opaque text is sent (a simple Query, ahead of its
    /// [`Names::boundary`], or an Execute of such a statement).
    pub fn unseen(&mut self) {
        self.pending.push_back(Op::Unseen);
    }

    /// Too many names, or too much pending: the client is misbehaving.
    pub fn over_limit(&self) -> bool {
        self.statements.len() > MAX_NAMES
            || self.portals.len() > MAX_NAMES
            || self.pending.len() > 4 * MAX_NAMES
    }

    /// The statement `name` may refer to. An operation earlier in the same
    /// batch decides it: if that operation fails, PostgreSQL skips the rest
    /// of the batch, so nothing can use the old meaning. Operations in
    /// earlier batches PostgreSQL has not answered yet may or may not take
    /// effect (a name may be taken, an earlier message may fail), so every
    /// candidate counts: if two different statements are possible the
    /// answer is [`Lookup::Ambiguous`] and the caller waits for answers.
    pub fn statement(&self, name: &str) -> Lookup<&Statement> {
        let mut candidates: Vec<&Statement> = Vec::new();
        let mut in_this_batch = true;
        for op in self.pending.iter().rev() {
            match op {
                Op::Boundary => in_this_batch = false,
                Op::Unseen => return after_unseen(candidates),
                Op::Parse(n, s) if n == name => {
                    if in_this_batch {
                        return Lookup::One(s);
                    }
                    candidates.push(s);
                }
                Op::Close {
                    statement: true,
                    name: n,
                } if n == name && in_this_batch => return Lookup::Missing,
                Op::Parse(..) | Op::Bind(..) | Op::Close { .. } => {}
            }
        }
        candidates.extend(self.statements.get(name));
        Lookup::among(candidates, |a, b| a.parse == b.parse)
    }

    /// The portal `name` may refer to (see [`Names::statement`]).
    pub fn portal(&self, name: &str) -> Lookup<&Portal> {
        let mut candidates: Vec<&Portal> = Vec::new();
        let mut in_this_batch = true;
        for op in self.pending.iter().rev() {
            match op {
                Op::Boundary => in_this_batch = false,
                Op::Unseen => return after_unseen(candidates),
                Op::Bind(n, p) if n == name => {
                    if in_this_batch {
                        return Lookup::One(p);
                    }
                    candidates.push(p);
                }
                Op::Close {
                    statement: false,
                    name: n,
                } if n == name && in_this_batch => return Lookup::Missing,
                Op::Parse(..) | Op::Bind(..) | Op::Close { .. } => {}
            }
        }
        candidates.extend(self.portals.get(name));
        Lookup::among(candidates, |a, b| {
            a.bind == b.bind && a.statement.parse == b.statement.parse
        })
    }

    /// Whether `name` is, or may become, a statement made through Parse.
    pub fn has_statement(&self, name: &str) -> bool {
        let key = airlock_policy::prepared_key(name);
        self.statements.keys().any(|n| n == key)
            || self
                .pending
                .iter()
                .any(|op| matches!(op, Op::Parse(n, _) if n == key))
    }

    /// SQL DEALLOCATE ALL or DISCARD ALL succeeded: PostgreSQL dropped every
    /// prepared statement (and DISCARD every portal).
    pub fn drop_all(&mut self) {
        if self.portals.values().any(gated) {
            self.gated_forgotten = true;
        }
        self.statements.clear();
        self.portals.clear();
    }

    /// Whether some portal (bound or being bound) runs a statement that is
    /// not simply allowed: SQL FETCH or MOVE on it would run it unapproved.
    pub fn has_gated_portal(&self) -> bool {
        self.gated_forgotten
            || self.portals.values().any(gated)
            || self
                .pending
                .iter()
                .any(|op| matches!(op, Op::Bind(_, p) if gated(p)))
    }

    /// ParseComplete, BindComplete or CloseComplete: the oldest pending
    /// operation took effect. False when the answer does not fit what was
    /// sent (a boundary was due, or nothing was pending): the proxy's model
    /// of PostgreSQL's names is then wrong, and the caller must end the
    /// session rather than go on judging by it.
    pub fn confirmed(&mut self) -> bool {
        // An Execute of opaque text is answered before what follows it.
        while matches!(self.pending.front(), Some(Op::Unseen))
            && self.pending.get(1).is_some_and(|op| !matches!(op, Op::Boundary))
        {
            self.pending.pop_front();
            self.drop_all();
        }
        match self.pending.pop_front() {
            Some(Op::Parse(name, s)) => {
                self.statements.insert(name, s);
            }
            Some(Op::Bind(name, p)) => {
                self.portals.insert(name, p);
            }
            Some(Op::Close {
                statement: true,
                name,
            }) => {
                self.statements.remove(&name);
            }
            Some(Op::Close {
                statement: false,
                name,
            }) => {
                self.portals.remove(&name);
            }
            Some(Op::Boundary | Op::Unseen) | None => {
                self.pending.clear();
                return false;
            }
        }
        true
    }

    /// ErrorResponse: PostgreSQL skips the rest of the batch.
    pub fn failed(&mut self) {
        while let Some(op) = self.pending.front() {
            if matches!(op, Op::Boundary) {
                break;
            }
            if matches!(op, Op::Unseen) {
                // It may have done anything before it failed.
                self.drop_all();
            }
            self.pending.pop_front();
        }
    }

    /// ReadyForQuery; `idle` when no transaction is open (portals are gone).
    pub fn ready(&mut self, idle: bool) {
        while let Some(op) = self.pending.pop_front() {
            match op {
                Op::Boundary => break,
                Op::Unseen => self.drop_all(),
                Op::Parse(..) | Op::Bind(..) | Op::Close { .. } => {}
            }
        }
        if idle {
            self.portals.clear();
            self.gated_forgotten = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::Action;

    fn stmt(text: &str) -> Statement {
        Statement {
            text: text.into(),
            judgement: Judgement::only(Action::Allow, Default::default()),
            param_types: vec![],
            parse: Bytes::from(text.to_owned()),
        }
    }

    fn portal(names: &Names, statement: &str) -> Portal {
        Portal {
            statement_name: statement.into(),
            statement: names.statement(statement).one().cloned().expect("statement"),
            parameters: vec![],
            bind: Bytes::new(),
            approved: None,
            bounded: false,
        }
    }

    #[test]
    fn a_portal_runs_the_statement_it_was_bound_to() {
        let mut n = Names::default();
        n.parse(String::new(), stmt("DELETE FROM orders"));
        let p = portal(&n, "");
        n.bind(String::new(), p);
        // The unnamed statement is replaced, the portal is not.
        n.parse(String::new(), stmt("SELECT 1"));
        assert_eq!(
            n.portal("").one().map(|p| p.statement.text.as_str()),
            Some("DELETE FROM orders")
        );
    }

    #[test]
    fn only_confirmed_operations_outlive_an_error() {
        let mut n = Names::default();
        n.parse("s".into(), stmt("DELETE FROM orders"));
        n.boundary();
        n.confirmed();
        n.ready(true);
        // Reusing the name fails in PostgreSQL: the old statement stays.
        n.parse("s".into(), stmt("SELECT 1"));
        n.boundary();
        n.failed();
        n.ready(true);
        assert_eq!(
            n.statement("s").one().map(|s| s.text.as_str()),
            Some("DELETE FROM orders")
        );
    }

    #[test]
    fn close_and_transaction_end_forget() {
        let mut n = Names::default();
        n.parse("s".into(), stmt("SELECT 1"));
        let p = portal(&n, "s");
        n.bind("p".into(), p);
        n.boundary();
        n.confirmed();
        n.confirmed();
        n.ready(false);
        assert!(
            n.portal("p").one().is_some(),
            "portal lives while the transaction is open"
        );
        n.close(true, "s".into());
        n.boundary();
        n.confirmed();
        n.ready(true);
        assert!(n.statement("s").one().is_none(), "closed once confirmed");
        assert!(n.portal("p").one().is_none(), "portals end with the transaction");
    }
}

#[cfg(test)]
mod ambiguity {
    use super::*;
    use crate::gate::Action;

    fn stmt(text: &str) -> Statement {
        Statement {
            text: text.into(),
            judgement: Judgement::only(Action::Allow, Default::default()),
            param_types: vec![],
            parse: Bytes::from(text.to_owned()),
        }
    }

    /// `name` parsed as `text` in a batch PostgreSQL has answered.
    fn known(n: &mut Names, name: &str, text: &str) {
        n.parse(name.into(), stmt(text));
        n.boundary();
        n.confirmed();
        n.ready(true);
    }

    #[test]
    fn a_redefinition_not_yet_answered_is_ambiguous() {
        let mut n = Names::default();
        known(&mut n, "s", "DELETE FROM orders");
        // Pipelined: a new Parse of the name, and in a later batch a Bind,
        // before PostgreSQL has answered either.
        n.parse("s".into(), stmt("SELECT 1"));
        n.boundary();
        assert!(matches!(n.statement("s"), Lookup::Ambiguous));
        // Once PostgreSQL refused the redefinition, the name is clear again.
        n.failed();
        n.ready(true);
        assert_eq!(
            n.statement("s").one().map(|s| s.text.as_str()),
            Some("DELETE FROM orders")
        );
    }

    #[test]
    fn behind_opaque_text_an_old_name_is_missing_and_a_later_one_waits() {
        // Review: a DO block may PREPARE any name (a DELETE as `t`), so a
        // Parse of `t` pipelined behind it may fail for that reason.
        let mut n = Names::default();
        known(&mut n, "s", "SELECT 1");
        n.unseen();
        // In the opaque text's own batch, `s` is missing, not waited on.
        assert!(matches!(n.statement("s"), Lookup::Missing));
        n.boundary();
        n.parse("t".into(), stmt("SELECT 2"));
        n.boundary();
        // `t` as parsed in the earlier batch, or whatever the opaque text
        // made of it: wait for PostgreSQL's answers.
        assert!(matches!(n.statement("t"), Lookup::Ambiguous));
        assert!(matches!(n.statement("s"), Lookup::Missing));
        // The opaque text is answered; the Parse of `t` failed.
        n.ready(true);
        n.failed();
        n.ready(true);
        assert!(matches!(n.statement("t"), Lookup::Missing));
        assert!(matches!(n.statement("s"), Lookup::Missing));
    }

    #[test]
    fn an_answer_that_fits_nothing_sent_is_out_of_step() {
        let mut n = Names::default();
        assert!(!n.confirmed(), "nothing was pending");
        n.boundary();
        n.parse("s".into(), stmt("SELECT 1"));
        assert!(!n.confirmed(), "a boundary was due, not a ParseComplete");
        n.parse("s".into(), stmt("SELECT 1"));
        assert!(n.confirmed());
        assert!(matches!(n.statement("s"), Lookup::One(_)));
    }
}
