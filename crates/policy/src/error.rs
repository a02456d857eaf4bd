//! The policy crate's errors. Loading errors name the file, line and column
//! and, where we can tell, what to write instead: they are read by an
//! operator fixing a policy file.

use std::fmt;

/// Where in which file a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    /// 1-based, when the YAML parser knows it.
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file is not valid YAML, or not a valid policy.
    #[error("{at}: {message}{}", hint.as_deref().map(|h| format!("\n  hint: {h}")).unwrap_or_default())]
    InvalidPolicy {
        at: Location,
        message: String,
        hint: Option<String>,
    },
    /// A configuration file with no `policies:` (or an empty list).
    #[error(
        "{file}: no policies: add a `policies:` list, or write one policy per file with `policy:`, `connection:` and `rules:`"
    )]
    NoPolicies { file: String },
    /// Nothing matched the connection and group asked for.
    #[error("no policy for connection {connection:?} and group {group:?}; policies here: {available}")]
    NoPolicyMatches {
        connection: Option<String>,
        group: Option<String>,
        available: String,
    },
    /// More than one policy matched where one was needed.
    #[error("several policies match ({candidates}); name one with --connection and --group")]
    SeveralPoliciesMatch { candidates: String },
}

impl PolicyError {
    /// Where the problem is, for errors that have a place in a file.
    pub fn location(&self) -> Option<&Location> {
        match self {
            PolicyError::InvalidPolicy { at, .. } => Some(at),
            PolicyError::NoPolicies { .. }
            | PolicyError::NoPolicyMatches { .. }
            | PolicyError::SeveralPoliciesMatch { .. } => None,
        }
    }
}
