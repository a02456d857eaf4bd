use super::*;

fn effects(sql: &str) -> Classification {
    let prepared = PreparedStatements::new();
    classify(
        sql,
        &ClassifyContext {
            default_schema: "public",
            prepared: &prepared,
            max_statement_bytes: 1 << 20,
        },
    )
}

fn kinds(sql: &str) -> Vec<(Kind, Vec<String>)> {
    let c = effects(sql);
    c.effects
        .into_iter()
        .map(|e| {
            (
                e.kind,
                if e.kind == Kind::Function {
                    e.functions
                } else {
                    e.tables
                },
            )
        })
        .collect()
}

fn k(kind: Kind, names: &[&str]) -> (Kind, Vec<String>) {
    (kind, names.iter().map(|s| s.to_string()).collect())
}

#[test]
fn plain_select_reads_its_tables() {
    assert_eq!(
        kinds("SELECT u.id, count(*) FROM users u JOIN shop.orders o ON o.uid = u.id GROUP BY 1"),
        vec![k(Kind::Select, &["public.users", "shop.orders"])]
    );
    assert_eq!(kinds("SELECT 1"), vec![k(Kind::Select, &[])]);
}

#[test]
fn cte_delete_is_a_delete() {
    assert_eq!(
        kinds("WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x"),
        vec![k(Kind::Select, &[]), k(Kind::Delete, &["public.orders"])]
    );
}

#[test]
fn update_and_delete_report_where() {
    let c = effects("UPDATE accounts SET balance = 0");
    assert_eq!(c.effects[0].kind, Kind::Update);
    assert_eq!(c.effects[0].has_where, Some(false));
    let c = effects("DELETE FROM accounts WHERE id = 1");
    assert_eq!(c.effects[0].has_where, Some(true));
    assert_eq!(c.effects[0].tables, vec!["public.accounts"]);
}

#[test]
fn insert_select_has_two_effects() {
    assert_eq!(
        kinds("INSERT INTO archive SELECT * FROM orders WHERE at < now()"),
        vec![
            k(Kind::Select, &["public.orders"]),
            k(Kind::Insert, &["public.archive"])
        ]
    );
}

#[test]
fn functions_anywhere_are_effects_unless_read_only() {
    assert_eq!(
        kinds("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"),
        vec![
            k(Kind::Select, &["public.pg_stat_activity"]),
            k(Kind::Function, &["pg_terminate_backend"])
        ]
    );
    assert_eq!(
        kinds("SELECT lower(name) FROM t"),
        vec![k(Kind::Select, &["public.t"])]
    );
    assert_eq!(
        kinds("SELECT * FROM dblink('host=x', 'DELETE FROM t') AS r(a int)"),
        vec![k(Kind::Select, &[]), k(Kind::Function, &["dblink"])]
    );
    assert_eq!(
        kinds("SELECT \"PG_SLEEP\"(1), pg_catalog.set_config('role', 'x', false)"),
        vec![
            k(Kind::Select, &[]),
            k(Kind::Function, &["PG_SLEEP"]),
            k(Kind::Function, &["pg_catalog.set_config"])
        ]
    );
}

#[test]
fn explain_analyze_runs_the_statement_plain_explain_reads() {
    assert_eq!(
        kinds("EXPLAIN ANALYZE DELETE FROM t"),
        vec![k(Kind::Delete, &["public.t"])]
    );
    assert_eq!(
        kinds("EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t"),
        vec![k(Kind::Delete, &["public.t"])]
    );
    assert_eq!(
        kinds("EXPLAIN (ANALYZE off) DELETE FROM t"),
        vec![k(Kind::Select, &["public.t"])]
    );
    assert_eq!(
        kinds("EXPLAIN DELETE FROM t"),
        vec![k(Kind::Select, &["public.t"])]
    );
}

#[test]
fn copy_program_and_select_into() {
    assert_eq!(
        kinds("COPY t TO PROGRAM 'curl x'"),
        vec![
            k(Kind::Copy, &["public.t"]),
            k(Kind::Select, &["public.t"]),
            k(Kind::Program, &["public.t"])
        ]
    );
    assert_eq!(kinds("COPY t TO STDOUT"), vec![k(Kind::Select, &["public.t"])]);
    assert_eq!(
        kinds("COPY t FROM STDIN"),
        vec![k(Kind::Copy, &["public.t"]), k(Kind::Insert, &["public.t"])]
    );
    assert_eq!(
        kinds("SELECT * INTO copy_t FROM t"),
        vec![
            k(Kind::Select, &["public.t"]),
            k(Kind::Create, &["public.copy_t"])
        ]
    );
}

#[test]
fn session_kinds() {
    assert_eq!(kinds("SET ROLE admin"), vec![k(Kind::SetRole, &[])]);
    assert_eq!(kinds("SET role = 'admin'"), vec![k(Kind::SetRole, &[])]);
    assert_eq!(
        kinds("SET SESSION AUTHORIZATION admin"),
        vec![k(Kind::SetRole, &[])]
    );
    assert_eq!(kinds("RESET ROLE"), vec![k(Kind::SetRole, &[])]);
    assert_eq!(kinds("SET search_path = evil"), vec![k(Kind::Set, &[])]);
    assert_eq!(
        kinds("BEGIN; COMMIT"),
        vec![k(Kind::Transaction, &[]), k(Kind::Transaction, &[])]
    );
    assert_eq!(
        kinds("LOCK TABLE t IN ACCESS EXCLUSIVE MODE"),
        vec![k(Kind::Lock, &["public.t"])]
    );
}

#[test]
fn unparseable_text_keeps_its_leading_kind() {
    let c = effects("DO $$ BEGIN DELETE FROM t; END $$");
    assert!(c.unparsed.is_some());
    assert_eq!(
        c.effects.iter().map(|e| e.kind).collect::<Vec<_>>(),
        vec![Kind::Do]
    );
    let c = effects("ALTER SYSTEM SET wal_level = minimal");
    assert_eq!(
        c.effects.iter().map(|e| e.kind).collect::<Vec<_>>(),
        vec![Kind::AlterSystem]
    );
}

#[test]
fn prepare_then_execute_is_judged_as_prepared() {
    let mut prepared = PreparedStatements::new();
    fn ctx(p: &PreparedStatements) -> ClassifyContext<'_> {
        ClassifyContext {
            default_schema: "public",
            prepared: p,
            max_statement_bytes: 1 << 20,
        }
    }
    let c = classify("PREPARE wipe AS DELETE FROM orders", &ctx(&prepared));
    assert_eq!(c.effects[0].kind, Kind::Delete);
    prepared.apply(&c.prepared_changes);
    let c = classify("EXECUTE wipe", &ctx(&prepared));
    assert!(c.uses_session);
    assert_eq!(c.effects[0].kind, Kind::Delete);
    assert_eq!(c.effects[0].tables, vec!["public.orders"]);
    let c = classify("DEALLOCATE wipe", &ctx(&prepared));
    prepared.apply(&c.prepared_changes);
    let c = classify("EXECUTE wipe", &ctx(&prepared));
    assert_eq!(c.effects[0].kind, Kind::Execute);
}

#[test]
fn names_fold_as_postgresql_folds_them_in_ascii_only() {
    // A SELECT prepared under a name whose Unicode lower case differs from
    // PostgreSQL's fold must not be found by EXECUTE of the other spelling:
    // PostgreSQL would run whatever the other name holds.
    fn ctx(p: &PreparedStatements) -> ClassifyContext<'_> {
        ClassifyContext {
            default_schema: "public",
            prepared: p,
            max_statement_bytes: 1 << 20,
        }
    }
    let mut prepared = PreparedStatements::new();
    for (prepared_as, executed_as) in [("éx", "ÉX"), ("k", "\u{212A}"), ("i", "İ")] {
        let c = classify(&format!("PREPARE {prepared_as} AS SELECT 1"), &ctx(&prepared));
        prepared.apply(&c.prepared_changes);
        let c = classify(&format!("EXECUTE {executed_as}"), &ctx(&prepared));
        assert_eq!(
            c.effects[0].kind,
            Kind::Execute,
            "EXECUTE {executed_as} must not find {prepared_as}"
        );
    }
    // ASCII capitals do fold: the same statement.
    let c = classify("PREPARE Wipe AS DELETE FROM orders", &ctx(&prepared));
    prepared.apply(&c.prepared_changes);
    assert_eq!(
        classify("EXECUTE WIPE", &ctx(&prepared)).effects[0].kind,
        Kind::Delete
    );
    // Tables too: an unquoted non-ASCII capital is kept.
    let c = classify("DELETE FROM ÖRDERS", &ctx(&prepared));
    assert_eq!(c.effects[0].tables, vec!["public.Örders"]);
}

#[test]
fn oversized_text_is_not_parsed() {
    let prepared = PreparedStatements::new();
    let c = classify(
        "SELECT 1",
        &ClassifyContext {
            default_schema: "public",
            prepared: &prepared,
            max_statement_bytes: 4,
        },
    );
    assert_eq!(c.oversized, Some(8));
    assert!(c.effects.is_empty());
}

#[test]
fn default_schema_and_quoting() {
    let prepared = PreparedStatements::new();
    let c = classify(
        "DELETE FROM \"Orders\" WHERE true; DELETE FROM Shop.Items",
        &ClassifyContext {
            default_schema: "sales",
            prepared: &prepared,
            max_statement_bytes: 1 << 20,
        },
    );
    assert_eq!(c.effects[0].tables, vec!["sales.Orders"]);
    assert_eq!(c.effects[1].tables, vec!["shop.items"]);
}

#[test]
fn function_calls_are_found_wherever_they_are_written() {
    for sql in [
        "SELECT * FROM orders, LATERAL pg_read_file('x') AS f",
        "SELECT * FROM ROWS FROM (pg_read_file('x'))",
        "SELECT * FROM orders WHERE id IN (SELECT 1 FROM pg_read_file('x'))",
        "SELECT * FROM orders ORDER BY pg_read_file('x')",
        "SELECT * FROM orders GROUP BY 1 HAVING pg_read_file('x') = ''",
        "SELECT * FROM orders LIMIT length(pg_read_file('x'))",
        "SELECT (pg_read_file('x')).foo",
        "SELECT pg_read_file('x')::text",
        "SELECT CAST(pg_read_file('x') AS text)",
        "SELECT * FROM orders o JOIN items i ON pg_read_file('x') = i.name",
        "INSERT INTO t VALUES (pg_read_file('x'))",
        "UPDATE t SET a = pg_read_file('x') WHERE true",
        "DELETE FROM t WHERE a = pg_read_file('x')",
        "SELECT count(*) FILTER (WHERE pg_read_file('x') = '') FROM t",
        "SELECT sum(a) OVER (ORDER BY pg_read_file('x')) FROM t",
        "SELECT ARRAY(SELECT pg_read_file('x'))",
        "SELECT ROW(pg_read_file('x'))",
        "SELECT 1 WHERE EXISTS (SELECT pg_read_file('x'))",
        "CALL p(pg_read_file('x'))",
        "SELECT * FROM json_to_record(pg_read_file('x')::json) AS r(a int)",
    ] {
        let c = effects(sql);
        let found = c
            .effects
            .iter()
            .any(|e| e.kind == Kind::Function && e.functions.iter().any(|f| f == "pg_read_file"));
        // Text the parser rejects gets the `unparsed` action, which is never allow.
        assert!(found || c.unparsed.is_some(), "pg_read_file not found in {sql}");
    }
}

#[test]
fn dml_nested_anywhere_is_still_an_effect() {
    for sql in [
        "SELECT * FROM (WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d) s",
        "SELECT (WITH d AS (DELETE FROM orders RETURNING 1) SELECT 1)",
        "SELECT 1 WHERE EXISTS (WITH d AS (DELETE FROM orders RETURNING 1) SELECT 1 FROM d)",
        "INSERT INTO t SELECT * FROM (WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d) s",
    ] {
        let c = effects(sql);
        let delete = c.effects.iter().any(|e| e.kind == Kind::Delete);
        assert!(
            delete || c.unparsed.is_some(),
            "no DELETE in {sql}: {:?}",
            c.effects
        );
    }
}

#[test]
fn explain_judges_the_calls_its_planning_may_evaluate() {
    // The planner evaluates STABLE calls with constant arguments: a plain
    // EXPLAIN of one is a call, not only a read.
    let got = kinds("EXPLAIN SELECT table_to_xml('secret', true, false, '')");
    assert!(got.contains(&k(Kind::Function, &["table_to_xml"])), "{got:?}");
    let got = kinds("EXPLAIN DELETE FROM orders WHERE id = evil.stable_writer(1)");
    assert!(
        got.contains(&k(Kind::Function, &["evil.stable_writer"])),
        "{got:?}"
    );
    // Built-ins that only compute stay a plain read.
    assert_eq!(
        kinds("EXPLAIN SELECT lower(name) FROM orders"),
        vec![k(Kind::Select, &["public.orders"])]
    );
}

#[test]
fn row_locks_count_at_any_depth() {
    for sql in [
        "SELECT * FROM orders FOR UPDATE",
        "SELECT * FROM (SELECT * FROM orders FOR UPDATE) s",
        "WITH l AS (SELECT * FROM orders FOR UPDATE) SELECT * FROM l",
        "SELECT * FROM t, LATERAL (SELECT * FROM orders FOR SHARE) x",
        "SELECT 1 UNION ALL (SELECT 1 FROM orders FOR NO KEY UPDATE)",
        "DECLARE c CURSOR FOR SELECT * FROM orders FOR UPDATE",
    ] {
        // A LOCK effect, or text the parser does not take (never allowed).
        let locked = kinds(sql).iter().any(|(k, _)| *k == Kind::Lock);
        assert!(
            locked || effects(sql).unparsed.is_some(),
            "{sql}: {:?}",
            kinds(sql)
        );
    }
    assert!(
        !kinds("SELECT * FROM orders")
            .iter()
            .any(|(k, _)| *k == Kind::Lock)
    );
}

#[test]
fn reads_inside_a_parenthesised_set_operand_count() {
    assert_eq!(
        kinds("SELECT 1 UNION ALL (SELECT 1 FROM orders)"),
        vec![k(Kind::Select, &["public.orders"])]
    );
}
