//! Holding a statement that needs approval: the request in the log, the
//! NOTICE to the client, the wait, and what the outcome means.
//!
//! The proxy appends `ApprovalRequested` (exact text, SHA-256 of the exact
//! messages), tells the client in a NOTICE which request it waits on, and
//! waits for the decision from the control plane, a local deadline, a kill
//! order, a cancel request, the proxy's shutdown, or the client leaving. A
//! grant runs the statement only if it is for the held bytes and is in the
//! log (a forged Attach message runs nothing). Over the simple protocol the
//! held bytes are the Query message; over the extended protocol they are
//! the statement's Parse and Bind messages (see `extended`).

use std::time::{Duration, SystemTime};

use airlock_eventlog::proto::{self, decision_notice::Outcome, event::Body, statement_refused::Cause};
use airlock_eventlog::signing::{Role, Trust, Vouched};
use airlock_eventlog::{ChainWriter, ReadFilter, RequestId, StoredEvent, subjects};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::signals::HoldInterrupt;
use super::to_client::Inject;
use super::to_upstream::ToUpstream;
use super::{Ctx, Ending};
use crate::codec::{Diagnostic, FeMessage, Frame};
use crate::error_response;
use crate::gate::{HoldSpec, Judgement, why};
use proto::approval_cancelled::Cause as Cancel;

/// What becomes of a statement once judged (and, if held, decided).
#[derive(Debug)]
pub(super) enum Step {
    Run {
        /// The approval it runs under; empty when allowed by policy.
        request_id: String,
        /// The approval's row bounds, from its grant in the log: it runs
        /// in a transaction of the proxy's and is rolled back past them.
        bounds: Option<super::bounded::Bounds>,
    },
    Refuse {
        diagnostic: Diagnostic,
        cause: Cause,
        request_id: String,
    },
}

impl Step {
    fn refuse(diagnostic: Diagnostic, cause: Cause, request_id: impl Into<String>) -> Step {
        Step::Refuse {
            diagnostic,
            cause,
            request_id: request_id.into(),
        }
    }
}

impl ToUpstream {
    /// Holds `statement` until it is decided. `Err` when the session must
    /// end (a kill, the client leaving); PostgreSQL has then been told to
    /// terminate.
    pub(super) async fn hold(
        &mut self,
        statement: &proto::Statement,
        judgement: &Judgement,
        spec: &HoldSpec,
    ) -> Result<Step, Ending> {
        // Everything pipelined before it goes first.
        self.flush().await?;
        // One span for the whole hold: the request's append, the grant
        // check and any cancellation are its children, in the request's
        // trace (the log puts the context on the events).
        let span = tracing::info_span!(
            "proxy.hold",
            session = %self.ctx.session,
            request = tracing::field::Empty
        );
        // Boxed: a hold's state is large and rare, and inline it would
        // make every session's reading task as large, idle or not.
        let ended = match Box::pin(self.hold_inner(statement, judgement, spec).instrument(span)).await {
            Ok(step) => return Ok(step),
            Err(ending) => ending,
        };
        let _ = tokio::io::AsyncWriteExt::write_all(
            &mut self.upstream,
            &FeMessage::Terminate.to_frame().to_bytes(),
        )
        .await;
        Err(ended)
    }

    async fn hold_inner(
        &mut self,
        statement: &proto::Statement,
        judgement: &Judgement,
        spec: &HoldSpec,
    ) -> Result<Step, Ending> {
        let ctx = self.ctx.clone();
        let deps = &ctx.deps;
        let unavailable =
            |why: &str| Step::refuse(error_response::hold_unavailable(why), Cause::Unavailable, "");
        if !self.signals.running() {
            return Ok(unavailable(
                "this proxy is shutting down (reconnect and run it again)",
            ));
        }
        if !deps.holds.is_attached() {
            return Ok(unavailable("the control plane is unreachable"));
        }
        // A live grant that covers it: the use is claimed in the log, and
        // the statement runs without a hold.
        if let Some(step) = self.use_grant(statement, judgement, spec).await {
            return Ok(step);
        }
        // What the reviewer decides on, asked of PostgreSQL first, each
        // bounded by its own time limit.
        let impact = impact(&ctx, statement, spec).await;
        let (agent_reason, reason_cut) = self.context.reason_for(&statement.text);
        let asked = Asked {
            impact,
            agent_reason,
            reason_cut,
            recent: self.context.before_last(),
        };
        let request_id = RequestId::generate();
        let rid = request_id.to_string();
        tracing::Span::current().record("request", rid.as_str());
        // Registered before appending, so a decision cannot outrun us.
        let mut decision = deps
            .holds
            .hold(request_id.as_str(), ctx.session.as_str(), &statement.sha256);
        // Filing is bounded, so the agent hears within it: a log that does
        // not take the request in time refuses the statement. The append
        // goes on meanwhile; if it lands after all, the request is
        // cancelled at once, so no reviewer is shown it as waiting.
        let mut filing = tokio::spawn({
            let log = deps.log.clone();
            let event = requested(&ctx, &request_id, statement, judgement, spec, asked);
            let subject = subjects::request(&request_id);
            // In the hold's span: the request's trace goes on through it.
            async move {
                ChainWriter::new_chain(subject)
                    .append(&log, event)
                    .await
                    .map(|_| ())
            }
            .instrument(tracing::Span::current())
        });
        let filed = match tokio::time::timeout(FILE_WITHIN, &mut filing).await {
            Ok(Ok(filed)) => filed,
            Ok(Err(e)) => Err(airlock_eventlog::Error::Read(format!("filing the request: {e}"))),
            Err(_) => {
                deps.holds.release(request_id.as_str());
                tracing::warn!(session = %ctx.session, request = %request_id, "the event log did not take the approval request in time");
                let (ctx, id) = (ctx.clone(), request_id.clone());
                let span = tracing::Span::current();
                tokio::spawn(async move {
                    if let Ok(Ok(())) = filing.instrument(span).await {
                        cancel(
                            &ctx,
                            &id,
                            Cancel::NotFiledInTime,
                            "the event log took too long to store the request; the statement was refused",
                        )
                        .await;
                    }
                });
                return Ok(unavailable(
                    "the event log did not take the approval request in time",
                ));
            }
        };
        if let Err(e) = filed {
            deps.holds.release(request_id.as_str());
            tracing::warn!(session = %ctx.session, error = %e, "approval request not recorded");
            if let airlock_eventlog::Error::InvalidEvent(_) = e {
                // Too large for one event: a reviewer could not be shown it.
                let d = error_response::too_large_to_review(
                    statement.text.len(),
                    airlock_eventlog::MAX_EVENT_BYTES,
                );
                return Ok(Step::refuse(d, Cause::Unavailable, ""));
            }
            return Ok(unavailable("the event log is unavailable"));
        }
        deps.holds.filed(request_id.as_str());
        let notice = error_response::held(
            &rid,
            &why(&judgement.verdict),
            spec.timeout.as_secs(),
            deps.reviewer_url.as_deref(),
        );
        let _ = self.inject.send(Inject::Notice(notice)).await;
        tracing::info!(session = %ctx.session, request = %request_id, "statement held");

        let mut flooded = false;
        let local_deadline = tokio::time::Instant::now() + spec.timeout + deps.expiry_grace;
        // A cancel that arrived before the hold began is for an earlier
        // statement: forgotten before the hold is announced as cancellable.
        self.signals.forget_cancels();
        ctx.holding.store(true, std::sync::atomic::Ordering::Release);
        let _held = deps.metrics.hold();
        let notice = loop {
            tokio::select! {
                d = &mut decision => break d.ok(),
                _ = tokio::time::sleep_until(local_deadline) => break None,
                interrupt = self.signals.while_held() => {
                    ctx.holding.store(false, std::sync::atomic::Ordering::Release);
                    return match interrupt {
                        HoldInterrupt::ShuttingDown => {
                            cancel(&ctx, &request_id, Cancel::ProxyShutdown, "the proxy holding it shut down").await;
                            Ok(Step::refuse(error_response::hold_ended_by_shutdown(&rid), Cause::Cancelled, rid))
                        }
                        HoldInterrupt::Cancelled => {
                            cancel(&ctx, &request_id, Cancel::ClientCancelled, "the client cancelled the statement").await;
                            Ok(Step::refuse(error_response::hold_cancelled_by_client(&rid), Cause::Cancelled, rid))
                        }
                        HoldInterrupt::Killed(order) => {
                            cancel(&ctx, &request_id, Cancel::SessionKilled, "the session was killed").await;
                            Err(self.killed(&order).await)
                        }
                    };
                }
                more = self.client.fill_more(), if !flooded => {
                    if !matches!(more, Ok(true)) {
                        ctx.holding.store(false, std::sync::atomic::Ordering::Release);
                        cancel(&ctx, &request_id, Cancel::ClientDisconnected, "the client went away while waiting").await;
                        return Err(Ending::new(
                            proto::session_closed::Cause::ClientDisconnected,
                            "client left while a statement was held",
                        ));
                    }
                    if self.client.buffered() > 1024 * 1024 {
                        // A client flooding while held: stop reading; the
                        // deadline, kills, cancels and shutdown still apply.
                        flooded = true;
                    }
                }
            }
        };
        ctx.holding.store(false, std::sync::atomic::Ordering::Release);
        deps.holds.release(request_id.as_str());
        Ok(
            match outcome(
                notice.as_ref(),
                &statement.sha256,
                &rid,
                spec.timeout,
                super::login::token_expired(&ctx.agent.identity),
            ) {
                // The grant must be in the log, not only on the wire from the
                // control plane: a forged Attach message runs nothing. Its
                // bounds are the log's too.
                Decided::Granted => match grant_in_log(&ctx, &request_id, &statement.sha256, spec).await {
                    Some(bounds) => Step::Run {
                        request_id: rid,
                        bounds,
                    },
                    None => Step::refuse(error_response::grant_unconfirmed(&rid), Cause::Unavailable, rid),
                },
                Decided::Refused(d, cause) => Step::refuse(d, cause, rid),
            },
        )
    }
}

impl ToUpstream {
    /// Runs `statement` under a live grant that covers it, if one does and
    /// its use is claimed in the log; `None` leaves it to a hold.
    async fn use_grant(
        &mut self,
        statement: &proto::Statement,
        judgement: &Judgement,
        spec: &HoldSpec,
    ) -> Option<Step> {
        let ctx = self.ctx.clone();
        let grants = &ctx.deps.holds.grants;
        if spec.fingerprint.hash.is_empty() || grants.is_empty() {
            return None;
        }
        if super::login::token_expired(&ctx.agent.identity) {
            return None;
        }
        let covering = grants.covering(
            &ctx.agent.identity,
            &ctx.binding.connection,
            &judgement.verdict.effects,
            spec,
            SystemTime::now(),
        );
        for id in covering {
            let used = |use_: u32| {
                let mut e = ctx.event(Body::GrantUsed(proto::GrantUsed {
                    number: use_,
                    statement_sha256: statement.sha256.clone(),
                    fingerprint: spec.fingerprint.hash.clone(),
                    proxy_id: ctx.deps.source.id.clone(),
                }));
                e.request_id = id.clone();
                e
            };
            match grants.claim(&ctx.deps.log, &id, used).await {
                Ok(claimed) => {
                    tracing::info!(session = %ctx.session, grant = %id, r#use = claimed.use_, of = claimed.max_uses, "statement run under a grant");
                    ctx.deps.metrics.grant_used();
                    let bounds = claimed.max_rows.map(|max_rows| super::bounded::Bounds {
                        tables: written_tables(&judgement.verdict.effects)
                            .into_iter()
                            .map(|table| proto::TableBound { table, max_rows })
                            .collect(),
                        every_table: false,
                    });
                    return Some(Step::Run {
                        request_id: format!("{GRANT_PREFIX}{id}"),
                        bounds,
                    });
                }
                Err(why) => {
                    tracing::info!(session = %ctx.session, grant = %id, %why, "a grant that covers the statement was not used; holding it");
                }
            }
        }
        None
    }
}

/// How a statement run under a grant names it where a statement run under
/// an approval names the request (`Step::Run::request_id`, the running
/// statement, its record): request ids are ULIDs, so this never collides.
pub(crate) const GRANT_PREFIX: &str = "grant:";

/// Splits what a statement ran under into (request id, grant id).
pub(crate) fn approval_ids(ran_under: String) -> (String, String) {
    match ran_under.strip_prefix(GRANT_PREFIX) {
        Some(grant) => (String::new(), grant.to_owned()),
        None => (ran_under, String::new()),
    }
}

/// The tables a statement's effects write (each bounded by a grant's
/// `max_rows`).
fn written_tables(effects: &[proto::Effect]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in effects {
        if e.kind.eq_ignore_ascii_case("SELECT") {
            continue;
        }
        for t in &e.tables {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
    }
    out
}

/// How long a hold waits for the log to store its request.
const FILE_WITHIN: Duration = Duration::from_secs(10);

/// What a request carries beside the statement and its verdict.
struct Asked {
    impact: proto::Impact,
    agent_reason: String,
    reason_cut: bool,
    recent: Vec<proto::RecentStatement>,
}

/// The estimate and, when a rule asks, the dry run, side by side.
async fn impact(ctx: &Ctx, statement: &proto::Statement, spec: &HoldSpec) -> proto::Impact {
    let limits = ctx.deps.impact;
    let upstream = &ctx.binding.upstream;
    let estimate = crate::impact::estimate(
        upstream,
        statement,
        spec.plan.as_ref().err().map(String::as_str),
        limits,
    );
    let dry_run = async {
        match &spec.dry_run {
            None => None,
            Some(may) => Some(
                crate::impact::dry_run(
                    upstream,
                    statement,
                    may.as_ref().err().map(String::as_str),
                    limits,
                )
                .await,
            ),
        }
    };
    let (estimate, dry_run) = tokio::join!(estimate, dry_run);
    proto::Impact {
        estimate: Some(estimate),
        dry_run,
    }
}

/// The `ApprovalRequested` that starts the request's chain.
fn requested(
    ctx: &Ctx,
    request_id: &RequestId,
    statement: &proto::Statement,
    judgement: &Judgement,
    spec: &HoldSpec,
    asked: Asked,
) -> proto::Event {
    let deadline = SystemTime::now() + spec.timeout;
    let mut requested = ctx.event(Body::ApprovalRequested(proto::ApprovalRequested {
        identity: Some(ctx.agent.identity.clone()),
        connection: Some(ctx.binding.connection_info()),
        client: Some(ctx.client.clone()),
        statement: Some(statement.clone()),
        verdict: Some(judgement.verdict.clone()),
        approvals_required: spec.approvals.max(1),
        reviewer_groups: spec.reviewers.clone(),
        require_acrs: spec.require_acrs.clone(),
        deadline: Some(deadline.into()),
        proxy_id: ctx.deps.source.id.clone(),
        impact: Some(asked.impact),
        agent_reason: asked.agent_reason,
        agent_reason_truncated: asked.reason_cut,
        recent_statements: asked.recent,
        fingerprint: Some(spec.fingerprint.clone()),
        break_glass: spec.break_glass.clone(),
        max_grant_ttl: spec
            .max_grant_ttl
            .and_then(|d| prost_types::Duration::try_from(d).ok()),
    }));
    requested.request_id = request_id.to_string();
    // A statement near the size limit keeps its place before a reviewer
    // at the cost of its context: the recent statements go first.
    let room = airlock_eventlog::MAX_EVENT_BYTES - 64 * 1024;
    if prost::Message::encoded_len(&requested) > room
        && let Some(Body::ApprovalRequested(r)) = requested.body.as_mut()
    {
        r.recent_statements.clear();
    }
    requested
}

/// What a decision (or its absence by the deadline) means for the held
/// statement, before the grant is confirmed in the log.
#[derive(Debug)]
enum Decided {
    Granted,
    Refused(Diagnostic, Cause),
}

/// Pure: the decision notice the control plane sent, against the held
/// bytes' digest. A grant for other bytes is refused; no notice is expiry.
/// Nothing runs on an expired identity, approved or not (`token_expired`):
/// the agent reconnects with a fresh token and asks again.
fn outcome(
    notice: Option<&proto::DecisionNotice>,
    held: &[u8],
    rid: &str,
    timeout: Duration,
    token_expired: bool,
) -> Decided {
    let Some(n) = notice else {
        return Decided::Refused(
            error_response::hold_expired(rid, timeout.as_secs()),
            Cause::Expired,
        );
    };
    match Outcome::try_from(n.outcome) {
        Ok(Outcome::Granted) if token_expired => {
            Decided::Refused(error_response::granted_after_token_expired(rid), Cause::Expired)
        }
        Ok(Outcome::Granted) if n.statement_sha256 == held => Decided::Granted,
        Ok(Outcome::Granted) => Decided::Refused(error_response::digest_mismatch(rid), Cause::DigestMismatch),
        Ok(Outcome::Denied) => Decided::Refused(
            error_response::denied_by(rid, n.decided_by.as_ref(), &n.reason),
            Cause::Denied,
        ),
        Ok(Outcome::Cancelled) => Decided::Refused(
            error_response::request_cancelled(rid, &n.reason),
            Cause::Cancelled,
        ),
        Ok(Outcome::Expired) | Ok(Outcome::Unspecified) | Err(_) => Decided::Refused(
            error_response::hold_expired(rid, timeout.as_secs()),
            Cause::Expired,
        ),
    }
}

/// SHA-256 of a frame's exact wire bytes (tag, length, body), without
/// copying it: computed for every Query, so kept off the allocator.
pub(super) fn frame_sha256(frame: &Frame) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update([frame.tag]);
    h.update(((frame.body.len() + 4) as i32).to_be_bytes());
    h.update(&frame.body);
    h.finalize().to_vec()
}

/// Whether the log confirms a grant of exactly `sha256` for `request_id`
/// ([`confirms_grant`]). Anyone who can publish on NATS can append an event,
/// so only what a control-plane key this proxy trusts signed counts.
async fn grant_in_log(
    ctx: &Ctx,
    request_id: &RequestId,
    sha256: &[u8],
    spec: &HoldSpec,
) -> Option<Option<super::bounded::Bounds>> {
    let Some(trust) = ctx.deps.log.trust() else {
        tracing::warn!(request = %request_id, "no trusted control-plane keys: no grant can be confirmed");
        return None;
    };
    let lifecycle = ReadFilter::subjects(subjects::lifecycle(request_id));
    let events = match ctx.deps.log.read_events(lifecycle).await {
        Ok(events) => events,
        Err(err) => {
            tracing::warn!(request = %request_id, error = %err, "cannot confirm a grant in the log");
            return None;
        }
    };
    let confirmed = confirms_grant(
        &events,
        trust,
        request_id,
        sha256,
        &spec.require_acrs,
        // The control plane asks for at least one approval, whatever the spec.
        spec.approvals.max(1),
        &ctx.agent.identity,
    )
    .or_else(|| {
        // A break-glass grant: one approver, the requester, on terms the
        // hold itself carries.
        let glass = spec.break_glass.as_ref()?;
        confirms_break_glass(
            &events,
            trust,
            request_id,
            sha256,
            &spec.require_acrs,
            glass,
            &ctx.agent.identity,
        )
    });
    if confirmed.is_none() {
        tracing::warn!(request = %request_id, "the log does not confirm the grant; refusing it");
    }
    confirmed
}

/// The first outcome of `request_id` in `events` (stream order) that a
/// trusted control-plane key signed, on one of the request's two subjects,
/// if it is an ApprovalGranted.
fn first_grant<'a>(
    events: &'a [StoredEvent],
    trust: &Trust,
    request_id: &RequestId,
) -> Option<&'a proto::ApprovalGranted> {
    let own = subjects::lifecycle(request_id);
    let first = events.iter().find(|e| {
        own.contains(&e.subject)
            && e.event.request_id == request_id.as_str()
            && matches!(
                e.event.body,
                Some(
                    Body::ApprovalGranted(_)
                        | Body::ApprovalDenied(_)
                        | Body::ApprovalExpired(_)
                        | Body::ApprovalCancelled(_)
                )
            )
            && matches!(
                trust.check(e),
                Ok(Vouched::Signed {
                    role: Role::Control,
                    ..
                })
            )
    })?;
    match first.event.body.as_ref() {
        Some(Body::ApprovalGranted(g)) => Some(g),
        _ => None,
    }
}

/// Pure: whether the first outcome of `request_id` in `events` (stream
/// order) that a trusted control-plane key signed, on one of the request's
/// two subjects, is an ApprovalGranted for exactly `sha256`. The first, as
/// the control plane's fold takes it: a later grant (from a replica of
/// another version, or any other way) never overrides a denial or an
/// expiry. Events of other writers (a proxy's, a replayed copy of one, junk)
/// are passed over, so they can neither confirm a grant nor hide one.
///
/// The proxy also checks the step-up its own hold asked for
/// (`require_acrs`): every approver's sign-in must have met each context.
/// The control plane enforces it first; this keeps a grant from a replica
/// that does not know the field (an older version during an upgrade) from
/// running a statement no stepped-up reviewer approved.
pub(crate) fn confirms_grant(
    events: &[StoredEvent],
    trust: &Trust,
    request_id: &RequestId,
    sha256: &[u8],
    require_acrs: &[String],
    approvals: u32,
    requester: &proto::Identity,
) -> Option<Option<super::bounded::Bounds>> {
    let g = first_grant(events, trust, request_id)?;
    // A break-glass grant is confirmed on the hold's break-glass terms
    // only (`confirms_break_glass`).
    if g.break_glass {
        return None;
    }
    let stepped_up = g.approvers.iter().all(|a| {
        a.reviewer
            .as_ref()
            .is_some_and(|r| require_acrs.iter().all(|acr| r.acrs.contains(acr)))
    });
    if !stepped_up || (!require_acrs.is_empty() && g.approvers.is_empty()) {
        tracing::warn!(request = %request_id, "a grant whose approvers did not all meet the step-up the hold requires; refusing it");
        return None;
    }
    // The quorum the hold asked for, by distinct people, as the control
    // plane counts it.
    let mut people: Vec<&str> = g
        .approvers
        .iter()
        .filter_map(|a| a.reviewer.as_ref().map(|r| r.subject.as_str()))
        // The requester never counts towards their own quorum.
        .filter(|s| !s.is_empty() && *s != requester.subject)
        .collect();
    people.sort_unstable();
    people.dedup();
    if people.len() < approvals as usize {
        tracing::warn!(request = %request_id, approvers = people.len(), needed = approvals, "a grant with fewer approvers than the hold requires; refusing it");
        return None;
    }
    (g.statement_sha256 == sha256).then(|| super::bounded::Bounds::of(g))
}

/// Pure: whether the first trusted outcome of `request_id` is a
/// break-glass grant for exactly `sha256` that the hold's own terms allow:
/// every approver is the requester, a person, in one of the `glass`
/// groups, with the step-up the hold asks.
pub(crate) fn confirms_break_glass(
    events: &[StoredEvent],
    trust: &Trust,
    request_id: &RequestId,
    sha256: &[u8],
    require_acrs: &[String],
    glass: &proto::BreakGlass,
    requester: &proto::Identity,
) -> Option<Option<super::bounded::Bounds>> {
    let g = first_grant(events, trust, request_id)?;
    let person = requester.kind == proto::identity::Kind::User as i32 && !requester.subject.is_empty();
    let own_approval = !g.approvers.is_empty()
        && g.approvers.iter().all(|a| {
            a.reviewer.as_ref().is_some_and(|r| {
                crate::grants::may_break_glass(r, requester, glass)
                    && require_acrs.iter().all(|acr| r.acrs.contains(acr))
            })
        });
    if !(g.break_glass && person && own_approval && g.statement_sha256 == sha256) {
        tracing::warn!(request = %request_id, "a grant that is neither a quorum nor a break-glass approval this hold allows; refusing it");
        return None;
    }
    Some(super::bounded::Bounds::of(g))
}

/// Files ApprovalCancelled for a request this session holds.
pub(super) async fn cancel(
    ctx: &Ctx,
    request_id: &RequestId,
    cause: proto::approval_cancelled::Cause,
    detail: &str,
) {
    ctx.deps.holds.release(request_id.as_str());
    let mut e = ctx.event(Body::ApprovalCancelled(proto::ApprovalCancelled {
        cause: cause as i32,
        detail: detail.to_owned(),
    }));
    e.request_id = request_id.to_string();
    let subject = subjects::request(request_id);
    for _ in 0..5 {
        // This session filed the request, the subject's first event (index
        // 1): the cancellation follows it whatever copy is last on the
        // subject.
        match ctx.deps.log.append_next_from(&subject, e.clone(), 1).await {
            Ok(_) => return,
            Err(airlock_eventlog::Error::Conflict { .. }) => continue,
            Err(err) => {
                tracing::warn!(request = %request_id, error = %err, "could not record the cancellation");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELD: &[u8] = b"digest of the held bytes";
    const T: Duration = Duration::from_secs(30);

    fn notice(outcome: Outcome, sha: &[u8]) -> proto::DecisionNotice {
        proto::DecisionNotice {
            outcome: outcome as i32,
            statement_sha256: sha.to_vec(),
            reason: "looks wrong".into(),
            decided_by: Some(proto::Identity {
                display_name: "Alice Reviewer".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    mod confirming {
        use super::*;
        use airlock_eventlog::signing::{Signer, TrustedKey, seal};
        use prost::Message as _;

        const SHA: &[u8] = &[7; 32];

        struct Log {
            events: Vec<StoredEvent>,
            control: Signer,
            proxy: Signer,
            request: RequestId,
        }

        impl Log {
            fn new() -> Log {
                Log {
                    events: Vec::new(),
                    control: Signer::generate(),
                    proxy: Signer::generate(),
                    request: RequestId::generate(),
                }
            }

            fn trust(&self) -> Trust {
                Trust::new(vec![
                    TrustedKey::new(Role::Control, self.control.verifying_key()),
                    TrustedKey::new(Role::Proxy, self.proxy.verifying_key()).for_writer("proxy-1"),
                ])
            }

            fn push(&mut self, subject: String, body: Body, by_control: bool) {
                let kind = if by_control {
                    proto::source::Kind::Control
                } else {
                    proto::source::Kind::Proxy
                };
                let source = proto::Source {
                    kind: kind as i32,
                    id: if by_control { "control-1" } else { "proxy-1" }.into(),
                    ..Default::default()
                };
                let mut e = airlock_eventlog::new_event(&source, body);
                e.request_id = self.request.to_string();
                let signer = if by_control { &self.control } else { &self.proxy };
                let raw = seal(&subject, &e, signer);
                self.events.push(StoredEvent {
                    sequence: self.events.len() as u64 + 1,
                    subject,
                    stored_at: time::OffsetDateTime::UNIX_EPOCH,
                    event: proto::Event::decode(raw.as_slice()).expect("decodes"),
                    raw: raw.into(),
                });
            }

            fn decision(&mut self, body: Body) {
                self.push(subjects::decision(&self.request), body, true);
            }

            fn legacy(&mut self, body: Body) {
                self.push(subjects::request(&self.request), body, true);
            }

            fn confirms(&self) -> bool {
                confirms_grant(
                    &self.events,
                    &self.trust(),
                    &self.request,
                    SHA,
                    &[],
                    0,
                    &proto::Identity::default(),
                )
                .is_some()
            }

            fn confirms_with_step_up(&self, acrs: &[&str]) -> bool {
                let acrs: Vec<String> = acrs.iter().map(|a| (*a).to_owned()).collect();
                confirms_grant(
                    &self.events,
                    &self.trust(),
                    &self.request,
                    SHA,
                    &acrs,
                    0,
                    &proto::Identity::default(),
                )
                .is_some()
            }
        }

        fn granted() -> Body {
            Body::ApprovalGranted(proto::ApprovalGranted {
                statement_sha256: SHA.to_vec(),
                ..Default::default()
            })
        }

        fn denied() -> Body {
            Body::ApprovalDenied(proto::ApprovalDenied::default())
        }

        fn requested() -> Body {
            Body::ApprovalRequested(proto::ApprovalRequested::default())
        }

        #[test]
        fn a_signed_grant_on_the_decision_subject_or_the_old_one_confirms() {
            let mut log = Log::new();
            let filed = subjects::request(&log.request);
            log.push(filed, requested(), false);
            log.decision(granted());
            assert!(log.confirms());
            let mut old = Log::new();
            old.legacy(granted());
            assert!(old.confirms(), "logs from before the decision subject");
        }

        /// Review finding: a grant from a replica that does not know the
        /// step-up field (an older version) runs nothing unless every
        /// approver's sign-in met the contexts the proxy's own hold asked.
        #[test]
        fn a_grant_whose_approvers_did_not_step_up_confirms_nothing() {
            let approver = |acrs: &[&str]| proto::Approver {
                reviewer: Some(proto::Identity {
                    subject: "alice".into(),
                    acrs: acrs.iter().map(|a| (*a).to_owned()).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let grant = |approvers: Vec<proto::Approver>| {
                Body::ApprovalGranted(proto::ApprovalGranted {
                    statement_sha256: SHA.to_vec(),
                    approvers,
                    ..Default::default()
                })
            };
            let mut plain = Log::new();
            plain.decision(grant(vec![approver(&[])]));
            assert!(plain.confirms(), "no step-up asked");
            assert!(!plain.confirms_with_step_up(&["c1"]));
            let mut partly = Log::new();
            partly.decision(grant(vec![approver(&["c1"]), approver(&["c2"])]));
            assert!(
                !partly.confirms_with_step_up(&["c1"]),
                "each approver must have met it"
            );
            let mut nobody = Log::new();
            nobody.decision(grant(vec![]));
            assert!(
                !nobody.confirms_with_step_up(&["c1"]),
                "a grant naming no approver"
            );
            let mut stepped = Log::new();
            stepped.decision(grant(vec![approver(&["c2", "c1"])]));
            assert!(stepped.confirms_with_step_up(&["c1"]));
            // The quorum, by distinct people.
            let twice = grant(vec![approver(&[]), approver(&[])]);
            let mut log = Log::new();
            log.decision(twice);
            assert!(
                confirms_grant(
                    &log.events,
                    &log.trust(),
                    &log.request,
                    SHA,
                    &[],
                    2,
                    &proto::Identity::default()
                )
                .is_none(),
                "one person twice"
            );
            assert!(
                confirms_grant(
                    &log.events,
                    &log.trust(),
                    &log.request,
                    SHA,
                    &[],
                    1,
                    &proto::Identity::default()
                )
                .is_some()
            );
            // The bounds the log's grant carries are the ones that apply.
            let mut bounded = Log::new();
            bounded.decision(Body::ApprovalGranted(proto::ApprovalGranted {
                statement_sha256: SHA.to_vec(),
                bounds: vec![proto::TableBound {
                    table: "public.orders".into(),
                    max_rows: 3,
                }],
                ..Default::default()
            }));
            let bounds = confirms_grant(
                &bounded.events,
                &bounded.trust(),
                &bounded.request,
                SHA,
                &[],
                0,
                &proto::Identity::default(),
            );
            assert_eq!(bounds.flatten().map(|b| b.tables.len()), Some(1));
        }

        /// Review finding: during an upgrade an old replica (deciding on
        /// the request's own subject) could grant what a new one denied;
        /// the proxy took the last event and ran it. The first outcome
        /// stands, as in the fold.
        #[test]
        fn a_grant_after_a_denial_confirms_nothing() {
            let mut log = Log::new();
            log.decision(denied());
            log.legacy(granted());
            assert!(!log.confirms());
            let mut log = Log::new();
            log.decision(Body::ApprovalExpired(proto::ApprovalExpired::default()));
            log.decision(granted());
            assert!(!log.confirms());
        }

        /// Review finding: the control plane cancels a request whose proxy
        /// or session is gone; a replica of an older version, which does
        /// not fold that cancel, could still grant after it. The first
        /// outcome the control plane signed stands, the cancel.
        #[test]
        fn a_grant_after_the_control_planes_cancel_confirms_nothing() {
            let mut log = Log::new();
            log.decision(Body::ApprovalCancelled(proto::ApprovalCancelled {
                cause: proto::approval_cancelled::Cause::ProxyLost as i32,
                ..Default::default()
            }));
            log.decision(granted());
            assert!(!log.confirms());
            // A proxy's own cancel (the client left) is not the control
            // plane's outcome: a grant after it is still the outcome.
            let mut log = Log::new();
            let filed = subjects::request(&log.request);
            log.push(
                filed,
                Body::ApprovalCancelled(proto::ApprovalCancelled::default()),
                false,
            );
            log.decision(granted());
            assert!(log.confirms());
        }

        /// Review finding: a proxy's event replayed after the grant (its
        /// signature still checks) made the grant unconfirmed: every
        /// approved statement could be made to fail by anyone with a
        /// proxy's NATS credentials.
        #[test]
        fn a_proxy_event_after_the_grant_does_not_hide_it() {
            let mut log = Log::new();
            let filed = subjects::request(&log.request);
            log.push(filed.clone(), requested(), false);
            log.decision(granted());
            log.push(filed, requested(), false);
            assert!(log.confirms());
        }

        #[test]
        fn a_grant_for_other_bytes_or_not_signed_by_the_control_plane_confirms_nothing() {
            let mut log = Log::new();
            log.decision(Body::ApprovalGranted(proto::ApprovalGranted {
                statement_sha256: vec![8; 32],
                ..Default::default()
            }));
            assert!(!log.confirms());
            let mut log = Log::new();
            let subject = subjects::decision(&log.request);
            log.push(subject, granted(), false);
            assert!(!log.confirms(), "a proxy's key cannot grant");
        }
    }

    #[test]
    fn a_grant_for_the_held_bytes_is_a_grant() {
        assert!(matches!(
            outcome(Some(&notice(Outcome::Granted, HELD)), HELD, "r1", T, false),
            Decided::Granted
        ));
    }

    #[test]
    fn a_grant_for_other_bytes_is_refused() {
        match outcome(Some(&notice(Outcome::Granted, b"other")), HELD, "r1", T, false) {
            Decided::Refused(d, Cause::DigestMismatch) => assert_eq!(d.code, "42501"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_denial_names_the_reviewer_and_the_reason() {
        match outcome(Some(&notice(Outcome::Denied, HELD)), HELD, "r1", T, false) {
            Decided::Refused(d, Cause::Denied) => {
                assert_eq!(d.code, "42501");
                assert_eq!(d.message, "request r1 was denied by Alice Reviewer: looks wrong");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_decision_in_time_is_a_retryable_timeout() {
        for n in [None, Some(notice(Outcome::Expired, HELD))] {
            match outcome(n.as_ref(), HELD, "r1", T, false) {
                Decided::Refused(d, Cause::Expired) => {
                    assert_eq!(d.code, "57014");
                    assert!(
                        d.message.contains("expired: no reviewer decided within 30s"),
                        "{}",
                        d.message
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_cancelled_request_is_a_cancel() {
        match outcome(Some(&notice(Outcome::Cancelled, HELD)), HELD, "r1", T, false) {
            Decided::Refused(d, Cause::Cancelled) => assert_eq!(d.code, "57014"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_grant_after_the_token_expired_runs_nothing() {
        match outcome(Some(&notice(Outcome::Granted, HELD)), HELD, "r1", T, true) {
            Decided::Refused(d, Cause::Expired) => {
                assert_eq!(d.code, "28000");
                assert!(d.message.contains("expired while it waited"), "{}", d.message);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unknown_outcome_never_runs_the_statement() {
        let mut n = notice(Outcome::Granted, HELD);
        n.outcome = 99;
        assert!(matches!(
            outcome(Some(&n), HELD, "r1", T, false),
            Decided::Refused(_, Cause::Expired)
        ));
    }
}
