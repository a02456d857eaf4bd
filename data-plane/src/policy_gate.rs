//! The real [`Gate`]: tokens checked by the identity crate, statements
//! judged by the policy crate, connections from airlock.yaml.
//!
//! An identity in several groups that each have a policy for the
//! connection is judged under all of them, and the strictest verdict wins
//! (deny, then require-approval, then allow), the same rule the policy crate
//! applies within one statement.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use airlock_eventlog::proto;
use airlock_identity::Verifier;
use airlock_policy::{Catalog, Decision, PolicySet, VerdictCache};

use crate::catalog::{CatalogWatch, Facts, SessionCatalog};

use crate::gate::{
    Action, Agent, Binding, BoxFuture, Gate, HoldSpec, Judgement, Refusal, SessionPolicy, why,
};
use crate::upstream::UpstreamConfig;

pub struct PolicyGate {
    verifier: Verifier,
    /// Replaced whole on reload (SIGHUP); sessions see the new rules at
    /// their next statement.
    policies: std::sync::RwLock<Arc<PolicySet>>,
    /// `shadow_policies:`: judged beside the enforced ones and recorded in
    /// the verdict (`shadow_verdict`), never enforced. Replaced on reload.
    shadow: std::sync::RwLock<Arc<PolicySet>>,
    connections: HashMap<String, UpstreamConfig>,
    /// Each connection's catalog facts, kept fresh by a task of its own.
    catalogs: HashMap<String, Arc<CatalogWatch>>,
    /// Bumped at every reload of the enforced or shadow policies.
    generation: std::sync::atomic::AtomicU64,
    /// Group name -> object id (`identity.group_names`).
    group_names: BTreeMap<String, String>,
    cache: VerdictCache,
}

impl std::fmt::Debug for PolicyGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyGate")
            .field("policies", &self.policies().policies.len())
            .field("connections", &self.connections.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl PolicyGate {
    pub fn new(
        verifier: Verifier,
        policies: PolicySet,
        connections: Vec<(String, UpstreamConfig)>,
        group_names: BTreeMap<String, String>,
        catalog_refresh: std::time::Duration,
    ) -> PolicyGate {
        // Read by tasks of the runtime this is made in; without one (never
        // in the proxy), the facts stay unread and judgement fails closed.
        let runtime = tokio::runtime::Handle::try_current().ok();
        // `upstream_auth: entra`: each token is fetched now and refreshed
        // before it expires, so logins do not wait for it and `/readyz`
        // shows a token endpoint that fails.
        if let Some(rt) = &runtime {
            for (name, upstream) in &connections {
                if let Some(token) = upstream.token.clone() {
                    rt.spawn(keep_token_fresh(name.clone(), token));
                }
            }
        }
        let catalogs = connections
            .iter()
            .map(|(name, upstream)| {
                let watch = CatalogWatch::new(name.clone(), upstream.clone(), catalog_refresh);
                if let Some(rt) = &runtime {
                    rt.spawn(watch.clone().run());
                }
                (name.clone(), watch)
            })
            .collect();
        let gate = PolicyGate {
            verifier,
            policies: std::sync::RwLock::new(Arc::new(policies)),
            shadow: std::sync::RwLock::new(Arc::new(PolicySet::default())),
            connections: connections.into_iter().collect(),
            catalogs,
            generation: std::sync::atomic::AtomicU64::new(1),
            group_names,
            cache: VerdictCache::new(10_000),
        };
        gate.ask_graph_about_named_groups();
        gate
    }

    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The catalog may have changed (SIGHUP): every connection's facts are
    /// read again, and not trusted until they are.
    pub fn reread_catalogs(&self) {
        for watch in self.catalogs.values() {
            watch.changed();
        }
    }

    /// Why connections judge without catalog facts (for `/readyz`).
    pub fn degraded_catalogs(&self) -> Vec<String> {
        self.catalogs.values().filter_map(|w| w.degraded()).collect()
    }

    /// Connections whose upstream login cannot work now: `upstream_auth:
    /// entra` with no valid token, and why (for `/readyz`).
    pub fn degraded_upstreams(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .connections
            .iter()
            .filter_map(|(name, upstream)| {
                let why = upstream.token.as_ref()?.degraded()?;
                Some(format!("connection {name}: no upstream token: {why}"))
            })
            .collect();
        out.sort();
        out
    }

    /// Waits (at most `within`) until every connection's facts have been
    /// read once, well or not.
    pub async fn catalogs_read(&self, within: std::time::Duration) {
        futures::future::join_all(self.catalogs.values().map(|w| w.first_read(within))).await;
    }

    /// Shadow policies from now on (an empty set: none). Sessions bind to
    /// them at login.
    pub fn replace_shadow(&self, shadow: PolicySet) {
        let same = digests(&self.shadow()) == digests(&shadow);
        *self.shadow.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(shadow);
        self.ask_graph_about_named_groups();
        if !same {
            self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    fn shadow(&self) -> Arc<PolicySet> {
        self.shadow.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The strictest verdict of the policies of `set` named in `names` on
    /// `connection` (none: no such policy is left).
    #[allow(clippy::too_many_arguments)]
    fn strictest(
        &self,
        set: &PolicySet,
        names: &[&str],
        connection: &str,
        sql: &str,
        schema: &str,
        catalog: Catalog<'_>,
        session: airlock_policy::SessionNames,
        prepared: &airlock_policy::PreparedStatements,
    ) -> Option<Arc<airlock_policy::Verdict>> {
        let mut strictest: Option<Arc<airlock_policy::Verdict>> = None;
        for name in names {
            let Some(policy) = set
                .policies
                .iter()
                .find(|p| p.name == *name && p.connection == connection)
            else {
                continue;
            };
            let v = self
                .cache
                .evaluate_on(policy, sql, schema, catalog, session, prepared);
            strictest = Some(match strictest {
                None => v,
                Some(s) if v.action > s.action => v,
                // Two policies hold it: their approval terms combine as
                // the rules of one statement's effects do.
                Some(s) if v.action == s.action && v.action == airlock_policy::Action::RequireApproval => {
                    Arc::new(combine_holds(&s, &v))
                }
                Some(s) => s,
            });
        }
        strictest
    }

    /// Enforces a new policy set from now on.
    pub fn replace_policies(&self, policies: PolicySet) {
        // Graph is asked about the new groups before they are enforced, so
        // no login bound under the new policies was resolved for the old.
        let mut groups = policies.named_groups();
        groups.extend(self.shadow().named_groups());
        self.verifier.ask_graph_about(groups);
        let same = digests(&self.policies()) == digests(&policies);
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policies);
        // Judgements under unchanged policies stay current.
        if !same {
            self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Tokens with group overage are resolved through Graph (when
    /// `identity.graph` is set) for the groups the enforced and shadow
    /// policies name.
    fn ask_graph_about_named_groups(&self) {
        let mut groups = self.policies().named_groups();
        groups.extend(self.shadow().named_groups());
        self.verifier.ask_graph_about(groups);
    }

    fn group(&self, name_or_id: &str) -> proto::Group {
        match self.group_names.get(name_or_id) {
            Some(id) => proto::Group {
                id: id.clone(),
                name: name_or_id.to_owned(),
            },
            None => proto::Group {
                id: name_or_id.to_owned(),
                name: self
                    .group_names
                    .iter()
                    .find(|(_, id)| id.eq_ignore_ascii_case(name_or_id))
                    .map(|(n, _)| n.clone())
                    .unwrap_or_default(),
            },
        }
    }
}

/// The enforced form of a verdict, for the wire and the log.
fn proto_verdict(v: &airlock_policy::Verdict) -> proto::Verdict {
    let (rule_index, rule, default_applied) = decision_text(&v.decision);
    proto::Verdict {
        action: match v.action {
            airlock_policy::Action::Allow => proto::verdict::Action::Allow,
            airlock_policy::Action::RequireApproval => proto::verdict::Action::RequireApproval,
            airlock_policy::Action::Deny => proto::verdict::Action::Deny,
        } as i32,
        policy: v.policy.clone(),
        policy_digest: v.policy_digest.clone(),
        rule_index,
        rule: rule.clone(),
        default_applied,
        reason: v.reason.clone(),
        effects: v
            .effects
            .iter()
            .map(|e| proto::Effect {
                kind: e.effect.kind.to_string(),
                tables: e.effect.tables.clone(),
            })
            .collect(),
        parsed: v.parsed(),
        shadow_verdict: None,
    }
}

/// The policies of `set` that bind one of the agent's groups (by object id
/// or name) to `database`, by name.
/// Each policy's group, connection and digest: what a reload must change
/// for judgements made before it to be stale.
fn digests(set: &PolicySet) -> Vec<(String, String, String)> {
    let mut all: Vec<(String, String, String)> = set
        .policies
        .iter()
        .map(|p| (p.name.clone(), p.connection.clone(), p.digest().to_owned()))
        .collect();
    all.sort();
    all
}

/// The hold of a statement two policies of the session both hold: only
/// groups both let approve may approve (none: it is denied), the larger
/// quorum, the shorter wait, and every step-up either asks for.
fn combine_holds(a: &airlock_policy::Verdict, b: &airlock_policy::Verdict) -> airlock_policy::Verdict {
    let mut out = a.clone();
    out.reviewers = a
        .reviewers
        .iter()
        .filter(|g| b.reviewers.contains(g))
        .cloned()
        .collect();
    out.approvals = a.approvals.max(b.approvals);
    out.timeout = a.timeout.min(b.timeout);
    for acr in &b.require_acrs {
        if !out.require_acrs.contains(acr) {
            out.require_acrs.push(acr.clone());
        }
    }
    out.require_acrs.sort();
    out.dry_run = a.dry_run || b.dry_run;
    // Break-glass only where both policies allow it, to members of a group
    // both name, for the shorter time.
    out.break_glass = match (&a.break_glass, &b.break_glass) {
        (Some(x), Some(y)) => {
            let groups: Vec<String> = x
                .groups
                .iter()
                .filter(|g| y.groups.contains(g))
                .cloned()
                .collect();
            // Clients: those both allow (either may leave them open).
            let clients: Vec<String> = match (x.clients.is_empty(), y.clients.is_empty()) {
                (true, _) => y.clients.clone(),
                (_, true) => x.clients.clone(),
                _ => x
                    .clients
                    .iter()
                    .filter(|c| y.clients.contains(c))
                    .cloned()
                    .collect(),
            };
            let none_left = !x.clients.is_empty() && !y.clients.is_empty() && clients.is_empty();
            (!groups.is_empty() && !none_left).then(|| airlock_policy::config::BreakGlass {
                groups,
                max_ttl: x.max_ttl.min(y.max_ttl),
                clients,
            })
        }
        _ => None,
    };
    // The shorter of the two policies' longest grants.
    out.max_grant_ttl = match (a.max_grant_ttl, b.max_grant_ttl) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    out.reason = format!("{}; also held by policy {}: {}", a.reason, b.policy, b.reason);
    if out.reviewers.is_empty() {
        out.action = airlock_policy::Action::Deny;
        out.reason = format!(
            "{}; no reviewer group may approve for both policies, so it is refused",
            out.reason
        );
    }
    out
}

/// Refreshes a connection's upstream token before it expires; after a
/// failure, tries again with a growing pause (1 s to 30 s).
async fn keep_token_fresh(name: String, token: Arc<airlock_identity::UpstreamToken>) {
    let mut pause = std::time::Duration::from_secs(1);
    loop {
        let due = token.refresh_due();
        tokio::time::sleep_until(due.into()).await;
        match token.token().await {
            // A login is fetching the new token right now: look again soon
            // rather than spin on a refresh time already passed.
            Ok(_) if !token.failing() && token.refresh_due() <= std::time::Instant::now() => {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Ok(_) if !token.failing() => pause = std::time::Duration::from_secs(1),
            outcome => {
                if let Err(e) = outcome {
                    tracing::warn!(connection = %name, error = %e, "no upstream token");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(30));
            }
        }
    }
}

fn bound_names(set: &PolicySet, agent: &Agent, database: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for g in &agent.identity.groups {
        for key in [
            Some(g.id.as_str()),
            (!g.name.is_empty()).then_some(g.name.as_str()),
        ]
        .into_iter()
        .flatten()
        {
            for p in set.select(Some(database), Some(key)) {
                if !names.contains(&p.name) {
                    names.push(p.name.clone());
                }
            }
        }
    }
    names
}

fn decision_text(d: &Decision) -> (u32, String, bool) {
    match d {
        Decision::Rule { index, text } => (*index as u32, text.clone(), false),
        Decision::Default => (0, "no rule matched (policy default)".into(), true),
        Decision::Unparsed { error } => (0, format!("unparsed: {error}"), true),
        Decision::Oversized { bytes, limit } => (
            0,
            format!("statement of {bytes} bytes is over the {limit}-byte limit"),
            true,
        ),
        Decision::TransactionControl => (0, "transaction control".into(), false),
        Decision::Empty => (0, "empty statement".into(), false),
    }
}

impl Gate for PolicyGate {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Agent, Refusal>> {
        Box::pin(async move {
            match self.verifier.verify(token).await {
                Ok(identity) => Ok(Agent {
                    identity: identity.to_proto(),
                }),
                // Graph's own words (its URL, the tenant's error text) are
                // for the operator's log; the agent learns what to do.
                Err(e @ airlock_identity::VerifyError::GraphUnavailable(_)) => {
                    tracing::warn!(error = %e, "a login with group overage could not be resolved");
                    Err(Refusal::bad_token(
                        "access token refused: your token lists too many groups, and Airlock cannot ask \
                         Microsoft Graph about them right now; try again later, or ask an operator"
                            .to_owned(),
                    ))
                }
                // The error's text never holds the token.
                Err(e) => Err(Refusal::bad_token(format!("access token refused: {e}"))),
            }
        })
    }

    fn bind(&self, agent: &Agent, database: &str) -> Result<Binding, Refusal> {
        let upstream = self.connections.get(database).ok_or_else(|| {
            Refusal::unknown_connection(format!(
                "no connection named \"{database}\" on this proxy (dbname selects the connection)"
            ))
        })?;
        let set = self.policies();
        let names = bound_names(&set, agent, database);
        if names.is_empty() {
            return Err(Refusal::unauthenticated(format!(
                "no policy binds {} to connection \"{database}\"; ask an operator to add one for one of its groups",
                agent.describe()
            )));
        }
        let bound: Vec<_> = set
            .policies
            .iter()
            .filter(|p| p.connection == database && names.contains(&p.name))
            .collect();
        Ok(Binding {
            connection: database.to_owned(),
            upstream: upstream.clone(),
            policies: bound
                .iter()
                .map(|p| proto::PolicyRef {
                    name: p.name.clone(),
                    digest: p.digest().to_owned(),
                })
                .collect(),
            record: bound.iter().any(|p| p.record),
            session: Arc::new(Mutex::new(SessionPolicy {
                catalog: self.catalogs.get(database).cloned().map(SessionCatalog::new),
                shadow_policies: bound_names(&self.shadow(), agent, database),
                ..SessionPolicy::default()
            })),
        })
    }

    fn policy_generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn judge(&self, binding: &Binding, sql: &str) -> Judgement {
        // Read before the policies: a reload between the two makes this
        // judgement look stale (judged again), never fresh.
        let generation = self.policy_generation();
        let set = self.policies();
        let schema = set.default_schema(&binding.connection);
        let mut state = binding.session.lock().unwrap_or_else(|p| p.into_inner());
        // Judged against the database's catalog; without facts (unread,
        // unreadable, or changed and not read again), only calls
        // qualified with pg_catalog are taken for built-ins.
        let facts = match &state.catalog {
            Some(c) => c.facts(),
            None => Facts::Unreadable("no catalog facts for this connection".into()),
        };
        // A session keeps the search path it started with (`RESET` and
        // `DISCARD ALL` go back to it), though `ALTER ROLE ... SET
        // search_path` changes a fresh session's, which the facts follow:
        // once the two differ (or the start was never known), its names
        // may be any schema's.
        if let Some(path) = facts.search_path()
            && state.start_path.as_deref() != Some(path)
        {
            state.names.search_path_changed = true;
        }
        let catalog = facts.catalog();
        let names: Vec<&str> = binding.policies.iter().map(|r| r.name.as_str()).collect();
        let strictest = self.strictest(
            &set,
            &names,
            &binding.connection,
            sql,
            schema,
            catalog,
            state.names,
            &state.prepared,
        );
        // Shadow policies see the same statement, facts and session.
        let shadow_verdict = if state.shadow_policies.is_empty() {
            None
        } else {
            let shadow = self.shadow();
            let names: Vec<&str> = state.shadow_policies.iter().map(String::as_str).collect();
            self.strictest(
                &shadow,
                &names,
                &binding.connection,
                sql,
                schema,
                catalog,
                state.names,
                &state.prepared,
            )
            .map(|v| Box::new(proto_verdict(&v)))
        };
        let Some(v) = strictest else {
            // A binding with no policy left: never allow.
            return Judgement::only(
                Action::Deny {
                    message: "no policy applies to this session any more; reconnect".into(),
                },
                proto::Verdict {
                    action: proto::verdict::Action::Deny as i32,
                    ..Default::default()
                },
            );
        };
        // PREPARE and DEALLOCATE change what later EXECUTEs mean, but only
        // once they have run (allowed, or approved): applied on success,
        // never at judgement; after a failure the names are forgotten.
        // Text a record-only policy lets through unparsed, and a DO block
        // (its code is opaque: dynamic SQL may PREPARE or DEALLOCATE), may
        // prepare or deallocate anything: once it has run (or failed part
        // way), no name it could have touched is trusted (SQL PREPARE names
        // here, protocol names by the data plane's name model:
        // `Judgement::unseen`).
        let opaque = !v.parsed()
            || v.effects
                .iter()
                .any(|e| e.effect.kind == airlock_policy::Kind::Do);
        // Whether it runs allowed or approved. A statement that may make a
        // temporary relation, or change the search path, is treated the
        // same way: PostgreSQL plans statements prepared before it again,
        // and their unqualified names may then be other relations than
        // those they were judged as.
        let unseen = (opaque || v.creates_temp || v.changes_search_path)
            && !matches!(v.action, airlock_policy::Action::Deny);
        let on_finish: Option<crate::gate::OnFinish> = if unseen {
            let session = binding.session.clone();
            Some(Arc::new(move |_| {
                let mut state = session.lock().unwrap_or_else(|p| p.into_inner());
                state
                    .prepared
                    .apply(&[airlock_policy::PreparedChange::DeallocateAll]);
            }))
        } else if v.prepared_changes.is_empty() {
            None
        } else {
            let session = binding.session.clone();
            let changes = v.prepared_changes.clone();
            Some(Arc::new(move |succeeded| {
                let mut state = session.lock().unwrap_or_else(|p| p.into_inner());
                if succeeded {
                    state.prepared.apply(&changes);
                } else {
                    state.prepared.forget(&changes);
                }
            }))
        };
        // A temporary relation shadows names, and a search path of the
        // session's own moves them, for the rest of the session, from the
        // moment the statement may run.
        let names_before = state.names;
        if !matches!(v.action, airlock_policy::Action::Deny) {
            state.names = v.names_after(state.names);
        }
        // A statement that may change the catalog: this session judges
        // without facts while it is in flight and, once it has run, until
        // its transaction ends; the connection's facts are read again.
        let kinds: Vec<airlock_policy::Kind> = v.effects.iter().map(|e| e.effect.kind).collect();
        let on_finish = match &state.catalog {
            Some(c)
                if crate::catalog::may_change_catalog(&kinds, v.parsed())
                    && !matches!(v.action, airlock_policy::Action::Deny) =>
            {
                let change = c.change();
                let then = on_finish;
                let composed: crate::gate::OnFinish = Arc::new(move |succeeded| {
                    if let Some(f) = &then {
                        f(succeeded);
                    }
                    change.ran();
                });
                Some(composed)
            }
            _ => on_finish,
        };
        // The calls the held statement's own text makes (judged without the
        // catalog, so nothing a table reaches is among them): none may be
        // tried before approval, whoever else also calls them.
        let text_calls: Vec<String> = if v.action == airlock_policy::Action::RequireApproval {
            let text_only = airlock_policy::ClassifyContext {
                default_schema: schema,
                prepared: &state.prepared,
                // Judged already within the policy's limit: read it whole.
                max_statement_bytes: usize::MAX,
                catalog: Catalog::Assumed,
                session: names_before,
            };
            let c = airlock_policy::classify(sql, &text_only);
            let mut calls: Vec<String> = c
                .effects
                .into_iter()
                .filter(|e| {
                    matches!(
                        e.kind,
                        airlock_policy::Kind::Function | airlock_policy::Kind::Call
                    )
                })
                .flat_map(|e| e.functions)
                .collect();
            if c.unparsed.is_some() || c.oversized.is_some() {
                // Not read whole: whatever it calls is unknown.
                calls.push("code the parser could not read".into());
            }
            calls
        } else {
            Vec::new()
        };
        drop(state);
        // Whether the held statement may be tried before approval, on a
        // connection that sees the catalog as the facts do: not once this
        // session's names may mean other relations than a fresh
        // connection's (its own temporary tables, its own search path).
        let trial = |trial| {
            if names_before.any() {
                return Err(
                    "this session made temporary tables or changed its search path, so another connection could \
                     read its names as other relations"
                        .to_owned(),
                );
            }
            let effects: Vec<&airlock_policy::Effect> = v.effects.iter().map(|e| &e.effect).collect();
            airlock_policy::trial::may_try(&effects, &text_calls, v.parsed(), catalog, trial)
        };
        let mut verdict = proto_verdict(&v);
        verdict.shadow_verdict = shadow_verdict;
        // EXECUTE of a name the policy did not see prepared (by SQL PREPARE
        // on this session) could run anything: it is never allowed.
        let unknown_execute = v
            .effects
            .iter()
            .any(|e| e.effect.kind == airlock_policy::Kind::Execute);
        // A statement that would make PostgreSQL read later statements
        // differently from the proxy is never run, whatever the policy says.
        let parser_setting = v
            .effects
            .iter()
            .any(|e| e.effect.kind == airlock_policy::Kind::ParserSetting);
        let action = match v.action {
            _ if parser_setting => Action::Deny {
                message: "changing client_encoding, standard_conforming_strings, backslash_quote or \
                          escape_string_warning is refused by Airlock: it would make PostgreSQL read \
                          statements differently from the gate (only UTF8 and standard strings are supported)"
                    .into(),
            },
            _ if unknown_execute => Action::Deny {
                message: "EXECUTE of a statement this session did not PREPARE through Airlock is refused"
                    .into(),
            },
            airlock_policy::Action::Allow => Action::Allow,
            airlock_policy::Action::Deny => Action::Deny {
                message: format!("refused by Airlock: {}", why(&verdict)),
            },
            airlock_policy::Action::RequireApproval => Action::Hold(Box::new(HoldSpec {
                approvals: v.approvals.max(1),
                reviewers: v.reviewers.iter().map(|g| self.group(g)).collect(),
                timeout: v.timeout,
                require_acrs: v.require_acrs.clone(),
                plan: trial(airlock_policy::trial::Trial::Plan),
                dry_run: v.dry_run.then(|| trial(airlock_policy::trial::Trial::DryRun)),
                fingerprint: fingerprint(sql, &v, names_before.any()),
                break_glass: v.break_glass.as_ref().map(|b| proto::BreakGlass {
                    groups: b.groups.iter().map(|g| self.group(g)).collect(),
                    max_ttl: prost_types::Duration::try_from(b.max_ttl).ok(),
                    clients: b.clients.clone(),
                }),
                max_grant_ttl: v.max_grant_ttl,
            })),
        };
        let mut sql_names = Vec::new();
        let mut drops_all = false;
        for change in &v.prepared_changes {
            match change {
                airlock_policy::PreparedChange::Prepare { name, .. }
                | airlock_policy::PreparedChange::Deallocate { name } => sql_names.push(name.clone()),
                airlock_policy::PreparedChange::DeallocateAll => drops_all = true,
            }
        }
        // EXECUTE (also under EXPLAIN, which plans the statement and so runs
        // its calls) looks its name up in the same namespace as the
        // protocol's Parse: a name a Parse made must be refused here too.
        sql_names.extend(v.executed_names.iter().cloned());
        Judgement {
            action,
            verdict,
            on_finish,
            executes_prepared: v.executes_prepared,
            sql_names,
            drops_all,
            unseen,
            kinds,
            policy_generation: generation,
        }
    }
}

/// The held statement's shape, which a grant may cover; none for a session
/// whose names may resolve unlike a fresh one's.
fn fingerprint(sql: &str, v: &airlock_policy::Verdict, own_names: bool) -> proto::Fingerprint {
    let effects: Vec<&airlock_policy::Effect> = v.effects.iter().map(|e| &e.effect).collect();
    let made = if own_names {
        Err("this session made temporary tables or changed its search path".to_owned())
    } else if !v.parsed() {
        Err("the statement was not parsed".to_owned())
    } else {
        airlock_policy::fingerprint::fingerprint(sql, &effects)
    };
    match made {
        Ok(f) => proto::Fingerprint {
            hash: f.hash,
            normalized: f.normalized,
            unavailable: String::new(),
        },
        Err(why) => proto::Fingerprint {
            unavailable: why,
            ..Default::default()
        },
    }
}
