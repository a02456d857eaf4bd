//! Statement kinds: the names operators write in a rule's `match:` and the
//! names a verdict reports. Owns parsing and printing of those names, nothing
//! about how a statement is classified.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

macro_rules! kinds {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// What one effect of a statement does. Names follow PostgreSQL's
        /// command tags where there is one.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $($(#[$doc])* $variant,)*
        }

        impl Kind {
            /// Every kind, in the order they are documented.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant,)*];

            /// The canonical name, as written in `match:` and reported in verdicts.
            pub fn name(self) -> &'static str {
                match self {
                    $(Kind::$variant => $name,)*
                }
            }
        }
    };
}

kinds! {
    /// Reads rows (SELECT, VALUES, TABLE, plain EXPLAIN, SHOW-like reads of
    /// tables). `EXPLAIN EXECUTE name` is what `EXECUTE name` is.
    Select => "SELECT",
    Insert => "INSERT",
    Update => "UPDATE",
    Delete => "DELETE",
    Merge => "MERGE",
    Truncate => "TRUNCATE",
    /// Any CREATE, including CREATE TABLE AS and SELECT INTO.
    Create => "CREATE",
    Alter => "ALTER",
    Drop => "DROP",
    Grant => "GRANT",
    Revoke => "REVOKE",
    /// Any COPY; COPY FROM also carries an INSERT effect.
    Copy => "COPY",
    Call => "CALL",
    /// Anonymous code blocks: always opaque to classification.
    Do => "DO",
    /// A call of a function not known to be read-only: side effects
    /// (pg_terminate_backend, setval, set_config, pg_advisory_lock, lo_export,
    /// dblink_exec, ...) or user-defined code we cannot see into, including
    /// a cast to a type that is not built in (`cast to t`) and a custom
    /// operator (`operator`). Never covered by `match: SELECT`; allow
    /// specific ones with `functions:`.
    Function => "FUNCTION",
    /// COPY TO/FROM PROGRAM: runs a shell command on the database server.
    Program => "PROGRAM",
    /// COPY TO/FROM a file on the database server.
    ServerFile => "SERVER FILE",
    /// SET ROLE, SET SESSION AUTHORIZATION, RESET ROLE, their `SET role = ...`
    /// forms (any case, quoted or not) and `set_config('role', ...)`.
    SetRole => "SET ROLE",
    AlterSystem => "ALTER SYSTEM",
    Lock => "LOCK",
    /// Other session settings: SET, RESET (search_path included), SET SESSION
    /// CHARACTERISTICS, and the READ WRITE forms of BEGIN, START TRANSACTION
    /// and SET TRANSACTION (they undo `default_transaction_read_only`).
    Set => "SET",
    /// A change of a setting that makes PostgreSQL read statement text
    /// differently from the proxy (`client_encoding` to SJIS,
    /// `standard_conforming_strings` off, ...), by SET, set_config or
    /// ALTER ... SET. The proxy refuses it whatever the policy says.
    ParserSetting => "PARSER SETTING",
    Show => "SHOW",
    /// `EXECUTE name` (or `EXPLAIN EXECUTE name`) whose PREPARE this session
    /// has not seen.
    Execute => "EXECUTE",
    Deallocate => "DEALLOCATE",
    /// BEGIN, START TRANSACTION, COMMIT, ROLLBACK, SAVEPOINT, RELEASE,
    /// SET TRANSACTION (not their READ WRITE forms, which are SET): always
    /// allowed, whatever the policy says.
    Transaction => "TRANSACTION",
    CreateFunction => "CREATE FUNCTION",
    CreateTrigger => "CREATE TRIGGER",
    CreateRule => "CREATE RULE",
    Listen => "LISTEN",
    Notify => "NOTIFY",
    Vacuum => "VACUUM",
    Analyze => "ANALYZE",
    Comment => "COMMENT",
    Discard => "DISCARD",
    Refresh => "REFRESH",
    /// DECLARE (its query is classified too), FETCH, MOVE, CLOSE.
    Cursor => "CURSOR",
    /// Anything else the parser reads but Airlock has no name for.
    Other => "OTHER",
}

impl Kind {
    /// True for the kinds that change nothing by themselves (transaction control).
    pub fn is_transaction_control(self) -> bool {
        self == Kind::Transaction
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// A kind name that is not one of [`Kind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKind(pub String);

impl fmt::Display for UnknownKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown statement kind `{}`", self.0)
    }
}

impl FromStr for Kind {
    type Err = UnknownKind;

    /// Case-insensitive; `_` and runs of spaces are the same (`set_role`,
    /// `SET  ROLE`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted: String = s
            .replace('_', " ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_ascii_uppercase();
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == wanted)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// All kind names, for hints in error messages.
pub fn known_kind_names() -> String {
    Kind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_spellings_are_forgiving() {
        for k in Kind::ALL {
            assert_eq!(k.name().parse::<Kind>().unwrap(), *k);
        }
        assert_eq!("set_role".parse::<Kind>().unwrap(), Kind::SetRole);
        assert_eq!(" delete ".parse::<Kind>().unwrap(), Kind::Delete);
        assert!("DELET".parse::<Kind>().is_err());
    }
}
