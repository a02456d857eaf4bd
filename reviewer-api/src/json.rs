//! The JSON shapes of the REST API, made from the control plane's views,
//! and the bodies it accepts.
//!
//! Plain conversions, no decisions: what the control plane says is shown as
//! it is, with enums as lower-case words, digests as hex and times as
//! RFC 3339. Each shape derives its OpenAPI schema from the same definition
//! serde uses (`openapi` gathers them), so the document follows the code: a
//! field always sent is `required`, an `Option` always sent is required and
//! nullable, a field serde may skip is optional, and a set of words lists
//! exactly the words serde writes.

use std::borrow::Cow;
use std::collections::BTreeMap;

use airlock_proto::v1 as proto;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;
use utoipa::openapi::{ContentBuilder, ObjectBuilder, RefOr, ResponseBuilder, Type};

use crate::error::Code;

/// Longest reason accepted with a vote or a kill, in characters. The
/// `max_length` of the bodies' `reason` below repeats it (the schema
/// attribute takes a literal); a test keeps the two equal.
pub const MAX_REASON_CHARS: usize = 2000;

/// A closed set of words sent as a JSON string. The enum's serde spelling,
/// its schema (`enum: [...]`) and `as_str` for the pages all come from the
/// one list given here, so they cannot disagree. Each word is taken as a
/// `tt`: the schema derive reads `#[serde(rename = ...)]` token by token and
/// silently skips a `literal` fragment, which arrives wrapped.
macro_rules! words {
    ($(#[$meta:meta])* pub enum $name:ident as $schema:ident {
        $($variant:ident = $word:tt),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
        #[schema(as = $schema)]
        pub enum $name {
            $(#[serde(rename = $word)] $variant),+
        }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }
    };
}

words! {
    /// Where a request stands. `unknown` when the control plane sends a
    /// state this build does not know.
    pub enum RequestStateJson as RequestState {
        Pending = "pending",
        Granted = "granted",
        Denied = "denied",
        Expired = "expired",
        Cancelled = "cancelled",
        Unknown = "unknown",
    }
}

words! {
    /// A person or an application (an app-only token); `unknown` when the
    /// token said neither.
    pub enum IdentityKindJson as IdentityKind {
        User = "user",
        App = "app",
        Unknown = "unknown",
    }
}

words! {
    /// How the client sent the statement: one Query message, or
    /// Parse/Bind/Execute.
    pub enum ProtocolJson as Protocol {
        Simple = "simple",
        Extended = "extended",
    }
}

words! {
    /// How the client encoded a bound value.
    pub enum ParameterFormatJson as ParameterFormat {
        Text = "text",
        Binary = "binary",
    }
}

words! {
    /// A reviewer's vote; `unknown` for a decision this build does not know.
    pub enum DecisionJson as Decision {
        Approve = "approve",
        Deny = "deny",
        Unknown = "unknown",
    }
}

words! {
    /// What the policy said of a statement; `unknown` for an action this
    /// build does not know.
    pub enum VerdictActionJson as VerdictAction {
        Allow = "allow",
        RequireApproval = "require-approval",
        Deny = "deny",
        Unknown = "unknown",
    }
}

impl VerdictActionJson {
    pub fn of(a: i32) -> VerdictActionJson {
        use proto::verdict::Action;
        match Action::try_from(a).unwrap_or(Action::Unspecified) {
            Action::Allow => VerdictActionJson::Allow,
            Action::RequireApproval => VerdictActionJson::RequireApproval,
            Action::Deny => VerdictActionJson::Deny,
            Action::Unspecified => VerdictActionJson::Unknown,
        }
    }
}

words! {
    pub enum SessionStateJson as SessionState {
        Open = "open",
        Closed = "closed",
    }
}

words! {
    /// The kind of log event a timeline entry shows; `unknown` for an event
    /// with no body this build can read.
    pub enum TimelineKindJson as TimelineKind {
        SessionOpened = "session_opened",
        StatementExecuted = "statement_executed",
        StatementsExecuted = "statements_executed",
        StatementRefused = "statement_refused",
        ApprovalRequested = "approval_requested",
        ApprovalVoted = "approval_voted",
        ApprovalGranted = "approval_granted",
        ApprovalDenied = "approval_denied",
        ApprovalExpired = "approval_expired",
        ApprovalCancelled = "approval_cancelled",
        SessionKillRequested = "session_kill_requested",
        SessionClosed = "session_closed",
        PolicyLoaded = "policy_loaded",
        Checkpoint = "checkpoint",
        GrantIssued = "grant_issued",
        GrantUsed = "grant_used",
        GrantRevoked = "grant_revoked",
        GrantExpired = "grant_expired",
        SlackLinked = "slack_linked",
        SlackUnlinked = "slack_unlinked",
        Unknown = "unknown",
    }
}

words! {
    /// The kind of change a watch event is, named after the event that made
    /// it, or `updated` for a catch-up view sent after a resume. Also the
    /// server-sent event's `event:` name.
    pub enum ChangeKindJson as ChangeKind {
        Requested = "requested",
        Voted = "voted",
        Granted = "granted",
        Denied = "denied",
        Expired = "expired",
        Cancelled = "cancelled",
        Updated = "updated",
    }
}

words! {
    /// How the caller proved who they are: a bearer token, or the browser
    /// session cookie.
    pub enum ViaJson as Via {
        Bearer = "bearer",
        Session = "session",
    }
}

words! {
    pub enum HealthStatusJson as HealthStatus {
        Ok = "ok",
        ControlUnreachable = "control plane unreachable",
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Group)]
pub struct GroupJson {
    /// The group's object id, or its name when the policy named it only.
    pub id: String,
    /// A readable name, when the configuration gives one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Identity)]
pub struct IdentityJson {
    /// The token's object id (`oid`), else its `sub`.
    pub subject: String,
    pub display_name: String,
    pub kind: IdentityKindJson,
    pub groups: Vec<GroupJson>,
    pub tenant_id: String,
    pub client_app_id: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Connection)]
pub struct ConnectionJson {
    pub name: String,
    pub upstream_host: String,
    pub upstream_port: u32,
    pub upstream_database: String,
    pub upstream_user: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Client)]
pub struct ClientJson {
    pub address: String,
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub tls: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Parameter)]
pub struct ParameterJson {
    /// `$1` is 1.
    pub position: usize,
    pub type_oid: u32,
    pub format: ParameterFormatJson,
    pub is_null: bool,
    /// A readable rendering of the value.
    pub display: String,
    /// The exact bytes the client bound, hex.
    pub value_hex: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Statement)]
pub struct StatementJson {
    /// The exact text, byte for byte.
    pub text: String,
    pub protocol: ProtocolJson,
    pub parameters: Vec<ParameterJson>,
    /// SHA-256 of the exact bytes that execute, hex. Send it back when
    /// voting so the vote binds to what was shown.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Effect)]
pub struct EffectJson {
    /// A statement kind as policies name it (`DELETE`, `DROP`, ...).
    pub kind: String,
    pub tables: Vec<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Verdict)]
pub struct VerdictJson {
    pub policy: String,
    pub rule_index: u32,
    pub rule: String,
    pub reason: String,
    pub default_applied: bool,
    pub effects: Vec<EffectJson>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Vote)]
pub struct VoteJson {
    #[schema(required = true)]
    pub reviewer: Option<IdentityJson>,
    pub decision: DecisionJson,
    pub reason: String,
    #[schema(required = true, format = DateTime)]
    pub time: Option<String>,
    /// The requester's own break-glass approval.
    pub break_glass: bool,
}

/// Rows of one table: estimated (`rows` only) or counted.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = TableRows)]
pub struct TableRowsJson {
    /// Schema-qualified; a partition's rows count for its partitioned table.
    pub table: String,
    pub rows: u64,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
}

/// PostgreSQL's plan for the held statement (EXPLAIN, never ANALYZE).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = ImpactEstimate)]
pub struct EstimateJson {
    /// Why there is no estimate; empty when there is one.
    pub unavailable: String,
    /// Estimated rows per target table.
    pub tables: Vec<TableRowsJson>,
    /// The plan's top node, its estimated rows and total cost.
    pub top_node: String,
    pub plan_rows: f64,
    pub total_cost: f64,
    /// How long asking took, in milliseconds.
    pub took_ms: u64,
}

/// The held statement run once in a transaction that was rolled back.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = DryRun)]
pub struct DryRunJson {
    /// Why it was not run or did not finish; empty when it ran.
    pub unavailable: String,
    /// Rows changed per table, cascades and trigger writes included.
    pub tables: Vec<TableRowsJson>,
    pub command_tag: String,
    pub error_sqlstate: String,
    #[schema(required = true, format = DateTime)]
    pub started_at: Option<String>,
    pub took_ms: u64,
}

/// What PostgreSQL said the statement would touch.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Impact)]
pub struct ImpactJson {
    /// `null` in requests filed before estimates.
    #[schema(required = true)]
    pub estimate: Option<EstimateJson>,
    /// `null` unless a rule that held it asks for a dry run.
    #[schema(required = true)]
    pub dry_run: Option<DryRunJson>,
}

/// A statement the session sent before the held one.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = RecentStatement)]
pub struct RecentStatementJson {
    /// At most 500 characters; `truncated` when cut.
    pub text: String,
    pub truncated: bool,
    pub action: VerdictActionJson,
    pub rule: String,
    #[schema(required = true, format = DateTime)]
    pub time: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Request)]
pub struct RequestJson {
    pub id: String,
    pub session_id: String,
    pub state: RequestStateJson,
    #[schema(required = true)]
    pub identity: Option<IdentityJson>,
    #[schema(required = true)]
    pub connection: Option<ConnectionJson>,
    #[schema(required = true)]
    pub client: Option<ClientJson>,
    #[schema(required = true)]
    pub statement: Option<StatementJson>,
    #[schema(required = true)]
    pub verdict: Option<VerdictJson>,
    pub approvals_required: u32,
    /// Distinct people who approved so far.
    pub approvals_given: u32,
    pub reviewer_groups: Vec<GroupJson>,
    #[schema(required = true, format = DateTime)]
    pub requested_at: Option<String>,
    #[schema(required = true, format = DateTime)]
    pub deadline: Option<String>,
    /// `null` while pending.
    #[schema(required = true, format = DateTime)]
    pub decided_at: Option<String>,
    pub outcome_reason: String,
    pub votes: Vec<VoteJson>,
    pub proxy_id: String,
    /// Stream sequence of the last event folded into this view.
    pub sequence: u64,
    pub impact: ImpactJson,
    /// The agent's own words on why: unverified, the requester's claim.
    pub agent_reason: String,
    /// The reason was longer than 2 KiB and was cut.
    pub agent_reason_truncated: bool,
    /// What the session sent just before (at most 20), oldest first.
    pub recent_statements: Vec<RecentStatementJson>,
    /// The statement's shape, which an approval may allow in scope.
    pub fingerprint: FingerprintJson,
    /// The requester approved it themself under the policy's break-glass
    /// terms.
    pub break_glass: bool,
    /// The policy allows break-glass: the groups whose members may approve
    /// their own held statement.
    pub break_glass_groups: Vec<GroupJson>,
}

/// A statement's shape: SHA-256 of its normalised parse tree and effects.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Fingerprint)]
pub struct FingerprintJson {
    /// Hex; empty when a grant cannot cover the statement.
    pub hash: String,
    /// Literals and parameters as `?`, lists collapsed, names folded.
    pub normalized: String,
    /// Why there is none.
    pub unavailable: String,
}

pub fn fingerprint(f: Option<&proto::Fingerprint>) -> FingerprintJson {
    let f = f.cloned().unwrap_or_default();
    FingerprintJson {
        hash: f.hash,
        normalized: f.normalized,
        unavailable: f.unavailable,
    }
}

/// A grant: an approval in scope, its uses and state.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Grant)]
pub struct GrantJson {
    /// The approved request's id.
    pub id: String,
    /// active, used_up, revoked or expired.
    pub state: String,
    /// For whom (the requester) and on which connection.
    #[schema(required = true)]
    pub identity: Option<IdentityJson>,
    pub connection: String,
    /// fingerprint or rule.
    #[serde(rename = "match")]
    pub match_: String,
    pub fingerprint: FingerprintJson,
    pub kinds: Vec<String>,
    pub tables: Vec<String>,
    pub max_uses: u32,
    pub uses: u32,
    pub remaining: u32,
    /// Each use may change at most this many rows of each table it writes.
    pub max_rows: Option<u64>,
    #[schema(required = true, format = DateTime)]
    pub issued_at: Option<String>,
    #[schema(required = true, format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(required = true, format = DateTime)]
    pub ended_at: Option<String>,
    pub approvers: Vec<IdentityJson>,
    pub policy: String,
    pub rule: String,
    pub break_glass: bool,
    #[schema(required = true)]
    pub revoked_by: Option<IdentityJson>,
    pub revoke_reason: String,
    /// The newest uses (at most 20).
    pub recent_uses: Vec<GrantUseJson>,
    pub sequence: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = GrantUse)]
pub struct GrantUseJson {
    pub number: u32,
    pub session_id: String,
    pub proxy_id: String,
    /// Hex SHA-256 of the statement's exact messages.
    pub statement_sha256: String,
    #[schema(required = true, format = DateTime)]
    pub time: Option<String>,
}

/// `GET /api/v1/grants`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = GrantList)]
pub struct GrantListJson {
    pub grants: Vec<GrantJson>,
}

/// The word for a grant state.
pub fn grant_state_name(state: i32) -> &'static str {
    match proto::GrantState::try_from(state) {
        Ok(proto::GrantState::Active) => "active",
        Ok(proto::GrantState::UsedUp) => "used_up",
        Ok(proto::GrantState::Revoked) => "revoked",
        Ok(proto::GrantState::Expired) => "expired",
        _ => "unknown",
    }
}

/// A grant state from its word.
pub fn parse_grant_state(word: &str) -> Option<proto::GrantState> {
    Some(match word {
        "active" => proto::GrantState::Active,
        "used_up" => proto::GrantState::UsedUp,
        "revoked" => proto::GrantState::Revoked,
        "expired" => proto::GrantState::Expired,
        _ => return None,
    })
}

pub fn grant(v: &proto::GrantView) -> GrantJson {
    let g = v.grant.clone().unwrap_or_default();
    let scope = g.scope.clone().unwrap_or_default();
    GrantJson {
        id: v.grant_id.clone(),
        state: grant_state_name(v.state).to_owned(),
        identity: g.identity.as_ref().map(identity),
        connection: g.connection.clone(),
        match_: match proto::grant_scope::Match::try_from(scope.r#match) {
            Ok(proto::grant_scope::Match::Fingerprint) => "fingerprint",
            Ok(proto::grant_scope::Match::Rule) => "rule",
            _ => "unknown",
        }
        .to_owned(),
        fingerprint: fingerprint(g.fingerprint.as_ref()),
        kinds: scope.kinds.clone(),
        tables: scope.tables.clone(),
        max_uses: scope.max_uses,
        uses: v.uses,
        remaining: v.remaining,
        max_rows: scope.max_rows,
        issued_at: rfc3339(v.issued_at.as_ref()),
        expires_at: rfc3339(g.expires_at.as_ref()),
        ended_at: rfc3339(v.ended_at.as_ref()),
        approvers: g
            .approvers
            .iter()
            .filter_map(|a| a.reviewer.as_ref().map(identity))
            .collect(),
        policy: g.policy.clone(),
        rule: g.rule.clone(),
        break_glass: g.break_glass,
        revoked_by: v.revoked_by.as_ref().map(identity),
        revoke_reason: v.revoke_reason.clone(),
        recent_uses: v
            .recent_uses
            .iter()
            .map(|u| GrantUseJson {
                number: u.number,
                session_id: u.session_id.clone(),
                proxy_id: u.proxy_id.clone(),
                statement_sha256: hex::encode(&u.statement_sha256),
                time: rfc3339(u.time.as_ref()),
            })
            .collect(),
        sequence: v.sequence,
    }
}

/// Body of `DELETE /api/v1/grants/{id}`; an empty body is `{}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RevokeBody)]
pub struct RevokeBody {
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub reason: Option<String>,
}

/// `GET /api/v1/requests`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = RequestPage)]
pub struct RequestPageJson {
    pub requests: Vec<RequestJson>,
    /// Pass as `page_token` for the next page; empty on the last.
    pub next_page_token: String,
}

/// The answer to a vote.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = VoteResult)]
pub struct VoteResultJson {
    /// The request after the vote.
    #[schema(required = true)]
    pub request: Option<RequestJson>,
    /// Id of the `ApprovalVoted` event.
    pub event_id: String,
    /// Its stream sequence.
    pub sequence: u64,
}

/// The answer to a kill.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = KillResult)]
pub struct KillResultJson {
    /// Id of the `SessionKillRequested` event.
    pub event_id: String,
    /// Its stream sequence.
    pub sequence: u64,
}

/// `GET /api/v1/me`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Me)]
pub struct MeJson {
    pub identity: IdentityJson,
    pub via: ViaJson,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Health)]
pub struct HealthJson {
    pub status: HealthStatusJson,
    pub control_reachable: bool,
}

/// The data of one server-sent event of `GET /api/v1/events`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = WatchEvent)]
pub struct WatchEventJson {
    /// Stream sequence of the event; also the SSE `id`.
    pub sequence: u64,
    pub kind: ChangeKindJson,
    /// The request as it is after this event.
    #[schema(required = true)]
    pub request: Option<RequestJson>,
}

/// Body of `POST /api/v1/requests/{id}/approve` and `/deny`; an empty body
/// is the same as `{}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VoteBody)]
pub struct VoteBody {
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub reason: Option<String>,
    /// Hex SHA-256 of the statement as shown to the reviewer. Default: the
    /// request's, as read just before voting.
    #[serde(default)]
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub statement_sha256: Option<String>,
    /// With an approval: the most rows of each table (`schema.table`, as
    /// the request's impact names it) the statement may change; it runs in
    /// a transaction of the proxy's and is rolled back past them. Tables
    /// left out keep the default: the dry run's count, else the estimate.
    #[serde(default)]
    pub max_rows: Option<std::collections::BTreeMap<String, u64>>,
    /// With an approval: also allow statements like this one, from the
    /// same identity on the same connection, for a while (a grant).
    #[serde(default)]
    pub scope: Option<ScopeBody>,
    /// Approve your own request under the policy's `break_glass` terms
    /// (a person in one of its groups; `reason` of at least 20
    /// characters). Every reviewer is told.
    #[serde(default)]
    pub break_glass: bool,
}

/// What an approval allows beyond its one statement (a grant). Every
/// approver of a quorum must send one; the grant is the narrowest.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Scope)]
pub struct ScopeBody {
    /// `fingerprint`: statements of the approved one's shape (its
    /// fingerprint); `rule`: statements whose every effect is of `kinds` on
    /// `tables` (a time-boxed elevation).
    #[serde(rename = "match")]
    #[schema(pattern = "^(fingerprint|rule)$")]
    pub match_: String,
    /// How long the grant lives, e.g. `30m` (at most the policy's maximum,
    /// 8 h unless it says less).
    pub ttl: String,
    /// How many statements it may let run (1 to 1000).
    pub max_uses: u32,
    /// Each use may change at most this many rows of each table it writes.
    #[serde(default)]
    pub max_rows: Option<u64>,
    /// For `rule`: statement kinds and schema-qualified tables, each among
    /// the approved statement's.
    #[serde(default)]
    pub kinds: Vec<String>,
    #[serde(default)]
    pub tables: Vec<String>,
}

impl ScopeBody {
    /// The scope as the control plane takes it; a word or time it cannot
    /// be is refused here, the rest is judged there.
    pub fn to_proto(&self) -> Result<proto::GrantScope, String> {
        use proto::grant_scope::Match;
        let m = match self.match_.as_str() {
            "fingerprint" => Match::Fingerprint,
            "rule" => Match::Rule,
            other => return Err(format!("scope.match: `{other}` is not one of fingerprint, rule")),
        };
        let ttl = humantime::parse_duration(self.ttl.trim())
            .map_err(|e| format!("scope.ttl: `{}`: {e} (e.g. 30m, 2h)", self.ttl))?;
        Ok(proto::GrantScope {
            r#match: m as i32,
            ttl: prost_types::Duration::try_from(ttl).ok(),
            max_uses: self.max_uses,
            max_rows: self.max_rows,
            kinds: self.kinds.clone(),
            tables: self.tables.clone(),
        })
    }
}

/// Body of `POST /api/v1/sessions/{id}/kill`; an empty body is `{}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = KillBody)]
pub struct KillBody {
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub reason: Option<String>,
}

/// The body of every refusal.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorJson {
    pub error: ErrorDetailJson,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = ErrorDetail)]
pub struct ErrorDetailJson {
    pub code: Code,
    /// For people; says what was refused, never a token.
    pub message: String,
    /// With `step_up_required`: the authentication contexts (Entra `acrs`)
    /// the approving sign-in must meet; sign in again asking for them
    /// (the `claims` request parameter) and approve again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub acrs: Vec<String>,
}

impl ErrorJson {
    pub fn new(code: Code, message: impl Into<String>) -> ErrorJson {
        ErrorJson {
            error: ErrorDetailJson {
                code,
                message: message.into(),
                acrs: Vec::new(),
            },
        }
    }

    /// The same, naming the authentication contexts a step-up needs.
    pub fn with_acrs(mut self, acrs: Vec<String>) -> ErrorJson {
        self.error.acrs = acrs;
        self
    }
}

/// An error code is sent as its word (`not_a_reviewer`).
impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl utoipa::PartialSchema for Code {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Code::ALL.iter().map(|c| c.as_str())))
            .description(Some("Stable, for programs; the HTTP status follows from it."))
            .into()
    }
}

impl ToSchema for Code {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ErrorCode")
    }
}

/// The refusals any authenticated route may answer with, for
/// `#[utoipa::path(responses(...))]`; each route adds its own 400, 403,
/// 404 and 409.
#[derive(Debug)]
pub struct Refusals;

impl utoipa::IntoResponses for Refusals {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::response::Response>> {
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name(ErrorJson::name())))
                        .build(),
                )
                .build()
                .into()
        };
        BTreeMap::from([
            (
                "401".to_owned(),
                error("No token, or a token refused (`unauthenticated`)."),
            ),
            ("500".to_owned(), error("An unexpected failure (`internal`).")),
            (
                "503".to_owned(),
                error("The control plane or the issuer is unreachable or catching up (`unavailable`)."),
            ),
        ])
    }
}

pub fn time(t: Option<&prost_types::Timestamp>) -> Option<OffsetDateTime> {
    let t = t?;
    OffsetDateTime::from_unix_timestamp(t.seconds)
        .ok()
        .map(|d| d + time::Duration::nanoseconds(i64::from(t.nanos)))
}

pub fn rfc3339(t: Option<&prost_types::Timestamp>) -> Option<String> {
    time(t).and_then(|d| d.format(&Rfc3339).ok())
}

impl RequestStateJson {
    pub fn of(state: i32) -> RequestStateJson {
        match proto::RequestState::try_from(state).unwrap_or(proto::RequestState::Unspecified) {
            proto::RequestState::Pending => RequestStateJson::Pending,
            proto::RequestState::Granted => RequestStateJson::Granted,
            proto::RequestState::Denied => RequestStateJson::Denied,
            proto::RequestState::Expired => RequestStateJson::Expired,
            proto::RequestState::Cancelled => RequestStateJson::Cancelled,
            proto::RequestState::Unspecified => RequestStateJson::Unknown,
        }
    }
}

pub fn state_name(state: i32) -> &'static str {
    RequestStateJson::of(state).as_str()
}

/// Parses a state word as the API accepts it.
pub fn parse_state(word: &str) -> Option<proto::RequestState> {
    match word {
        "pending" => Some(proto::RequestState::Pending),
        "granted" => Some(proto::RequestState::Granted),
        "denied" => Some(proto::RequestState::Denied),
        "expired" => Some(proto::RequestState::Expired),
        "cancelled" => Some(proto::RequestState::Cancelled),
        _ => None,
    }
}

pub fn identity(i: &proto::Identity) -> IdentityJson {
    IdentityJson {
        subject: i.subject.clone(),
        display_name: i.display_name.clone(),
        kind: if i.kind == proto::identity::Kind::App as i32 {
            IdentityKindJson::App
        } else if i.kind == proto::identity::Kind::User as i32 {
            IdentityKindJson::User
        } else {
            IdentityKindJson::Unknown
        },
        groups: i.groups.iter().map(group).collect(),
        tenant_id: i.tenant_id.clone(),
        client_app_id: i.client_app_id.clone(),
    }
}

pub fn group(g: &proto::Group) -> GroupJson {
    GroupJson {
        id: g.id.clone(),
        name: g.name.clone(),
    }
}

pub fn connection(c: &proto::ConnectionInfo) -> ConnectionJson {
    ConnectionJson {
        name: c.name.clone(),
        upstream_host: c.upstream_host.clone(),
        upstream_port: c.upstream_port,
        upstream_database: c.upstream_database.clone(),
        upstream_user: c.upstream_user.clone(),
    }
}

pub fn client(c: &proto::ClientInfo) -> ClientJson {
    ClientJson {
        address: c.address.clone(),
        user: c.user.clone(),
        database: c.database.clone(),
        application_name: c.application_name.clone(),
        tls: c.tls,
    }
}

pub fn statement(s: &proto::Statement) -> StatementJson {
    StatementJson {
        text: s.text.clone(),
        protocol: if s.protocol == proto::statement::Protocol::Extended as i32 {
            ProtocolJson::Extended
        } else {
            ProtocolJson::Simple
        },
        parameters: s
            .parameters
            .iter()
            .enumerate()
            .map(|(n, p)| ParameterJson {
                position: n + 1,
                type_oid: p.type_oid,
                format: if p.format == proto::parameter::Format::Binary as i32 {
                    ParameterFormatJson::Binary
                } else {
                    ParameterFormatJson::Text
                },
                is_null: p.is_null,
                display: p.display.clone(),
                value_hex: hex::encode(&p.value),
            })
            .collect(),
        sha256: hex::encode(&s.sha256),
    }
}

pub fn verdict(v: &proto::Verdict) -> VerdictJson {
    VerdictJson {
        policy: v.policy.clone(),
        rule_index: v.rule_index,
        rule: v.rule.clone(),
        reason: v.reason.clone(),
        default_applied: v.default_applied,
        effects: v
            .effects
            .iter()
            .map(|e| EffectJson {
                kind: e.kind.clone(),
                tables: e.tables.clone(),
            })
            .collect(),
    }
}

impl DecisionJson {
    pub fn of(d: i32) -> DecisionJson {
        match proto::Decision::try_from(d).unwrap_or(proto::Decision::Unspecified) {
            proto::Decision::Approve => DecisionJson::Approve,
            proto::Decision::Deny => DecisionJson::Deny,
            proto::Decision::Unspecified => DecisionJson::Unknown,
        }
    }
}

pub fn decision_name(d: i32) -> &'static str {
    DecisionJson::of(d).as_str()
}

/// Distinct approvals given so far.
pub fn approvals_given(view: &proto::RequestView) -> u32 {
    let mut people: Vec<&str> = view
        .votes
        .iter()
        .filter(|v| v.decision == proto::Decision::Approve as i32)
        .filter_map(|v| v.reviewer.as_ref().map(|r| r.subject.as_str()))
        .collect();
    people.sort_unstable();
    people.dedup();
    u32::try_from(people.len()).unwrap_or(u32::MAX)
}

pub fn request(view: &proto::RequestView) -> RequestJson {
    let asked = view.request.clone().unwrap_or_default();
    RequestJson {
        id: view.request_id.clone(),
        session_id: view.session_id.clone(),
        state: RequestStateJson::of(view.state),
        identity: asked.identity.as_ref().map(identity),
        connection: asked.connection.as_ref().map(connection),
        client: asked.client.as_ref().map(client),
        statement: asked.statement.as_ref().map(statement),
        verdict: asked.verdict.as_ref().map(verdict),
        approvals_required: asked.approvals_required,
        approvals_given: approvals_given(view),
        reviewer_groups: asked.reviewer_groups.iter().map(group).collect(),
        requested_at: rfc3339(view.requested_at.as_ref()),
        deadline: rfc3339(asked.deadline.as_ref()),
        decided_at: rfc3339(view.decided_at.as_ref()),
        outcome_reason: view.outcome_reason.clone(),
        votes: view
            .votes
            .iter()
            .map(|v| VoteJson {
                reviewer: v.reviewer.as_ref().map(identity),
                decision: DecisionJson::of(v.decision),
                reason: v.reason.clone(),
                time: rfc3339(v.time.as_ref()),
                break_glass: v.break_glass,
            })
            .collect(),
        proxy_id: asked.proxy_id.clone(),
        sequence: view.sequence,
        impact: impact(asked.impact.as_ref()),
        agent_reason: asked.agent_reason.clone(),
        agent_reason_truncated: asked.agent_reason_truncated,
        recent_statements: asked
            .recent_statements
            .iter()
            .map(|r| RecentStatementJson {
                text: r.text.clone(),
                truncated: r.truncated,
                action: VerdictActionJson::of(r.action),
                rule: r.rule.clone(),
                time: rfc3339(r.time.as_ref()),
            })
            .collect(),
        fingerprint: fingerprint(asked.fingerprint.as_ref()),
        break_glass: view.votes.iter().any(|v| v.break_glass),
        break_glass_groups: asked
            .break_glass
            .as_ref()
            .map(|b| b.groups.iter().map(group).collect())
            .unwrap_or_default(),
    }
}

fn millis(d: Option<&prost_types::Duration>) -> u64 {
    d.and_then(|d| std::time::Duration::try_from(*d).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn table_rows(t: &proto::TableRows) -> TableRowsJson {
    TableRowsJson {
        table: t.table.clone(),
        rows: t.rows,
        inserted: t.inserted,
        updated: t.updated,
        deleted: t.deleted,
    }
}

pub fn impact(i: Option<&proto::Impact>) -> ImpactJson {
    ImpactJson {
        estimate: i.and_then(|i| i.estimate.as_ref()).map(|e| EstimateJson {
            unavailable: e.unavailable.clone(),
            tables: e.tables.iter().map(table_rows).collect(),
            top_node: e.top_node.clone(),
            plan_rows: e.plan_rows,
            total_cost: e.total_cost,
            took_ms: millis(e.took.as_ref()),
        }),
        dry_run: i.and_then(|i| i.dry_run.as_ref()).map(|d| DryRunJson {
            unavailable: d.unavailable.clone(),
            tables: d.tables.iter().map(table_rows).collect(),
            command_tag: d.command_tag.clone(),
            error_sqlstate: d.error_sqlstate.clone(),
            started_at: rfc3339(d.started_at.as_ref()),
            took_ms: millis(d.took.as_ref()),
        }),
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = SessionSummary)]
pub struct SessionSummaryJson {
    pub id: String,
    pub state: SessionStateJson,
    #[schema(required = true)]
    pub identity: Option<IdentityJson>,
    #[schema(required = true)]
    pub connection: Option<ConnectionJson>,
    #[schema(required = true)]
    pub client: Option<ClientJson>,
    pub proxy_id: String,
    #[schema(required = true, format = DateTime)]
    pub opened_at: Option<String>,
    /// `null` while open.
    #[schema(required = true, format = DateTime)]
    pub closed_at: Option<String>,
    pub statements_executed: u64,
    pub statements_refused: u64,
    pub requests_pending: u32,
    /// A request of the session was granted by break-glass.
    pub break_glass: bool,
}

/// `GET /api/v1/sessions`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = SessionPage)]
pub struct SessionPageJson {
    pub sessions: Vec<SessionSummaryJson>,
    /// Pass as `page_token` for the next page; empty on the last.
    pub next_page_token: String,
}

pub fn session_summary(s: &proto::SessionSummary) -> SessionSummaryJson {
    SessionSummaryJson {
        id: s.session_id.clone(),
        state: if s.state == proto::SessionState::Closed as i32 {
            SessionStateJson::Closed
        } else {
            SessionStateJson::Open
        },
        identity: s.identity.as_ref().map(identity),
        connection: s.connection.as_ref().map(connection),
        client: s.client.as_ref().map(client),
        proxy_id: s.proxy_id.clone(),
        opened_at: rfc3339(s.opened_at.as_ref()),
        closed_at: rfc3339(s.closed_at.as_ref()),
        statements_executed: s.statements_executed,
        statements_refused: s.statements_refused,
        requests_pending: s.requests_pending,
        break_glass: s.break_glass,
    }
}

/// One entry of a session's timeline, summarised for people and kept
/// machine-readable (`kind` plus the fields that matter for it).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = TimelineEntry)]
pub struct TimelineJson {
    pub sequence: u64,
    #[schema(required = true, format = DateTime)]
    pub time: Option<String>,
    pub kind: TimelineKindJson,
    /// Empty for events that belong to no request.
    pub request_id: String,
    /// One line for a reader: what happened.
    pub summary: String,
    /// Present on statement and approval-request entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub statement: Option<StatementJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub verdict: Option<VerdictJson>,
    /// Who did it, where the event names someone.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub by: Option<IdentityJson>,
}

fn who(i: Option<&proto::Identity>) -> String {
    match i {
        Some(i) if !i.display_name.is_empty() => i.display_name.clone(),
        Some(i) => i.subject.clone(),
        None => "someone".into(),
    }
}

fn with_reason(text: String, reason: &str) -> String {
    if reason.is_empty() {
        text
    } else {
        format!("{text}: {reason}")
    }
}

pub fn timeline_entry(e: &proto::RecordedEvent) -> TimelineJson {
    use proto::event::Body;
    let event = e.event.clone().unwrap_or_default();
    let mut out = TimelineJson {
        sequence: e.sequence,
        time: rfc3339(event.time.as_ref()),
        kind: TimelineKindJson::Unknown,
        request_id: event.request_id.clone(),
        summary: String::new(),
        statement: None,
        verdict: None,
        by: None,
    };
    let Some(body) = event.body.as_ref() else {
        return out;
    };
    match body {
        Body::SessionOpened(o) => {
            out.kind = TimelineKindJson::SessionOpened;
            out.by = o.identity.as_ref().map(identity);
            out.summary = format!(
                "{} connected to {} through {}",
                who(o.identity.as_ref()),
                o.connection.as_ref().map(|c| c.name.as_str()).unwrap_or("?"),
                o.proxy_id
            );
        }
        Body::StatementExecuted(x) => {
            out.kind = TimelineKindJson::StatementExecuted;
            out.statement = x.statement.as_ref().map(statement);
            out.verdict = x.verdict.as_ref().map(verdict);
            out.summary = if x.unfinished {
                format!("unfinished (outcome unknown): {}", x.error_message)
            } else if x.error_sqlstate.is_empty() && !x.grant_id.is_empty() {
                format!(
                    "executed under grant {}: {} ({} rows)",
                    x.grant_id, x.command_tag, x.rows
                )
            } else if x.error_sqlstate.is_empty() {
                format!("executed: {} ({} rows)", x.command_tag, x.rows)
            } else {
                format!("failed in PostgreSQL: {} {}", x.error_sqlstate, x.error_message)
            };
        }
        Body::StatementsExecuted(x) => {
            // The control plane splits groups in session timelines; a group
            // seen here is summarised.
            out.kind = TimelineKindJson::StatementsExecuted;
            out.summary = format!("{} statements executed", x.statements.len());
        }
        Body::StatementRefused(x) => {
            out.kind = TimelineKindJson::StatementRefused;
            out.statement = x.statement.as_ref().map(statement);
            out.verdict = x.verdict.as_ref().map(verdict);
            out.summary = format!("refused ({}): {}", x.sqlstate, x.message);
        }
        Body::ApprovalRequested(x) => {
            out.kind = TimelineKindJson::ApprovalRequested;
            out.statement = x.statement.as_ref().map(statement);
            out.verdict = x.verdict.as_ref().map(verdict);
            out.by = x.identity.as_ref().map(identity);
            out.summary = format!("held for approval ({} needed)", x.approvals_required);
        }
        Body::ApprovalVoted(x) => {
            out.kind = TimelineKindJson::ApprovalVoted;
            out.by = x.reviewer.as_ref().map(identity);
            out.summary = with_reason(
                format!(
                    "{} voted {} ({}/{})",
                    who(x.reviewer.as_ref()),
                    decision_name(x.decision),
                    x.approvals,
                    x.approvals_required
                ),
                &x.reason,
            );
        }
        Body::ApprovalGranted(x) => {
            out.kind = TimelineKindJson::ApprovalGranted;
            let names: Vec<String> = x.approvers.iter().map(|a| who(a.reviewer.as_ref())).collect();
            out.summary = format!("granted by {}", names.join(", "));
        }
        Body::ApprovalDenied(x) => {
            out.kind = TimelineKindJson::ApprovalDenied;
            out.by = x.reviewer.as_ref().map(identity);
            out.summary = with_reason(format!("denied by {}", who(x.reviewer.as_ref())), &x.reason);
        }
        Body::ApprovalExpired(_) => {
            out.kind = TimelineKindJson::ApprovalExpired;
            out.summary = "expired: nobody decided in time".into();
        }
        Body::ApprovalCancelled(x) => {
            out.kind = TimelineKindJson::ApprovalCancelled;
            out.summary = with_reason("cancelled".into(), &x.detail);
        }
        Body::SessionKillRequested(x) => {
            out.kind = TimelineKindJson::SessionKillRequested;
            out.by = x.requested_by.as_ref().map(identity);
            out.summary = with_reason(
                format!("kill requested by {}", who(x.requested_by.as_ref())),
                &x.reason,
            );
        }
        Body::SessionClosed(x) => {
            out.kind = TimelineKindJson::SessionClosed;
            out.summary = format!(
                "closed ({} executed, {} refused){}",
                x.statements_executed,
                x.statements_refused,
                if x.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", x.detail)
                }
            );
        }
        Body::GrantIssued(x) => {
            out.kind = TimelineKindJson::GrantIssued;
            out.by = x.identity.as_ref().map(identity);
            let names: Vec<String> = x.approvers.iter().map(|a| who(a.reviewer.as_ref())).collect();
            out.summary = format!(
                "grant issued by {} for {} uses",
                names.join(", "),
                x.scope.as_ref().map_or(0, |s| s.max_uses)
            );
        }
        Body::GrantUsed(x) => {
            out.kind = TimelineKindJson::GrantUsed;
            out.summary = format!("grant use {} on {}", x.number, x.proxy_id);
        }
        Body::GrantRevoked(x) => {
            out.kind = TimelineKindJson::GrantRevoked;
            out.by = x.revoked_by.as_ref().map(identity);
            out.summary = with_reason(
                format!("grant revoked by {}", who(x.revoked_by.as_ref())),
                &x.reason,
            );
        }
        Body::GrantExpired(x) => {
            out.kind = TimelineKindJson::GrantExpired;
            out.summary = format!("grant expired after {} uses", x.uses);
        }
        Body::PolicyLoaded(_) => {
            out.kind = TimelineKindJson::PolicyLoaded;
            out.summary = "policy loaded".into();
        }
        // Not on a session's or request's timeline; said if ever met.
        Body::SlackLinked(l) => {
            out.kind = TimelineKindJson::SlackLinked;
            out.summary = format!(
                "Slack user {} linked",
                l.slack.as_ref().map(|s| s.user_id.as_str()).unwrap_or("?")
            );
        }
        Body::SlackUnlinked(u) => {
            out.kind = TimelineKindJson::SlackUnlinked;
            out.summary = format!(
                "Slack user {} unlinked",
                u.slack.as_ref().map(|s| s.user_id.as_str()).unwrap_or("?")
            );
        }
        Body::Checkpoint(_) => {
            out.kind = TimelineKindJson::Checkpoint;
            out.summary = "checkpoint".into();
        }
    }
    out
}

/// `GET /api/v1/sessions/{id}`: the whole recorded session.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Session)]
pub struct SessionJson {
    #[schema(required = true)]
    pub summary: Option<SessionSummaryJson>,
    pub timeline: Vec<TimelineJson>,
    pub requests: Vec<RequestJson>,
}

pub fn session(s: &proto::SessionView) -> SessionJson {
    SessionJson {
        summary: s.summary.as_ref().map(session_summary),
        timeline: s.timeline.iter().map(timeline_entry).collect(),
        requests: s.requests.iter().map(request).collect(),
    }
}

impl ChangeKindJson {
    pub fn of(event: Option<&proto::Event>) -> ChangeKindJson {
        use proto::event::Body;
        match event.and_then(|e| e.body.as_ref()) {
            Some(Body::ApprovalRequested(_)) => ChangeKindJson::Requested,
            Some(Body::ApprovalVoted(_)) => ChangeKindJson::Voted,
            Some(Body::ApprovalGranted(_)) => ChangeKindJson::Granted,
            Some(Body::ApprovalDenied(_)) => ChangeKindJson::Denied,
            Some(Body::ApprovalExpired(_)) => ChangeKindJson::Expired,
            Some(Body::ApprovalCancelled(_)) => ChangeKindJson::Cancelled,
            Some(
                Body::SessionOpened(_)
                | Body::StatementExecuted(_)
                | Body::StatementsExecuted(_)
                | Body::StatementRefused(_)
                | Body::SessionKillRequested(_)
                | Body::SessionClosed(_)
                | Body::PolicyLoaded(_)
                | Body::Checkpoint(_)
                | Body::GrantIssued(_)
                | Body::GrantUsed(_)
                | Body::GrantRevoked(_)
                | Body::GrantExpired(_)
                | Body::SlackLinked(_)
                | Body::SlackUnlinked(_),
            )
            | None => ChangeKindJson::Updated,
        }
    }
}

/// The kind of change a watch event is, as its word ([`ChangeKindJson`]).
pub fn change_kind(event: Option<&proto::Event>) -> &'static str {
    ChangeKindJson::of(event).as_str()
}

pub fn watch_event(item: &proto::WatchEvent) -> WatchEventJson {
    WatchEventJson {
        sequence: item.sequence,
        kind: ChangeKindJson::of(item.event.as_ref()),
        request: item.request.as_ref().map(request),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use utoipa::PartialSchema;

    use super::*;

    #[test]
    fn approvals_count_distinct_people() {
        let vote = |who: &str, d: proto::Decision| proto::Vote {
            reviewer: Some(proto::Identity {
                subject: who.into(),
                ..Default::default()
            }),
            decision: d as i32,
            ..Default::default()
        };
        let v = proto::RequestView {
            votes: vec![
                vote("a", proto::Decision::Approve),
                vote("a", proto::Decision::Approve),
                vote("b", proto::Decision::Approve),
                vote("c", proto::Decision::Deny),
            ],
            ..Default::default()
        };
        assert_eq!(approvals_given(&v), 2);
    }

    fn schema_of<T: PartialSchema>() -> Value {
        serde_json::to_value(T::schema()).expect("schema")
    }

    /// The words serde writes for every value of a set.
    fn serialised<T: Serialize>(all: &[T]) -> Vec<Value> {
        all.iter()
            .map(|w| serde_json::to_value(w).expect("word"))
            .collect()
    }

    #[test]
    fn every_set_of_words_lists_exactly_what_serde_writes() {
        fn check<T: Serialize + PartialSchema + Copy>(all: &[T], as_str: fn(T) -> &'static str) {
            let schema = schema_of::<T>();
            let words = serialised(all);
            assert_eq!(schema["enum"], Value::Array(words.clone()), "{schema}");
            let strs: Vec<Value> = all.iter().map(|w| json!(as_str(*w))).collect();
            assert_eq!(words, strs);
        }
        check(RequestStateJson::ALL, RequestStateJson::as_str);
        check(IdentityKindJson::ALL, IdentityKindJson::as_str);
        check(ProtocolJson::ALL, ProtocolJson::as_str);
        check(ParameterFormatJson::ALL, ParameterFormatJson::as_str);
        check(DecisionJson::ALL, DecisionJson::as_str);
        check(SessionStateJson::ALL, SessionStateJson::as_str);
        check(TimelineKindJson::ALL, TimelineKindJson::as_str);
        check(ChangeKindJson::ALL, ChangeKindJson::as_str);
        check(ViaJson::ALL, ViaJson::as_str);
        check(HealthStatusJson::ALL, HealthStatusJson::as_str);
        check(Code::ALL, Code::as_str);
    }

    #[test]
    fn an_option_always_sent_is_required_and_nullable_and_a_skipped_one_is_neither() {
        let request = schema_of::<RequestJson>();
        let required = request["required"].as_array().expect("required");
        for field in ["decided_at", "identity", "statement", "sequence"] {
            assert!(required.contains(&json!(field)), "{field}: {request}");
        }
        assert_eq!(
            request["properties"]["decided_at"]["type"],
            json!(["string", "null"])
        );
        let sent = serde_json::to_value(request_of_nothing()).expect("json");
        for field in required {
            assert!(
                sent.get(field.as_str().expect("name")).is_some(),
                "{field} is sent"
            );
        }
        let timeline = schema_of::<TimelineJson>();
        let required = timeline["required"].as_array().expect("required");
        for field in ["statement", "verdict", "by"] {
            assert!(!required.contains(&json!(field)), "{field}: {timeline}");
            assert!(
                !timeline["properties"][field].to_string().contains("null"),
                "{timeline}"
            );
        }
        let group = schema_of::<GroupJson>();
        assert_eq!(group["required"], json!(["id"]), "an empty name is left out");
    }

    fn request_of_nothing() -> RequestJson {
        request(&proto::RequestView::default())
    }

    #[test]
    fn reasons_are_bounded_by_the_same_number_everywhere() {
        for body in [schema_of::<VoteBody>(), schema_of::<KillBody>()] {
            assert_eq!(
                body["properties"]["reason"]["maxLength"],
                json!(MAX_REASON_CHARS),
                "{body}"
            );
            assert_eq!(
                body["additionalProperties"],
                json!(false),
                "unknown fields are refused"
            );
        }
    }

    /// `error.rs` builds its body by hand; it must be this shape.
    #[tokio::test]
    async fn a_refusal_is_the_error_shape() {
        use axum::response::IntoResponse;
        let response = crate::error::ApiError::new(Code::SelfApproval, "no").into_response();
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .expect("body");
        let sent: Value = serde_json::from_slice(&body).expect("JSON");
        let shaped = serde_json::to_value(ErrorJson::new(Code::SelfApproval, "no")).expect("json");
        assert_eq!(sent, shaped);
    }
}
