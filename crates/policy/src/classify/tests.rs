use super::*;

fn effects(sql: &str) -> Classification {
    let prepared = PreparedStatements::new();
    classify(
        sql,
        &ClassifyContext {
            default_schema: "public",
            prepared: &prepared,
            max_statement_bytes: 1 << 20,
            catalog: crate::Catalog::Assumed,
            session: SessionNames::default(),
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
            // PostgreSQL finds pg_* relations in pg_catalog first.
            k(Kind::Select, &["pg_catalog.pg_stat_activity"]),
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
            k(Kind::Function, &["pg_catalog.set_config"]),
            // set_config('role', ...) is SET ROLE by another route.
            k(Kind::SetRole, &[])
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
    // Two bodies: no DO shape the fallback reads.
    let c = effects("DO $$ BEGIN DELETE FROM t; END $$ $$x$$");
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
            catalog: crate::Catalog::Assumed,
            session: SessionNames::default(),
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
            catalog: crate::Catalog::Assumed,
            session: SessionNames::default(),
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
            catalog: crate::Catalog::Assumed,
            session: SessionNames::default(),
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
            catalog: crate::Catalog::Assumed,
            session: SessionNames::default(),
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

fn has_kind(sql: &str, kind: Kind) -> bool {
    effects(sql).effects.iter().any(|e| e.kind == kind)
}

fn session(prepared: &PreparedStatements) -> ClassifyContext<'_> {
    ClassifyContext {
        default_schema: "public",
        prepared,
        max_statement_bytes: 1 << 20,
        catalog: crate::Catalog::Assumed,
        session: SessionNames::default(),
    }
}

#[test]
fn setting_names_are_read_as_postgresql_reads_them_quoted_or_not() {
    // PostgreSQL finds a parameter by name without regard to case, quoted
    // or not: each of these switches how it reads later statements.
    for sql in [
        "SET \"client_encoding\" = 'SJIS'",
        "SET \"CLIENT_ENCODING\" TO 'SJIS'",
        "SET LOCAL \"Client_Encoding\" = 'BIG5'",
        "SET SESSION \"client_encoding\" = 'GBK'",
        "SET \"standard_conforming_strings\" = off",
        "SELECT \"set_config\"('client_encoding', 'SJIS', false)",
        "SELECT \"pg_catalog\".\"set_config\"('client_encoding', 'SJIS', false)",
        "SELECT * FROM set_config('client_encoding', 'SJIS', false)",
        "SELECT * FROM pg_catalog.\"SET_CONFIG\"('standard_conforming_strings', 'off', false) AS s(x)",
        "SELECT * FROM orders, LATERAL set_config('client_encoding', 'SJIS', true) s",
        "SELECT set_config(new_value => 'SJIS', setting_name => 'client_encoding', is_local => false)",
        "ALTER ROLE agent SET \"client_encoding\" = 'SJIS'",
    ] {
        assert!(has_kind(sql, Kind::ParserSetting), "{sql}: {:?}", kinds(sql));
    }
    for sql in [
        "SET \"client_encoding\" = 'UTF8'",
        "SET \"search_path\" = public",
        "SELECT * FROM set_config('application_name', 'agent', false)",
    ] {
        assert!(!has_kind(sql, Kind::ParserSetting), "{sql}: {:?}", kinds(sql));
    }
}

#[test]
fn role_settings_are_set_role_in_any_case_and_through_set_config() {
    for sql in [
        "SET \"ROLE\" = 'admin'",
        "SET \"Role\" TO admin",
        "SET LOCAL \"ROLE\" TO admin",
        "SET SESSION \"role\" = admin",
        "RESET \"ROLE\"",
        "SET \"SESSION_AUTHORIZATION\" = admin",
        "RESET \"Session_Authorization\"",
        "SELECT set_config('role', 'admin', false)",
        "SELECT set_config('ROLE', 'admin', true)",
        "SELECT set_config('session_authorization', 'admin', false)",
        "SELECT * FROM set_config('role', 'admin', false)",
        // A name computed at run time could be the role.
        "SELECT set_config(current_setting('x.name'), 'admin', false)",
    ] {
        assert!(has_kind(sql, Kind::SetRole), "{sql}: {:?}", kinds(sql));
    }
    for sql in [
        "SET search_path = public",
        "SELECT set_config('app.tenant', '42', false)",
    ] {
        assert!(!has_kind(sql, Kind::SetRole), "{sql}: {:?}", kinds(sql));
    }
}

#[test]
fn explain_execute_is_judged_as_execute() {
    let mut prepared = PreparedStatements::new();
    let c = classify("PREPARE wipe AS DELETE FROM orders", &session(&prepared));
    prepared.apply(&c.prepared_changes);
    let execute = classify("EXECUTE wipe", &session(&prepared));
    for sql in [
        "EXPLAIN EXECUTE wipe",
        "EXPLAIN (COSTS off) EXECUTE wipe",
        "EXPLAIN ANALYZE EXECUTE wipe",
    ] {
        let c = classify(sql, &session(&prepared));
        assert_eq!(c.effects, execute.effects, "{sql}");
        assert!(c.uses_session && c.executes_prepared, "{sql}");
        // The data plane refuses names that belong to protocol-level statements.
        assert_eq!(c.executed_names, vec!["wipe"], "{sql}");
    }
    // A name this session never prepared (a protocol-level statement, say)
    // could run anything.
    let c = classify("EXPLAIN EXECUTE \"Held\"", &session(&prepared));
    assert_eq!(
        c.effects.iter().map(|e| e.kind).collect::<Vec<_>>(),
        vec![Kind::Execute]
    );
    assert!(c.executes_prepared);
    assert_eq!(c.executed_names, vec!["Held"]);
}

#[test]
fn cte_names_hide_tables_only_where_postgresql_scopes_them() {
    // Without RECURSIVE a CTE sees only the CTEs before it: in `x`,
    // `orders` is the table.
    assert_eq!(
        kinds("WITH x AS (SELECT * FROM orders), orders AS (SELECT 1) SELECT * FROM x"),
        vec![k(Kind::Select, &["public.orders"])]
    );
    // A CTE of one statement is nothing to the next.
    assert_eq!(
        kinds("WITH orders AS (SELECT 1) SELECT 1; SELECT * FROM orders"),
        vec![k(Kind::Select, &[]), k(Kind::Select, &["public.orders"])]
    );
    // A subquery's WITH ends with the subquery.
    assert_eq!(
        kinds("SELECT * FROM (WITH orders AS (SELECT 1) SELECT * FROM orders) s, orders"),
        vec![k(Kind::Select, &["public.orders"])]
    );
    assert_eq!(
        kinds("WITH a AS (WITH orders AS (SELECT 1) SELECT * FROM orders) SELECT * FROM a, orders"),
        vec![k(Kind::Select, &["public.orders"])]
    );
    // Row locks and INSERT ... SELECT reads likewise.
    assert_eq!(
        kinds("WITH orders AS (SELECT 1) SELECT 1; SELECT * FROM orders FOR UPDATE"),
        vec![
            k(Kind::Select, &[]),
            k(Kind::Select, &["public.orders"]),
            k(Kind::Lock, &["public.orders"])
        ]
    );
    assert_eq!(
        kinds("WITH x AS (SELECT * FROM orders), orders AS (SELECT 1) INSERT INTO archive SELECT * FROM x"),
        vec![
            k(Kind::Select, &["public.orders"]),
            k(Kind::Insert, &["public.archive"])
        ]
    );
    // Where PostgreSQL does read the CTE, no table is read.
    for sql in [
        "WITH orders AS (SELECT 1) SELECT * FROM orders",
        "WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b",
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 3) SELECT * FROM t",
        "WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a",
        "WITH orders AS (SELECT 1) SELECT * FROM (SELECT * FROM orders) s WHERE EXISTS (SELECT 1 FROM orders)",
    ] {
        assert_eq!(kinds(sql), vec![k(Kind::Select, &[])], "{sql}");
    }
    // A qualified name is never a CTE.
    assert_eq!(
        kinds("WITH orders AS (SELECT 1) SELECT * FROM public.orders"),
        vec![k(Kind::Select, &["public.orders"])]
    );
}

#[test]
fn unqualified_pg_relations_are_pg_catalogs() {
    assert_eq!(
        kinds("SELECT * FROM pg_stats"),
        vec![k(Kind::Select, &["pg_catalog.pg_stats"])]
    );
    assert_eq!(
        kinds("SELECT query FROM pg_stat_activity JOIN orders ON true"),
        vec![k(Kind::Select, &["pg_catalog.pg_stat_activity", "public.orders"])]
    );
    // A pg_* name the list does not know may be either.
    assert_eq!(
        kinds("SELECT * FROM pg_stat_something_new"),
        vec![k(
            Kind::Select,
            &["pg_catalog.pg_stat_something_new", "public.pg_stat_something_new"]
        )]
    );
    // Qualified names are what they say; information_schema is never implicit.
    assert_eq!(
        kinds("SELECT * FROM public.pg_stats, information_schema.tables"),
        vec![k(Kind::Select, &["public.pg_stats", "information_schema.tables"])]
    );
}

#[test]
fn ddl_names_the_relations_it_acts_on() {
    for (sql, kind, tables) in [
        (
            "ALTER TABLE orders DROP COLUMN note",
            Kind::Alter,
            &["public.orders"][..],
        ),
        (
            "ALTER TABLE orders RENAME TO old_orders",
            Kind::Alter,
            &["public.orders", "public.old_orders"],
        ),
        (
            "ALTER TABLE hr.salaries DISABLE TRIGGER ALL",
            Kind::Alter,
            &["hr.salaries"],
        ),
        (
            "ALTER TABLE orders OWNER TO mallory",
            Kind::Alter,
            &["public.orders"],
        ),
        (
            "ALTER TABLE orders DROP COLUMN note CASCADE",
            Kind::Alter,
            &["public.orders", "*.*"],
        ),
        (
            "ALTER TABLE orders ATTACH PARTITION hr.p FOR VALUES IN (1)",
            Kind::Alter,
            &["public.orders", "hr.p"],
        ),
        ("ALTER VIEW v RENAME TO w", Kind::Alter, &["public.v"]),
        ("ALTER SCHEMA hr OWNER TO mallory", Kind::Alter, &["hr.*"]),
        (
            "ALTER POLICY p ON orders USING (true)",
            Kind::Alter,
            &["public.orders"],
        ),
        (
            "GRANT SELECT ON orders TO mallory",
            Kind::Grant,
            &["public.orders"],
        ),
        (
            "GRANT ALL ON ALL TABLES IN SCHEMA hr TO mallory",
            Kind::Grant,
            &["hr.*"],
        ),
        ("GRANT USAGE ON SCHEMA hr TO mallory", Kind::Grant, &["hr.*"]),
        (
            "REVOKE SELECT ON hr.salaries FROM PUBLIC",
            Kind::Revoke,
            &["hr.salaries"],
        ),
        (
            "COMMENT ON TABLE orders IS 'x'",
            Kind::Comment,
            &["public.orders"],
        ),
        (
            "COMMENT ON COLUMN hr.salaries.amount IS 'x'",
            Kind::Comment,
            &["hr.salaries"],
        ),
        ("VACUUM orders", Kind::Vacuum, &["public.orders"]),
        ("ANALYZE hr.salaries", Kind::Analyze, &["hr.salaries"]),
        ("REFRESH MATERIALIZED VIEW hr.v", Kind::Refresh, &["hr.v"]),
        (
            "CREATE TRIGGER t AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION f()",
            Kind::CreateTrigger,
            &["public.orders"],
        ),
        ("DROP TRIGGER t ON orders", Kind::Drop, &["public.orders"]),
        ("DROP POLICY p ON orders", Kind::Drop, &["public.orders"]),
        ("DROP RULE r ON orders", Kind::Drop, &["public.orders"]),
        ("CREATE INDEX ON orders (id)", Kind::Create, &["public.orders"]),
        (
            "CREATE POLICY p ON orders USING (true)",
            Kind::Create,
            &["public.orders"],
        ),
        (
            "DROP INDEX hr.salaries_idx",
            Kind::Drop,
            &["hr.salaries_idx", "hr.*"],
        ),
        ("TRUNCATE orders", Kind::Truncate, &["public.orders"]),
        (
            "TRUNCATE orders CASCADE",
            Kind::Truncate,
            &["public.orders", "*.*"],
        ),
        ("DROP SCHEMA hr", Kind::Drop, &["hr.*"]),
        ("DROP SCHEMA hr CASCADE", Kind::Drop, &["hr.*", "*.*"]),
        ("DROP TABLE orders CASCADE", Kind::Drop, &["public.orders", "*.*"]),
        (
            "CREATE TABLE p1 PARTITION OF hr.salaries FOR VALUES IN (1)",
            Kind::Create,
            &["public.p1", "hr.salaries"],
        ),
        // No relation named: an unresolved target (VACUUM of every table).
        ("VACUUM", Kind::Vacuum, &[]),
        ("GRANT admin TO mallory", Kind::Grant, &[]),
    ] {
        let got = kinds(sql);
        assert!(got.contains(&k(kind, tables)), "{sql}: {got:?}");
    }
}

#[test]
fn casts_to_types_that_are_not_built_in_are_calls() {
    // A domain's CHECK runs functions; a type's input function is code.
    for (sql, call) in [
        ("SELECT '1'::evil_dom", "cast to evil_dom"),
        ("SELECT CAST(id AS evil_dom) FROM orders", "cast to evil_dom"),
        ("SELECT evil_dom '1'", "cast to evil_dom"),
        ("SELECT '{1}'::public.evil_dom[]", "cast to public.evil_dom"),
        // sqlparser has its own type for `string`; to PostgreSQL it is a name.
        ("SELECT 'x'::string", "cast to string"),
        (
            "SELECT * FROM orders ORDER BY id USING OPERATOR(public.<)",
            "operator",
        ),
        ("SELECT * FROM orders ORDER BY id USING <<<", "operator"),
        (
            "SELECT array_agg(id ORDER BY id USING OPERATOR(evil.<)) FROM orders",
            "operator",
        ),
    ] {
        let got = kinds(sql);
        assert!(got.contains(&k(Kind::Function, &[call])), "{sql}: {got:?}");
    }
    for sql in [
        "SELECT '1'::int4, id::text, '2020-01-01'::date, interval '1 day', 'orders'::regclass",
        "SELECT '10.0.0.1'::inet, '{1}'::int[], '1'::pg_catalog.int4, 1::numeric(10, 2), 'a'::\"char\"",
        "SELECT now()::timestamp with time zone, 1::double precision, 'x'::character varying(3)",
        "SELECT * FROM orders ORDER BY id USING <, note USING OPERATOR(pg_catalog.>)",
    ] {
        assert_eq!(kinds(sql).len(), 1, "{sql}: {:?}", kinds(sql));
    }
    // EXECUTE casts its arguments to the parameter types PREPARE named.
    let mut prepared = PreparedStatements::new();
    let c = classify("PREPARE p(evil_dom) AS SELECT $1", &session(&prepared));
    prepared.apply(&c.prepared_changes);
    let c = classify("EXECUTE p('1')", &session(&prepared));
    assert!(
        c.effects
            .iter()
            .any(|e| e.kind == Kind::Function && e.functions == ["cast to evil_dom"]),
        "{:?}",
        c.effects
    );
}

#[test]
fn read_write_transaction_modes_are_settings() {
    // They undo a database or role default of default_transaction_read_only.
    for sql in [
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET TRANSACTION READ WRITE",
        "BEGIN READ WRITE",
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE",
    ] {
        assert_eq!(kinds(sql), vec![k(Kind::Set, &[])], "{sql}");
    }
    for sql in [
        "BEGIN",
        "BEGIN READ ONLY",
        "START TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SAVEPOINT s",
        "ROLLBACK",
        "COMMIT",
    ] {
        assert_eq!(kinds(sql), vec![k(Kind::Transaction, &[])], "{sql}");
    }
}

#[test]
fn a_comment_inside_a_string_continuation_does_not_end_the_string() {
    // To PostgreSQL this is one E string: `a'` then the rest up to the last
    // quote. Read as two strings, it would hide the DELETE.
    let c = effects("SELECT E'a' --c\n'\\'' ; DELETE FROM orders; -- '");
    let why = c.unparsed.expect("must not be judged as parsed");
    assert!(why.contains("differently"), "{why}");
}

/// Read by the fallback (`fallback.rs`): classified, not unparsed.
fn read_by_fallback(sql: &str) -> Vec<(Kind, Vec<String>)> {
    let c = effects(sql);
    assert_eq!(c.unparsed, None, "{sql}");
    kinds(sql)
}

fn stays_unparsed(sql: &str) {
    assert!(effects(sql).unparsed.is_some(), "{sql} must stay unparsed");
}

#[test]
fn move_is_a_cursor_statement_like_fetch() {
    for sql in [
        "MOVE FORWARD 1 c",
        "move 5 in c",
        "MOVE ALL FROM \"My Cursor\"",
        "MOVE ABSOLUTE -1 FROM c",
        "MOVE c",
    ] {
        assert_eq!(read_by_fallback(sql), vec![k(Kind::Cursor, &[])], "{sql}");
    }
    // Nothing but words, numbers and signs: no expression hides in a MOVE.
    stays_unparsed("MOVE FORWARD (SELECT 1) c");
    stays_unparsed("MOVE 'x'");
    stays_unparsed("MOVE");
    stays_unparsed("MOVE FORWARD 1");
}

#[test]
fn do_blocks_are_do_whatever_their_quoting() {
    for sql in [
        "DO $$BEGIN PERFORM 1; END$$",
        "DO 'BEGIN NULL; END'",
        "DO LANGUAGE plpgsql $x$BEGIN NULL; END$x$",
        "DO $$BEGIN NULL; END$$ LANGUAGE plpgsql",
        "DO E'BEGIN NULL; END'",
    ] {
        assert_eq!(read_by_fallback(sql), vec![k(Kind::Do, &[])], "{sql}");
    }
    stays_unparsed("DO $$x$$ $$y$$");
    stays_unparsed("DO $$x$$ || 'y'");
    stays_unparsed("DO");
}

#[test]
fn alter_type_adding_or_dropping_attributes_is_an_alter() {
    for sql in [
        "ALTER TYPE typ1 ADD ATTRIBUTE c text",
        "ALTER TYPE s.typ1 DROP ATTRIBUTE IF EXISTS x RESTRICT",
        "ALTER TYPE typ1 ADD ATTRIBUTE a numeric(10, 2), DROP ATTRIBUTE b, ADD ATTRIBUTE c int[]",
        "ALTER TYPE typ1 ADD ATTRIBUTE c text COLLATE \"C\"",
    ] {
        assert_eq!(read_by_fallback(sql), vec![k(Kind::Alter, &[])], "{sql}");
    }
    // A type change of typed tables' columns may run casts: not read here.
    stays_unparsed("ALTER TYPE typ1 ALTER ATTRIBUTE a TYPE mytype CASCADE");
    stays_unparsed("ALTER TYPE typ1 ADD ATTRIBUTE c text, ALTER ATTRIBUTE a SET DATA TYPE int");
    stays_unparsed("ALTER TYPE typ1 ADD ATTRIBUTE c text DEFAULT 1");
    // CASCADE reaches typed tables: their rows get the attribute's default
    // (a domain's, computed by any function).
    stays_unparsed("ALTER TYPE ct ADD ATTRIBUTE z dwithdefault CASCADE");
    stays_unparsed("ALTER TYPE ct DROP ATTRIBUTE b CASCADE");
    stays_unparsed("ALTER TYPE typ1 ADD ATTRIBUTE c text, ");
}

#[test]
fn create_domain_without_expressions_is_a_create() {
    for sql in [
        "CREATE DOMAIN num_array numeric[]",
        "CREATE DOMAIN s.d AS varchar(20) NOT NULL",
        "CREATE DOMAIN d int COLLATE \"C\"",
    ] {
        assert_eq!(read_by_fallback(sql), vec![k(Kind::Create, &[])], "{sql}");
    }
    // Expressions are not read here: those stay unparsed (sqlparser reads
    // the form with `AS`, expressions included).
    stays_unparsed("CREATE DOMAIN d int[] CHECK (VALUE <> '{}')");
    stays_unparsed("CREATE DOMAIN d int[] DEFAULT f()");
    stays_unparsed("CREATE DOMAIN d int[] CONSTRAINT c NOT NULL");
}

#[test]
fn alter_sequence_is_an_alter_of_the_sequence() {
    for (sql, target) in [
        ("ALTER SEQUENCE s RESTART WITH 10", "public.s"),
        (
            "ALTER SEQUENCE IF EXISTS app.\"Seq\" INCREMENT BY -1 OWNED BY t.id",
            "app.Seq",
        ),
        ("ALTER SEQUENCE S RESTART", "public.s"),
    ] {
        let got = read_by_fallback(sql);
        assert_eq!(got.len(), 1, "{sql}");
        assert_eq!(got[0].0, Kind::Alter, "{sql}");
        assert!(got[0].1.iter().any(|t| t == target), "{sql}: {:?}", got[0].1);
    }
    stays_unparsed("ALTER SEQUENCE s RESTART WITH (SELECT 1)");
    stays_unparsed("ALTER SEQUENCE s");
}

#[test]
fn transactions_with_modes_the_parser_does_not_read_are_transaction_control() {
    for sql in [
        "BEGIN DEFERRABLE",
        "BEGIN NOT DEFERRABLE",
        "BEGIN READ ONLY DEFERRABLE",
        "begin transaction isolation level serializable, read only, deferrable",
        "START TRANSACTION ISOLATION LEVEL REPEATABLE READ DEFERRABLE",
    ] {
        assert_eq!(read_by_fallback(sql), vec![k(Kind::Transaction, &[])], "{sql}");
    }
    // READ WRITE undoes default_transaction_read_only: a setting.
    assert_eq!(
        read_by_fallback("BEGIN READ WRITE, DEFERRABLE"),
        vec![k(Kind::Set, &[])]
    );
    stays_unparsed("BEGIN DEFERRABLE ISOLATION LEVEL CHAOS");
    stays_unparsed("BEGIN DEFERRABLE 'x'");
    stays_unparsed("BEGIN \"DEFERRABLE\"");
}

#[test]
fn set_constraints_is_a_setting() {
    for sql in [
        "SET CONSTRAINTS table2__table1_id__fk DEFERRED",
        "SET CONSTRAINTS ALL IMMEDIATE",
        "SET CONSTRAINTS s.a, b DEFERRED",
    ] {
        assert_eq!(read_by_fallback(sql), vec![k(Kind::Set, &[])], "{sql}");
    }
    stays_unparsed("SET CONSTRAINTS ALL LATER");
    stays_unparsed("SET CONSTRAINTS DEFERRED");
}

#[test]
fn an_identity_column_added_as_pg_dump_writes_it_is_an_alter_of_the_table() {
    for (sql, target) in [
        (
            "ALTER TABLE public.auth_group ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY (\n    \
             SEQUENCE NAME public.auth_group_id_seq\n    START WITH 1\n    INCREMENT BY 1\n    \
             NO MINVALUE\n    NO MAXVALUE\n    CACHE 1\n)",
            "public.auth_group",
        ),
        (
            "ALTER TABLE IF EXISTS ONLY app.\"T\" ALTER id ADD GENERATED ALWAYS AS IDENTITY",
            "app.T",
        ),
    ] {
        let got = read_by_fallback(sql);
        assert_eq!(got.len(), 1, "{sql}");
        assert_eq!(got[0].0, Kind::Alter, "{sql}");
        assert!(got[0].1.iter().any(|t| t == target), "{sql}: {:?}", got[0].1);
    }
    // Anything that could run an expression, or another action, stays
    // unparsed.
    stays_unparsed(
        "ALTER TABLE t ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (START WITH (SELECT f()))",
    );
    stays_unparsed(
        "ALTER TABLE t ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME s), DROP c",
    );
    stays_unparsed("ALTER TABLE t ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY 'x'");
    stays_unparsed("ALTER TABLE t ALTER COLUMN id ADD GENERATED SOMETIMES AS IDENTITY");
}

#[test]
fn a_text_the_parser_refuses_is_read_statement_by_statement() {
    // Each statement is classified: the fallback's shape, and whatever
    // the parser reads around it.
    assert_eq!(
        read_by_fallback("DROP DOMAIN IF EXISTS d; CREATE DOMAIN d numeric[]; DELETE FROM orders"),
        vec![
            k(Kind::Drop, &[]),
            k(Kind::Create, &[]),
            k(Kind::Delete, &["public.orders"])
        ]
    );
    assert_eq!(
        read_by_fallback("MOVE 1 c; SELECT * FROM t;"),
        vec![k(Kind::Cursor, &[]), k(Kind::Select, &["public.t"])]
    );
    // One statement no one reads leaves the whole text unparsed.
    stays_unparsed("MOVE 1 c; CHECKPOINT");
    stays_unparsed("CREATE DOMAIN d int; REINDEX TABLE t");
    // A `;` inside a string or a dollar quote ends nothing.
    assert_eq!(
        read_by_fallback("DO $$BEGIN DELETE FROM orders; END$$"),
        vec![k(Kind::Do, &[])]
    );
    stays_unparsed("DO $$BEGIN$$; x");
}

mod against_the_catalog {
    use std::collections::HashMap;

    use super::*;
    use crate::facts::{Called, CatalogFacts, RelationKind, RelationsBuilder};

    fn on(sql: &str, catalog: Catalog<'_>) -> Vec<(Kind, Vec<String>)> {
        on_session(sql, catalog, SessionNames::default())
    }

    fn call(name: &str, volatile: bool) -> Called {
        Called {
            name: name.into(),
            volatile,
        }
    }

    /// A database with `lower` shadowed in `util`, the role's path
    /// `app, public`, and views: `public.v_ok` over `public.orders` calling
    /// only stable built-ins, `public.v_bad` calling `util.audit`,
    /// `public.v_next` calling `nextval`, `public.v_v` over `v_bad`,
    /// `public.pay` an updatable view over `hr.salaries`, `public.ruled`
    /// with a rule deleting from `hr.salaries`.
    fn facts() -> CatalogFacts {
        let mut b = RelationsBuilder::default();
        for t in ["public.orders", "app.orders", "hr.salaries", "public.only_public"] {
            b.relation(t.into(), RelationKind::Table);
        }
        for v in [
            "public.v_ok",
            "public.v_bad",
            "public.v_next",
            "public.v_v",
            "public.pay",
            "public.ruled",
        ] {
            b.relation(v.into(), RelationKind::View);
        }
        b.relation("public.v_set".into(), RelationKind::View);
        b.read_call("public.v_set", call("pg_catalog.set_config", true));
        b.relation("public.m".into(), RelationKind::MaterializedView);
        b.reads("public.m", "public.orders".into());
        b.read_call("public.m", call("util.audit", true));
        b.reads("public.v_ok", "public.orders".into());
        b.read_call("public.v_ok", call("pg_catalog.upper", false));
        b.read_call("public.v_ok", call("pg_catalog.int4eq", false));
        b.reads("public.v_bad", "public.orders".into());
        b.read_call("public.v_bad", call("util.audit", true));
        b.read_call("public.v_next", call("pg_catalog.nextval", true));
        b.reads("public.v_v", "public.v_bad".into());
        b.reads("public.pay", "hr.salaries".into());
        b.rule_table("public.ruled", "hr.salaries".into());
        // Row-level security on a table calling a function that writes.
        b.relation("public.guarded".into(), RelationKind::Table);
        b.guard_call("public.guarded", call("util.audit", true));
        b.guard_reads("public.guarded", "hr.salaries".into());
        CatalogFacts::new(
            vec!["app".into(), "public".into()],
            ["lower".to_owned(), "audit".to_owned()],
            b.build(),
        )
    }

    #[test]
    fn a_shadowed_built_in_is_a_call_unless_qualified() {
        let f = facts();
        let known = Catalog::Known(&f);
        assert_eq!(
            on("SELECT lower(name) FROM orders", known),
            vec![k(Kind::Select, &["app.orders"]), k(Kind::Function, &["lower"])]
        );
        assert_eq!(
            on("SELECT pg_catalog.lower('A')", known),
            vec![k(Kind::Select, &[])]
        );
        // Not shadowed: still the built-in.
        assert_eq!(on("SELECT upper('a')", known), vec![k(Kind::Select, &[])]);
        // Offline, names are taken for what they say.
        assert_eq!(
            on("SELECT lower('A')", Catalog::Assumed),
            vec![k(Kind::Select, &[])]
        );
    }

    #[test]
    fn unreadable_facts_trust_only_qualified_built_ins() {
        assert_eq!(
            on("SELECT count(*)", Catalog::Unreadable),
            vec![k(Kind::Select, &[]), k(Kind::Function, &["count"])]
        );
        assert_eq!(
            on("SELECT pg_catalog.count(*)", Catalog::Unreadable),
            vec![k(Kind::Select, &[])]
        );
        assert_eq!(
            on(
                "SELECT pg_catalog.count(*) FROM pg_catalog.pg_class",
                Catalog::Unreadable
            ),
            vec![k(Kind::Select, &["pg_catalog.pg_class"])]
        );
    }

    #[test]
    fn unqualified_names_resolve_through_the_roles_path() {
        let f = facts();
        let known = Catalog::Known(&f);
        // `app` comes first on the path and holds an `orders`.
        assert_eq!(
            on("DELETE FROM orders WHERE id = 1", known),
            vec![k(Kind::Delete, &["app.orders"])]
        );
        assert_eq!(
            on("SELECT * FROM only_public", known),
            vec![k(Kind::Select, &["public.only_public"])]
        );
        // Unknown: every schema of the path.
        assert_eq!(
            on("CREATE TABLE fresh (id int)", known),
            vec![k(Kind::Create, &["app.fresh", "public.fresh"])]
        );
        // Catalog relations stay pg_catalog's.
        assert_eq!(
            on("SELECT * FROM pg_class", known),
            vec![k(Kind::Select, &["pg_catalog.pg_class"])]
        );
    }

    #[test]
    fn a_view_is_judged_by_what_it_reads_and_calls() {
        let f = facts();
        let known = Catalog::Known(&f);
        assert_eq!(
            on("SELECT * FROM v_ok", known),
            vec![k(Kind::Select, &["public.v_ok", "public.orders"])]
        );
        assert_eq!(
            on("SELECT * FROM public.v_bad", known),
            vec![
                k(Kind::Select, &["public.v_bad", "public.orders"]),
                k(Kind::Function, &["util.audit"])
            ]
        );
        assert_eq!(
            on("SELECT * FROM v_next", known),
            vec![
                k(Kind::Select, &["public.v_next"]),
                k(Kind::Function, &["pg_catalog.nextval"])
            ]
        );
        // A view over a view over a volatile function.
        assert_eq!(
            on("SELECT 1 FROM v_v", known),
            vec![
                k(Kind::Select, &["public.v_v", "public.orders", "public.v_bad"]),
                k(Kind::Function, &["util.audit"])
            ]
        );
        // A materialized view's rows are stored: reading runs nothing.
        assert_eq!(on("SELECT * FROM m", known), vec![k(Kind::Select, &["public.m"])]);
    }

    #[test]
    fn writing_through_a_view_or_a_rule_reaches_the_base_table() {
        let f = facts();
        let known = Catalog::Known(&f);
        assert_eq!(
            on("DELETE FROM pay WHERE id = 1", known),
            vec![k(Kind::Delete, &["public.pay", "hr.salaries"])]
        );
        assert_eq!(
            on("UPDATE ruled SET x = 1", known),
            vec![k(Kind::Update, &["public.ruled", "hr.salaries"])]
        );
        // Reading a ruled relation runs no rule but its query.
        assert_eq!(
            on("SELECT * FROM ruled", known),
            vec![k(Kind::Select, &["public.ruled"])]
        );
    }

    #[test]
    fn calls_sqlparser_reads_as_expressions_are_calls_too() {
        let mut b = RelationsBuilder::default();
        b.relation("public.orders".into(), RelationKind::Table);
        let f = CatalogFacts::new(
            vec!["public".into()],
            ["floor", "ceiling", "substring"].map(str::to_owned),
            b.build(),
        );
        let known = Catalog::Known(&f);
        for (sql, call) in [
            ("SELECT floor(id) FROM orders", "floor"),
            ("SELECT ceil(id, 2) FROM orders", "ceiling"),
            ("SELECT substring(id, 1, 2) FROM orders", "substring"),
        ] {
            let got = on(sql, known);
            assert!(got.contains(&k(Kind::Function, &[call])), "{sql}: {got:?}");
        }
        // convert is not a read-only built-in anywhere.
        assert!(
            on("SELECT convert(id, total) FROM orders", Catalog::Assumed)
                .contains(&k(Kind::Function, &["convert"]))
        );
        // Unshadowed, they are the built-ins.
        assert_eq!(
            on("SELECT floor(1.5)", Catalog::Assumed),
            vec![k(Kind::Select, &[])]
        );
    }

    #[test]
    fn stale_facts_distrust_calls_and_relations_they_do_not_know() {
        let f = facts();
        let stale = Catalog::Stale(&f);
        assert_eq!(
            on("SELECT count(*) FROM v_bad", stale),
            vec![
                k(Kind::Select, &["public.v_bad", "public.orders"]),
                k(Kind::Function, &["count"]),
                k(Kind::Function, &["util.audit"])
            ]
        );
        assert_eq!(
            on("DELETE FROM public.made_since", stale),
            vec![
                k(Kind::Delete, &["public.made_since"]),
                k(Kind::Function, &["code of public.made_since"])
            ]
        );
        // Never read: any relation may be a view, anywhere.
        assert_eq!(
            on("SELECT * FROM pay", Catalog::Unreadable),
            vec![
                k(Kind::Select, &["public.pay", "*.*"]),
                k(Kind::Function, &["code of public.pay"])
            ]
        );
    }

    #[test]
    fn refreshing_a_materialized_view_runs_its_query() {
        let f = facts();
        assert_eq!(
            on("REFRESH MATERIALIZED VIEW m", Catalog::Known(&f)),
            vec![
                k(Kind::Refresh, &["public.m", "public.orders"]),
                k(Kind::Function, &["util.audit"])
            ]
        );
    }

    #[test]
    fn temporary_relations_live_in_pg_temp_and_shadow_names_after() {
        let f = facts();
        let known = Catalog::Known(&f);
        let prepared = PreparedStatements::new();
        let c = classify(
            "CREATE TEMP VIEW orders AS SELECT id, pay FROM hr.salaries",
            &ClassifyContext {
                default_schema: "public",
                prepared: &prepared,
                max_statement_bytes: 1 << 20,
                catalog: known,
                session: SessionNames::default(),
            },
        );
        assert!(c.creates_temp);
        let create = c
            .effects
            .iter()
            .find(|e| e.kind == Kind::Create)
            .expect("a CREATE");
        assert_eq!(create.tables, vec!["pg_temp.orders"]);
        let after = classify(
            "DELETE FROM orders WHERE id = 4",
            &ClassifyContext {
                default_schema: "public",
                prepared: &prepared,
                max_statement_bytes: 1 << 20,
                catalog: known,
                session: SessionNames {
                    temp_relations: true,
                    ..SessionNames::default()
                },
            },
        );
        assert_eq!(after.effects[0].tables, vec!["pg_temp.orders", "app.orders"]);
        assert!(after.uses_session, "never cached across sessions");
    }

    fn ctx_classify(sql: &str, catalog: Catalog<'_>, temp_relations: bool) -> Classification {
        in_session(
            sql,
            catalog,
            SessionNames {
                temp_relations,
                ..SessionNames::default()
            },
        )
    }

    fn in_session(sql: &str, catalog: Catalog<'_>, session: SessionNames) -> Classification {
        let prepared = PreparedStatements::new();
        classify(
            sql,
            &ClassifyContext {
                default_schema: "public",
                prepared: &prepared,
                max_statement_bytes: 1 << 20,
                catalog,
                session,
            },
        )
    }

    fn the_delete(c: &Classification) -> &Effect {
        c.effects
            .iter()
            .find(|e| e.kind == Kind::Delete)
            .expect("a DELETE")
    }

    fn shapes(c: &Classification) -> Vec<(Kind, Vec<String>)> {
        c.effects.iter().map(|e| (e.kind, e.tables.clone())).collect()
    }

    #[test]
    fn statements_that_may_change_the_search_path_are_seen() {
        let f = facts();
        for sql in [
            "SET search_path = hr, public",
            "SET LOCAL search_path TO hr",
            "SET SESSION \"SEARCH_PATH\" = hr",
            "SET search_path = DEFAULT",
            "SET SCHEMA 'hr'",
            "SET ROLE other",
            "SET role = other",
            "RESET ROLE",
            "SET SESSION AUTHORIZATION other",
            "SELECT set_config('search_path', 'hr', false)",
            "SELECT pg_catalog.set_config('Search_Path', 'hr', true)",
            "SELECT set_config(name, 'hr', false) FROM t",
            "ALTER ROLE CURRENT_USER SET search_path = hr",
            "ALTER ROLE me RESET ALL",
            "DO $$ BEGIN PERFORM set_config('search_path', 'hr', false); END $$",
            "this is not sql",
            // Built-ins that set it unseen: SQL text, a view's set_config.
            "SELECT query_to_xml('SELECT set_config(''search_path'', ''hr'', false)', true, false, '')",
            "SELECT * FROM v_set",
            // pg_settings' rule calls set_config.
            "UPDATE pg_settings SET setting = 'hr' WHERE name = 'search_path'",
            "UPDATE pg_catalog.pg_settings SET setting = 'hr' WHERE name = 'search_path'",
        ] {
            let c = in_session(sql, Catalog::Known(&f), SessionNames::default());
            assert!(c.changes_search_path, "{sql}");
        }
        for sql in [
            "SET statement_timeout = 0",
            "SET TIME ZONE 'UTC'",
            "SELECT set_config('application_name', 'x', false)",
            "SHOW search_path",
            "SELECT upper('a'), pg_cancel_backend(0), pg_catalog.nextval('s')",
            // User code may, but counting it would cost drivers their
            // prepared statements after ordinary writes (a documented limit).
            "SELECT util.audit(1)",
            "SELECT lower(id) FROM orders",
            "CALL app.tidy()",
            "SELECT * FROM v_bad",
            "SELECT current_setting('search_path')",
            "RESET statement_timeout",
            "DISCARD ALL",
            "SELECT * FROM orders",
        ] {
            let c = in_session(sql, Catalog::Known(&f), SessionNames::default());
            assert!(!c.changes_search_path, "{sql}");
        }
    }

    #[test]
    fn a_change_of_names_counts_for_the_statements_after_it_in_the_same_text() {
        let f = facts();
        let fresh = SessionNames::default();
        let c = in_session(
            "SET search_path = vault; DELETE FROM orders",
            Catalog::Known(&f),
            fresh,
        );
        assert_eq!(
            shapes(&c),
            vec![
                k(Kind::Set, &[]),
                k(Kind::Delete, &["app.orders", "public.orders", "*.orders"])
            ]
        );
        // Before the SET, the role's path.
        let c = in_session(
            "DELETE FROM orders; SET search_path = vault",
            Catalog::Known(&f),
            fresh,
        );
        assert_eq!(
            shapes(&c),
            vec![k(Kind::Delete, &["app.orders"]), k(Kind::Set, &[])]
        );
        // The same for a temporary relation made earlier in the text.
        let c = in_session(
            "CREATE TEMP VIEW orders AS SELECT * FROM hr.salaries; DELETE FROM orders",
            Catalog::Known(&f),
            fresh,
        );
        let delete = the_delete(&c);
        assert!(
            delete.tables.contains(&"pg_temp.orders".to_owned()),
            "{:?}",
            c.effects
        );
        // And after a view whose code sets the path (found only once the
        // whole text is read): the text is judged again, moved.
        let c = in_session(
            "SELECT * FROM v_set; DELETE FROM orders",
            Catalog::Known(&f),
            fresh,
        );
        let delete = the_delete(&c);
        assert!(delete.tables.contains(&"*.orders".to_owned()), "{:?}", c.effects);
        assert!(c.changes_search_path);
        // And for text read statement by statement (the fallback).
        let c = in_session(
            "SET search_path = vault; SET CONSTRAINTS ALL DEFERRED; DELETE FROM orders",
            Catalog::Known(&f),
            fresh,
        );
        let delete = the_delete(&c);
        assert!(delete.tables.contains(&"*.orders".to_owned()), "{:?}", c.effects);
    }

    #[test]
    fn a_statement_prepared_under_other_names_is_not_trusted() {
        let f = facts();
        let mut prepared = PreparedStatements::new();
        let delete = classify(
            "PREPARE d AS DELETE FROM orders WHERE id = $1",
            &ClassifyContext {
                default_schema: "public",
                prepared: &prepared,
                max_statement_bytes: 1 << 20,
                catalog: Catalog::Known(&f),
                session: SessionNames::default(),
            },
        );
        prepared.apply(&delete.prepared_changes);
        let run = |sql: &str, session: SessionNames| {
            classify(
                sql,
                &ClassifyContext {
                    default_schema: "public",
                    prepared: &prepared,
                    max_statement_bytes: 1 << 20,
                    catalog: Catalog::Known(&f),
                    session,
                },
            )
        };
        let fresh = SessionNames::default();
        assert_eq!(
            shapes(&run("EXECUTE d(1)", fresh)),
            vec![k(Kind::Delete, &["app.orders"])]
        );
        let moved = SessionNames {
            search_path_changed: true,
            ..fresh
        };
        for (sql, session) in [
            ("EXECUTE d(1)", moved),
            ("SET search_path = vault; EXECUTE d(1)", fresh),
            (
                "SELECT set_config('search_path', 'vault', false); EXPLAIN ANALYZE EXECUTE d(1)",
                fresh,
            ),
            (
                "CREATE TEMP VIEW orders AS SELECT * FROM hr.salaries; EXECUTE d(1)",
                fresh,
            ),
        ] {
            let c = run(sql, session);
            assert!(
                c.effects.iter().any(|e| e.kind == Kind::Execute),
                "{sql}: judged as what was prepared: {:?}",
                c.effects
            );
            assert!(!c.effects.iter().any(|e| e.kind == Kind::Delete), "{sql}");
        }
    }

    #[test]
    fn writing_pg_settings_is_a_setting_of_any_name() {
        let f = facts();
        for sql in [
            "UPDATE pg_settings SET setting = 'hr' WHERE name = 'search_path'",
            "UPDATE pg_catalog.pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
        ] {
            let c = in_session(sql, Catalog::Known(&f), SessionNames::default());
            assert!(
                c.effects.iter().any(|e| e.kind == Kind::ParserSetting),
                "{sql}: {:?}",
                c.effects
            );
            assert!(c.changes_search_path, "{sql}");
        }
        // Reading it is not.
        let c = in_session(
            "SELECT setting FROM pg_settings",
            Catalog::Known(&f),
            SessionNames::default(),
        );
        assert!(
            !c.effects.iter().any(|e| e.kind == Kind::ParserSetting),
            "{:?}",
            c.effects
        );
    }

    #[test]
    fn after_the_search_path_changed_a_bare_call_may_be_any_schemas() {
        let f = facts();
        let moved = SessionNames {
            search_path_changed: true,
            ..SessionNames::default()
        };
        // `lower` is defined outside pg_catalog: it may be that one.
        assert_eq!(
            on_session("SELECT lower(id) FROM public.orders", Catalog::Known(&f), moved),
            vec![
                k(Kind::Select, &["public.orders"]),
                k(Kind::Function, &["*.lower"])
            ]
        );
        // Qualified calls are what they say; unshadowed built-ins stay so.
        assert_eq!(
            on_session("SELECT util.audit(1), upper('a')", Catalog::Known(&f), moved),
            vec![k(Kind::Select, &[]), k(Kind::Function, &["util.audit"])]
        );
        // In the text that sets the path, too.
        assert_eq!(
            on_session(
                "SET search_path = vault; SELECT lower(1)",
                Catalog::Known(&f),
                SessionNames::default()
            ),
            vec![
                k(Kind::Set, &[]),
                k(Kind::Select, &[]),
                k(Kind::Function, &["*.lower"])
            ]
        );
    }

    /// Each effect's kind with its functions (FUNCTION) or tables.
    fn on_session(sql: &str, catalog: Catalog<'_>, session: SessionNames) -> Vec<(Kind, Vec<String>)> {
        in_session(sql, catalog, session)
            .effects
            .into_iter()
            .map(|e| {
                let names = if e.kind == Kind::Function {
                    e.functions
                } else {
                    e.tables
                };
                (e.kind, names)
            })
            .collect()
    }

    #[test]
    fn after_the_search_path_changed_an_unqualified_name_may_be_any_schemas() {
        let f = facts();
        let moved = SessionNames {
            search_path_changed: true,
            ..SessionNames::default()
        };
        let c = in_session("DELETE FROM orders WHERE id = 1", Catalog::Known(&f), moved);
        assert_eq!(
            shapes(&c),
            vec![k(Kind::Delete, &["app.orders", "public.orders", "*.orders"])]
        );
        assert!(c.uses_session, "never cached across sessions");
        // A view of that name anywhere counts with what it runs.
        let c = in_session("SELECT * FROM v_bad", Catalog::Known(&f), moved);
        assert!(
            c.effects
                .iter()
                .any(|e| e.kind == Kind::Function && e.functions == ["util.audit"]),
            "{:?}",
            c.effects
        );
        // pg_catalog's names too: the path may put a schema before it.
        let c = in_session("SELECT * FROM pg_class", Catalog::Known(&f), moved);
        assert!(
            c.effects[0].tables.contains(&"*.pg_class".to_owned()),
            "{:?}",
            c.effects
        );
        // Qualified names are what they say.
        let c = in_session("DELETE FROM public.orders", Catalog::Known(&f), moved);
        assert_eq!(shapes(&c), vec![k(Kind::Delete, &["public.orders"])]);
        // Without facts, the same.
        let c = in_session("DELETE FROM orders", Catalog::Assumed, moved);
        assert_eq!(shapes(&c), vec![k(Kind::Delete, &["public.orders", "*.orders"])]);
    }

    #[test]
    fn temporary_relations_made_without_temp_are_seen_too() {
        let f = facts();
        for sql in [
            "CREATE VIEW pg_temp.orders AS SELECT id, pay FROM hr.salaries",
            "CREATE TABLE pg_temp_3.x (id int)",
            "SELECT * INTO TEMP orders FROM hr.salaries",
        ] {
            let c = ctx_classify(sql, Catalog::Known(&f), false);
            assert!(c.creates_temp, "{sql}: {c:?}");
        }
        let c = ctx_classify(
            "SELECT * INTO TEMP orders FROM hr.salaries",
            Catalog::Known(&f),
            false,
        );
        let create = c
            .effects
            .iter()
            .find(|e| e.kind == Kind::Create)
            .expect("a CREATE");
        assert_eq!(create.tables, vec!["pg_temp.orders"]);
        // What a temporary relation runs is never known.
        let c = ctx_classify("DELETE FROM pg_temp.orders", Catalog::Known(&f), true);
        assert!(c.effects.contains(&Effect {
            functions: vec!["code of pg_temp.orders".into()],
            ..Effect::new(Kind::Function)
        }));
    }

    #[test]
    fn unnest_in_from_is_a_call() {
        let mut b = RelationsBuilder::default();
        b.relation("public.orders".into(), RelationKind::Table);
        let f = CatalogFacts::new(vec!["public".into()], ["unnest".to_owned()], b.build());
        assert_eq!(
            on("SELECT * FROM unnest(ARRAY[1, 2])", Catalog::Known(&f)),
            vec![k(Kind::Select, &[]), k(Kind::Function, &["unnest"])]
        );
    }

    #[test]
    fn a_session_changing_the_catalog_distrusts_every_relation() {
        let f = facts();
        let c = ctx_classify("DELETE FROM orders WHERE id = 2", Catalog::Changing(&f), false);
        assert!(c.uses_session);
        assert_eq!(
            c.effects
                .iter()
                .map(|e| (e.kind, e.tables.clone(), e.functions.clone()))
                .collect::<Vec<_>>(),
            vec![
                (Kind::Delete, vec!["app.orders".to_owned()], vec![]),
                (Kind::Function, vec![], vec!["code of app.orders".to_owned()])
            ]
        );
    }

    #[test]
    fn code_on_writes_counts_unless_it_makes_a_value_for_the_row() {
        let mut b = RelationsBuilder::default();
        for t in ["public.serial", "public.wiped", "public.staging"] {
            b.relation(t.into(), RelationKind::Table);
        }
        b.write_call("public.serial", call("pg_catalog.nextval", true));
        b.write_call("public.wiped", call("pg_catalog.pg_terminate_backend", true));
        b.write_call("public.staging", call("public.on_truncate", true));
        let f = CatalogFacts::new(vec!["public".into()], Vec::<String>::new(), b.build());
        let known = Catalog::Known(&f);
        assert_eq!(
            on("INSERT INTO serial DEFAULT VALUES", known),
            vec![k(Kind::Insert, &["public.serial"])]
        );
        assert!(
            on("INSERT INTO wiped DEFAULT VALUES", known)
                .contains(&k(Kind::Function, &["pg_catalog.pg_terminate_backend"]))
        );
        assert!(on("TRUNCATE staging", known).contains(&k(Kind::Function, &["public.on_truncate"])));
    }

    #[test]
    fn row_level_security_runs_on_every_access() {
        let f = facts();
        let known = Catalog::Known(&f);
        assert_eq!(
            on("SELECT * FROM guarded", known),
            vec![
                k(Kind::Select, &["public.guarded", "hr.salaries"]),
                k(Kind::Function, &["util.audit"])
            ]
        );
        assert_eq!(
            on("DELETE FROM guarded", known),
            vec![
                k(Kind::Delete, &["public.guarded", "hr.salaries"]),
                k(Kind::Function, &["util.audit"])
            ]
        );
    }

    #[test]
    fn facts_of_the_same_content_compare_equal_and_keys_differ() {
        let (a, b) = (facts(), facts());
        assert_eq!(a, b);
        assert_ne!(Catalog::Known(&a).key(), Catalog::Known(&b).key());
        assert_ne!(Catalog::Known(&a).key(), Catalog::Assumed.key());
        let empty = CatalogFacts::new(vec![], Vec::<String>::new(), HashMap::new());
        assert_ne!(a, empty);
    }
}
