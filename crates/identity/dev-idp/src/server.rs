//! Serving OIDC discovery and the JWKS, on loopback only.
//!
//! Owns the HTTP routes and the listener. Routes live under the issuer's
//! path, as OpenID Connect Discovery 1.0 §4 requires
//! (`<issuer>/.well-known/openid-configuration`); the JWKS is at
//! `<issuer>/discovery/v2.0/keys`, where Entra keeps it; the sign-in
//! endpoints of [`crate::login`] at `<issuer>/oauth2/v2.0/authorize` and
//! `<issuer>/oauth2/v2.0/token`, as Entra names them; the Graph stand-in
//! of [`crate::graph`] at `<issuer>/graph/v1.0/...`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde_json::{Value, json};
use url::Url;

use crate::error::DevIdpError;
use crate::key::SigningKey;

/// What the routes serve.
#[derive(Debug)]
pub struct Published {
    pub issuer: String,
    pub jwks_uri: String,
    pub key: SigningKey,
    /// Browser sign-in, when `--login-config` was given.
    pub login: Option<Arc<crate::login::Login>>,
    /// The Graph stand-in, when `--graph-config` was given.
    pub graph: Option<crate::graph::Graph>,
}

/// Checks `issuer` and returns (issuer as given, path prefix for routes).
pub fn issuer_prefix(issuer: &str) -> Result<String, DevIdpError> {
    let invalid = |reason: &str| DevIdpError::InvalidIssuer {
        url: issuer.to_owned(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(issuer).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid("not an http(s) URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("an issuer has no query or fragment"));
    }
    Ok(url.path().trim_end_matches('/').to_owned())
}

/// The discovery and JWKS routes for `published`.
pub fn router(published: Arc<Published>) -> Result<Router, DevIdpError> {
    let prefix = issuer_prefix(&published.issuer)?;
    Ok(Router::new()
        .route(
            &format!("{prefix}/.well-known/openid-configuration"),
            get(discovery),
        )
        .route(&format!("{prefix}/discovery/v2.0/keys"), get(jwks))
        .route(
            &format!("{prefix}/oauth2/v2.0/authorize"),
            get(crate::login::authorize_page).post(crate::login::authorize_submit),
        )
        .route(&format!("{prefix}/oauth2/v2.0/token"), post(crate::login::token))
        .route(
            &format!("{prefix}/oauth2/v2.0/devicecode"),
            post(crate::device::device_code),
        )
        .route(
            &format!("{prefix}/oauth2/v2.0/deviceauth"),
            get(crate::device::verify_page).post(crate::device::verify_submit),
        )
        .route(
            &format!("{prefix}/graph/v1.0/{{collection}}/{{id}}/checkMemberGroups"),
            post(crate::graph::check_member_groups),
        )
        .route(&format!("{prefix}/graph/calls"), get(crate::graph::calls))
        .with_state(published))
}

/// Refuses any non-loopback address: this issuer must never be reachable
/// from another machine.
pub fn check_listen(listen: SocketAddr) -> Result<(), DevIdpError> {
    if listen.ip().is_loopback() {
        Ok(())
    } else {
        Err(DevIdpError::NonLoopbackListen(listen))
    }
}

/// Serves until interrupted (Ctrl-C). Refuses any non-loopback address.
pub async fn serve(
    listen: SocketAddr,
    issuer: &str,
    key: SigningKey,
    login: Option<crate::login::LoginConfig>,
    graph: Option<crate::graph::Graph>,
) -> Result<(), DevIdpError> {
    check_listen(listen)?;
    let base = issuer.trim_end_matches('/');
    let published = Arc::new(Published {
        issuer: issuer.to_owned(),
        jwks_uri: format!("{base}/discovery/v2.0/keys"),
        key,
        login: login.map(crate::login::Login::new),
        graph,
    });
    let app = router(published.clone())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| DevIdpError::Serve { addr: listen, source })?;
    eprintln!(
        "airlock-dev-idp: serving issuer {issuer} on http://{listen} (kid {}); discovery at {base}/.well-known/openid-configuration",
        published.key.kid()
    );
    if published.graph.is_some() {
        eprintln!(
            "airlock-dev-idp: Graph stand-in at {base}/graph (checkMemberGroups), client credentials at {base}/oauth2/v2.0/token, DEVELOPMENT ONLY"
        );
    }
    if let Some(login) = &published.login {
        eprintln!(
            "airlock-dev-idp: browser sign-in at {base}/oauth2/v2.0/authorize for {} test user(s), DEVELOPMENT ONLY",
            login.config.users.len()
        );
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|source| DevIdpError::Serve { addr: listen, source })
}

async fn discovery(State(published): State<Arc<Published>>) -> axum::Json<Value> {
    let base = published.issuer.trim_end_matches('/');
    axum::Json(json!({
        "issuer": published.issuer,
        "jwks_uri": published.jwks_uri,
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", crate::device::GRANT_TYPE],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": ["openid", "profile"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "subject_types_supported": ["public"],
        "claims_supported": ["iss", "aud", "exp", "nbf", "iat", "oid", "sub", "tid",
                             "azp", "idtyp", "groups", "roles", "name",
                             "preferred_username", "scp", "app_displayname", "acrs"],
        "claims_parameter_supported": true,
    }))
}

async fn jwks(State(published): State<Arc<Published>>) -> axum::Json<Value> {
    axum::Json(published.key.jwks())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_paths() {
        assert_eq!(issuer_prefix("http://127.0.0.1:9400").unwrap(), "");
        assert_eq!(issuer_prefix("http://127.0.0.1:9400/").unwrap(), "");
        assert_eq!(
            issuer_prefix("http://localhost:9400/tenant/v2.0").unwrap(),
            "/tenant/v2.0"
        );
        assert!(issuer_prefix("ftp://x").is_err());
        assert!(issuer_prefix("http://x/?q=1").is_err());
        assert!(issuer_prefix("nonsense").is_err());
    }
}
