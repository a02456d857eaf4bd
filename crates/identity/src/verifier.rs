//! The [`Verifier`]: one call from a token string to an [`Identity`].
//!
//! Owns the order of checks, which is the security argument: size and shape
//! first, then the algorithm allow-list, then the key the `kid` names, then
//! the signature, and only then the claims. Nothing from the payload is read
//! before the signature holds.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode};
use serde_json::{Map, Value};

use crate::cache::{CacheOptions, KeyCache, KeySource, spawn_refresh};
use crate::claims::{Mapped, check_and_map};
use crate::config::IdentityConfig;
use crate::error::{FetchError, VerifyError, clip};
use crate::fetch::Fetcher;
use crate::graph::{Graph, looks_like_object_id};
use crate::identity::{GroupId, GroupMembership, GroupsSource, Identity, PrincipalKind};
use crate::jwt::{algorithm_name, check_header};

/// Verifies access tokens against one issuer's keys. Cheap to clone; clones
/// share the key cache and its single background refresh task, which stops
/// once every clone is dropped.
#[derive(Debug, Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: IdentityConfig,
    cache: Arc<KeyCache>,
    /// Asked about overage tokens, when `identity.graph` is set.
    graph: Option<Graph>,
}

impl Verifier {
    /// A verifier with production cache settings. Does no network I/O: keys
    /// are fetched on first use (or by [`Verifier::refresh_keys`]). When
    /// called inside a tokio runtime, it also starts the background refresh.
    pub fn new(config: IdentityConfig) -> Result<Self, VerifyError> {
        Self::with_options(config, CacheOptions::default())
    }

    /// A verifier with explicit cache settings (tests, tuning).
    pub fn with_options(config: IdentityConfig, options: CacheOptions) -> Result<Self, VerifyError> {
        config.validate()?;
        let source = match (&config.jwks_uri, config.discovery_url(), config.issuers().first()) {
            (Some(uri), _, _) => KeySource::Jwks { uri: uri.clone() },
            (None, Some(discovery), Some(issuer)) => KeySource::Discover {
                discovery,
                issuer: issuer.clone(),
            },
            // validate() has ruled this out; stay closed all the same.
            _ => return Err(crate::error::ConfigError::NoIssuer.into()),
        };
        let fetcher = Fetcher::new(options.fetch_timeout)?;
        let graph = match &config.graph {
            Some(graph) => {
                let issuer = config.issuers().first().cloned().unwrap_or_default();
                Some(Graph::new(graph, &issuer)?)
            }
            None => None,
        };
        let cache = KeyCache::new(source, fetcher, options);
        spawn_refresh(&cache);
        let verifier = Verifier {
            inner: Arc::new(Inner { config, cache, graph }),
        };
        verifier.ask_graph_about(std::iter::empty::<&str>());
        Ok(verifier)
    }

    /// The groups Graph is asked about for overage tokens: every object id
    /// of `identity.group_names`, and those of `names` (group names are
    /// looked up in `group_names`; object ids are kept; anything else cannot
    /// be asked about and is left out). Binaries pass the groups their
    /// policies, reviewer and auditor lists name, at start and on reload.
    /// Without `identity.graph` this does nothing.
    pub fn ask_graph_about<S: AsRef<str>>(&self, names: impl IntoIterator<Item = S>) {
        let Some(graph) = &self.inner.graph else {
            return;
        };
        let config = &self.inner.config;
        // Only object ids can be asked about (a role value or a typo would
        // make Graph refuse the whole question).
        let mut ids: BTreeSet<String> = config
            .group_names
            .values()
            .filter(|id| looks_like_object_id(id))
            .map(|id| id.to_ascii_lowercase())
            .collect();
        for name in names {
            let name = name.as_ref();
            if let Some(id) = config.group_names.get(name) {
                if looks_like_object_id(id) {
                    ids.insert(id.to_ascii_lowercase());
                }
            } else if looks_like_object_id(name) {
                ids.insert(name.to_ascii_lowercase());
            }
        }
        graph.ask_about(ids);
    }

    /// The object ids Graph is asked about (empty without `identity.graph`).
    pub fn graph_groups(&self) -> Vec<String> {
        self.inner
            .graph
            .as_ref()
            .map(|g| g.asked_about().to_vec())
            .unwrap_or_default()
    }

    /// How many membership questions have been sent to Graph so far.
    pub fn graph_calls(&self) -> u64 {
        self.inner.graph.as_ref().map_or(0, Graph::calls)
    }

    /// The configuration this verifier enforces.
    pub fn config(&self) -> &IdentityConfig {
        &self.inner.config
    }

    /// Fetches the issuer's keys now. Binaries call this at start-up to
    /// report a misconfigured or unreachable issuer early; verification works
    /// without it. Returns how many keys the JWKS has.
    pub async fn refresh_keys(&self) -> Result<usize, FetchError> {
        self.inner.cache.refresh().await
    }

    /// How many times the JWKS document has been requested so far.
    pub fn jwks_fetch_count(&self) -> u64 {
        self.inner.cache.jwks_fetches()
    }

    /// A person's groups as Microsoft Graph says now (transitive, among
    /// those Airlock's configuration names), for a decision made without
    /// their token (a vote relayed from Slack). `None` without
    /// `identity.graph`.
    pub async fn groups_now(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Option<Result<Vec<GroupMembership>, VerifyError>> {
        let graph = self.inner.graph.as_ref()?;
        let config = &self.inner.config;
        Some(
            graph
                .member_groups(tenant, PrincipalKind::User, subject)
                .await
                .map(|ids| {
                    ids.into_iter()
                        .map(|id| GroupMembership {
                            name: config.group_name(&id).map(str::to_owned),
                            id: GroupId(id),
                        })
                        .collect()
                })
                .map_err(VerifyError::GraphUnavailable),
        )
    }

    /// Verifies `token` and maps its claims. Never logs the token, and no
    /// error carries it.
    pub async fn verify(&self, token: &str) -> Result<Identity, VerifyError> {
        let config = &self.inner.config;
        let header = check_header(token, config.max_token_bytes)?;
        let entry = self.inner.cache.entry(&header.kid).await?;
        let key = entry.key_for(&header.kid, header.alg)?;

        // Signature only: jsonwebtoken's claim checks are switched off, ours
        // (claims.rs) run next with precise reasons.
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = decode::<Map<String, Value>>(token, key, &validation)
            .map_err(|error| signature_error(&header.kid, header.alg, error.into_kind()))?
            .claims;

        let Mapped {
            mut identity,
            overage,
        } = check_and_map(&claims, config, unix_now())?;
        if overage {
            // check_and_map refuses overage without Graph; stay closed all the same.
            let graph = self.inner.graph.as_ref().ok_or(VerifyError::GroupOverage)?;
            let tenant = identity.tenant.as_ref().map(|t| t.0.as_str()).unwrap_or_default();
            let ids = graph
                .member_groups(tenant, identity.kind, &identity.subject.0)
                .await
                .map_err(VerifyError::GraphUnavailable)?;
            identity.groups = ids
                .into_iter()
                .map(|id| GroupMembership {
                    name: config.group_name(&id).map(str::to_owned),
                    id: GroupId(id),
                })
                .collect();
            identity.groups_source = GroupsSource::Graph;
        }
        Ok(identity)
    }
}

fn signature_error(kid: &str, alg: jsonwebtoken::Algorithm, kind: ErrorKind) -> VerifyError {
    let malformed = |reason: &str| VerifyError::Malformed {
        reason: reason.to_owned(),
    };
    match kind {
        ErrorKind::InvalidSignature => VerifyError::BadSignature { kid: clip(kid) },
        ErrorKind::Base64(_) => malformed("payload or signature is not base64url"),
        ErrorKind::Json(_) => malformed("payload is not a JSON object"),
        ErrorKind::Utf8(_) => malformed("payload is not UTF-8"),
        ErrorKind::InvalidToken => malformed("not a compact JWS"),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => VerifyError::KeyTypeMismatch {
            kid: clip(kid),
            alg: algorithm_name(alg).into(),
            kty: "(does not match)".into(),
        },
        other => VerifyError::KeyUnusable {
            kid: clip(kid),
            reason: format!("verification failed: {other:?}"),
        },
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
