//! The control plane's state: a fold of the event log. `apply` only updates
//! state; it decides nothing (deciding is in `decide`). The same events in
//! the same order always give the same state, so any replica, restarted or
//! new, rebuilds exactly what the others hold.

use std::collections::{BTreeMap, HashMap};

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::subjects::{SubjectKind, classify};
use airlock_eventlog::{ChainHead, StoredEvent};
use prost_types::Timestamp;

/// One approval request, as folded.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub view: proto::RequestView,
    /// Stream sequence of the last event on the request's decision subject
    /// (0 before the first): what a decision appends against (optimistic
    /// concurrency).
    pub decision_sequence: u64,
    /// Trace context of the `ApprovalRequested` event: decisions on the
    /// request continue its trace. Not state anyone decides on.
    pub trace: Option<proto::TraceContext>,
}

impl Request {
    pub fn state(&self) -> proto::RequestState {
        proto::RequestState::try_from(self.view.state).unwrap_or(proto::RequestState::Unspecified)
    }

    pub fn is_pending(&self) -> bool {
        self.state() == proto::RequestState::Pending
    }

    pub fn requested(&self) -> &proto::ApprovalRequested {
        static EMPTY: std::sync::OnceLock<proto::ApprovalRequested> = std::sync::OnceLock::new();
        self.view
            .request
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
    }

    /// Distinct people who approved so far.
    pub fn approvals(&self) -> usize {
        let mut seen: Vec<&str> = Vec::new();
        for v in &self.view.votes {
            let who = v.reviewer.as_ref().map(|r| r.subject.as_str()).unwrap_or("");
            if v.decision == proto::Decision::Approve as i32 && !who.is_empty() && !seen.contains(&who) {
                seen.push(who);
            }
        }
        seen.len()
    }
}

/// One session, as folded (the full record is read from its subject).
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub summary: proto::SessionSummary,
    pub request_ids: Vec<String>,
    pub last_sequence: u64,
    /// A kill requested and not yet carried out (the session is still
    /// open): re-sent to the proxy whenever it attaches.
    pub kill: Option<PendingKill>,
}

/// A kill order waiting for its session to close.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingKill {
    pub order: proto::KillOrder,
}

/// What a proxy or replica last said of itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyView {
    pub proxy_id: String,
    pub policies: Vec<proto::policy_loaded::Loaded>,
    pub last_seen: Option<Timestamp>,
}

/// One grant (an approval in scope), as folded from its subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub view: proto::GrantView,
    /// The GrantIssued exactly as stored, and its sequence: proxies check
    /// its signature.
    pub issued_raw: Vec<u8>,
    pub issued_sequence: u64,
    /// The subject's last event folded: where the next use, revocation or
    /// expiry appends (optimistic concurrency).
    pub head: ChainHead,
}

/// Uses kept on a grant's view (the newest).
pub const RECENT_USES: usize = 20;

/// How far past a Slack link ticket's expiry the log may store the link
/// (the control plane appends it at once; clocks differ a little).
const TICKET_SKEW_SECS: i64 = 60;

impl Grant {
    pub fn state(&self) -> proto::GrantState {
        proto::GrantState::try_from(self.view.state).unwrap_or(proto::GrantState::Unspecified)
    }

    pub fn is_active(&self) -> bool {
        self.state() == proto::GrantState::Active
    }

    pub fn issued(&self) -> &proto::GrantIssued {
        static EMPTY: std::sync::OnceLock<proto::GrantIssued> = std::sync::OnceLock::new();
        self.view
            .grant
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
    }

    pub fn max_uses(&self) -> u32 {
        self.issued().scope.as_ref().map_or(0, |s| s.max_uses)
    }
}

/// The whole folded state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Projection {
    /// Ordered by id (ULIDs sort by creation time).
    pub requests: BTreeMap<String, Request>,
    pub sessions: HashMap<String, Session>,
    pub proxies: BTreeMap<String, ProxyView>,
    /// Requests by the session that filed them (a request may be folded
    /// before its session's SessionOpened: they are written by different
    /// paths).
    pub session_requests: HashMap<String, Vec<String>>,
    /// Grants by id (the approved request's).
    pub grants: BTreeMap<String, Grant>,
    /// Slack users linked to an identity, by (team, user).
    pub slack_links: BTreeMap<(String, String), proto::SlackLinkView>,
    /// Slack link tickets already used, with when they expire (seconds
    /// since the epoch): each links once. Dropped once expired.
    pub slack_tickets: BTreeMap<String, i64>,
    /// Last stream sequence folded.
    pub sequence: u64,
    /// Events that did not fit (an outcome for an unknown request, a second
    /// outcome): counted, never fatal. An auditor's `verify` reports them.
    pub anomalies: u64,
}

impl Projection {
    pub fn new() -> Projection {
        Projection::default()
    }

    /// Folds one stored event. Events at or below the folded sequence are
    /// ignored, so replaying an overlap (after a snapshot) is harmless.
    pub fn apply(&mut self, stored: &StoredEvent) {
        if stored.sequence <= self.sequence {
            return;
        }
        self.sequence = stored.sequence;
        let event = &stored.event;
        let Some(body) = &event.body else {
            self.anomalies += 1;
            return;
        };
        match classify(&stored.subject) {
            SubjectKind::Request(id) => self.apply_request(&id, stored, body, false),
            SubjectKind::Decision(id) => self.apply_request(&id, stored, body, true),
            SubjectKind::Session(id) => self.apply_session(&id, stored, body),
            SubjectKind::Proxy(id) => {
                if let Body::PolicyLoaded(p) = body {
                    self.proxies.insert(
                        id.clone(),
                        ProxyView {
                            proxy_id: id,
                            policies: p.policies.clone(),
                            last_seen: event.time,
                        },
                    );
                }
            }
            SubjectKind::Grant(id) => self.apply_grant(&id, stored, body),
            SubjectKind::SlackLink(team, user) => self.apply_slack_link(team, user, stored, body),
            SubjectKind::Checkpoint | SubjectKind::Other => {}
        }
    }

    /// Folds a Slack link's event: linked (to the identity it names, as of
    /// then), or unlinked.
    fn apply_slack_link(&mut self, team: String, user: String, stored: &StoredEvent, body: &Body) {
        match body {
            Body::SlackLinked(l) => {
                // A ticket links once, and only while good: a second link
                // with it (two replicas racing, or an old event copied back
                // onto its subject) is no link. The log's own store time
                // decides, not the event's.
                let stored_at = stored.stored_at.unix_timestamp();
                let expires = l.ticket_expires_at.map(|t| t.seconds).unwrap_or(i64::MIN);
                if l.ticket_id.is_empty()
                    || self.slack_tickets.contains_key(&l.ticket_id)
                    || stored_at > expires + TICKET_SKEW_SECS
                {
                    self.anomalies += 1;
                    return;
                }
                self.slack_tickets
                    .retain(|_, e| *e + TICKET_SKEW_SECS >= stored_at);
                self.slack_tickets.insert(l.ticket_id.clone(), expires);
                self.slack_links.insert(
                    (team, user),
                    proto::SlackLinkView {
                        slack: l.slack.clone(),
                        linked: true,
                        identity: l.identity.clone(),
                        linked_at: stored.event.time,
                        sequence: stored.sequence,
                        expires_at: None,
                    },
                );
            }
            Body::SlackUnlinked(_) => {
                self.slack_links.remove(&(team, user));
            }
            _ => self.anomalies += 1,
        }
    }

    /// Folds an event of grant `id`'s subject: issued once, then uses,
    /// and one end (revoked or expired; the first stands).
    fn apply_grant(&mut self, id: &str, stored: &StoredEvent, body: &Body) {
        let event = &stored.event;
        if event.request_id != id {
            self.anomalies += 1;
            return;
        }
        if let Body::GrantIssued(g) = body {
            if self.grants.contains_key(id) {
                self.anomalies += 1;
                return;
            }
            let max_uses = g.scope.as_ref().map_or(0, |s| s.max_uses);
            self.grants.insert(
                id.to_owned(),
                Grant {
                    view: proto::GrantView {
                        grant_id: id.to_owned(),
                        state: if max_uses == 0 {
                            proto::GrantState::UsedUp
                        } else {
                            proto::GrantState::Active
                        } as i32,
                        grant: Some(g.clone()),
                        issued_at: event.time,
                        uses: 0,
                        remaining: max_uses,
                        sequence: stored.sequence,
                        ..Default::default()
                    },
                    issued_raw: stored.raw.to_vec(),
                    issued_sequence: stored.sequence,
                    head: ChainHead::of(stored),
                },
            );
            return;
        }
        let Some(grant) = self.grants.get_mut(id) else {
            self.anomalies += 1;
            return;
        };
        grant.head = ChainHead::of(stored);
        grant.view.sequence = stored.sequence;
        let ended = |g: &mut Grant, state: proto::GrantState| {
            if matches!(g.state(), proto::GrantState::Active | proto::GrantState::UsedUp) {
                g.view.state = state as i32;
                g.view.ended_at = event.time;
                g.view.remaining = 0;
                true
            } else {
                false
            }
        };
        match body {
            Body::GrantUsed(u) => {
                // Each use follows the last under optimistic concurrency:
                // one numbered otherwise, or past the end, is an anomaly
                // (it is counted all the same: it may have run).
                if u.number != grant.view.uses + 1 || !grant.is_active() {
                    self.anomalies += 1;
                }
                grant.view.uses = grant.view.uses.saturating_add(1);
                let max = grant.max_uses();
                grant.view.remaining = max.saturating_sub(grant.view.uses);
                if grant.view.uses >= max && grant.is_active() {
                    grant.view.state = proto::GrantState::UsedUp as i32;
                    grant.view.ended_at = event.time;
                }
                grant.view.recent_uses.push(proto::GrantUse {
                    number: u.number,
                    session_id: event.session_id.clone(),
                    proxy_id: u.proxy_id.clone(),
                    statement_sha256: u.statement_sha256.clone(),
                    time: event.time,
                    sequence: stored.sequence,
                });
                let over = grant.view.recent_uses.len().saturating_sub(RECENT_USES);
                grant.view.recent_uses.drain(..over);
            }
            Body::GrantRevoked(r) => {
                if ended(grant, proto::GrantState::Revoked) {
                    grant.view.revoked_by = r.revoked_by.clone();
                    grant.view.revoke_reason = r.reason.clone();
                }
            }
            Body::GrantExpired(_) => {
                ended(grant, proto::GrantState::Expired);
            }
            _ => self.anomalies += 1,
        }
    }

    /// Folds an event of request `id`'s lifecycle: from its own subject, or
    /// (`decision`) from its decision subject. Logs written before decisions
    /// had a subject of their own hold them on the request's subject, so a
    /// decision is taken from either.
    fn apply_request(&mut self, id: &str, stored: &StoredEvent, body: &Body, decision: bool) {
        let event = &stored.event;
        if let Body::ApprovalRequested(r) = body {
            if decision || self.requests.contains_key(id) {
                self.anomalies += 1;
                return;
            }
            self.requests.insert(
                id.to_owned(),
                Request {
                    view: proto::RequestView {
                        request_id: id.to_owned(),
                        session_id: event.session_id.clone(),
                        state: proto::RequestState::Pending as i32,
                        request: Some(r.clone()),
                        requested_at: event.time,
                        sequence: stored.sequence,
                        ..Default::default()
                    },
                    decision_sequence: 0,
                    trace: event.trace.clone(),
                },
            );
            self.session_requests
                .entry(event.session_id.clone())
                .or_default()
                .push(id.to_owned());
            if let Some(s) = self.sessions.get_mut(&event.session_id) {
                s.request_ids.push(id.to_owned());
                s.summary.requests_pending += 1;
            }
            return;
        }
        let Some(request) = self.requests.get_mut(id) else {
            self.anomalies += 1;
            return;
        };
        if decision {
            request.decision_sequence = stored.sequence;
        }
        request.view.sequence = stored.sequence;
        let outcome = match body {
            Body::ApprovalVoted(v) => {
                request.view.votes.push(proto::Vote {
                    reviewer: v.reviewer.clone(),
                    decision: v.decision,
                    reason: v.reason.clone(),
                    time: event.time,
                    max_rows: v.max_rows.clone(),
                    scope: v.scope.clone(),
                    break_glass: v.break_glass,
                });
                None
            }
            Body::ApprovalGranted(g) => {
                // Loud: the session carries the flag from then on.
                if g.break_glass
                    && request.is_pending()
                    && let Some(s) = self.sessions.get_mut(&request.view.session_id)
                {
                    s.summary.break_glass = true;
                }
                Some((proto::RequestState::Granted, String::new()))
            }
            Body::ApprovalDenied(d) => Some((proto::RequestState::Denied, d.reason.clone())),
            Body::ApprovalExpired(_) => Some((
                proto::RequestState::Expired,
                "no decision before the deadline".into(),
            )),
            Body::ApprovalCancelled(c) => Some((proto::RequestState::Cancelled, c.detail.clone())),
            Body::SessionOpened(_)
            | Body::StatementExecuted(_)
            | Body::StatementsExecuted(_)
            | Body::StatementRefused(_)
            | Body::ApprovalRequested(_)
            | Body::SessionKillRequested(_)
            | Body::SessionClosed(_)
            | Body::PolicyLoaded(_)
            | Body::Checkpoint(_)
            | Body::GrantIssued(_)
            | Body::GrantUsed(_)
            | Body::GrantRevoked(_)
            | Body::GrantExpired(_)
            | Body::SlackLinked(_)
            | Body::SlackUnlinked(_) => {
                self.anomalies += 1;
                None
            }
        };
        if let Some((state, reason)) = outcome {
            if !request.is_pending() {
                // The first outcome stands. A cancel racing a decision is
                // expected (the proxy files cancels on the request's
                // subject, decisions go on the decision subject); any other
                // second outcome is impossible under optimistic concurrency
                // on the decision subject, so count it if seen.
                let cancelled = proto::RequestState::Cancelled;
                if state != cancelled && request.state() != cancelled {
                    self.anomalies += 1;
                }
                return;
            }
            request.view.state = state as i32;
            request.view.decided_at = event.time;
            request.view.outcome_reason = reason;
            let session_id = request.view.session_id.clone();
            if let Some(s) = self.sessions.get_mut(&session_id) {
                s.summary.requests_pending = s.summary.requests_pending.saturating_sub(1);
            }
        }
    }

    fn apply_session(&mut self, id: &str, stored: &StoredEvent, body: &Body) {
        let event = &stored.event;
        if let Body::SessionOpened(o) = body {
            let request_ids = self.session_requests.get(id).cloned().unwrap_or_default();
            let pending = request_ids
                .iter()
                .filter(|r| self.requests.get(*r).is_some_and(Request::is_pending))
                .count() as u32;
            let break_glass = request_ids.iter().any(|r| {
                self.requests.get(r).is_some_and(|r| {
                    r.state() == proto::RequestState::Granted && crate::decide::broke_glass(r)
                })
            });
            self.sessions.insert(
                id.to_owned(),
                Session {
                    summary: proto::SessionSummary {
                        session_id: id.to_owned(),
                        state: proto::SessionState::Open as i32,
                        identity: o.identity.clone(),
                        connection: o.connection.clone(),
                        client: o.client.clone(),
                        proxy_id: o.proxy_id.clone(),
                        proxy_instance: o.proxy_instance.clone(),
                        opened_at: event.time,
                        requests_pending: pending,
                        last_index: event.chain_index,
                        break_glass,
                        ..Default::default()
                    },
                    request_ids,
                    last_sequence: stored.sequence,
                    kill: None,
                },
            );
            return;
        }
        let Some(session) = self.sessions.get_mut(id) else {
            self.anomalies += 1;
            return;
        };
        session.last_sequence = stored.sequence;
        session.summary.last_index = session.summary.last_index.max(event.chain_index);
        match body {
            Body::StatementExecuted(_) => session.summary.statements_executed += 1,
            Body::StatementsExecuted(g) => {
                session.summary.statements_executed += g.statements.len() as u64;
            }
            Body::StatementRefused(_) => session.summary.statements_refused += 1,
            Body::SessionClosed(c) => {
                // The first close stands: a proxy that was thought lost
                // may still record its own close after the control
                // plane's.
                if session.summary.state != proto::SessionState::Closed as i32 {
                    session.summary.state = proto::SessionState::Closed as i32;
                    session.summary.closed_at = event.time;
                    session.summary.close_cause = c.cause;
                    session.summary.close_detail = c.detail.clone();
                }
                session.kill = None;
            }
            Body::SessionKillRequested(k) => {
                // The first order stands; a kill of a closed session is moot.
                if session.kill.is_none() && session.summary.state == proto::SessionState::Open as i32 {
                    session.kill = Some(PendingKill {
                        order: proto::KillOrder {
                            session_id: id.to_owned(),
                            requested_by: k.requested_by.clone(),
                            reason: k.reason.clone(),
                            event_id: event.id.clone(),
                            sequence: stored.sequence,
                        },
                    });
                }
            }
            Body::SessionOpened(_)
            | Body::ApprovalRequested(_)
            | Body::ApprovalVoted(_)
            | Body::ApprovalGranted(_)
            | Body::ApprovalDenied(_)
            | Body::ApprovalExpired(_)
            | Body::ApprovalCancelled(_)
            | Body::PolicyLoaded(_)
            | Body::Checkpoint(_)
            | Body::GrantIssued(_)
            | Body::GrantUsed(_)
            | Body::GrantRevoked(_)
            | Body::GrantExpired(_)
            | Body::SlackLinked(_)
            | Body::SlackUnlinked(_) => self.anomalies += 1,
        }
    }

    pub fn request(&self, id: &str) -> Option<&Request> {
        self.requests.get(id)
    }

    pub fn pending(&self) -> impl Iterator<Item = &Request> {
        self.requests.values().filter(|r| r.is_pending())
    }
}
