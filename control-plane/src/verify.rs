//! The auditor's commands over the whole log: `verify` (every hash chain,
//! every checkpoint's digest and signature, events that do not fit) and
//! `replay` (the state the log folds to, summarised). Both read the log from
//! its first event, never a snapshot, and keep memory proportional to the
//! number of chains and sessions, not to the length of the log.

use std::collections::{BTreeMap, VecDeque};

use airlock_eventlog::checkpoint::{Leaf, RangeDigest};
use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::signing::{Trust, Untrusted, Vouched};
use airlock_eventlog::{ChainChecker, EventLog, ReadFilter, StoredEvent};
use ed25519_dalek::VerifyingKey;
use futures::StreamExt;
use serde::Serialize;

use crate::checkpoint::check_signature;
use crate::projection::Projection;

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub events: u64,
    pub chains: usize,
    pub last_sequence: u64,
    pub anomalies: u64,
    /// Checkpoints found, and how far the valid ones reach.
    pub checkpoints: u64,
    pub covered_through: u64,
    /// Events after the last checkpoint (protected by their chains only).
    pub uncovered_events: u64,
    /// Whether checkpoint signatures were checked (a public key was given).
    pub signatures_checked: bool,
    /// Who wrote the events, as their signatures say.
    pub writers: WritersReport,
    /// Every finding, first one first; each names the event.
    pub broken: Vec<String>,
    pub ok: bool,
}

/// Events by how their writer is vouched for.
#[derive(Debug, Default, Serialize)]
pub struct WritersReport {
    /// Whether signatures were checked against `signing.trust`.
    pub checked: bool,
    /// Events signed by a trusted key whose role may write them, by role
    /// (when not checked: events carrying a signature, under "unchecked").
    pub signed: BTreeMap<String, u64>,
    /// Events without a signature: a log written before signing, or (when
    /// checked, at or past `signing.unsigned_before`) a finding.
    pub unsigned: u64,
    /// Events refused: unknown key, bad signature, a role writing what it
    /// may not, unsigned where signing is required. Each is also in `broken`.
    pub refused: u64,
}

impl WritersReport {
    /// Counts `e`; an error is the finding to report.
    fn count(&mut self, trust: Option<&Trust>, e: &StoredEvent) -> Result<(), String> {
        let Some(trust) = trust else {
            if e.event.signature.is_some() {
                *self.signed.entry("unchecked".to_owned()).or_default() += 1;
            } else {
                self.unsigned += 1;
            }
            return Ok(());
        };
        match trust.check(e) {
            Ok(Vouched::Signed { role, .. }) => {
                *self.signed.entry(role.to_string()).or_default() += 1;
                Ok(())
            }
            Ok(Vouched::UnsignedHistory) => {
                self.unsigned += 1;
                Ok(())
            }
            Err(why) => {
                if matches!(why, Untrusted::Unsigned) {
                    self.unsigned += 1;
                }
                self.refused += 1;
                Err(format!(
                    "event {} (seq {}) on {} is not from a trusted writer: {why}",
                    e.event.id, e.sequence, e.subject
                ))
            }
        }
    }
}

/// Checkpoint checks as the log streams by: the leaves of events not yet
/// covered wait in a queue until the checkpoint over them arrives.
struct CheckpointCheck<'k> {
    keys: &'k [VerifyingKey],
    pending: VecDeque<Leaf>,
    next_first: u64,
    found: u64,
    /// End of the last checkpoint that checked out.
    valid_through: u64,
}

impl CheckpointCheck<'_> {
    fn check(&mut self, stored: &StoredEvent, c: &proto::Checkpoint) -> Result<(), String> {
        self.found += 1;
        let at = format!("checkpoint {} (seq {})", stored.event.id, stored.sequence);
        if c.first_sequence != self.next_first {
            return Err(format!(
                "{at} covers {}..={}, but the range must start at {}: a range is missing or covered twice",
                c.first_sequence, c.last_sequence, self.next_first
            ));
        }
        if c.last_sequence < c.first_sequence || c.last_sequence >= stored.sequence {
            return Err(format!(
                "{at} covers {}..={}, which does not lie before it",
                c.first_sequence, c.last_sequence
            ));
        }
        let mut digest = RangeDigest::new(c.first_sequence);
        while self
            .pending
            .front()
            .is_some_and(|l| l.sequence <= c.last_sequence)
        {
            if let Some(leaf) = self.pending.pop_front() {
                digest
                    .add_leaf(&leaf)
                    .map_err(|e| format!("{at}: events missing from its range: {e}"))?;
            }
        }
        // The range is consumed: later checkpoints are judged on their own,
        // whatever this one's verdict.
        self.next_first = c.last_sequence + 1;
        if digest.last() != c.last_sequence || digest.count() != c.event_count {
            return Err(format!(
                "{at} covers {} events up to {}, the log holds {} up to {}: events were removed",
                c.event_count,
                c.last_sequence,
                digest.count(),
                digest.last()
            ));
        }
        if digest.finish().as_slice() != c.digest.as_slice() {
            return Err(format!(
                "{at}: the digest over {}..={} does not match: an event in that range was altered",
                c.first_sequence, c.last_sequence
            ));
        }
        if !self.keys.is_empty() {
            check_signature(c, self.keys).map_err(|e| format!("{at}: {e}"))?;
        }
        self.valid_through = c.last_sequence;
        Ok(())
    }
}

/// Checks the whole log. `keys`: the checkpoint public keys (empty: digests
/// are checked, signatures are not, and the report says so). `trust`: the
/// fleet's writers (`signing:`); without it event signatures are counted,
/// not checked.
pub async fn verify(
    log: &EventLog,
    keys: &[VerifyingKey],
    trust: Option<&Trust>,
) -> anyhow::Result<VerifyReport> {
    let stream = log.read(0, ReadFilter::all()).await?;
    futures::pin_mut!(stream);
    let mut chains = ChainChecker::new();
    let mut fold = Projection::new();
    let mut checkpoints = CheckpointCheck {
        keys,
        pending: VecDeque::new(),
        next_first: 1,
        found: 0,
        valid_through: 0,
    };
    let mut events = 0u64;
    let mut broken = Vec::new();
    let mut writers = WritersReport {
        checked: trust.is_some(),
        ..Default::default()
    };
    while let Some(item) = stream.next().await {
        let e = match item {
            Ok(e) => e,
            Err(e) => {
                broken.push(e.to_string());
                continue;
            }
        };
        events += 1;
        if let Err(err) = chains.check(&e) {
            broken.push(err.to_string());
        }
        if let Some(Body::Checkpoint(c)) = &e.event.body
            && let Err(err) = checkpoints.check(&e, c)
        {
            broken.push(err);
        }
        checkpoints.pending.push_back(Leaf::of(&e));
        match writers.count(trust, &e) {
            Ok(()) => fold.apply(&e),
            Err(err) => broken.push(err),
        }
    }
    let uncovered = checkpoints.pending.len() as u64;
    let signatures_checked = !keys.is_empty() || checkpoints.found == 0;
    Ok(VerifyReport {
        events,
        chains: chains.chains(),
        last_sequence: fold.sequence,
        anomalies: fold.anomalies,
        checkpoints: checkpoints.found,
        covered_through: checkpoints.valid_through,
        uncovered_events: uncovered,
        signatures_checked,
        writers,
        ok: broken.is_empty(),
        broken,
    })
}

/// Per-identity activity in `replay`.
#[derive(Debug, Default, Serialize)]
pub struct IdentitySummary {
    pub display_name: String,
    pub kind: String,
    pub sessions: u64,
    pub statements_executed: u64,
    pub statements_refused: u64,
    pub approvals_requested: u64,
}

/// A reviewer's votes in `replay`.
#[derive(Debug, Default, Serialize)]
pub struct ReviewerSummary {
    pub display_name: String,
    pub approved: u64,
    pub denied: u64,
}

/// One break-glass approval.
#[derive(Debug, Default, Serialize)]
pub struct BreakGlassUse {
    pub sequence: u64,
    pub request_id: String,
    pub session_id: String,
    /// The requester, who approved it themself (object id).
    pub subject: String,
    pub display_name: String,
    pub reason: String,
}

/// Grants as the log tells them.
#[derive(Debug, Default, Serialize)]
pub struct GrantsSummary {
    pub issued: u64,
    /// Of those issued, by a break-glass approval.
    pub issued_by_break_glass: u64,
    /// Statements run under a grant (each a `GrantUsed`).
    pub uses: u64,
    pub revoked: u64,
    pub expired: u64,
}

/// Statements judged by shadow policies too (`shadow_policies:`), and
/// where their verdict differed from the enforced one.
#[derive(Debug, Default, Serialize)]
pub struct ShadowReport {
    /// Statements (executed or refused) that carry a shadow verdict.
    pub judged: u64,
    /// `enforced -> shadow` action pairs that differ, with their counts.
    pub disagreements: BTreeMap<String, u64>,
}

impl ShadowReport {
    fn count(&mut self, verdict: Option<&proto::Verdict>) {
        let Some(v) = verdict else { return };
        let Some(shadow) = &v.shadow_verdict else { return };
        self.judged += 1;
        if shadow.action != v.action {
            let name = |a: proto::verdict::Action| enum_name(a.as_str_name(), "ACTION_");
            *self
                .disagreements
                .entry(format!("{} -> {}", name(v.action()), name(shadow.action())))
                .or_default() += 1;
        }
    }
}

/// What `airlock-control replay` prints: the state the log folds to.
#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub events: u64,
    pub last_sequence: u64,
    pub sessions_open: usize,
    pub sessions_closed: usize,
    /// Executed statements by the verdict that let them run (allow,
    /// require_approval), and refused ones by cause (policy, denied, ...).
    pub statements_executed: BTreeMap<String, u64>,
    pub statements_refused: BTreeMap<String, u64>,
    /// Approved statements that ran under row bounds and were committed
    /// (those rolled back past a bound are in `statements_refused` as
    /// `bound_exceeded`).
    pub statements_bounded: u64,
    pub requests: BTreeMap<String, usize>,
    /// Votes by reviewer (keyed by object id).
    pub approvals_by_reviewer: BTreeMap<String, ReviewerSummary>,
    /// Activity by identity (keyed by object id).
    pub identities: BTreeMap<String, IdentitySummary>,
    pub proxies: usize,
    pub anomalies: u64,
    /// Events not folded: no trusted writer signed them (`signing.trust`).
    pub untrusted: u64,
    /// Where shadow policies and the enforced ones disagreed.
    pub shadow: ShadowReport,
    /// Requests their requester approved under break-glass terms, in log
    /// order: who, on which request, why.
    pub break_glass: Vec<BreakGlassUse>,
    /// Approvals in scope: issued, used, revoked, expired.
    pub grants: GrantsSummary,
    pub seconds: f64,
    pub events_per_second: f64,
}

fn enum_name(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_lowercase()
}

/// Folds the whole log from the start, as a fresh replica would: events no
/// trusted writer signed are skipped and counted (`log.trust()`).
pub async fn replay(log: &EventLog) -> anyhow::Result<ReplayReport> {
    let started = std::time::Instant::now();
    let stream = log.read(0, ReadFilter::all()).await?;
    futures::pin_mut!(stream);
    let mut fold = Projection::new();
    let mut events = 0u64;
    let mut executed: BTreeMap<String, u64> = BTreeMap::new();
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    let mut bounded = 0u64;
    let mut reviewers: BTreeMap<String, ReviewerSummary> = BTreeMap::new();
    let mut identities: BTreeMap<String, IdentitySummary> = BTreeMap::new();
    // Session -> identity, from SessionOpened (events of a session follow it).
    let mut owner: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut untrusted = 0u64;
    let mut shadow = ShadowReport::default();
    let mut break_glass = Vec::new();
    let mut grants = GrantsSummary::default();
    while let Some(item) = stream.next().await {
        let e = item?;
        events += 1;
        if log.trust().is_some_and(|t| t.check(&e).is_err()) {
            untrusted += 1;
            continue;
        }
        let session_owner = owner.get(&e.event.session_id).cloned();
        match &e.event.body {
            Some(Body::SessionOpened(o)) => {
                let id = o.identity.clone().unwrap_or_default();
                owner.insert(e.event.session_id.clone(), id.subject.clone());
                let entry = identities.entry(id.subject.clone()).or_default();
                entry.display_name = id.display_name.clone();
                entry.kind = enum_name(id.kind().as_str_name(), "KIND_");
                entry.sessions += 1;
            }
            Some(Body::StatementExecuted(_) | Body::StatementsExecuted(_)) => {
                // A group counts as the statements it records.
                for x in airlock_eventlog::executed_statements(&e.event) {
                    shadow.count(x.statement.verdict.as_ref());
                    bounded += u64::from(x.statement.bound.is_some());
                    let action = x
                        .statement
                        .verdict
                        .as_ref()
                        .map(|v| v.action())
                        .unwrap_or_default();
                    *executed
                        .entry(enum_name(action.as_str_name(), "ACTION_"))
                        .or_default() += 1;
                    if let Some(who) = &session_owner {
                        identities.entry(who.clone()).or_default().statements_executed += 1;
                    }
                }
            }
            Some(Body::StatementRefused(s)) => {
                shadow.count(s.verdict.as_ref());
                *refused
                    .entry(enum_name(s.cause().as_str_name(), "CAUSE_"))
                    .or_default() += 1;
                if let Some(who) = session_owner {
                    identities.entry(who).or_default().statements_refused += 1;
                }
            }
            Some(Body::ApprovalRequested(r)) => {
                let who = r.identity.as_ref().map(|i| i.subject.clone()).unwrap_or_default();
                identities.entry(who).or_default().approvals_requested += 1;
            }
            Some(Body::ApprovalVoted(v)) => {
                let r = v.reviewer.clone().unwrap_or_default();
                let entry = reviewers.entry(r.subject.clone()).or_default();
                entry.display_name = r.display_name;
                if v.decision() == proto::Decision::Approve {
                    entry.approved += 1;
                } else if v.decision() == proto::Decision::Deny {
                    entry.denied += 1;
                }
                if v.break_glass && v.decision() == proto::Decision::Approve {
                    break_glass.push(BreakGlassUse {
                        sequence: e.sequence,
                        request_id: e.event.request_id.clone(),
                        session_id: e.event.session_id.clone(),
                        subject: r.subject.clone(),
                        display_name: entry.display_name.clone(),
                        reason: v.reason.clone(),
                    });
                }
            }
            Some(Body::GrantIssued(g)) => {
                grants.issued += 1;
                grants.issued_by_break_glass += u64::from(g.break_glass);
            }
            Some(Body::GrantUsed(_)) => grants.uses += 1,
            Some(Body::GrantRevoked(_)) => grants.revoked += 1,
            Some(Body::GrantExpired(_)) => grants.expired += 1,
            _ => {}
        }
        fold.apply(&e);
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut requests: BTreeMap<String, usize> = BTreeMap::new();
    for r in fold.requests.values() {
        *requests
            .entry(enum_name(r.state().as_str_name(), "REQUEST_STATE_"))
            .or_default() += 1;
    }
    let open = fold
        .sessions
        .values()
        .filter(|s| s.summary.state == proto::SessionState::Open as i32)
        .count();
    Ok(ReplayReport {
        events,
        last_sequence: fold.sequence,
        sessions_open: open,
        sessions_closed: fold.sessions.len() - open,
        statements_executed: executed,
        statements_refused: refused,
        statements_bounded: bounded,
        requests,
        approvals_by_reviewer: reviewers,
        identities,
        proxies: fold.proxies.len(),
        anomalies: fold.anomalies,
        untrusted,
        shadow,
        break_glass,
        grants,
        seconds,
        events_per_second: if seconds > 0.0 {
            events as f64 / seconds
        } else {
            0.0
        },
    })
}
