use super::*;
use crate::PreparedStatements;
use crate::config::ApprovalDefaults;

fn policy(yaml: &str) -> Policy {
    Policy::from_yaml(yaml, "test.yaml", &ApprovalDefaults::default()).unwrap()
}

const SEED: &str = "policy: agents\nconnection: prod\nreviewers: [db-reviewers]\nrules:\n  - match: SELECT\n    action: allow\n  - match: DELETE|DROP|UPDATE\n    action: require-approval\n    reason: writes need a second pair of eyes\n";

fn eval(p: &Policy, sql: &str) -> Verdict {
    p.evaluate(sql, "public", &PreparedStatements::new())
}

#[test]
fn a_select_is_allowed_by_rule_one() {
    let v = eval(&policy(SEED), "SELECT * FROM orders");
    assert_eq!(v.action, Action::Allow);
    assert_eq!(
        v.decision,
        Decision::Rule {
            index: 1,
            text: "match: SELECT, action: allow".into()
        }
    );
    assert_eq!(v.tables(), vec!["public.orders"]);
}

#[test]
fn the_delete_inside_a_cte_decides_and_explains() {
    let v = eval(
        &policy(SEED),
        "WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x",
    );
    assert_eq!(v.action, Action::RequireApproval);
    assert!(matches!(v.decision, Decision::Rule { index: 2, .. }));
    assert_eq!(v.reason, "writes need a second pair of eyes");
    assert_eq!(v.reviewers, vec!["db-reviewers"]);
    assert_eq!(v.approvals, 1);
    assert_eq!(v.timeout, Duration::from_secs(900));
    assert_eq!(v.kinds(), vec![Kind::Select, Kind::Delete]);
}

#[test]
fn unmatched_goes_to_default_and_unparsed_to_unparsed() {
    let p = policy(SEED);
    let v = eval(&p, "INSERT INTO t VALUES (1)");
    assert_eq!(
        (v.action, &v.decision),
        (Action::RequireApproval, &Decision::Default)
    );
    assert!(
        v.reason.contains("no rule matches INSERT public.t"),
        "{}",
        v.reason
    );
    let v = eval(&p, "SELEC 1");
    assert_eq!(v.action, Action::RequireApproval);
    assert!(matches!(v.decision, Decision::Unparsed { .. }));
    assert!(!v.parsed());
}

#[test]
fn strictest_effect_wins_and_transaction_control_is_free() {
    let p = policy(
        "policy: g\nconnection: c\nreviewers: [r]\ndefault: deny\nrules:\n  - match: SELECT\n    action: allow\n",
    );
    assert_eq!(eval(&p, "BEGIN; SELECT 1; COMMIT").action, Action::Allow);
    let v = eval(&p, "BEGIN; SELECT 1; DELETE FROM t; COMMIT");
    assert_eq!(v.action, Action::Deny);
    assert_eq!(v.decision, Decision::Default);
}

#[test]
fn holds_that_no_group_may_approve_in_full_are_refused() {
    let p = policy(
        "policy: g\nconnection: c\nrules:\n  - match: DELETE\n    action: require-approval\n    reviewers: [a]\n  - match: UPDATE\n    action: require-approval\n    reviewers: [b]\n    approvals: 2\n",
    );
    let v = eval(&p, "DELETE FROM t; UPDATE t SET x = 1");
    assert_eq!(v.action, Action::Deny);
    assert!(
        v.reason.contains("no reviewer group may approve all of it"),
        "{}",
        v.reason
    );
}

#[test]
fn table_scoped_allow_must_cover_every_table() {
    let p = policy(
        "policy: g\nconnection: c\nreviewers: [r]\nrules:\n  - match: SELECT\n    tables: [public.*]\n    action: allow\n  - match: SELECT\n    tables: [secret.*]\n    action: deny\n",
    );
    assert_eq!(eval(&p, "SELECT * FROM a JOIN b ON true").action, Action::Allow);
    assert_eq!(
        eval(&p, "SELECT * FROM a JOIN secret.keys ON true").action,
        Action::Deny
    );
    assert_eq!(
        eval(&p, "SELECT * FROM a JOIN other.t ON true").action,
        Action::RequireApproval
    );
}

#[test]
fn functions_can_be_denied_bare_and_allowed_exactly() {
    let p = policy(
        "policy: g\nconnection: c\nreviewers: [r]\nrules:\n  - match: SELECT\n    action: allow\n  - functions: [pg_terminate_backend]\n    action: deny\n  - functions: [reports.monthly]\n    action: allow\n",
    );
    assert_eq!(
        eval(&p, "SELECT pg_catalog.pg_terminate_backend(1)").action,
        Action::Deny
    );
    assert_eq!(eval(&p, "SELECT reports.monthly()").action, Action::Allow);
    assert_eq!(eval(&p, "SELECT evil.monthly()").action, Action::RequireApproval);
}

#[test]
fn oversized_is_refused() {
    let p = policy(
        "policy: g\nconnection: c\nmax_statement_bytes: 10\nrules:\n  - match: SELECT\n    action: allow\n",
    );
    let v = eval(&p, "SELECT 1234567890");
    assert_eq!(v.action, Action::Deny);
    assert!(matches!(v.decision, Decision::Oversized { bytes: 17, limit: 10 }));
}

#[test]
fn cache_never_serves_a_session_dependent_verdict() {
    let p = policy(SEED);
    let cache = crate::VerdictCache::new(16);
    let mut one = PreparedStatements::new();
    let v = cache.evaluate(&p, "PREPARE x AS DELETE FROM orders", "public", &one);
    one.apply(&v.prepared_changes);
    assert_eq!(
        cache.evaluate(&p, "EXECUTE x", "public", &one).action,
        Action::RequireApproval
    );
    // Another session prepared `x` as a read: it must not see the first verdict, nor vice versa.
    let mut two = PreparedStatements::new();
    let v = cache.evaluate(&p, "PREPARE x AS SELECT 1", "public", &two);
    two.apply(&v.prepared_changes);
    assert_eq!(
        cache.evaluate(&p, "EXECUTE x", "public", &two).action,
        Action::Allow
    );
    assert_eq!(
        cache.evaluate(&p, "EXECUTE x", "public", &one).action,
        Action::RequireApproval
    );
    assert!(cache.is_empty());
    // Ordinary statements are cached, per schema.
    let a = cache.evaluate(&p, "SELECT * FROM t", "public", &one);
    let b = cache.evaluate(&p, "SELECT * FROM t", "public", &two);
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    let c = cache.evaluate(&p, "SELECT * FROM t", "sales", &two);
    assert_eq!(c.tables(), vec!["sales.t"]);
    assert_eq!(cache.len(), 2);
}

#[test]
fn cache_keys_on_the_policy_digest() {
    let lenient = policy(SEED);
    let strict = policy(
        "policy: agents\nconnection: prod\ndefault: deny\nrules:\n  - match: UPDATE\n    action: deny\n",
    );
    let cache = crate::VerdictCache::new(16);
    let session = PreparedStatements::new();
    let sql = "UPDATE t SET a = 1 WHERE id = 2";
    assert_eq!(
        cache.evaluate(&lenient, sql, "public", &session).action,
        Action::RequireApproval
    );
    assert_eq!(
        cache.evaluate(&strict, sql, "public", &session).action,
        Action::Deny
    );
    assert_eq!(
        cache.evaluate(&lenient, sql, "public", &session).action,
        Action::RequireApproval
    );
    assert_eq!(cache.len(), 2);
}
