//! Deciding: given the folded state and a command, which events to append,
//! or the precise reason to refuse. Pure: no I/O, no clock (the caller
//! passes `now`), so every rule is tested as given/when/then.
//!
//! The rules a vote must pass, in order:
//! 1. the request exists and is pending;
//! 2. its deadline has not passed;
//! 3. the voter is a person: an app identity (every agent) never approves
//!    or denies anything, its own request or another's;
//! 4. the voter is not the requester (same subject), with no exception;
//! 5. the voter is in one of the request's reviewer groups;
//!    An approval must also come from a sign-in that met every
//!    authentication context the request requires (step-up,
//!    `require_acrs`); a denial needs none, as stopping a statement is
//!    never made harder;
//! 6. the session holding it is open and its proxy process alive (a
//!    grant would otherwise be recorded for a statement nothing runs);
//! 7. the voter has not voted on it before;
//! 8. if the voter states the digest they were shown, it is the request's.
//!
//! Outcomes: any denial denies; `approvals_required` distinct approvals
//! grant. Votes and outcomes are separate events so that a crash between
//! them is repaired by [`due_outcome`], which any replica runs.

use std::time::SystemTime;

use airlock_eventlog::new_event;
use airlock_eventlog::proto::{self, event::Body};
use prost_types::Timestamp;

use crate::projection::{Projection, Request};

/// A reviewer's vote, as verified by the caller (token checked).
#[derive(Debug, Clone)]
pub struct Vote {
    pub request_id: String,
    pub reviewer: proto::Identity,
    pub decision: proto::Decision,
    pub reason: String,
    /// The statement digest the reviewer was shown, if the client sent it.
    pub statement_sha256: Option<Vec<u8>>,
    /// `approvals.require_acrs` of this replica: step-up every approval
    /// needs, whatever the request carries (a proxy with another
    /// configuration, or one that does not know the field, cannot lower it).
    pub floor_acrs: Vec<String>,
    /// With an approval: the most rows of each table the statement may
    /// change (empty: the default, see [`bounds`]).
    pub max_rows: Vec<proto::TableBound>,
    /// With an approval: what else it allows (a grant; see `grants`).
    pub scope: Option<proto::GrantScope>,
    /// The requester approves their own request under the policy's
    /// break-glass terms ([`check_break_glass`]).
    pub break_glass: bool,
    /// Cast with a Slack button: the Slack user (linked to `reviewer`) and
    /// the reviewer service that relayed it.
    pub slack: Option<(proto::SlackUser, proto::Identity)>,
}

/// The shortest reason a break-glass approval must give.
pub const BREAK_GLASS_REASON_CHARS: usize = 20;

/// The most row bounds one approval may set.
pub const MAX_BOUNDS: usize = 64;

/// Why a vote is refused. Each maps to an HTTP / gRPC status at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("no request {0}")]
    UnknownRequest(String),
    #[error("request {request_id} is already {state}")]
    AlreadyDecided { request_id: String, state: String },
    #[error("request {request_id} expired at its deadline; the statement was refused")]
    Expired { request_id: String },
    #[error("{who} is an application identity; only people can approve or deny")]
    AppIdentity { who: String },
    #[error("{who} filed this request and cannot approve or deny it (no self-approval)")]
    SelfApproval { who: String },
    #[error("{who} is not in a reviewer group of this request ({groups})")]
    NotAReviewer { who: String, groups: String },
    #[error(
        "approving request {request_id} requires a sign-in that met authentication context {} (step-up, e.g. MFA); {who}'s token has {}. Sign in again with the context (the reviewer UI asks for it), then approve",
        missing.join(", "),
        if met.is_empty() { "none".to_owned() } else { met.join(", ") }
    )]
    StepUpRequired {
        who: String,
        request_id: String,
        missing: Vec<String>,
        met: Vec<String>,
    },
    #[error("{who} has already voted on request {request_id}")]
    AlreadyVoted { who: String, request_id: String },
    #[error("the statement digest shown to the reviewer does not match request {request_id}; reload it")]
    DigestMismatch { request_id: String },
    #[error("a vote must approve or deny")]
    NoDecision,
    #[error("max_rows: {0}")]
    BadBounds(String),
    #[error("scope: {0}")]
    BadScope(String),
    #[error("break-glass refused: {0}")]
    BreakGlassRefused(String),
    #[error("break-glass: {0}")]
    BadBreakGlass(String),
    #[error("a vote from Slack {0}")]
    SlackVote(String),
    #[error(
        "the session holding request {request_id} has ended ({why}): nothing waits for a decision, and the request is being cancelled"
    )]
    SessionEnded { request_id: String, why: String },
}

fn who(identity: &proto::Identity) -> String {
    if identity.display_name.is_empty() {
        identity.subject.clone()
    } else {
        format!("{} ({})", identity.display_name, identity.subject)
    }
}

fn state_name(r: &Request) -> String {
    r.state()
        .as_str_name()
        .trim_start_matches("REQUEST_STATE_")
        .to_lowercase()
}

fn past(deadline: Option<&Timestamp>, now: SystemTime) -> bool {
    match deadline.and_then(|d| SystemTime::try_from(*d).ok()) {
        Some(deadline) => now > deadline,
        // A request without a deadline is malformed: treat it as expired.
        None => true,
    }
}

/// Judges a vote. On success returns the events to append to the request's
/// subject, in order: the vote, then the outcome if the vote settles it.
pub fn decide(
    state: &Projection,
    vote: &Vote,
    now: SystemTime,
    source: &proto::Source,
    alive: &dyn Liveness,
) -> Result<Vec<proto::Event>, DecideError> {
    let request = state
        .request(&vote.request_id)
        .ok_or_else(|| DecideError::UnknownRequest(vote.request_id.clone()))?;
    if !request.is_pending() {
        return Err(DecideError::AlreadyDecided {
            request_id: vote.request_id.clone(),
            state: state_name(request),
        });
    }
    // Votes that settle a request settle it even before the outcome event
    // is appended (a replica may be appending it right now).
    if let Some(settled) = settled_by_votes(request) {
        return Err(DecideError::AlreadyDecided {
            request_id: vote.request_id.clone(),
            state: settled.into(),
        });
    }
    let asked = request.requested();
    if past(asked.deadline.as_ref(), now) {
        return Err(DecideError::Expired {
            request_id: vote.request_id.clone(),
        });
    }

    let reviewer = &vote.reviewer;
    if reviewer.kind != proto::identity::Kind::User as i32 || reviewer.subject.is_empty() {
        return Err(DecideError::AppIdentity { who: who(reviewer) });
    }
    let requester = asked.identity.as_ref().map(|i| i.subject.as_str()).unwrap_or("");
    if vote.break_glass {
        check_break_glass(vote, asked, !request.view.votes.is_empty())?;
    } else if reviewer.subject == requester {
        return Err(DecideError::SelfApproval { who: who(reviewer) });
    } else if !in_reviewer_groups(reviewer, asked) {
        let groups = asked
            .reviewer_groups
            .iter()
            .map(|g| {
                if g.name.is_empty() {
                    g.id.clone()
                } else {
                    g.name.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(DecideError::NotAReviewer {
            who: who(reviewer),
            groups,
        });
    }
    if vote.decision == proto::Decision::Approve {
        let mut missing: Vec<String> = Vec::new();
        for acr in asked.require_acrs.iter().chain(&vote.floor_acrs) {
            if !reviewer.acrs.contains(acr) && !missing.contains(acr) {
                missing.push(acr.clone());
            }
        }
        if !missing.is_empty() {
            return Err(DecideError::StepUpRequired {
                who: who(reviewer),
                request_id: vote.request_id.clone(),
                missing,
                met: reviewer.acrs.clone(),
            });
        }
    }
    if let Some(why) = gone(state, request, alive) {
        return Err(DecideError::SessionEnded {
            request_id: vote.request_id.clone(),
            why,
        });
    }
    if request
        .view
        .votes
        .iter()
        .any(|v| v.reviewer.as_ref().is_some_and(|r| r.subject == reviewer.subject))
    {
        return Err(DecideError::AlreadyVoted {
            who: who(reviewer),
            request_id: vote.request_id.clone(),
        });
    }
    if vote.slack.is_some() && vote.statement_sha256.as_ref().is_none_or(|d| d.is_empty()) {
        return Err(DecideError::SlackVote(
            "must name the digest of the statement its message showed".into(),
        ));
    }
    let digest = asked
        .statement
        .as_ref()
        .map(|s| s.sha256.clone())
        .unwrap_or_default();
    if let Some(shown) = &vote.statement_sha256
        && *shown != digest
    {
        return Err(DecideError::DigestMismatch {
            request_id: vote.request_id.clone(),
        });
    }
    if vote.decision == proto::Decision::Unspecified {
        return Err(DecideError::NoDecision);
    }
    check_bounds(vote, asked)?;
    if vote.slack.is_some() && (vote.break_glass || vote.scope.is_some() || !vote.max_rows.is_empty()) {
        return Err(DecideError::SlackVote(
            "approves or denies this statement only: no break-glass, no grant, no bounds of its own".into(),
        ));
    }
    if let Some(scope) = &vote.scope {
        crate::grants::check_scope(scope, vote.decision, asked)?;
    }

    let approvals = request.approvals() + usize::from(vote.decision == proto::Decision::Approve);
    let required = asked.approvals_required.max(1);
    let mut voted = new_event(
        source,
        Body::ApprovalVoted(proto::ApprovalVoted {
            reviewer: Some(reviewer.clone()),
            decision: vote.decision as i32,
            reason: vote.reason.clone(),
            statement_sha256: digest,
            approvals: approvals as u32,
            approvals_required: required,
            max_rows: vote.max_rows.clone(),
            scope: vote.scope.clone(),
            break_glass: vote.break_glass,
            slack: vote.slack.as_ref().map(|(u, _)| u.clone()),
            relayed_by: vote.slack.as_ref().map(|(_, r)| r.clone()),
        }),
    );
    voted.request_id = vote.request_id.clone();
    voted.session_id = request.view.session_id.clone();

    // What the request looks like once the vote is folded.
    let mut after = request.clone();
    after.view.votes.push(proto::Vote {
        reviewer: Some(reviewer.clone()),
        decision: vote.decision as i32,
        reason: vote.reason.clone(),
        time: voted.time,
        max_rows: vote.max_rows.clone(),
        scope: vote.scope.clone(),
        break_glass: vote.break_glass,
    });
    let mut events = vec![voted];
    events.extend(due_outcome(&after, now, source));
    Ok(events)
}

/// A break-glass vote: an approval, by the requester themself, a person
/// (an app identity never breaks glass), in one of the policy's
/// break-glass groups, with a reason of at least
/// [`BREAK_GLASS_REASON_CHARS`] characters and any scope within its
/// `max_ttl`.
///
/// The vote must come from another sign-in than the one the session logged
/// in with (another client application): whatever holds the credential the
/// statement came with (an agent given a person's token) must not approve
/// it with that same credential. And it must be the request's only vote: a
/// quorum already under way is for its reviewers to finish.
fn check_break_glass(
    vote: &Vote,
    asked: &proto::ApprovalRequested,
    others_voted: bool,
) -> Result<(), DecideError> {
    let refused = |why: &str| Err(DecideError::BreakGlassRefused(why.to_owned()));
    let Some(terms) = &asked.break_glass else {
        return refused("the policy that held this statement has no break_glass terms");
    };
    if vote.decision != proto::Decision::Approve {
        return Err(DecideError::BadBreakGlass(
            "break-glass goes with an approval only".into(),
        ));
    }
    let requester = asked.identity.as_ref();
    let reviewer = &vote.reviewer;
    if requester.is_none_or(|r| r.kind != proto::identity::Kind::User as i32) {
        return refused("an application identity (every agent) can never break glass");
    }
    if requester.is_none_or(|r| {
        r.subject.is_empty() || r.subject != reviewer.subject || r.tenant_id != reviewer.tenant_id
    }) {
        return refused(
            "only the requester may break glass on their own request; others approve it as reviewers",
        );
    }
    if requester.is_none_or(|r| r.issuer != reviewer.issuer) {
        return refused("break glass signed in with the issuer the session logged in with");
    }
    if requester.is_none_or(|r| r.client_app_id.is_empty() || r.client_app_id == reviewer.client_app_id) {
        return refused(
            "break glass from a sign-in of your own (the reviewer UI or CLI), not with the credential \
             the session logged in with",
        );
    }
    if !terms.clients.is_empty() {
        if requester.is_some_and(|r| terms.clients.contains(&r.client_app_id)) {
            return refused(
                "the session logged in through a client that approves (break_glass.clients): a session \
                 that can approve never breaks glass",
            );
        }
        if !terms.clients.contains(&reviewer.client_app_id) {
            return refused(&format!(
                "break glass through one of the policy's break_glass.clients ({}), not client {}",
                terms.clients.join(", "),
                reviewer.client_app_id
            ));
        }
    }
    if others_voted {
        return refused("reviewers have already voted on this request: the quorum is theirs to finish");
    }
    if !terms
        .groups
        .iter()
        .any(|g| !g.id.is_empty() && reviewer.groups.iter().any(|m| m.id == g.id))
    {
        return refused("you are not in a break_glass group of the policy");
    }
    if vote.reason.trim().chars().count() < BREAK_GLASS_REASON_CHARS {
        return Err(DecideError::BadBreakGlass(format!(
            "say why in at least {BREAK_GLASS_REASON_CHARS} characters"
        )));
    }
    if let Some(scope) = &vote.scope {
        let ttl = scope
            .ttl
            .and_then(|d| std::time::Duration::try_from(d).ok())
            .unwrap_or_default();
        let max = terms
            .max_ttl
            .and_then(|d| std::time::Duration::try_from(d).ok())
            .unwrap_or_default();
        if ttl > max {
            return Err(DecideError::BadScope(format!(
                "a break-glass grant lives at most {}s (break_glass.max_ttl), not {}s",
                max.as_secs(),
                ttl.as_secs()
            )));
        }
    }
    Ok(())
}

/// Whether `caller` may read their own request `asked` to break glass on
/// it: the requester (tenant, subject, issuer), signed in through another
/// client than the session's (one of the terms' clients, if they name
/// any), in one of the break-glass groups. Whatever holds the session's own
/// credential reads nothing through this.
///
/// `None` when the request is not the caller's own; else whether they may,
/// and if not, why (for the requester's eyes only).
pub fn may_read_to_break_glass(
    caller: &proto::Identity,
    asked: &proto::ApprovalRequested,
) -> Option<Result<(), String>> {
    let r = asked.identity.as_ref()?;
    let own = caller.kind == proto::identity::Kind::User as i32
        && !r.subject.is_empty()
        && r.subject == caller.subject
        && r.tenant_id == caller.tenant_id
        && r.issuer == caller.issuer;
    if !own {
        return None;
    }
    let Some(terms) = &asked.break_glass else {
        return Some(Err(
            "your own request: its policy allows no break-glass, so reviewers decide it".into(),
        ));
    };
    if r.client_app_id.is_empty() || r.client_app_id == caller.client_app_id {
        return Some(Err(
            "your own request: break glass from a sign-in of your own (the reviewer UI or CLI), not with the \
             credential the session logged in with"
                .into(),
        ));
    }
    if !terms.clients.is_empty() && !terms.clients.contains(&caller.client_app_id) {
        return Some(Err(format!(
            "your own request: break glass through one of the policy's break_glass.clients ({}), not client {}",
            terms.clients.join(", "),
            caller.client_app_id
        )));
    }
    if !terms
        .groups
        .iter()
        .any(|g| !g.id.is_empty() && caller.groups.iter().any(|m| m.id == g.id))
    {
        return Some(Err(
            "your own request: you are not in a break_glass group of its policy".into(),
        ));
    }
    Some(Ok(()))
}

/// Whether a break-glass approval is among the request's votes.
pub fn broke_glass(request: &Request) -> bool {
    request
        .view
        .votes
        .iter()
        .any(|v| v.break_glass && v.decision == proto::Decision::Approve as i32)
}

/// Bounds only with an approval; each names, once, a table the request
/// shows the statement touching (its impact, or its verdict's effects): a
/// name that matches nothing the proxy counts would bound nothing.
fn check_bounds(vote: &Vote, asked: &proto::ApprovalRequested) -> Result<(), DecideError> {
    if vote.max_rows.is_empty() {
        return Ok(());
    }
    if vote.decision != proto::Decision::Approve {
        return Err(DecideError::BadBounds(
            "row bounds go with an approval, not a denial".into(),
        ));
    }
    if vote.max_rows.len() > MAX_BOUNDS {
        return Err(DecideError::BadBounds(format!("at most {MAX_BOUNDS} tables")));
    }
    for (i, b) in vote.max_rows.iter().enumerate() {
        let table = b.table.trim();
        if table.is_empty() || table.len() > 200 || table != b.table || table.contains('*') {
            return Err(DecideError::BadBounds(format!(
                "{:?} is not a table name (schema.table, as the request shows it)",
                b.table
            )));
        }
        if vote.max_rows[..i].iter().any(|o| o.table == b.table) {
            return Err(DecideError::BadBounds(format!("{} is bounded twice", b.table)));
        }
        let shown = airlock_proto::bounds::default_bounds(asked)
            .iter()
            .any(|d| d.table == b.table)
            || asked
                .verdict
                .iter()
                .flat_map(|v| &v.effects)
                .flat_map(|e| &e.tables)
                .any(|t| *t == b.table);
        if !shown {
            return Err(DecideError::BadBounds(format!(
                "{} is not a table this request shows the statement touching (write schema.table as its impact or rule names it)",
                b.table
            )));
        }
    }
    Ok(())
}

/// The bounds a grant carries: for each table, the lowest any approver
/// allowed, an approver who set none for it allowing the default
/// (`airlock_proto::bounds::default_bounds`: the dry run's counts, else
/// twice the estimate and ten, else none, and the statement runs
/// unbounded).
pub fn bounds(asked: &proto::ApprovalRequested, votes: &[proto::Vote]) -> Vec<proto::TableBound> {
    let defaults: Vec<(String, u64)> = airlock_proto::bounds::default_bounds(asked)
        .into_iter()
        .map(|b| (b.table, b.max_rows))
        .collect();
    let approving: Vec<&proto::Vote> = votes
        .iter()
        .filter(|v| v.decision == proto::Decision::Approve as i32)
        .collect();
    let mut tables: Vec<&str> = defaults.iter().map(|(t, _)| t.as_str()).collect();
    for v in &approving {
        for b in &v.max_rows {
            if !tables.contains(&b.table.as_str()) {
                tables.push(&b.table);
            }
        }
    }
    let mut out = Vec::new();
    for table in tables {
        let default = defaults.iter().find(|(t, _)| t == table).map(|(_, n)| *n);
        let allowed = approving
            .iter()
            .filter_map(|v| {
                v.max_rows
                    .iter()
                    .find(|b| b.table == table)
                    .map(|b| b.max_rows)
                    .or(default)
            })
            .min();
        if let Some(max_rows) = allowed {
            out.push(proto::TableBound {
                table: table.to_owned(),
                max_rows,
            });
        }
    }
    out
}

/// "denied" or "granted" when the votes already settle the request.
fn settled_by_votes(request: &Request) -> Option<&'static str> {
    if request
        .view
        .votes
        .iter()
        .any(|v| v.decision == proto::Decision::Deny as i32)
    {
        Some("denied")
    } else if request.approvals() >= request.requested().approvals_required.max(1) as usize
        || broke_glass(request)
    {
        Some("granted")
    } else {
        None
    }
}

/// The outcome a pending request has earned and not yet recorded: a denial
/// if anyone denied, a grant once enough distinct people approved, expiry
/// past the deadline. `None` while it still waits.
pub fn due_outcome(request: &Request, now: SystemTime, source: &proto::Source) -> Option<proto::Event> {
    if !request.is_pending() {
        return None;
    }
    let asked = request.requested();
    let body = if let Some(denial) = request
        .view
        .votes
        .iter()
        .find(|v| v.decision == proto::Decision::Deny as i32)
    {
        Body::ApprovalDenied(proto::ApprovalDenied {
            reviewer: denial.reviewer.clone(),
            reason: denial.reason.clone(),
        })
    } else if request.approvals() >= asked.approvals_required.max(1) as usize || broke_glass(request) {
        let granted = bounds(asked, &request.view.votes);
        let every_table = airlock_proto::bounds::measured(asked).0;
        let mut approvers: Vec<proto::Approver> = Vec::new();
        for v in &request.view.votes {
            let subject = v.reviewer.as_ref().map(|r| r.subject.as_str());
            if v.decision == proto::Decision::Approve as i32
                && !approvers
                    .iter()
                    .any(|a| a.reviewer.as_ref().map(|r| r.subject.as_str()) == subject)
            {
                approvers.push(proto::Approver {
                    reviewer: v.reviewer.clone(),
                    reason: v.reason.clone(),
                    time: v.time,
                });
            }
        }
        Body::ApprovalGranted(proto::ApprovalGranted {
            approvers,
            statement_sha256: asked
                .statement
                .as_ref()
                .map(|s| s.sha256.clone())
                .unwrap_or_default(),
            bounds: granted.clone(),
            // Bounded when a table is bounded, or a dry run showed every
            // table it changes (then any other may change no row); never
            // "bounded" with nothing to check.
            bounded: !granted.is_empty() || every_table,
            every_table,
            break_glass: broke_glass(request),
        })
    } else if past(asked.deadline.as_ref(), now) {
        Body::ApprovalExpired(proto::ApprovalExpired {
            deadline: asked.deadline,
        })
    } else {
        return None;
    };
    let mut event = new_event(source, body);
    event.request_id = request.view.request_id.clone();
    event.session_id = request.view.session_id.clone();
    Some(event)
}

/// Every pending request that has an outcome due (expiry, or a vote whose
/// outcome was never appended, or the end of the session holding it), with
/// the event to append.
pub fn due_outcomes(
    state: &Projection,
    now: SystemTime,
    source: &proto::Source,
    alive: &dyn Liveness,
) -> Vec<(String, proto::Event)> {
    state
        .pending()
        .filter_map(|r| {
            match ended_outcome(state, r, now, source, alive) {
                Some(Ended::Cancel(e)) => Some(*e),
                // Nothing at all meanwhile: not even a grant repaired
                // from votes, for a session that has closed.
                Some(Ended::Grace) => None,
                None => due_outcome(r, now, source),
            }
            .map(|e| (r.view.request_id.clone(), e))
        })
        .collect()
}

/// What the control plane knows of which proxy processes are alive
/// (`presence`), as the pure rules here ask it.
pub trait Liveness {
    /// Whether the run `instance` of `proxy` is gone.
    fn lost(&self, proxy: &str, instance: &str) -> bool;
    /// Whether every run of `proxy` is gone.
    fn proxy_lost(&self, proxy: &str) -> bool;
    /// How long a run goes unheard before it counts as gone, for messages.
    fn lost_after(&self) -> std::time::Duration;
}

/// How long the proxy has, once the log shows a session closed, to file
/// the cancellation of a request it held itself (it does so before it
/// records the close) before the control plane does.
pub const SESSION_END_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why nothing can run `request` any more, if nothing can: the session
/// holding it closed, or the proxy process holding it is gone.
fn gone(state: &Projection, request: &Request, alive: &dyn Liveness) -> Option<String> {
    match state.sessions.get(&request.view.session_id) {
        Some(s) if s.summary.state == proto::SessionState::Closed as i32 => Some(closed_how(&s.summary)),
        Some(s) if alive.lost(&s.summary.proxy_id, &s.summary.proxy_instance) => Some(format!(
            "proxy {} has not been heard from for {} s",
            s.summary.proxy_id,
            alive.lost_after().as_secs()
        )),
        Some(_) => None,
        None if alive.proxy_lost(&request.requested().proxy_id) => Some(format!(
            "proxy {} has not been heard from for {} s",
            request.requested().proxy_id,
            alive.lost_after().as_secs()
        )),
        None => None,
    }
}

/// How a closed session ended, for messages: its close's cause and detail.
pub fn closed_how(s: &proto::SessionSummary) -> String {
    let cause = proto::session_closed::Cause::try_from(s.close_cause)
        .map(|c| {
            c.as_str_name()
                .trim_start_matches("CAUSE_")
                .to_lowercase()
                .replace('_', " ")
        })
        .unwrap_or_else(|_| "unknown cause".to_owned());
    if s.close_detail.is_empty() {
        cause
    } else {
        format!("{cause}: {}", s.close_detail)
    }
}

/// What the end of a request's session means for it.
#[derive(Debug)]
pub enum Ended {
    /// The session closed moments ago: the proxy files the cancellation
    /// itself; nothing is appended for the request meanwhile.
    Grace,
    Cancel(Box<proto::Event>),
}

/// The cancellation a pending request has earned because nothing can run
/// it any more: the session holding it closed in the log (and the proxy
/// did not file the cancellation itself within [`SESSION_END_GRACE`]), or
/// the proxy process holding it is gone. An approval of it would be
/// recorded as a grant that ran nothing.
pub fn ended_outcome(
    state: &Projection,
    request: &Request,
    now: SystemTime,
    source: &proto::Source,
    alive: &dyn Liveness,
) -> Option<Ended> {
    use proto::approval_cancelled::Cause;
    if !request.is_pending() {
        return None;
    }
    let (cause, detail) = match state.sessions.get(&request.view.session_id) {
        Some(s) if s.summary.state == proto::SessionState::Closed as i32 => {
            let closed = s.summary.closed_at.and_then(|t| SystemTime::try_from(t).ok());
            if closed.is_some_and(|t| now.duration_since(t).unwrap_or_default() < SESSION_END_GRACE) {
                return Some(Ended::Grace);
            }
            (
                Cause::SessionEnded,
                format!("the session holding it ended ({})", closed_how(&s.summary)),
            )
        }
        Some(s) if alive.lost(&s.summary.proxy_id, &s.summary.proxy_instance) => (
            Cause::ProxyLost,
            format!(
                "proxy {} holding it has not been heard from for {} s (crashed, restarted or cut off)",
                s.summary.proxy_id,
                alive.lost_after().as_secs()
            ),
        ),
        Some(_) => return None,
        None if alive.proxy_lost(&request.requested().proxy_id) => (
            Cause::ProxyLost,
            format!(
                "proxy {} holding it has not been heard from for {} s",
                request.requested().proxy_id,
                alive.lost_after().as_secs()
            ),
        ),
        None => return None,
    };
    let mut event = new_event(
        source,
        Body::ApprovalCancelled(proto::ApprovalCancelled {
            cause: cause as i32,
            detail,
        }),
    );
    event.request_id = request.view.request_id.clone();
    event.session_id = request.view.session_id.clone();
    Some(Ended::Cancel(Box::new(event)))
}

/// Open sessions whose proxy process is gone, each with the close the
/// control plane appends for it. The proxy's own record stops at the
/// session's last event: the close says so, so an auditor sees where
/// statements may be missing instead of a session open for ever.
pub fn lost_sessions(
    state: &Projection,
    source: &proto::Source,
    alive: &dyn Liveness,
) -> Vec<(String, u64, proto::Event)> {
    state
        .sessions
        .values()
        .filter(|s| s.summary.state == proto::SessionState::Open as i32)
        .filter(|s| alive.lost(&s.summary.proxy_id, &s.summary.proxy_instance))
        .map(|s| {
            let summary = &s.summary;
            let run = if summary.proxy_instance.is_empty() {
                String::new()
            } else {
                format!(" (run {})", summary.proxy_instance)
            };
            let duration = match (
                summary.opened_at.and_then(|t| SystemTime::try_from(t).ok()),
                SystemTime::now(),
            ) {
                (Some(opened), now) => now.duration_since(opened).ok(),
                _ => None,
            };
            let mut event = new_event(
                source,
                Body::SessionClosed(proto::SessionClosed {
                    cause: proto::session_closed::Cause::ProxyLost as i32,
                    detail: format!(
                        "closed by the control plane: proxy {}{run} has not been heard from for {} s \
                         (crashed, restarted or cut off); its record of this session ends at event #{}, \
                         and statements it ran after that, if any, are not in the log",
                        summary.proxy_id,
                        alive.lost_after().as_secs(),
                        summary.last_index
                    ),
                    statements_executed: summary.statements_executed,
                    statements_refused: summary.statements_refused,
                    duration: duration.and_then(|d| prost_types::Duration::try_from(d).ok()),
                }),
            );
            event.session_id = summary.session_id.clone();
            (summary.session_id.clone(), s.last_sequence, event)
        })
        .collect()
}

/// Whether `who` is in one of the request's reviewer groups (by object id,
/// as tokens carry them): who may see a request, and vote on it.
pub fn in_reviewer_groups(who: &proto::Identity, asked: &proto::ApprovalRequested) -> bool {
    asked
        .reviewer_groups
        .iter()
        .any(|g| !g.id.is_empty() && who.groups.iter().any(|mine| mine.id == g.id))
}

#[cfg(test)]
mod tests;
