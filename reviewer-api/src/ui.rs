//! The web UI at `/`: server-rendered pages, one small script for live
//! updates, one stylesheet, all served by this binary (no CDN: it works
//! air-gapped). Pages: the inbox of pending requests, a request with
//! approve (optionally in scope: a grant, or break-glass) and deny, the
//! history of decided requests, a session's timeline with a kill form, and
//! the grants with their uses and a revoke form. Votes, kills and
//! revocations are HTML form posts with a CSRF token; they go through the
//! same path as the REST API's.
//!
//! Every page handler answers `Result<Markup, PageError>` (a form post
//! answers a redirect instead of markup): failures leave through
//! [`PageError`]'s one exit, as the REST API's leave through `ApiError`.

use airlock_proto::v1 as proto;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use time::OffsetDateTime;

use crate::auth::{Caller, Via};
use crate::error::{ApiError, Code};
use crate::highlight::{has_hidden, highlight};
use crate::html::{self, Live, PageError, Viewer, duration};
use crate::{Route, api, json};

mod grants;
mod slack;

pub fn routes() -> Vec<Route> {
    vec![
        ("GET", "/", get(inbox)),
        ("GET", "/history", get(history)),
        ("GET", "/requests/{id}", get(request_page)),
        ("POST", "/requests/{id}/decide", post(decide)),
        ("GET", "/sessions/{id}", get(session_page)),
        ("POST", "/sessions/{id}/kill", post(kill)),
        ("GET", "/grants", get(grants::list)),
        ("GET", "/grants/{id}", get(grants::page)),
        ("POST", "/grants/{id}/revoke", post(grants::revoke)),
        ("GET", "/slack", get(slack::page)),
        ("POST", "/slack/ticket", post(slack::ticket)),
        ("POST", "/slack/unlink", post(slack::unlink)),
        ("POST", "/slack/interactions", post(crate::slack::interactions)),
        ("POST", "/slack/commands", post(crate::slack::commands)),
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
        PageError::from(ApiError::new(Code::NotFound, "there is no such page")).into_response()
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

/// The signed-in caller; an unauthenticated browser gets the sign-in page,
/// which brings it back to `path`.
async fn signed_in(app: &crate::App, headers: &HeaderMap, path: &str) -> Result<Caller, PageError> {
    match app.auth.caller(headers).await {
        Ok(c) => Ok(c),
        Err(e) if e.code == Code::Unauthenticated => Err(PageError::SignIn {
            return_to: path.to_owned(),
            available: app.oidc.is_some(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// One value of a query string or form.
fn field(raw: &[u8], name: &str) -> Option<String> {
    url::form_urlencoded::parse(raw)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

pub(crate) fn ts(t: Option<&prost_types::Timestamp>) -> Option<OffsetDateTime> {
    json::time(t)
}

pub(crate) fn clock(t: Option<OffsetDateTime>) -> String {
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

fn unknown() -> Markup {
    html! { span.muted { "unknown" } }
}

fn identity(i: Option<&proto::Identity>) -> Markup {
    let Some(i) = i else { return unknown() };
    let kind = json::identity(i).kind.as_str();
    let name = if i.display_name.is_empty() {
        &i.subject
    } else {
        &i.display_name
    };
    html! {
        span.identity {
            strong.name { (name) }
            " " span.badge.(kind) { (kind) }
            " " span.muted.subject { (i.subject) }
            @for g in &i.groups {
                " "
                @if g.name.is_empty() {
                    span.group { (g.id) }
                } @else {
                    span.group title=(g.id) { (g.name) }
                }
            }
        }
    }
}

fn statement(s: Option<&proto::Statement>) -> Markup {
    let Some(s) = s else {
        return html! { p.muted { "no statement recorded" } };
    };
    html! {
        @if has_hidden(&s.text) {
            p.warning { "This statement contains invisible characters; they are marked below." }
        }
        pre.sql { code { (highlight(&s.text)) } }
        @if !s.parameters.is_empty() {
            table.params {
                thead { tr { th { "$" } th { "value" } th { "type oid" } th { "format" } } }
                tbody {
                    @for (n, p) in s.parameters.iter().enumerate() {
                        tr {
                            td { "$" (n + 1) }
                            td {
                                @if p.is_null { span.muted { "NULL" } } @else { code { (p.display) } }
                            }
                            td { (p.type_oid) }
                            td {
                                @if p.format == proto::parameter::Format::Binary as i32 { "binary" } @else { "text" }
                            }
                        }
                    }
                }
            }
        }
        p.muted.digest { "SHA-256 of the exact bytes: " code { (hex::encode(&s.sha256)) } }
    }
}

fn connection(c: Option<&proto::ConnectionInfo>) -> Markup {
    let Some(c) = c else { return unknown() };
    html! {
        strong { (c.name) }
        " "
        span.muted {
            "(" (c.upstream_user) "@" (c.upstream_host) ":" (c.upstream_port) "/" (c.upstream_database) ")"
        }
    }
}

/// What a shadow policy would have done, in words.
fn shadow_action(v: &proto::Verdict) -> &'static str {
    match v.action() {
        proto::verdict::Action::Allow => "allow",
        proto::verdict::Action::RequireApproval => "hold for approval",
        proto::verdict::Action::Deny => "deny",
        proto::verdict::Action::Unspecified => "judge nothing",
    }
}

fn rule(v: Option<&proto::Verdict>) -> Markup {
    let Some(v) = v else { return unknown() };
    html! {
        "policy " strong { (v.policy) } ", rule "
        @if v.rule_index > 0 { "#" (v.rule_index) " " }
        code { (v.rule) }
        @if !v.reason.is_empty() { " — " em { (v.reason) } }
    }
}

/// The card of one request, as in the inbox; `link` adds the way to the
/// request's page and its session.
fn request_card(view: &proto::RequestView, now: OffsetDateTime, link: bool) -> Markup {
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
    let state = json::state_name(view.state);
    html! {
        article.card.request.(state) data-request-id=(view.request_id) {
            div.row {
                div { (identity(asked.identity.as_ref())) }
                span.state.(state) { (state) }
            }
            dl {
                dt { "connection" } dd { (connection(asked.connection.as_ref())) }
                dt { "statement" } dd.statement { (statement(asked.statement.as_ref())) }
                @if copies_from_client(asked.verdict.as_ref()) {
                    dt { "data" }
                    dd {
                        p.warning.copy-data {
                            "COPY FROM STDIN: approving this approves the command. The rows the agent \
                             streams after it are not shown here; they are written as they arrive."
                        }
                    }
                }
                dt { "rule" } dd { (rule(asked.verdict.as_ref())) }
                @if let Some(f) = asked.fingerprint.as_ref().filter(|f| !f.hash.is_empty()) {
                    dt { "shape" }
                    dd.fingerprint {
                        code.shape { (f.normalized) } " "
                        span.muted { "fingerprint " (f.hash.get(..12).unwrap_or(&f.hash)) }
                    }
                }
                @if view.votes.iter().any(|v| v.break_glass) {
                    dt { "break-glass" }
                    dd.break-glass {
                        span.badge.break-glass { "break-glass" }
                        " the requester approved it themself under the policy's break-glass terms"
                    }
                }
                @if let Some(i) = &asked.impact {
                    @if let Some(e) = &i.estimate {
                        dt { "estimate" } dd.estimate { (estimate(e)) }
                    }
                    @if let Some(d) = &i.dry_run {
                        dt { "dry run" } dd.dry-run { (dry_run(d)) }
                    }
                }
                @if !asked.agent_reason.is_empty() {
                    dt { "agent's reason" }
                    dd.agent-reason {
                        span.muted { "the requester's own words, not verified: " }
                        q { (asked.agent_reason) }
                        @if asked.agent_reason_truncated { " " span.muted { "(cut at 2 KiB)" } }
                    }
                }
                @if let Some(shadow) = asked.verdict.as_ref().and_then(|v| v.shadow_verdict.as_deref()) {
                    dt { "shadow policy" }
                    dd.shadow {
                        "would " strong { (shadow_action(shadow)) } " (not enforced): " (rule(Some(shadow)))
                    }
                }
                dt { "approvals" }
                dd { span.approvals { (json::approvals_given(view)) " of " (asked.approvals_required) } }
                @if !asked.require_acrs.is_empty() {
                    dt { "step-up" }
                    dd.step-up {
                        "approving needs a sign-in that met authentication context "
                        code { (asked.require_acrs.join(", ")) }
                    }
                }
                @if view.state == proto::RequestState::Pending as i32 {
                    dt { "waiting" } dd { (waiting) " " span.muted { "(since " (clock(requested)) ")" } }
                    dt { "time left" } dd { (left) " " span.muted { "(until " (clock(deadline)) ")" } }
                } @else {
                    dt { "requested" } dd { (clock(requested)) }
                    dt { "decided" }
                    dd {
                        (clock(ts(view.decided_at.as_ref())))
                        @if !view.outcome_reason.is_empty() { " — " em { (view.outcome_reason) } }
                    }
                }
            }
            @if link {
                p {
                    a.button href={ "/requests/" (view.request_id) } { "Review" }
                    " "
                    a.muted href={ "/sessions/" (view.session_id) } { "session" }
                }
            }
        }
    }
}

/// The bounds an approval gets unless the reviewer changes them; when
/// nothing was measured, the tables its rule names, unbounded unless the
/// reviewer sets one.
fn default_bounds(asked: &proto::ApprovalRequested) -> Vec<(String, Option<u64>)> {
    let measured: Vec<(String, Option<u64>)> = airlock_proto::bounds::default_bounds(asked)
        .into_iter()
        .map(|b| (b.table, Some(b.max_rows)))
        .collect();
    if !measured.is_empty() {
        return measured;
    }
    let mut named: Vec<(String, Option<u64>)> = Vec::new();
    for t in asked
        .verdict
        .iter()
        .flat_map(|v| &v.effects)
        .flat_map(|e| &e.tables)
    {
        if !t.contains('*') && !named.iter().any(|(n, _)| n == t) {
            named.push((t.clone(), None));
        }
    }
    named
}

fn rows_of(tables: &[proto::TableRows], counted: bool) -> Markup {
    html! {
        @for (i, t) in tables.iter().enumerate() {
            @if i > 0 { ", " }
            strong { (t.rows) } " " @if t.rows == 1 { "row" } @else { "rows" } " of " code { (t.table) }
            @if counted {
                " "
                span.muted {
                    "("
                    @let parts = [("inserted", t.inserted), ("updated", t.updated), ("deleted", t.deleted)];
                    @for (j, (word, n)) in parts.iter().filter(|(_, n)| *n > 0).enumerate() {
                        @if j > 0 { ", " }
                        (n) " " (word)
                    }
                    ")"
                }
            }
        }
    }
}

fn estimate(e: &proto::ImpactEstimate) -> Markup {
    html! {
        @if !e.unavailable.is_empty() {
            span.muted { (e.unavailable) }
        } @else {
            @if e.tables.is_empty() {
                "about " strong { (e.plan_rows.ceil() as u64) } " rows read"
            } @else {
                "about " (rows_of(&e.tables, false))
            }
            " " span.muted { "(PostgreSQL's plan: " (e.top_node) ", cost " (format!("{:.1}", e.total_cost)) "; an estimate)" }
        }
    }
}

fn dry_run(d: &proto::DryRun) -> Markup {
    html! {
        @if !d.unavailable.is_empty() {
            span.muted { (d.unavailable) }
        } @else if d.tables.is_empty() {
            "changed no rows " span.muted { "(" (d.command_tag) ", rolled back)" }
        } @else {
            "changed exactly " (rows_of(&d.tables, true))
            " " span.muted { "(" (d.command_tag) ", run once and rolled back, cascades and triggers included)" }
        }
    }
}

fn recent(statements: &[proto::RecentStatement]) -> Markup {
    html! {
        h2 { "Before it asked" }
        @if statements.is_empty() {
            p.muted { "Nothing else was sent on this session before." }
        } @else {
            table.recent {
                thead { tr { th { "time" } th { "statement" } th { "verdict" } } }
                tbody {
                    @for r in statements {
                        @let action = json::VerdictActionJson::of(r.action).as_str();
                        tr {
                            td { (clock(ts(r.time.as_ref()))) }
                            td { code { (r.text) } @if r.truncated { " " span.muted { "(cut)" } } }
                            td { span.verdict.(action) { (action) } " " span.muted { (r.rule) } }
                        }
                    }
                }
            }
        }
    }
}

async fn inbox(State(app): State<crate::State>, headers: HeaderMap) -> Result<Markup, PageError> {
    let caller = signed_in(&app, &headers, "/").await?;
    let q = proto::ListRequestsRequest {
        states: vec![proto::RequestState::Pending as i32],
        page_size: 200,
        ..Default::default()
    };
    let (requests, _) = api::requests_page(&app, &caller, q).await?;
    let now = OffsetDateTime::now_utc();
    let body = html! {
        h1 { "Waiting for a decision " span.count { (requests.len()) } }
        @if requests.is_empty() {
            p.empty { "Nothing is waiting for you. New requests appear here as they arrive." }
        }
        @for r in &requests {
            (request_card(r, now, true))
        }
    };
    Ok(html::page("Inbox", Some(&viewer(&caller)), Live::Inbox, body))
}

/// Whether a statement is a `COPY ... FROM STDIN` (its effects are a COPY
/// and an INSERT, not from a server file or program): its rows come after
/// the approval, unreviewed.
fn copies_from_client(verdict: Option<&proto::Verdict>) -> bool {
    let has = |kind: &str| verdict.is_some_and(|v| v.effects.iter().any(|e| e.kind == kind));
    has("COPY") && has("INSERT") && !has("SERVER FILE") && !has("PROGRAM")
}

/// Longest part of a statement shown in the history table.
const HISTORY_STATEMENT_CHARS: usize = 120;

async fn history(
    State(app): State<crate::State>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Markup, PageError> {
    let caller = signed_in(&app, &headers, "/history").await?;
    let q = proto::ListRequestsRequest {
        states: api::parse_states(&["decided".to_owned()]).unwrap_or_default(),
        page_size: 100,
        page_token: field(raw.unwrap_or_default().as_bytes(), "page_token").unwrap_or_default(),
        ..Default::default()
    };
    let (requests, next) = api::requests_page(&app, &caller, q).await?;
    let body = html! {
        h1 { "History" }
        table.history {
            thead {
                tr { th { "requested" } th { "who" } th { "connection" } th { "statement" } th { "outcome" } th { "by" } }
            }
            tbody {
                @for r in &requests {
                    (history_row(r))
                }
            }
        }
        @if requests.is_empty() {
            p.empty { "No decided requests yet." }
        }
        @if !next.is_empty() {
            p {
                a href={ "/history?" (url::form_urlencoded::Serializer::new(String::new()).append_pair("page_token", &next).finish()) } {
                    "Older"
                }
            }
        }
    };
    Ok(html::page("History", Some(&viewer(&caller)), Live::Off, body))
}

fn history_row(r: &proto::RequestView) -> Markup {
    let asked = r.request.clone().unwrap_or_default();
    let text = asked.statement.as_ref().map(|s| s.text.as_str()).unwrap_or("");
    let short: String = text.chars().take(HISTORY_STATEMENT_CHARS).collect();
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
                json::decision_name(v.decision)
            )
        })
        .collect();
    let state = json::state_name(r.state);
    html! {
        tr {
            td { (clock(ts(r.requested_at.as_ref()))) }
            td { (asked.identity.as_ref().map(|i| i.display_name.as_str()).unwrap_or("?")) }
            td { (asked.connection.as_ref().map(|c| c.name.as_str()).unwrap_or("?")) }
            td {
                a href={ "/requests/" (r.request_id) } {
                    code { (short) @if short.len() < text.len() { "…" } }
                }
            }
            td { span.state.(state) { (state) } " " (r.outcome_reason) }
            td { (by.join(", ")) }
        }
    }
}

/// A line above the request: a vote recorded, or refused.
#[derive(Debug, Clone, Copy)]
enum Notice<'a> {
    Recorded(&'a str),
    Refused(&'a str),
    /// Refused for want of step-up: the text, and where to sign in again.
    StepUp(&'a str, &'a str),
}

fn request_body(view: &proto::RequestView, caller: &Caller, notice: Option<Notice<'_>>) -> Markup {
    let asked = view.request.clone().unwrap_or_default();
    let pending = view.state == proto::RequestState::Pending as i32;
    let sha = asked
        .statement
        .as_ref()
        .map(|s| hex::encode(&s.sha256))
        .unwrap_or_default();
    html! {
        @match notice {
            Some(Notice::Recorded(text)) => p.notice.ok #notice { (text) },
            Some(Notice::Refused(text)) => p.notice.refused #notice { (text) },
            Some(Notice::StepUp(text, href)) => p.notice.refused #notice {
                (text) " " a.button #step-up href=(href) { "Sign in again with step-up" }
            },
            None => {},
        }
        h1 { "Request " code { (view.request_id) } }
        (request_card(view, OffsetDateTime::now_utc(), false))
        @if let Some(c) = &asked.client {
            p.muted {
                "client " (c.address) " as " code { (c.user) }
                " (" @if c.tls { "TLS" } @else { "no TLS" } "), through " (asked.proxy_id) "; "
                a href={ "/sessions/" (view.session_id) } { "the whole session" }
            }
        }
        (recent(&asked.recent_statements))
        @if !view.votes.is_empty() {
            h2 { "Votes" }
            ul.votes {
                @for v in &view.votes {
                    li {
                        (identity(v.reviewer.as_ref())) " "
                        strong { (json::decision_name(v.decision)) }
                        " at " (clock(ts(v.time.as_ref())))
                        @if let Some(r) = v.reviewer.as_ref().filter(|r| !r.acrs.is_empty()) {
                            " " span.muted { "(sign-in met " (r.acrs.join(", ")) ")" }
                        }
                        @if !v.reason.is_empty() { ": " em { (v.reason) } }
                    }
                }
            }
        }
        @if pending {
            form.card.decide method="post" action={ "/requests/" (view.request_id) "/decide" } {
                input type="hidden" name="csrf" value=(caller.csrf());
                input type="hidden" name="statement_sha256" value=(sha);
                label for="reason" { "Reason (recorded in the audit log)" }
                textarea #reason name="reason" rows="3" maxlength=(json::MAX_REASON_CHARS) {}
                @let defaults = default_bounds(&asked);
                @let measured = airlock_proto::bounds::measured(&asked);
                @if !defaults.is_empty() {
                    fieldset.bounds {
                        legend { "Row bounds of an approval" }
                        @if measured.0 || measured.1 {
                            p.muted {
                                "It runs in a transaction of Airlock's and is rolled back, refused, if it changes more \
                                 rows of a table than this (rows that match it may appear before it runs)."
                            }
                        } @else {
                            p.warning.unbounded {
                                "Nothing was measured of this statement: unless you set a bound here, approving runs it \
                                 however many rows it changes."
                            }
                        }
                        @for (table, n) in &defaults {
                            label {
                                "at most " input.bound type="number" min="0" name={ "max_rows:" (table) } value=[n];
                                " rows of " code { (table) }
                            }
                        }
                    }
                } @else {
                    p.warning.unbounded {
                        "Nothing was measured of this statement and it names no table to bound: approving runs it \
                         whatever it changes."
                    }
                }
                (scope_fields(&asked))
                @if own_request(caller, &asked) {
                    @if let Some(glass) = &asked.break_glass {
                        fieldset.break-glass {
                            legend { "Break-glass" }
                            label {
                                input #break-glass type="checkbox" name="break_glass" value="1";
                                " This is my own statement: I approve it under the policy's break-glass terms (groups "
                                (glass.groups.iter().map(|g| if g.name.is_empty() { g.id.as_str() } else { g.name.as_str() }).collect::<Vec<_>>().join(", "))
                                "). Every reviewer is told; say why in at least 20 characters."
                            }
                        }
                    }
                }
                div.actions {
                    button.approve #approve type="submit" name="decision" value="approve" { "Approve" }
                    button.deny #deny type="submit" name="decision" value="deny" { "Deny" }
                }
                p.muted { "You approve exactly the statement shown above (its SHA-256 is sent with your vote)." }
            }
        }
    }
}

/// Whether the signed-in caller is the request's requester (a person).
fn own_request(caller: &Caller, asked: &proto::ApprovalRequested) -> bool {
    caller.identity.kind == proto::identity::Kind::User as i32
        && asked
            .identity
            .as_ref()
            .is_some_and(|i| !i.subject.is_empty() && i.subject == caller.identity.subject)
}

/// The grant an approval may carry: nothing more (the default), statements
/// of this one's shape, or its kinds on its tables, for a while, a number
/// of times, each within a row bound.
fn scope_fields(asked: &proto::ApprovalRequested) -> Markup {
    let fp = asked.fingerprint.clone().unwrap_or_default();
    let effects: Vec<proto::Effect> = asked
        .verdict
        .as_ref()
        .map(|v| v.effects.clone())
        .unwrap_or_default();
    let writes = effects.iter().any(|e| !e.kind.eq_ignore_ascii_case("SELECT"));
    html! {
        fieldset.scope {
            legend { "Also allow statements like this one (a grant)" }
            @if fp.hash.is_empty() {
                p.muted {
                    "Not offered for this statement: "
                    @if fp.unavailable.is_empty() { "it has no shape a grant can cover" } @else { (fp.unavailable) }
                    "."
                }
            } @else {
                label { input #scope-none type="radio" name="scope" value="" checked; " No: this statement only" }
                label {
                    input #scope-fingerprint type="radio" name="scope" value="fingerprint";
                    " Statements of this shape: " code.shape { (fp.normalized) }
                }
                label {
                    input #scope-rule type="radio" name="scope" value="rule";
                    " Any statement that only does "
                    @for (i, e) in effects.iter().enumerate() {
                        @if i > 0 { "; " }
                        strong { (e.kind) } " on " code { (e.tables.join(", ")) }
                    }
                    " (a time-boxed elevation)"
                }
                div.scope-terms {
                    label { "for " input #scope-ttl type="text" name="scope_ttl" value="30m" size="6"; }
                    label { ", at most " input #scope-max-uses type="number" min="1" max="1000" name="scope_max_uses" value="10"; " times" }
                    label {
                        ", each changing at most "
                        input #scope-max-rows type="number" min="0" name="scope_max_rows" value=[writes.then_some(1)];
                        " rows of a table"
                    }
                }
                p.muted {
                    "For this requester on this connection only, never for what policy refuses; every use is in \
                     the log, and the grant can be revoked on its page."
                }
            }
        }
    }
}

/// The scope the approve form asked for, if any.
fn scope_from_form(
    body: &[u8],
    asked: &proto::ApprovalRequested,
) -> Result<Option<proto::GrantScope>, ApiError> {
    let m = field(body, "scope").unwrap_or_default();
    if m.is_empty() {
        return Ok(None);
    }
    let number = |name: &str, what: &str| -> Result<Option<u64>, ApiError> {
        let v = field(body, name).unwrap_or_default();
        let v = v.trim();
        if v.is_empty() {
            return Ok(None);
        }
        v.parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::invalid(format!("{what} is not a whole number")))
    };
    let max_uses = number("scope_max_uses", "the grant's number of uses")?.unwrap_or(0);
    let mut kinds = Vec::new();
    let mut tables = Vec::new();
    if m == "rule" {
        // The kinds and tables of the statement shown: the grant can only
        // be narrower, never wider, than what the reviewer read.
        for e in asked
            .verdict
            .as_ref()
            .map(|v| v.effects.as_slice())
            .unwrap_or(&[])
        {
            if !kinds.contains(&e.kind) {
                kinds.push(e.kind.clone());
            }
            for t in &e.tables {
                if !tables.contains(t) {
                    tables.push(t.clone());
                }
            }
        }
    }
    json::ScopeBody {
        match_: m,
        ttl: field(body, "scope_ttl").unwrap_or_default(),
        max_uses: u32::try_from(max_uses).unwrap_or(u32::MAX),
        max_rows: number("scope_max_rows", "the grant's row bound")?,
        kinds,
        tables,
    }
    .to_proto()
    .map(Some)
    .map_err(ApiError::invalid)
}

async fn request_page(
    State(app): State<crate::State>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Markup, PageError> {
    let id = api::path_id(id)?;
    let caller = signed_in(&app, &headers, &format!("/requests/{id}")).await?;
    let raw = raw.unwrap_or_default();
    let notice = match field(raw.as_bytes(), "voted").as_deref() {
        Some("approve") => Some(Notice::Recorded("Your vote to approve was recorded.")),
        Some("deny") => Some(Notice::Recorded("Your vote to deny was recorded.")),
        _ if field(raw.as_bytes(), "stepped_up").is_some() => Some(Notice::Recorded(
            "You signed in again with the authentication context this approval needs. Approve again to \
             record your vote.",
        )),
        _ => None,
    };
    let view = api::visible_request(&app, &caller, &id).await?;
    let body = request_body(&view, &caller, notice);
    // Just after a vote the page is fresh: no live reload under the
    // reviewer's eyes.
    let live = if notice.is_some() {
        Live::Off
    } else {
        Live::Request
    };
    Ok(html::page("Request", Some(&viewer(&caller)), live, body))
}

async fn decide(
    State(app): State<crate::State>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Redirect, PageError> {
    let id = api::path_id(id)?;
    let caller = app
        .auth
        .changing(&headers, field(&body, "csrf").as_deref())
        .await?;
    let (decision, word) = match field(&body, "decision").as_deref() {
        Some("approve") => (proto::Decision::Approve, "approve"),
        Some("deny") => (proto::Decision::Deny, "deny"),
        _ => return Err(ApiError::invalid("choose approve or deny").into()),
    };
    let reason = field(&body, "reason").unwrap_or_default().trim().to_owned();
    let sha = field(&body, "statement_sha256");
    let break_glass = decision == proto::Decision::Approve && field(&body, "break_glass").is_some();
    let scope =
        if decision == proto::Decision::Approve && field(&body, "scope").is_some_and(|s| !s.is_empty()) {
            // What the reviewer was shown decides which kinds and tables a
            // rule grant names.
            let view = api::visible_request(&app, &caller, &id).await?;
            scope_from_form(&body, view.request.as_ref().unwrap_or(&Default::default()))?
        } else {
            None
        };
    let mut max_rows = Vec::new();
    if decision == proto::Decision::Approve {
        for (k, v) in url::form_urlencoded::parse(&body) {
            if let Some(table) = k.strip_prefix("max_rows:") {
                let v = v.trim();
                if v.is_empty() {
                    continue;
                }
                let Ok(n) = v.parse::<u64>() else {
                    return Err(
                        ApiError::invalid(format!("the bound for {table} is not a number of rows")).into(),
                    );
                };
                max_rows.push(proto::TableBound {
                    table: table.to_owned(),
                    max_rows: n,
                });
            }
        }
    }
    match api::vote(
        &app,
        &caller,
        &id,
        decision,
        reason,
        sha.as_deref(),
        api::Terms {
            max_rows,
            scope,
            break_glass,
        },
    )
    .await
    {
        // Post/redirect/get: reloading the page never votes twice.
        Ok(_) => Ok(Redirect::to(&format!("/requests/{id}?voted={word}"))),
        Err(error) => {
            // The request page again, with why on top; if even that cannot
            // be read, the plain error page.
            let Ok(view) = app.control.get_request(&caller.token, &id).await else {
                return Err(error.into());
            };
            let text = format!("Refused ({}): {}", error.code.as_str(), error.message);
            // A browser reviewer whose sign-in lacks the step-up this
            // approval needs is offered a sign-in that asks the issuer for
            // it (a link: the page's form-action policy keeps form posts
            // on this server). Nothing is voted until they approve again.
            let step_up = (error.code == Code::StepUpRequired
                && app.oidc.is_some()
                && matches!(caller.via, Via::Session { .. })
                && !error.acrs.is_empty())
            .then(|| {
                let mut target = String::from("/auth/login?");
                url::form_urlencoded::Serializer::for_suffix(&mut target, 0)
                    .append_pair("return_to", &format!("/requests/{id}?stepped_up=1"))
                    .append_pair("acrs", &error.acrs.join(" "));
                target
            });
            let notice = match &step_up {
                Some(href) => Notice::StepUp(&text, href),
                None => Notice::Refused(&text),
            };
            let body = request_body(&view, &caller, Some(notice));
            // Not live: a reload would post the form again.
            let page = html::page("Request", Some(&viewer(&caller)), Live::Off, body);
            Err(PageError::InPage { error, page })
        }
    }
}

async fn session_page(
    State(app): State<crate::State>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Markup, PageError> {
    let id = api::path_id(id)?;
    let caller = signed_in(&app, &headers, &format!("/sessions/{id}")).await?;
    api::check_id(&id)?;
    let session = app.control.get_session(&caller.token, &id).await?;
    let summary = session.summary.clone().unwrap_or_default();
    let killed = field(raw.unwrap_or_default().as_bytes(), "killed").is_some();
    let closed = summary.state == proto::SessionState::Closed as i32;
    let body = html! {
        @if killed {
            p.notice.ok #notice {
                "Your kill order was recorded. The proxy ends the session (the agent gets FATAL 57P01 \
                 naming you) and cancels what it is running."
            }
        }
        h1 { "Session " code { (summary.session_id) } }
        section.card {
            dl {
                dt { "who" } dd { (identity(summary.identity.as_ref())) }
                dt { "connection" } dd { (connection(summary.connection.as_ref())) }
                dt { "state" } dd { @if closed { "closed" } @else { "open" } }
                dt { "opened" } dd { (clock(ts(summary.opened_at.as_ref()))) }
                dt { "closed" } dd { (clock(ts(summary.closed_at.as_ref()))) }
                dt { "statements" }
                dd {
                    (summary.statements_executed) " executed, "
                    (summary.statements_refused) " refused, "
                    (summary.requests_pending) " waiting"
                }
            }
        }
        @if !closed && !killed {
            form.card.kill method="post" action={ "/sessions/" (summary.session_id) "/kill" } {
                input type="hidden" name="csrf" value=(caller.csrf());
                label for="kill-reason" { "Why end this session? (recorded in the audit log)" }
                textarea #kill-reason name="reason" rows="2" maxlength=(json::MAX_REASON_CHARS) required {}
                div.actions {
                    button.deny #kill type="submit" { "End this session" }
                }
                p.muted {
                    "The agent is disconnected and its running statement cancelled; \
                     statements it holds for approval are refused."
                }
            }
        }
        h2 { "Timeline" }
        ol.timeline {
            @for entry in &session.timeline {
                (timeline_entry(entry))
            }
        }
    };
    Ok(html::page("Session", Some(&viewer(&caller)), Live::Off, body))
}

fn timeline_entry(entry: &proto::RecordedEvent) -> Markup {
    let j = json::timeline_entry(entry);
    let event = entry.event.clone().unwrap_or_default();
    let statement = match event.body {
        Some(proto::event::Body::StatementExecuted(x)) => x.statement,
        Some(proto::event::Body::StatementRefused(x)) => x.statement,
        Some(proto::event::Body::ApprovalRequested(x)) => x.statement,
        _ => None,
    };
    html! {
        li.(j.kind.as_str()) {
            span.muted { "#" (entry.sequence) " " (clock(ts(event.time.as_ref()))) }
            " " span.kind { (j.kind.as_str()) }
            " " (j.summary)
            @if !j.request_id.is_empty() {
                " " a href={ "/requests/" (j.request_id) } { "request " (j.request_id) }
            }
            @if let Some(s) = statement {
                pre.sql { code { (highlight(&s.text)) } }
            }
        }
    }
}

/// The session page's kill form: the same rules as the REST call (a person
/// in a reviewer group, CSRF token and origin for a cookie session).
async fn kill(
    State(app): State<crate::State>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Redirect, PageError> {
    let id = api::path_id(id)?;
    let caller = app
        .auth
        .changing(&headers, field(&body, "csrf").as_deref())
        .await?;
    let reason = field(&body, "reason").unwrap_or_default().trim().to_owned();
    if reason.is_empty() {
        return Err(ApiError::invalid("say why the session is ended").into());
    }
    api::check_id(&id)?;
    api::check_reason(&reason)?;
    app.control.kill_session(&caller.token, &id, reason).await?;
    app.metrics.kills.inc();
    Ok(Redirect::to(&format!("/sessions/{id}?killed=1")))
}
