//! Ids that cross crate lines. Each is a newtype, checked at construction to
//! be a single NATS subject token, because ids become subject tokens
//! (`airlock.v1.session.<session_id>`): an id holding `.`, `*` or `>` could
//! otherwise address, or subscribe to, someone else's events.

use std::fmt;
use std::str::FromStr;

/// An id that is not a valid single subject token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {why}")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
    pub why: &'static str,
}

/// Longest id accepted (a ULID is 26 characters; proxy ids are names).
pub const MAX_ID_LEN: usize = 64;

fn check(kind: &'static str, value: &str) -> Result<(), InvalidId> {
    let bad = |why| InvalidId {
        kind,
        value: value.chars().take(MAX_ID_LEN + 8).collect(),
        why,
    };
    if value.is_empty() {
        return Err(bad("empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(bad("longer than 64 bytes"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad("only ASCII letters, digits, '-' and '_' are allowed"));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// A new, unique id (a ULID: sortable by creation time).
            pub fn generate() -> Self {
                $name(ulid::Ulid::new().to_string())
            }

            /// Checks `value` and wraps it.
            pub fn parse(value: &str) -> Result<Self, InvalidId> {
                check($kind, value)?;
                Ok($name(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                $name::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// The id of one event: a ULID, also its `Nats-Msg-Id`.
    EventId,
    "event id"
);
id_type!(
    /// One client session on a proxy.
    SessionId,
    "session id"
);
id_type!(
    /// One approval request (a held statement).
    RequestId,
    "request id"
);
id_type!(
    /// One proxy of the fleet, or one control-plane replica.
    ProxyId,
    "proxy id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_tokens() {
        let id = SessionId::generate();
        assert_eq!(SessionId::parse(id.as_str()), Ok(id));
    }

    #[test]
    fn subject_metacharacters_are_refused() {
        for bad in ["", "a.b", "*", ">", "a b", "a\nb", "é", &"x".repeat(65)] {
            assert!(RequestId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ProxyId::parse("proxy-eu_1").is_ok());
    }
}
