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

const SCOPED_DENY: &str = "policy: g\nconnection: c\nreviewers: [r]\nrules:\n  - match: SELECT|INSERT|ALTER|DROP|GRANT|REVOKE|COMMENT|VACUUM|ANALYZE|REFRESH|CREATE|CREATE TRIGGER|TRUNCATE|SET|SHOW\n    tables: [public.orders, hr.salaries]\n    action: deny\n  - match: SELECT|INSERT|ALTER|DROP|GRANT|REVOKE|COMMENT|VACUUM|ANALYZE|REFRESH|CREATE|CREATE TRIGGER|TRUNCATE|SET|SHOW\n    action: allow\n";

#[test]
fn a_table_scoped_deny_catches_ddl_on_its_tables_and_unresolved_targets() {
    let p = policy(SCOPED_DENY);
    for sql in [
        "ALTER TABLE orders DROP COLUMN note",
        "ALTER TABLE orders RENAME TO old_orders",
        "ALTER TABLE orders DISABLE TRIGGER ALL",
        "ALTER TABLE orders OWNER TO mallory",
        "GRANT SELECT ON orders TO mallory",
        "REVOKE ALL ON hr.salaries FROM PUBLIC",
        "COMMENT ON TABLE orders IS 'x'",
        "VACUUM orders",
        "ANALYZE hr.salaries",
        "REFRESH MATERIALIZED VIEW orders",
        "CREATE TRIGGER t AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION f()",
        "DROP TRIGGER t ON orders",
        "DROP POLICY p ON orders",
        "DROP RULE r ON orders",
        "CREATE INDEX ON orders (id)",
        "TRUNCATE orders",
        // Every table of the schema goes, hr.salaries with them.
        "DROP SCHEMA hr CASCADE",
        "DROP SCHEMA hr",
        "GRANT SELECT ON ALL TABLES IN SCHEMA hr TO mallory",
        // CASCADE reaches tables the statement does not name.
        "TRUNCATE scratch CASCADE",
        "DROP TABLE scratch CASCADE",
        // No target named: it could be any table.
        "VACUUM",
        "ANALYZE",
        "GRANT admin TO mallory",
        "DROP TYPE mood",
    ] {
        let v = eval(&p, sql);
        assert_eq!(v.action, Action::Deny, "{sql}: {:?}", v.effects);
        assert!(matches!(v.decision, Decision::Rule { index: 1, .. }), "{sql}");
    }
    // Statements that act on no relation, or on others, are not caught.
    for sql in [
        "SELECT 1",
        "VALUES (1)",
        "BEGIN; COMMIT",
        "SET search_path = public",
        "SHOW search_path",
        "DROP TABLE scratch",
        "VACUUM scratch",
        "DROP SCHEMA scratch",
        "ALTER TABLE scratch RENAME TO scratch2",
    ] {
        assert_eq!(eval(&p, sql).action, Action::Allow, "{sql}");
    }
}

#[test]
fn a_table_scoped_allow_covers_a_schema_only_as_a_whole() {
    let p = policy(
        "policy: g\nconnection: c\nreviewers: [r]\nrules:\n  - match: DROP\n    tables: [scratch.*]\n    action: allow\n  - match: DROP\n    tables: [tmp.t_*]\n    action: allow\n",
    );
    assert_eq!(eval(&p, "DROP TABLE scratch.t").action, Action::Allow);
    assert_eq!(eval(&p, "DROP SCHEMA scratch").action, Action::Allow);
    assert_eq!(eval(&p, "DROP TABLE tmp.t_1").action, Action::Allow);
    for sql in [
        // Part of a schema does not cover all of it.
        "DROP SCHEMA tmp",
        "DROP INDEX tmp.t_1_idx",
        // Nor does any pattern cover relations anywhere, or an unknown target.
        "DROP TABLE scratch.t CASCADE",
        "DROP TYPE scratch.mood",
    ] {
        assert_eq!(eval(&p, sql).action, Action::RequireApproval, "{sql}");
    }
}

#[test]
fn an_allow_on_public_does_not_cover_the_catalog() {
    let p = policy(
        "policy: g\nconnection: c\nreviewers: [r]\nrules:\n  - match: SELECT\n    tables: [public.*]\n    action: allow\n",
    );
    assert_eq!(eval(&p, "SELECT * FROM orders").action, Action::Allow);
    for sql in [
        "SELECT * FROM pg_stats",
        "SELECT query FROM pg_stat_activity",
        "SELECT * FROM orders JOIN pg_authid ON true",
    ] {
        let v = eval(&p, sql);
        assert_eq!(v.action, Action::RequireApproval, "{sql}: {:?}", v.tables());
    }
}

#[test]
fn a_cte_does_not_hide_a_read_postgresql_makes_of_the_table() {
    let p = policy(
        "policy: g\nconnection: c\nreviewers: [r]\nrules:\n  - match: SELECT|LOCK|INSERT\n    tables: [public.orders]\n    action: deny\n  - match: SELECT|INSERT\n    action: allow\n",
    );
    for sql in [
        "WITH x AS (SELECT * FROM orders), orders AS (SELECT 1) SELECT * FROM x",
        "WITH orders AS (SELECT 1) SELECT 1; SELECT * FROM orders",
        "WITH orders AS (SELECT 1) SELECT 1; SELECT * FROM orders FOR UPDATE",
        "WITH x AS (SELECT * FROM orders), orders AS (SELECT 1) INSERT INTO archive SELECT * FROM x",
    ] {
        assert_eq!(eval(&p, sql).action, Action::Deny, "{sql}");
    }
    assert_eq!(
        eval(&p, "WITH orders AS (SELECT 1) SELECT * FROM orders").action,
        Action::Allow
    );
}

#[test]
fn explain_execute_carries_what_the_data_plane_needs() {
    let p = policy(SEED);
    let v = eval(&p, "EXPLAIN EXECUTE held");
    assert_eq!(v.kinds(), vec![Kind::Execute]);
    assert!(v.uses_session && v.executes_prepared);
    assert_eq!(v.executed_names, vec!["held"]);
}

#[test]
fn read_write_transactions_are_judged_as_settings() {
    let p = policy(
        "policy: g\nconnection: c\nreviewers: [r]\ndefault: deny\nrules:\n  - match: SELECT\n    action: allow\n",
    );
    assert_eq!(eval(&p, "BEGIN; SELECT 1; COMMIT").action, Action::Allow);
    for sql in [
        "BEGIN READ WRITE",
        "START TRANSACTION READ WRITE",
        "SET TRANSACTION READ WRITE",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    ] {
        let v = eval(&p, sql);
        assert_eq!((v.action, v.kinds()), (Action::Deny, vec![Kind::Set]), "{sql}");
    }
}

#[test]
fn after_a_change_of_search_path_table_scoped_rules_see_any_schema() {
    let p = policy(
        "policy: agents\nconnection: prod\nreviewers: [r]\nrules:\n  - match: DELETE\n    tables: [hr.*]\n    action: deny\n  - match: DELETE\n    tables: [public.*]\n    action: allow\n  - match: SELECT\n    tables: ['*.orders']\n    action: allow\n",
    );
    let moved = SessionNames {
        search_path_changed: true,
        ..SessionNames::default()
    };
    let judge = |sql: &str, session| {
        p.evaluate_on(
            sql,
            "public",
            Catalog::Assumed,
            session,
            &PreparedStatements::new(),
        )
        .action
    };
    // A fresh session's `orders` is public.orders.
    assert_eq!(
        judge("DELETE FROM scratch", SessionNames::default()),
        Action::Allow
    );
    // Moved: `scratch` may be hr.scratch, which the deny names.
    assert_eq!(judge("DELETE FROM scratch", moved), Action::Deny);
    // Moved: the allow on public.* does not cover another schema's.
    let p2 = policy(
        "policy: agents\nconnection: prod\nreviewers: [r]\nrules:\n  - match: DELETE\n    tables: [public.*]\n    action: allow\n",
    );
    let v = p2.evaluate_on(
        "DELETE FROM scratch",
        "public",
        Catalog::Assumed,
        moved,
        &PreparedStatements::new(),
    );
    assert_eq!(v.action, Action::RequireApproval);
    assert!(v.uses_session);
    // A pattern for any schema's `orders` covers it wherever it is.
    assert_eq!(judge("SELECT * FROM orders", moved), Action::Allow);
    assert_eq!(judge("SELECT * FROM public.orders", moved), Action::Allow);
}

#[test]
fn a_deny_of_a_qualified_function_catches_it_in_any_schema() {
    let p = policy(
        "policy: agents\nconnection: prod\nreviewers: [r]\nrules:\n  - functions: [vault.purge]\n    action: deny\n  - match: FUNCTION|SELECT|SET\n    action: allow\n",
    );
    let moved = SessionNames {
        search_path_changed: true,
        ..SessionNames::default()
    };
    // vault.purge exists; after a change of path, `purge()` may be it.
    let facts = crate::CatalogFacts::new(
        vec!["public".into()],
        ["purge".to_owned()],
        std::collections::HashMap::new(),
    );
    let known = Catalog::Known(&facts);
    let v = p.evaluate_on(
        "SET search_path = vault; SELECT purge()",
        "public",
        known,
        SessionNames::default(),
        &PreparedStatements::new(),
    );
    assert_eq!(v.action, Action::Deny, "{v:?}");
    let v = p.evaluate_on(
        "SELECT purge()",
        "public",
        known,
        moved,
        &PreparedStatements::new(),
    );
    assert_eq!(v.action, Action::Deny, "{v:?}");
}

#[test]
fn a_held_statement_needs_the_step_up_of_every_held_effect() {
    let p = policy(
        "policy: g\nconnection: c\nreviewers: [r]\nrules:\n  - match: DELETE\n    action: require-approval\n    require_acrs: [c1]\n  - match: UPDATE\n    action: require-approval\n    require_acrs: [c2]\n  - match: INSERT\n    action: require-approval\n",
    );
    assert_eq!(eval(&p, "DELETE FROM t").require_acrs, ["c1"]);
    assert!(eval(&p, "INSERT INTO t VALUES (1)").require_acrs.is_empty());
    assert_eq!(
        eval(
            &p,
            "WITH d AS (DELETE FROM t RETURNING id) UPDATE u SET x = 1 FROM d"
        )
        .require_acrs,
        ["c1", "c2"]
    );
}
