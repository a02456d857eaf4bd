//! A stand-in for the two Microsoft endpoints Airlock asks about group
//! overage: the tenant token endpoint's client-credentials grant and
//! Graph's `checkMemberGroups`. **Development and tests only.**
//!
//! Owns the Graph file (`serve --graph-config`: the application allowed to
//! ask, the environment variable holding its secret, and who is in which
//! group) and the two routes. Membership is the file's `members`, plus the
//! groups of the login file's test users. Graph's answers are transitive
//! in Entra; here they are whatever the file lists.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

use crate::error::DevIdpError;
use crate::server::Published;

/// How long the application tokens it issues say they last.
const APP_TOKEN_SECS: u64 = 3600;

/// The Graph file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphFile {
    /// The application (client) id allowed to ask.
    pub client_id: String,
    /// The environment variable holding its secret (read when serving).
    pub client_secret_env: String,
    /// Object id -> group object ids.
    #[serde(default)]
    pub members: BTreeMap<String, Vec<String>>,
}

/// A running stand-in.
#[derive(Debug)]
pub struct Graph {
    client_id: String,
    secret: String,
    members: BTreeMap<String, Vec<String>>,
    issued: Mutex<HashSet<String>>,
    calls: AtomicU64,
}

impl Graph {
    /// Loads the file and reads the secret from the environment.
    pub fn load(path: &Path) -> Result<Graph, DevIdpError> {
        let bad = |reason: String| DevIdpError::GraphConfig {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let file: GraphFile = serde_norway::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let secret = std::env::var(&file.client_secret_env)
            .ok()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                bad(format!(
                    "{} is not set in the environment",
                    file.client_secret_env
                ))
            })?;
        Ok(Graph {
            client_id: file.client_id,
            secret: secret.trim().to_owned(),
            members: file.members,
            issued: Mutex::new(HashSet::new()),
            calls: AtomicU64::new(0),
        })
    }

    /// The client-credentials grant: an opaque application token for the
    /// registered client with the right secret, or the OAuth error.
    pub(crate) fn client_credentials(&self, form: &HashMap<String, String>) -> Response {
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
        if field("client_id") != self.client_id || field("client_secret") != self.secret {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "unknown client or wrong secret",
            );
        }
        if !field("scope").ends_with("/.default") {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "the client-credentials grant takes <resource>/.default",
            );
        }
        let token = crate::login::random_code();
        self.issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.clone());
        (
            StatusCode::OK,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(json!({"token_type": "Bearer", "expires_in": APP_TOKEN_SECS, "access_token": token})),
        )
            .into_response()
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// `POST <issuer>/graph/v1.0/{users|servicePrincipals}/{id}/checkMemberGroups`.
pub async fn check_member_groups(
    State(published): State<Arc<Published>>,
    UrlPath((collection, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let Some(graph) = published.graph.as_ref() else {
        return graph_error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            "no Graph stand-in: start `airlock-dev-idp serve` with --graph-config FILE",
        );
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !graph
        .issued
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(bearer)
    {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "no application token, or not one this stand-in issued",
        );
    }
    if collection != "users" && collection != "servicePrincipals" {
        return graph_error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            "unknown collection",
        );
    }
    let asked: Vec<String> = match serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("groupIds").cloned())
        .and_then(|v| serde_json::from_value(v).ok())
    {
        Some(ids) => ids,
        None => {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                "body needs groupIds",
            );
        }
    };
    if asked.len() > 20 {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            "checkMemberGroups takes at most 20 group ids",
        );
    }
    graph.calls.fetch_add(1, Ordering::Relaxed);
    let mut groups: Vec<&String> = graph.members.get(&id).into_iter().flatten().collect();
    if let Some(login) = &published.login {
        groups.extend(
            login
                .config
                .users
                .iter()
                .filter(|u| u.sub == id)
                .flat_map(|u| u.groups.iter()),
        );
    }
    let member: Vec<&String> = asked
        .iter()
        .filter(|a| groups.iter().any(|g| g.eq_ignore_ascii_case(a)))
        .collect();
    axum::Json(json!({"value": member})).into_response()
}

/// `GET <issuer>/graph/calls`: how many membership questions were answered
/// (for tests that count them).
pub async fn calls(State(published): State<Arc<Published>>) -> Response {
    let calls = published
        .graph
        .as_ref()
        .map_or(0, |g| g.calls.load(Ordering::Relaxed));
    axum::Json(json!({ "calls": calls })).into_response()
}
