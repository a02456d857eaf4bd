//! The `identity:` section of `airlock.yaml`.
//!
//! Owns only this section's shape, defaults and validation. The file has other
//! sections owned by other crates: a binary either hands us the `identity`
//! value, or deserialises the whole file into [`IdentitySection`], which
//! ignores everything else. Fetching and verifying live elsewhere.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, FetchError};
use crate::fetch::check_fetch_url;
use crate::graph::GraphConfig;

/// Default `leeway` for `exp` and `nbf`: clocks drift.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// Default `max_token_bytes`: 16 KiB. Entra access tokens are 1–4 KiB, and
/// Entra stops listing groups (overage) well before a token could reach this,
/// so anything larger is not a token Airlock can use; refusing it early bounds
/// the work an unauthenticated client can cause.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;

/// `identity:` in `airlock.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Compared exactly to `iss`. One string, or a list (Entra v1 tokens say
    /// `https://sts.windows.net/<tid>/`, v2 `https://login.microsoftonline.com/<tid>/v2.0`).
    pub issuer: OneOrMany,
    /// Must be contained in `aud` (a string or a list in the token). One
    /// string, or a list of accepted audiences.
    pub audience: OneOrMany,
    /// Where the signing keys are. When absent, discovered from
    /// `<first issuer>/.well-known/openid-configuration`. https, or http on a
    /// loopback address only.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The claim holding group object ids (`groups`), or `roles` for app roles.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Readable names for group object ids: name -> object id.
    #[serde(default)]
    pub group_names: BTreeMap<String, String>,
    /// Allowed clock skew for `exp` and `nbf`, e.g. `60s`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Tokens longer than this are refused unread.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Microsoft Graph, asked which configured groups a caller is in when
    /// its token has group overage. Without it such tokens are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<GraphConfig>,
}

/// A YAML scalar or sequence of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values, in order.
    pub fn values(&self) -> Vec<String> {
        match self {
            OneOrMany::One(value) => vec![value.clone()],
            OneOrMany::Many(values) => values.clone(),
        }
    }
}

/// The whole `airlock.yaml` seen from this crate: `identity:` and nothing
/// else (other sections are ignored here, and checked by their owners).
#[derive(Debug, Clone, Deserialize)]
pub struct IdentitySection {
    pub identity: IdentityConfig,
}

fn default_groups_claim() -> String {
    "groups".to_owned()
}

fn default_leeway() -> Duration {
    DEFAULT_LEEWAY
}

fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}

impl IdentityConfig {
    /// A configuration with defaults for everything but issuer and audience.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        IdentityConfig {
            issuer: OneOrMany::One(issuer.into()),
            audience: OneOrMany::One(audience.into()),
            jwks_uri: None,
            groups_claim: default_groups_claim(),
            group_names: BTreeMap::new(),
            leeway: DEFAULT_LEEWAY,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            graph: None,
        }
    }

    /// The configured issuers, empty strings dropped.
    pub fn issuers(&self) -> Vec<String> {
        self.issuer
            .values()
            .into_iter()
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// The configured audiences, empty strings dropped.
    pub fn audiences(&self) -> Vec<String> {
        self.audience
            .values()
            .into_iter()
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// Where discovery would be fetched from when `jwks_uri` is absent.
    pub fn discovery_url(&self) -> Option<String> {
        self.issuers().first().map(|issuer| {
            format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            )
        })
    }

    /// Checks everything that can be checked without the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.issuers().is_empty() {
            return Err(ConfigError::NoIssuer);
        }
        if self.audiences().is_empty() {
            return Err(ConfigError::NoAudience);
        }
        if self.groups_claim.is_empty() {
            return Err(ConfigError::NoGroupsClaim);
        }
        if !(1024..=1024 * 1024).contains(&self.max_token_bytes) {
            return Err(ConfigError::MaxTokenBytes(self.max_token_bytes));
        }
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (name, id) in &self.group_names {
            if let Some(first) = seen.insert(id.to_ascii_lowercase(), name) {
                return Err(ConfigError::DuplicateGroupId {
                    id: id.clone(),
                    first: first.to_owned(),
                    second: name.clone(),
                });
            }
        }
        if let Some(graph) = &self.graph {
            let issuer = self.issuers().first().cloned().unwrap_or_default();
            graph.validate(&issuer)?;
        }
        match (&self.jwks_uri, self.discovery_url()) {
            (Some(uri), _) => check_fetch_url(uri).map(drop),
            (None, Some(discovery)) => check_fetch_url(&discovery).map(drop),
            (None, None) => Err(FetchError::InvalidUrl {
                url: String::new(),
                reason: "no jwks_uri and no issuer to discover it from".into(),
            }),
        }
        .map_err(ConfigError::Url)
    }

    /// The name configured for a group object id (ids compare
    /// case-insensitively, as Entra object ids are GUIDs).
    pub fn group_name(&self, id: &str) -> Option<&str> {
        self.group_names
            .iter()
            .find(|(_, configured)| configured.eq_ignore_ascii_case(id))
            .map(|(name, _)| name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<IdentityConfig, serde_json::Error> {
        serde_json::from_value(json)
    }

    #[test]
    fn defaults_apply() {
        let config = parse(serde_json::json!({
            "issuer": "https://login.microsoftonline.com/t/v2.0",
            "audience": "api://airlock",
        }))
        .unwrap();
        assert_eq!(config.groups_claim, "groups");
        assert_eq!(config.leeway, Duration::from_secs(60));
        assert_eq!(config.max_token_bytes, 16 * 1024);
        assert_eq!(
            config.discovery_url().unwrap(),
            "https://login.microsoftonline.com/t/v2.0/.well-known/openid-configuration"
        );
        config.validate().unwrap();
    }

    #[test]
    fn issuer_list_and_humantime_leeway() {
        let config = parse(serde_json::json!({
            "issuer": ["https://sts.windows.net/t/", "https://login.microsoftonline.com/t/v2.0"],
            "audience": "api://airlock",
            "leeway": "2m",
        }))
        .unwrap();
        assert_eq!(config.issuers().len(), 2);
        assert_eq!(config.leeway, Duration::from_secs(120));
        // Discovery goes to the first issuer.
        assert_eq!(
            config.discovery_url().unwrap(),
            "https://sts.windows.net/t/.well-known/openid-configuration"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = parse(serde_json::json!({
            "issuer": "https://x", "audience": "a", "audiance": "typo",
        }))
        .unwrap_err();
        assert!(err.to_string().contains("audiance"), "{err}");
    }

    #[test]
    fn whole_file_ignores_other_sections() {
        let file = serde_json::json!({
            "nats": {"url": "nats://127.0.0.1:4222"},
            "identity": {"issuer": "https://x/v2.0", "audience": "a",
                         "group_names": {"db-reviewers": "0B7E2F4C-8A5D-4C1E-9F3A-7D2C6B1E4A90"}},
            "policies": [],
        });
        let section: IdentitySection = serde_json::from_value(file).unwrap();
        assert_eq!(
            section
                .identity
                .group_name("0b7e2f4c-8a5d-4c1e-9f3a-7d2c6b1e4a90"),
            Some("db-reviewers")
        );
    }

    #[test]
    fn validation_catches_mistakes() {
        let good = IdentityConfig::new("https://issuer.example/v2.0", "api://airlock");
        good.validate().unwrap();

        let mut insecure = good.clone();
        insecure.jwks_uri = Some("http://issuer.example/keys".into());
        assert!(matches!(insecure.validate(), Err(ConfigError::Url(_))));

        let mut loopback = good.clone();
        loopback.jwks_uri = Some("http://127.0.0.1:9000/keys".into());
        loopback.validate().unwrap();

        let insecure_issuer = IdentityConfig::new("http://issuer.example/v2.0", "a");
        assert!(matches!(insecure_issuer.validate(), Err(ConfigError::Url(_))));

        let mut dup = good.clone();
        dup.group_names.insert("a".into(), "ID-1".into());
        dup.group_names.insert("b".into(), "id-1".into());
        assert!(matches!(
            dup.validate(),
            Err(ConfigError::DuplicateGroupId { .. })
        ));

        let mut tiny = good.clone();
        tiny.max_token_bytes = 0;
        assert!(matches!(tiny.validate(), Err(ConfigError::MaxTokenBytes(0))));

        let no_aud = IdentityConfig::new("https://x", "");
        assert!(matches!(no_aud.validate(), Err(ConfigError::NoAudience)));
    }
}
