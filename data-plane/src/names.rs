//! Prepared statements and portals as PostgreSQL has them, so the proxy
//! judges an Execute by what will really run.
//!
//! The client's messages are applied as pending operations and become
//! PostgreSQL's state only when PostgreSQL confirms them (ParseComplete,
//! BindComplete, CloseComplete). After an error PostgreSQL skips everything
//! up to the batch's Sync, so pending operations of that batch are dropped.
//! Lookups see pending operations first (in order, as PostgreSQL will apply
//! them), then confirmed state. A lookup can only be wrong about messages
//! that follow an error in the same batch, and PostgreSQL runs none of
//! those. At the end of a transaction PostgreSQL drops every portal; so does
//! this. Pure: no I/O.

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
}

#[derive(Debug, Default)]
pub struct Names {
    statements: HashMap<String, Statement>,
    portals: HashMap<String, Portal>,
    pending: VecDeque<Op>,
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

    /// Too many names, or too much pending: the client is misbehaving.
    pub fn over_limit(&self) -> bool {
        self.statements.len() > MAX_NAMES
            || self.portals.len() > MAX_NAMES
            || self.pending.len() > 4 * MAX_NAMES
    }

    /// The statement `name` refers to once pending operations apply.
    pub fn statement(&self, name: &str) -> Option<&Statement> {
        for op in self.pending.iter().rev() {
            match op {
                Op::Parse(n, s) if n == name => return Some(s),
                Op::Close {
                    statement: true,
                    name: n,
                } if n == name => return None,
                Op::Parse(..) | Op::Bind(..) | Op::Close { .. } | Op::Boundary => {}
            }
        }
        self.statements.get(name)
    }

    /// The portal `name` refers to once pending operations apply.
    pub fn portal(&self, name: &str) -> Option<&Portal> {
        for op in self.pending.iter().rev() {
            match op {
                Op::Bind(n, p) if n == name => return Some(p),
                Op::Close {
                    statement: false,
                    name: n,
                } if n == name => return None,
                Op::Parse(..) | Op::Bind(..) | Op::Close { .. } | Op::Boundary => {}
            }
        }
        self.portals.get(name)
    }

    /// ParseComplete, BindComplete or CloseComplete: the oldest pending
    /// operation took effect.
    pub fn confirmed(&mut self) {
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
            Some(Op::Boundary) => {
                // Out of step: a completion where a boundary was expected.
                // Forget what is pending; lookups then fail closed.
                self.pending.clear();
            }
            None => {}
        }
    }

    /// ErrorResponse: PostgreSQL skips the rest of the batch.
    pub fn failed(&mut self) {
        while let Some(op) = self.pending.front() {
            if matches!(op, Op::Boundary) {
                break;
            }
            self.pending.pop_front();
        }
    }

    /// ReadyForQuery; `idle` when no transaction is open (portals are gone).
    pub fn ready(&mut self, idle: bool) {
        while let Some(op) = self.pending.pop_front() {
            if matches!(op, Op::Boundary) {
                break;
            }
        }
        if idle {
            self.portals.clear();
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
            judgement: Judgement {
                action: Action::Allow,
                verdict: Default::default(),
                on_success: None,
            },
            param_types: vec![],
            parse: Bytes::new(),
        }
    }

    fn portal(names: &Names, statement: &str) -> Portal {
        Portal {
            statement_name: statement.into(),
            statement: names.statement(statement).cloned().expect("statement"),
            parameters: vec![],
            bind: Bytes::new(),
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
            n.portal("").map(|p| p.statement.text.as_str()),
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
            n.statement("s").map(|s| s.text.as_str()),
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
            n.portal("p").is_some(),
            "portal lives while the transaction is open"
        );
        n.close(true, "s".into());
        assert!(n.statement("s").is_none(), "a pending Close hides it");
        n.boundary();
        n.confirmed();
        n.ready(true);
        assert!(n.statement("s").is_none());
        assert!(n.portal("p").is_none(), "portals end with the transaction");
    }
}
