//! The REST API under `/api/v1`, plus `/healthz` and `/metrics`. JSON in and
//! out; every error leaves through [`ApiError`]. Each handler verifies the
//! caller, asks the control plane with the caller's token and shapes the
//! answer (`json`). Nothing here decides whether a vote counts.
//!
//! Each handler carries its `#[utoipa::path]`: method, path, parameters,
//! the JSON types it answers with and every refusal it can send. `openapi`
//! gathers them into the document; it is the only module that looks at them.

use std::time::Duration;

use airlock_proto::v1 as proto;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

use crate::access::may_review;
use crate::auth::{Caller, Via};
use crate::error::{ApiError, Code};
use crate::json::{
    self, ErrorJson, GrantJson, GrantListJson, HealthJson, HealthStatusJson, KillBody, KillResultJson,
    MAX_REASON_CHARS, MeJson, Refusals, RequestJson, RequestPageJson, RevokeBody, SessionJson,
    SessionPageJson, ViaJson, VoteBody, VoteResultJson,
};
use crate::{Route, events};

/// The REST routes, listed once: the router is built from this list, and
/// `openapi` checks that its document names exactly these (and its own).
pub fn routes() -> Vec<Route> {
    vec![
        ("GET", "/api/v1/requests", get(list_requests)),
        ("GET", "/api/v1/requests/{id}", get(get_request)),
        ("POST", "/api/v1/requests/{id}/approve", post(approve)),
        ("POST", "/api/v1/requests/{id}/deny", post(deny)),
        ("GET", "/api/v1/sessions", get(list_sessions)),
        ("GET", "/api/v1/sessions/{id}", get(get_session)),
        ("POST", "/api/v1/sessions/{id}/kill", post(kill_session)),
        ("GET", "/api/v1/grants", get(list_grants)),
        ("GET", "/api/v1/grants/{id}", get(get_grant)),
        ("DELETE", "/api/v1/grants/{id}", delete(revoke_grant)),
        ("GET", "/api/v1/events", get(events::events)),
        ("GET", "/api/v1/me", get(me)),
        ("GET", "/healthz", get(healthz)),
        ("GET", "/livez", get(livez)),
        ("GET", "/readyz", get(readyz)),
        ("GET", "/metrics", get(metrics)),
    ]
}

/// Request and session ids are ULIDs; refuse anything that could not be one
/// before it goes anywhere. [`ID_PATTERN`] says the same to clients.
pub fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::invalid("not a valid id"));
    }
    Ok(())
}

/// What [`check_id`] accepts, as the document's `pattern` (a literal there).
pub const ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// The `{id}` of a path, or a JSON 400 (axum's own rejection is plain text).
pub fn path_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    id.map(|Path(id)| id)
        .map_err(|e| ApiError::invalid(format!("path: {}", e.body_text())))
}

fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn page_size(value: &str) -> Result<u32, ApiError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| ApiError::invalid("page_size must be a number from 1 to 1000"))
}

/// `state=pending,granted` (or repeated `state=`), `decided` for every
/// final state.
pub fn parse_states(values: &[String]) -> Result<Vec<i32>, ApiError> {
    let mut states = Vec::new();
    for word in values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        if word == "decided" {
            states.extend([
                proto::RequestState::Granted as i32,
                proto::RequestState::Denied as i32,
                proto::RequestState::Expired as i32,
                proto::RequestState::Cancelled as i32,
            ]);
            continue;
        }
        let state = json::parse_state(word).ok_or_else(|| {
            ApiError::invalid(format!(
                "unknown state {word:?}: use pending, granted, denied, expired, cancelled or decided"
            ))
        })?;
        states.push(state as i32);
    }
    Ok(states)
}

/// A page of requests this caller may review, newest first.
pub async fn requests_page(
    app: &crate::App,
    caller: &Caller,
    q: proto::ListRequestsRequest,
) -> Result<(Vec<proto::RequestView>, String), ApiError> {
    let page = app.control.list_requests(&caller.token, q).await?;
    let visible = page
        .requests
        .into_iter()
        .filter(|r| may_review(&caller.identity, r))
        .collect();
    Ok((visible, page.next_page_token))
}

/// List the approval requests the caller may review, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/requests",
    tag = "requests",
    params(
        ("state" = Option<String>, Query,
            description = "Comma-separated, or repeated: pending, granted, denied, expired, cancelled, \
                           or decided (every final state). Default: all."),
        ("connection" = Option<String>, Query, description = "Only requests on this connection."),
        ("page_size" = Option<u32>, Query, minimum = 1, maximum = 1000),
        ("page_token" = Option<String>, Query, description = "`next_page_token` of the page before."),
    ),
    responses(
        (status = 200, description = "A page of requests.", body = RequestPageJson),
        (status = 400, description = "An unknown parameter or state, or a page size out of range \
                                      (`invalid_argument`).", body = ErrorJson),
        (status = 403, description = "Not in a reviewer group (`not_a_reviewer`).", body = ErrorJson),
        Refusals,
    ),
    security(("bearer" = []), ("session" = [])),
)]
async fn list_requests(
    State(app): State<crate::State>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<RequestPageJson>, ApiError> {
    let caller = app.auth.caller(&headers).await?;
    let mut q = proto::ListRequestsRequest::default();
    let mut states = Vec::new();
    for (k, v) in query_pairs(raw.as_deref()) {
        match k.as_str() {
            "state" => states.push(v),
            "connection" => q.connection = v,
            "page_size" => q.page_size = page_size(&v)?,
            "page_token" => q.page_token = v,
            other => return Err(ApiError::invalid(format!("unknown query parameter {other:?}"))),
        }
    }
    q.states = parse_states(&states)?;
    let (requests, next) = requests_page(&app, &caller, q).await?;
    Ok(Json(RequestPageJson {
        requests: requests.iter().map(json::request).collect(),
        next_page_token: next,
    }))
}

/// One request, if the caller's groups may review it.
pub async fn visible_request(
    app: &crate::App,
    caller: &Caller,
    id: &str,
) -> Result<proto::RequestView, ApiError> {
    check_id(id)?;
    let view = app.control.get_request(&caller.token, id).await?;
    // The requester sees their own request where its policy allows
    // break-glass (to break glass on it).
    let own = caller.identity.kind == proto::identity::Kind::User as i32
        && view.request.as_ref().is_some_and(|r| r.break_glass.is_some())
        && view
            .request
            .as_ref()
            .and_then(|r| r.identity.as_ref())
            .is_some_and(|i| !i.subject.is_empty() && i.subject == caller.identity.subject);
    if !own && !may_review(&caller.identity, &view) {
        return Err(ApiError::new(
            Code::NotAReviewer,
            format!("{} is not in a reviewer group of request {id}", caller.name()),
        ));
    }
    Ok(view)
}

/// One approval request.
#[utoipa::path(
    get,
    path = "/api/v1/requests/{id}",
    tag = "requests",
    params(("id" = String, Path, description = "Request id.", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "The request.", body = RequestJson),
        (status = 400, description = "Not a valid id (`invalid_argument`).", body = ErrorJson),
        (status = 403, description = "Not in a reviewer group of this request (`not_a_reviewer`).",
            body = ErrorJson),
        (status = 404, description = "No such request (`not_found`).", body = ErrorJson),
        Refusals,
    ),
    security(("bearer" = []), ("session" = [])),
)]
async fn get_request(
    State(app): State<crate::State>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RequestJson>, ApiError> {
    let id = path_id(id)?;
    let caller = app.auth.caller(&headers).await?;
    let view = visible_request(&app, &caller, &id).await?;
    Ok(Json(json::request(&view)))
}

fn json_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("request body: {e}")))
}

pub fn check_reason(reason: &str) -> Result<(), ApiError> {
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::invalid(format!(
            "reason is longer than {MAX_REASON_CHARS} characters"
        )));
    }
    Ok(())
}

/// What an approval sets beyond itself: row bounds, and a scope (a grant).
#[derive(Debug, Clone, Default)]
pub struct Terms {
    pub max_rows: Vec<proto::TableBound>,
    pub scope: Option<proto::GrantScope>,
    /// The caller approves their own request under the policy's
    /// break-glass terms.
    pub break_glass: bool,
}

/// Passes one vote to the control plane. The vote is bound to `sha256_hex`
/// when given (what the reviewer was shown), else to the digest of the
/// request as read just before, so a vote never covers bytes nobody saw.
pub async fn vote(
    app: &crate::App,
    caller: &Caller,
    id: &str,
    decision: proto::Decision,
    reason: String,
    sha256_hex: Option<&str>,
    terms: Terms,
) -> Result<proto::DecideResponse, ApiError> {
    check_id(id)?;
    check_reason(&reason)?;
    let digest = match sha256_hex.map(str::trim).filter(|s| !s.is_empty()) {
        Some(h) => match hex::decode(h) {
            Ok(d) if d.len() == 32 => d,
            _ => return Err(ApiError::invalid("statement_sha256 must be 64 hex digits")),
        },
        None => visible_request(app, caller, id)
            .await?
            .request
            .and_then(|r| r.statement)
            .map(|s| s.sha256)
            .unwrap_or_default(),
    };
    let q = proto::DecideRequest {
        request_id: id.to_owned(),
        decision: decision as i32,
        reason,
        statement_sha256: digest,
        max_rows: terms.max_rows,
        scope: terms.scope,
        break_glass: terms.break_glass,
        slack: None,
    };
    match app.control.decide(&caller.token, q).await {
        Ok(r) => {
            match decision {
                proto::Decision::Deny => app.metrics.votes_deny.inc(),
                proto::Decision::Approve | proto::Decision::Unspecified => app.metrics.votes_approve.inc(),
            };
            tracing::info!(request = id, reviewer = %caller.identity.subject, decision = json::decision_name(decision as i32), "vote accepted");
            Ok(r)
        }
        Err(e) => {
            app.metrics.votes_refused.inc();
            Err(e)
        }
    }
}

async fn decide_json(
    app: crate::State,
    headers: HeaderMap,
    id: String,
    body: Bytes,
    decision: proto::Decision,
) -> Result<Json<VoteResultJson>, ApiError> {
    let caller = app.auth.changing(&headers, None).await?;
    let body: VoteBody = json_body(&body)?;
    let scope = body
        .scope
        .as_ref()
        .map(json::ScopeBody::to_proto)
        .transpose()
        .map_err(ApiError::invalid)?;
    let r = vote(
        &app,
        &caller,
        &id,
        decision,
        body.reason.unwrap_or_default(),
        body.statement_sha256.as_deref(),
        Terms {
            max_rows: body
                .max_rows
                .unwrap_or_default()
                .into_iter()
                .map(|(table, max_rows)| proto::TableBound { table, max_rows })
                .collect(),
            scope,
            break_glass: body.break_glass,
        },
    )
    .await?;
    Ok(Json(VoteResultJson {
        request: r.request.as_ref().map(json::request),
        event_id: r.event_id,
        sequence: r.sequence,
    }))
}

/// Vote to approve a held statement.
///
/// The vote goes to the control plane with the caller's token, and the
/// control plane judges it. Send `statement_sha256` as shown so the vote
/// binds to those exact bytes. A browser session must also send
/// `X-CSRF-Token`.
#[utoipa::path(
    post,
    path = "/api/v1/requests/{id}/approve",
    tag = "requests",
    params(("id" = String, Path, description = "Request id.", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    request_body(content = VoteBody, description = "May be left out: an empty body is `{}`."),
    responses(
        (status = 200, description = "The vote was recorded.", body = VoteResultJson),
        (status = 400, description = "Not a valid id or body, a reason too long, or a digest that is \
                                      not 64 hex digits (`invalid_argument`).", body = ErrorJson),
        (status = 403, description = "Not a reviewer of this request (`not_a_reviewer`), \
                                      self-approval (`self_approval`), an app identity (`app_identity`), \
                                      or a browser request without its CSRF token (`csrf`).",
            body = ErrorJson),
        (status = 404, description = "No such request (`not_found`).", body = ErrorJson),
        (status = 409, description = "Already decided (`already_decided`), expired (`expired`), already \
                                      voted (`already_voted`), the digest does not match \
                                      (`digest_mismatch`), or the session holding the statement \
                                      has ended (`session_ended`).", body = ErrorJson),
        Refusals,
    ),
    security(("bearer" = []), ("session" = [])),
)]
async fn approve(
    State(app): State<crate::State>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<VoteResultJson>, ApiError> {
    let id = path_id(id)?;
    decide_json(app, headers, id, body, proto::Decision::Approve).await
}

/// Vote to deny a held statement.
///
/// As approve; one denial decides the request.
#[utoipa::path(
    post,
    path = "/api/v1/requests/{id}/deny",
    tag = "requests",
    params(("id" = String, Path, description = "Request id.", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    request_body(content = VoteBody, description = "May be left out: an empty body is `{}`."),
    responses(
        (status = 200, description = "The vote was recorded.", body = VoteResultJson),
        (status = 400, description = "Not a valid id or body, a reason too long, or a digest that is \
                                      not 64 hex digits (`invalid_argument`).", body = ErrorJson),
        (status = 403, description = "Not a reviewer of this request (`not_a_reviewer`), \
                                      self-approval (`self_approval`), an app identity (`app_identity`), \
                                      or a browser request without its CSRF token (`csrf`).",
            body = ErrorJson),
        (status = 404, description = "No such request (`not_found`).", body = ErrorJson),
        (status = 409, description = "Already decided (`already_decided`), expired (`expired`), already \
                                      voted (`already_voted`), the digest does not match \
                                      (`digest_mismatch`), or the session holding the statement \
                                      has ended (`session_ended`).", body = ErrorJson),
        Refusals,
    ),
    security(("bearer" = []), ("session" = [])),
)]
async fn deny(
    State(app): State<crate::State>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<VoteResultJson>, ApiError> {
    let id = path_id(id)?;
    decide_json(app, headers, id, body, proto::Decision::Deny).await
}

/// List recorded sessions, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/sessions",
    tag = "sessions",
    params(
        ("state" = Option<String>, Query, description = "open, closed, or both comma-separated."),
        ("connection" = Option<String>, Query, description = "Only sessions on this connection."),
        ("subject" = Option<String>, Query, description = "Only sessions of this identity (object id)."),
        ("page_size" = Option<u32>, Query, minimum = 1, maximum = 1000),
        ("page_token" = Option<String>, Query, description = "`next_page_token` of the page before."),
    ),
    responses(
        (status = 200, description = "A page of sessions.", body = SessionPageJson),
        (status = 400, description = "An unknown parameter or state, or a page size out of range \
                                      (`invalid_argument`).", body = ErrorJson),
        (status = 403, description = "Not in a reviewer group (`not_a_reviewer`).", body = ErrorJson),
        Refusals,
    ),
    security(("bearer" = []), ("session" = [])),
)]
async fn list_sessions(
    State(app): State<crate::State>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<SessionPageJson>, ApiError> {
    let caller = app.auth.caller(&headers).await?;
    let mut q = proto::ListSessionsRequest::default();
    for (k, v) in query_pairs(raw.as_deref()) {
        match k.as_str() {
            "state" => {
                for word in v.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                    q.states.push(match word {
                        "open" => proto::SessionState::Open as i32,
                        "closed" => proto::SessionState::Closed as i32,
                        _ => {
                            return Err(ApiError::invalid(format!(
                                "unknown session state {word:?}: open or closed"
                            )));
                        }
                    });
                }
            }
            "connection" => q.connection = v,
            "subject" => q.subject = v,
            "page_size" => q.page_size = page_size(&v)?,
            "page_token" => q.page_token = v,
            other => return Err(ApiError::invalid(format!("unknown query parameter {other:?}"))),
        }
    }
    let page = app.control.list_sessions(&caller.token, q).await?;
    Ok(Json(SessionPageJson {
        sessions: page.sessions.iter().map(json::session_summary).collect(),
        next_page_token: page.next_page_token,
    }))
}

/// The whole recorded session: summary, timeline, requests.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id.", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "The session record.", body = SessionJson),
        (status = 400, description = "Not a valid id (`invalid_argument`).", body = ErrorJson),
        (status = 403, description = "Not in a reviewer group (`not_a_reviewer`).", body = ErrorJson),
        (status = 404, description = "No such session (`not_found`).", body = ErrorJson),
        Refusals,
    ),
    security(("bearer" = []), ("session" = [])),
)]
async fn get_session(
    State(app): State<crate::State>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionJson>, ApiError> {
    let id = path_id(id)?;
    let caller = app.auth.caller(&headers).await?;
    check_id(&id)?;
    let session = app.control.get_session(&caller.token, &id).await?;
    Ok(Json(json::session(&session)))
}

/// End a session: the proxy holding it closes it.
///
/// A browser session must also send `X-CSRF-Token`.
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{id}/kill",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id.", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    request_body(content = KillBody, description = "May be left out: an empty body is `{}`."),
    responses(
        (status = 200, description = "The kill was recorded.", body = KillResultJson),
        (status = 400, description = "Not a valid id or body, or a reason too long \
                                      (`invalid_argument`).", body = ErrorJson),
        (status = 403, description = "Not in a reviewer group (`not_a_reviewer`), or a browser request \
                                      without its CSRF token (`csrf`).", body = ErrorJson),
        (status = 404, description = "No such session (`not_found`).", body = ErrorJson),
        Refusals,
    ),
    security(("bearer" = []), ("session" = [])),
)]
async fn kill_session(
    State(app): State<crate::State>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<KillResultJson>, ApiError> {
    let id = path_id(id)?;
    let caller = app.auth.changing(&headers, None).await?;
    check_id(&id)?;
    let body: KillBody = json_body(&body)?;
    let reason = body.reason.unwrap_or_default();
    check_reason(&reason)?;
    let killed = app.control.kill_session(&caller.token, &id, reason).await?;
    app.metrics.kills.inc();
    Ok(Json(KillResultJson {
        event_id: killed.event_id,
        sequence: killed.sequence,
    }))
}

/// List grants (approvals in scope), newest first.
#[utoipa::path(
    get,
    path = "/api/v1/grants",
    tag = "grants",
    params(("state" = Option<String>, Query, description = "active, used_up, revoked, expired, comma-separated.")),
    responses(
        (status = 200, description = "Grants the caller may see.", body = GrantListJson),
        (status = 400, description = "An unknown parameter or state (`invalid_argument`).", body = ErrorJson),
        Refusals,
    ),
    security(("bearer" = []), ("session" = [])),
)]
async fn list_grants(
    State(app): State<crate::State>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<GrantListJson>, ApiError> {
    let caller = app.auth.caller(&headers).await?;
    let mut states = Vec::new();
    for (k, v) in query_pairs(raw.as_deref()) {
        match k.as_str() {
            "state" => {
                for word in v.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                    let state = json::parse_grant_state(word).ok_or_else(|| {
                        ApiError::invalid(format!(
                            "unknown grant state {word:?}: active, used_up, revoked or expired"
                        ))
                    })?;
                    states.push(state as i32);
                }
            }
            other => return Err(ApiError::invalid(format!("unknown parameter {other:?}: state"))),
        }
    }
    let r = app.control.list_grants(&caller.token, states).await?;
    Ok(Json(GrantListJson {
        grants: r.grants.iter().map(json::grant).collect(),
    }))
}

/// One grant: its scope, uses and state.
#[utoipa::path(
    get,
    path = "/api/v1/grants/{id}",
    tag = "grants",
    params(("id" = String, Path, description = "Grant id (the approved request's).", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "The grant.", body = GrantJson),
        (status = 404, description = "No such grant the caller may see (`not_found`).", body = ErrorJson),
        Refusals,
    ),
    security(("bearer" = []), ("session" = [])),
)]
async fn get_grant(
    State(app): State<crate::State>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<GrantJson>, ApiError> {
    let id = path_id(id)?;
    let caller = app.auth.caller(&headers).await?;
    check_id(&id)?;
    Ok(Json(json::grant(
        &app.control.get_grant(&caller.token, &id).await?,
    )))
}

/// Revoke a grant: no proxy runs a statement under it from then on (each
/// use is claimed in the log after the revocation's place).
///
/// A browser session must also send `X-CSRF-Token`.
#[utoipa::path(
    delete,
    path = "/api/v1/grants/{id}",
    tag = "grants",
    params(("id" = String, Path, description = "Grant id.", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    request_body(content = RevokeBody, description = "May be left out: an empty body is `{}`."),
    responses(
        (status = 200, description = "Revoked; the grant as it is now.", body = GrantJson),
        (status = 403, description = "Not a reviewer of the grant's request (`not_a_reviewer`).", body = ErrorJson),
        (status = 404, description = "No such grant (`not_found`).", body = ErrorJson),
        (status = 409, description = "It has already ended (`already_decided`).", body = ErrorJson),
        Refusals,
    ),
    security(("bearer" = []), ("session" = [])),
)]
async fn revoke_grant(
    State(app): State<crate::State>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<GrantJson>, ApiError> {
    let id = path_id(id)?;
    let caller = app.auth.changing(&headers, None).await?;
    check_id(&id)?;
    let body: RevokeBody = json_body(&body)?;
    let reason = body.reason.unwrap_or_default();
    check_reason(&reason)?;
    let view = app.control.revoke_grant(&caller.token, &id, reason).await?;
    tracing::info!(grant = %id, by = %caller.identity.subject, "grant revoked");
    Ok(Json(json::grant(&view)))
}

/// The verified caller: who the token or session belongs to.
#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "caller",
    responses((status = 200, description = "The caller.", body = MeJson), Refusals),
    security(("bearer" = []), ("session" = [])),
)]
async fn me(State(app): State<crate::State>, headers: HeaderMap) -> Result<Json<MeJson>, ApiError> {
    let caller = app.auth.caller(&headers).await?;
    Ok(Json(MeJson {
        identity: json::identity(&caller.identity),
        via: match caller.via {
            Via::Bearer => ViaJson::Bearer,
            Via::Session { .. } => ViaJson::Session,
        },
    }))
}

/// 200 while the control plane's gRPC port accepts connections, else 503
/// (as `/readyz`).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "service",
    responses(
        (status = 200, description = "The control plane is reachable.", body = HealthJson),
        (status = 503, description = "The control plane is unreachable.", body = HealthJson),
    ),
)]
async fn healthz(State(app): State<crate::State>) -> Response {
    control_health(&app).await
}

/// Readiness: 200 while the control plane's gRPC port accepts connections,
/// else 503 (a load balancer sends reviewers elsewhere meanwhile).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "service",
    responses(
        (status = 200, description = "The control plane is reachable.", body = HealthJson),
        (status = 503, description = "The control plane is unreachable.", body = HealthJson),
    ),
)]
async fn readyz(State(app): State<crate::State>) -> Response {
    control_health(&app).await
}

/// Liveness: 200 while the process answers, whatever the control plane's
/// state (restarting the reviewer would not bring the control plane back).
#[utoipa::path(
    get,
    path = "/livez",
    tag = "service",
    responses((status = 200, description = "The process answers.", body = String, content_type = "text/plain")),
)]
async fn livez() -> &'static str {
    "alive\n"
}

async fn control_health(app: &crate::App) -> Response {
    let target = url::Url::parse(&app.config.reviewer.control).ok().and_then(|u| {
        let port = u.port_or_known_default()?;
        Some(format!("{}:{port}", u.host_str()?.trim_matches(['[', ']'])))
    });
    let reachable = match target {
        Some(t) => matches!(
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(t)).await,
            Ok(Ok(_))
        ),
        None => false,
    };
    let (status, word) = if reachable {
        (StatusCode::OK, HealthStatusJson::Ok)
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            HealthStatusJson::ControlUnreachable,
        )
    };
    (
        status,
        Json(HealthJson {
            status: word,
            control_reachable: reachable,
        }),
    )
        .into_response()
}

/// Prometheus metrics, in the OpenMetrics text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    responses((status = 200, description = "OpenMetrics text format 1.0.0.", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")),
)]
async fn metrics(State(app): State<crate::State>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        app.metrics.render(app.auth.sessions.count().await),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_ids_are_checked() {
        assert_eq!(parse_states(&["pending".into()]).unwrap(), vec![1]);
        assert_eq!(parse_states(&["decided".into()]).unwrap().len(), 4);
        assert_eq!(parse_states(&["granted, denied".into()]).unwrap(), vec![2, 3]);
        assert!(parse_states(&["bogus".into()]).is_err());
        assert!(check_id("01J0ABCDEF").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("../etc").is_err());
        assert!(check_id(&"x".repeat(65)).is_err());
        assert!(page_size("0").is_err());
        assert!(page_size("1001").is_err());
        assert_eq!(page_size("50").unwrap(), 50);
    }
}
