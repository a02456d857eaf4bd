//! Given these events, when this vote, expect these events (or this refusal).

use std::time::{Duration, SystemTime};

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{StoredEvent, new_event};

use super::*;
use crate::projection::Projection;

const REVIEWERS: &str = "0b7e2f4c-reviewers";
const AGENTS: &str = "6f1d1a52-agents";

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn source() -> proto::Source {
    proto::Source {
        kind: proto::source::Kind::Control as i32,
        id: "replica-1".into(),
        ..Default::default()
    }
}

/// Every proxy process is alive.
struct Alive;

impl Liveness for Alive {
    fn lost(&self, _: &str, _: &str) -> bool {
        false
    }
    fn proxy_lost(&self, _: &str) -> bool {
        false
    }
    fn lost_after(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// The proxy `p1`'s run `old` is gone; every other is alive.
struct OldRunLost;

impl Liveness for OldRunLost {
    fn lost(&self, proxy: &str, instance: &str) -> bool {
        proxy == "p1" && instance == "old"
    }
    fn proxy_lost(&self, proxy: &str) -> bool {
        proxy == "gone"
    }
    fn lost_after(&self) -> Duration {
        Duration::from_secs(30)
    }
}

fn person(subject: &str, groups: &[&str]) -> proto::Identity {
    proto::Identity {
        subject: subject.into(),
        display_name: subject.into(),
        kind: proto::identity::Kind::User as i32,
        groups: groups
            .iter()
            .map(|g| proto::Group {
                id: (*g).into(),
                name: String::new(),
            })
            .collect(),
        ..Default::default()
    }
}

fn app(subject: &str, groups: &[&str]) -> proto::Identity {
    proto::Identity {
        kind: proto::identity::Kind::App as i32,
        ..person(subject, groups)
    }
}

struct Given {
    state: Projection,
    seq: u64,
    log: Vec<StoredEvent>,
}

impl Given {
    fn new() -> Given {
        Given {
            state: Projection::new(),
            seq: 0,
            log: Vec::new(),
        }
    }

    fn event(mut self, subject: &str, mut e: proto::Event) -> Given {
        self.seq += 1;
        if e.time.is_none() {
            e.time = Some(t0().into());
        }
        let raw = prost::Message::encode_to_vec(&e).into();
        let stored = StoredEvent {
            sequence: self.seq,
            subject: subject.into(),
            stored_at: time::OffsetDateTime::UNIX_EPOCH,
            raw,
            event: e,
        };
        self.state.apply(&stored);
        self.log.push(stored);
        self
    }

    /// A DELETE held for `requester`, needing `required` approvals from
    /// REVIEWERS, due in 15 minutes.
    fn requested(self, id: &str, requester: proto::Identity, required: u32) -> Given {
        let mut e = new_event(
            &source(),
            Body::ApprovalRequested(proto::ApprovalRequested {
                identity: Some(requester),
                statement: Some(proto::Statement {
                    text: "DELETE FROM orders WHERE id = 7".into(),
                    sha256: vec![7; 32],
                    ..Default::default()
                }),
                approvals_required: required,
                reviewer_groups: vec![proto::Group {
                    id: REVIEWERS.into(),
                    name: "db-reviewers".into(),
                }],
                deadline: Some((t0() + Duration::from_secs(900)).into()),
                verdict: Some(proto::Verdict {
                    effects: vec![proto::Effect {
                        kind: "DELETE".into(),
                        tables: vec!["public.orders".into()],
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        );
        e.request_id = id.into();
        e.session_id = "S1".into();
        self.event(&format!("airlock.v1.request.{id}"), e)
    }

    /// [`Given::requested`], with the policy's break-glass terms.
    /// A request whose policy allows break-glass to `groups`; the session
    /// logged in through client application `psql`.
    fn requested_glass(self, id: &str, requester: proto::Identity, required: u32, groups: &[&str]) -> Given {
        self.requested_glass_through(id, requester, required, groups, &[])
    }

    /// The same, with break-glass approvals only through `clients`.
    fn requested_glass_through(
        self,
        id: &str,
        mut requester: proto::Identity,
        required: u32,
        groups: &[&str],
        clients: &[&str],
    ) -> Given {
        requester.client_app_id = "psql".into();
        let mut g = self.requested(id, requester, required);
        let stored = g.log.pop().expect("the request");
        g.seq -= 1;
        let mut e = stored.event;
        if let Some(Body::ApprovalRequested(r)) = e.body.as_mut() {
            r.break_glass = Some(proto::BreakGlass {
                groups: groups
                    .iter()
                    .map(|g| proto::Group {
                        id: (*g).into(),
                        name: String::new(),
                    })
                    .collect(),
                max_ttl: prost_types::Duration::try_from(Duration::from_secs(3600)).ok(),
                clients: clients.iter().map(|c| (*c).to_owned()).collect(),
            });
        }
        g.state = Projection::new();
        let log = std::mem::take(&mut g.log);
        let mut fresh = Given::new();
        for s in log {
            fresh = fresh.event(&s.subject, s.event);
        }
        fresh.event(&stored.subject, e)
    }

    fn folded(self, events: Vec<proto::Event>) -> Given {
        let mut g = self;
        for e in events {
            let subject = format!("airlock.v1.request.{}", e.request_id);
            g = g.event(&subject, e);
        }
        g
    }
}

fn vote(id: &str, reviewer: proto::Identity, decision: proto::Decision) -> Vote {
    Vote {
        request_id: id.into(),
        reviewer,
        decision,
        reason: "looked at it".into(),
        statement_sha256: None,
        floor_acrs: Vec::new(),
        max_rows: Vec::new(),
        scope: None,
        break_glass: false,
        slack: None,
    }
}

fn kinds(events: &[proto::Event]) -> Vec<&'static str> {
    events
        .iter()
        .map(|e| airlock_eventlog::body_kind(e.body.as_ref().expect("body")))
        .collect()
}

fn at(minutes: u64) -> SystemTime {
    t0() + Duration::from_secs(minutes * 60)
}

#[test]
fn one_approval_by_a_reviewer_grants() {
    let given = Given::new().requested("R1", app("agent-7", &[AGENTS]), 1);
    let events = decide(
        &given.state,
        &vote("R1", person("alice", &[REVIEWERS]), proto::Decision::Approve),
        at(1),
        &source(),
        &Alive,
    )
    .expect("alice may approve");
    assert_eq!(kinds(&events), vec!["approval_voted", "approval_granted"]);
    match &events[1].body {
        Some(Body::ApprovalGranted(g)) => {
            assert_eq!(
                g.statement_sha256,
                vec![7; 32],
                "the grant binds the exact digest"
            );
            assert_eq!(g.approvers.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    let after = given.folded(events);
    assert_eq!(
        after.state.request("R1").expect("R1").state(),
        proto::RequestState::Granted
    );
}

#[test]
fn two_approvals_need_two_people() {
    let given = Given::new().requested("R1", app("agent-7", &[AGENTS]), 2);
    let first = decide(
        &given.state,
        &vote("R1", person("alice", &[REVIEWERS]), proto::Decision::Approve),
        at(1),
        &source(),
        &Alive,
    )
    .expect("first vote");
    assert_eq!(
        kinds(&first),
        vec!["approval_voted"],
        "one approval of two: still pending"
    );
    let given = given.folded(first);
    assert_eq!(
        decide(
            &given.state,
            &vote("R1", person("alice", &[REVIEWERS]), proto::Decision::Approve),
            at(2),
            &source(),
            &Alive
        ),
        Err(DecideError::AlreadyVoted {
            who: "alice (alice)".into(),
            request_id: "R1".into()
        }),
        "the same person twice is not two approvals"
    );
    let second = decide(
        &given.state,
        &vote("R1", person("bob", &[REVIEWERS]), proto::Decision::Approve),
        at(2),
        &source(),
        &Alive,
    )
    .expect("second person");
    assert_eq!(kinds(&second), vec!["approval_voted", "approval_granted"]);
}

#[test]
fn any_denial_denies() {
    let given = Given::new().requested("R1", app("agent-7", &[AGENTS]), 2);
    let approved = decide(
        &given.state,
        &vote("R1", person("alice", &[REVIEWERS]), proto::Decision::Approve),
        at(1),
        &source(),
        &Alive,
    )
    .expect("approve");
    let given = given.folded(approved);
    let events = decide(
        &given.state,
        &vote("R1", person("bob", &[REVIEWERS]), proto::Decision::Deny),
        at(2),
        &source(),
        &Alive,
    )
    .expect("deny");
    assert_eq!(kinds(&events), vec!["approval_voted", "approval_denied"]);
    let after = given.folded(events);
    let r = after.state.request("R1").expect("R1");
    assert_eq!(r.state(), proto::RequestState::Denied);
    assert_eq!(r.view.outcome_reason, "looked at it");
    assert_eq!(
        decide(
            &after.state,
            &vote("R1", person("carol", &[REVIEWERS]), proto::Decision::Approve),
            at(3),
            &source(),
            &Alive
        ),
        Err(DecideError::AlreadyDecided {
            request_id: "R1".into(),
            state: "denied".into()
        })
    );
}

#[test]
fn refusals_name_their_reason() {
    // The requester is a person in the reviewer group: still no self-approval.
    let given = Given::new()
        .requested("R1", person("dave", &[REVIEWERS, AGENTS]), 1)
        .requested("R2", app("agent-7", &[AGENTS]), 1);
    let cases: Vec<(Vote, SystemTime, DecideError)> = vec![
        (
            vote("R1", person("dave", &[REVIEWERS]), proto::Decision::Approve),
            at(1),
            DecideError::SelfApproval {
                who: "dave (dave)".into(),
            },
        ),
        (
            vote("R2", app("agent-7", &[REVIEWERS]), proto::Decision::Approve),
            at(1),
            DecideError::AppIdentity {
                who: "agent-7 (agent-7)".into(),
            },
        ),
        (
            // Another agent, even one placed in the reviewer group.
            vote("R2", app("agent-9", &[REVIEWERS]), proto::Decision::Deny),
            at(1),
            DecideError::AppIdentity {
                who: "agent-9 (agent-9)".into(),
            },
        ),
        (
            vote("R2", person("erin", &[AGENTS]), proto::Decision::Approve),
            at(1),
            DecideError::NotAReviewer {
                who: "erin (erin)".into(),
                groups: "db-reviewers".into(),
            },
        ),
        (
            vote("R2", person("alice", &[REVIEWERS]), proto::Decision::Approve),
            at(16),
            DecideError::Expired {
                request_id: "R2".into(),
            },
        ),
        (
            vote("R9", person("alice", &[REVIEWERS]), proto::Decision::Approve),
            at(1),
            DecideError::UnknownRequest("R9".into()),
        ),
        (
            Vote {
                statement_sha256: Some(vec![8; 32]),
                ..vote("R2", person("alice", &[REVIEWERS]), proto::Decision::Approve)
            },
            at(1),
            DecideError::DigestMismatch {
                request_id: "R2".into(),
            },
        ),
        (
            // A Slack vote names the statement its message showed.
            Vote {
                slack: Some((proto::SlackUser::default(), app("relay", &[]))),
                ..vote("R2", person("alice", &[REVIEWERS]), proto::Decision::Approve)
            },
            at(1),
            DecideError::SlackVote("must name the digest of the statement its message showed".into()),
        ),
        (
            Vote {
                slack: Some((proto::SlackUser::default(), app("relay", &[]))),
                statement_sha256: Some(Vec::new()),
                ..vote("R2", person("alice", &[REVIEWERS]), proto::Decision::Deny)
            },
            at(1),
            DecideError::SlackVote("must name the digest of the statement its message showed".into()),
        ),
    ];
    for (v, now, want) in cases {
        assert_eq!(
            decide(&given.state, &v, now, &source(), &Alive),
            Err(want.clone()),
            "{want}"
        );
    }
}

#[test]
fn expiry_is_due_once_past_the_deadline() {
    let given = Given::new().requested("R1", app("agent-7", &[AGENTS]), 1);
    assert!(due_outcomes(&given.state, at(14), &source(), &Alive).is_empty());
    let due = due_outcomes(&given.state, at(16), &source(), &Alive);
    assert_eq!(due.len(), 1);
    assert_eq!(kinds(&[due[0].1.clone()]), vec!["approval_expired"]);
    let after = given.folded(vec![due[0].1.clone()]);
    assert_eq!(
        after.state.request("R1").expect("R1").state(),
        proto::RequestState::Expired
    );
    assert!(
        due_outcomes(&after.state, at(30), &source(), &Alive).is_empty(),
        "expired exactly once"
    );
}

#[test]
fn a_vote_whose_outcome_was_lost_is_repaired() {
    // A replica appended the vote and died before appending the grant.
    let given = Given::new().requested("R1", app("agent-7", &[AGENTS]), 1);
    let mut events = decide(
        &given.state,
        &vote("R1", person("alice", &[REVIEWERS]), proto::Decision::Approve),
        at(1),
        &source(),
        &Alive,
    )
    .expect("vote");
    events.truncate(1);
    let given = given.folded(events);
    // Nobody may vote on it meanwhile: the votes already settle it.
    assert_eq!(
        decide(
            &given.state,
            &vote("R1", person("bob", &[REVIEWERS]), proto::Decision::Deny),
            at(2),
            &source(),
            &Alive
        ),
        Err(DecideError::AlreadyDecided {
            request_id: "R1".into(),
            state: "granted".into()
        })
    );
    let due = due_outcomes(&given.state, at(2), &source(), &Alive);
    assert_eq!(kinds(&[due[0].1.clone()]), vec!["approval_granted"]);
}

#[test]
fn the_same_log_folds_to_the_same_state() {
    let g = Given::new()
        .requested("R1", app("agent-7", &[AGENTS]), 1)
        .requested("R2", app("agent-7", &[AGENTS]), 2);
    let events = decide(
        &g.state,
        &vote("R1", person("alice", &[REVIEWERS]), proto::Decision::Approve),
        at(1),
        &source(),
        &Alive,
    )
    .expect("vote");
    let g = g.folded(events);
    let due = due_outcomes(&g.state, at(20), &source(), &Alive);
    let g = g.folded(due.into_iter().map(|(_, e)| e).collect());

    let mut again = Projection::new();
    for e in &g.log {
        again.apply(e);
    }
    assert_eq!(again, g.state, "folding the same log twice gives the same state");
    // Replaying an overlap (as after loading a snapshot) changes nothing.
    for e in &g.log {
        again.apply(e);
    }
    assert_eq!(again, g.state);
    assert_eq!(
        again.request("R2").expect("R2").state(),
        proto::RequestState::Expired
    );
}

fn opened(g: Given, session: &str, instance: &str) -> Given {
    let mut e = new_event(
        &source(),
        Body::SessionOpened(proto::SessionOpened {
            proxy_id: "p1".into(),
            proxy_instance: instance.into(),
            ..Default::default()
        }),
    );
    e.session_id = session.into();
    e.chain_index = 1;
    g.event(&format!("airlock.v1.session.{session}"), e)
}

fn closed(g: Given, session: &str, minutes: u64) -> Given {
    let mut e = new_event(
        &source(),
        Body::SessionClosed(proto::SessionClosed {
            cause: proto::session_closed::Cause::UpstreamClosed as i32,
            detail: "PostgreSQL closed the connection".into(),
            ..Default::default()
        }),
    );
    e.session_id = session.into();
    e.time = Some(at(minutes).into());
    e.chain_index = 2;
    g.event(&format!("airlock.v1.session.{session}"), e)
}

fn cancelled(due: &[(String, proto::Event)]) -> Vec<(String, i32, String)> {
    due.iter()
        .map(|(id, e)| match &e.body {
            Some(Body::ApprovalCancelled(c)) => (id.clone(), c.cause, c.detail.clone()),
            other => panic!("{id}: {other:?}"),
        })
        .collect()
}

#[test]
fn a_request_whose_session_closed_is_cancelled_after_the_grace_and_cannot_be_approved() {
    let given = closed(
        opened(Given::new(), "S1", "new").requested("R1", app("agent-7", &[AGENTS]), 1),
        "S1",
        1,
    );
    // The proxy files the cancellation itself: the control plane waits.
    assert!(due_outcomes(&given.state, at(1), &source(), &Alive).is_empty());
    let due = due_outcomes(&given.state, at(2), &source(), &Alive);
    let c = cancelled(&due);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].1, proto::approval_cancelled::Cause::SessionEnded as i32);
    assert!(c[0].2.contains("PostgreSQL closed the connection"), "{}", c[0].2);
    // No vote counts meanwhile, even inside the grace.
    assert!(matches!(
        decide(
            &given.state,
            &vote("R1", person("alice", &[REVIEWERS]), proto::Decision::Approve),
            at(1),
            &source(),
            &Alive
        ),
        Err(DecideError::SessionEnded { .. })
    ));
}

#[test]
fn a_lost_proxy_run_has_its_sessions_closed_and_requests_cancelled() {
    let given =
        opened(opened(Given::new(), "S1", "old"), "S2", "new").requested("R1", app("agent-7", &[AGENTS]), 1);
    let lost = lost_sessions(&given.state, &source(), &OldRunLost);
    assert_eq!(lost.len(), 1, "only the old run's session");
    assert_eq!(lost[0].0, "S1");
    match &lost[0].2.body {
        Some(Body::SessionClosed(c)) => {
            assert_eq!(c.cause, proto::session_closed::Cause::ProxyLost as i32);
            assert!(c.detail.contains("ends at event #1"), "{}", c.detail);
        }
        other => panic!("{other:?}"),
    }
    let c = cancelled(&due_outcomes(&given.state, at(1), &source(), &OldRunLost));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].1, proto::approval_cancelled::Cause::ProxyLost as i32);
    assert!(matches!(
        decide(
            &given.state,
            &vote("R1", person("alice", &[REVIEWERS]), proto::Decision::Approve),
            at(1),
            &source(),
            &OldRunLost
        ),
        Err(DecideError::SessionEnded { .. })
    ));
    // A non-reviewer learns nothing about the session: refused as such.
    assert!(matches!(
        decide(
            &given.state,
            &vote("R1", person("mallory", &[]), proto::Decision::Approve),
            at(1),
            &source(),
            &OldRunLost
        ),
        Err(DecideError::NotAReviewer { .. })
    ));
    // The session of the live run is left alone.
    assert!(lost_sessions(&given.state, &source(), &Alive).is_empty());
}

#[test]
fn a_request_without_a_session_in_the_log_ends_with_its_proxy() {
    let mut given = Given::new();
    let mut e = new_event(
        &source(),
        Body::ApprovalRequested(proto::ApprovalRequested {
            proxy_id: "gone".into(),
            deadline: Some((t0() + Duration::from_secs(900)).into()),
            ..Default::default()
        }),
    );
    e.request_id = "R9".into();
    e.session_id = "S9".into();
    given = given.event("airlock.v1.request.R9", e);
    assert!(due_outcomes(&given.state, at(1), &source(), &Alive).is_empty());
    let c = cancelled(&due_outcomes(&given.state, at(1), &source(), &OldRunLost));
    assert_eq!(c[0].1, proto::approval_cancelled::Cause::ProxyLost as i32);
}

/// Review finding: inside the grace after a session closed, a vote whose
/// outcome was never appended was repaired into a grant for the closed
/// session. Nothing is appended meanwhile; then the request is cancelled.
#[test]
fn within_the_grace_nothing_is_repaired_into_a_grant_for_a_closed_session() {
    let given = opened(Given::new(), "S1", "run").requested("R1", app("agent-7", &[AGENTS]), 1);
    let mut events = decide(
        &given.state,
        &vote("R1", person("alice", &[REVIEWERS]), proto::Decision::Approve),
        at(1),
        &source(),
        &Alive,
    )
    .expect("vote");
    events.truncate(1); // the vote is in; its outcome's append failed
    let given = closed(given.folded(events), "S1", 1);
    assert!(due_outcomes(&given.state, at(1) + Duration::from_secs(1), &source(), &Alive).is_empty());
    let c = cancelled(&due_outcomes(&given.state, at(2), &source(), &Alive));
    assert_eq!(c[0].1, proto::approval_cancelled::Cause::SessionEnded as i32);
}

#[test]
fn an_approval_needs_the_step_up_the_request_requires_and_a_denial_does_not() {
    let mut given = Given::new().requested("R1", app("agent-7", &[AGENTS]), 2);
    // The same request, with step-up: edit the folded ApprovalRequested.
    let mut e = given.log[0].event.clone();
    if let Some(Body::ApprovalRequested(r)) = &mut e.body {
        r.require_acrs = vec!["c1".into(), "c2".into()];
    }
    given = Given::new().event("airlock.v1.request.R1", e);
    let stepped = |acrs: &[&str]| proto::Identity {
        acrs: acrs.iter().map(|a| (*a).to_owned()).collect(),
        ..person("alice", &[REVIEWERS])
    };
    for (acrs, missing) in [(&[][..], vec!["c1", "c2"]), (&["c2"][..], vec!["c1"])] {
        let err = decide(
            &given.state,
            &vote("R1", stepped(acrs), proto::Decision::Approve),
            at(1),
            &source(),
            &Alive,
        )
        .expect_err("not stepped up enough");
        match err {
            DecideError::StepUpRequired { missing: m, .. } => assert_eq!(m, missing),
            other => panic!("{other:?}"),
        }
    }
    let events = decide(
        &given.state,
        &vote("R1", stepped(&["c2", "c1", "c9"]), proto::Decision::Approve),
        at(1),
        &source(),
        &Alive,
    )
    .expect("every context met");
    match &events[0].body {
        Some(Body::ApprovalVoted(v)) => {
            assert_eq!(v.reviewer.as_ref().expect("reviewer").acrs, ["c2", "c1", "c9"])
        }
        other => panic!("{other:?}"),
    }
    decide(
        &given.state,
        &vote("R1", person("bob", &[REVIEWERS]), proto::Decision::Deny),
        at(1),
        &source(),
        &Alive,
    )
    .expect("a denial needs no step-up");
}

/// Review finding: a request filed without step-up (a proxy with another
/// configuration, or an older one) still needs the replica's own
/// `approvals.require_acrs`.
#[test]
fn the_replicas_own_step_up_floor_applies_to_every_approval() {
    let given = Given::new().requested("R1", app("agent-7", &[AGENTS]), 1);
    let mut v = vote("R1", person("alice", &[REVIEWERS]), proto::Decision::Approve);
    v.floor_acrs = vec!["c1".into()];
    match decide(&given.state, &v, at(1), &source(), &Alive) {
        Err(DecideError::StepUpRequired { missing, .. }) => assert_eq!(missing, ["c1"]),
        other => panic!("{other:?}"),
    }
    v.reviewer.acrs = vec!["c1".into()];
    decide(&given.state, &v, at(1), &source(), &Alive).expect("stepped up");
}

fn bound(table: &str, max_rows: u64) -> proto::TableBound {
    proto::TableBound {
        table: table.into(),
        max_rows,
    }
}

fn rows(table: &str, rows: u64) -> proto::TableRows {
    proto::TableRows {
        table: table.into(),
        rows,
        ..Default::default()
    }
}

fn granted_bounds(events: &[proto::Event]) -> Vec<(String, u64)> {
    match events.last().and_then(|e| e.body.as_ref()) {
        Some(Body::ApprovalGranted(g)) => g.bounds.iter().map(|b| (b.table.clone(), b.max_rows)).collect(),
        other => panic!("not a grant: {other:?}"),
    }
}

#[test]
fn a_grant_is_bounded_by_the_dry_run_else_the_estimate_else_nothing_and_reviewers_may_change_it() {
    let with_impact = |impact: Option<proto::Impact>| {
        let mut asked = proto::ApprovalRequested {
            impact,
            ..Default::default()
        };
        asked.approvals_required = 1;
        asked
    };
    let estimate = proto::ImpactEstimate {
        tables: vec![rows("public.orders", 10)],
        ..Default::default()
    };
    let dry = proto::DryRun {
        tables: vec![rows("public.orders", 9), rows("public.order_lines", 18)],
        ..Default::default()
    };
    let approve = |max_rows: Vec<proto::TableBound>| proto::Vote {
        decision: proto::Decision::Approve as i32,
        max_rows,
        ..Default::default()
    };
    let pairs = |b: Vec<proto::TableBound>| b.into_iter().map(|b| (b.table, b.max_rows)).collect::<Vec<_>>();
    // Nothing known: unbounded.
    assert!(bounds(&with_impact(None), &[approve(vec![])]).is_empty());
    // The estimate's rows.
    let est = with_impact(Some(proto::Impact {
        estimate: Some(estimate.clone()),
        dry_run: None,
    }));
    assert_eq!(
        pairs(bounds(&est, &[approve(vec![])])),
        [("public.orders".to_owned(), 30)]
    );
    // An estimate that failed bounds nothing.
    let failed = with_impact(Some(proto::Impact {
        estimate: Some(proto::ImpactEstimate {
            unavailable: "timed out".into(),
            ..estimate.clone()
        }),
        dry_run: None,
    }));
    assert!(bounds(&failed, &[approve(vec![])]).is_empty());
    // The dry run's exact counts win over the estimate, every table.
    let both = with_impact(Some(proto::Impact {
        estimate: Some(estimate),
        dry_run: Some(dry),
    }));
    assert_eq!(
        pairs(bounds(&both, &[approve(vec![])])),
        [
            ("public.orders".to_owned(), 9),
            ("public.order_lines".to_owned(), 18)
        ]
    );
    // A reviewer raises one; a second who set nothing agreed to the
    // default: the lowest stands.
    let raised = approve(vec![bound("public.orders", 50)]);
    assert_eq!(
        pairs(bounds(&both, std::slice::from_ref(&raised)))[0],
        ("public.orders".to_owned(), 50)
    );
    assert_eq!(
        pairs(bounds(&both, &[raised.clone(), approve(vec![])]))[0],
        ("public.orders".to_owned(), 9)
    );
    // A table the reviewer named that nothing estimated.
    let extra = approve(vec![bound("public.audit", 0)]);
    assert!(pairs(bounds(&both, &[extra])).contains(&("public.audit".to_owned(), 0)));
    // Denials do not count.
    let deny = proto::Vote {
        decision: proto::Decision::Deny as i32,
        max_rows: vec![bound("public.orders", 1)],
        ..Default::default()
    };
    assert_eq!(
        pairs(bounds(&both, &[raised, deny]))[0],
        ("public.orders".to_owned(), 50)
    );
}

#[test]
fn the_reviewers_bounds_go_on_the_vote_and_the_grant_and_bad_ones_are_refused() {
    let given = Given::new().requested("R1", app("agent-7", &[AGENTS]), 1);
    let mut v = vote("R1", person("alice", &[REVIEWERS]), proto::Decision::Approve);
    v.max_rows = vec![bound("public.orders", 3)];
    let events = decide(&given.state, &v, at(1), &source(), &Alive).expect("approved");
    assert_eq!(granted_bounds(&events), [("public.orders".to_owned(), 3)]);
    match events[0].body.as_ref() {
        Some(Body::ApprovalVoted(voted)) => assert_eq!(voted.max_rows.len(), 1),
        other => panic!("{other:?}"),
    }
    for (max_rows, decision, says) in [
        (
            vec![bound("public.customers", 1)],
            proto::Decision::Approve,
            "not a table this request shows",
        ),
        (vec![bound("", 1)], proto::Decision::Approve, "not a table name"),
        (
            vec![bound(" public.orders", 1)],
            proto::Decision::Approve,
            "not a table name",
        ),
        (
            vec![bound("public.orders", 1), bound("public.orders", 2)],
            proto::Decision::Approve,
            "twice",
        ),
        (
            vec![bound("public.orders", 1)],
            proto::Decision::Deny,
            "with an approval",
        ),
    ] {
        let mut v = vote("R1", person("alice", &[REVIEWERS]), decision);
        v.max_rows = max_rows;
        match decide(&given.state, &v, at(1), &source(), &Alive) {
            Err(DecideError::BadBounds(why)) => assert!(why.contains(says), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}

/// Review finding: a dry run that changed nothing gave no bounds, and the
/// statement ran unbounded; rows that appeared later were all deleted.
#[test]
fn a_dry_run_that_changed_nothing_bounds_its_targets_at_zero() {
    let asked = proto::ApprovalRequested {
        impact: Some(proto::Impact {
            estimate: Some(proto::ImpactEstimate {
                tables: vec![rows("public.orders", 4)],
                ..Default::default()
            }),
            dry_run: Some(proto::DryRun {
                command_tag: "DELETE 0".into(),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let approve = proto::Vote {
        decision: proto::Decision::Approve as i32,
        ..Default::default()
    };
    let b = bounds(&asked, &[approve]);
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].table.as_str(), b[0].max_rows), ("public.orders", 0));
    assert_eq!(airlock_proto::bounds::measured(&asked), (true, true));
}

#[test]
fn a_grant_says_whether_it_is_bounded_and_strict() {
    let grant = |max_rows: Vec<proto::TableBound>| {
        let given = Given::new().requested("R1", app("agent-7", &[AGENTS]), 1);
        let mut v = vote("R1", person("alice", &[REVIEWERS]), proto::Decision::Approve);
        v.max_rows = max_rows;
        let events = decide(&given.state, &v, at(1), &source(), &Alive).expect("approved");
        match events.last().and_then(|e| e.body.clone()) {
            Some(Body::ApprovalGranted(g)) => (g.bounded, g.every_table),
            other => panic!("{other:?}"),
        }
    };
    // Nothing measured, no bound set: it runs as it is.
    assert_eq!(grant(vec![]), (false, false));
    // A reviewer's bound on a table its rule names bounds it; other tables
    // are not limited (no dry run showed them).
    assert_eq!(grant(vec![bound("public.orders", 1)]), (true, false));
}

const ONCALL: &str = "0c1d-oncall";

/// A break-glass vote, signed in through the reviewer's own client.
fn glass(id: &str, mut who: proto::Identity, reason: &str) -> Vote {
    who.client_app_id = "airlock-reviewer".into();
    let mut v = vote(id, who, proto::Decision::Approve);
    v.break_glass = true;
    v.reason = reason.into();
    v
}

#[test]
fn a_member_breaks_glass_on_their_own_request_and_it_is_granted_at_once() {
    let dana = person("dana", &[ONCALL]);
    let given = Given::new().requested_glass("R1", dana.clone(), 2, &[ONCALL]);
    let events = decide(
        &given.state,
        &glass("R1", dana, "prod is down, ticket INC-4711, restoring orders"),
        at(1),
        &source(),
        &Alive,
    )
    .expect("a member breaks glass");
    assert_eq!(kinds(&events), vec!["approval_voted", "approval_granted"]);
    match &events[1].body {
        Some(Body::ApprovalGranted(g)) => assert!(g.break_glass, "the grant says so"),
        other => panic!("{other:?}"),
    }
    match &events[0].body {
        Some(Body::ApprovalVoted(v)) => assert!(v.break_glass),
        other => panic!("{other:?}"),
    }
}

#[test]
fn break_glass_is_refused_to_apps_non_members_others_short_reasons_and_policies_without_it() {
    let reason = "prod is down, ticket INC-4711, restoring orders";
    let dana = person("dana", &[ONCALL]);
    let refused =
        |given: &Given, v: Vote| decide(&given.state, &v, at(1), &source(), &Alive).expect_err("refused");
    // An agent (app identity) never breaks glass, even in the group.
    let agent = app("agent-7", &[ONCALL]);
    let g = Given::new().requested_glass("R1", agent.clone(), 1, &[ONCALL]);
    assert!(matches!(
        refused(&g, glass("R1", agent, reason)),
        DecideError::AppIdentity { .. }
    ));
    // A person not in a break-glass group.
    let erin = person("erin", &[REVIEWERS]);
    let g = Given::new().requested_glass("R1", erin.clone(), 1, &[ONCALL]);
    assert!(matches!(
        refused(&g, glass("R1", erin, reason)),
        DecideError::BreakGlassRefused(_)
    ));
    // A member on someone else's request.
    let g = Given::new().requested_glass("R1", app("agent-7", &[AGENTS]), 1, &[ONCALL]);
    assert!(matches!(
        refused(&g, glass("R1", dana.clone(), reason)),
        DecideError::BreakGlassRefused(_)
    ));
    // Too short a reason.
    let g = Given::new().requested_glass("R1", dana.clone(), 1, &[ONCALL]);
    assert!(matches!(
        refused(&g, glass("R1", dana.clone(), "urgent")),
        DecideError::BadBreakGlass(_)
    ));
    // A scope longer than max_ttl.
    let mut long = glass("R1", dana.clone(), reason);
    long.scope = Some(proto::GrantScope {
        r#match: proto::grant_scope::Match::Fingerprint as i32,
        ttl: prost_types::Duration::try_from(Duration::from_secs(7200)).ok(),
        max_uses: 5,
        max_rows: Some(1),
        ..Default::default()
    });
    assert!(matches!(refused(&g, long), DecideError::BadScope(_)));
    // With the very credential the session logged in with (an agent given
    // a person's token approving its own statement).
    let mut same = glass("R1", dana.clone(), reason);
    same.reviewer.client_app_id = "psql".into();
    match refused(&g, same) {
        DecideError::BreakGlassRefused(why) => assert!(why.contains("sign-in of your own"), "{why}"),
        other => panic!("{other:?}"),
    }
    // From another issuer.
    let mut elsewhere = glass("R1", dana.clone(), reason);
    elsewhere.reviewer.issuer = "https://elsewhere.example".into();
    assert!(matches!(
        refused(&g, elsewhere),
        DecideError::BreakGlassRefused(_)
    ));
    // After a reviewer voted: the quorum is theirs to finish.
    let g2 = Given::new().requested_glass("R1", dana.clone(), 3, &[ONCALL]);
    let first = vote("R1", person("alice", &[REVIEWERS]), proto::Decision::Approve);
    let events = decide(&g2.state, &first, at(1), &source(), &Alive).expect("alice votes");
    let g2 = g2.folded(events);
    match refused(&g2, glass("R1", dana.clone(), reason)) {
        DecideError::BreakGlassRefused(why) => assert!(why.contains("already voted"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Terms naming the clients that may approve: another is refused, and
    // a session logged in through one of them never breaks glass.
    let with_clients =
        |clients: &[&str]| Given::new().requested_glass_through("R1", dana.clone(), 1, &[ONCALL], clients);
    let cli = glass("R1", dana.clone(), reason);
    let mut other_tool = glass("R1", dana.clone(), reason);
    other_tool.reviewer.client_app_id = "some-tool".into();
    match refused(&with_clients(&["airlock-reviewer"]), other_tool) {
        DecideError::BreakGlassRefused(why) => assert!(why.contains("break_glass.clients"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(
        decide(
            &with_clients(&["airlock-reviewer"]).state,
            &cli,
            at(1),
            &source(),
            &Alive
        )
        .is_ok()
    );
    assert!(matches!(
        refused(&with_clients(&["airlock-reviewer", "psql"]), cli),
        DecideError::BreakGlassRefused(_)
    ));
    // A policy without break_glass: self-approval stays refused.
    let g = Given::new().requested("R1", dana.clone(), 1);
    assert!(matches!(
        refused(&g, glass("R1", dana.clone(), reason)),
        DecideError::BreakGlassRefused(_)
    ));
    assert!(matches!(
        refused(&g, vote("R1", dana, proto::Decision::Approve)),
        DecideError::SelfApproval { .. }
    ));
}
