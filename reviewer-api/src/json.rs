//! The JSON shapes of the REST API, made from the control plane's views.
//!
//! Plain conversions, no decisions: what the control plane says is shown as
//! it is, with enums as lower-case words, digests as hex and times as
//! RFC 3339. The OpenAPI document (`openapi.rs`) describes these shapes.

use airlock_proto::v1 as proto;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Debug, Clone, Serialize)]
pub struct GroupJson {
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdentityJson {
    pub subject: String,
    pub display_name: String,
    /// `user` or `app`.
    pub kind: &'static str,
    pub groups: Vec<GroupJson>,
    pub tenant_id: String,
    pub client_app_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionJson {
    pub name: String,
    pub upstream_host: String,
    pub upstream_port: u32,
    pub upstream_database: String,
    pub upstream_user: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientJson {
    pub address: String,
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub tls: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ParameterJson {
    pub position: usize,
    pub type_oid: u32,
    /// `text` or `binary`.
    pub format: &'static str,
    pub is_null: bool,
    /// A readable rendering of the value.
    pub display: String,
    /// The exact bytes the client bound, hex.
    pub value_hex: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatementJson {
    /// The exact text, byte for byte.
    pub text: String,
    /// `simple` or `extended`.
    pub protocol: &'static str,
    pub parameters: Vec<ParameterJson>,
    /// SHA-256 of the exact bytes that execute, hex. Send it back when
    /// voting so the vote binds to what was shown.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EffectJson {
    pub kind: String,
    pub tables: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerdictJson {
    pub policy: String,
    pub rule_index: u32,
    pub rule: String,
    pub reason: String,
    pub default_applied: bool,
    pub effects: Vec<EffectJson>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VoteJson {
    pub reviewer: Option<IdentityJson>,
    /// `approve` or `deny`.
    pub decision: &'static str,
    pub reason: String,
    pub time: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestJson {
    pub id: String,
    pub session_id: String,
    /// `pending`, `granted`, `denied`, `expired` or `cancelled`.
    pub state: &'static str,
    pub identity: Option<IdentityJson>,
    pub connection: Option<ConnectionJson>,
    pub client: Option<ClientJson>,
    pub statement: Option<StatementJson>,
    pub verdict: Option<VerdictJson>,
    pub approvals_required: u32,
    pub approvals_given: u32,
    pub reviewer_groups: Vec<GroupJson>,
    pub requested_at: Option<String>,
    pub deadline: Option<String>,
    pub decided_at: Option<String>,
    pub outcome_reason: String,
    pub votes: Vec<VoteJson>,
    pub proxy_id: String,
    /// Stream sequence of the last event folded into this view.
    pub sequence: u64,
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

pub fn state_name(state: i32) -> &'static str {
    match proto::RequestState::try_from(state).unwrap_or(proto::RequestState::Unspecified) {
        proto::RequestState::Pending => "pending",
        proto::RequestState::Granted => "granted",
        proto::RequestState::Denied => "denied",
        proto::RequestState::Expired => "expired",
        proto::RequestState::Cancelled => "cancelled",
        proto::RequestState::Unspecified => "unknown",
    }
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
            "app"
        } else if i.kind == proto::identity::Kind::User as i32 {
            "user"
        } else {
            "unknown"
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
            "extended"
        } else {
            "simple"
        },
        parameters: s
            .parameters
            .iter()
            .enumerate()
            .map(|(n, p)| ParameterJson {
                position: n + 1,
                type_oid: p.type_oid,
                format: if p.format == proto::parameter::Format::Binary as i32 {
                    "binary"
                } else {
                    "text"
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

pub fn decision_name(d: i32) -> &'static str {
    match proto::Decision::try_from(d).unwrap_or(proto::Decision::Unspecified) {
        proto::Decision::Approve => "approve",
        proto::Decision::Deny => "deny",
        proto::Decision::Unspecified => "unknown",
    }
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
        state: state_name(view.state),
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
                decision: decision_name(v.decision),
                reason: v.reason.clone(),
                time: rfc3339(v.time.as_ref()),
            })
            .collect(),
        proxy_id: asked.proxy_id.clone(),
        sequence: view.sequence,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionSummaryJson {
    pub id: String,
    /// `open` or `closed`.
    pub state: &'static str,
    pub identity: Option<IdentityJson>,
    pub connection: Option<ConnectionJson>,
    pub client: Option<ClientJson>,
    pub proxy_id: String,
    pub opened_at: Option<String>,
    pub closed_at: Option<String>,
    pub statements_executed: u64,
    pub statements_refused: u64,
    pub requests_pending: u32,
}

pub fn session_summary(s: &proto::SessionSummary) -> SessionSummaryJson {
    SessionSummaryJson {
        id: s.session_id.clone(),
        state: if s.state == proto::SessionState::Closed as i32 {
            "closed"
        } else {
            "open"
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
    }
}

/// One entry of a session's timeline, summarised for people and kept
/// machine-readable (`kind` plus the fields that matter for it).
#[derive(Debug, Clone, Serialize)]
pub struct TimelineJson {
    pub sequence: u64,
    pub time: Option<String>,
    /// The event kind, e.g. `statement_executed`, `approval_granted`.
    pub kind: &'static str,
    pub request_id: String,
    /// One line for a reader: what happened.
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement: Option<StatementJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<VerdictJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
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
        kind: "unknown",
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
            out.kind = "session_opened";
            out.by = o.identity.as_ref().map(identity);
            out.summary = format!(
                "{} connected to {} through {}",
                who(o.identity.as_ref()),
                o.connection.as_ref().map(|c| c.name.as_str()).unwrap_or("?"),
                o.proxy_id
            );
        }
        Body::StatementExecuted(x) => {
            out.kind = "statement_executed";
            out.statement = x.statement.as_ref().map(statement);
            out.verdict = x.verdict.as_ref().map(verdict);
            out.summary = if x.unfinished {
                format!("unfinished (outcome unknown): {}", x.error_message)
            } else if x.error_sqlstate.is_empty() {
                format!("executed: {} ({} rows)", x.command_tag, x.rows)
            } else {
                format!("failed in PostgreSQL: {} {}", x.error_sqlstate, x.error_message)
            };
        }
        Body::StatementsExecuted(x) => {
            // The control plane splits groups in session timelines; a group
            // seen here is summarised.
            out.kind = "statements_executed";
            out.summary = format!("{} statements executed", x.statements.len());
        }
        Body::StatementRefused(x) => {
            out.kind = "statement_refused";
            out.statement = x.statement.as_ref().map(statement);
            out.verdict = x.verdict.as_ref().map(verdict);
            out.summary = format!("refused ({}): {}", x.sqlstate, x.message);
        }
        Body::ApprovalRequested(x) => {
            out.kind = "approval_requested";
            out.statement = x.statement.as_ref().map(statement);
            out.verdict = x.verdict.as_ref().map(verdict);
            out.by = x.identity.as_ref().map(identity);
            out.summary = format!("held for approval ({} needed)", x.approvals_required);
        }
        Body::ApprovalVoted(x) => {
            out.kind = "approval_voted";
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
            out.kind = "approval_granted";
            let names: Vec<String> = x.approvers.iter().map(|a| who(a.reviewer.as_ref())).collect();
            out.summary = format!("granted by {}", names.join(", "));
        }
        Body::ApprovalDenied(x) => {
            out.kind = "approval_denied";
            out.by = x.reviewer.as_ref().map(identity);
            out.summary = with_reason(format!("denied by {}", who(x.reviewer.as_ref())), &x.reason);
        }
        Body::ApprovalExpired(_) => {
            out.kind = "approval_expired";
            out.summary = "expired: nobody decided in time".into();
        }
        Body::ApprovalCancelled(x) => {
            out.kind = "approval_cancelled";
            out.summary = with_reason("cancelled".into(), &x.detail);
        }
        Body::SessionKillRequested(x) => {
            out.kind = "session_kill_requested";
            out.by = x.requested_by.as_ref().map(identity);
            out.summary = with_reason(
                format!("kill requested by {}", who(x.requested_by.as_ref())),
                &x.reason,
            );
        }
        Body::SessionClosed(x) => {
            out.kind = "session_closed";
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
        Body::PolicyLoaded(_) => {
            out.kind = "policy_loaded";
            out.summary = "policy loaded".into();
        }
        Body::Checkpoint(_) => {
            out.kind = "checkpoint";
            out.summary = "checkpoint".into();
        }
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionJson {
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

/// The kind of change a watch event is, named after the event that made it
/// (`requested`, `voted`, `granted`, `denied`, `expired`, `cancelled`), or
/// `updated` for a catch-up view sent after a resume.
pub fn change_kind(event: Option<&proto::Event>) -> &'static str {
    use proto::event::Body;
    match event.and_then(|e| e.body.as_ref()) {
        Some(Body::ApprovalRequested(_)) => "requested",
        Some(Body::ApprovalVoted(_)) => "voted",
        Some(Body::ApprovalGranted(_)) => "granted",
        Some(Body::ApprovalDenied(_)) => "denied",
        Some(Body::ApprovalExpired(_)) => "expired",
        Some(Body::ApprovalCancelled(_)) => "cancelled",
        Some(
            Body::SessionOpened(_)
            | Body::StatementExecuted(_)
            | Body::StatementsExecuted(_)
            | Body::StatementRefused(_)
            | Body::SessionKillRequested(_)
            | Body::SessionClosed(_)
            | Body::PolicyLoaded(_)
            | Body::Checkpoint(_),
        )
        | None => "updated",
    }
}

#[cfg(test)]
mod tests {
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
}
