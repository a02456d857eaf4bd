//! The Slack page, `/slack`: a signed-in reviewer sees the Slack users
//! linked to them (and ends any), and gets a link ticket to type into
//! Slack as `/airlock link <ticket>`. The ticket comes from the control
//! plane, names the person signed in here, is good for ten minutes and
//! links once; whoever types it links their Slack user to this person, so
//! the page says never to give it to anyone. Same rules as every form
//! here: a browser session, its CSRF token and origin.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use maud::{Markup, html};

use super::{clock, field, signed_in, ts, viewer};
use crate::html::{self, Live, PageError};
use airlock_proto::v1 as proto;

fn describe(u: &proto::SlackUser) -> Markup {
    html! {
        @if !u.name.is_empty() { strong { "@" (u.name) } " " }
        "(Slack user " code { (u.user_id) } " in workspace " code { (u.team_id) } ")"
    }
}

fn not_set_up(app: &crate::App) -> Result<(), PageError> {
    if app.slack.is_none() {
        return Err(crate::error::ApiError::new(
            crate::error::Code::NotFound,
            "Slack approvals are not set up here",
        )
        .into());
    }
    Ok(())
}

/// A page of these, for `caller`.
fn page_of(title: &str, caller: &crate::auth::Caller, body: Markup) -> Markup {
    html::page(title, Some(&viewer(caller)), Live::Off, body)
}

/// `GET /slack`.
pub async fn page(State(app): State<crate::State>, headers: HeaderMap) -> Result<Markup, PageError> {
    let caller = signed_in(&app, &headers, "/slack").await?;
    not_set_up(&app)?;
    let links = app.control.list_slack_links(&caller.token).await?;
    let body = html! {
        h1 { "Slack approvals" }
        p {
            "A Slack user linked to you casts " em { "your" } " votes with the Approve and Deny buttons in "
            "Airlock's review channel, with your reviewer groups as of the link, until the link expires."
        }
        h2 { "Your links" }
        @if links.is_empty() {
            p.muted #no-links { "No Slack user is linked to you." }
        } @else {
            table #links {
                thead { tr { th { "Slack user" } th { "Linked" } th { "Expires" } th {} } }
                tbody {
                    @for l in &links {
                        @let u = l.slack.clone().unwrap_or_default();
                        tr {
                            td { (describe(&u)) }
                            td { (clock(ts(l.linked_at.as_ref()))) }
                            td { (clock(ts(l.expires_at.as_ref()))) }
                            td {
                                form method="post" action="/slack/unlink" {
                                    input type="hidden" name="csrf" value=(caller.csrf());
                                    input type="hidden" name="team" value=(u.team_id);
                                    input type="hidden" name="user" value=(u.user_id);
                                    button.deny type="submit" { "End this link" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Link your Slack user" }
        form.card method="post" action="/slack/ticket" {
            input type="hidden" name="csrf" value=(caller.csrf());
            p { "Get a ticket, then type the command it comes with into Slack yourself." }
            div.actions { button.approve #ticket type="submit" { "Get a link ticket" } }
        }
    };
    Ok(page_of("Slack approvals", &caller, body))
}

/// `POST /slack/ticket`: a ticket for the person signed in.
pub async fn ticket(
    State(app): State<crate::State>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Markup, PageError> {
    let caller = app
        .auth
        .changing(&headers, field(&body, "csrf").as_deref())
        .await?;
    not_set_up(&app)?;
    let offer = app.control.offer_slack_link(&caller.token).await?;
    tracing::info!(who = %caller.identity.subject, "Slack link ticket handed out");
    let command = format!("/airlock link {}", offer.ticket);
    let body = html! {
        h1 { "Link your Slack user" }
        p.warning {
            strong { "This ticket is you. " }
            "Whoever types it into Slack casts your votes from then on. Type it yourself, in your own Slack; "
            "never paste it to a person, a bot or a channel, whoever asks for it."
        }
        p { "In Slack, send this command (to any conversation: only you see the answer):" }
        pre #command { (command) }
        p.muted { "Good until " (clock(ts(offer.expires_at.as_ref()))) ", once. " a href="/slack" { "Back to your links" } }
    };
    Ok(page_of("Link your Slack user", &caller, body))
}

/// `POST /slack/unlink`.
pub async fn unlink(
    State(app): State<crate::State>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Markup, PageError> {
    let caller = app
        .auth
        .changing(&headers, field(&body, "csrf").as_deref())
        .await?;
    not_set_up(&app)?;
    let user = proto::SlackUser {
        team_id: field(&body, "team").unwrap_or_default(),
        user_id: field(&body, "user").unwrap_or_default(),
        name: String::new(),
    };
    app.control
        .unlink_slack(&caller.token, user.clone(), "ended on the Slack page")
        .await?;
    tracing::info!(slack = %user.user_id, who = %caller.identity.subject, "Slack link ended");
    let body = html! {
        h1 { "Slack approvals" }
        p #unlinked { "The link is ended: Slack user " (describe(&user)) " votes as nobody. " a href="/slack" { "Back" } }
    };
    Ok(page_of("Slack approvals", &caller, body))
}
