//! Grants: an approval that also allows statements like the approved one,
//! from the same identity on the same connection, for a while and a number
//! of uses. Pure, like `decide`: which scope a vote may carry, the grant a
//! granted request earns, when it expires, who may revoke it.
//!
//! A grant is issued only with every approval of the quorum carrying a
//! scope, and is the narrowest of them: a reviewer who approved one
//! statement never finds it widened by a second approver's choice. It is
//! bound to the requester (tenant and subject) and the connection, covers
//! only what a grant may cover at all (`airlock_policy::fingerprint`:
//! row reads and writes on named tables), and the proxy applies it only to
//! statements held on terms its approvers meet.

use std::time::{Duration, SystemTime};

use airlock_eventlog::new_event;
use airlock_eventlog::proto::{self, event::Body, grant_scope::Match};

use crate::decide::DecideError;
use crate::projection::{Grant, Projection, Request};

/// The longest a grant may live unless the policy says less.
pub const MAX_TTL: Duration = Duration::from_secs(8 * 3600);

/// The most uses one grant may allow.
pub const MAX_USES: u32 = 1000;

/// Whether `scope`, sent with a vote of `decision` on `asked`, is one the
/// reviewer may grant. `Err` says what is allowed.
pub fn check_scope(
    scope: &proto::GrantScope,
    decision: proto::Decision,
    asked: &proto::ApprovalRequested,
) -> Result<(), DecideError> {
    let bad = |why: String| Err(DecideError::BadScope(why));
    if decision != proto::Decision::Approve {
        return bad("a scope goes with an approval only".into());
    }
    let fingerprint = asked.fingerprint.clone().unwrap_or_default();
    if fingerprint.hash.is_empty() {
        let why = if fingerprint.unavailable.is_empty() {
            "its proxy did not fingerprint it".to_owned()
        } else {
            fingerprint.unavailable
        };
        return bad(format!("this statement cannot be approved in scope: {why}"));
    }
    let ttl = scope
        .ttl
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default();
    if ttl.is_zero() {
        return bad("ttl is required (e.g. 30m)".into());
    }
    // The policy's maximum, if it names a shorter one.
    let max = asked
        .max_grant_ttl
        .and_then(|d| Duration::try_from(d).ok())
        .map_or(MAX_TTL, |d| d.min(MAX_TTL));
    if ttl > max {
        return bad(format!(
            "ttl {} is over the maximum of {}{}",
            humantime::format_duration(ttl),
            humantime::format_duration(max),
            if max < MAX_TTL {
                " (the policy's max_grant_ttl)"
            } else {
                ""
            }
        ));
    }
    if scope.max_uses == 0 || scope.max_uses > MAX_USES {
        return bad(format!(
            "max_uses must be 1 to {MAX_USES}, not {}",
            scope.max_uses
        ));
    }
    let effects: Vec<&proto::Effect> = asked
        .verdict
        .as_ref()
        .map(|v| v.effects.iter().collect())
        .unwrap_or_default();
    let writes = effects.iter().any(|e| !e.kind.eq_ignore_ascii_case("SELECT"));
    if writes && scope.max_rows.is_none() {
        // A use is not shown to anyone: what it may change is bounded
        // by the reviewer, every time.
        return bad(
            "max_rows is required for a grant over writes (the most rows each use may change per table)"
                .into(),
        );
    }
    match Match::try_from(scope.r#match) {
        Ok(Match::Fingerprint) => {
            if !scope.kinds.is_empty() || !scope.tables.is_empty() {
                return bad("kinds and tables go with match \"rule\"; a fingerprint names its own".into());
            }
        }
        Ok(Match::Rule) => {
            if scope.kinds.is_empty() || scope.tables.is_empty() {
                return bad("match \"rule\" names kinds and tables".into());
            }
            for k in &scope.kinds {
                let shown = effects.iter().any(|e| e.kind.eq_ignore_ascii_case(k));
                let grantable = airlock_policy::fingerprint::GRANTABLE_KINDS
                    .iter()
                    .any(|g| g.name().eq_ignore_ascii_case(k));
                if !shown || !grantable {
                    return bad(format!(
                        "kind {k:?} is not one of this statement's: a scope may name only kinds the approved \
                         statement has ({})",
                        effects
                            .iter()
                            .map(|e| e.kind.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            for t in &scope.tables {
                if !effects.iter().any(|e| e.tables.contains(t)) {
                    return bad(format!(
                        "table {t:?} is not one this statement acts on: a scope may name only its tables"
                    ));
                }
            }
        }
        _ => return bad("match must be \"fingerprint\" or \"rule\"".into()),
    }
    Ok(())
}

/// The narrowest of `scopes`: fingerprint if any asks it, else the kinds
/// and tables all name; the shortest life, fewest uses, lowest row bound.
/// `None` when nothing is left (no common kind or table).
pub fn narrowest(scopes: &[&proto::GrantScope]) -> Option<proto::GrantScope> {
    let first = scopes.first()?;
    let fingerprint = scopes.iter().any(|s| s.r#match == Match::Fingerprint as i32);
    let ttl = scopes
        .iter()
        .filter_map(|s| s.ttl.and_then(|d| Duration::try_from(d).ok()))
        .min()?;
    let max_uses = scopes.iter().map(|s| s.max_uses).min()?;
    let max_rows = scopes.iter().filter_map(|s| s.max_rows).min();
    let (kinds, tables) = if fingerprint {
        (Vec::new(), Vec::new())
    } else {
        let kinds: Vec<String> = first
            .kinds
            .iter()
            .filter(|k| {
                scopes
                    .iter()
                    .all(|s| s.kinds.iter().any(|o| o.eq_ignore_ascii_case(k)))
            })
            .map(|k| k.to_ascii_uppercase())
            .collect();
        let tables: Vec<String> = first
            .tables
            .iter()
            .filter(|t| scopes.iter().all(|s| s.tables.contains(t)))
            .cloned()
            .collect();
        if kinds.is_empty() || tables.is_empty() {
            return None;
        }
        (kinds, tables)
    };
    Some(proto::GrantScope {
        r#match: if fingerprint {
            Match::Fingerprint
        } else {
            Match::Rule
        } as i32,
        ttl: prost_types::Duration::try_from(ttl).ok(),
        max_uses,
        max_rows,
        kinds,
        tables,
    })
}

/// The GrantIssued a granted request has earned and that is not in the log
/// yet: every approver sent a scope. Its life runs from the grant's time,
/// so any replica repairing a missing one makes the same grant.
pub fn issue_due(state: &Projection, request: &Request, source: &proto::Source) -> Option<proto::Event> {
    if request.state() != proto::RequestState::Granted || state.grants.contains_key(&request.view.request_id)
    {
        return None;
    }
    let asked = request.requested();
    let mut people: Vec<&str> = Vec::new();
    let mut scopes: Vec<&proto::GrantScope> = Vec::new();
    let mut approvers: Vec<proto::Approver> = Vec::new();
    for v in &request.view.votes {
        let who = v.reviewer.as_ref().map(|r| r.subject.as_str()).unwrap_or("");
        if v.decision != proto::Decision::Approve as i32 || who.is_empty() || people.contains(&who) {
            continue;
        }
        people.push(who);
        scopes.push(v.scope.as_ref()?);
        approvers.push(proto::Approver {
            reviewer: v.reviewer.clone(),
            reason: v.reason.clone(),
            time: v.time,
        });
    }
    let scope = narrowest(&scopes)?;
    let effects: Vec<proto::Effect> = asked
        .verdict
        .as_ref()
        .map(|v| v.effects.clone())
        .unwrap_or_default();
    // An approver who chose kinds and tables agreed to a shape only if
    // their choice covers the whole statement: else no grant at all.
    if scope.r#match == Match::Fingerprint as i32
        && scopes
            .iter()
            .filter(|s| s.r#match == Match::Rule as i32)
            .any(|s| !rule_covers_all(s, &effects))
    {
        return None;
    }
    let allowed = if scope.r#match == Match::Rule as i32 {
        within(&scope, &effects)
    } else {
        Vec::new()
    };
    let from = request
        .view
        .decided_at
        .and_then(|t| SystemTime::try_from(t).ok())?;
    let ttl = scope.ttl.and_then(|d| Duration::try_from(d).ok())?;
    let verdict = asked.verdict.clone().unwrap_or_default();
    let mut event = new_event(
        source,
        Body::GrantIssued(proto::GrantIssued {
            identity: asked.identity.clone(),
            connection: asked
                .connection
                .as_ref()
                .map(|c| c.name.clone())
                .unwrap_or_default(),
            scope: Some(scope),
            fingerprint: asked.fingerprint.clone(),
            expires_at: Some((from + ttl).into()),
            approvers,
            approvals_required: asked.approvals_required.max(1),
            reviewer_groups: asked.reviewer_groups.clone(),
            require_acrs: asked.require_acrs.clone(),
            policy: verdict.policy,
            rule: verdict.rule,
            break_glass: crate::decide::broke_glass(request),
            allowed,
        }),
    );
    event.request_id = request.view.request_id.clone();
    event.session_id = request.view.session_id.clone();
    Some(event)
}

/// The approved statement's effects within a rule scope's kinds and
/// tables: the (kind, tables) pairs its uses may have.
fn within(scope: &proto::GrantScope, effects: &[proto::Effect]) -> Vec<proto::Effect> {
    effects
        .iter()
        .filter(|e| scope.kinds.iter().any(|k| k.eq_ignore_ascii_case(&e.kind)))
        .map(|e| proto::Effect {
            kind: e.kind.to_ascii_uppercase(),
            tables: e
                .tables
                .iter()
                .filter(|t| scope.tables.contains(t))
                .cloned()
                .collect(),
        })
        .filter(|e| !e.tables.is_empty())
        .collect()
}

/// Whether a rule scope covers every (kind, table) of `effects`.
fn rule_covers_all(scope: &proto::GrantScope, effects: &[proto::Effect]) -> bool {
    effects.iter().all(|e| {
        scope.kinds.iter().any(|k| k.eq_ignore_ascii_case(&e.kind))
            && e.tables.iter().all(|t| scope.tables.contains(t))
    })
}

/// The GrantExpired of an active (or used-up) grant past its expiry.
pub fn expiry_due(grant: &Grant, now: SystemTime, source: &proto::Source) -> Option<proto::Event> {
    if !matches!(
        grant.state(),
        proto::GrantState::Active | proto::GrantState::UsedUp
    ) {
        return None;
    }
    let expires = grant.issued().expires_at?;
    if now < SystemTime::try_from(expires).ok()? {
        return None;
    }
    let mut event = new_event(
        source,
        Body::GrantExpired(proto::GrantExpired {
            expires_at: Some(expires),
            uses: grant.view.uses,
        }),
    );
    event.request_id = grant.view.grant_id.clone();
    Some(event)
}

/// Every grant and expiry due, with the subject's last folded sequence.
pub fn grants_due(
    state: &Projection,
    now: SystemTime,
    source: &proto::Source,
) -> Vec<(String, proto::Event, u64)> {
    let mut out: Vec<(String, proto::Event, u64)> = state
        .requests
        .values()
        .filter_map(|r| issue_due(state, r, source).map(|e| (r.view.request_id.clone(), e, 0)))
        .collect();
    out.extend(
        state.grants.values().filter_map(|g| {
            expiry_due(g, now, source).map(|e| (g.view.grant_id.clone(), e, g.head.sequence))
        }),
    );
    out
}

/// Why a revocation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    #[error("no grant {0}")]
    Unknown(String),
    #[error("grant {id} has already ended ({state})")]
    Ended { id: String, state: String },
    #[error("{who} may not revoke grant {id}: a reviewer of its request, or its own identity, may")]
    NotAllowed { who: String, id: String },
}

/// Judges a revocation of grant `id` by `who`: a person in one of the
/// grant's reviewer groups, or the grant's own identity giving it up.
pub fn revoke(
    state: &Projection,
    id: &str,
    who: &proto::Identity,
    reason: &str,
    source: &proto::Source,
) -> Result<(proto::Event, u64), RevokeError> {
    let grant = state
        .grants
        .get(id)
        .ok_or_else(|| RevokeError::Unknown(id.to_owned()))?;
    if !grant.is_active() {
        return Err(RevokeError::Ended {
            id: id.to_owned(),
            state: grant
                .state()
                .as_str_name()
                .trim_start_matches("GRANT_STATE_")
                .to_lowercase(),
        });
    }
    let issued = grant.issued();
    let own = issued
        .identity
        .as_ref()
        .is_some_and(|i| !i.subject.is_empty() && i.subject == who.subject && i.tenant_id == who.tenant_id);
    let reviewer = who.kind == proto::identity::Kind::User as i32
        && issued
            .reviewer_groups
            .iter()
            .any(|g| !g.id.is_empty() && who.groups.iter().any(|m| m.id == g.id));
    if !own && !reviewer {
        return Err(RevokeError::NotAllowed {
            who: if who.display_name.is_empty() {
                who.subject.clone()
            } else {
                who.display_name.clone()
            },
            id: id.to_owned(),
        });
    }
    let mut event = new_event(
        source,
        Body::GrantRevoked(proto::GrantRevoked {
            revoked_by: Some(who.clone()),
            reason: reason.to_owned(),
        }),
    );
    event.request_id = id.to_owned();
    Ok((event, grant.head.sequence))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(m: Match, ttl_s: u64, uses: u32) -> proto::GrantScope {
        proto::GrantScope {
            r#match: m as i32,
            ttl: prost_types::Duration::try_from(Duration::from_secs(ttl_s)).ok(),
            max_uses: uses,
            max_rows: Some(1),
            ..Default::default()
        }
    }

    fn asked() -> proto::ApprovalRequested {
        proto::ApprovalRequested {
            verdict: Some(proto::Verdict {
                effects: vec![proto::Effect {
                    kind: "DELETE".into(),
                    tables: vec!["public.orders".into()],
                }],
                ..Default::default()
            }),
            fingerprint: Some(proto::Fingerprint {
                hash: "abc".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn refused(s: &proto::GrantScope, d: proto::Decision, a: &proto::ApprovalRequested) -> String {
        match check_scope(s, d, a) {
            Err(DecideError::BadScope(why)) => why,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_scope_is_refused_unless_within_what_the_reviewer_may_grant() {
        let approve = proto::Decision::Approve;
        assert_eq!(
            check_scope(&scope(Match::Fingerprint, 1800, 5), approve, &asked()),
            Ok(())
        );
        assert!(
            refused(
                &scope(Match::Fingerprint, 1800, 5),
                proto::Decision::Deny,
                &asked()
            )
            .contains("approval")
        );
        assert!(refused(&scope(Match::Fingerprint, 9 * 3600, 5), approve, &asked()).contains("maximum"));
        assert!(refused(&scope(Match::Fingerprint, 0, 5), approve, &asked()).contains("ttl"));
        assert!(refused(&scope(Match::Fingerprint, 60, 0), approve, &asked()).contains("max_uses"));
        assert!(
            refused(&scope(Match::Fingerprint, 60, MAX_USES + 1), approve, &asked()).contains("max_uses")
        );
        assert!(refused(&scope(Match::Unspecified, 60, 1), approve, &asked()).contains("match"));
        let mut no_fp = asked();
        no_fp.fingerprint = Some(proto::Fingerprint {
            unavailable: "it calls code".into(),
            ..Default::default()
        });
        assert!(refused(&scope(Match::Fingerprint, 60, 1), approve, &no_fp).contains("it calls code"));
        let mut rule = scope(Match::Rule, 60, 1);
        rule.kinds = vec!["delete".into()];
        rule.tables = vec!["public.orders".into()];
        assert_eq!(check_scope(&rule, approve, &asked()), Ok(()));
        let mut wider = rule.clone();
        wider.tables.push("public.customers".into());
        assert!(refused(&wider, approve, &asked()).contains("public.customers"));
        let mut unbounded = scope(Match::Fingerprint, 60, 1);
        unbounded.max_rows = None;
        assert!(refused(&unbounded, approve, &asked()).contains("max_rows is required"));
        let mut other_kind = rule.clone();
        other_kind.kinds = vec!["UPDATE".into()];
        assert!(refused(&other_kind, approve, &asked()).contains("UPDATE"));
        // A policy's max_grant_ttl: 2h.
        let mut short = asked();
        short.max_grant_ttl = prost_types::Duration::try_from(Duration::from_secs(7200)).ok();
        assert_eq!(
            check_scope(&scope(Match::Fingerprint, 7200, 5), approve, &short),
            Ok(())
        );
        assert!(
            refused(&scope(Match::Fingerprint, 7201, 5), approve, &short)
                .contains("the policy's max_grant_ttl")
        );
    }

    #[test]
    fn the_grant_is_the_narrowest_of_its_approvers_scopes() {
        let mut a = scope(Match::Rule, 3600, 50);
        a.kinds = vec!["DELETE".into(), "UPDATE".into()];
        a.tables = vec!["public.orders".into(), "public.lines".into()];
        a.max_rows = Some(10);
        let mut b = scope(Match::Rule, 600, 80);
        b.max_rows = None;
        b.kinds = vec!["delete".into()];
        b.tables = vec!["public.orders".into()];
        let n = narrowest(&[&a, &b]).expect("a scope");
        assert_eq!(n.r#match, Match::Rule as i32);
        assert_eq!(n.kinds, vec!["DELETE".to_owned()]);
        assert_eq!(n.tables, vec!["public.orders".to_owned()]);
        assert_eq!(n.max_uses, 50);
        assert_eq!(n.max_rows, Some(10));
        assert_eq!(
            n.ttl.and_then(|d| Duration::try_from(d).ok()),
            Some(Duration::from_secs(600))
        );
        // A fingerprint is narrower than any rule.
        let f = scope(Match::Fingerprint, 7200, 3);
        let n = narrowest(&[&a, &f]).expect("a scope");
        assert_eq!(n.r#match, Match::Fingerprint as i32);
        assert!(n.kinds.is_empty() && n.tables.is_empty());
        // Nothing in common: no grant.
        let mut c = scope(Match::Rule, 60, 1);
        c.kinds = vec!["UPDATE".into()];
        c.tables = vec!["public.lines".into()];
        assert!(narrowest(&[&b, &c]).is_none());
    }
}
