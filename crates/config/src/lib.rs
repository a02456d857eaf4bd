//! airlock.yaml, the one configuration file every Airlock binary reads.
//!
//! Owns: the list of top-level sections ([`SECTIONS`]), reading the file,
//! checking that it is a YAML mapping whose keys are all known sections (a
//! misspelt section is an error, never silently ignored), and handing a
//! binary one section deserialised into that binary's own type, with errors
//! that name the file, the line and column, and the section.
//!
//! Does not own: what is inside a section. Each binary defines the types of
//! the sections it reads (unknown fields, defaults) and checks their values
//! (URLs, limits, secrets); the policy crate reads `policies:`. Sections a
//! binary does not read are checked here by name only.

mod error;
#[cfg(any(test, feature = "test-util"))]
pub mod example;
mod pick;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use error::{ConfigError, Location};

/// What a binary's check found wrong in a whole file (each problem as
/// `file:line: key: what`), as one error for refusing to start.
#[derive(Debug, thiserror::Error)]
#[error("{} does not check ({} problem{}):\n  {}", file.display(), problems.len(), if problems.len() == 1 { "" } else { "s" }, problems.join("\n  "))]
pub struct Problems {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

/// Problems found in one file, each placed at the line of its key.
#[derive(Debug)]
pub struct Found<'a> {
    file: &'a ConfigFile,
    problems: Vec<String>,
}

impl Found<'_> {
    /// Records `what` is wrong with `key` (dotted), as `file:line: key: what`.
    /// A message that already starts with this file's `file:line` (the
    /// policy crate places its own, to the column) is kept as it is.
    pub fn at(&mut self, key: &str, what: impl std::fmt::Display) {
        let what = what.to_string();
        let placed = what
            .strip_prefix(self.file.shown.as_str())
            .and_then(|rest| rest.strip_prefix(':'))
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
        if placed {
            self.problems.push(what);
        } else {
            self.problems
                .push(format!("{}: {key}: {what}", self.file.locate(key)));
        }
    }
}

/// A binary's whole check of the file at `path`: reads it, `parse`s the
/// binary's sections (a failure there is the one problem reported), then
/// `checks` records what else is wrong. Every problem, each as
/// `file:line: key: what`; none when the file checks.
pub fn check_file<T, E: std::fmt::Display>(
    path: &Path,
    parse: impl FnOnce(&ConfigFile) -> Result<T, E>,
    checks: impl FnOnce(&ConfigFile, &T, &mut Found<'_>),
) -> Vec<String> {
    let file = match ConfigFile::load(path) {
        Ok(file) => file,
        Err(e) => return vec![with_causes(&e)],
    };
    let parsed = match parse(&file) {
        Ok(parsed) => parsed,
        Err(e) => return vec![format!("{e:#}")],
    };
    let mut found = Found {
        file: &file,
        problems: Vec::new(),
    };
    checks(&file, &parsed, &mut found);
    found.problems
}

/// An error and its causes on one line (`reading f: No such file ...`).
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text += &format!(": {c}");
        cause = c.source();
    }
    text
}

/// `Ok` when `problems` is empty, else every one of them as one error.
pub fn refuse_unless_clean(file: &Path, problems: Vec<String>) -> Result<(), Problems> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(Problems {
        file: file.to_owned(),
        problems,
    })
}

/// Every top-level section of airlock.yaml, whoever reads it.
pub const SECTIONS: &[&str] = &[
    "nats",
    "identity",
    "approvals",
    "control",
    "reviewer",
    "proxy",
    "connections",
    "policies",
    "shadow_policies",
    "signing",
];

/// airlock.yaml, read and checked at the top level; sections are
/// deserialised on demand by the binary that owns them.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    /// `path` as it appears in messages.
    shown: String,
    text: String,
}

impl ConfigFile {
    /// Reads `path` and checks its top level.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        ConfigFile::parse(text, path)
    }

    /// Checks the top level of `text`; `path` names the file in messages.
    pub fn parse(text: impl Into<String>, path: impl Into<PathBuf>) -> Result<ConfigFile, ConfigError> {
        let path = path.into();
        let file = ConfigFile {
            shown: path.display().to_string(),
            path,
            text: text.into(),
        };
        file.check_top_level()?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where `key` (dotted, e.g. `proxy.tls.cert`) is written: `file:line`,
    /// or the deepest enclosing key that is found, or just `file`. For
    /// messages about a key's value (a file that does not exist, a variable
    /// that is not set), which the YAML parser cannot place.
    pub fn locate(&self, key: &str) -> String {
        match pick::line_of(&self.text, key) {
            Some(line) => format!("{}:{line}", self.shown),
            None => self.shown.clone(),
        }
    }

    /// The whole file, for readers that take it as text (the policy crate).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Section `name` as a `T`, or `None` when the file has no such section.
    /// A value of the wrong shape is an error naming the section and, where
    /// the YAML parser knows it, the line and column.
    pub fn section<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ConfigError> {
        debug_assert!(SECTIONS.contains(&name), "`{name}` is not in SECTIONS");
        pick::section(&self.text, name).map_err(|e| ConfigError::InvalidSection {
            at: Location::of(&self.shown, &e),
            name: name.to_owned(),
            message: error::bare_message(&e, Some(name)),
        })
    }

    /// Section `name`, which must be present; `hint` says what to write in
    /// it (e.g. "listen: host:port").
    pub fn required<T: DeserializeOwned>(&self, name: &str, hint: &str) -> Result<T, ConfigError> {
        self.section(name)?.ok_or_else(|| ConfigError::MissingSection {
            at: self.whole_file(),
            name: name.to_owned(),
            hint: hint.to_owned(),
        })
    }

    fn whole_file(&self) -> Location {
        Location {
            file: self.shown.clone(),
            line_column: None,
        }
    }

    fn check_top_level(&self) -> Result<(), ConfigError> {
        let top: serde_norway::Mapping =
            serde_norway::from_str(&self.text).map_err(|e| ConfigError::NotAMapping {
                at: Location::of(&self.shown, &e),
                message: error::bare_message(&e, None),
            })?;
        for key in top.keys() {
            let Some(name) = key.as_str() else {
                return Err(ConfigError::KeyNotAString {
                    at: self.whole_file(),
                    key: format!("{key:?}"),
                });
            };
            if !SECTIONS.contains(&name) {
                let at = match pick::locate_key(&self.text, name) {
                    Some(e) => Location::of(&self.shown, &e),
                    None => self.whole_file(),
                };
                return Err(ConfigError::UnknownSection {
                    at,
                    name: name.to_owned(),
                });
            }
        }
        Ok(())
    }
}
