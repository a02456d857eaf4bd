//! The proxy's own Entra token for the upstream database (`upstream_auth:
//! entra`): Azure Database for PostgreSQL takes an access token for
//! `https://ossrdbms-aad.database.windows.net` as the password, so no
//! static database password needs to exist.
//!
//! Owns obtaining the token for the proxy's identity, two ways:
//! * a managed identity: the instance metadata service (IMDS,
//!   `http://169.254.169.254/metadata/identity/oauth2/token`, header
//!   `Metadata: true`, the `resource` the scope names);
//! * Kubernetes workload identity: the federated token file the cluster
//!   projects into the pod, exchanged at the tenant's token endpoint
//!   (client-credentials grant with the file's token as the client
//!   assertion; the file is read again for every exchange, as the kubelet
//!   rotates it).
//!
//! and keeping it: reused until shortly before it expires (five minutes, or
//! half its life when that is shorter), fetched by one caller at a time,
//! and, when the endpoint fails while the old token is still valid, the old
//! token is used and the failure reported. Never logged: the token lives in
//! a [`Credential`] whose `Debug` hides it.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{FetchError, clip};
use crate::graph::{TokenAnswer, oauth_error_text};

/// The token scope of Azure Database for PostgreSQL.
pub const AZURE_POSTGRES_SCOPE: &str = "https://ossrdbms-aad.database.windows.net/.default";
/// Azure's instance metadata service token endpoint (link-local, plain http
/// by design: it never leaves the host).
pub const IMDS_TOKEN_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// How long one fetch may take: less than a connection's default
/// `connect_timeout` (5 s), so a login that fetches is not cut off first.
const FETCH_TIMEOUT: Duration = Duration::from_secs(4);
/// Refresh this long before expiry (or at half-life, if shorter).
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// A token this close to expiry is not handed out.
const EXPIRY_MARGIN: Duration = Duration::from_secs(2);
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longer lifetimes are taken as this (Azure's are about a day).
const MAX_LIFETIME_SECS: u64 = 48 * 3600;
/// After a failed fetch, the next is tried no sooner than this.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// How the proxy proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkloadIdentity {
    /// A managed identity, through the instance metadata service at
    /// `endpoint`; `client_id` picks a user-assigned identity.
    Managed {
        endpoint: String,
        client_id: Option<String>,
    },
    /// Kubernetes workload identity: the projected token in `token_file`,
    /// exchanged at `token_endpoint` as application `client_id`.
    Federated {
        token_endpoint: String,
        client_id: String,
        token_file: PathBuf,
    },
}

/// A token that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(String);

impl Credential {
    /// The token itself. Never log what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(***)")
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("the token endpoint {url} failed: {detail}")]
    Endpoint { url: String, detail: String },
    #[error("the token endpoint {url} refused: HTTP {status}: {detail}")]
    Refused {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("reading the federated token file {path}: {detail}")]
    TokenFile { path: String, detail: String },
    #[error("{0}")]
    Fetch(#[from] FetchError),
}

#[derive(Debug)]
struct Held {
    token: Credential,
    refresh_at: Instant,
    expires_at: Instant,
}

/// One connection's upstream token. Shared by every session of it.
#[derive(Debug)]
pub struct UpstreamToken {
    identity: WorkloadIdentity,
    scope: String,
    client: reqwest::Client,
    held: Mutex<Option<Held>>,
    /// Held by the one caller fetching a new token.
    refreshing: tokio::sync::Mutex<()>,
    /// The last failure, until a fetch succeeds.
    failure: Mutex<Option<String>>,
    /// The last failed fetch's error and when it ended: logins within
    /// [`RETRY_AFTER`] of it get the same answer instead of waiting for
    /// another attempt.
    failed: Mutex<Option<(Instant, TokenError)>>,
    fetches: AtomicU64,
}

impl UpstreamToken {
    /// Checks the endpoint's URL (https; http only on loopback or to the
    /// metadata service's link-local address).
    pub fn new(identity: WorkloadIdentity, scope: &str) -> Result<UpstreamToken, String> {
        let url = match &identity {
            WorkloadIdentity::Managed { endpoint, .. } => endpoint,
            WorkloadIdentity::Federated { token_endpoint, .. } => token_endpoint,
        };
        check_endpoint(url)?;
        if scope.trim().is_empty() {
            return Err("token_scope is empty".into());
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .user_agent(concat!("airlock-identity/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(UpstreamToken {
            identity,
            scope: scope.to_owned(),
            client,
            held: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            failure: Mutex::new(None),
            failed: Mutex::new(None),
            fetches: AtomicU64::new(0),
        })
    }

    /// A token valid now: the held one until its refresh time, else a new
    /// one (the held one still, if fetching fails and it has not expired).
    /// While one caller refreshes, the others get the held token if it is
    /// still valid, and wait for the refresh only when it is not.
    pub async fn token(&self) -> Result<Credential, TokenError> {
        if let Some(token) = self.held_until(|h| h.refresh_at) {
            return Ok(token);
        }
        let _refreshing = match self.refreshing.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                if let Some(token) = self.held_until(|h| h.expires_at - EXPIRY_MARGIN) {
                    return Ok(token);
                }
                self.refreshing.lock().await
            }
        };
        // Someone else may have refreshed while this caller waited.
        if let Some(token) = self.held_until(|h| h.refresh_at) {
            return Ok(token);
        }
        let now = Instant::now();
        if let Some((at, error)) = self.failed.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && now < *at + RETRY_AFTER
        {
            return Err(error.clone());
        }
        match self.fetch().await {
            Ok(fresh) => {
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let token = fresh.token.clone();
                *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh);
                Ok(token)
            }
            Err(error) => {
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
                let now = Instant::now();
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                match held.as_mut() {
                    Some(h) if now + EXPIRY_MARGIN < h.expires_at => {
                        tracing::warn!(%error, "refreshing the upstream token failed; the current one is still valid");
                        // Try again a little later, not at every login.
                        h.refresh_at = (now + RETRY_AFTER).min(h.expires_at - EXPIRY_MARGIN);
                        Ok(h.token.clone())
                    }
                    _ => {
                        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, error.clone()));
                        Err(error)
                    }
                }
            }
        }
    }

    /// The held token, if now is before the instant `until` picks.
    fn held_until(&self, until: impl Fn(&Held) -> Instant) -> Option<Credential> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.as_ref()
            .filter(|h| Instant::now() < until(h))
            .map(|h| h.token.clone())
    }

    /// When the held token should be refreshed (now, when none is held).
    pub fn refresh_due(&self) -> Instant {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or_else(Instant::now, |h| h.refresh_at)
    }

    /// Whether the last fetch failed.
    pub fn failing(&self) -> bool {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Why the connection cannot log in, when its last fetch failed and no
    /// valid token is held.
    pub fn degraded(&self) -> Option<String> {
        let failure = self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        let valid = self.held_until(|h| h.expires_at - EXPIRY_MARGIN).is_some();
        (!valid).then_some(failure)
    }

    /// How many tokens have been asked for.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    async fn fetch(&self) -> Result<Held, TokenError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let (url, request) = match &self.identity {
            WorkloadIdentity::Managed { endpoint, client_id } => {
                let resource = self.scope.strip_suffix("/.default").unwrap_or(&self.scope);
                let mut query = vec![("api-version", "2018-02-01"), ("resource", resource)];
                if let Some(id) = client_id {
                    query.push(("client_id", id));
                }
                (
                    endpoint.clone(),
                    self.client.get(endpoint).header("Metadata", "true").query(&query),
                )
            }
            WorkloadIdentity::Federated {
                token_endpoint,
                client_id,
                token_file,
            } => {
                let assertion = std::fs::read_to_string(token_file).map_err(|e| TokenError::TokenFile {
                    path: token_file.display().to_string(),
                    detail: e.to_string(),
                })?;
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("scope", self.scope.as_str()),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", assertion.trim()),
                ];
                (
                    token_endpoint.clone(),
                    self.client.post(token_endpoint).form(&form),
                )
            }
        };
        let failed = |detail: String| TokenError::Endpoint {
            url: url.clone(),
            detail,
        };
        let mut response = request
            .send()
            .await
            .map_err(|e| failed(crate::fetch::error_chain(&e)))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failed(crate::fetch::error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(failed(format!("answer larger than {MAX_ANSWER_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(TokenError::Refused {
                url,
                status: status.as_u16(),
                detail: oauth_error_text(&body),
            });
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| failed(format!("not a token answer: {}", clip(&e.to_string()))))?;
        if answer.access_token.is_empty() {
            return Err(failed("the answer has an empty access_token".into()));
        }
        // Capped: a huge `expires_in` must not overflow the clock.
        let lifetime = Duration::from_secs(answer.expires_in.seconds().min(MAX_LIFETIME_SECS));
        if lifetime <= EXPIRY_MARGIN {
            return Err(failed(format!("the token expires in {lifetime:?}")));
        }
        let refresh_in = lifetime
            .saturating_sub(REFRESH_BEFORE)
            .max(lifetime / 2)
            .min(lifetime - EXPIRY_MARGIN);
        Ok(Held {
            token: Credential(answer.access_token),
            refresh_at: started + refresh_in,
            expires_at: started + lifetime,
        })
    }
}

/// https, or http to a loopback host or to the metadata service.
fn check_endpoint(raw: &str) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|e| format!("token_endpoint {raw:?}: {e}"))?;
    let metadata_service = url.scheme() == "http" && url.host_str() == Some("169.254.169.254");
    if metadata_service {
        return Ok(());
    }
    crate::fetch::check_fetch_url(raw)
        .map(drop)
        .map_err(|e| format!("token_endpoint: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        check_endpoint(IMDS_TOKEN_ENDPOINT).unwrap();
        check_endpoint("http://127.0.0.1:9/token").unwrap();
        check_endpoint("https://login.microsoftonline.com/t/oauth2/v2.0/token").unwrap();
        assert!(check_endpoint("http://169.254.169.253/token").is_err());
        assert!(check_endpoint("http://login.example/token").is_err());
    }

    #[test]
    fn the_token_never_shows() {
        assert_eq!(format!("{:?}", Credential("abc".into())), "Credential(***)");
    }
}
