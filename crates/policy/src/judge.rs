//! Rule evaluation: a [`Classification`] and a [`Policy`] -> a [`Verdict`]
//! that explains itself (action, effects, the rule that decided, reason,
//! who may approve). Owns the matching semantics; knows nothing of parsing.
//!
//! Each effect is judged on its own: the first rule whose kinds, tables and
//! functions match it decides, else the policy's `default`. The strictest
//! effect decides the statement (deny > require-approval > allow).
//! Transaction control is always allowed; unparsed SQL gets the `unparsed`
//! action (allow only in a record-only policy); oversized SQL is denied.

use std::time::Duration;

use serde::Serialize;

use crate::classify::{Classification, ClassifyContext, Effect, PreparedChange, SessionNames, classify};
use crate::config::{Action, Policy, Rule};
use crate::facts::Catalog;
use crate::glob;
use crate::kind::Kind;

/// What decided an effect or a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum Decision {
    /// A rule (1-based index and its canonical text).
    Rule { index: usize, text: String },
    /// No rule matched: the policy's `default`.
    Default,
    /// The parser could not read the text: the policy's `unparsed`.
    Unparsed { error: String },
    /// Over the size limit; not parsed.
    Oversized { bytes: usize, limit: usize },
    /// BEGIN, COMMIT, ... : always allowed.
    TransactionControl,
    /// Nothing to run (empty text or only comments).
    Empty,
}

/// The judgement of one effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EffectVerdict {
    #[serde(flatten)]
    pub effect: Effect,
    pub action: Action,
    pub decision: Decision,
}

/// The judgement of a whole query string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub action: Action,
    /// The policy (group) that judged, and its digest.
    pub policy: String,
    pub policy_digest: String,
    /// What decided the strictest effect.
    pub decision: Decision,
    /// The deciding rule's `reason`, or an explanation of the decision.
    pub reason: String,
    /// Every effect with its own judgement.
    pub effects: Vec<EffectVerdict>,
    /// For require-approval: distinct approvals needed, groups allowed to
    /// approve (those allowed for every held effect), and how long to wait.
    pub approvals: u32,
    pub reviewers: Vec<String>,
    #[serde(rename = "timeout_secs", serialize_with = "as_secs")]
    pub timeout: Duration,
    /// For require-approval: the authentication contexts an approving
    /// sign-in must have met (those of every held effect).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub require_acrs: Vec<String>,
    /// For require-approval: whether a rule that held it asks for a dry run.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// For require-approval: the policy's break-glass terms, if it has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<crate::config::BreakGlass>,
    /// For require-approval: the longest grant its approval may carry (the
    /// policy's `max_grant_ttl`), if the policy says.
    #[serde(skip)]
    pub max_grant_ttl: Option<Duration>,
    /// Whether the policy asks for results to be recorded.
    pub record: bool,
    /// Whether the verdict depends on session state (`EXECUTE`), so must not be cached.
    #[serde(skip)]
    pub uses_session: bool,
    /// The text runs a statement made with SQL PREPARE (`EXECUTE name`).
    #[serde(skip)]
    pub executes_prepared: bool,
    /// The names `EXECUTE` runs (also under `EXPLAIN`), for the data plane
    /// to refuse those of protocol-level statements.
    #[serde(skip)]
    pub executed_names: Vec<String>,
    /// The text makes a temporary relation ([`Classification::creates_temp`]).
    #[serde(skip)]
    pub creates_temp: bool,
    /// The text may change the session's search path
    /// ([`Classification::changes_search_path`]).
    #[serde(skip)]
    pub changes_search_path: bool,
    /// Changes to the session's prepared statements once the statement runs.
    #[serde(skip)]
    pub prepared_changes: Vec<PreparedChange>,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl Verdict {
    /// Distinct kinds of all effects, in order of appearance.
    pub fn kinds(&self) -> Vec<Kind> {
        let mut out: Vec<Kind> = Vec::new();
        for e in &self.effects {
            if !out.contains(&e.effect.kind) {
                out.push(e.effect.kind);
            }
        }
        out
    }

    /// Distinct tables of all effects, in order of appearance.
    pub fn tables(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in self.effects.iter().flat_map(|e| &e.effect.tables) {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }

    /// Whether the parser read the statement.
    pub fn parsed(&self) -> bool {
        !matches!(
            self.decision,
            Decision::Unparsed { .. } | Decision::Oversized { .. }
        ) && !self
            .effects
            .iter()
            .any(|e| matches!(e.decision, Decision::Unparsed { .. }))
    }
}

impl Verdict {
    /// What `session` becomes once this statement has run, or may have.
    pub fn names_after(&self, session: SessionNames) -> SessionNames {
        SessionNames {
            temp_relations: session.temp_relations || self.creates_temp,
            search_path_changed: session.search_path_changed || self.changes_search_path,
        }
    }
}

impl Policy {
    /// Classifies and judges `sql` under this policy's size limit.
    pub fn evaluate(&self, sql: &str, default_schema: &str, prepared: &crate::PreparedStatements) -> Verdict {
        self.evaluate_on(
            sql,
            default_schema,
            Catalog::Assumed,
            SessionNames::default(),
            prepared,
        )
    }

    /// Classifies and judges `sql` against what `catalog` says of the
    /// database it will run on, for a session that did `session`.
    pub fn evaluate_on(
        &self,
        sql: &str,
        default_schema: &str,
        catalog: Catalog<'_>,
        session: SessionNames,
        prepared: &crate::PreparedStatements,
    ) -> Verdict {
        let ctx = ClassifyContext {
            default_schema,
            prepared,
            max_statement_bytes: self.max_statement_bytes,
            catalog,
            session,
        };
        self.judge(&classify(sql, &ctx))
    }

    /// Judges a classification.
    pub fn judge(&self, c: &Classification) -> Verdict {
        let mut verdict = Verdict {
            action: Action::Allow,
            policy: self.name.clone(),
            policy_digest: self.digest().to_owned(),
            decision: Decision::Empty,
            reason: String::new(),
            effects: Vec::new(),
            approvals: 0,
            reviewers: Vec::new(),
            timeout: Duration::ZERO,
            require_acrs: Vec::new(),
            dry_run: false,
            break_glass: None,
            max_grant_ttl: None,
            record: self.record,
            uses_session: c.uses_session,
            executes_prepared: c.executes_prepared,
            executed_names: c.executed_names.clone(),
            prepared_changes: c.prepared_changes.clone(),
            creates_temp: c.creates_temp,
            changes_search_path: c.changes_search_path,
        };
        if let Some(bytes) = c.oversized {
            verdict.action = Action::Deny;
            verdict.decision = Decision::Oversized {
                bytes,
                limit: self.max_statement_bytes,
            };
            // The decision's text already gives both sizes.
            verdict.reason = "a statement over the policy's max_statement_bytes is not parsed, \
                              so it is refused"
                .into();
            return verdict;
        }

        // Candidates in order; the first of the strictest decides.
        struct Held<'r> {
            action: Action,
            decision: Decision,
            rule: Option<&'r Rule>,
        }
        let mut decided: Vec<Held<'_>> = Vec::new();
        if let Some(error) = &c.unparsed {
            decided.push(Held {
                action: self.unparsed,
                decision: Decision::Unparsed { error: error.clone() },
                rule: None,
            });
        }
        for effect in &c.effects {
            let (action, decision, rule) = if effect.kind.is_transaction_control() {
                (Action::Allow, Decision::TransactionControl, None)
            } else {
                match self.rules.iter().find(|r| rule_matches(r, effect)) {
                    Some(r) => (
                        r.action,
                        Decision::Rule {
                            index: r.index,
                            text: r.text.clone(),
                        },
                        Some(r),
                    ),
                    None => (self.default, Decision::Default, None),
                }
            };
            verdict.effects.push(EffectVerdict {
                effect: effect.clone(),
                action,
                decision: decision.clone(),
            });
            decided.push(Held {
                action,
                decision,
                rule,
            });
        }
        let Some(strictest) = decided.iter().map(|h| h.action).max() else {
            verdict.reason = "nothing to run".into();
            return verdict;
        };
        let Some(first) = decided.iter().find(|h| h.action == strictest) else {
            return verdict;
        };
        verdict.action = strictest;
        verdict.decision = first.decision.clone();
        verdict.reason = match (&first.decision, first.rule.and_then(|r| r.reason.clone())) {
            (_, Some(reason)) => reason,
            (Decision::Rule { index, text }, None) => format!("rule {index} ({text})"),
            (Decision::Default, None) => format!(
                "no rule matches {}; the policy default is {}",
                describe_unmatched(&verdict.effects),
                self.default
            ),
            (Decision::Unparsed { error }, None) if self.unparsed == Action::Allow => {
                format!("the statement could not be parsed ({error}); this record-only policy allows it")
            }
            (Decision::Unparsed { error }, None) => {
                format!("the statement could not be parsed ({error}); unparsed SQL is never allowed")
            }
            (Decision::TransactionControl, None) => "transaction control is always allowed".into(),
            (Decision::Oversized { .. } | Decision::Empty, None) => String::new(),
        };
        if strictest == Action::RequireApproval {
            self.fill_approval(
                &mut verdict,
                &decided
                    .iter()
                    .filter(|h| h.action == strictest)
                    .map(|h| h.rule)
                    .collect::<Vec<_>>(),
            );
        }
        verdict
    }

    /// Reviewers allowed to approve every held effect (their intersection),
    /// the most approvals any asks for, the shortest timeout, and every
    /// authentication context any asks for. If no group
    /// may approve them all, nobody can: the statement is denied.
    fn fill_approval(&self, verdict: &mut Verdict, holds: &[Option<&Rule>]) {
        let mut reviewers: Option<Vec<String>> = None;
        let mut approvals = 0;
        let mut timeout = Duration::MAX;
        let mut acrs: Vec<String> = Vec::new();
        let mut dry_run = false;
        for rule in holds {
            dry_run |= rule.is_some_and(|r| r.dry_run);
            let (r, a, t, c) = match rule {
                Some(rule) => (&rule.reviewers, rule.approvals, rule.timeout, &rule.require_acrs),
                None => (&self.reviewers, self.approvals, self.timeout, &self.require_acrs),
            };
            for acr in c {
                if !acrs.contains(acr) {
                    acrs.push(acr.clone());
                }
            }
            reviewers = Some(match reviewers {
                None => r.clone(),
                Some(prev) => prev.into_iter().filter(|g| r.contains(g)).collect(),
            });
            approvals = approvals.max(a);
            timeout = timeout.min(t);
        }
        let reviewers = reviewers.unwrap_or_default();
        if reviewers.is_empty() {
            verdict.action = Action::Deny;
            verdict.reason = format!(
                "{}; no reviewer group may approve all of it, so it is refused",
                verdict.reason
            );
            return;
        }
        verdict.reviewers = reviewers;
        verdict.approvals = approvals;
        verdict.timeout = timeout;
        acrs.sort();
        verdict.require_acrs = acrs;
        verdict.dry_run = dry_run;
        verdict.break_glass = self.break_glass.clone();
        verdict.max_grant_ttl = self.max_grant_ttl;
    }
}

fn describe_unmatched(effects: &[EffectVerdict]) -> String {
    let kinds: Vec<String> = effects
        .iter()
        .filter(|e| e.decision == Decision::Default)
        .map(|e| {
            let what = e
                .effect
                .tables
                .iter()
                .chain(&e.effect.functions)
                .cloned()
                .collect::<Vec<_>>();
            if what.is_empty() {
                e.effect.kind.to_string()
            } else {
                format!("{} {}", e.effect.kind, what.join(", "))
            }
        })
        .collect();
    kinds.join("; ")
}

/// Whether `rule` covers `effect`. Tables and functions are matched with
/// the rule's action in mind: an `allow` rule must cover every table (and
/// function) of the effect, a `deny` or `require-approval` rule any one of
/// them. So a narrow allow never lets a statement touching other tables
/// through, and a narrow deny always catches it.
///
/// Where the classifier could not name the relations an effect acts on, it
/// says `schema.*` (some or all relations of that schema), `*.*` (relations
/// anywhere) or, for a kind that acts on relations, nothing at all (an
/// unresolved target, read as `*.*`). A deny or hold catches such an effect
/// if it could touch a table it names; an allow covers it only if it covers
/// every table it could touch, and a table-scoped allow never covers `*.*`.
pub(crate) fn rule_matches(rule: &Rule, effect: &Effect) -> bool {
    if !rule.kinds.contains(&effect.kind) {
        return false;
    }
    let allow = rule.action == Action::Allow;
    let tables_match = || {
        if rule.tables.is_empty() {
            return true;
        }
        if effect.tables.is_empty() {
            // A read of no table at all (`SELECT 1`, `VALUES`) reads nothing
            // a table pattern protects, and a SET or a SHOW acts on no
            // relation; any other effect without tables has an unresolved
            // target, which could be any table.
            return if acts_on_relations(effect.kind) {
                !allow
            } else {
                allow && effect.kind == Kind::Select
            };
        }
        if allow {
            effect
                .tables
                .iter()
                .all(|t| rule.tables.iter().any(|p| covers_every(p, t)))
        } else {
            effect
                .tables
                .iter()
                .any(|t| rule.tables.iter().any(|p| may_touch(p, t)))
        }
    };
    let functions_match = || {
        if rule.functions.is_empty() {
            return true;
        }
        let names = &effect.functions;
        // A deny may name a function bare and still catch `pg_catalog.f`; an
        // allow names exactly what it lets through.
        let hit = |name: &String| {
            rule.functions.iter().any(|p| {
                glob::matches(p, name)
                    || (!allow && glob::matches(p, name.rsplit('.').next().unwrap_or(name)))
                    // `*.f`: `f` of a schema not known, which may be the one named.
                    || (!allow
                        && name
                            .strip_prefix("*.")
                            .is_some_and(|bare| glob::matches(p.rsplit('.').next().unwrap_or(p), bare)))
            })
        };
        if allow {
            (names.is_empty() && effect.kind == Kind::Select) || (!names.is_empty() && names.iter().all(hit))
        } else {
            names.iter().any(hit)
        }
    };
    tables_match() && functions_match()
}

/// Whether an effect of `kind` acts on relations, so that one without
/// tables has a target the classifier could not resolve (`VACUUM` of every
/// table, a `GRANT` of a role, a function's body, an unknown statement).
/// Exhaustive on purpose: a new kind must be decided here.
fn acts_on_relations(kind: Kind) -> bool {
    match kind {
        Kind::Insert
        | Kind::Update
        | Kind::Delete
        | Kind::Merge
        | Kind::Truncate
        | Kind::Create
        | Kind::Alter
        | Kind::Drop
        | Kind::Grant
        | Kind::Revoke
        | Kind::Copy
        | Kind::Call
        | Kind::Do
        | Kind::Function
        | Kind::Program
        | Kind::ServerFile
        | Kind::Lock
        | Kind::Execute
        | Kind::CreateTrigger
        | Kind::CreateRule
        | Kind::Vacuum
        | Kind::Analyze
        | Kind::Comment
        | Kind::Refresh
        | Kind::Other => true,
        Kind::Select
        | Kind::SetRole
        | Kind::AlterSystem
        | Kind::Set
        | Kind::ParserSetting
        | Kind::Show
        | Kind::Deallocate
        | Kind::Transaction
        | Kind::CreateFunction
        | Kind::Listen
        | Kind::Notify
        | Kind::Discard
        | Kind::Cursor => false,
    }
}

/// For a deny or a hold: whether `pattern` names a table that `table` (a
/// name, `schema.*`, `*.name` or `*.*`) may be.
fn may_touch(pattern: &str, table: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match table.rsplit_once('.') {
        Some(("*", "*")) => true,
        Some((schema, "*")) => glob::matches(pattern.split('.').next().unwrap_or(pattern), schema),
        // A relation of that name in a schema not known.
        Some(("*", name)) => glob::matches(pattern.rsplit_once('.').map_or(pattern, |(_, t)| t), name),
        _ => glob::matches(pattern, table),
    }
}

/// For an allow: whether `pattern` covers every table that `table` (a name,
/// `schema.*`, `*.name` or `*.*`) may be.
fn covers_every(pattern: &str, table: &str) -> bool {
    match table.rsplit_once('.') {
        Some(("*", "*")) => false,
        Some(("*", name)) => {
            pattern == "*"
                || pattern
                    .rsplit_once('.')
                    .is_some_and(|(s, t)| s.chars().all(|c| c == '*') && glob::matches(t, name))
        }
        Some((schema, "*")) => {
            pattern == "*"
                || pattern
                    .split_once('.')
                    .is_some_and(|(s, t)| t.chars().all(|c| c == '*') && glob::matches(s, schema))
        }
        _ => glob::matches(pattern, table),
    }
}

#[cfg(test)]
mod tests;
