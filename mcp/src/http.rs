//! Streamable HTTP: the MCP endpoint at `/mcp`, behind the MCP
//! authorization spec's bearer tokens. Every request's token is verified by
//! the identity crate (issuer, audience, signature, expiry) before the MCP
//! layer sees it; a missing or refused token gets 401 with
//! `WWW-Authenticate` naming the protected-resource metadata (RFC 9728),
//! which names the issuer as the authorization server. There is no shared
//! server identity: the proxy session logs in with the caller's own token.
//!
//! Browsers are kept out: a request carrying an `Origin` is refused, and
//! only the configured host names are served (DNS rebinding).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use airlock_identity::{Identity, Verifier};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;

use crate::server::{Caller, Handler, Shared};
use crate::session::Owner;

/// What the HTTP front needs.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    /// Host names (or `host:port`) requests may be addressed to.
    pub allowed_hosts: Vec<String>,
    /// `https://host[:port]` as clients reach this server, for the
    /// resource metadata; by default from the request's Host.
    pub public_url: Option<String>,
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

#[derive(Clone)]
struct Auth {
    verifier: Verifier,
    public_url: Option<String>,
    https: bool,
}

/// The owner of what a token opens: issuer, tenant, subject, client app.
pub fn owner(identity: &Identity) -> Owner {
    Owner::of(
        &identity.issuer,
        identity.tenant.as_ref().map_or("", |t| t.0.as_str()),
        &identity.subject.0,
        identity.client_app.as_ref().map_or("", |c| c.0.as_str()),
    )
}

fn base_url(auth: &Auth, headers: &HeaderMap) -> String {
    if let Some(u) = &auth.public_url {
        return u.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("localhost");
    format!("{}://{host}", if auth.https { "https" } else { "http" })
}

fn unauthorized(auth: &Auth, headers: &HeaderMap, error: Option<&str>) -> Response {
    let metadata = format!("{}/.well-known/oauth-protected-resource", base_url(auth, headers));
    let mut challenge = format!("Bearer resource_metadata=\"{metadata}\"");
    if let Some(e) = error {
        // Quotes and backslashes would end the quoted string early.
        let e: String = e
            .chars()
            .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
            .collect();
        challenge += &format!(", error=\"invalid_token\", error_description=\"{e}\"");
    }
    let mut r = (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": "invalid_token", "error_description": error.unwrap_or("a bearer token is required")})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

async fn bearer(State(auth): State<Auth>, mut request: Request, next: Next) -> Response {
    let headers = request.headers().clone();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_owned())
        });
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return unauthorized(&auth, &headers, None);
    };
    match auth.verifier.verify(&token).await {
        Ok(identity) => {
            request.extensions_mut().insert(Caller {
                owner: owner(&identity),
                token,
                in_session: false,
            });
            next.run(request).await
        }
        Err(e) => {
            tracing::info!(error = %e, "MCP request refused: bearer token not accepted");
            unauthorized(&auth, &headers, Some(&e.to_string()))
        }
    }
}

/// Which identity opened each MCP session (by `Mcp-Session-Id`), so a
/// session id is never a key another identity's token can use: a request
/// naming a session of another identity, or one this server did not open,
/// is answered 404 (the client opens a new session), and an identity opens
/// at most [`MAX_MCP_SESSIONS_PER_OWNER`] at once.
#[derive(Clone)]
struct Bindings {
    owners: Arc<Mutex<HashMap<String, Owner>>>,
    manager: Arc<LocalSessionManager>,
}

/// MCP sessions one identity may hold open.
pub const MAX_MCP_SESSIONS_PER_OWNER: usize = 32;

async fn bind_sessions(State(b): State<Bindings>, request: Request, next: Next) -> Response {
    let Some(caller) = request.extensions().get::<Caller>().cloned() else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let named = request
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let deleting = request.method() == axum::http::Method::DELETE;
    match &named {
        Some(id) => {
            let owner = b
                .owners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .cloned();
            if owner.as_ref() != Some(&caller.owner) {
                return (StatusCode::NOT_FOUND, "no such MCP session for this identity").into_response();
            }
        }
        None => {
            // A new session may be opened: within the identity's limit,
            // counting only sessions that still exist.
            let mine: Vec<String> = b
                .owners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(_, o)| **o == caller.owner)
                .map(|(id, _)| id.clone())
                .collect();
            if mine.len() >= MAX_MCP_SESSIONS_PER_OWNER {
                let mut gone = Vec::new();
                for id in mine.iter() {
                    let sid: rmcp::transport::streamable_http_server::SessionId = id.as_str().into();
                    if !b.manager.has_session(&sid).await.unwrap_or(false) {
                        gone.push(id.clone());
                    }
                }
                let mut owners = b.owners.lock().unwrap_or_else(|p| p.into_inner());
                for id in &gone {
                    owners.remove(id);
                }
                if mine.len() - gone.len() >= MAX_MCP_SESSIONS_PER_OWNER {
                    return (
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "{MAX_MCP_SESSIONS_PER_OWNER} MCP sessions of yours are open; close some first"
                        ),
                    )
                        .into_response();
                }
            }
        }
    }
    let response = next.run(request).await;
    let mut owners = b.owners.lock().unwrap_or_else(|p| p.into_inner());
    if named.is_none()
        && let Some(id) = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
    {
        owners.insert(id.to_owned(), caller.owner.clone());
    }
    if deleting
        && response.status().is_success()
        && let Some(id) = &named
    {
        owners.remove(id);
    }
    response
}

async fn resource_metadata(State(auth): State<Auth>, headers: HeaderMap) -> Response {
    let base = base_url(&auth, &headers);
    axum::Json(json!({
        "resource": format!("{base}/mcp"),
        "authorization_servers": auth.verifier.config().issuers(),
        "bearer_methods_supported": ["header"],
        "resource_name": "Airlock MCP server",
    }))
    .into_response()
}

/// Serves MCP over HTTP until the process is stopped.
pub async fn serve(shared: Arc<Shared>, verifier: Verifier, settings: HttpSettings) -> anyhow::Result<()> {
    let auth = Auth {
        verifier,
        public_url: settings.public_url.clone(),
        https: settings.tls.is_some(),
    };
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(settings.allowed_hosts.clone())
        .enforce_origin_validation();
    let factory_shared = shared.clone();
    let manager = Arc::new(LocalSessionManager::default());
    let bindings = Bindings {
        owners: Arc::default(),
        manager: manager.clone(),
    };
    let mcp = StreamableHttpService::new(move || Ok(Handler::new(factory_shared.clone())), manager, config);
    let router = Router::new()
        .nest_service("/mcp", mcp)
        // Layers run outermost last: the bearer check, then the binding.
        .layer(axum::middleware::from_fn_with_state(bindings, bind_sessions))
        .layer(axum::middleware::from_fn_with_state(auth.clone(), bearer))
        .route("/.well-known/oauth-protected-resource", get(resource_metadata))
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(resource_metadata),
        )
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(auth);
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    let bound = listener.local_addr()?;
    match &settings.tls {
        Some((cert, key)) => {
            let live = airlock_reload::LiveCert::load(cert, key)
                .map_err(|e| anyhow::anyhow!("--tls-cert/--tls-key: {e}"))?;
            let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(live);
            tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
            let listener = airlock_reload::TlsListener::new(listener, acceptor)?;
            tracing::info!(listen = %bound, "airlock-mcp serving MCP over HTTPS at /mcp");
            axum::serve(listener, router).await?;
        }
        None => {
            tracing::info!(listen = %bound, "airlock-mcp serving MCP over HTTP at /mcp (loopback only)");
            axum::serve(listener, router).await?;
        }
    }
    Ok(())
}
