//! Grants this proxy applies itself: statements like an approved one, from
//! the same identity on the same connection, run without a hold while the
//! grant lives.
//!
//! The control plane pushes every live grant over Attach ([`Grants::notice`]).
//! A held statement a grant covers ([`covers`]) runs once its use is claimed
//! in the log: a `GrantUsed` appended on the grant's subject expecting the
//! subject's last event, so two proxies (or a use and a revocation) can
//! never both append after the same event, and uses are counted exactly
//! across the fleet. A claim that loses re-reads the subject and tries
//! again; one that cannot be made leaves the statement to an ordinary hold.
//!
//! A grant is applied only while this proxy has heard from the control
//! plane within [`LEASE`] (a proxy cut off from it falls back to holding),
//! and only under a GrantIssued a control-plane key it trusts signed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::signing::{Role, Trust, Vouched};
use airlock_eventlog::{
    ChainHead, Error as LogError, EventLog, Expect, RequestId, StoredEvent, link, subjects,
};
use bytes::Bytes;

use crate::gate::HoldSpec;

/// How long after last hearing from the control plane grants still apply.
pub const LEASE: Duration = Duration::from_secs(10);

/// How many times a claim re-reads the subject after losing a race.
const CLAIM_TRIES: usize = 16;

#[derive(Debug, Clone)]
struct Entry {
    subject: String,
    issued_raw: Bytes,
    issued_sequence: u64,
    issued: proto::GrantIssued,
    head: ChainHead,
    uses: u32,
    /// `head` and `uses` were read from the log by this proxy (or are its
    /// own last claim): only then does a claim append after them. What the
    /// control plane folded may miss events it passed over.
    head_known: bool,
    /// The GrantIssued's signature checked out (checked once).
    vouched: bool,
}

#[derive(Debug, Default)]
struct Inner {
    grants: HashMap<String, Entry>,
    heard: Option<Instant>,
}

/// The live grants this proxy knows of.
#[derive(Debug, Default)]
pub struct Grants {
    inner: Mutex<Inner>,
}

/// A use claimed in the log: the statement may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub grant_id: String,
    /// Which use this is, and of how many.
    pub use_: u32,
    pub max_uses: u32,
    /// Each table the statement writes may change at most this many rows.
    pub max_rows: Option<u64>,
}

impl Grants {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The control plane was heard from (any message on Attach).
    pub fn heard(&self) {
        self.lock().heard = Some(Instant::now());
    }

    /// A new Attach stream: the live grants follow its Welcome.
    pub fn reset(&self) {
        self.lock().grants.clear();
    }

    /// Whether grants apply now: the control plane was heard from within
    /// the lease.
    pub fn leased(&self) -> bool {
        self.lock().heard.is_some_and(|h| h.elapsed() < LEASE)
    }

    /// How many grants are known (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A grant as the control plane folded it. A notice that is not a
    /// grant's (another subject, another id) is dropped.
    pub fn notice(&self, n: proto::GrantNotice) {
        let mut inner = self.lock();
        if !n.live {
            inner.grants.remove(&n.grant_id);
            return;
        }
        let Ok(id) = RequestId::parse(&n.grant_id) else {
            return;
        };
        let subject = subjects::grant(&id);
        let raw = Bytes::from(n.issued);
        let Ok(event) = <proto::Event as prost::Message>::decode(raw.clone()) else {
            tracing::warn!(grant = %n.grant_id, "a grant notice whose GrantIssued does not decode; ignored");
            return;
        };
        let Some(Body::GrantIssued(issued)) = event.body else {
            return;
        };
        if n.subject != subject || event.request_id != n.grant_id {
            return;
        }
        let head = ChainHead {
            sequence: n.head_sequence,
            hash: n.head_hash,
            index: n.head_index,
        };
        match inner.grants.get_mut(&n.grant_id) {
            // The fold's count only ever makes a proxy try less; where the
            // subject stands is read from the log before a claim.
            Some(e) => e.uses = e.uses.max(n.uses),
            None => {
                inner.grants.insert(
                    n.grant_id,
                    Entry {
                        subject,
                        issued_raw: raw,
                        issued_sequence: n.issued_sequence,
                        issued,
                        head,
                        uses: n.uses,
                        head_known: false,
                        vouched: false,
                    },
                );
            }
        }
    }

    /// The grants that cover a held statement, oldest first.
    pub fn covering(
        &self,
        who: &proto::Identity,
        connection: &str,
        effects: &[proto::Effect],
        spec: &HoldSpec,
        now: SystemTime,
    ) -> Vec<String> {
        let inner = self.lock();
        if inner.heard.is_none_or(|h| h.elapsed() >= LEASE) {
            return Vec::new();
        }
        let mut ids: Vec<String> = inner
            .grants
            .iter()
            .filter(|(_, e)| e.uses < e.issued.scope.as_ref().map_or(0, |s| s.max_uses))
            .filter(|(_, e)| covers(&e.issued, who, connection, effects, spec, now).is_ok())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Claims the next use of grant `id` in the log. `used` makes the
    /// `GrantUsed` event for a use number (the caller's session and
    /// source). `Err` says why not: the statement is then held as usual.
    pub async fn claim(
        &self,
        log: &EventLog,
        id: &str,
        used: impl Fn(u32) -> proto::Event,
    ) -> Result<Claimed, String> {
        let trust = log.trust().ok_or("no trusted control-plane keys")?;
        for _ in 0..CLAIM_TRIES {
            let entry = {
                let mut inner = self.lock();
                let e = inner.grants.get_mut(id).ok_or("the grant is no longer live")?;
                if !e.vouched {
                    e.vouched = vouched_issue(trust, e);
                }
                if !e.vouched {
                    inner.grants.remove(id);
                    return Err("the grant is not signed by a trusted control-plane key".into());
                }
                e.clone()
            };
            if !entry.head_known {
                self.reread(log, trust, id, &entry).await?;
                continue;
            }
            let scope = entry.issued.scope.clone().unwrap_or_default();
            if entry.uses >= scope.max_uses {
                return Err(format!("all {} uses are taken", scope.max_uses));
            }
            let mut event = used(entry.uses + 1);
            link(&mut event, &entry.head);
            match log
                .append(&entry.subject, &event, Expect::LastSequence(entry.head.sequence))
                .await
            {
                Ok(appended) if !appended.duplicate => {
                    let mut inner = self.lock();
                    if let Some(e) = inner.grants.get_mut(id) {
                        e.head = appended.head;
                        e.uses = entry.uses + 1;
                        e.head_known = true;
                    }
                    return Ok(Claimed {
                        grant_id: id.to_owned(),
                        use_: entry.uses + 1,
                        max_uses: scope.max_uses,
                        max_rows: scope.max_rows,
                    });
                }
                Ok(_) => return Err("the use's event id was already in the log".into()),
                Err(LogError::Conflict { .. }) => {
                    // Another use, or a revocation, came first.
                    self.reread(log, trust, id, &entry).await?;
                }
                Err(e) => return Err(format!("the log did not take the use: {e}")),
            }
        }
        Err("the grant's uses kept moving".into())
    }

    /// After a lost race: the subject's state from the log itself.
    async fn reread(&self, log: &EventLog, trust: &Trust, id: &str, entry: &Entry) -> Result<(), String> {
        let events = log
            .read_subject_events(&entry.subject)
            .await
            .map_err(|e| format!("reading the grant: {e}"))?;
        let state = fold_subject(&events, trust, id);
        let mut inner = self.lock();
        match state {
            Ok((uses, head)) => {
                if let Some(e) = inner.grants.get_mut(id) {
                    e.head = head;
                    e.uses = uses;
                    e.head_known = true;
                }
                Ok(())
            }
            Err(why) => {
                inner.grants.remove(id);
                Err(why)
            }
        }
    }
}

/// Whether the GrantIssued in `e` is one a control-plane key this proxy
/// trusts signed, on the grant's subject.
fn vouched_issue(trust: &Trust, e: &Entry) -> bool {
    let Ok(stored) = StoredEvent::from_raw(e.issued_sequence, &e.subject, e.issued_raw.clone()) else {
        return false;
    };
    matches!(
        trust.check(&stored),
        Ok(Vouched::Signed {
            role: Role::Control,
            ..
        })
    )
}

/// Pure: the uses taken of grant `id` by the events on its subject, and
/// the subject's head; or why it is over (revoked, expired, never issued).
/// Only the GrantIssued must be signed by a trusted control-plane key.
/// Every other event counts whoever wrote it (this proxy may not know the
/// other proxies' keys): a forged use or end can only stop a grant sooner,
/// never give it more uses, so the count fails closed.
pub fn fold_subject(events: &[StoredEvent], trust: &Trust, id: &str) -> Result<(u32, ChainHead), String> {
    let mut issued = false;
    let mut uses = 0u32;
    let mut index = 0u64;
    for e in events {
        if e.event.request_id != id {
            continue;
        }
        index = index.max(e.event.chain_index);
        match &e.event.body {
            Some(Body::GrantIssued(_)) => {
                issued |= matches!(
                    trust.check(e),
                    Ok(Vouched::Signed {
                        role: Role::Control,
                        ..
                    })
                );
            }
            Some(Body::GrantUsed(u)) => uses = uses.saturating_add(1).max(u.number),
            Some(Body::GrantRevoked(_)) => return Err("the grant was revoked".into()),
            Some(Body::GrantExpired(_)) => return Err("the grant expired".into()),
            _ => {}
        }
    }
    let last = events.last().ok_or("the grant is not in the log")?;
    // Each event links to the one before, so no honest index is past the
    // count of events on the subject: a larger one was put there to make
    // the next uses look like replays (or to overflow), and the grant is
    // not used.
    if index > events.len() as u64 {
        return Err("the grant's subject holds an event out of place".into());
    }
    if !issued {
        return Err("the grant is not in the log".into());
    }
    Ok((
        uses,
        ChainHead {
            sequence: last.sequence,
            hash: airlock_eventlog::hash(&last.raw).to_vec(),
            index,
        },
    ))
}

/// The break-glass terms both `a` and `b` allow: groups and clients in both
/// (clients left open by one are the other's), the shorter `max_ttl`; none
/// if either has none or nothing is left.
pub fn narrower_glass(
    a: Option<&proto::BreakGlass>,
    b: Option<&proto::BreakGlass>,
) -> Option<proto::BreakGlass> {
    let (a, b) = (a?, b?);
    let groups: Vec<proto::Group> = a
        .groups
        .iter()
        .filter(|g| !g.id.is_empty() && b.groups.iter().any(|h| h.id == g.id))
        .cloned()
        .collect();
    let clients: Vec<String> = match (a.clients.is_empty(), b.clients.is_empty()) {
        (true, _) => b.clients.clone(),
        (_, true) => a.clients.clone(),
        _ => a
            .clients
            .iter()
            .filter(|c| b.clients.contains(c))
            .cloned()
            .collect(),
    };
    if groups.is_empty() || (!a.clients.is_empty() && !b.clients.is_empty() && clients.is_empty()) {
        return None;
    }
    let ttl =
        |t: &Option<prost_types::Duration>| t.and_then(|d| Duration::try_from(d).ok()).unwrap_or_default();
    Some(proto::BreakGlass {
        groups,
        max_ttl: prost_types::Duration::try_from(ttl(&a.max_ttl).min(ttl(&b.max_ttl))).ok(),
        clients,
    })
}

/// Whether `approver` may break glass for `requester`'s session on
/// `glass` terms: the same person (tenant, subject, issuer), signed in
/// through another client than the session's, one of the terms' clients
/// when they name any (and the session's client is not one of them), in
/// one of its groups.
pub fn may_break_glass(
    approver: &proto::Identity,
    requester: &proto::Identity,
    glass: &proto::BreakGlass,
) -> bool {
    requester.kind == proto::identity::Kind::User as i32
        && !requester.subject.is_empty()
        && approver.subject == requester.subject
        && approver.tenant_id == requester.tenant_id
        && approver.issuer == requester.issuer
        && !requester.client_app_id.is_empty()
        && approver.client_app_id != requester.client_app_id
        && (glass.clients.is_empty()
            || (glass.clients.contains(&approver.client_app_id)
                && !glass.clients.contains(&requester.client_app_id)))
        && glass
            .groups
            .iter()
            .any(|g| !g.id.is_empty() && approver.groups.iter().any(|m| m.id == g.id))
}

/// Pure: whether `issued` covers a statement held with `spec`, with judged
/// `effects`, from `who` on `connection`, at `now`. A use must be from the
/// grant's identity (tenant and subject) on its connection, before its
/// expiry, match its scope, be grantable at all, and be held on terms its
/// approvers meet: no more approvals than they were, each approver in a
/// group that may review it, each with the step-up it asks.
pub fn covers(
    issued: &proto::GrantIssued,
    who: &proto::Identity,
    connection: &str,
    effects: &[proto::Effect],
    spec: &HoldSpec,
    now: SystemTime,
) -> Result<(), &'static str> {
    use proto::grant_scope::Match;
    let mine = issued.identity.as_ref().ok_or("no identity")?;
    if mine.subject.is_empty() || mine.subject != who.subject || mine.tenant_id != who.tenant_id {
        return Err("another identity");
    }
    if issued.connection != connection {
        return Err("another connection");
    }
    let expires = issued
        .expires_at
        .and_then(|t| SystemTime::try_from(t).ok())
        .ok_or("no expiry")?;
    if now >= expires {
        return Err("expired");
    }
    let scope = issued.scope.as_ref().ok_or("no scope")?;
    if let Some(max) = spec.max_grant_ttl {
        // A grant longer than this hold's policy allows now (tightened
        // since, or a second policy holding the statement).
        let ttl = scope.ttl.and_then(|d| Duration::try_from(d).ok());
        if ttl.is_none_or(|t| t > max) {
            return Err("a grant longer than this hold's max_grant_ttl");
        }
    }
    if spec.dry_run.is_some() {
        // Its rule asks that each statement be tried before a reviewer
        // decides: a grant would skip that.
        return Err("its rule asks for a dry run");
    }
    let fingerprint = &spec.fingerprint;
    if fingerprint.hash.is_empty() {
        // Not a statement a grant may cover (several statements, a call,
        // DDL, unparsed).
        return Err("not grantable");
    }
    match Match::try_from(scope.r#match) {
        Ok(Match::Fingerprint) => {
            let want = issued.fingerprint.as_ref().map(|f| f.hash.as_str()).unwrap_or("");
            if want.is_empty() || want != fingerprint.hash {
                return Err("another shape");
            }
        }
        Ok(Match::Rule) => {
            // Each (kind, table) of the statement must be one the grant
            // allows: its kinds on its tables as the approved statement
            // had them, not every kind on every table.
            let allowed = |kind: &str, table: &str| {
                issued
                    .allowed
                    .iter()
                    .any(|a| a.kind.eq_ignore_ascii_case(kind) && a.tables.iter().any(|t| t == table))
            };
            let covered = !effects.is_empty()
                && effects.iter().all(|e| {
                    if e.tables.is_empty() {
                        // A read of no table (`SELECT 1`).
                        e.kind.eq_ignore_ascii_case("SELECT")
                    } else {
                        e.tables.iter().all(|t| allowed(&e.kind, t))
                    }
                });
            if !covered {
                return Err("outside its kinds and tables");
            }
        }
        _ => return Err("an unknown match"),
    }
    // The hold's terms, met by the grant's approvers.
    let mut people: Vec<&proto::Identity> = Vec::new();
    for a in &issued.approvers {
        if let Some(r) = &a.reviewer
            && !r.subject.is_empty()
            && !people.iter().any(|p| p.subject == r.subject)
        {
            people.push(r);
        }
    }
    let in_any = |p: &proto::Identity, groups: &[proto::Group]| {
        groups
            .iter()
            .any(|g| !g.id.is_empty() && p.groups.iter().any(|m| m.id == g.id))
    };
    if issued.break_glass {
        // The requester's own approval: only where this hold allows
        // break-glass, for a person in one of its groups.
        let glass = spec
            .break_glass
            .as_ref()
            .ok_or("its hold allows no break-glass")?;
        // For sessions of the client the approved statement came through
        // only, never of the client that approved it.
        let same_client = !mine.client_app_id.is_empty() && mine.client_app_id == who.client_app_id;
        let own = same_client && !people.is_empty() && people.iter().all(|p| may_break_glass(p, who, glass));
        if !own {
            return Err("a break-glass grant of someone this hold does not allow");
        }
        // No longer than this hold's break-glass terms allow now (a policy
        // since tightened, or a second policy holding the statement).
        let ttl = scope.ttl.and_then(|d| Duration::try_from(d).ok());
        let max = glass.max_ttl.and_then(|d| Duration::try_from(d).ok());
        if !matches!((ttl, max), (Some(t), Some(m)) if t <= m) {
            return Err("a break-glass grant longer than this hold's max_ttl");
        }
    } else {
        // The requester never counts towards their own quorum.
        people.retain(|p| p.subject != who.subject);
        if people.len() < spec.approvals.max(1) as usize {
            return Err("fewer approvers than the hold asks");
        }
        if !people.iter().all(|p| in_any(p, &spec.reviewers)) {
            return Err("an approver is not a reviewer of this hold");
        }
    }
    if !people
        .iter()
        .all(|p| spec.require_acrs.iter().all(|acr| p.acrs.contains(acr)))
    {
        return Err("an approver lacks the step-up the hold asks");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(subject: &str, groups: &[&str], acrs: &[&str]) -> proto::Identity {
        proto::Identity {
            subject: subject.into(),
            tenant_id: "t".into(),
            kind: proto::identity::Kind::User as i32,
            groups: groups
                .iter()
                .map(|g| proto::Group {
                    id: (*g).into(),
                    name: String::new(),
                })
                .collect(),
            acrs: acrs.iter().map(|a| (*a).to_string()).collect(),
            ..Default::default()
        }
    }

    fn agent() -> proto::Identity {
        proto::Identity {
            subject: "agent".into(),
            tenant_id: "t".into(),
            kind: proto::identity::Kind::App as i32,
            ..Default::default()
        }
    }

    fn spec(fingerprint: &str) -> HoldSpec {
        HoldSpec {
            approvals: 1,
            reviewers: vec![proto::Group {
                id: "rev".into(),
                name: "db-reviewers".into(),
            }],
            timeout: Duration::from_secs(60),
            require_acrs: Vec::new(),
            plan: Ok(()),
            dry_run: None,
            fingerprint: proto::Fingerprint {
                hash: fingerprint.into(),
                ..Default::default()
            },
            break_glass: None,
            max_grant_ttl: None,
        }
    }

    fn issued(m: proto::grant_scope::Match) -> proto::GrantIssued {
        proto::GrantIssued {
            identity: Some(agent()),
            connection: "shop".into(),
            scope: Some(proto::GrantScope {
                r#match: m as i32,
                max_uses: 5,
                kinds: vec!["DELETE".into()],
                tables: vec!["public.orders".into()],
                ..Default::default()
            }),
            fingerprint: Some(proto::Fingerprint {
                hash: "abc".into(),
                ..Default::default()
            }),
            expires_at: Some((SystemTime::now() + Duration::from_secs(600)).into()),
            approvers: vec![proto::Approver {
                reviewer: Some(person("alice", &["rev"], &[])),
                ..Default::default()
            }],
            approvals_required: 1,
            allowed: vec![proto::Effect {
                kind: "DELETE".into(),
                tables: vec!["public.orders".into()],
            }],
            ..Default::default()
        }
    }

    fn delete_orders() -> Vec<proto::Effect> {
        vec![proto::Effect {
            kind: "DELETE".into(),
            tables: vec!["public.orders".into()],
        }]
    }

    #[test]
    fn a_fingerprint_grant_covers_its_shape_for_its_identity_and_connection_only() {
        use proto::grant_scope::Match;
        let g = issued(Match::Fingerprint);
        let now = SystemTime::now();
        assert_eq!(
            covers(&g, &agent(), "shop", &delete_orders(), &spec("abc"), now),
            Ok(())
        );
        assert!(covers(&g, &agent(), "shop", &delete_orders(), &spec("abd"), now).is_err());
        assert!(covers(&g, &agent(), "other", &delete_orders(), &spec("abc"), now).is_err());
        let mut other = agent();
        other.subject = "agent-2".into();
        assert!(covers(&g, &other, "shop", &delete_orders(), &spec("abc"), now).is_err());
        let mut other_tenant = agent();
        other_tenant.tenant_id = "t2".into();
        assert!(covers(&g, &other_tenant, "shop", &delete_orders(), &spec("abc"), now).is_err());
        // Not grantable (no fingerprint): never covered.
        assert!(covers(&g, &agent(), "shop", &delete_orders(), &spec(""), now).is_err());
        // Past its expiry.
        assert!(
            covers(
                &g,
                &agent(),
                "shop",
                &delete_orders(),
                &spec("abc"),
                now + Duration::from_secs(601)
            )
            .is_err()
        );
    }

    #[test]
    fn a_rule_grant_covers_only_its_kinds_on_its_tables() {
        use proto::grant_scope::Match;
        let g = issued(Match::Rule);
        let now = SystemTime::now();
        assert_eq!(
            covers(&g, &agent(), "shop", &delete_orders(), &spec("x"), now),
            Ok(())
        );
        let update = vec![proto::Effect {
            kind: "UPDATE".into(),
            tables: vec!["public.orders".into()],
        }];
        assert!(covers(&g, &agent(), "shop", &update, &spec("x"), now).is_err());
        let two = vec![proto::Effect {
            kind: "DELETE".into(),
            tables: vec!["public.orders".into(), "public.customers".into()],
        }];
        assert!(covers(&g, &agent(), "shop", &two, &spec("x"), now).is_err());
        assert!(covers(&g, &agent(), "shop", &[], &spec("x"), now).is_err());
        // Kinds and tables pair as the approved statement had them: a
        // DELETE ... USING customers does not allow DELETE FROM customers.
        let mut using = issued(Match::Rule);
        using.scope.as_mut().expect("scope").kinds.push("SELECT".into());
        using
            .scope
            .as_mut()
            .expect("scope")
            .tables
            .push("public.customers".into());
        using.allowed.push(proto::Effect {
            kind: "SELECT".into(),
            tables: vec!["public.customers".into()],
        });
        let delete_customers = vec![proto::Effect {
            kind: "DELETE".into(),
            tables: vec!["public.customers".into()],
        }];
        assert!(covers(&using, &agent(), "shop", &delete_customers, &spec("x"), now).is_err());
        // A rule that asks for a dry run is never covered.
        let mut dry = spec("x");
        dry.dry_run = Some(Ok(()));
        assert!(covers(&g, &agent(), "shop", &delete_orders(), &dry, now).is_err());
    }

    #[test]
    fn a_hold_asking_more_than_the_approvers_gave_is_not_covered() {
        use proto::grant_scope::Match;
        let g = issued(Match::Fingerprint);
        let now = SystemTime::now();
        let mut two = spec("abc");
        two.approvals = 2;
        assert!(covers(&g, &agent(), "shop", &delete_orders(), &two, now).is_err());
        let mut other_reviewers = spec("abc");
        other_reviewers.reviewers = vec![proto::Group {
            id: "leads".into(),
            name: String::new(),
        }];
        assert!(covers(&g, &agent(), "shop", &delete_orders(), &other_reviewers, now).is_err());
        let mut step_up = spec("abc");
        step_up.require_acrs = vec!["c1".into()];
        assert!(covers(&g, &agent(), "shop", &delete_orders(), &step_up, now).is_err());
        // A grant longer than the hold's policy now allows (its ttl is
        // unset here: never within a maximum).
        let mut short = spec("abc");
        short.max_grant_ttl = Some(Duration::from_secs(600));
        assert!(covers(&g, &agent(), "shop", &delete_orders(), &short, now).is_err());
        let mut g30 = g.clone();
        if let Some(s) = g30.scope.as_mut() {
            s.ttl = prost_types::Duration::try_from(Duration::from_secs(1800)).ok();
        }
        assert!(covers(&g30, &agent(), "shop", &delete_orders(), &short, now).is_err());
        short.max_grant_ttl = Some(Duration::from_secs(1800));
        assert_eq!(
            covers(&g30, &agent(), "shop", &delete_orders(), &short, now),
            Ok(())
        );
    }

    #[test]
    fn a_break_glass_grant_covers_its_own_person_on_this_holds_terms_only() {
        use proto::grant_scope::Match;
        let now = SystemTime::now();
        let mut dana = person("dana", &["oncall"], &[]);
        dana.client_app_id = "psql".into();
        let mut signed_in = dana.clone();
        signed_in.client_app_id = "airlock-reviewer".into();
        let glass_grant = |approver: proto::Identity, ttl: u64| {
            let mut g = issued(Match::Fingerprint);
            g.identity = Some(dana.clone());
            g.break_glass = true;
            g.approvers = vec![proto::Approver {
                reviewer: Some(approver),
                ..Default::default()
            }];
            if let Some(s) = g.scope.as_mut() {
                s.ttl = prost_types::Duration::try_from(Duration::from_secs(ttl)).ok();
            }
            g
        };
        let glass_spec = |max_ttl: u64| {
            let mut s = spec("abc");
            s.break_glass = Some(proto::BreakGlass {
                groups: vec![proto::Group {
                    id: "oncall".into(),
                    name: String::new(),
                }],
                max_ttl: prost_types::Duration::try_from(Duration::from_secs(max_ttl)).ok(),
                clients: Vec::new(),
            });
            s
        };
        let ok = glass_grant(signed_in.clone(), 900);
        assert_eq!(
            covers(&ok, &dana, "shop", &delete_orders(), &glass_spec(3600), now),
            Ok(())
        );
        // A hold with no break-glass terms, or shorter ones than the grant's.
        assert!(covers(&ok, &dana, "shop", &delete_orders(), &spec("abc"), now).is_err());
        assert!(covers(&ok, &dana, "shop", &delete_orders(), &glass_spec(600), now).is_err());
        // Approved with the session's own credential (same client).
        let same = glass_grant(dana.clone(), 900);
        assert!(covers(&same, &dana, "shop", &delete_orders(), &glass_spec(3600), now).is_err());
        // From another issuer.
        let mut elsewhere = signed_in.clone();
        elsewhere.issuer = "https://elsewhere.example".into();
        let other_issuer = glass_grant(elsewhere, 900);
        assert!(
            covers(
                &other_issuer,
                &dana,
                "shop",
                &delete_orders(),
                &glass_spec(3600),
                now
            )
            .is_err()
        );
        // Only for sessions of the client the approved statement came
        // through.
        let mut dana_elsewhere = dana.clone();
        dana_elsewhere.client_app_id = "some-tool".into();
        assert!(
            covers(
                &ok,
                &dana_elsewhere,
                "shop",
                &delete_orders(),
                &glass_spec(3600),
                now
            )
            .is_err()
        );
        // Terms naming the approving clients.
        let mut named = glass_spec(3600);
        if let Some(b) = named.break_glass.as_mut() {
            b.clients = vec!["airlock-reviewer".into()];
        }
        assert_eq!(covers(&ok, &dana, "shop", &delete_orders(), &named, now), Ok(()));
        if let Some(b) = named.break_glass.as_mut() {
            b.clients = vec!["airlock-cli".into()];
        }
        assert!(covers(&ok, &dana, "shop", &delete_orders(), &named, now).is_err());
        // Narrower of two terms: common groups and clients, shorter time.
        let a = glass_spec(3600).break_glass;
        let mut b = glass_spec(600).break_glass;
        if let Some(b) = b.as_mut() {
            b.clients = vec!["airlock-cli".into()];
        }
        let n = narrower_glass(a.as_ref(), b.as_ref()).expect("both allow");
        assert_eq!(n.clients, vec!["airlock-cli".to_owned()]);
        assert_eq!(n.max_ttl.map(|d| d.seconds), Some(600));
        assert!(narrower_glass(a.as_ref(), None).is_none());
        // A self-approval without the break-glass flag never makes a quorum.
        let mut plain = glass_grant(signed_in, 900);
        plain.break_glass = false;
        let mut dana_reviews = glass_spec(3600);
        dana_reviews.reviewers = vec![proto::Group {
            id: "oncall".into(),
            name: String::new(),
        }];
        assert!(covers(&plain, &dana, "shop", &delete_orders(), &dana_reviews, now).is_err());
    }

    #[test]
    fn without_hearing_from_the_control_plane_no_grant_applies() {
        let grants = Grants::default();
        let g = issued(proto::grant_scope::Match::Fingerprint);
        let event = proto::Event {
            id: "E".into(),
            request_id: "01J0GRANT".into(),
            body: Some(Body::GrantIssued(g)),
            ..Default::default()
        };
        grants.notice(proto::GrantNotice {
            grant_id: "01J0GRANT".into(),
            issued: prost::Message::encode_to_vec(&event),
            issued_sequence: 1,
            subject: "airlock.v1.grant.01J0GRANT".into(),
            head_sequence: 1,
            live: true,
            ..Default::default()
        });
        assert_eq!(grants.len(), 1);
        let now = SystemTime::now();
        assert!(
            grants
                .covering(&agent(), "shop", &delete_orders(), &spec("abc"), now)
                .is_empty()
        );
        grants.heard();
        assert_eq!(
            grants.covering(&agent(), "shop", &delete_orders(), &spec("abc"), now),
            vec!["01J0GRANT".to_owned()]
        );
        // A notice that it ended removes it.
        grants.notice(proto::GrantNotice {
            grant_id: "01J0GRANT".into(),
            live: false,
            ..Default::default()
        });
        assert!(grants.is_empty());
    }
}
