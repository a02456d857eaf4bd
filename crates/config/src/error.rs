//! What can be wrong with airlock.yaml before any binary looks inside its
//! sections. Every message starts with where: the file, and the line and
//! column when the YAML parser knows them.

use std::fmt;
use std::path::PathBuf;

use crate::SECTIONS;

/// A place in airlock.yaml: `airlock.yaml:12:5`, or the file alone when the
/// parser cannot tell the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    /// 1-based line and column.
    pub line_column: Option<(usize, usize)>,
}

impl Location {
    pub(crate) fn of(file: &str, error: &serde_norway::Error) -> Location {
        Location {
            file: file.to_owned(),
            line_column: error.location().map(|l| (l.line(), l.column())),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line_column {
            Some((line, column)) => write!(f, "{}:{line}:{column}", self.file),
            None => f.write_str(&self.file),
        }
    }
}

/// airlock.yaml could not be read, is not a mapping of known sections, or
/// one section does not have the shape its reader expects.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{at}: not a YAML mapping: {message}")]
    NotAMapping { at: Location, message: String },
    #[error("{at}: a top-level key is not a string: {key}")]
    KeyNotAString { at: Location, key: String },
    #[error("{at}: unknown top-level section `{name}:`; the sections are {}", SECTIONS.join(", "))]
    UnknownSection { at: Location, name: String },
    #[error("{at}: missing section `{name}:` ({hint})")]
    MissingSection {
        at: Location,
        name: String,
        hint: String,
    },
    /// serde's message (unknown field, wrong type, ...), with the path below
    /// the section when the problem is deeper than its first level.
    #[error("{at}: section `{name}:`: {message}")]
    InvalidSection {
        at: Location,
        name: String,
        message: String,
    },
}

/// serde_norway's message without its own " at line L column C" tail (the
/// location is reported in front, as `file:line:column`) and without the
/// leading `section: ` that only repeats the section's name.
pub(crate) fn bare_message(error: &serde_norway::Error, section: Option<&str>) -> String {
    let mut text = error.to_string();
    if let Some(l) = error.location() {
        let tail = format!(" at line {} column {}", l.line(), l.column());
        if let Some(stripped) = text.strip_suffix(&tail) {
            text.truncate(stripped.len());
        }
    }
    if let Some(rest) = section
        .and_then(|s| text.strip_prefix(s))
        .and_then(|r| r.strip_prefix(": "))
    {
        return rest.to_owned();
    }
    text
}
