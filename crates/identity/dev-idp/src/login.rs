//! Browser sign-in for development: the OAuth 2.0 authorization code flow
//! with PKCE (RFC 6749 §4.1, RFC 7636, S256 only), as the reviewer UI uses
//! against Entra ID in production. **Development and tests only**: the
//! authorization page lets anyone pick any configured test user, with no
//! password.
//!
//! Owns the login file (`serve --login-config`: registered clients with
//! their exact redirect URIs, test users with their groups), the
//! authorization page, and the token endpoint. Codes are single-use, live
//! 60 seconds, and are bound to the client, the redirect URI and the PKCE
//! challenge; the token endpoint refuses a missing or wrong verifier, a
//! reused or expired code, and a different client or redirect URI. Access
//! tokens are minted by [`crate::token::mint`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::DevIdpError;
use crate::server::Published;
use crate::token::{PrincipalKind, TokenRequest};

/// How long an authorization code may wait for its exchange.
pub const CODE_TTL: Duration = Duration::from_secs(60);

/// The login file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// `aud` of the access tokens (Airlock's `identity.audience`).
    #[serde(default = "default_audience")]
    pub audience: String,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Lifetime of the access tokens.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    pub clients: Vec<ClientConfig>,
    pub users: Vec<UserConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub client_id: String,
    /// Compared exactly, as OAuth 2.0 Security BCP requires.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// A public client that signs in with the device authorization grant
    /// (RFC 8628), as `airlock-control login` does; it needs no redirect.
    #[serde(default)]
    pub device: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Object id (`oid` and `sub`).
    pub sub: String,
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Issue this user's tokens with group overage (no groups claim; Graph
    /// answers for them with `--graph-config`).
    #[serde(default)]
    pub overage: bool,
}

fn default_audience() -> String {
    "api://airlock".into()
}
fn default_tenant() -> String {
    crate::cli::DEFAULT_TENANT.into()
}
fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}

impl LoginConfig {
    pub fn load(path: &Path) -> Result<Self, DevIdpError> {
        let bad = |reason: String| DevIdpError::LoginConfig {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let config: LoginConfig = serde_norway::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if config.clients.is_empty() || config.users.is_empty() {
            return Err(bad("list at least one client and one user".into()));
        }
        for c in &config.clients {
            if c.client_id.is_empty() || (c.redirect_uris.is_empty() && !c.device) {
                return Err(bad(
                    "every client needs a client_id, and redirect_uris unless it is a device client".into(),
                ));
            }
        }
        if config.users.iter().any(|u| u.sub.is_empty()) {
            return Err(bad("every user needs a sub".into()));
        }
        Ok(config)
    }
}

/// An issued code, waiting for its exchange.
#[derive(Debug)]
struct Grant {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    user: UserConfig,
    /// Authentication contexts the sign-in met (step-up asked for).
    acrs: Vec<String>,
    issued: Instant,
    used: bool,
}

/// The login state of a running issuer.
#[derive(Debug)]
pub struct Login {
    pub config: LoginConfig,
    codes: Mutex<HashMap<String, Grant>>,
    /// Device authorizations waiting for a user, by device code.
    pub(crate) devices: Mutex<HashMap<String, crate::device::Pending>>,
}

impl Login {
    pub fn new(config: LoginConfig) -> Arc<Login> {
        Arc::new(Login {
            config,
            codes: Mutex::new(HashMap::new()),
            devices: Mutex::new(HashMap::new()),
        })
    }
}

pub(crate) fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

pub(crate) fn page(status: StatusCode, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>airlock-dev-idp sign-in</title>\
         <style>body{{font:15px system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}}\
         .warn{{background:#fde2e2;border:1px solid #c62828;padding:.6rem .8rem;border-radius:6px}}\
         button{{font:inherit;padding:.5rem 1rem;margin:.3rem 0;width:100%;text-align:left;cursor:pointer}}\
         small{{color:#666}}</style></head><body>\
         <p class=\"warn\"><strong>airlock-dev-idp: DEVELOPMENT AND TESTS ONLY, NEVER PRODUCTION.</strong> \
         Anyone can sign in here as any test user, without a password.</p>{body}</body></html>\n"
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        html,
    )
        .into_response()
}

pub(crate) fn refuse_page(why: &str) -> Response {
    page(
        StatusCode::BAD_REQUEST,
        &format!("<h1>Sign-in refused</h1><p>{}</p>", esc(why)),
    )
}

/// The parameters of an authorization request (query on GET, form on POST).
#[derive(Debug, Default, Deserialize)]
pub struct AuthorizeParams {
    #[serde(default)]
    response_type: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    code_challenge: String,
    #[serde(default)]
    code_challenge_method: String,
    /// Step-up: `{"access_token": {"acrs": {"essential": true, "value": "c1"}}}`.
    #[serde(default)]
    claims: String,
    /// POST only: which test user was picked.
    #[serde(default)]
    user: String,
}

pub(crate) fn login_of(published: &Published) -> Result<&Arc<Login>, String> {
    published.login.as_ref().ok_or_else(|| {
        "no test users are configured: start `airlock-dev-idp serve` with --login-config FILE".to_owned()
    })
}

/// Checks what must hold before anything may be sent back to the redirect
/// URI: a registered client and exactly one of its redirect URIs. Then the
/// rest (response type, PKCE).
fn check(login: &Login, p: &AuthorizeParams) -> Result<(), String> {
    let client = login
        .config
        .clients
        .iter()
        .find(|c| c.client_id == p.client_id)
        .ok_or_else(|| format!("unknown client_id {:?}", p.client_id))?;
    if !client.redirect_uris.contains(&p.redirect_uri) {
        return Err(format!(
            "redirect_uri {:?} is not registered for client {:?}",
            p.redirect_uri, p.client_id
        ));
    }
    if p.response_type != "code" {
        return Err("response_type must be code".into());
    }
    if p.code_challenge_method != "S256" || p.code_challenge.len() != 43 {
        return Err(
            "PKCE is required: code_challenge (S256, 43 characters) and code_challenge_method=S256".into(),
        );
    }
    requested_acrs(&p.claims)?;
    Ok(())
}

/// The authentication contexts a `claims` request parameter asks for
/// (`access_token.acrs.value` or `.values`), as Entra reads it.
pub fn requested_acrs(claims: &str) -> Result<Vec<String>, String> {
    if claims.trim().is_empty() {
        return Ok(Vec::new());
    }
    let bad = || format!("claims is not a claims request this issuer understands: {claims:?}");
    let parsed: serde_json::Value = serde_json::from_str(claims).map_err(|_| bad())?;
    let Some(acrs) = parsed.pointer("/access_token/acrs") else {
        return Ok(Vec::new());
    };
    let mut ids: Vec<String> = Vec::new();
    if let Some(one) = acrs.get("value") {
        ids.push(one.as_str().ok_or_else(bad)?.to_owned());
    }
    if let Some(many) = acrs.get("values") {
        for v in many.as_array().ok_or_else(bad)? {
            ids.push(v.as_str().ok_or_else(bad)?.to_owned());
        }
    }
    Ok(ids)
}

/// GET: the page to pick a test user.
pub async fn authorize_page(
    State(published): State<Arc<Published>>,
    Query(p): Query<AuthorizeParams>,
) -> Response {
    let login = match login_of(&published) {
        Ok(l) => l,
        Err(why) => return refuse_page(&why),
    };
    if let Err(why) = check(login, &p) {
        return refuse_page(&why);
    }
    let acrs = requested_acrs(&p.claims).unwrap_or_default();
    let step_up = if acrs.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"warn\" id=\"step-up\"><strong>Step-up:</strong> this sign-in must meet authentication context \
             <code>{}</code>. Here, picking a user counts as meeting it (a real tenant would ask for MFA or a \
             compliant device).</p>",
            esc(&acrs.join(", "))
        )
    };
    let hidden = [
        ("claims", &p.claims),
        ("response_type", &p.response_type),
        ("client_id", &p.client_id),
        ("redirect_uri", &p.redirect_uri),
        ("scope", &p.scope),
        ("state", &p.state),
        ("code_challenge", &p.code_challenge),
        ("code_challenge_method", &p.code_challenge_method),
    ]
    .iter()
    .map(|(k, v)| format!("<input type=\"hidden\" name=\"{k}\" value=\"{}\">", esc(v)))
    .collect::<String>();
    let users = login
        .config
        .users
        .iter()
        .map(|u| {
            format!(
                "<button type=\"submit\" name=\"user\" value=\"{}\" data-user=\"{}\"><strong>{}</strong><br>\
                 <small>{} · groups: {}</small></button>",
                esc(&u.sub),
                esc(&u.sub),
                esc(&u.name),
                esc(&u.sub),
                esc(&u.groups.join(", "))
            )
        })
        .collect::<String>();
    page(
        StatusCode::OK,
        &format!(
            "<h1>Sign in as a test user</h1><p>for <code>{}</code>, returning to <code>{}</code></p>{step_up}\
             <form method=\"post\">{hidden}{users}</form>",
            esc(&p.client_id),
            esc(&p.redirect_uri)
        ),
    )
}

pub(crate) fn random_code() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// POST: the user was picked; issue a code and send the browser back.
pub async fn authorize_submit(
    State(published): State<Arc<Published>>,
    Form(p): Form<AuthorizeParams>,
) -> Response {
    let login = match login_of(&published) {
        Ok(l) => l,
        Err(why) => return refuse_page(&why),
    };
    if let Err(why) = check(login, &p) {
        return refuse_page(&why);
    }
    let Some(user) = login.config.users.iter().find(|u| u.sub == p.user) else {
        return refuse_page(&format!("no test user {:?}", p.user));
    };
    let code = random_code();
    {
        let mut codes = login.codes.lock().unwrap_or_else(|e| e.into_inner());
        codes.retain(|_, g| g.issued.elapsed() < CODE_TTL * 10);
        codes.insert(
            code.clone(),
            Grant {
                client_id: p.client_id.clone(),
                redirect_uri: p.redirect_uri.clone(),
                challenge: p.code_challenge.clone(),
                user: user.clone(),
                acrs: requested_acrs(&p.claims).unwrap_or_default(),
                issued: Instant::now(),
                used: false,
            },
        );
    }
    let Ok(mut target) = url::Url::parse(&p.redirect_uri) else {
        return refuse_page("the registered redirect_uri is not a URL");
    };
    target
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &p.state);
    (StatusCode::SEE_OTHER, [(header::LOCATION, target.to_string())]).into_response()
}

#[derive(Debug, Default, Deserialize)]
pub struct TokenParams {
    #[serde(default)]
    grant_type: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    code_verifier: String,
}

pub(crate) fn token_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Za-z0-9-._~]`.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Checks an exchange against its grant; the refusal as (error, description).
fn judge(grant: &Grant, p: &TokenParams) -> Result<(), (&'static str, String)> {
    if grant.used {
        return Err(("invalid_grant", "the code was already used".into()));
    }
    if grant.issued.elapsed() >= CODE_TTL {
        return Err(("invalid_grant", "the code expired".into()));
    }
    if grant.client_id != p.client_id {
        return Err(("invalid_grant", "the code was issued to another client".into()));
    }
    if grant.redirect_uri != p.redirect_uri {
        return Err((
            "invalid_grant",
            "redirect_uri differs from the authorization request".into(),
        ));
    }
    if p.code_verifier.is_empty() {
        return Err(("invalid_grant", "code_verifier is required (PKCE)".into()));
    }
    if !valid_verifier(&p.code_verifier) {
        return Err((
            "invalid_grant",
            "code_verifier is not 43-128 unreserved characters".into(),
        ));
    }
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(p.code_verifier.as_bytes()));
    if challenge != grant.challenge {
        return Err((
            "invalid_grant",
            "code_verifier does not match the code_challenge".into(),
        ));
    }
    Ok(())
}

/// POST: exchange a code for an access token, or (with the Graph
/// stand-in) the client-credentials grant.
pub async fn token(
    State(published): State<Arc<Published>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if form.get("grant_type").map(String::as_str) == Some("client_credentials") {
        return match &published.graph {
            Some(graph) => graph.client_credentials(&form),
            None => token_error(
                "unsupported_grant_type",
                "client_credentials needs the Graph stand-in (--graph-config)",
            ),
        };
    }
    if form.get("grant_type").map(String::as_str) == Some(crate::device::GRANT_TYPE) {
        return crate::device::exchange(&published, &form);
    }
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let p = TokenParams {
        grant_type: field("grant_type"),
        code: field("code"),
        redirect_uri: field("redirect_uri"),
        client_id: field("client_id"),
        code_verifier: field("code_verifier"),
    };
    let Some(login) = published.login.as_ref() else {
        return token_error("unsupported_grant_type", "no login is configured");
    };
    if p.grant_type != "authorization_code" {
        return token_error("unsupported_grant_type", "only authorization_code is supported");
    }
    let (user, acrs) = {
        let mut codes = login.codes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(grant) = codes.get_mut(&p.code) else {
            return token_error("invalid_grant", "unknown code");
        };
        // Any attempt burns the code: a wrong verifier cannot be retried.
        let verdict = judge(grant, &p);
        grant.used = true;
        if let Err((error, description)) = verdict {
            return token_error(error, &description);
        }
        (grant.user.clone(), grant.acrs.clone())
    };
    let request = TokenRequest {
        issuer: published.issuer.clone(),
        audience: login.config.audience.clone(),
        subject: user.sub.clone(),
        name: user.name.clone(),
        groups: user.groups.clone(),
        roles: Vec::new(),
        kind: PrincipalKind::User,
        ttl: login.config.ttl,
        tenant: login.config.tenant.clone(),
        client_id: p.client_id.clone(),
        scope: "access_as_user".into(),
        overage: user.overage,
        acrs,
    };
    match crate::token::mint(&published.key, &request) {
        Ok(access_token) => (
            StatusCode::OK,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(json!({
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": login.config.ttl.as_secs(),
                "scope": "access_as_user",
            })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": "server_error", "error_description": e.to_string()})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(verifier: &str) -> Grant {
        Grant {
            client_id: "c".into(),
            redirect_uri: "http://127.0.0.1:1/cb".into(),
            challenge: URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())),
            user: UserConfig {
                sub: "u".into(),
                name: "U".into(),
                groups: vec![],
                overage: false,
            },
            acrs: vec![],
            issued: Instant::now(),
            used: false,
        }
    }

    fn params(verifier: &str) -> TokenParams {
        TokenParams {
            grant_type: "authorization_code".into(),
            code: "x".into(),
            redirect_uri: "http://127.0.0.1:1/cb".into(),
            client_id: "c".into(),
            code_verifier: verifier.into(),
        }
    }

    #[test]
    fn step_up_requests_are_read() {
        assert_eq!(
            requested_acrs(r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#).unwrap(),
            ["c1"]
        );
        assert_eq!(
            requested_acrs(r#"{"access_token":{"acrs":{"essential":true,"values":["c1","c2"]}}}"#).unwrap(),
            ["c1", "c2"]
        );
        assert!(requested_acrs("").unwrap().is_empty());
        assert!(requested_acrs("{not json").is_err());
    }

    #[test]
    fn exchanges_are_judged() {
        let v = "v".repeat(43);
        assert!(judge(&grant(&v), &params(&v)).is_ok());
        let cases: Vec<(TokenParams, Grant, &str)> = vec![
            (params(""), grant(&v), "required"),
            (params(&"w".repeat(43)), grant(&v), "does not match"),
            (params("short"), grant("short"), "43-128"),
            (
                TokenParams {
                    client_id: "other".into(),
                    ..params(&v)
                },
                grant(&v),
                "another client",
            ),
            (
                TokenParams {
                    redirect_uri: "http://127.0.0.1:1/other".into(),
                    ..params(&v)
                },
                grant(&v),
                "redirect_uri",
            ),
            (
                params(&v),
                Grant {
                    used: true,
                    ..grant(&v)
                },
                "already used",
            ),
        ];
        let mut cases = cases;
        if let Some(issued) = Instant::now().checked_sub(CODE_TTL * 2) {
            cases.push((params(&v), Grant { issued, ..grant(&v) }, "expired"));
        }
        for (p, g, expected) in cases {
            let err = judge(&g, &p).expect_err(expected);
            assert!(err.1.contains(expected), "{} vs {expected}", err.1);
        }
    }
}
