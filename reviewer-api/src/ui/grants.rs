//! The grants pages: `/grants` lists approvals in scope (the active ones
//! unless another state is asked for), `/grants/{id}` shows one with its
//! uses, what is left of it, and a form that revokes it. Revoking goes
//! through the same control-plane call as `DELETE /api/v1/grants/{id}`.

use airlock_proto::v1 as proto;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Redirect;
use maud::{Markup, html};

use super::{clock, field, identity, signed_in, ts, viewer};
use crate::error::ApiError;
use crate::html::{self, Live, PageError};
use crate::{api, json};

/// The filters offered above the list, as `?state=` takes them.
const FILTERS: [&str; 5] = ["active", "used_up", "revoked", "expired", "all"];

/// What a grant allows: its shape, or its kinds on its tables.
fn allows(g: &proto::GrantIssued) -> Markup {
    let scope = g.scope.clone().unwrap_or_default();
    html! {
        @if scope.r#match == proto::grant_scope::Match::Fingerprint as i32 {
            "statements of the shape "
            code.shape { (g.fingerprint.as_ref().map(|f| f.normalized.as_str()).unwrap_or("?")) }
        } @else {
            "any of "
            @for (i, e) in g.allowed.iter().enumerate() {
                @if i > 0 { "; " }
                strong { (e.kind) } " on " code { (e.tables.join(", ")) }
            }
            " (a time-boxed elevation)"
        }
    }
}

fn names(approvers: &[proto::Approver]) -> String {
    approvers
        .iter()
        .filter_map(|a| a.reviewer.as_ref())
        .map(|r| {
            if r.display_name.is_empty() {
                r.subject.clone()
            } else {
                r.display_name.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn list(
    State(app): State<crate::State>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Markup, PageError> {
    let caller = signed_in(&app, &headers, "/grants").await?;
    let raw = raw.unwrap_or_default();
    let word = field(raw.as_bytes(), "state").unwrap_or_else(|| "active".to_owned());
    let states = match word.as_str() {
        "all" => Vec::new(),
        w => vec![json::parse_grant_state(w).ok_or_else(|| {
            ApiError::invalid(format!(
                "unknown grant state {w:?}: active, used_up, revoked, expired or all"
            ))
        })? as i32],
    };
    let grants = app.control.list_grants(&caller.token, states).await?.grants;
    let body = html! {
        h1 { "Grants" }
        p.filters {
            @for f in FILTERS {
                @if f == word { strong { (f.replace('_', " ")) } } @else {
                    a href={ "/grants?state=" (f) } { (f.replace('_', " ")) }
                }
                " "
            }
        }
        @if grants.is_empty() {
            p.empty { "No grants here." }
        } @else {
            table.grants {
                thead {
                    tr { th { "grant" } th { "state" } th { "for" } th { "allows" } th { "uses" } th { "expires" } th { "approved by" } }
                }
                tbody {
                    @for v in &grants {
                        @let g = v.grant.clone().unwrap_or_default();
                        @let state = json::grant_state_name(v.state);
                        @let max = g.scope.as_ref().map_or(0, |s| s.max_uses);
                        tr data-grant-id=(v.grant_id) {
                            td { a href={ "/grants/" (v.grant_id) } { code { (v.grant_id) } } }
                            td {
                                span.state.(state) { (state.replace('_', " ")) }
                                @if g.break_glass { " " span.badge.break-glass { "break-glass" } }
                            }
                            td { (identity(g.identity.as_ref())) " on " (g.connection) }
                            td { (allows(&g)) }
                            td.uses { (v.uses) " of " (max) }
                            td { (clock(ts(g.expires_at.as_ref()))) }
                            td { (names(&g.approvers)) }
                        }
                    }
                }
            }
        }
    };
    Ok(html::page("Grants", Some(&viewer(&caller)), Live::Off, body))
}

pub async fn page(
    State(app): State<crate::State>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Markup, PageError> {
    let id = api::path_id(id)?;
    let caller = signed_in(&app, &headers, &format!("/grants/{id}")).await?;
    api::check_id(&id)?;
    let v = app.control.get_grant(&caller.token, &id).await?;
    // Only once it really is revoked: a link with `?revoked=1` to a live
    // grant says nothing.
    let revoked_now = field(raw.unwrap_or_default().as_bytes(), "revoked").is_some()
        && v.state == proto::GrantState::Revoked as i32;
    let g = v.grant.clone().unwrap_or_default();
    let scope = g.scope.clone().unwrap_or_default();
    let state = json::grant_state_name(v.state);
    let active = v.state == proto::GrantState::Active as i32;
    let body = html! {
        @if revoked_now {
            p.notice.ok #notice {
                "Revoked. No proxy runs another statement under this grant: each use is claimed in the log, \
                 after the revocation."
            }
        }
        h1 { "Grant " code { (v.grant_id) } }
        article.card.grant data-grant-id=(v.grant_id) {
            div.row {
                div { (identity(g.identity.as_ref())) }
                span.state.(state) { (state.replace('_', " ")) }
            }
            @if g.break_glass {
                p.warning.break-glass {
                    "BREAK-GLASS: the requester approved their own statement under the policy's break-glass terms."
                }
            }
            dl {
                dt { "connection" } dd { (g.connection) }
                dt { "allows" } dd.allows { (allows(&g)) }
                dt { "uses" }
                dd.uses {
                    (v.uses) " of " (scope.max_uses)
                    @if active { " (" (v.remaining) " left)" }
                }
                @if let Some(n) = scope.max_rows {
                    dt { "each use" } dd { "changes at most " (n) " rows of each table it writes, or is rolled back" }
                }
                dt { "issued" } dd { (clock(ts(v.issued_at.as_ref()))) }
                dt { "expires" } dd { (clock(ts(g.expires_at.as_ref()))) }
                @if !active {
                    dt { "ended" } dd { (clock(ts(v.ended_at.as_ref()))) }
                }
                dt { "approved by" } dd { (names(&g.approvers)) }
                dt { "rule" } dd { code { (g.policy) } " / " (g.rule) }
                dt { "request" } dd { a href={ "/requests/" (v.grant_id) } { "the approved statement" } }
                @if let Some(by) = &v.revoked_by {
                    dt { "revoked by" }
                    dd.revoked {
                        (identity(Some(by)))
                        @if !v.revoke_reason.is_empty() { ": " em { (v.revoke_reason) } }
                    }
                }
            }
        }
        h2 { "Uses" }
        @if v.recent_uses.is_empty() {
            p.empty { "Not used yet." }
        } @else {
            table.grant-uses {
                thead { tr { th { "#" } th { "time" } th { "session" } th { "proxy" } th { "statement SHA-256" } } }
                tbody {
                    @for u in &v.recent_uses {
                        tr {
                            td { (u.number) }
                            td { (clock(ts(u.time.as_ref()))) }
                            td { a href={ "/sessions/" (u.session_id) } { code { (u.session_id) } } }
                            td { (u.proxy_id) }
                            td { code { (hex::encode(&u.statement_sha256).get(..16).unwrap_or("")) "…" } }
                        }
                    }
                }
            }
        }
        @if active {
            form.card.revoke method="post" action={ "/grants/" (v.grant_id) "/revoke" } {
                input type="hidden" name="csrf" value=(caller.csrf());
                label for="revoke-reason" { "Why revoke it? (recorded in the audit log)" }
                textarea #revoke-reason name="reason" rows="2" maxlength=(json::MAX_REASON_CHARS) {}
                div.actions {
                    button.deny #revoke type="submit" { "Revoke" }
                }
                p.muted { "Every proxy stops applying it; statements of its scope are held again." }
            }
        }
    };
    Ok(html::page("Grant", Some(&viewer(&caller)), Live::Off, body))
}

/// The grant page's revoke form: the same rules as the REST call (a
/// reviewer of the grant's request, or its own identity; CSRF token and
/// origin for a cookie session).
pub async fn revoke(
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
    api::check_id(&id)?;
    let reason = field(&body, "reason").unwrap_or_default().trim().to_owned();
    api::check_reason(&reason)?;
    app.control.revoke_grant(&caller.token, &id, reason).await?;
    tracing::info!(grant = %id, by = %caller.identity.subject, "grant revoked");
    Ok(Redirect::to(&format!("/grants/{id}?revoked=1")))
}
