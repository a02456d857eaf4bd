//! The `identity:` section as an operator writes it in `airlock.yaml`.

use std::time::Duration;

use airlock_identity::{IdentitySection, OneOrMany, Verifier};

const AIRLOCK_YAML: &str = r#"
nats:
  url: nats://127.0.0.1:4222
  stream: AIRLOCK
identity:
  issuer: https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0
  audience: api://airlock
  jwks_uri: https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/discovery/v2.0/keys
  groups_claim: groups
  group_names:
    db-maintenance-agents: 6f1d1a52-0c3e-4b43-9d6e-2f1b5d0c9a11
    db-reviewers: 0b7e2f4c-8a5d-4c1e-9f3a-7d2c6b1e4a90
approvals:
  reviewers: [db-reviewers]
  timeout: 15m
policies:
  - policy: db-maintenance-agents
    connection: prod-maintenance
    rules:
      - match: SELECT
        action: allow
"#;

#[tokio::test]
async fn design_example_parses_and_builds_a_verifier() {
    let section: IdentitySection = serde_norway::from_str(AIRLOCK_YAML).unwrap();
    let config = section.identity;
    assert_eq!(config.audiences(), ["api://airlock"]);
    assert_eq!(config.leeway, Duration::from_secs(60));
    assert_eq!(config.max_token_bytes, 16 * 1024);
    assert_eq!(
        config.group_name("6f1d1a52-0c3e-4b43-9d6e-2f1b5d0c9a11"),
        Some("db-maintenance-agents")
    );
    // No network at construction.
    Verifier::new(config).unwrap();
}

#[test]
fn issuer_list_leeway_and_typos() {
    let yaml = r#"
identity:
  issuer:
    - https://sts.windows.net/t/
    - https://login.microsoftonline.com/t/v2.0
  audience: [api://airlock, 9b2c0f4e-0000-0000-0000-000000000001]
  leeway: 2m
  max_token_bytes: 8192
"#;
    let section: IdentitySection = serde_norway::from_str(yaml).unwrap();
    assert!(matches!(section.identity.issuer, OneOrMany::Many(ref v) if v.len() == 2));
    assert_eq!(section.identity.audiences().len(), 2);
    assert_eq!(section.identity.leeway, Duration::from_secs(120));
    section.identity.validate().unwrap();

    let typo = "identity:\n  issuer: https://x/v2.0\n  audience: a\n  group_name: {}\n";
    let err = serde_norway::from_str::<IdentitySection>(typo).unwrap_err();
    assert!(err.to_string().contains("group_name"), "{err}");

    let insecure = "identity:\n  issuer: https://x/v2.0\n  audience: a\n  jwks_uri: http://keys.example/k\n";
    let section: IdentitySection = serde_norway::from_str(insecure).unwrap();
    let err = Verifier::new(section.identity).unwrap_err();
    assert_eq!(err.code(), "config");
    assert!(err.to_string().contains("loopback"), "{err}");
}
