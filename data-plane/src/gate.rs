//! What the proxy asks of identity and policy, as one seam. The server and
//! session only talk to a [`Gate`]; the real one (identity verifier, policy
//! set, connections from airlock.yaml) and test doubles implement it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use airlock_eventlog::proto;

use crate::error_response::sqlstate;
use crate::upstream::UpstreamConfig;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A verified agent: the identity as recorded in events.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub identity: proto::Identity,
}

impl Agent {
    /// "name (subject)", for messages.
    pub fn describe(&self) -> String {
        let i = &self.identity;
        if i.display_name.is_empty() {
            i.subject.clone()
        } else {
            format!("{} ({})", i.display_name, i.subject)
        }
    }
}

/// A refusal at login: the message is safe to send to the client (it never
/// holds the token or a credential).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub sqlstate: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(sqlstate: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            sqlstate,
            message: message.into(),
        }
    }

    /// Refused for a reason other than the token itself (no policy binds
    /// the agent, no database named).
    pub fn unauthenticated(message: impl Into<String>) -> Refusal {
        Refusal::new(sqlstate::INVALID_AUTHORIZATION_SPECIFICATION, message)
    }

    /// The token was refused: 28P01, as PostgreSQL answers a wrong password.
    pub fn bad_token(message: impl Into<String>) -> Refusal {
        Refusal::new(sqlstate::INVALID_PASSWORD, message)
    }

    /// No connection of that name: 3D000, as for an unknown database.
    pub fn unknown_connection(message: impl Into<String>) -> Refusal {
        Refusal::new(sqlstate::INVALID_CATALOG_NAME, message)
    }

    /// The client broke the login exchange.
    pub fn protocol(message: impl Into<String>) -> Refusal {
        Refusal::new(sqlstate::PROTOCOL_VIOLATION, message)
    }

    /// The client or the upstream could not be reached during login.
    pub fn connection_failure(message: impl Into<String>) -> Refusal {
        Refusal::new(sqlstate::CONNECTION_FAILURE, message)
    }
}

/// The agent bound to a connection through a policy.
#[derive(Debug, Clone)]
pub struct Binding {
    /// `connections[].name` (the client's `dbname`).
    pub connection: String,
    pub upstream: UpstreamConfig,
    /// The policies (Entra groups) that bind the agent to the connection.
    pub policies: Vec<proto::PolicyRef>,
    /// Record every statement (policy `record: true`), not only gated and
    /// refused ones.
    pub record: bool,
    /// The gate's per-session state (prepared statements for PREPARE /
    /// EXECUTE).
    pub session: std::sync::Arc<std::sync::Mutex<SessionPolicy>>,
}

impl Binding {
    pub fn connection_info(&self) -> proto::ConnectionInfo {
        proto::ConnectionInfo {
            name: self.connection.clone(),
            upstream_host: self.upstream.host.clone(),
            upstream_port: u32::from(self.upstream.port),
            upstream_database: self.upstream.database.clone(),
            upstream_user: self.upstream.user.clone(),
        }
    }
}

/// Per-session policy state kept in the binding.
#[derive(Debug, Default)]
pub struct SessionPolicy {
    pub prepared: airlock_policy::PreparedStatements,
    /// The connection's catalog facts as this session may use them (the
    /// policy gate's; `None` for gates that judge names only).
    pub catalog: Option<std::sync::Arc<crate::catalog::SessionCatalog>>,
    /// Shadow policies bound at login (by name): judged, never enforced.
    pub shadow_policies: Vec<String>,
    /// What the session may have done to how its unqualified names
    /// resolve (temporary relations, its own search path).
    pub names: airlock_policy::SessionNames,
    /// The role's search path in the facts when this session logged in
    /// (`None`: not read yet): PostgreSQL keeps the one a session started
    /// with, though the role's default (and so the facts) change.
    pub start_path: Option<Vec<String>>,
}

/// What a held statement waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldSpec {
    /// Distinct people who must approve.
    pub approvals: u32,
    /// Groups whose members may approve.
    pub reviewers: Vec<proto::Group>,
    /// How long the statement waits before it is refused as expired.
    pub timeout: Duration,
    /// Authentication contexts every approving sign-in must have met.
    pub require_acrs: Vec<String>,
    /// `Ok` when the statement may be planned for an impact estimate
    /// (`airlock_policy::trial`); else why not.
    pub plan: Result<(), String>,
    /// Set when a rule that held it asks for a dry run: `Ok` when it may
    /// be tried, else why not.
    pub dry_run: Option<Result<(), String>>,
    /// The statement's shape (`airlock_policy::fingerprint`): what a grant
    /// may cover; `hash` empty (and `unavailable` set) when none may.
    pub fingerprint: proto::Fingerprint,
    /// The policy's break-glass terms: a member of these groups may
    /// approve their own held statement.
    pub break_glass: Option<proto::BreakGlass>,
    /// The longest grant an approval of it may carry (the policy's
    /// `max_grant_ttl`), if its policy says.
    pub max_grant_ttl: Option<Duration>,
}

/// What policy says of one statement string.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Allow,
    /// Refused: the message names the rule and its reason.
    Deny {
        message: String,
    },
    /// Needs a reviewer's approval (boxed: a hold's terms are large and
    /// most statements have none).
    Hold(Box<HoldSpec>),
}

/// Run once PostgreSQL has answered a statement that changes the session's
/// SQL prepared statements, with whether it succeeded: a PREPARE becomes
/// known to the gate only once it ran; after a failure (which may have
/// taken effect in part: PREPARE and DEALLOCATE are not transactional) the
/// names it touched are forgotten, so an EXECUTE of them is refused.
pub type OnFinish = std::sync::Arc<dyn Fn(bool) + Send + Sync>;

#[derive(Clone)]
pub struct Judgement {
    pub action: Action,
    /// The verdict as recorded (rule, reason, effects).
    pub verdict: proto::Verdict,
    pub on_finish: Option<OnFinish>,
    /// The text runs a statement made with SQL PREPARE (`EXECUTE name`),
    /// which PostgreSQL looks up when it runs.
    pub executes_prepared: bool,
    /// Names of prepared statements the SQL creates, drops or runs
    /// (PREPARE, DEALLOCATE, EXECUTE and EXPLAIN EXECUTE), and whether it
    /// drops them all (DEALLOCATE ALL, DISCARD ALL): PostgreSQL shares one
    /// namespace with the protocol's Parse, so none may name a statement
    /// made with Parse.
    pub sql_names: Vec<String>,
    pub drops_all: bool,
    /// The text was allowed without being parsed (a record-only policy):
    /// what it does to prepared statements and portals is unknown.
    pub unseen: bool,
    /// The kinds of the statement's effects (a COPY FROM STDIN is a COPY
    /// and an INSERT), for what the session itself must know of it.
    pub kinds: Vec<airlock_policy::Kind>,
    /// Which policies judged it ([`Gate::policy_generation`] then): a
    /// statement prepared before a reload is judged again at its Bind.
    pub policy_generation: u64,
}

impl Judgement {
    /// A judgement that is only an action and its recorded verdict: the
    /// statement names no prepared statement and its effects are unknown.
    pub fn only(action: Action, verdict: proto::Verdict) -> Judgement {
        Judgement {
            action,
            verdict,
            on_finish: None,
            executes_prepared: false,
            sql_names: Vec::new(),
            drops_all: false,
            unseen: false,
            kinds: Vec::new(),
            policy_generation: 0,
        }
    }

    /// Whether one of the statement's effects is of `kind`.
    pub fn has(&self, kind: airlock_policy::Kind) -> bool {
        self.kinds.contains(&kind)
    }
}

impl std::fmt::Debug for Judgement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Judgement")
            .field("action", &self.action)
            .field("verdict", &self.verdict)
            .field("on_finish", &self.on_finish.is_some())
            .finish()
    }
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

    /// Changes whenever the policies change (a reload): judgements made
    /// under another generation are stale. A gate that wraps another must
    /// pass its generation on, or every prepared statement is judged again.
    fn policy_generation(&self) -> u64;
}

/// "policy P, rule: R; reason" without saying the same thing twice.
pub fn why(v: &proto::Verdict) -> String {
    let mut out = format!("policy {}, {}", v.policy, v.rule);
    if !v.reason.is_empty() && !v.rule.contains(&v.reason) && !v.reason.contains(&v.rule) {
        out.push_str(": ");
        out.push_str(&v.reason);
    } else if v.reason.contains(&v.rule) && v.reason != v.rule {
        out = format!("policy {}, {}", v.policy, v.reason);
    }
    out
}
