//! The Slack link pages: `/slack/link?code=...` (from a Slack message only
//! its Slack user sees) asks the signed-in person to confirm that this
//! Slack user's button votes are to be cast as them; `POST /slack/link`
//! records it (a `SlackLinked` event, through the control plane with the
//! person's own token); `POST /slack/unlink` ends it. Same rules as every
//! form here: a browser session, its CSRF token and origin.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use maud::{Markup, html};

use super::{field, signed_in, viewer};
use crate::error::ApiError;
use crate::html::{self, Live, PageError};
use airlock_proto::v1 as proto;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn slack_user(app: &crate::App, code: &str) -> Result<proto::SlackUser, PageError> {
    let slack = app.slack.as_ref().ok_or_else(|| {
        ApiError::new(
            crate::error::Code::NotFound,
            "Slack approvals are not set up here",
        )
    })?;
    slack
        .check_code(code, now())
        .map_err(|why| ApiError::invalid(why).into())
}

fn describe(u: &proto::SlackUser) -> Markup {
    html! {
        @if !u.name.is_empty() { strong { "@" (u.name) } " " }
        "(Slack user " code { (u.user_id) } " in workspace " code { (u.team_id) } ")"
    }
}

/// `GET /slack/link?code=...`.
pub async fn page(
    State(app): State<crate::State>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Markup, PageError> {
    let code = field(raw.as_deref().unwrap_or("").as_bytes(), "code").unwrap_or_default();
    let here = format!(
        "/slack/link?code={}",
        url::form_urlencoded::byte_serialize(code.as_bytes()).collect::<String>()
    );
    let caller = signed_in(&app, &headers, &here).await?;
    let user = slack_user(&app, &code)?;
    let current = app.control.get_slack_link(&caller.token, user.clone()).await?;
    let mine =
        current.linked && current.identity.as_ref().map(|i| &i.subject) == Some(&caller.identity.subject);
    let body = html! {
        h1 { "Slack approvals" }
        @if mine {
            p { "Slack user " (describe(&user)) " is linked to you: their Approve and Deny buttons cast your votes." }
            form.card method="post" action="/slack/unlink" {
                input type="hidden" name="csrf" value=(caller.csrf());
                input type="hidden" name="code" value=(code);
                div.actions { button.deny #unlink type="submit" { "End this link" } }
            }
        } @else {
            p {
                "Link Slack user " (describe(&user)) " to you, " strong { (caller.name()) } "? "
                "From then on, their Approve and Deny buttons in Slack cast " em { "your" } " votes, with your "
                "reviewer groups as of now, for 30 days or until you end the link here. Only confirm if that "
                "Slack user is you."
            }
            form.card method="post" action="/slack/link" {
                input type="hidden" name="csrf" value=(caller.csrf());
                input type="hidden" name="code" value=(code);
                div.actions { button.approve #link type="submit" { "Link my Slack user" } }
            }
        }
    };
    Ok(html::page(
        "Slack approvals",
        Some(&viewer(&caller)),
        Live::Off,
        body,
    ))
}

/// `POST /slack/link` and `POST /slack/unlink`.
async fn change(
    app: &crate::App,
    headers: &HeaderMap,
    body: &Bytes,
    link: bool,
) -> Result<Markup, PageError> {
    let caller = app.auth.changing(headers, field(body, "csrf").as_deref()).await?;
    let user = slack_user(app, &field(body, "code").unwrap_or_default())?;
    if link {
        app.control.link_slack(&caller.token, user.clone()).await?;
    } else {
        app.control
            .unlink_slack(&caller.token, user.clone(), "ended on the link page")
            .await?;
    }
    tracing::info!(slack = %user.user_id, who = %caller.identity.subject, link, "Slack link changed");
    let body = html! {
        h1 { "Slack approvals" }
        @if link {
            p #linked { "Linked: Slack user " (describe(&user)) " now votes as you. Press the button in Slack again." }
        } @else {
            p #unlinked { "The link is ended: Slack user " (describe(&user)) " votes as nobody." }
        }
    };
    Ok(html::page(
        "Slack approvals",
        Some(&viewer(&caller)),
        Live::Off,
        body,
    ))
}

pub async fn link(
    State(app): State<crate::State>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Markup, PageError> {
    change(&app, &headers, &body, true).await
}

pub async fn unlink(
    State(app): State<crate::State>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Markup, PageError> {
    change(&app, &headers, &body, false).await
}
