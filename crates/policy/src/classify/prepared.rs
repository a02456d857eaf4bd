//! SQL-level prepared statements of one session (`PREPARE name AS ...`,
//! `EXECUTE name`, `DEALLOCATE`). The proxy keeps one per session and applies
//! a statement's [`PreparedChange`]s once it has run; classification reads it
//! so that `EXECUTE name` is judged as what was prepared.
//!
//! Protocol-level (extended query) statements are not kept here: the proxy
//! sees their text in the Parse message and classifies that.

use std::collections::HashMap;

use super::{Effect, SessionNames};

/// A change a statement makes to its session's prepared statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreparedChange {
    Prepare {
        name: String,
        effects: Vec<Effect>,
        /// How the session's names resolved when it was prepared: the
        /// effects hold only while they still resolve so.
        names: SessionNames,
    },
    Deallocate {
        name: String,
    },
    /// `DEALLOCATE ALL`, `DISCARD ALL`.
    DeallocateAll,
}

/// Prepared statements by name (normalised as PostgreSQL does: unquoted
/// names lowercase), with the effects of what each one runs.
#[derive(Debug, Clone, Default)]
pub struct PreparedStatements {
    by_name: HashMap<String, (Vec<Effect>, SessionNames)>,
}

impl PreparedStatements {
    pub fn new() -> Self {
        Self::default()
    }

    /// The effects of `EXECUTE name`, if this session prepared `name`,
    /// and how its names resolved then.
    pub fn get(&self, name: &str) -> Option<(&[Effect], SessionNames)> {
        self.by_name
            .get(key(name))
            .map(|(e, names)| (e.as_slice(), *names))
    }

    /// Applies what a statement did, once it has run successfully.
    pub fn apply(&mut self, changes: &[PreparedChange]) {
        for change in changes {
            match change {
                PreparedChange::Prepare { name, effects, names } => {
                    self.by_name
                        .insert(key(name).to_owned(), (effects.clone(), *names));
                }
                PreparedChange::Deallocate { name } => {
                    self.by_name.remove(key(name));
                }
                PreparedChange::DeallocateAll => self.by_name.clear(),
            }
        }
    }

    /// After a statement with these changes failed: PostgreSQL may have
    /// applied some of them (they are not transactional), so every name
    /// they touch is forgotten, and an `EXECUTE` of it is refused.
    pub fn forget(&mut self, changes: &[PreparedChange]) {
        for change in changes {
            match change {
                PreparedChange::Prepare { name, .. } | PreparedChange::Deallocate { name } => {
                    self.by_name.remove(key(name));
                }
                PreparedChange::DeallocateAll => self.by_name.clear(),
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// PostgreSQL keeps the first 63 bytes of a name (cut at a character
/// boundary): longer names that share them are the same statement.
pub fn key(name: &str) -> &str {
    crate::ident::truncate(name)
}
