//! Verdict cost over a realistic mix: pgbench's statements, ORM-style queries
//! with joins and CTEs, DDL, and a few bypass attempts. `uncached` parses,
//! classifies and judges every time; `cached` is a warm [`VerdictCache`] hit;
//! `stages` splits the cost into sqlparser alone and classification (parse
//! plus our walk) for two statements.
//! Targets from the policy issue: cached at most 2 us, uncached median at most 30 us.

use std::hint::black_box;

use airlock_policy::config::ApprovalDefaults;
use airlock_policy::{ClassifyContext, Policy, PreparedStatements, VerdictCache, classify};
use criterion::{Criterion, criterion_group, criterion_main};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

const POLICY: &str = "\
policy: db-maintenance-agents
connection: prod-maintenance
reviewers: [db-reviewers]
rules:
  - match: SELECT
    action: allow
  - match: DELETE|DROP|UPDATE
    action: require-approval
  - match: INSERT
    tables: [public.pgbench_history, public.orders]
    action: allow
";

const MIX: &[(&str, &str)] = &[
    (
        "pgbench_update_accounts",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    ),
    (
        "pgbench_select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    ),
    (
        "pgbench_update_tellers",
        "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
    ),
    (
        "pgbench_insert_history",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
    ),
    (
        "orm_join",
        "SELECT t0.id, t0.email, t1.city, count(t2.id) AS orders FROM customers AS t0 \
         LEFT OUTER JOIN addresses AS t1 ON t1.customer_id = t0.id \
         LEFT OUTER JOIN orders AS t2 ON t2.customer_id = t0.id \
         WHERE t0.active = true AND t0.email ILIKE $1 GROUP BY t0.id, t0.email, t1.city \
         ORDER BY orders DESC LIMIT $2 OFFSET $3",
    ),
    (
        "orm_cte",
        "WITH recent AS (SELECT customer_id, sum(total) AS spent FROM orders \
         WHERE created_at > now() - interval '30 days' GROUP BY customer_id) \
         SELECT c.id, c.name, r.spent FROM customers c JOIN recent r ON r.customer_id = c.id \
         WHERE r.spent > $1 ORDER BY r.spent DESC",
    ),
    (
        "orm_exists",
        "SELECT EXISTS(SELECT 1 FROM users WHERE lower(email) = lower($1) AND deleted_at IS NULL)",
    ),
    (
        "ddl_create",
        "CREATE TABLE IF NOT EXISTS audit_events (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), body jsonb)",
    ),
    (
        "ddl_alter",
        "ALTER TABLE orders ADD COLUMN IF NOT EXISTS note text",
    ),
    (
        "ddl_index",
        "CREATE INDEX CONCURRENTLY orders_created_at_idx ON orders (created_at)",
    ),
    (
        "bypass_cte_delete",
        "WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x",
    ),
    (
        "bypass_function",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
    ),
];

fn bench(c: &mut Criterion) {
    let policy = Policy::from_yaml(POLICY, "bench", &ApprovalDefaults::default()).expect("bench policy");
    let session = PreparedStatements::new();

    let mut uncached = c.benchmark_group("uncached");
    for (name, sql) in MIX {
        uncached.bench_function(*name, |b| {
            b.iter(|| black_box(policy.evaluate(black_box(sql), "public", &session)))
        });
    }
    uncached.finish();

    // Where the uncached time goes, for the slowest and the most common statement.
    let mut stages = c.benchmark_group("stages");
    for (name, sql) in MIX
        .iter()
        .filter(|(n, _)| *n == "orm_join" || *n == "pgbench_select")
    {
        stages.bench_function(format!("{name}/parse_only"), |b| {
            b.iter(|| black_box(Parser::parse_sql(&PostgreSqlDialect {}, black_box(sql))))
        });
        let ctx = ClassifyContext {
            default_schema: "public",
            prepared: &session,
            max_statement_bytes: 1 << 20,
            catalog: airlock_policy::Catalog::Assumed,
            session: airlock_policy::SessionNames::default(),
        };
        stages.bench_function(format!("{name}/classify"), |b| {
            b.iter(|| black_box(classify(black_box(sql), &ctx)))
        });
    }
    stages.finish();

    let cache = VerdictCache::default();
    let mut cached = c.benchmark_group("cached");
    for (name, sql) in MIX {
        cache.evaluate(&policy, sql, "public", &session);
        cached.bench_function(*name, |b| {
            b.iter(|| black_box(cache.evaluate(&policy, black_box(sql), "public", &session)))
        });
    }
    cached.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
