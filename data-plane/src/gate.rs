//! What the proxy asks of identity and policy, as one seam. The server and
//! session only talk to a [`Gate`]; the real one (identity verifier, policy
//! set, connections from airlock.yaml) and test doubles implement it.

use std::future::Future;
use std::pin::Pin;

use crate::upstream::UpstreamConfig;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A verified agent, as much as the proxy needs to show and record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Entra object id (`oid`), or `sub`.
    pub subject: String,
    pub display_name: String,
    /// Group object ids, with names where configured.
    pub groups: Vec<(String, String)>,
}

/// A refusal at login: the message is safe to send to the client (it never
/// holds the token or a credential).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub sqlstate: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn unauthenticated(message: impl Into<String>) -> Refusal {
        Refusal {
            sqlstate: "28000",
            message: message.into(),
        }
    }
}

/// The agent bound to a connection through a policy.
#[derive(Debug, Clone)]
pub struct Binding {
    /// `connections[].name` (the client's `dbname`).
    pub connection: String,
    pub upstream: UpstreamConfig,
    /// The policy (Entra group) that binds the agent to the connection.
    pub policy: String,
}

/// What policy says of one statement string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    Allow,
    /// Refused: the message names the rule and its reason.
    Deny {
        message: String,
    },
    /// Needs a reviewer's approval.
    Hold {
        rule: String,
        reason: String,
    },
}

/// Identity and policy, as the proxy sees them.
pub trait Gate: Send + Sync + 'static {
    /// Verifies the agent's token. Never log `token`.
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Agent, Refusal>>;

    /// Finds the connection named `database` and the policy binding `agent`
    /// to it; a refusal names the identity and the connection.
    fn bind(&self, agent: &Agent, database: &str) -> Result<Binding, Refusal>;

    /// Judges a statement string (possibly several statements).
    fn judge(&self, binding: &Binding, sql: &str) -> Judgement;
}
