use super::*;

pub(crate) const SEED: &str = r#"
nats:
  url: nats://127.0.0.1:4222
identity:
  issuer: https://issuer.example/v2.0
  group_names:
    db-maintenance-agents: 6f1d1a52-0c3e-4b43-9d6e-2f1b5d0c9a11
    db-reviewers: 0b7e2f4c-8a5d-4c1e-9f3a-7d2c6b1e4a90
approvals:
  reviewers: [db-reviewers]
  timeout: 15m
connections:
  - name: prod-maintenance
    upstream: postgres://maint@127.0.0.1:5432/shop
    password_env: PROD_MAINT_PASSWORD
policies:
  - policy: db-maintenance-agents
    connection: prod-maintenance
    rules:
      - match: SELECT
        action: allow
      - match: DELETE|DROP|UPDATE
        action: require-approval
    record: true
"#;

fn err(text: &str) -> PolicyError {
    PolicySet::from_yaml(text, "p.yaml", &ApprovalDefaults::default()).expect_err("should be rejected")
}

#[test]
fn seed_config_loads_with_defaults_resolved() {
    let set = PolicySet::from_config_yaml(SEED, "airlock.yaml").unwrap();
    let p = set
        .select_one(Some("prod-maintenance"), Some("db-maintenance-agents"))
        .unwrap();
    assert_eq!(p.rules.len(), 2);
    assert_eq!(p.rules[1].reviewers, vec!["db-reviewers"]);
    assert_eq!(p.rules[1].timeout, Duration::from_secs(900));
    assert_eq!(
        p.rules[1].text,
        "match: UPDATE|DELETE|DROP, action: require-approval"
    );
    assert_eq!(p.default, Action::RequireApproval);
    assert!(p.record);
    assert_eq!(p.digest().len(), 64);
    // The group's object id names the same policy.
    assert!(
        set.select_one(None, Some("6f1d1a52-0c3e-4b43-9d6e-2f1b5d0c9a11"))
            .is_ok()
    );
}

#[test]
fn digest_ignores_layout_and_key_order() {
    let a = Policy::from_yaml(
        "policy: g\nconnection: c\nreviewers: [r]\nrules:\n  - match: SELECT\n    action: allow\n",
        "a",
        &ApprovalDefaults::default(),
    )
    .unwrap();
    let b = Policy::from_yaml(
        "# comment\nrules: [{action: allow, match: [select]}]\nreviewers: [r]\nconnection: c\npolicy: g\nrecord: false\n",
        "b",
        &ApprovalDefaults::default(),
    )
    .unwrap();
    assert_eq!(a.digest(), b.digest());
    let c = Policy::from_yaml(
        "policy: g\nconnection: c\nreviewers: [r]\nrules:\n  - match: SELECT\n    action: deny\n",
        "c",
        &ApprovalDefaults::default(),
    )
    .unwrap();
    assert_ne!(a.digest(), c.digest());
}

fn line_of(e: &PolicyError) -> Option<usize> {
    e.location().and_then(|l| l.line)
}

#[test]
fn unknown_kind_names_its_line_and_the_known_kinds() {
    let e =
        err("policy: g\nconnection: c\nreviewers: [r]\nrules:\n  - match: SELECT|DELET\n    action: deny\n");
    assert_eq!(line_of(&e), Some(5), "{e}");
    let text = e.to_string();
    assert!(text.contains("unknown statement kind `DELET`"), "{text}");
    assert!(text.contains("hint: write one of: SELECT"), "{text}");
    assert!(text.starts_with("p.yaml:5:"), "{text}");
}

#[test]
fn unknown_key_and_bad_duration_and_allow_default() {
    let e = err("policy: g\nconnection: c\nrules:\n  - match: SELECT\n    acton: allow\n");
    assert_eq!(line_of(&e), Some(5), "{e}");
    assert!(e.to_string().contains("unknown field `acton`"), "{e}");
    assert!(e.to_string().contains("hint: did you mean `action`?"), "{e}");
    let e = err(
        "policy: g\nconnection: c\nreviewers: [r]\nrules:\n  - match: DELETE\n    action: require-approval\n    timeout: soon\n",
    );
    assert_eq!(line_of(&e), Some(7), "{e}");
    assert!(e.to_string().contains("hint: write e.g. `timeout: 15m`"), "{e}");
    let e = err("policy: g\nconnection: c\ndefault: allow\nrules:\n  - match: SELECT\n    action: allow\n");
    assert_eq!(line_of(&e), Some(1), "{e}");
    assert!(e.to_string().contains("record-only policy"), "{e}");
    assert!(
        e.to_string()
            .contains("`default: require-approval` or `default: deny`"),
        "{e}"
    );
}

/// Every kind but transaction control (always allowed), as a `match:`.
fn every_kind() -> String {
    judged_kinds().map(Kind::name).collect::<Vec<_>>().join("|")
}

#[test]
fn a_record_only_policy_may_allow_what_it_cannot_parse() {
    let text = format!(
        "policy: dba\nconnection: c\nrecord: true\nunparsed: allow\ndefault: allow\nrules:\n  - match: {}\n    action: allow\n",
        every_kind()
    );
    let p = Policy::from_yaml(&text, "p.yaml", &ApprovalDefaults::default()).unwrap();
    assert!(p.records_only());
    let v = p.evaluate("CHECKPOINT", "public", &crate::PreparedStatements::new());
    assert_eq!(v.action, Action::Allow, "{}", v.reason);
    assert!(!v.parsed());
    assert!(v.reason.contains("record-only"), "{}", v.reason);
    let v = p.evaluate("DROP TABLE orders", "public", &crate::PreparedStatements::new());
    assert_eq!(v.action, Action::Allow, "{}", v.reason);
    // Oversized text is still refused: it could not be recorded whole.
    let big = format!("SELECT '{}'", "x".repeat(2 << 20));
    assert_eq!(
        p.evaluate(&big, "public", &crate::PreparedStatements::new())
            .action,
        Action::Deny
    );
}

#[test]
fn unparsed_allow_is_refused_unless_the_policy_gates_nothing() {
    let all = every_kind();
    // A rule that holds something: the policy gates, so it must not let
    // unreadable text through.
    let e = err(&format!(
        "policy: g\nconnection: c\nrecord: true\nunparsed: allow\nreviewers: [r]\nrules:\n  - match: DELETE\n    action: require-approval\n  - match: {all}\n    action: allow\n"
    ));
    assert_eq!(line_of(&e), Some(1), "{e}");
    assert!(e.to_string().contains("rule 1 is `require-approval`"), "{e}");
    // A table-scoped allow does not cover the kind.
    let e = err(&format!(
        "policy: g\nconnection: c\nrecord: true\nunparsed: allow\nrules:\n  - match: {}\n    action: allow\n  - match: DELETE\n    tables: [public.logs]\n    action: allow\n",
        all.split('|')
            .filter(|k| *k != "DELETE")
            .collect::<Vec<_>>()
            .join("|")
    ));
    assert!(e.to_string().contains("allows DELETE"), "{e}");
    // Missing kinds are named.
    let e = err(
        "policy: g\nconnection: c\nrecord: true\nunparsed: allow\nrules:\n  - match: SELECT\n    action: allow\n",
    );
    assert!(
        e.to_string().contains("allows ") && e.to_string().contains("DROP"),
        "{e}"
    );
    // Everything allowed but nothing recorded: refused too.
    let e = err(&format!(
        "policy: g\nconnection: c\nunparsed: allow\nrules:\n  - match: {all}\n    action: allow\n"
    ));
    assert!(e.to_string().contains("record: true"), "{e}");
    // Without `unparsed: allow`, allowing every kind is an ordinary policy.
    let p = Policy::from_yaml(
        &format!("policy: g\nconnection: c\nrules:\n  - match: {all}\n    action: allow\n"),
        "p.yaml",
        &ApprovalDefaults::default(),
    )
    .unwrap();
    assert!(!p.records_only());
    assert_ne!(
        p.evaluate("CHECKPOINT", "public", &crate::PreparedStatements::new())
            .action,
        Action::Allow
    );
}

#[test]
fn approval_rule_without_reviewers_is_reported_at_the_rule() {
    let e = err(
        "policy: g\nconnection: c\nrules:\n  - match: SELECT\n    action: allow\n  - match: DELETE\n    action: require-approval\n",
    );
    assert_eq!(line_of(&e), Some(6), "{e}");
    assert!(e.to_string().contains("names no reviewers"), "{e}");
    // The same rule is fine when airlock.yaml's approvals: names reviewers.
    let defaults = ApprovalDefaults {
        reviewers: vec!["db-reviewers".into()],
        timeout: None,
        require_acrs: Vec::new(),
    };
    let ok = "policy: g\nconnection: c\nrules:\n  - match: DELETE\n    action: require-approval\n";
    assert!(Policy::from_yaml(ok, "p.yaml", &defaults).is_ok());
}

#[test]
fn an_empty_reviewers_list_on_the_policy_is_reported() {
    // Its holds could be approved by no one, the default's included; the
    // airlock.yaml default must not hide that.
    let text = "policy: g\nconnection: c\nreviewers: []\nrules:\n  - match: SELECT\n    action: allow\n";
    let defaults = ApprovalDefaults {
        reviewers: vec!["db-reviewers".into()],
        timeout: None,
        require_acrs: Vec::new(),
    };
    let e = Policy::from_yaml(text, "p.yaml", &defaults).expect_err("should be rejected");
    assert!(e.to_string().contains("`reviewers: []`"), "{e}");
    assert_eq!(line_of(&e), Some(1), "{e}");
}

#[test]
fn config_checks_connections_and_groups() {
    let bad = SEED.replace("connection: prod-maintenance", "connection: prod");
    let e = PolicySet::from_config_yaml(&bad, "airlock.yaml").unwrap_err();
    assert!(e.to_string().contains("unknown connection `prod`"), "{e}");
    assert_eq!(line_of(&e), Some(17), "{e}");
    let bad = SEED.replace("- policy: db-maintenance-agents", "- policy: agents");
    let e = PolicySet::from_config_yaml(&bad, "airlock.yaml").unwrap_err();
    assert!(e.to_string().contains("unknown group `agents`"), "{e}");
}

#[test]
fn tables_must_be_qualified() {
    let e =
        err("policy: g\nconnection: c\nrules:\n  - match: SELECT\n    tables: [orders]\n    action: allow\n");
    assert!(e.to_string().contains("write `public.orders`"), "{e}");
    assert_eq!(line_of(&e), Some(5), "{e}");
}

#[test]
fn table_patterns_fold_as_postgresql_folds_names() {
    // `public.Orders` is the table `CREATE TABLE Orders` made: public.orders.
    // Kept as written it would never match, and this deny would do nothing.
    let rules = |pattern: &str| {
        let text = format!(
            "policy: g\nconnection: c\nrules:\n  - match: SELECT\n    tables: ['{pattern}']\n    action: deny\n"
        );
        PolicySet::from_yaml(&text, "p.yaml", &ApprovalDefaults::default())
            .map(|set| set.policies[0].rules[0].tables.clone())
            .map_err(|e| e.to_string())
    };
    assert_eq!(rules("public.Orders"), Ok(vec!["public.orders".to_owned()]));
    assert_eq!(rules("HR.*"), Ok(vec!["hr.*".to_owned()]));
    assert_eq!(rules(r#"public."Orders""#), Ok(vec!["public.Orders".to_owned()]));
    assert_eq!(
        rules(r#""My Schema"."a""b""#),
        Ok(vec![r#"My Schema.a"b"#.to_owned()])
    );
    // Only ASCII folds, as in PostgreSQL.
    assert_eq!(rules("public.Ärger"), Ok(vec!["public.Ärger".to_owned()]));
    for bad in [r#"public."Orders"#, r#"public."a*""#, "public.", r#""a.b""#] {
        assert!(rules(bad).is_err(), "{bad}");
    }
}

#[test]
fn approvals_out_of_range_is_reported_at_the_value() {
    let e = err(
        "policy: g\nconnection: c\nreviewers: [r]\nrules:\n  - match: DELETE\n    action: require-approval\n    approvals: 0\n",
    );
    assert_eq!(line_of(&e), Some(7), "{e}");
    assert!(e.to_string().contains("from 1 to 100"), "{e}");
}

#[test]
fn do_may_be_allowed_only_in_a_record_only_policy() {
    // A DO block runs any code (a DELETE inside one included): allowing it
    // in a policy that gates anything would let everything through.
    let e = err(
        "policy: g\nconnection: c\nreviewers: [r]\nrules:\n  - match: SELECT|DO\n    action: allow\n  - match: DELETE\n    action: require-approval\n",
    );
    assert!(e.to_string().contains("rule 1 allows DO"), "{e}");
    // Held or denied, it loads.
    for action in ["require-approval", "deny"] {
        Policy::from_yaml(
            &format!(
                "policy: g\nconnection: c\nreviewers: [r]\nrules:\n  - match: DO\n    action: {action}\n"
            ),
            "p.yaml",
            &ApprovalDefaults::default(),
        )
        .unwrap_or_else(|e| panic!("{action}: {e}"));
    }
}

#[test]
fn step_up_comes_from_approvals_the_policy_or_the_rule() {
    let text = SEED
        .replace("  timeout: 15m\n", "  timeout: 15m\n  require_acrs: [c1]\n")
        .replace(
            "      - match: DELETE|DROP|UPDATE\n        action: require-approval\n",
            "      - match: DELETE|DROP|UPDATE\n        action: require-approval\n      - match: TRUNCATE\n        action: require-approval\n        require_acrs: [c2, c1]\n",
        );
    let set = PolicySet::from_config_yaml(&text, "airlock.yaml").unwrap();
    let p = &set.policies[0];
    assert_eq!(p.require_acrs, ["c1"], "default and unparsed holds step up too");
    assert!(
        p.rules[0].require_acrs.is_empty(),
        "an allow rule needs no step-up"
    );
    assert_eq!(p.rules[1].require_acrs, ["c1"]);
    assert_eq!(p.rules[2].require_acrs, ["c1", "c2"], "a rule adds to the floor");
    assert!(
        p.rules[2].text.contains("require_acrs: [c1, c2]"),
        "{}",
        p.rules[2].text
    );
    // Policies without step-up keep the digest they had.
    let plain = PolicySet::from_config_yaml(SEED, "airlock.yaml").unwrap();
    let json = serde_json::to_string(&plain.policies[0]).unwrap();
    assert!(!json.contains("require_acrs"), "{json}");
}

#[test]
fn step_up_in_approvals_is_checked() {
    let text = SEED.replace(
        "  timeout: 15m\n",
        "  timeout: 15m\n  require_acrs: [\"c1;drop\"]\n",
    );
    let e = PolicySet::from_config_yaml(&text, "airlock.yaml").expect_err("not a context id");
    assert!(e.to_string().contains("approvals: `require_acrs` has"), "{e}");
}

#[test]
fn step_up_is_checked() {
    let base = "policy: g\nconnection: c\nreviewers: [r]\nrules:\n";
    for (rules, expected) in [
        (
            "  - match: SELECT\n    action: allow\n    require_acrs: [c1]\n",
            "only apply to require-approval rules",
        ),
        (
            "  - match: DELETE\n    action: require-approval\n    require_acrs: []\n",
            "`require_acrs` is empty",
        ),
        (
            "  - match: DELETE\n    action: require-approval\n    require_acrs: [\"c 1\"]\n",
            "not an authentication context id",
        ),
    ] {
        let e = err(&format!("{base}{rules}"));
        assert!(e.to_string().contains(expected), "{rules}: {e}");
        assert!(e.to_string().contains("p.yaml:5:"), "names the rule's line: {e}");
    }
}

#[test]
fn max_grant_ttl_is_at_most_eight_hours_and_left_out_of_the_digest_when_unset() {
    let base =
        "policy: g\nconnection: c\nreviewers: [r]\nrules:\n  - match: DELETE\n    action: require-approval\n";
    let defaults = ApprovalDefaults::default();
    let plain = Policy::from_yaml(base, "p.yaml", &defaults).expect("loads");
    assert_eq!(plain.max_grant_ttl, None);
    let two = Policy::from_yaml(&format!("max_grant_ttl: 2h\n{base}"), "p.yaml", &defaults).expect("loads");
    assert_eq!(two.max_grant_ttl, Some(Duration::from_secs(7200)));
    assert_ne!(
        two.digest(),
        plain.digest(),
        "the key changes what the policy allows"
    );
    // Left out of the digest when unset: a policy from before the key
    // keeps its digest (the serialised form has no such field).
    let serialized = serde_json::to_string(&plain).expect("json");
    assert!(!serialized.contains("max_grant_ttl"), "{serialized}");
    let e = err(&format!("max_grant_ttl: 9h\n{base}"));
    assert!(e.to_string().contains("at most 8h"), "{e}");
    assert_eq!(line_of(&e), Some(1), "{e}");
}
