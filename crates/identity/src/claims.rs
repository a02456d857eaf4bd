//! Claim checks (RFC 7519 §4.1) and the Entra claim mapping to [`Identity`].
//!
//! Runs only on claims whose signature has already been verified. Owns the
//! time checks (`exp` required, `nbf` optional, both with leeway), the exact
//! `iss` and `aud` comparison, group overage, and which Entra claim feeds
//! which [`Identity`] field. No keys, no network.

use std::time::Duration;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::config::IdentityConfig;
use crate::error::{VerifyError, clip};
use crate::identity::{
    ClientAppId, GroupId, GroupMembership, GroupsSource, Identity, PrincipalKind, SubjectId, TenantId,
};

/// A mapped token, and whether its groups were left out (group overage).
#[derive(Debug)]
pub(crate) struct Mapped {
    pub identity: Identity,
    pub overage: bool,
}

/// Checks the registered claims and maps the rest. `now` is Unix seconds.
pub(crate) fn check_and_map(
    claims: &Map<String, Value>,
    config: &IdentityConfig,
    now: i64,
) -> Result<Mapped, VerifyError> {
    let issuer = check_issuer(claims, config)?;
    check_audience(claims, config)?;
    let expires = check_times(claims, config.leeway, now)?;
    map_identity(claims, config, issuer, expires)
}

fn check_issuer(claims: &Map<String, Value>, config: &IdentityConfig) -> Result<String, VerifyError> {
    let found = match claims.get("iss") {
        Some(Value::String(iss)) => iss,
        Some(_) => return Err(invalid("iss", "not a string")),
        None => return Err(VerifyError::MissingClaim { claim: "iss" }),
    };
    let expected = config.issuers();
    if expected.iter().any(|iss| iss == found) {
        Ok(found.clone())
    } else {
        Err(VerifyError::WrongIssuer {
            found: clip(found),
            expected: expected.join(", "),
        })
    }
}

fn check_audience(claims: &Map<String, Value>, config: &IdentityConfig) -> Result<(), VerifyError> {
    let found: Vec<&str> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| invalid("aud", "a list with a non-string"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("aud", "neither a string nor a list")),
        None => return Err(VerifyError::MissingClaim { claim: "aud" }),
    };
    let expected = config.audiences();
    if found.iter().any(|aud| expected.iter().any(|e| e == aud)) {
        Ok(())
    } else {
        let shown: Vec<String> = found.iter().take(5).map(|a| format!("{:?}", clip(a))).collect();
        Err(VerifyError::WrongAudience {
            found: format!("[{}]", shown.join(", ")),
            expected: expected.join(", "),
        })
    }
}

/// Checks `exp` (required) and `nbf` (optional); returns `exp`.
fn check_times(
    claims: &Map<String, Value>,
    leeway: Duration,
    now: i64,
) -> Result<OffsetDateTime, VerifyError> {
    let leeway_secs = leeway.as_secs();
    let slack = i64::try_from(leeway_secs).unwrap_or(i64::MAX);
    let exp = numeric_date(claims, "exp")?.ok_or(VerifyError::MissingClaim { claim: "exp" })?;
    // RFC 7519 §4.1.4: the current time must be before `exp`.
    if now >= exp.saturating_add(slack) {
        return Err(VerifyError::TokenExpired {
            expired_at: rfc3339(exp),
            ago_secs: now - exp,
            leeway_secs,
        });
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && now.saturating_add(slack) < nbf
    {
        return Err(VerifyError::TokenNotYetValid {
            not_before: rfc3339(nbf),
            in_secs: nbf - now,
            leeway_secs,
        });
    }
    OffsetDateTime::from_unix_timestamp(exp).map_err(|_| invalid("exp", "out of range"))
}

/// A NumericDate (seconds since the epoch, possibly fractional), floored.
fn numeric_date(claims: &Map<String, Value>, claim: &'static str) -> Result<Option<i64>, VerifyError> {
    match claims.get(claim) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(secs) = n.as_i64() {
                Ok(Some(secs))
            } else {
                match n.as_f64() {
                    Some(secs) if secs.is_finite() && secs.abs() < 1e15 => Ok(Some(secs.floor() as i64)),
                    _ => Err(invalid(claim, "not a usable NumericDate")),
                }
            }
        }
        Some(_) => Err(invalid(claim, "not a number")),
    }
}

fn map_identity(
    claims: &Map<String, Value>,
    config: &IdentityConfig,
    issuer: String,
    expires_at: OffsetDateTime,
) -> Result<Mapped, VerifyError> {
    let overage = is_overage(claims, &config.groups_claim);
    if overage && config.graph.is_none() {
        return Err(VerifyError::GroupOverage);
    }

    let subject = string(claims, "oid")?
        .or(string(claims, "sub")?)
        .ok_or(VerifyError::MissingClaim { claim: "oid or sub" })?;
    let display_name = first_string(claims, &["name", "preferred_username", "upn", "app_displayname"])?;
    // ID tokens carry neither; refusing them stops an ID token issued to an
    // app whose client id is also the configured audience from passing as
    // an access token.
    let client_app = first_string(claims, &["azp", "appid"])?.ok_or(VerifyError::NotAnAccessToken)?;
    let scopes: Vec<String> = match string(claims, "scp")? {
        Some(scp) => scp.split_whitespace().map(str::to_owned).collect(),
        None => Vec::new(),
    };
    let kind = match (string(claims, "idtyp")?.as_deref(), claims.contains_key("scp")) {
        (Some("app"), _) => PrincipalKind::App,
        (_, false) => PrincipalKind::App,
        (_, true) => PrincipalKind::User,
    };
    // An overage token's groups are Graph's to say (the verifier asks);
    // whatever the token lists beside the overage marker is not trusted.
    let groups = if overage {
        Vec::new()
    } else {
        string_list(claims, &config.groups_claim)?
            .into_iter()
            .map(|id| GroupMembership {
                name: config.group_name(&id).map(str::to_owned),
                id: GroupId(id),
            })
            .collect()
    };
    let identity = Identity {
        subject: SubjectId(subject),
        kind,
        tenant: string(claims, "tid")?.map(TenantId),
        display_name,
        client_app: Some(ClientAppId(client_app)),
        groups,
        groups_source: GroupsSource::Token,
        roles: string_list(claims, "roles")?,
        acrs: string_list(claims, "acrs")?,
        scopes,
        issuer,
        expires_at,
    };
    Ok(Mapped { identity, overage })
}

/// Group overage: Entra omits the groups and points to Graph instead
/// (`_claim_names: {"groups": "src1"}`), or, for implicit-flow v1 tokens,
/// sets `hasgroups: true`. Either way the token does not say the
/// membership: without `identity.graph` the token is refused rather than
/// judged on a guess; with it, the verifier asks Graph.
fn is_overage(claims: &Map<String, Value>, groups_claim: &str) -> bool {
    // App roles never overflow: with `groups_claim: roles` a groups
    // overage is beside the point, and the roles claim is complete.
    if groups_claim == "roles" {
        return false;
    }
    let named = claims
        .get("_claim_names")
        .and_then(Value::as_object)
        .is_some_and(|names| names.contains_key(groups_claim) || names.contains_key("groups"));
    let has_groups = claims.get("hasgroups") == Some(&Value::Bool(true));
    named || has_groups
}

fn string(claims: &Map<String, Value>, claim: &'static str) -> Result<Option<String>, VerifyError> {
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(claim, "not a string")),
    }
}

fn first_string(claims: &Map<String, Value>, names: &[&'static str]) -> Result<Option<String>, VerifyError> {
    for name in names {
        if let Some(value) = string(claims, name)? {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

fn string_list(claims: &Map<String, Value>, claim: &str) -> Result<Vec<String>, VerifyError> {
    // Claim names from configuration are not 'static; errors name the
    // well-known claim instead.
    let label: &'static str = match claim {
        "roles" => "roles",
        "acrs" => "acrs",
        _ => "groups claim",
    };
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(label, "a list with a non-string"))
            })
            .collect(),
        Some(_) => Err(invalid(label, "not a list")),
    }
}

fn invalid(claim: &'static str, reason: &str) -> VerifyError {
    VerifyError::InvalidClaim {
        claim,
        reason: reason.to_owned(),
    }
}

fn rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;
    const ISS: &str = "https://login.microsoftonline.com/tid-1/v2.0";

    fn config() -> IdentityConfig {
        let mut config = IdentityConfig::new(ISS, "api://airlock");
        config.group_names.insert(
            "db-reviewers".into(),
            "0b7e2f4c-8a5d-4c1e-9f3a-7d2c6b1e4a90".into(),
        );
        config
    }

    fn base() -> Map<String, Value> {
        json!({
            "iss": ISS, "aud": "api://airlock", "exp": NOW + 3600, "nbf": NOW - 10, "iat": NOW - 10,
            "oid": "oid-1", "sub": "sub-1", "tid": "tid-1", "azp": "client-1",
            "name": "Ada", "scp": "access_as_user db.read",
            "groups": ["0B7E2F4C-8A5D-4C1E-9F3A-7D2C6B1E4A90", "other-group"],
            "roles": ["Airlock.Review"],
        })
        .as_object()
        .unwrap()
        .clone()
    }

    fn with(changes: Value) -> Map<String, Value> {
        let mut claims = base();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                claims.remove(k);
            } else {
                claims.insert(k.clone(), v.clone());
            }
        }
        claims
    }

    #[test]
    fn maps_a_user_token() {
        let id = check_and_map(&base(), &config(), NOW).unwrap().identity;
        assert_eq!(id.subject.0, "oid-1");
        assert_eq!(id.kind, PrincipalKind::User);
        assert_eq!(id.tenant.unwrap().0, "tid-1");
        assert_eq!(id.display_name.as_deref(), Some("Ada"));
        assert_eq!(id.client_app.unwrap().0, "client-1");
        assert_eq!(id.groups[0].name.as_deref(), Some("db-reviewers"));
        assert_eq!(id.groups[1].name, None);
        assert_eq!(id.scopes, ["access_as_user", "db.read"]);
        assert_eq!(id.roles, ["Airlock.Review"]);
        assert_eq!(id.expires_at.unix_timestamp(), NOW + 3600);
    }

    #[test]
    fn kind_rule() {
        let kind = |c: Value| check_and_map(&with(c), &config(), NOW).unwrap().identity.kind;
        assert_eq!(kind(json!({"idtyp": "app"})), PrincipalKind::App);
        assert_eq!(kind(json!({"scp": null})), PrincipalKind::App);
        assert_eq!(kind(json!({"idtyp": "user"})), PrincipalKind::User);
        assert_eq!(kind(json!({"idtyp": "user", "scp": null})), PrincipalKind::App);
    }

    #[test]
    fn fallbacks() {
        let id = check_and_map(
            &with(json!({"oid": null, "name": null, "azp": null, "appid": "app-v1",
                         "preferred_username": null, "upn": "ada@example.com"})),
            &config(),
            NOW,
        )
        .unwrap()
        .identity;
        assert_eq!(id.subject.0, "sub-1");
        assert_eq!(id.display_name.as_deref(), Some("ada@example.com"));
        assert_eq!(id.client_app.unwrap().0, "app-v1");
    }

    #[test]
    fn bad_claims() {
        let cases: &[(Value, &str)] = &[
            (json!({"exp": NOW - 61}), "token_expired"),
            (json!({"exp": NOW - 60}), "token_expired"),
            (json!({"nbf": NOW + 61}), "token_not_yet_valid"),
            (json!({"exp": null}), "missing_claim"),
            (json!({"exp": "soon"}), "invalid_claim"),
            (json!({"iss": "https://sts.windows.net/tid-1/"}), "wrong_issuer"),
            (json!({"iss": format!("{ISS}/")}), "wrong_issuer"),
            (json!({"iss": null}), "missing_claim"),
            (json!({"aud": "api://other"}), "wrong_audience"),
            (json!({"aud": ["a", "b"]}), "wrong_audience"),
            (json!({"aud": null}), "missing_claim"),
            (json!({"aud": 5}), "invalid_claim"),
            (json!({"oid": null, "sub": null}), "missing_claim"),
            (json!({"groups": "g1"}), "invalid_claim"),
            (
                json!({"groups": null, "_claim_names": {"groups": "src1"}}),
                "group_overage",
            ),
            (json!({"hasgroups": true}), "group_overage"),
            (json!({"azp": null}), "not_an_access_token"),
        ];
        for (change, code) in cases {
            let err = check_and_map(&with(change.clone()), &config(), NOW).unwrap_err();
            assert_eq!(err.code(), *code, "{change}: {err}");
        }
    }

    #[test]
    fn overage_with_graph_configured_leaves_groups_to_graph() {
        let mut with_graph = config();
        with_graph.graph = Some(crate::graph::GraphConfig::new("client"));
        // Groups listed beside the overage marker are not trusted.
        let mapped = check_and_map(
            &with(json!({"_claim_names": {"groups": "src1"}, "acrs": ["c1"]})),
            &with_graph,
            NOW,
        )
        .unwrap();
        assert!(mapped.overage);
        assert!(mapped.identity.groups.is_empty());
        assert_eq!(mapped.identity.acrs, ["c1"]);
        let plain = check_and_map(&base(), &with_graph, NOW).unwrap();
        assert!(!plain.overage);
        assert_eq!(plain.identity.groups.len(), 2);
        let err = check_and_map(&with(json!({"acrs": "c1"})), &config(), NOW).unwrap_err();
        assert_eq!(err.code(), "invalid_claim");
        // With app roles as the groups, a groups overage does not matter.
        let mut roles = config();
        roles.groups_claim = "roles".into();
        let mapped = check_and_map(&with(json!({"_claim_names": {"groups": "src1"}})), &roles, NOW).unwrap();
        assert!(!mapped.overage);
        assert_eq!(mapped.identity.groups[0].id.0, "Airlock.Review");
    }

    #[test]
    fn leeway_applies() {
        check_and_map(&with(json!({"exp": NOW - 59})), &config(), NOW).unwrap();
        check_and_map(&with(json!({"nbf": NOW + 59})), &config(), NOW).unwrap();
        check_and_map(&with(json!({"aud": ["x", "api://airlock"]})), &config(), NOW).unwrap();
        check_and_map(&with(json!({"exp": (NOW + 10) as f64 + 0.5})), &config(), NOW).unwrap();
    }
}
