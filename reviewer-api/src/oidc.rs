//! Browser sign-in: OpenID Connect authorization code flow with PKCE
//! (RFC 7636, S256) against the configured issuer (Entra ID in production,
//! `airlock-dev-idp` in development), then a session cookie.
//!
//! `/auth/login` remembers a random `state` and PKCE verifier server-side
//! (keyed by a short-lived, SameSite=Lax cookie that must come back on the
//! issuer's redirect) and sends the browser to the issuer.
//! `/auth/callback` checks `state` against that cookie, exchanges the code
//! with the verifier, verifies the access token with the identity crate,
//! and sets the HttpOnly, SameSite=Strict session cookie (Secure under
//! HTTPS). It answers with a small page that moves on to the UI, because a
//! Strict cookie is not sent on a redirect chain that began at another site.
//! `/auth/logout` (POST, CSRF-checked) ends the session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::Route;
use crate::auth::{self, LOGIN_COOKIE, Token, random_token};
use crate::config::OidcSection;
use crate::error::{ApiError, Code};
use crate::html::{self, PageError};
use crate::shared::Shared;

pub fn routes() -> Vec<Route> {
    vec![
        ("GET", "/auth/login", get(login)),
        ("GET", "/auth/callback", get(callback)),
        ("POST", "/auth/logout", post(logout)),
    ]
}

/// How long a started sign-in may take.
const LOGIN_TTL: Duration = crate::shared::LOGIN_TTL;
/// Sign-ins in flight at most (each is a few hundred bytes).
const MAX_PENDING: usize = 10_000;

#[derive(Debug, Clone)]
struct Endpoints {
    authorization: String,
    token: String,
}

#[derive(Debug)]
struct Pending {
    verifier: String,
    return_to: String,
    started: Instant,
}

/// The configured OIDC client.
#[derive(Debug)]
pub struct Oidc {
    client_id: String,
    scopes: Vec<String>,
    secret: Option<String>,
    redirect_uri: String,
    discovery_url: Option<String>,
    configured: Option<Endpoints>,
    discovered: OnceCell<Endpoints>,
    pending: Mutex<HashMap<String, Pending>>,
    /// With `reviewer.state: nats`: sign-ins in progress are kept there,
    /// so the identity provider may send the browser back to any replica.
    shared: Option<Arc<Shared>>,
    http: reqwest::Client,
}

/// A sign-in in progress as stored in NATS KV (sealed under its `state`).
#[derive(Serialize, Deserialize)]
struct StoredLogin {
    verifier: String,
    return_to: String,
    /// Unix seconds.
    started: i64,
}

#[derive(Deserialize)]
struct Discovery {
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// RFC 7636 §4.2: BASE64URL(SHA256(verifier)).
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The `claims` request parameter asking for authentication contexts
/// (space-separated ids in `acrs`), or `None` when there is none or one is
/// not an id (a crafted link cannot inject other claims).
pub fn step_up_claims(acrs: &str) -> Option<String> {
    let ids: Vec<&str> = acrs.split_whitespace().collect();
    let valid = |id: &&str| {
        !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if ids.is_empty() || ids.len() > 10 || !ids.iter().all(valid) {
        return None;
    }
    let request = if ids.len() == 1 {
        serde_json::json!({"access_token": {"acrs": {"essential": true, "value": ids[0]}}})
    } else {
        serde_json::json!({"access_token": {"acrs": {"essential": true, "values": ids}}})
    };
    Some(request.to_string())
}

/// Only a path on this server: never `//host` or a full URL (an open
/// redirect would let a link sign someone in and land them elsewhere).
fn safe_return(path: &str) -> String {
    let ok = path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && !path.chars().any(|c| c.is_control())
        && path.len() <= 512;
    if ok { path.to_owned() } else { "/".to_owned() }
}

impl Oidc {
    pub fn new(
        section: &OidcSection,
        identity: &airlock_identity::IdentityConfig,
        public_url: &str,
        shared: Option<Arc<Shared>>,
    ) -> anyhow::Result<Oidc> {
        if section.client_id.trim().is_empty() {
            anyhow::bail!("reviewer.oidc.client_id is empty");
        }
        let audience = identity.audiences().into_iter().next().unwrap_or_default();
        let scopes = section.scopes.clone().unwrap_or_else(|| {
            vec![
                "openid".into(),
                "profile".into(),
                format!("{}/access_as_user", audience.trim_end_matches('/')),
            ]
        });
        let secret = match &section.client_secret_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                anyhow::anyhow!("reviewer.oidc.client_secret_env names {var}, which is not set")
            })?),
            None => None,
        };
        let configured = match (&section.authorization_endpoint, &section.token_endpoint) {
            (Some(a), Some(t)) => Some(Endpoints {
                authorization: a.clone(),
                token: t.clone(),
            }),
            (None, None) => None,
            _ => {
                anyhow::bail!("reviewer.oidc: set both authorization_endpoint and token_endpoint, or neither")
            }
        };
        for url in configured.iter().flat_map(|e| [&e.authorization, &e.token]) {
            airlock_identity::check_fetch_url(url)
                .map_err(|e| anyhow::anyhow!("reviewer.oidc endpoint {url}: {e}"))?;
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Oidc {
            client_id: section.client_id.clone(),
            scopes,
            secret,
            redirect_uri: format!("{public_url}/auth/callback"),
            discovery_url: identity.discovery_url(),
            configured,
            discovered: OnceCell::new(),
            pending: Mutex::new(HashMap::new()),
            shared,
            http,
        })
    }

    async fn endpoints(&self) -> Result<Endpoints, ApiError> {
        if let Some(e) = &self.configured {
            return Ok(e.clone());
        }
        let unavailable = |why: String| ApiError::new(Code::Unavailable, format!("OIDC discovery: {why}"));
        self.discovered
            .get_or_try_init(|| async {
                let url = self
                    .discovery_url
                    .clone()
                    .ok_or_else(|| unavailable("no issuer configured".into()))?;
                let body = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| unavailable(e.to_string()))?
                    .bytes()
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                let d: Discovery = serde_json::from_slice(&body)
                    .map_err(|e| unavailable(format!("not a discovery document: {e}")))?;
                match (d.authorization_endpoint, d.token_endpoint) {
                    (Some(authorization), Some(token)) => Ok(Endpoints { authorization, token }),
                    _ => Err(unavailable(
                        "the issuer advertises no authorization or token endpoint".into(),
                    )),
                }
            })
            .await
            .cloned()
    }

    async fn remember(&self, state: String, sealing: &str, pending: Pending) -> Result<(), ApiError> {
        if let Some(shared) = &self.shared {
            let stored = StoredLogin {
                verifier: pending.verifier,
                return_to: pending.return_to,
                started: crate::shared::unix_now(),
            };
            let bytes =
                serde_json::to_vec(&stored).map_err(|e| ApiError::new(Code::Unavailable, e.to_string()))?;
            return shared.put_login(&state, sealing, &bytes).await.map_err(|e| {
                ApiError::new(
                    Code::Unavailable,
                    format!("cannot start a sign-in right now: {e}"),
                )
            });
        }
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_PENDING {
            map.retain(|_, p| p.started.elapsed() < LOGIN_TTL);
            if map.len() >= MAX_PENDING {
                return Err(ApiError::new(Code::Unavailable, "too many sign-ins in progress"));
            }
        }
        map.insert(state, pending);
        Ok(())
    }

    async fn take(&self, state: &str, sealing: &str) -> Result<Option<Pending>, ApiError> {
        if let Some(shared) = &self.shared {
            let Some(bytes) = shared.take_login(state, sealing).await.map_err(|e| {
                ApiError::new(
                    Code::Unavailable,
                    format!("cannot finish a sign-in right now: {e}"),
                )
            })?
            else {
                return Ok(None);
            };
            let Ok(stored) = serde_json::from_slice::<StoredLogin>(&bytes) else {
                return Ok(None);
            };
            let age = crate::shared::unix_now().saturating_sub(stored.started);
            if !(0..i64::try_from(LOGIN_TTL.as_secs()).unwrap_or(i64::MAX)).contains(&age) {
                return Ok(None);
            }
            return Ok(Some(Pending {
                verifier: stored.verifier,
                // Checked again: what comes back from storage is not trusted
                // to be a path on this server.
                return_to: safe_return(&stored.return_to),
                started: Instant::now(),
            }));
        }
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map.remove(state).filter(|p| p.started.elapsed() < LOGIN_TTL))
    }

    /// Exchanges `code` for an access token (never logged).
    async fn exchange(&self, code: &str, verifier: &str) -> Result<Token, ApiError> {
        let endpoints = self.endpoints().await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("client_id", self.client_id.as_str()),
            ("code_verifier", verifier),
        ];
        if let Some(secret) = &self.secret {
            form.push(("client_secret", secret));
        }
        let response = self
            .http
            .post(&endpoints.token)
            .form(&form)
            .send()
            .await
            .map_err(|e| ApiError::new(Code::Unavailable, format!("token endpoint: {e}")))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| ApiError::new(Code::Unavailable, format!("token endpoint: {e}")))?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            ApiError::unauthenticated(format!(
                "the token endpoint answered {status} without a JSON token response"
            ))
        })?;
        match parsed.access_token {
            Some(t) if status.is_success() && !t.is_empty() => Ok(Token::new(t)),
            _ => Err(ApiError::unauthenticated(format!(
                "the issuer refused the sign-in: {} {}",
                parsed.error.unwrap_or_else(|| status.to_string()),
                parsed.error_description.unwrap_or_default()
            ))),
        }
    }
}

fn oidc(app: &crate::App) -> Result<&Oidc, ApiError> {
    app.oidc.as_ref().ok_or_else(|| {
        ApiError::new(
            Code::InvalidArgument,
            "browser sign-in is not configured (reviewer.oidc); use a bearer token",
        )
    })
}

fn query(raw: Option<&str>, key: &str) -> Option<String> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

async fn login(State(app): State<crate::State>, RawQuery(raw): RawQuery) -> Result<Response, PageError> {
    let oidc = oidc(&app)?;
    let endpoints = oidc.endpoints().await?;
    let state = random_token();
    // Seals the stored sign-in (with reviewer.state: nats); only the login
    // cookie carries it, unlike `state`, which travels in URLs.
    let sealing = random_token();
    let verifier = random_token();
    let return_to = safe_return(&query(raw.as_deref(), "return_to").unwrap_or_else(|| "/".into()));
    let mut url = url::Url::parse(&endpoints.authorization)
        .map_err(|e| ApiError::new(Code::Unavailable, format!("authorization endpoint: {e}")))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &oidc.client_id)
        .append_pair("redirect_uri", &oidc.redirect_uri)
        .append_pair("scope", &oidc.scopes.join(" "))
        .append_pair("state", &state)
        .append_pair("code_challenge", &challenge(&verifier))
        .append_pair("code_challenge_method", "S256");
    // Step-up: ask the issuer for a sign-in that meets these authentication
    // contexts (Entra: the `claims` parameter with `acrs`, which starts the
    // Conditional Access policy tied to each context).
    if let Some(claims) = query(raw.as_deref(), "acrs").and_then(|acrs| step_up_claims(&acrs)) {
        url.query_pairs_mut().append_pair("claims", &claims);
    }
    oidc.remember(
        state.clone(),
        &sealing,
        Pending {
            verifier,
            return_to,
            started: Instant::now(),
        },
    )
    .await?;
    let cookie = auth::set_cookie(
        LOGIN_COOKIE,
        &format!("{state}.{sealing}"),
        "/auth",
        LOGIN_TTL,
        false,
        app.auth.secure_cookies,
    );
    let mut response = Redirect::to(url.as_str()).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(response)
}

async fn callback(
    State(app): State<crate::State>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<impl IntoResponse, PageError> {
    let (cookie, name, return_to) = match finish(&app, &headers, raw.as_deref()).await {
        Ok(done) => done,
        Err(e) => {
            app.metrics.sign_ins_refused.inc();
            return Err(e.into());
        }
    };
    app.metrics.sign_ins.inc();
    let secure = app.auth.secure_cookies;
    let session = auth::set_cookie(
        auth::session_cookie_name(secure),
        &cookie,
        "/",
        app.config.reviewer.session_ttl,
        true,
        secure,
    );
    let cookies = [session, auth::clear_cookie(LOGIN_COOKIE, "/auth", secure)]
        .into_iter()
        .filter_map(|c| HeaderValue::from_str(&c).ok())
        .map(|v| (header::SET_COOKIE, v));
    Ok((AppendHeaders(cookies), html::signed_in_page(&name, &return_to)))
}

/// Returns (session cookie value, display name, where to go next).
async fn finish(
    app: &crate::App,
    headers: &HeaderMap,
    raw: Option<&str>,
) -> Result<(String, String, String), ApiError> {
    let oidc = oidc(app)?;
    if let Some(error) = query(raw, "error") {
        let description = query(raw, "error_description").unwrap_or_default();
        return Err(ApiError::unauthenticated(format!(
            "the issuer refused the sign-in: {error} {description}"
        )));
    }
    let state = query(raw, "state").ok_or_else(|| ApiError::invalid("the callback has no state"))?;
    let code = query(raw, "code").ok_or_else(|| ApiError::invalid("the callback has no code"))?;
    // The state must be the one this browser started with: a sign-in started
    // elsewhere (login CSRF) has no matching cookie here.
    let login = auth::cookie(headers, LOGIN_COOKIE).unwrap_or_default();
    let (expected, sealing) = login.split_once('.').unwrap_or(("", ""));
    if expected.is_empty() || !auth::same_secret(expected, &state) {
        return Err(ApiError::new(
            Code::Csrf,
            "this sign-in was not started from this browser; start again",
        ));
    }
    let pending = oidc
        .take(&state, sealing)
        .await?
        .ok_or_else(|| ApiError::unauthenticated("this sign-in expired or was already used; start again"))?;
    let token = oidc.exchange(&code, &pending.verifier).await?;
    let identity = app.auth.verify(token.expose()).await?;
    let name = if identity.display_name.is_empty() {
        identity.subject.clone()
    } else {
        identity.display_name.clone()
    };
    tracing::info!(subject = %identity.subject, "reviewer signed in");
    let cookie = app
        .auth
        .sessions
        .create(token, identity, app.config.reviewer.session_ttl)
        .await?;
    Ok((cookie, name, pending.return_to))
}

async fn logout(
    State(app): State<crate::State>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    let csrf = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned());
    let secure = app.auth.secure_cookies;
    let name = auth::session_cookie_name(secure);
    match app.auth.changing(&headers, csrf.as_deref()).await {
        Ok(_) => {
            if let Some(c) = auth::cookie(&headers, name) {
                app.auth.sessions.remove(&c).await?;
            }
        }
        Err(e) if e.code == Code::Unauthenticated => {}
        Err(e) => return Err(e.into()),
    }
    let mut response = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::clear_cookie(name, "/", secure)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_is_unpadded_base64url_of_sha256() {
        // Expected value computed independently (Python hashlib + base64).
        assert_eq!(
            challenge("a-verifier-of-43-characters-made-for-tests0"),
            "K1fG7KxlzLrDNbl8rqTy3l0lOlAT-UoWJPzn7_5B7eY"
        );
        assert_eq!(
            random_token().len(),
            43,
            "32 random bytes: a verifier of the RFC's minimum length"
        );
    }

    #[test]
    fn step_up_asks_only_for_context_ids() {
        assert_eq!(
            step_up_claims("c1").unwrap(),
            r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#
        );
        assert_eq!(
            step_up_claims("c1 c2").unwrap(),
            r#"{"access_token":{"acrs":{"essential":true,"values":["c1","c2"]}}}"#
        );
        for bad in ["", "c1\"}", "c1,c2", "a b c d e f g h i j k"] {
            assert_eq!(step_up_claims(bad), None, "{bad}");
        }
    }

    #[test]
    fn return_paths_stay_on_this_server() {
        assert_eq!(safe_return("/requests/01J"), "/requests/01J");
        assert_eq!(safe_return("//evil.example/"), "/");
        assert_eq!(safe_return("https://evil.example/"), "/");
        assert_eq!(safe_return("/\\evil.example"), "/");
        assert_eq!(safe_return("/x\r\nSet-Cookie: a=b"), "/");
    }
}
