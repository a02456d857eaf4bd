//! What one uncached verdict costs, in instructions under callgrind (stable
//! on a noisy machine, unlike time):
//!
//! ```text
//! cargo build --release -p airlock-policy --example verdict_cost
//! valgrind --tool=callgrind target/release/examples/verdict_cost select 1001
//! valgrind --tool=callgrind target/release/examples/verdict_cost select 1
//! ```
//!
//! Subtract the second count from the first and divide by 1,000. `select`
//! is pgbench's read with its literal (a fresh text each time, so a cache
//! never hits, as under `pgbench -S` in the simple protocol); `join` is an
//! ORM-style join.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use airlock_policy::config::ApprovalDefaults;
use airlock_policy::{Policy, PreparedStatements};

const POLICY: &str = "\
policy: cost
connection: bench
reviewers: [db-reviewers]
rules:
  - match: SELECT
    action: allow
  - match: DELETE|DROP|UPDATE
    action: require-approval
";

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "select".into());
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let policy = Policy::from_yaml(POLICY, "cost", &ApprovalDefaults::default()).expect("policy");
    let session = PreparedStatements::new();
    let text = |i: u64| match which.as_str() {
        "join" => format!(
            "SELECT t0.id, t0.email, t1.city, count(t2.id) AS orders FROM customers AS t0 \
             LEFT OUTER JOIN addresses AS t1 ON t1.customer_id = t0.id \
             LEFT OUTER JOIN orders AS t2 ON t2.customer_id = t0.id \
             WHERE t0.active = true AND t0.email ILIKE 'a{i}%' GROUP BY t0.id, t0.email, t1.city \
             ORDER BY orders DESC LIMIT 20 OFFSET {i}"
        ),
        _ => format!(
            "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
            1 + i * 7919 % 1_000_000
        ),
    };
    let texts: Vec<String> = (0..n).map(text).collect();
    let mut allowed = 0u64;
    for sql in &texts {
        let verdict = policy.evaluate(black_box(sql), "public", &session);
        allowed += u64::from(verdict.action == airlock_policy::Action::Allow);
    }
    println!("{allowed} of {n} allowed");
}
