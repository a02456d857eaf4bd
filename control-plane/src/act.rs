//! Acting on the log: appending votes and outcomes with optimistic
//! concurrency, so that however many replicas run, one request is decided
//! once. Judging happens in `decide`; this module re-reads and re-judges
//! whenever the log moved under it.
//!
//! Each decision runs in a span that continues the trace of the request it
//! decides (from its `ApprovalRequested`), and the events it appends carry
//! that span's context, so the holding proxy's trace goes on through here.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use airlock_eventlog::proto;
use airlock_eventlog::{Error as LogError, EventLog, Expect, RequestId, SessionId, link, subjects, trace};
use tracing::Instrument as _;

use crate::decide::{DecideError, Vote, decide, due_outcomes, lost_sessions};
use crate::live::Live;
use crate::metrics::Outcome;
use crate::presence::Presence;

/// Why a vote did not land.
#[derive(Debug, thiserror::Error)]
pub enum VoteError {
    #[error(transparent)]
    Refused(#[from] DecideError),
    #[error("the event log: {0}")]
    Log(#[from] LogError),
    #[error("this replica has not caught up with the log; retry")]
    Lagging,
    #[error("the request kept changing while deciding; retry")]
    Contended,
}

/// A vote that landed.
#[derive(Debug, Clone)]
pub struct Voted {
    pub event_id: String,
    pub sequence: u64,
}

/// How long to wait for the fold to reach what the log says.
const CATCH_UP: Duration = Duration::from_secs(5);

/// Judges and appends a vote (and its outcome, if it settles the request).
pub async fn vote(
    live: &Live,
    log: &EventLog,
    vote: &Vote,
    source: &proto::Source,
    presence: &Presence,
) -> Result<Voted, VoteError> {
    let decision = vote.decision.as_str_name();
    let span = tracing::info_span!("control.vote", request = %vote.request_id, decision);
    let span = request_span(span, live, &vote.request_id);
    append_vote(live, log, vote, source, presence)
        .instrument(span)
        .await
}

/// `span`, continuing the trace of request `id` if it has one.
fn request_span(span: tracing::Span, live: &Live, id: &str) -> tracing::Span {
    let requested = live.read(|s| s.request(id).and_then(|r| r.trace.clone()));
    airlock_telemetry::continue_trace(&span, &trace::context(requested.as_ref()));
    span
}

async fn append_vote(
    live: &Live,
    log: &EventLog,
    vote: &Vote,
    source: &proto::Source,
    presence: &Presence,
) -> Result<Voted, VoteError> {
    let id = RequestId::parse(&vote.request_id)
        .map_err(|_| DecideError::UnknownRequest(vote.request_id.clone()))?;
    // Decisions go on the decision subject, under optimistic concurrency
    // there; the proxy's cancels on the request's own subject.
    let subject = subjects::decision(&id);
    let filed = subjects::request(&id);
    for _ in 0..5 {
        let head = log.head(&subject).await?;
        let filed_head = log.head(&filed).await?;
        // Judge on a state that includes everything on both subjects.
        if !live
            .wait_for(head.sequence.max(filed_head.sequence), CATCH_UP)
            .await
        {
            return Err(VoteError::Lagging);
        }
        let alive = crate::presence::At(presence, tokio::time::Instant::now());
        let events = live.read(|s| decide(s, vote, SystemTime::now(), source, &alive))?;
        let mut head = head;
        head.index = head.index.max(live.chain_index(&subject));
        let mut voted = None;
        for (i, mut event) in events.into_iter().enumerate() {
            trace::stamp(&mut event);
            link(&mut event, &head);
            match log
                .append(&subject, &event, Expect::LastSequence(head.sequence))
                .await
            {
                Ok(appended) => {
                    if let Some(outcome) = event.body.as_ref().and_then(Outcome::of) {
                        live.metrics().decided(outcome);
                    }
                    if i == 0 && vote.break_glass {
                        live.metrics().broke_glass();
                        tracing::warn!(request = %vote.request_id, by = %vote.reviewer.subject, "BREAK-GLASS approval");
                    }
                    if i == 0 {
                        voted = Some(Voted {
                            event_id: event.id.clone(),
                            sequence: appended.sequence,
                        });
                    }
                    head = appended.head;
                }
                // Someone else moved the request first: judge again.
                Err(LogError::Conflict { .. }) if i == 0 => break,
                // The vote is in; the outcome is repaired by `reconcile`.
                Err(e) if i > 0 => {
                    tracing::warn!(request = %vote.request_id, error = %e, "outcome not appended; reconcile will");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(v) = voted {
            // Read your writes: the caller's next view includes the vote.
            live.wait_for(head.sequence, CATCH_UP).await;
            // A grant in scope follows the approval at once (else the next
            // reconcile issues it).
            issue_grant(live, log, &vote.request_id, source).await;
            return Ok(v);
        }
    }
    Err(VoteError::Contended)
}

/// Appends every outcome that is due: expiries, and outcomes of votes whose
/// outcome was never appended. Safe to run on every replica at once: the
/// expected-sequence check lets one append win.
pub async fn reconcile(live: &Live, log: &EventLog, source: &proto::Source, presence: &Presence) -> usize {
    let alive = crate::presence::At(presence, tokio::time::Instant::now());
    // How far the state judged below has surely folded: read before the
    // state (the fold advances this only after applying). Read after it,
    // it could count another replica's outcome, appended meanwhile, as
    // folded, and a second outcome would follow the first.
    let folded = live.sequence();
    let due = live.read(|s| {
        due_outcomes(s, SystemTime::now(), source, &alive)
            .into_iter()
            .map(|(id, e)| {
                let last = s.request(&id).map(|r| r.decision_sequence).unwrap_or(0);
                (id, e, last)
            })
            .collect::<Vec<_>>()
    });
    let lost = live.read(|s| lost_sessions(s, source, &alive));
    let mut appended = 0;
    for (id, last, event) in lost {
        // The judgement is as of the start of this pass; the reads and
        // appends before this one may have taken seconds (the log slow or
        // away), so it is made again just before acting on it.
        if !still_gone(live, presence, &event) {
            continue;
        }
        let span = tracing::info_span!("control.reconcile", session = %id);
        if close_lost(live, log, &id, event, last, folded)
            .instrument(span)
            .await
        {
            tracing::warn!(session = %id, "closed a session whose proxy is gone");
            appended += 1;
        }
    }
    for (id, event, last) in due {
        if !still_gone(live, presence, &event) {
            continue;
        }
        let span = request_span(tracing::info_span!("control.reconcile", request = %id), live, &id);
        let outcome = event.body.as_ref().and_then(Outcome::of);
        if append_due(live, log, &id, event, last, folded)
            .instrument(span)
            .await
        {
            if let Some(outcome) = outcome {
                live.metrics().decided(outcome);
            }
            appended += 1;
        }
    }
    // Grants earned and not yet issued, and grants past their expiry.
    let folded = live.sequence();
    let grants = live.read(|s| crate::grants::grants_due(s, SystemTime::now(), source));
    for (id, event, last) in grants {
        let Ok(gid) = RequestId::parse(&id) else { continue };
        if append_if_unmoved(live, log, &subjects::grant(&gid), event, last, folded).await {
            appended += 1;
        }
    }
    appended
}

/// Appends the GrantIssued request `id` has earned, if it has and the
/// fold shows none yet (the subject must be empty: one grant per request).
async fn issue_grant(live: &Live, log: &EventLog, id: &str, source: &proto::Source) {
    let Ok(gid) = RequestId::parse(id) else { return };
    let folded = live.sequence();
    let due = live.read(|s| s.request(id).and_then(|r| crate::grants::issue_due(s, r, source)));
    if let Some(event) = due
        && append_if_unmoved(live, log, &subjects::grant(&gid), event, 0, folded).await
    {
        tracing::info!(grant = %id, "grant issued");
    }
}

/// Why a revocation did not land.
#[derive(Debug, thiserror::Error)]
pub enum RevokeActError {
    #[error(transparent)]
    Refused(#[from] crate::grants::RevokeError),
    #[error("the event log: {0}")]
    Log(#[from] LogError),
    #[error("this replica has not caught up with the log; retry")]
    Lagging,
    #[error("the grant kept changing while revoking; retry")]
    Contended,
}

/// Judges and appends the revocation of grant `id` by `who`, under
/// optimistic concurrency on the grant's subject: a use claimed meanwhile
/// moves it, and the revocation is judged again after it.
pub async fn revoke(
    live: &Live,
    log: &EventLog,
    id: &str,
    who: &proto::Identity,
    reason: &str,
    source: &proto::Source,
) -> Result<proto::GrantView, RevokeActError> {
    let gid = RequestId::parse(id).map_err(|_| crate::grants::RevokeError::Unknown(id.to_owned()))?;
    let subject = subjects::grant(&gid);
    for _ in 0..10 {
        let mut head = log.head(&subject).await?;
        if !live.wait_for(head.sequence, CATCH_UP).await {
            return Err(RevokeActError::Lagging);
        }
        let (mut event, _) = live.read(|s| crate::grants::revoke(s, id, who, reason, source))?;
        trace::stamp(&mut event);
        head.index = head.index.max(live.chain_index(&subject));
        link(&mut event, &head);
        match log
            .append(&subject, &event, Expect::LastSequence(head.sequence))
            .await
        {
            Ok(appended) => {
                live.wait_for(appended.sequence, CATCH_UP).await;
                tracing::info!(grant = %id, by = %who.subject, "grant revoked");
                return Ok(live
                    .read(|s| s.grants.get(id).map(|g| g.view.clone()))
                    .unwrap_or_default());
            }
            Err(LogError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(RevokeActError::Contended)
}

/// Appends one due outcome on the request's decision subject: see
/// [`append_if_unmoved`].
async fn append_due(
    live: &Live,
    log: &EventLog,
    id: &str,
    event: proto::Event,
    last: u64,
    folded: u64,
) -> bool {
    let Ok(rid) = RequestId::parse(id) else {
        return false;
    };
    append_if_unmoved(live, log, &subjects::decision(&rid), event, last, folded).await
}

/// Appends `event` on `subject` if the subject is still at `last`, its
/// last folded event, or has moved on only by events the fold (which has
/// reached `folded`) refused as untrusted: junk anyone can publish must not
/// keep a request from expiring or a lost session from closing. An event
/// the fold took meanwhile (another replica's outcome, the proxy recording
/// after all) means judging again next round.
async fn append_if_unmoved(
    live: &Live,
    log: &EventLog,
    subject: &str,
    mut event: proto::Event,
    last: u64,
    folded: u64,
) -> bool {
    let mut head = match log.head(subject).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(%subject, error = %e, "cannot read the subject's head");
            return false;
        }
    };
    if head.sequence != last && folded < head.sequence {
        // The fold lags the log on this subject; next round.
        return false;
    }
    trace::stamp(&mut event);
    head.index = head.index.max(live.chain_index(subject));
    link(&mut event, &head);
    match log
        .append(subject, &event, Expect::LastSequence(head.sequence))
        .await
    {
        Ok(_) => true,
        Err(LogError::Conflict { .. }) => false, // another replica did it
        Err(e) => {
            tracing::warn!(%subject, error = %e, "appending failed");
            false
        }
    }
}

/// Whether an event that acts on a proxy being gone (a `PROXY_LOST` close
/// or cancellation) still has that judgement behind it now; true for any
/// other event.
fn still_gone(live: &Live, presence: &Presence, event: &proto::Event) -> bool {
    use proto::event::Body;
    let proxy_lost = match &event.body {
        Some(Body::SessionClosed(c)) => c.cause == proto::session_closed::Cause::ProxyLost as i32,
        Some(Body::ApprovalCancelled(c)) => c.cause == proto::approval_cancelled::Cause::ProxyLost as i32,
        _ => false,
    };
    if !proxy_lost {
        // A grant repaired from votes is not appended for a session that
        // closed meanwhile: the request is cancelled instead.
        if let Some(Body::ApprovalGranted(_)) = &event.body {
            return live.read(|s| {
                s.sessions
                    .get(&event.session_id)
                    .is_none_or(|x| x.summary.state != proto::SessionState::Closed as i32)
            });
        }
        return true;
    }
    let now = tokio::time::Instant::now();
    live.read(|s| match s.sessions.get(&event.session_id) {
        Some(session) => presence.lost(&session.summary.proxy_id, &session.summary.proxy_instance, now),
        None => s
            .request(&event.request_id)
            .is_some_and(|r| presence.proxy_lost(&r.requested().proxy_id, now)),
    })
}

/// Appends the control plane's close of session `id`, whose proxy is
/// gone: see [`append_if_unmoved`].
async fn close_lost(
    live: &Live,
    log: &EventLog,
    id: &str,
    event: proto::Event,
    last: u64,
    folded: u64,
) -> bool {
    let Ok(sid) = SessionId::parse(id) else {
        return false;
    };
    append_if_unmoved(live, log, &subjects::session(&sid), event, last, folded).await
}

/// Runs [`reconcile`] every `interval` until the task is dropped.
pub async fn reconcile_forever(
    live: Arc<Live>,
    log: EventLog,
    source: proto::Source,
    interval: Duration,
    presence: Arc<Presence>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if live.is_ready() {
            reconcile(&live, &log, &source, &presence).await;
        }
    }
}

/// Why a Slack link was not changed.
#[derive(Debug, thiserror::Error)]
pub enum SlackLinkError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("this replica has not caught up with the log; retry")]
    Lagging,
    #[error("the link kept changing; retry")]
    Contended,
}

/// What the typist of a ticket already used is told: it may have been
/// used by someone else, and the person whose ticket it is can see by whom.
const USED: &str = "that link ticket was already used, perhaps by another Slack user: whoever asked for it \
                    should check the links on the reviewer's Slack page and end any that is not theirs, then \
                    ask for a new ticket";

/// A change to a Slack user's link.
#[derive(Debug, Clone, Copy)]
pub enum LinkChange<'a> {
    /// Link to the person a checked ticket names, as passed on by `relay`.
    Link {
        ticket: &'a crate::slack::Ticket,
        relay: &'a proto::Identity,
    },
    /// End the link: `who` must be the person it names.
    Unlink {
        who: &'a proto::Identity,
        reason: &'a str,
    },
}

/// Links Slack user `slack` (as Slack vouched for them to the relay) to the
/// person a ticket names, or ends a link, under optimistic concurrency on
/// the link's subject. A ticket links once; a Slack user may be linked
/// again (to whoever's ticket they type: Slack vouched that it is them).
pub async fn slack_link(
    live: &Live,
    log: &EventLog,
    slack: &proto::SlackUser,
    change: LinkChange<'_>,
    source: &proto::Source,
) -> Result<proto::SlackLinkView, SlackLinkError> {
    use proto::event::Body;
    if !subjects::slack_id(&slack.team_id) || !subjects::slack_id(&slack.user_id) {
        return Err(SlackLinkError::Refused(
            "a Slack team and user id are upper-case letters and digits".into(),
        ));
    }
    let key = (slack.team_id.clone(), slack.user_id.clone());
    let subject = subjects::slack_link(&slack.team_id, &slack.user_id);
    for _ in 0..10 {
        let mut head = log.head(&subject).await?;
        if !live.wait_for(head.sequence, CATCH_UP).await {
            return Err(SlackLinkError::Lagging);
        }
        let current = live.read(|s| s.slack_links.get(&key).cloned());
        let body = match change {
            LinkChange::Link { ticket, relay } => {
                if live.read(|s| s.slack_tickets.contains_key(&ticket.id)) {
                    return Err(SlackLinkError::Refused(USED.into()));
                }
                let mut name = slack.clone();
                name.name = name.name.chars().take(100).collect();
                Body::SlackLinked(proto::SlackLinked {
                    slack: Some(name),
                    identity: Some(ticket.identity.clone()),
                    ticket_id: ticket.id.clone(),
                    ticket_expires_at: Some(ticket.expires_at.into()),
                    relayed_by: Some(relay.clone()),
                })
            }
            LinkChange::Unlink { who, reason } => match &current {
                Some(l)
                    if l.identity
                        .as_ref()
                        .is_some_and(|i| crate::slack::same_person(i, who)) =>
                {
                    Body::SlackUnlinked(proto::SlackUnlinked {
                        slack: Some(slack.clone()),
                        by: Some(who.clone()),
                        reason: reason.to_owned(),
                    })
                }
                // One answer whoever else it is linked to, if anyone.
                _ => {
                    return Err(SlackLinkError::Refused(
                        "that Slack user is not linked to you".into(),
                    ));
                }
            },
        };
        let mut event = airlock_eventlog::new_event(source, body);
        trace::stamp(&mut event);
        head.index = head.index.max(live.chain_index(&subject));
        link(&mut event, &head);
        match log
            .append(&subject, &event, Expect::LastSequence(head.sequence))
            .await
        {
            Ok(appended) => {
                if !live.wait_for(appended.sequence, CATCH_UP).await {
                    return Err(SlackLinkError::Lagging);
                }
                let view = live.read(|s| s.slack_links.get(&key).cloned());
                if let LinkChange::Link { .. } = change {
                    // The fold takes the first link a ticket made, in log
                    // order: if this one was not it, another replica won.
                    if view.as_ref().is_none_or(|v| v.sequence != appended.sequence) {
                        return Err(SlackLinkError::Refused(USED.into()));
                    }
                }
                tracing::info!(slack = %slack.user_id, linked = matches!(change, LinkChange::Link { .. }), "Slack link changed");
                return Ok(view.unwrap_or(proto::SlackLinkView {
                    slack: Some(slack.clone()),
                    ..Default::default()
                }));
            }
            Err(LogError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(SlackLinkError::Contended)
}
