//! The web UI at `/`: server-rendered pages, one small script for live
//! updates, one stylesheet, all served by this binary (no CDN: it works
//! air-gapped). Pages: the inbox of pending requests, a request with
//! approve and deny, the history of decided requests, and a session's
//! timeline. Votes are HTML form posts with a CSRF token; they go through
//! the same path as the REST API's.

use std::fmt::Write;

use airlock_proto::v1 as proto;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use time::OffsetDateTime;

use crate::auth::Caller;
use crate::error::{ApiError, Code};
use crate::html::{self, Viewer, duration, esc, highlight};
use crate::{Route, api, views};

pub fn routes() -> Vec<Route> {
    vec![
        ("GET", "/", get(inbox)),
        ("GET", "/history", get(history)),
        ("GET", "/requests/{id}", get(request_page)),
        ("POST", "/requests/{id}/decide", post(decide)),
        ("GET", "/sessions/{id}", get(session_page)),
        ("POST", "/sessions/{id}/kill", post(kill)),
        ("GET", "/static/app.css", get(css)),
        ("GET", "/static/app.js", get(js)),
    ]
}

const CSS: &str = include_str!("../static/app.css");
const JS: &str = include_str!("../static/app.js");

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        JS,
    )
        .into_response()
}

/// Unknown paths: a JSON error under `/api/`, a page elsewhere.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        ApiError::new(Code::NotFound, "there is no such API route").into_response()
    } else {
        html::error_page(&ApiError::new(Code::NotFound, "there is no such page"))
    }
}

fn viewer(caller: &Caller) -> Viewer {
    Viewer {
        name: caller.name().to_owned(),
        groups: caller
            .identity
            .groups
            .iter()
            .map(|g| {
                if g.name.is_empty() {
                    g.id.clone()
                } else {
                    g.name.clone()
                }
            })
            .collect(),
        csrf: caller.csrf().to_owned(),
    }
}

/// The signed-in caller, or the sign-in page (for an unauthenticated
/// browser) or an error page.
async fn signed_in(app: &crate::App, headers: &HeaderMap, path: &str) -> Result<Caller, Response> {
    match app.auth.caller(headers).await {
        Ok(c) => Ok(c),
        Err(e) if e.code == Code::Unauthenticated => Err(sign_in_page(app, path)),
        Err(e) => Err(html::error_page(&e)),
    }
}

fn sign_in_page(app: &crate::App, path: &str) -> Response {
    let target: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("return_to", path)
        .finish();
    let body = if app.oidc.is_some() {
        format!(
            "<section class=\"card\"><h1>Sign in</h1><p>Reviewers sign in with their organisation account.</p>\
             <p><a class=\"button\" id=\"sign-in\" href=\"/auth/login?{}\">Sign in</a></p></section>",
            esc(&target)
        )
    } else {
        "<section class=\"card\"><h1>Sign in</h1><p>Browser sign-in is not configured on this server \
         (<code>reviewer.oidc</code>). Use the REST API with a bearer token.</p></section>"
            .to_owned()
    };
    html::page(StatusCode::UNAUTHORIZED, "Sign in", None, "", &body)
}

fn ts(t: Option<&prost_types::Timestamp>) -> Option<OffsetDateTime> {
    views::time(t)
}

fn clock(t: Option<OffsetDateTime>) -> String {
    t.map(|t| {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    })
    .unwrap_or_else(|| "—".into())
}

fn identity_html(i: Option<&proto::Identity>) -> String {
    let Some(i) = i else {
        return "<span class=\"muted\">unknown</span>".into();
    };
    let kind = views::identity(i).kind;
    let groups: Vec<String> = i
        .groups
        .iter()
        .map(|g| {
            if g.name.is_empty() {
                format!("<span class=\"group\">{}</span>", esc(&g.id))
            } else {
                format!(
                    "<span class=\"group\" title=\"{}\">{}</span>",
                    esc(&g.id),
                    esc(&g.name)
                )
            }
        })
        .collect();
    format!(
        "<span class=\"identity\"><strong class=\"name\">{}</strong> <span class=\"badge {kind}\">{kind}</span> \
         <span class=\"muted subject\">{}</span> {}</span>",
        esc(if i.display_name.is_empty() {
            &i.subject
        } else {
            &i.display_name
        }),
        esc(&i.subject),
        groups.join(" ")
    )
}

fn statement_html(s: Option<&proto::Statement>) -> String {
    let Some(s) = s else {
        return "<p class=\"muted\">no statement recorded</p>".into();
    };
    let mut out = String::new();
    if html::has_hidden(&s.text) {
        out.push_str(
            "<p class=\"warning\">This statement contains invisible characters; they are marked below.</p>",
        );
    }
    let _ = write!(
        out,
        "<pre class=\"sql\"><code>{}</code></pre>",
        highlight(&s.text)
    );
    if !s.parameters.is_empty() {
        out.push_str("<table class=\"params\"><thead><tr><th>$</th><th>value</th><th>type oid</th><th>format</th></tr></thead><tbody>");
        for (n, p) in s.parameters.iter().enumerate() {
            let value = if p.is_null {
                "<span class=\"muted\">NULL</span>".to_owned()
            } else {
                format!("<code>{}</code>", esc(&p.display))
            };
            let _ = write!(
                out,
                "<tr><td>${}</td><td>{value}</td><td>{}</td><td>{}</td></tr>",
                n + 1,
                p.type_oid,
                if p.format == proto::parameter::Format::Binary as i32 {
                    "binary"
                } else {
                    "text"
                }
            );
        }
        out.push_str("</tbody></table>");
    }
    let _ = write!(
        out,
        "<p class=\"muted digest\">SHA-256 of the exact bytes: <code>{}</code></p>",
        esc(&hex::encode(&s.sha256))
    );
    out
}

fn connection_html(c: Option<&proto::ConnectionInfo>) -> String {
    match c {
        Some(c) => format!(
            "<strong>{}</strong> <span class=\"muted\">({}@{}:{}/{})</span>",
            esc(&c.name),
            esc(&c.upstream_user),
            esc(&c.upstream_host),
            c.upstream_port,
            esc(&c.upstream_database)
        ),
        None => "<span class=\"muted\">unknown</span>".into(),
    }
}

fn rule_html(v: Option<&proto::Verdict>) -> String {
    match v {
        Some(v) => format!(
            "policy <strong>{}</strong>, rule {}{}{}",
            esc(&v.policy),
            if v.rule_index > 0 {
                format!("#{} ", v.rule_index)
            } else {
                String::new()
            },
            format_args!("<code>{}</code>", esc(&v.rule)),
            if v.reason.is_empty() {
                String::new()
            } else {
                format!(" — <em>{}</em>", esc(&v.reason))
            }
        ),
        None => "<span class=\"muted\">unknown</span>".into(),
    }
}

/// The card of one request, as in the inbox.
fn request_card(view: &proto::RequestView, now: OffsetDateTime, link: bool) -> String {
    let asked = view.request.clone().unwrap_or_default();
    let requested = ts(view.requested_at.as_ref());
    let deadline = ts(asked.deadline.as_ref());
    let waiting = requested
        .map(|t| duration((now - t).whole_seconds()))
        .unwrap_or_default();
    let left = deadline
        .map(|t| {
            let s = (t - now).whole_seconds();
            if s <= 0 { "due now".to_owned() } else { duration(s) }
        })
        .unwrap_or_default();
    let state = views::state_name(view.state);
    let mut out = String::new();
    let _ = write!(
        out,
        "<article class=\"card request {state}\" data-request-id=\"{id}\">\
         <div class=\"row\"><div>{identity}</div><span class=\"state {state}\">{state}</span></div>\
         <dl>\
         <dt>connection</dt><dd>{connection}</dd>\
         <dt>statement</dt><dd class=\"statement\">{statement}</dd>\
         <dt>rule</dt><dd>{rule}</dd>\
         <dt>approvals</dt><dd><span class=\"approvals\">{given} of {needed}</span></dd>",
        id = esc(&view.request_id),
        identity = identity_html(asked.identity.as_ref()),
        connection = connection_html(asked.connection.as_ref()),
        statement = statement_html(asked.statement.as_ref()),
        rule = rule_html(asked.verdict.as_ref()),
        given = views::approvals_given(view),
        needed = asked.approvals_required,
    );
    if view.state == proto::RequestState::Pending as i32 {
        let _ = write!(
            out,
            "<dt>waiting</dt><dd>{} <span class=\"muted\">(since {})</span></dd>\
             <dt>time left</dt><dd>{} <span class=\"muted\">(until {})</span></dd>",
            esc(&waiting),
            clock(requested),
            esc(&left),
            clock(deadline)
        );
    } else {
        let _ = write!(
            out,
            "<dt>requested</dt><dd>{}</dd><dt>decided</dt><dd>{}{}</dd>",
            clock(requested),
            clock(ts(view.decided_at.as_ref())),
            if view.outcome_reason.is_empty() {
                String::new()
            } else {
                format!(" — <em>{}</em>", esc(&view.outcome_reason))
            }
        );
    }
    out.push_str("</dl>");
    if link {
        let _ = write!(
            out,
            "<p><a class=\"button\" href=\"/requests/{0}\">Review</a> \
             <a class=\"muted\" href=\"/sessions/{1}\">session</a></p>",
            esc(&view.request_id),
            esc(&view.session_id)
        );
    }
    out.push_str("</article>");
    out
}

async fn inbox(State(app): State<crate::State>, headers: HeaderMap) -> Response {
    let caller = match signed_in(&app, &headers, "/").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let q = proto::ListRequestsRequest {
        states: vec![proto::RequestState::Pending as i32],
        page_size: 200,
        ..Default::default()
    };
    let (requests, _) = match api::requests_page(&app, &caller, q).await {
        Ok(p) => p,
        Err(e) => return html::error_page(&e),
    };
    let now = OffsetDateTime::now_utc();
    let mut body = format!(
        "<h1>Waiting for a decision <span class=\"count\">{}</span></h1>",
        requests.len()
    );
    if requests.is_empty() {
        body.push_str(
            "<p class=\"empty\">Nothing is waiting for you. New requests appear here as they arrive.</p>",
        );
    }
    for r in &requests {
        body.push_str(&request_card(r, now, true));
    }
    html::page(StatusCode::OK, "Inbox", Some(&viewer(&caller)), "inbox", &body)
}

async fn history(State(app): State<crate::State>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let caller = match signed_in(&app, &headers, "/history").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let page_token = url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "page_token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let q = proto::ListRequestsRequest {
        states: api::parse_states(&["decided".to_owned()]).unwrap_or_default(),
        page_size: 100,
        page_token,
        ..Default::default()
    };
    let (requests, next) = match api::requests_page(&app, &caller, q).await {
        Ok(p) => p,
        Err(e) => return html::error_page(&e),
    };
    let mut body = String::from(
        "<h1>History</h1><table class=\"history\"><thead><tr><th>requested</th><th>who</th><th>connection</th>\
         <th>statement</th><th>outcome</th><th>by</th></tr></thead><tbody>",
    );
    for r in &requests {
        let asked = r.request.clone().unwrap_or_default();
        let text = asked.statement.as_ref().map(|s| s.text.as_str()).unwrap_or("");
        let short: String = text.chars().take(120).collect();
        let by: Vec<String> = r
            .votes
            .iter()
            .map(|v| {
                format!(
                    "{} ({})",
                    v.reviewer
                        .as_ref()
                        .map(|i| i.display_name.as_str())
                        .unwrap_or("?"),
                    views::decision_name(v.decision)
                )
            })
            .collect();
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><a href=\"/requests/{}\"><code>{}{}</code></a></td>\
             <td><span class=\"state {state}\">{state}</span> {}</td><td>{}</td></tr>",
            clock(ts(r.requested_at.as_ref())),
            esc(asked
                .identity
                .as_ref()
                .map(|i| i.display_name.as_str())
                .unwrap_or("?")),
            esc(asked.connection.as_ref().map(|c| c.name.as_str()).unwrap_or("?")),
            esc(&r.request_id),
            esc(&short),
            if short.len() < text.len() { "…" } else { "" },
            esc(&r.outcome_reason),
            esc(&by.join(", ")),
            state = views::state_name(r.state),
        );
    }
    body.push_str("</tbody></table>");
    if requests.is_empty() {
        body.push_str("<p class=\"empty\">No decided requests yet.</p>");
    }
    if !next.is_empty() {
        let _ = write!(
            body,
            "<p><a href=\"/history?page_token={}\">Older</a></p>",
            esc(&next)
        );
    }
    html::page(StatusCode::OK, "History", Some(&viewer(&caller)), "", &body)
}

fn request_body(view: &proto::RequestView, caller: &Caller, notice: Option<(&str, &str)>) -> String {
    let mut body = String::new();
    if let Some((class, text)) = notice {
        let _ = write!(
            body,
            "<p class=\"notice {}\" id=\"notice\">{}</p>",
            esc(class),
            esc(text)
        );
    }
    let _ = write!(body, "<h1>Request <code>{}</code></h1>", esc(&view.request_id));
    body.push_str(&request_card(view, OffsetDateTime::now_utc(), false));
    let asked = view.request.clone().unwrap_or_default();
    if let Some(c) = &asked.client {
        let _ = write!(
            body,
            "<p class=\"muted\">client {} as <code>{}</code> ({}), through {}; <a href=\"/sessions/{}\">the whole session</a></p>",
            esc(&c.address),
            esc(&c.user),
            if c.tls { "TLS" } else { "no TLS" },
            esc(&asked.proxy_id),
            esc(&view.session_id)
        );
    }
    if !view.votes.is_empty() {
        body.push_str("<h2>Votes</h2><ul class=\"votes\">");
        for v in &view.votes {
            let _ = write!(
                body,
                "<li>{} <strong>{}</strong> at {}{}</li>",
                identity_html(v.reviewer.as_ref()),
                views::decision_name(v.decision),
                clock(ts(v.time.as_ref())),
                if v.reason.is_empty() {
                    String::new()
                } else {
                    format!(": <em>{}</em>", esc(&v.reason))
                }
            );
        }
        body.push_str("</ul>");
    }
    if view.state == proto::RequestState::Pending as i32 {
        let sha = asked
            .statement
            .as_ref()
            .map(|s| hex::encode(&s.sha256))
            .unwrap_or_default();
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/requests/{}/decide\" class=\"card decide\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <input type=\"hidden\" name=\"statement_sha256\" value=\"{}\">\
             <label for=\"reason\">Reason (recorded in the audit log)</label>\
             <textarea id=\"reason\" name=\"reason\" rows=\"3\" maxlength=\"{}\"></textarea>\
             <div class=\"actions\"><button type=\"submit\" name=\"decision\" value=\"approve\" class=\"approve\" id=\"approve\">Approve</button>\
             <button type=\"submit\" name=\"decision\" value=\"deny\" class=\"deny\" id=\"deny\">Deny</button></div>\
             <p class=\"muted\">You approve exactly the statement shown above (its SHA-256 is sent with your vote).</p></form>",
            esc(&view.request_id),
            esc(caller.csrf()),
            esc(&sha),
            api::MAX_REASON_CHARS,
        );
    }
    body
}

async fn request_page(
    State(app): State<crate::State>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Response {
    let id = match api::path_id(id) {
        Ok(id) => id,
        Err(e) => return html::error_page(&e),
    };
    let caller = match signed_in(&app, &headers, &format!("/requests/{id}")).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let voted = url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "voted")
        .map(|(_, v)| v.into_owned());
    let notice = match voted.as_deref() {
        Some("approve") => Some(("ok", "Your vote to approve was recorded.")),
        Some("deny") => Some(("ok", "Your vote to deny was recorded.")),
        _ => None,
    };
    match api::visible_request(&app, &caller, &id).await {
        Ok(view) => {
            let body = request_body(&view, &caller, notice);
            // Just after a vote the page is fresh: no live reload under the
            // reviewer's eyes.
            let live = if notice.is_some() { "" } else { "request" };
            html::page(StatusCode::OK, "Request", Some(&viewer(&caller)), live, &body)
        }
        Err(e) => html::error_page(&e),
    }
}

async fn decide(
    State(app): State<crate::State>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let id = match api::path_id(id) {
        Ok(id) => id,
        Err(e) => return html::error_page(&e),
    };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let caller = match app.auth.changing(&headers, field("csrf")).await {
        Ok(c) => c,
        Err(e) => return html::error_page(&e),
    };
    let decision = match field("decision") {
        Some("approve") => proto::Decision::Approve,
        Some("deny") => proto::Decision::Deny,
        _ => return html::error_page(&ApiError::invalid("choose approve or deny")),
    };
    let reason = field("reason").unwrap_or_default().trim().to_owned();
    match api::vote(&app, &caller, &id, decision, reason, field("statement_sha256")).await {
        // Post/redirect/get: reloading the page never votes twice.
        Ok(_) => {
            let word = if decision == proto::Decision::Approve {
                "approve"
            } else {
                "deny"
            };
            (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, format!("/requests/{id}?voted={word}"))],
            )
                .into_response()
        }
        Err(e) => {
            let view = match app.control.get_request(&caller.token, &id).await {
                Ok(v) => v,
                Err(_) => return html::error_page(&e),
            };
            let text = format!("Refused ({}): {}", e.code.as_str(), e.message);
            let body = request_body(&view, &caller, Some(("refused", &text)));
            // Not live: a reload would post the form again.
            html::page(e.code.status(), "Request", Some(&viewer(&caller)), "", &body)
        }
    }
}

async fn session_page(
    State(app): State<crate::State>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Response {
    let id = match api::path_id(id) {
        Ok(id) => id,
        Err(e) => return html::error_page(&e),
    };
    let caller = match signed_in(&app, &headers, &format!("/sessions/{id}")).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(e) = api::check_id(&id) {
        return html::error_page(&e);
    }
    let session = match app.control.get_session(&caller.token, &id).await {
        Ok(s) => s,
        Err(e) => return html::error_page(&e),
    };
    let summary = session.summary.clone().unwrap_or_default();
    let killed = url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).any(|(k, _)| k == "killed");
    let mut body = String::new();
    if killed {
        body.push_str(
            "<p class=\"notice ok\" id=\"notice\">Your kill order was recorded. The proxy ends the \
             session (the agent gets FATAL 57P01 naming you) and cancels what it is running.</p>",
        );
    }
    let _ = write!(
        body,
        "<h1>Session <code>{}</code></h1><section class=\"card\"><dl>\
         <dt>who</dt><dd>{}</dd><dt>connection</dt><dd>{}</dd><dt>state</dt><dd>{}</dd>\
         <dt>opened</dt><dd>{}</dd><dt>closed</dt><dd>{}</dd>\
         <dt>statements</dt><dd>{} executed, {} refused, {} waiting</dd></dl></section><h2>Timeline</h2><ol class=\"timeline\">",
        esc(&summary.session_id),
        identity_html(summary.identity.as_ref()),
        connection_html(summary.connection.as_ref()),
        if summary.state == proto::SessionState::Closed as i32 {
            "closed"
        } else {
            "open"
        },
        clock(ts(summary.opened_at.as_ref())),
        clock(ts(summary.closed_at.as_ref())),
        summary.statements_executed,
        summary.statements_refused,
        summary.requests_pending,
    );
    if summary.state != proto::SessionState::Closed as i32 && !killed {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/sessions/{}/kill\" class=\"card kill\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label for=\"kill-reason\">Why end this session? (recorded in the audit log)</label>\
             <textarea id=\"kill-reason\" name=\"reason\" rows=\"2\" maxlength=\"{}\" required></textarea>\
             <div class=\"actions\"><button type=\"submit\" class=\"deny\" id=\"kill\">End this session</button></div>\
             <p class=\"muted\">The agent is disconnected and its running statement cancelled; \
             statements it holds for approval are refused.</p></form>",
            esc(&summary.session_id),
            esc(caller.csrf()),
            api::MAX_REASON_CHARS,
        );
    }
    for entry in &session.timeline {
        let j = views::timeline_entry(entry);
        let event = entry.event.clone().unwrap_or_default();
        let statement = match event.body {
            Some(proto::event::Body::StatementExecuted(x)) => x.statement,
            Some(proto::event::Body::StatementRefused(x)) => x.statement,
            Some(proto::event::Body::ApprovalRequested(x)) => x.statement,
            _ => None,
        };
        let _ = write!(
            body,
            "<li class=\"{kind}\"><span class=\"muted\">#{} {}</span> <span class=\"kind\">{kind}</span> {}{}{}</li>",
            entry.sequence,
            clock(ts(event.time.as_ref())),
            esc(&j.summary),
            if j.request_id.is_empty() {
                String::new()
            } else {
                format!(" <a href=\"/requests/{0}\">request {0}</a>", esc(&j.request_id))
            },
            statement
                .map(|s| format!("<pre class=\"sql\"><code>{}</code></pre>", highlight(&s.text)))
                .unwrap_or_default(),
            kind = j.kind,
        );
    }
    body.push_str("</ol>");
    html::page(StatusCode::OK, "Session", Some(&viewer(&caller)), "", &body)
}

/// The session page's kill form: the same rules as the REST call (a person
/// in a reviewer group, CSRF token and origin for a cookie session).
async fn kill(
    State(app): State<crate::State>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let id = match api::path_id(id) {
        Ok(id) => id,
        Err(e) => return html::error_page(&e),
    };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let caller = match app.auth.changing(&headers, field("csrf")).await {
        Ok(c) => c,
        Err(e) => return html::error_page(&e),
    };
    let reason = field("reason").unwrap_or_default().trim().to_owned();
    if reason.is_empty() {
        return html::error_page(&ApiError::invalid("say why the session is ended"));
    }
    if let Err(e) = api::check_id(&id).and_then(|()| api::check_reason(&reason)) {
        return html::error_page(&e);
    }
    match app.control.kill_session(&caller.token, &id, reason).await {
        Ok(_) => {
            crate::metrics::Metrics::inc(&app.metrics.kills);
            (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, format!("/sessions/{id}?killed=1"))],
            )
                .into_response()
        }
        Err(e) => html::error_page(&e),
    }
}
