//! Group membership from Microsoft Graph, for tokens Entra issued with group
//! overage (too many groups to list in the token).
//!
//! Owns `identity.graph` (the application's own credentials and where Graph
//! is), the application token (client-credentials grant, cached until
//! shortly before it expires), and the membership answers: Graph is asked,
//! with `checkMemberGroups` (transitive), only about the groups Airlock's
//! configuration names, and its answer is kept per identity for `cache_ttl`.
//! Concurrent logins of one identity share one question (single flight). A
//! question Graph does not answer within `timeout` fails closed: the caller
//! is refused with the reason. A cached answer still counts until it
//! expires, so a Graph outage refuses only identities not seen within
//! `cache_ttl`.
//!
//! The token's own claims are never widened: only overage tokens reach
//! Graph, and what Graph says is intersected with the groups asked about.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{ConfigError, FetchError, clip};
use crate::fetch::check_fetch_url;
use crate::identity::PrincipalKind;

/// Default `identity.graph.endpoint`.
pub const DEFAULT_GRAPH_ENDPOINT: &str = "https://graph.microsoft.com";
/// Default `identity.graph.cache_ttl`: how long a membership answer counts.
pub const DEFAULT_GRAPH_CACHE_TTL: Duration = Duration::from_secs(5 * 60);
/// Default `identity.graph.timeout`: the longest a login or vote waits for Graph.
pub const DEFAULT_GRAPH_TIMEOUT: Duration = Duration::from_secs(5);
/// `checkMemberGroups` takes at most this many group ids per call.
const GROUPS_PER_CALL: usize = 20;
/// The largest token-endpoint or Graph answer read.
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// Identities whose answers are kept at most (older ones are dropped first).
const MAX_CACHED_IDENTITIES: usize = 50_000;

/// `identity.graph` in `airlock.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    /// The application (client) id Airlock asks Graph as.
    pub client_id: String,
    /// The environment variable holding the application's client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// Or a certificate credential: the certificate (PEM) registered on the
    /// application and its private key (PKCS#8 or PKCS#1 PEM, RSA).
    #[serde(default)]
    pub client_certificate: Option<ClientCertificate>,
    /// The token endpoint for the client-credentials grant. Default: the
    /// issuer's tenant endpoint (`https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token`).
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// Graph's base URL. https, or http on a loopback address (tests).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// How long a membership answer counts.
    #[serde(default = "default_cache_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// The longest a login or vote waits for Graph before it is refused.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// A certificate credential for the client-credentials grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificate {
    /// The certificate, PEM.
    pub cert: String,
    /// Its private key, PEM (RSA).
    pub key: String,
}

fn default_endpoint() -> String {
    DEFAULT_GRAPH_ENDPOINT.to_owned()
}
fn default_cache_ttl() -> Duration {
    DEFAULT_GRAPH_CACHE_TTL
}
fn default_timeout() -> Duration {
    DEFAULT_GRAPH_TIMEOUT
}

impl GraphConfig {
    /// A configuration with defaults for everything but the client id.
    pub fn new(client_id: impl Into<String>) -> GraphConfig {
        GraphConfig {
            client_id: client_id.into(),
            client_secret_env: None,
            client_certificate: None,
            token_endpoint: None,
            endpoint: default_endpoint(),
            cache_ttl: DEFAULT_GRAPH_CACHE_TTL,
            timeout: DEFAULT_GRAPH_TIMEOUT,
        }
    }

    /// The token endpoint: configured, or the tenant's, from the issuer.
    pub fn token_endpoint_for(&self, issuer: &str) -> Option<String> {
        if let Some(configured) = &self.token_endpoint {
            return Some(configured.clone());
        }
        let url = url::Url::parse(issuer).ok()?;
        let tenant_host = url.host_str()? == "sts.windows.net";
        if tenant_host {
            // v1: https://sts.windows.net/<tenant>/
            let tenant = url.path().trim_matches('/');
            return Some(format!(
                "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
            ));
        }
        // v2: https://login.microsoftonline.com/<tenant>/v2.0 (and the
        // development issuer, which serves the same path).
        let base = issuer.trim_end_matches('/');
        let base = base.strip_suffix("/v2.0").unwrap_or(base);
        Some(format!("{base}/oauth2/v2.0/token"))
    }

    /// Checks what can be checked without the network, reading the secret
    /// or key files (so `config check` reports one that is missing).
    pub(crate) fn validate(&self, issuer: &str) -> Result<Credential, ConfigError> {
        let bad = |reason: String| ConfigError::Graph(reason);
        if self.client_id.trim().is_empty() {
            return Err(bad("client_id is empty".into()));
        }
        check_fetch_url(&self.endpoint).map_err(|e| bad(format!("endpoint: {e}")))?;
        let token_endpoint = self
            .token_endpoint_for(issuer)
            .ok_or_else(|| bad("no token_endpoint, and none can be made from the issuer".into()))?;
        check_fetch_url(&token_endpoint).map_err(|e| bad(format!("token_endpoint: {e}")))?;
        // A removal from a group takes effect only once answers expire:
        // at most an hour, about an Entra access token's own life.
        if self.cache_ttl.is_zero() || self.cache_ttl > Duration::from_secs(3600) {
            return Err(bad("cache_ttl must be between 1s and 1h".into()));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err(bad("timeout must be between 1ms and 60s".into()));
        }
        match (&self.client_secret_env, &self.client_certificate) {
            (Some(var), None) => match std::env::var(var) {
                Ok(secret) if !secret.trim().is_empty() => Ok(Credential::Secret(secret.trim().to_owned())),
                _ => Err(bad(format!(
                    "client_secret_env names {var}, which is not set (or empty) in this process's environment"
                ))),
            },
            (None, Some(cert)) => crate::assertion::CertificateCredential::load(cert, &self.client_id)
                .map(Credential::Certificate)
                .map_err(bad),
            (Some(_), Some(_)) => Err(bad("set client_secret_env or client_certificate, not both".into())),
            (None, None) => Err(bad(
                "no credential: set client_secret_env (an environment variable holding the client secret) \
                 or client_certificate {cert, key}"
                    .into(),
            )),
        }
    }
}

/// How the application proves who it is to the token endpoint.
#[derive(Clone)]
pub(crate) enum Credential {
    Secret(String),
    Certificate(crate::assertion::CertificateCredential),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Secret(_) => f.write_str("Secret(..)"),
            Credential::Certificate(_) => f.write_str("Certificate(..)"),
        }
    }
}

/// Why Graph could not say which groups an identity is in.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GraphError {
    #[error("the token endpoint refused Airlock's application credentials: {0}")]
    Credentials(String),
    #[error("Microsoft Graph did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Microsoft Graph: {0}")]
    Fetch(#[from] FetchError),
    #[error("Microsoft Graph answered HTTP {status}: {detail}")]
    Status { status: u16, detail: String },
    #[error("the token's object id {0:?} is not one Graph can be asked about")]
    BadSubject(String),
}

/// An application token for Graph, and when to stop using it.
#[derive(Clone)]
struct AppToken {
    token: String,
    renew_at: Instant,
}

impl std::fmt::Debug for AppToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppToken")
            .field("token", &"***")
            .field("renew_at", &self.renew_at)
            .finish()
    }
}

/// What is known about one identity.
#[derive(Debug, Default)]
struct Slot {
    /// Graph's answer, when, and for which set of groups asked about.
    answer: Option<(Instant, u64, Vec<String>)>,
    /// The last failure and when it ended.
    failure: Option<(Instant, GraphError)>,
}

/// Asks Graph about overage tokens' identities. Shared by a verifier's clones.
#[derive(Debug)]
pub(crate) struct Graph {
    config: GraphConfig,
    token_endpoint: String,
    credential: Credential,
    client: reqwest::Client,
    /// Object ids (lower case) of the groups to ask about, and a generation
    /// that changes with them (answers for another set are asked again).
    groups: RwLock<(u64, Arc<Vec<String>>)>,
    app_token: tokio::sync::Mutex<Option<AppToken>>,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    calls: AtomicU64,
}

impl Graph {
    pub(crate) fn new(config: &GraphConfig, issuer: &str) -> Result<Graph, ConfigError> {
        let credential = config.validate(issuer)?;
        let token_endpoint = config
            .token_endpoint_for(issuer)
            .ok_or_else(|| ConfigError::Graph("no token endpoint".into()))?;
        // The whole question is bounded by `timeout` (in `member_groups`);
        // the client's own limit is a backstop just beyond it, so a slow
        // Graph is always reported as that timeout.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout + Duration::from_secs(1))
            .connect_timeout(config.timeout)
            .user_agent(concat!("airlock-identity/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::HttpClient(e.to_string()))?;
        Ok(Graph {
            config: config.clone(),
            token_endpoint,
            credential,
            client,
            groups: RwLock::new((0, Arc::new(Vec::new()))),
            app_token: tokio::sync::Mutex::new(None),
            slots: Mutex::new(HashMap::new()),
            calls: AtomicU64::new(0),
        })
    }

    /// From now on, ask about these object ids (answers for the old set
    /// are asked again).
    pub(crate) fn ask_about(&self, ids: BTreeSet<String>) {
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<String> = ids.into_iter().map(|id| id.to_ascii_lowercase()).collect();
        if *groups.1 != ids {
            *groups = (groups.0 + 1, Arc::new(ids));
        }
    }

    pub(crate) fn asked_about(&self) -> Arc<Vec<String>> {
        self.groups.read().unwrap_or_else(|p| p.into_inner()).1.clone()
    }

    /// How many `checkMemberGroups` calls have been made.
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The configured groups `subject` is a member of (transitively).
    pub(crate) async fn member_groups(
        &self,
        tenant: &str,
        kind: PrincipalKind,
        subject: &str,
    ) -> Result<Vec<String>, GraphError> {
        if subject.is_empty()
            || subject.len() > 64
            || !subject.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(GraphError::BadSubject(clip(subject)));
        }
        let waited_from = Instant::now();
        let slot = self.slot(tenant, kind, subject);
        let mut slot = slot.lock().await;
        let (generation, groups) = self.groups.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((at, for_generation, ids)) = &slot.answer
            && *for_generation == generation
            && at.elapsed() < self.config.cache_ttl
        {
            return Ok(ids.clone());
        }
        // Someone else asked while this caller waited for the slot, and
        // failed: that is this caller's answer too (one question in flight
        // per identity, even when Graph is down).
        if let Some((at, error)) = &slot.failure
            && *at >= waited_from
        {
            return Err(error.clone());
        }
        let asked = tokio::time::timeout(self.config.timeout, self.ask(kind, subject, &groups))
            .await
            .unwrap_or(Err(GraphError::Timeout(self.config.timeout)));
        match asked {
            Ok(ids) => {
                slot.answer = Some((Instant::now(), generation, ids.clone()));
                slot.failure = None;
                Ok(ids)
            }
            Err(error) => {
                slot.failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    fn slot(&self, tenant: &str, kind: PrincipalKind, subject: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let key = format!(
            "{}/{kind:?}/{}",
            tenant.to_ascii_lowercase(),
            subject.to_ascii_lowercase()
        );
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() >= MAX_CACHED_IDENTITIES && !slots.contains_key(&key) {
            // Drop the slots nobody is waiting on; answers are cheap to ask again.
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        slots.entry(key).or_default().clone()
    }

    async fn ask(
        &self,
        kind: PrincipalKind,
        subject: &str,
        groups: &[String],
    ) -> Result<Vec<String>, GraphError> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let collection = match kind {
            PrincipalKind::User => "users",
            PrincipalKind::App => "servicePrincipals",
        };
        let url = format!(
            "{}/v1.0/{collection}/{subject}/checkMemberGroups",
            self.config.endpoint.trim_end_matches('/')
        );
        check_fetch_url(&url)?;
        let mut member = Vec::new();
        for chunk in groups.chunks(GROUPS_PER_CALL) {
            let token = self.app_token().await?;
            self.calls.fetch_add(1, Ordering::Relaxed);
            let response = self
                .client
                .post(&url)
                .bearer_auth(&token)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json!({ "groupIds": chunk }).to_string())
                .send()
                .await
                .map_err(|e| transport(&url, &e))?;
            let status = response.status();
            let body = read_capped(response, &url).await?;
            if status == reqwest::StatusCode::UNAUTHORIZED {
                // The application token may have been revoked: get a new one next time.
                *self.app_token.lock().await = None;
            }
            if status == reqwest::StatusCode::NOT_FOUND {
                // Graph does not know the object: it is in no group.
                continue;
            }
            if !status.is_success() {
                return Err(GraphError::Status {
                    status: status.as_u16(),
                    detail: graph_error_text(&body),
                });
            }
            let answer: Value = serde_json::from_slice(&body).map_err(|e| FetchError::BadDocument {
                url: url.clone(),
                what: "checkMemberGroups answer",
                detail: e.to_string(),
            })?;
            let Some(values) = answer.get("value").and_then(Value::as_array) else {
                return Err(FetchError::BadDocument {
                    url: url.clone(),
                    what: "checkMemberGroups answer",
                    detail: "no `value` list".into(),
                }
                .into());
            };
            for id in values.iter().filter_map(Value::as_str) {
                // Never widen: only ids that were asked about count.
                if chunk.iter().any(|asked| asked.eq_ignore_ascii_case(id))
                    && !member.contains(&id.to_ascii_lowercase())
                {
                    member.push(id.to_ascii_lowercase());
                }
            }
        }
        Ok(member)
    }

    /// The application's token for Graph, fetched with the client-credentials
    /// grant and reused until a minute before it expires.
    async fn app_token(&self) -> Result<String, GraphError> {
        let mut cached = self.app_token.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.renew_at
        {
            return Ok(token.token.clone());
        }
        let scope = format!("{}/.default", self.config.endpoint.trim_end_matches('/'));
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", self.config.client_id.clone()),
            ("scope", scope),
        ];
        match &self.credential {
            Credential::Secret(secret) => form.push(("client_secret", secret.clone())),
            Credential::Certificate(cert) => {
                let assertion = cert
                    .assertion(&self.token_endpoint)
                    .map_err(GraphError::Credentials)?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", assertion));
            }
        }
        let url = &self.token_endpoint;
        let response = self
            .client
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(|e| transport(url, &e))?;
        let status = response.status();
        let body = read_capped(response, url).await?;
        if !status.is_success() {
            return Err(GraphError::Credentials(format!(
                "HTTP {}: {}",
                status.as_u16(),
                oauth_error_text(&body)
            )));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| FetchError::BadDocument {
            url: url.clone(),
            what: "token endpoint answer",
            detail: e.to_string(),
        })?;
        // Capped: a huge `expires_in` must not overflow the clock.
        let lifetime = Duration::from_secs(answer.expires_in.seconds().min(24 * 3600));
        let renew_at = Instant::now() + lifetime.saturating_sub(Duration::from_secs(60)).max(lifetime / 2);
        *cached = Some(AppToken {
            token: answer.access_token.clone(),
            renew_at,
        });
        Ok(answer.access_token)
    }
}

/// An OAuth 2.0 token endpoint's answer (RFC 6749 §5.1).
#[derive(Debug, Deserialize)]
pub(crate) struct TokenAnswer {
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Seconds,
}

/// `expires_in`: a number (RFC 6749) or, from Azure's instance metadata
/// service, a string of digits.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Seconds {
    Number(u64),
    Text(String),
}

impl Default for Seconds {
    fn default() -> Self {
        Seconds::Number(3600)
    }
}

impl Seconds {
    pub(crate) fn seconds(&self) -> u64 {
        match self {
            Seconds::Number(n) => *n,
            Seconds::Text(t) => t.trim().parse().unwrap_or(0),
        }
    }
}

fn transport(url: &str, e: &reqwest::Error) -> GraphError {
    GraphError::Fetch(FetchError::Transport {
        url: url.to_owned(),
        detail: crate::fetch::error_chain(e),
    })
}

async fn read_capped(mut response: reqwest::Response, url: &str) -> Result<Vec<u8>, GraphError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(url, &e))? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(FetchError::BodyTooLarge {
                url: url.to_owned(),
                limit: MAX_ANSWER_BYTES,
            }
            .into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Graph's `{"error": {"code", "message"}}`, clipped.
fn graph_error_text(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    match (
        error.and_then(|e| e.get("code")).and_then(Value::as_str),
        error.and_then(|e| e.get("message")).and_then(Value::as_str),
    ) {
        (Some(code), Some(message)) => clip(&format!("{code}: {message}")),
        _ => clip(&String::from_utf8_lossy(body)),
    }
}

/// An OAuth error answer's `error` and `error_description`, clipped.
pub(crate) fn oauth_error_text(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed {
        Some(v) => {
            let error = v.get("error").and_then(Value::as_str).unwrap_or("error");
            let description = v.get("error_description").and_then(Value::as_str).unwrap_or("");
            clip(&format!("{error} {description}"))
        }
        None => clip(&String::from_utf8_lossy(body)),
    }
}

/// True for strings shaped like an Entra object id (a GUID).
pub(crate) fn looks_like_object_id(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_endpoint_from_the_issuer() {
        let graph = GraphConfig::new("c");
        assert_eq!(
            graph
                .token_endpoint_for("https://login.microsoftonline.com/t1/v2.0")
                .unwrap(),
            "https://login.microsoftonline.com/t1/oauth2/v2.0/token"
        );
        assert_eq!(
            graph.token_endpoint_for("https://sts.windows.net/t1/").unwrap(),
            "https://login.microsoftonline.com/t1/oauth2/v2.0/token"
        );
        assert_eq!(
            graph.token_endpoint_for("http://127.0.0.1:9400").unwrap(),
            "http://127.0.0.1:9400/oauth2/v2.0/token"
        );
        let mut configured = GraphConfig::new("c");
        configured.token_endpoint = Some("https://login.example/t/token".into());
        assert_eq!(
            configured.token_endpoint_for("https://x").unwrap(),
            "https://login.example/t/token"
        );
    }

    #[test]
    fn validation_names_what_is_missing() {
        let issuer = "https://login.microsoftonline.com/t1/v2.0";
        let mut graph = GraphConfig::new("c");
        let err = graph.validate(issuer).unwrap_err().to_string();
        assert!(err.contains("no credential"), "{err}");
        graph.cache_ttl = Duration::from_secs(2 * 3600);
        let err = graph.validate(issuer).unwrap_err().to_string();
        assert!(err.contains("cache_ttl"), "{err}");
        graph.cache_ttl = DEFAULT_GRAPH_CACHE_TTL;
        graph.client_secret_env = Some("AIRLOCK_TEST_SURELY_UNSET_SECRET".into());
        let err = graph.validate(issuer).unwrap_err().to_string();
        assert!(err.contains("AIRLOCK_TEST_SURELY_UNSET_SECRET"), "{err}");
        graph.endpoint = "http://graph.example".into();
        let err = graph.validate(issuer).unwrap_err().to_string();
        assert!(err.contains("endpoint"), "{err}");
    }

    #[test]
    fn object_ids() {
        assert!(looks_like_object_id("0b7e2f4c-8a5d-4c1e-9f3a-7d2c6b1e4a90"));
        assert!(!looks_like_object_id("db-reviewers"));
        assert!(!looks_like_object_id("0b7e2f4c-8a5d-4c1e-9f3a-7d2c6b1e4a9"));
    }

    #[test]
    fn the_app_token_never_shows() {
        let t = AppToken {
            token: "secret-app-token".into(),
            renew_at: Instant::now(),
        };
        assert!(!format!("{t:?}").contains("secret-app-token"));
    }

    #[test]
    fn expires_in_as_number_or_text() {
        let a: TokenAnswer = serde_json::from_str(r#"{"access_token":"x","expires_in":3599}"#).unwrap();
        let b: TokenAnswer = serde_json::from_str(r#"{"access_token":"x","expires_in":"86399"}"#).unwrap();
        assert_eq!(a.expires_in.seconds(), 3599);
        assert_eq!(b.expires_in.seconds(), 86399);
    }
}
