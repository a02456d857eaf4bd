//! Slack approvals bound to Entra ID (`reviewer.slack`).
//!
//! Messages for held requests carry Approve and Deny buttons (posted with
//! the Slack app's bot token, and updated in place once the request is
//! decided, wherever it was decided). Slack's requests reach
//! `POST /slack/interactions` (button presses) and `POST /slack/commands`
//! (`/airlock link <ticket>`), which believe a request only when Slack's
//! signature checks: HMAC-SHA256 with the app's signing secret over
//! `v0:<timestamp>:<body>`, a timestamp within five minutes, never the same
//! signature twice (on any replica, with `reviewer.state: nats`), and only
//! from the configured workspace (and, for buttons, channel).
//!
//! Neither a vote nor a link is this service's: it relays them to the
//! control plane with its own identity (`notifications.token_file`, listed
//! in `control.slack.relays`), naming the Slack user Slack vouched for. A
//! link needs a ticket the person got from the control plane while signed
//! in to this service's `/slack` page; the vote is cast as the person the
//! Slack user is linked to, with the same group, self-approval and quorum
//! checks as any vote. A message shows everything its Approve button
//! approves (the whole statement and its parameters, as plain text), or it
//! carries no buttons.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_proto::v1 as proto;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::auth::Token;
use crate::notify::{Notification, Occasion};
use crate::shared::Shared;

/// How far a request's timestamp may be from now.
pub const TOLERANCE_SECS: i64 = 300;
/// The most characters of statement and parameters a message shows; a
/// request with more is posted without buttons.
pub const MAX_SHOWN: usize = 12_000;
/// Characters per preformatted block.
const CHUNK: usize = 2_900;
/// Action ids of the buttons.
pub const APPROVE: &str = "airlock_approve";
pub const DENY: &str = "airlock_deny";

/// `reviewer.slack:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSection {
    /// The environment variable with the Slack app's signing secret.
    pub signing_secret_env: String,
    /// The environment variable with the app's bot token (`xoxb-...`).
    pub bot_token_env: String,
    /// The Slack workspace (team id): requests from any other are refused.
    pub team: String,
    /// The channel held requests are posted to (its id): buttons pressed
    /// anywhere else are refused.
    pub channel: String,
    /// Slack's Web API (a stand-in's in tests).
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// Where Slack's `response_url`s point (scheme, host and port exactly,
    /// and the path's start): any other is never called.
    #[serde(default = "default_response_prefix")]
    pub response_url_prefix: String,
}

fn default_api_url() -> String {
    "https://slack.com/api".into()
}

fn default_response_prefix() -> String {
    "https://hooks.slack.com/".into()
}

/// What the interaction endpoint keeps.
pub struct Slack {
    pub section: SlackSection,
    secret: Vec<u8>,
    /// Signatures already taken, with their timestamps (one replica).
    seen: Mutex<HashMap<String, i64>>,
    /// Or, with `reviewer.state: nats`, every replica's.
    shared: Option<Arc<Shared>>,
    respond_to: url::Url,
    http: reqwest::Client,
}

impl std::fmt::Debug for Slack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slack")
            .field("channel", &self.section.channel)
            .finish_non_exhaustive()
    }
}

impl Slack {
    pub fn new(section: SlackSection, shared: Option<Arc<Shared>>) -> anyhow::Result<Slack> {
        if !airlock_eventlog::subjects::slack_id(&section.team) {
            anyhow::bail!(
                "reviewer.slack.team must be the workspace's id (like T0123ABCD), not {:?}",
                section.team
            );
        }
        let respond_to = url::Url::parse(&section.response_url_prefix)
            .ok()
            .filter(|u| u.host_str().is_some() && matches!(u.scheme(), "https" | "http"))
            .ok_or_else(|| anyhow::anyhow!("reviewer.slack.response_url_prefix is not a URL"))?;
        let secret = std::env::var(&section.signing_secret_env).map_err(|_| {
            anyhow::anyhow!(
                "reviewer.slack.signing_secret_env names {}, which is not set",
                section.signing_secret_env
            )
        })?;
        if secret.len() < 16 {
            anyhow::bail!(
                "the Slack signing secret in {} is too short",
                section.signing_secret_env
            );
        }
        Ok(Slack {
            section,
            secret: secret.into_bytes(),
            seen: Mutex::new(HashMap::new()),
            shared,
            respond_to,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        })
    }

    /// Checks Slack's signature of `body` and refuses a replay.
    pub async fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), &'static str> {
        let ts = headers
            .get("x-slack-request-timestamp")
            .and_then(|v| v.to_str().ok())
            .ok_or("no X-Slack-Request-Timestamp")?;
        let sig = headers
            .get("x-slack-signature")
            .and_then(|v| v.to_str().ok())
            .ok_or("no X-Slack-Signature")?;
        check_signature(&self.secret, ts, body, sig, now)?;
        // One key per signature, however its hex is written.
        let sig = &sig.to_ascii_lowercase();
        if let Some(shared) = &self.shared {
            return match shared.first_sight(sig).await {
                Ok(true) => Ok(()),
                Ok(false) => Err("this request was already taken (a replay)"),
                Err(e) => {
                    tracing::warn!(error = %e, "a Slack request refused: its replay check failed");
                    Err("this request could not be checked for a replay; try again")
                }
            };
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, t| now - *t <= 2 * TOLERANCE_SECS);
        if seen.len() > 100_000 {
            return Err("too many requests at once");
        }
        if seen.insert(sig.to_owned(), ts.parse().unwrap_or(now)).is_some() {
            return Err("this request was already taken (a replay)");
        }
        Ok(())
    }

    /// Whether `url` is one of Slack's response URLs: the configured
    /// prefix's scheme, host and port exactly, and a path under its path.
    fn is_response_url(&self, url: &str) -> bool {
        let Ok(u) = url::Url::parse(url) else {
            return false;
        };
        let p = &self.respond_to;
        u.scheme() == p.scheme()
            && u.host_str() == p.host_str()
            && u.port_or_known_default() == p.port_or_known_default()
            && u.username().is_empty()
            && u.password().is_none()
            && u.path().starts_with(p.path())
    }

    /// Tells the Slack user something only they see, through the
    /// interaction's `response_url` (only one under the configured prefix).
    pub async fn tell(&self, response_url: &str, text: &str) {
        if !self.is_response_url(response_url) {
            tracing::warn!("a Slack response_url outside reviewer.slack.response_url_prefix: not called");
            return;
        }
        let body = json!({"response_type": "ephemeral", "replace_original": false, "text": text});
        if let Err(e) = self
            .http
            .post(response_url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
        {
            tracing::info!(error = %e, "telling a Slack user failed");
        }
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Slack's v0 signature over `body` sent at `ts`, checked in constant time
/// against `sig`, with the timestamp within [`TOLERANCE_SECS`] of `now`.
pub fn check_signature(
    secret: &[u8],
    ts: &str,
    body: &[u8],
    sig: &str,
    now: i64,
) -> Result<(), &'static str> {
    let t: i64 = ts.parse().map_err(|_| "a bad timestamp")?;
    if (now - t).abs() > TOLERANCE_SECS {
        return Err("a stale timestamp (more than five minutes away)");
    }
    let got = sig
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or("a bad signature")?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"v0:");
    mac.update(ts.as_bytes());
    mac.update(b":");
    mac.update(body);
    let want = mac.finalize().into_bytes();
    if constant_eq(&want, &got) {
        Ok(())
    } else {
        Err("a bad signature")
    }
}

/// What a button press says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Press {
    pub slack: proto::SlackUser,
    pub approve: bool,
    pub request_id: String,
    /// The digest of the statement the message showed.
    pub sha256: Vec<u8>,
    /// Where the button was pressed.
    pub channel: String,
    pub response_url: String,
}

/// Reads a `block_actions` payload (the form field `payload`).
pub fn parse(body: &[u8]) -> Result<Press, String> {
    let payload = url::form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
        .ok_or("no payload")?;
    let v: Value = serde_json::from_str(&payload).map_err(|e| format!("payload: {e}"))?;
    if v["type"] != "block_actions" {
        return Err(format!("not a button press ({})", v["type"]));
    }
    let action = &v["actions"][0];
    let approve = match action["action_id"].as_str() {
        Some(APPROVE) => true,
        Some(DENY) => false,
        other => return Err(format!("an unknown action {other:?}")),
    };
    let value = action["value"].as_str().ok_or("no value")?;
    let (request_id, sha) = value.split_once(':').ok_or("a bad value")?;
    let sha256 = hex::decode(sha).map_err(|_| "a bad digest")?;
    if sha256.len() != 32 {
        return Err("a button without the statement's digest".into());
    }
    // The workspace is the user's and the payload's, and they agree.
    let team = v["user"]["team_id"].as_str().unwrap_or_default();
    let outer = v["team"]["id"].as_str().unwrap_or_default();
    if !outer.is_empty() && !team.is_empty() && outer != team {
        return Err("the user's workspace is not the payload's".into());
    }
    let team = if team.is_empty() { outer } else { team };
    let user = v["user"]["id"].as_str().unwrap_or_default();
    if team.is_empty() || user.is_empty() {
        return Err("no Slack user".into());
    }
    Ok(Press {
        slack: proto::SlackUser {
            team_id: team.to_owned(),
            user_id: user.to_owned(),
            name: v["user"]["username"]
                .as_str()
                .or(v["user"]["name"].as_str())
                .unwrap_or_default()
                .to_owned(),
        },
        approve,
        request_id: request_id.to_owned(),
        sha256,
        channel: v["channel"]["id"]
            .as_str()
            .or(v["container"]["channel_id"].as_str())
            .unwrap_or_default()
            .to_owned(),
        response_url: v["response_url"].as_str().unwrap_or_default().to_owned(),
    })
}

/// What a slash command says (`/airlock ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub slack: proto::SlackUser,
    pub text: String,
    pub response_url: String,
}

/// Reads a slash command's form.
pub fn parse_command(body: &[u8]) -> Result<Command, String> {
    let field = |name: &str| {
        url::form_urlencoded::parse(body)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let (team, user) = (field("team_id"), field("user_id"));
    if team.is_empty() || user.is_empty() {
        return Err("no Slack user".into());
    }
    Ok(Command {
        slack: proto::SlackUser {
            team_id: team,
            user_id: user,
            name: field("user_name"),
        },
        text: field("text"),
        response_url: field("response_url"),
    })
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The reviewer service's own token, which relays what Slack users do.
fn relay_token(app: &crate::App) -> Option<Token> {
    let path = &app.config.reviewer.notifications.as_ref()?.token_file;
    match std::fs::read_to_string(path) {
        Ok(t) => Some(Token::new(t.trim().to_owned())),
        Err(e) => {
            tracing::warn!(error = %e, "a Slack request cannot be relayed: notifications.token_file unreadable");
            None
        }
    }
}

/// A Slack request as `parse` reads it, once Slack's signature checks (and
/// it is no replay) and it comes from the configured workspace; the
/// refusal otherwise.
async fn admitted<T>(
    app: &crate::App,
    headers: &HeaderMap,
    body: &[u8],
    parse: impl FnOnce(&[u8]) -> Result<T, String>,
    team: impl FnOnce(&T) -> &str,
) -> Result<T, Response> {
    let Some(slack) = app.slack.as_ref() else {
        return Err(StatusCode::NOT_FOUND.into_response());
    };
    if let Err(why) = slack.verify(headers, body, now()).await {
        tracing::warn!(why, "a Slack request refused");
        return Err((StatusCode::UNAUTHORIZED, why).into_response());
    }
    let request = parse(body).map_err(|why| (StatusCode::BAD_REQUEST, why).into_response())?;
    if team(&request) != slack.section.team {
        tracing::warn!("a Slack request from another workspace refused");
        return Err((StatusCode::FORBIDDEN, "not this workspace's Airlock").into_response());
    }
    Ok(request)
}

/// `POST /slack/interactions`.
pub async fn interactions(State(app): State<crate::State>, headers: HeaderMap, body: Bytes) -> Response {
    let press = match admitted(&app, &headers, &body, parse, |p: &Press| &p.slack.team_id).await {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    // Answered at once (Slack waits three seconds); the vote goes on.
    tokio::spawn(relay_vote(app.clone(), press));
    StatusCode::OK.into_response()
}

/// `POST /slack/commands`: `/airlock link <ticket>`, `/airlock status`.
pub async fn commands(State(app): State<crate::State>, headers: HeaderMap, body: Bytes) -> Response {
    let command = match admitted(&app, &headers, &body, parse_command, |c: &Command| {
        &c.slack.team_id
    })
    .await
    {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    tokio::spawn(relay_command(app.clone(), command));
    StatusCode::OK.into_response()
}

fn page(app: &crate::App) -> String {
    format!("{}/slack", app.public_url.trim_end_matches('/'))
}

fn when(t: Option<prost_types::Timestamp>) -> String {
    crate::ui::clock(crate::ui::ts(t.as_ref()))
}

async fn relay_command(app: crate::State, command: Command) {
    let Some(slack) = app.slack.as_ref() else { return };
    let text = command.text.trim();
    let (verb, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let answer = match (verb, relay_token(&app)) {
        (_, None) => "This reviewer service cannot relay to Airlock right now.".to_owned(),
        ("link", Some(token)) if !rest.trim().is_empty() => {
            match app
                .control
                .link_slack(&token, command.slack.clone(), rest.trim())
                .await
            {
                Ok(view) => format!(
                    "Linked: your Slack user's Approve and Deny buttons now cast the votes of {}, until {} \
                     (or until you end it at {}). If that is not you, end it there now.",
                    view.identity
                        .as_ref()
                        .map(|i| i.display_name.as_str())
                        .unwrap_or("?"),
                    when(view.expires_at),
                    page(&app)
                ),
                Err(e) => format!("Nothing was linked: {}", e.message),
            }
        }
        ("status", Some(token)) => match app.control.get_slack_link(&token, command.slack.clone()).await {
            Ok(view) if view.linked => format!(
                "Your Slack user votes as {} until {}. Manage it at {}.",
                view.identity
                    .as_ref()
                    .map(|i| i.display_name.as_str())
                    .unwrap_or("?"),
                when(view.expires_at),
                page(&app)
            ),
            Ok(_) => format!("Your Slack user is not linked. Link it at {}.", page(&app)),
            Err(e) => format!("Airlock did not answer: {}", e.message),
        },
        _ => format!(
            "`/airlock link <ticket>` links your Slack user to your Entra ID sign-in: get the ticket, and \
             the whole command, at {} (sign in there first). `/airlock status` says who your buttons vote as.",
            page(&app)
        ),
    };
    slack.tell(&command.response_url, &answer).await;
}

async fn relay_vote(app: crate::State, press: Press) {
    let Some(slack) = app.slack.as_ref() else { return };
    if press.channel != slack.section.channel {
        slack
            .tell(
                &press.response_url,
                "Nothing was voted: Airlock's buttons count only in its review channel.",
            )
            .await;
        return;
    }
    let Some(token) = relay_token(&app) else {
        slack
            .tell(
                &press.response_url,
                "This reviewer service cannot relay votes right now.",
            )
            .await;
        return;
    };
    let q = proto::DecideRequest {
        request_id: press.request_id.clone(),
        decision: if press.approve {
            proto::Decision::Approve
        } else {
            proto::Decision::Deny
        } as i32,
        reason: if press.approve {
            "approved in Slack"
        } else {
            "denied in Slack"
        }
        .into(),
        statement_sha256: press.sha256.clone(),
        slack: Some(press.slack.clone()),
        ..Default::default()
    };
    let text = match app.control.decide(&token, q).await {
        Ok(_) => format!(
            "Your {} of request {} is recorded.",
            if press.approve { "approval" } else { "denial" },
            press.request_id
        ),
        Err(e) if e.code == crate::error::Code::NotFound && e.message.contains("Slack user") => format!(
            "Nothing was voted: {}. Link your Slack user to your Entra ID sign-in: sign in at {} and follow \
             the steps there.",
            e.message,
            page(&app)
        ),
        Err(e) => format!("Nothing was voted: {}", e.message),
    };
    slack.tell(&press.response_url, &text).await;
}

/// `text` as a reviewer must read it: every character the database would
/// see and a reader would not (controls, bidirectional overrides,
/// zero-width) written out as `<U+XXXX>`; whether there were any.
fn visible(text: &str) -> (String, bool) {
    let mut out = String::with_capacity(text.len());
    let mut any = false;
    for c in text.chars() {
        // A carriage return ends a `--` comment for PostgreSQL, and Slack
        // may not show it as a line break: written out too.
        if crate::highlight::hidden(c) || c == '\r' {
            any = true;
            out.push_str(&format!("<U+{:04X}>", c as u32));
        } else {
            out.push(c);
        }
    }
    (out, any)
}

/// Preformatted blocks of plain text (never read as markup), cut only
/// after a line break (a cut elsewhere would show as one): `None` when a
/// line is longer than a block holds.
fn preformatted(text: &str) -> Option<Vec<Value>> {
    let block = |t: &str| {
        json!({"type": "rich_text", "elements": [{"type": "rich_text_preformatted",
            "elements": [{"type": "text", "text": t}]}]})
    };
    let mut blocks = Vec::new();
    let mut current = String::new();
    for line in text.split_inclusive('\n') {
        let n = line.chars().count();
        if n > CHUNK {
            return None;
        }
        if current.chars().count() + n > CHUNK {
            blocks.push(block(&current));
            current.clear();
        }
        current.push_str(line);
    }
    if !current.is_empty() {
        blocks.push(block(&current));
    }
    Some(blocks)
}

/// Why `sql` is not plain enough to approve from a plain-text message, if it
/// is not. Plain: ASCII, no backslash (escape strings, and `\'` where
/// standard_conforming_strings is off), no block comment (PostgreSQL nests
/// them), no dollar quoting (`$` only before a parameter's number), no
/// control character but line breaks and tabs. Anything else can read one
/// way and run another (`ʼ` for `'`, `∗/` for `*/`, a comment that goes on
/// further than it seems): it is reviewed on the request page, where it is
/// highlighted.
pub fn not_plain(sql: &str) -> Option<&'static str> {
    let bytes = sql.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let why = match b {
            0x80.. => "it holds characters outside ASCII",
            b'\\' => "it holds a backslash (an escape string)",
            b'/' if bytes.get(i + 1) == Some(&b'*') => "it holds a block comment",
            b'$' if !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => "it uses dollar quoting",
            b'\n' | b'\t' => continue,
            c if c.is_ascii_control() => "it holds control characters",
            _ => continue,
        };
        return Some(why);
    }
    None
}

/// A text parameter as an SQL literal: quoted, a quote doubled, every
/// character a reader could miss (line breaks included) written out.
fn literal(value: &str) -> String {
    let mut out = String::from("'");
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            c if c.is_control() || crate::highlight::hidden(c) => {
                out.push_str(&format!("<U+{:04X}>", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Plain text for a section.
fn plain(text: &str) -> Value {
    json!({"type": "section", "text": {"type": "plain_text", "emoji": false, "text": text}})
}

/// The message for `n`: the request, and while it is pending and the
/// message shows all of it, the buttons.
pub fn message(channel: &str, n: &Notification) -> Value {
    let r = &n.view;
    let asked = r.request.as_ref();
    let who = asked
        .and_then(|a| a.identity.as_ref())
        .map(|i| {
            if i.display_name.is_empty() {
                i.subject.clone()
            } else {
                i.display_name.clone()
            }
        })
        .unwrap_or_default();
    let (who, _) = visible(&who.chars().take(200).collect::<String>());
    let statement = asked.and_then(|a| a.statement.as_ref());
    let (sql, hidden) = visible(statement.map(|s| s.text.as_str()).unwrap_or_default());
    let mut params = String::new();
    // Why a parameter cannot be shown exactly as it will be bound, if one
    // cannot.
    let mut inexact = None;
    for (i, p) in statement
        .map(|s| s.parameters.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let text_format = p.format == proto::parameter::Format::Text as i32;
        let shown = match (p.is_null, text_format, std::str::from_utf8(&p.value)) {
            (true, _, _) => "NULL".to_owned(),
            // Text: the bytes bound, whole (the display may be cut).
            (false, true, Ok(text)) => literal(text),
            (false, true, Err(_)) => {
                inexact = Some("a text parameter is not UTF-8");
                continue;
            }
            // Binary: its reading depends on a type the server may have
            // named, which the message cannot vouch for.
            (false, false, _) => {
                inexact = Some("a parameter is bound in binary");
                continue;
            }
        };
        params.push_str(&format!("${} = {shown}\n", i + 1));
    }
    let text = statement.map(|s| s.text.as_str()).unwrap_or_default();
    let unplain = not_plain(text);
    let sha = statement.map(|s| hex::encode(&s.sha256)).unwrap_or_default();
    let pending = r.state == proto::RequestState::Pending as i32;
    let state = proto::RequestState::try_from(r.state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("REQUEST_STATE_")
                .to_lowercase()
        })
        .unwrap_or_default();
    let title = if pending {
        format!("{who} asks to run a held statement (request {})", r.request_id)
    } else {
        format!("Request {} by {who}: {state}", r.request_id)
    };
    let long = sql.chars().count() + params.chars().count() > MAX_SHOWN;
    let shown = match (inexact, long) {
        (None, false) => preformatted(&sql).zip(if params.is_empty() {
            Some(Vec::new())
        } else {
            preformatted(&params)
        }),
        _ => None,
    };
    let whole = shown.is_some();
    let mut blocks = vec![plain(&title)];
    if let Some((statement_blocks, param_blocks)) = shown {
        blocks.extend(statement_blocks);
        if !param_blocks.is_empty() {
            blocks.push(plain("Parameters:"));
            blocks.extend(param_blocks);
        }
    } else if let Some(why) = inexact {
        blocks.push(plain(&format!(
            "Not shown here: {why}, and this message shows only what it can show exactly. Review it on \
             the reviewer's page."
        )));
    } else {
        blocks.push(plain(&format!(
            "The statement and its parameters ({} characters, or a line too long) are too long to show \
             here in full: review it on the reviewer's page.",
            sql.chars().count() + params.chars().count()
        )));
    }
    if hidden {
        blocks.push(plain(
            "Warning: this statement holds characters a reader cannot see (shown as <U+XXXX>).",
        ));
    }
    if let Some(why) = unplain.filter(|_| whole) {
        blocks.push(plain(&format!(
            "No buttons: {why}, which can read one way here and run another. Review it on the reviewer's \
             page, where it is highlighted."
        )));
    }
    if let Some(asked) = asked {
        let rule = asked.verdict.clone().unwrap_or_default();
        let facts = [
            crate::notify::headline(n),
            format!("policy {} · rule {} · {}", rule.policy, rule.rule, rule.reason),
            crate::notify::impact_line(asked),
            crate::notify::reason_line(asked),
        ];
        let facts: Vec<String> = facts
            .iter()
            .filter(|f| !f.is_empty())
            .map(|f| visible(&f.chars().take(400).collect::<String>()).0)
            .collect();
        blocks.push(
            json!({"type": "context", "elements": [{"type": "plain_text", "emoji": false,
            "text": facts.join("\n")}]}),
        );
    }
    blocks.push(
        json!({"type": "context", "elements": [{"type": "plain_text", "emoji": false, "text": n.link}]}),
    );
    // Buttons only for what the message shows in full and plainly, bound
    // to its digest.
    if pending && whole && unplain.is_none() && sha.len() == 64 {
        let value = format!("{}:{sha}", r.request_id);
        blocks.push(json!({"type": "actions", "block_id": "airlock", "elements": [
            {"type": "button", "action_id": APPROVE, "style": "primary", "value": value,
             "text": {"type": "plain_text", "text": "Approve"}},
            {"type": "button", "action_id": DENY, "style": "danger", "value": value,
             "text": {"type": "plain_text", "text": "Deny"}},
        ]}));
    }
    json!({"channel": channel, "text": title, "blocks": blocks})
}

/// Posts a pending request's message and updates it when the request is
/// decided, through Slack's Web API with the app's bot token.
pub struct Poster {
    section: SlackSection,
    token: String,
    http: reqwest::Client,
    /// Where each request's message is: (channel, ts).
    posted: Mutex<HashMap<String, (String, String)>>,
}

impl std::fmt::Debug for Poster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poster").finish_non_exhaustive()
    }
}

impl Poster {
    pub fn new(section: SlackSection) -> anyhow::Result<Poster> {
        let token = std::env::var(&section.bot_token_env).map_err(|_| {
            anyhow::anyhow!(
                "reviewer.slack.bot_token_env names {}, which is not set",
                section.bot_token_env
            )
        })?;
        Ok(Poster {
            section,
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            posted: Mutex::new(HashMap::new()),
        })
    }

    /// Sends `n`: a new message for a request, the same one updated for its
    /// outcome. An error is for the caller to retry.
    pub async fn send(&self, n: &Notification) -> Result<(), String> {
        let known = self
            .posted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&n.view.request_id)
            .cloned();
        let mut body = message(&self.section.channel, n);
        let method = match (&n.occasion, &known) {
            (Occasion::Decided, Some((channel, ts))) => {
                body["channel"] = json!(channel);
                body["ts"] = json!(ts);
                "chat.update"
            }
            (Occasion::Requested, Some(_)) => return Ok(()),
            _ => "chat.postMessage",
        };
        let url = format!("{}/{method}", self.section.api_url.trim_end_matches('/'));
        let r = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| {
                format!(
                    "{method}: {}",
                    if e.is_timeout() {
                        "timed out"
                    } else {
                        "unreachable"
                    }
                )
            })?;
        let status = r.status();
        let answer: Value = serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or(Value::Null);
        if !status.is_success() || answer["ok"] != true {
            return Err(format!("{method}: {status} {}", answer["error"]));
        }
        if method == "chat.postMessage"
            && let (Some(channel), Some(ts)) = (answer["channel"].as_str(), answer["ts"].as_str())
        {
            let mut posted = self.posted.lock().unwrap_or_else(|p| p.into_inner());
            if posted.len() > 10_000 {
                posted.clear();
            }
            posted.insert(n.view.request_id.clone(), (channel.to_owned(), ts.to_owned()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], ts: i64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap();
        mac.update(format!("v0:{ts}:").as_bytes());
        mac.update(body);
        format!("v0={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn slacks_signature_is_checked_with_the_time() {
        let secret = b"8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"payload=%7B%7D";
        let now = 1_700_000_000;
        let sig = sign(secret, now, body);
        assert_eq!(check_signature(secret, &now.to_string(), body, &sig, now), Ok(()));
        assert!(check_signature(secret, &now.to_string(), b"payload=other", &sig, now).is_err());
        assert!(
            check_signature(
                b"another secret of some length",
                &now.to_string(),
                body,
                &sig,
                now
            )
            .is_err()
        );
        let old = now - 301;
        assert!(check_signature(secret, &old.to_string(), body, &sign(secret, old, body), now).is_err());
        assert!(check_signature(secret, "soon", body, &sig, now).is_err());
        assert!(check_signature(secret, &now.to_string(), body, "v1=00", now).is_err());
    }

    #[test]
    fn a_press_names_its_user_request_digest_and_channel() {
        let sha = "ab".repeat(32);
        let form = |payload: Value| {
            format!(
                "payload={}",
                url::form_urlencoded::byte_serialize(payload.to_string().as_bytes()).collect::<String>()
            )
        };
        let payload = json!({"type": "block_actions", "user": {"id": "U1", "username": "alice", "team_id": "T1"},
            "team": {"id": "T1"}, "channel": {"id": "C1"},
            "actions": [{"action_id": APPROVE, "value": format!("01REQ:{sha}")}], "response_url": "https://hooks.slack.com/x"});
        let p = parse(form(payload.clone()).as_bytes()).unwrap();
        assert_eq!(
            (p.slack.team_id.as_str(), p.slack.user_id.as_str(), p.approve),
            ("T1", "U1", true)
        );
        assert_eq!(
            (p.request_id.as_str(), p.sha256.len(), p.channel.as_str()),
            ("01REQ", 32, "C1")
        );
        // No digest, a short one, two workspaces: refused.
        let mut short = payload.clone();
        short["actions"][0]["value"] = json!("01REQ:");
        assert!(parse(form(short).as_bytes()).is_err());
        let mut short = payload.clone();
        short["actions"][0]["value"] = json!("01REQ:abcd");
        assert!(parse(form(short).as_bytes()).is_err());
        let mut two = payload;
        two["team"]["id"] = json!("T2");
        assert!(parse(form(two).as_bytes()).is_err());
        assert!(parse(b"payload=%7B%22type%22%3A%22view_submission%22%7D").is_err());
        assert!(parse(b"nothing").is_err());
    }

    fn held(text: &str, params: Vec<proto::Parameter>) -> Notification {
        Notification {
            occasion: Occasion::Requested,
            view: proto::RequestView {
                request_id: "01REQ".into(),
                state: proto::RequestState::Pending as i32,
                request: Some(proto::ApprovalRequested {
                    statement: Some(proto::Statement {
                        text: text.into(),
                        parameters: params,
                        sha256: vec![7; 32],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            link: "https://review.example/requests/01REQ".into(),
            sequence: 1,
        }
    }

    fn shown(m: &Value) -> String {
        m["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "rich_text")
            .map(|b| {
                b["elements"][0]["elements"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    fn has_buttons(m: &Value) -> bool {
        m["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["type"] == "actions")
    }

    #[test]
    fn a_message_shows_everything_its_button_approves_or_has_no_button() {
        // Long, with markup and mentions: all of it, as plain text, cut
        // only after line breaks.
        let line = format!("  OR note = '{}'\n", "y".repeat(90));
        let sql = format!(
            "DELETE FROM t WHERE note = '<!channel> *x* ```' -- <@U1>\n{}",
            line.repeat(80)
        );
        let m = message("C1", &held(&sql, Vec::new()));
        assert!(has_buttons(&m));
        assert_eq!(shown(&m), sql);
        let texts: Vec<String> = m["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "rich_text")
            .map(|b| {
                b["elements"][0]["elements"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert!(texts.len() > 1 && texts.iter().all(|t| t.ends_with('\n')));
        // One line longer than a block: no buttons (a cut would look like
        // a line break).
        let one = format!("DELETE FROM t -- {}\nAND x = 1", "y".repeat(CHUNK));
        assert!(!has_buttons(&message("C1", &held(&one, Vec::new()))));
        // Text parameters are shown as literals, as bound.
        let p = proto::Parameter {
            value: b"7\n$2 = 100 'x'".to_vec(),
            display: "7…".into(),
            ..Default::default()
        };
        let null = proto::Parameter {
            is_null: true,
            ..Default::default()
        };
        let m = message(
            "C1",
            &held("DELETE FROM t WHERE id = $1 OR x = $2", vec![p, null]),
        );
        assert!(has_buttons(&m));
        assert!(
            shown(&m).contains("$1 = '7<U+000A>$2 = 100 ''x'''\n$2 = NULL"),
            "{m}"
        );
        // A binary value, or text that is not UTF-8: not shown, no buttons.
        let binary = proto::Parameter {
            format: proto::parameter::Format::Binary as i32,
            value: vec![0x3f, 0x80, 0, 0],
            display: "1065353216".into(),
            ..Default::default()
        };
        let m = message("C1", &held("DELETE FROM t WHERE b > $1", vec![binary]));
        assert!(!has_buttons(&m) && m.to_string().contains("binary"), "{m}");
        let bad = proto::Parameter {
            value: vec![0xff, 0xfe],
            ..Default::default()
        };
        assert!(!has_buttons(&message(
            "C1",
            &held("DELETE FROM t WHERE b = $1", vec![bad])
        )));
        // What can read one way and run another: shown, but no buttons.
        for (sql, why) in [
            ("UPDATE t SET a = 1 -- ok\rDELETE FROM t", "control characters"),
            ("SELECT * FROM t \u{2212}\u{2212} ; DROP TABLE x", "outside ASCII"),
            (
                "DELETE FROM u WHERE n <> 'bob\u{FF07} AND t = 7 AND n <> \u{FF07}x'",
                "outside ASCII",
            ),
            (
                "DELETE FROM o WHERE id > 0 /* k: /* */ AND t = 7 -- */",
                "block comment",
            ),
            ("DELETE FROM o WHERE n <> E'\\'' --' AND t = 7", "backslash"),
            ("DELETE FROM o WHERE n <> $a$ x $a$", "dollar quoting"),
        ] {
            let m = message("C1", &held(sql, Vec::new()));
            assert!(!has_buttons(&m), "{sql}");
            assert!(m.to_string().contains(why), "{sql}: {m}");
        }
        let m = message("C1", &held("UPDATE t SET a = 1 -- ok\rDELETE FROM t", Vec::new()));
        assert!(shown(&m).contains("-- ok<U+000D>DELETE"), "{m}");
        // Too long to show: no buttons.
        let m = message("C1", &held(&"z".repeat(MAX_SHOWN + 1), Vec::new()));
        assert!(!has_buttons(&m));
        assert!(shown(&m).is_empty());
        // Invisible characters are written out, and said.
        let m = message("C1", &held("DELETE FROM t -- \u{202E}x\u{200B}", Vec::new()));
        assert!(shown(&m).contains("<U+202E>x<U+200B>"), "{m}");
        assert!(m.to_string().contains("cannot see"));
        // Without a digest, no buttons.
        let mut n = held("DELETE FROM t", Vec::new());
        n.view
            .request
            .as_mut()
            .unwrap()
            .statement
            .as_mut()
            .unwrap()
            .sha256
            .clear();
        assert!(!has_buttons(&message("C1", &n)));
    }

    #[test]
    fn a_command_names_its_user_and_text() {
        let c = parse_command(b"team_id=T1&user_id=U1&user_name=al&text=link+airlock-link-x&response_url=https%3A%2F%2Fhooks.slack.com%2Fc").unwrap();
        assert_eq!(
            (
                c.slack.team_id.as_str(),
                c.slack.user_id.as_str(),
                c.text.as_str()
            ),
            ("T1", "U1", "link airlock-link-x")
        );
        assert!(parse_command(b"text=link").is_err());
    }
}
