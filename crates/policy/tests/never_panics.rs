//! Property tests: whatever the text, evaluation returns a verdict, does not
//! panic, finishes within a bound, and never allows what it could not parse.

use std::time::{Duration, Instant};

use airlock_policy::config::ApprovalDefaults;
use airlock_policy::{Action, Decision, Policy, PreparedStatements};
use proptest::prelude::*;

const POLICY: &str = "policy: g\nconnection: c\nreviewers: [r]\nrules:\n  - match: SELECT\n    action: allow\n  - match: DELETE|DROP|UPDATE\n    action: require-approval\n";

/// Generous for a debug build on a busy machine; the benchmark measures speed.
const BOUND: Duration = Duration::from_secs(2);

fn policy() -> Policy {
    Policy::from_yaml(POLICY, "prop", &ApprovalDefaults::default()).expect("policy")
}

/// SQL-ish token soup: reaches deeper into the parser than random bytes.
fn sqlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("SELECT"),
        Just("DELETE"),
        Just("FROM"),
        Just("WITH"),
        Just("AS"),
        Just("("),
        Just(")"),
        Just(";"),
        Just("x"),
        Just("orders"),
        Just("'s'"),
        Just("$$"),
        Just("$a$"),
        Just("/*"),
        Just("*/"),
        Just("--"),
        Just("\n"),
        Just("U&\""),
        Just("\""),
        Just("EXPLAIN"),
        Just("ANALYZE"),
        Just("RETURNING"),
        Just("*"),
        Just(","),
        Just("pg_sleep(1)"),
        Just("PREPARE"),
        Just("EXECUTE"),
        Just("COPY"),
        Just("PROGRAM"),
        Just("INTO"),
        Just("DO"),
        Just("E'\\''"),
        Just("1"),
        Just("::"),
        Just("["),
    ];
    proptest::collection::vec(token, 0..40).prop_map(|t| t.join(" "))
}

fn check(policy: &Policy, sql: &str) {
    let started = Instant::now();
    let v = policy.evaluate(sql, "public", &PreparedStatements::new());
    assert!(
        started.elapsed() < BOUND,
        "took {:?} for {sql:?}",
        started.elapsed()
    );
    if !v.parsed() {
        assert_ne!(v.action, Action::Allow, "unparsed text allowed: {sql:?}");
    }
    if matches!(v.decision, Decision::Default) {
        assert_ne!(v.action, Action::Allow);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_yields_a_verdict(sql in any::<String>()) {
        check(&policy(), &sql);
    }

    #[test]
    fn sql_like_text_yields_a_verdict(sql in sqlish()) {
        check(&policy(), &sql);
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let p = policy();
    for depth in [100, 10_000, 200_000] {
        let sql = format!("SELECT {}1{}", "(".repeat(depth), ")".repeat(depth));
        check(&p, &sql);
        let v = p.evaluate(&sql, "public", &PreparedStatements::new());
        assert_ne!(v.action, Action::Allow, "depth {depth}");
    }
}
