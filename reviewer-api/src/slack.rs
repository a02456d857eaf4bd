//! Slack approvals bound to Entra ID (`reviewer.slack`).
//!
//! Messages for held requests carry Approve and Deny buttons (posted with
//! the Slack app's bot token, and updated in place once the request is
//! decided, wherever it was decided). A button press reaches
//! `POST /slack/interactions`, which is believed only when Slack's
//! signature checks: HMAC-SHA256 with the app's signing secret over
//! `v0:<timestamp>:<body>`, a timestamp within five minutes, and never the
//! same signature twice. Nothing is read from an unverified payload.
//!
//! The vote is not this service's: it relays it to the control plane with
//! its own identity (`notifications.token_file`, listed in
//! `control.slack.relays`), naming the Slack user, and the control plane
//! casts it as the Entra identity that Slack user linked themselves to,
//! with the same group, self-approval and quorum checks as any vote. A
//! Slack user who is not linked gets a link (only they see it): signed
//! here, good for ten minutes, it opens a reviewer page where they sign in
//! with Entra ID and confirm; the link is an event in the log, and they can
//! end it on the same page.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use airlock_proto::v1 as proto;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::auth::Token;
use crate::notify::{Notification, Occasion};

/// How far a request's timestamp may be from now.
pub const TOLERANCE_SECS: i64 = 300;
/// How long a link code is good for.
pub const LINK_CODE_SECS: i64 = 600;
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
    /// The channel held requests are posted to (its id).
    pub channel: String,
    /// Slack's Web API (a stand-in's in tests).
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// Where Slack's `response_url`s point: any other is never called.
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
    /// Signatures already taken, with their timestamps.
    seen: Mutex<HashMap<String, i64>>,
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
    pub fn new(section: SlackSection) -> anyhow::Result<Slack> {
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
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        })
    }

    /// Checks Slack's signature of `body` and refuses a replay.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), &'static str> {
        let ts = headers
            .get("x-slack-request-timestamp")
            .and_then(|v| v.to_str().ok())
            .ok_or("no X-Slack-Request-Timestamp")?;
        let sig = headers
            .get("x-slack-signature")
            .and_then(|v| v.to_str().ok())
            .ok_or("no X-Slack-Signature")?;
        check_signature(&self.secret, ts, body, sig, now)?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, t| now - *t <= 2 * TOLERANCE_SECS);
        if seen.len() > 100_000 {
            return Err("too many interactions at once");
        }
        if seen.insert(sig.to_owned(), ts.parse().unwrap_or(now)).is_some() {
            return Err("this interaction was already taken (a replay)");
        }
        Ok(())
    }

    /// A link code for Slack user `user` of `team` (`name` as Slack shows
    /// them), good until `now + LINK_CODE_SECS`.
    pub fn link_code(&self, team: &str, user: &str, name: &str, now: i64) -> String {
        let payload = json!({"t": team, "u": user, "n": name, "e": now + LINK_CODE_SECS}).to_string();
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload);
        format!(
            "{body}.{}",
            hex::encode(self.mac(b"airlock-slack-link:", body.as_bytes()))
        )
    }

    /// The Slack user a link code names, if it is ours and not expired.
    pub fn check_code(&self, code: &str, now: i64) -> Result<proto::SlackUser, &'static str> {
        let (body, mac) = code.split_once('.').ok_or("not a link code")?;
        let want = self.mac(b"airlock-slack-link:", body.as_bytes());
        let got = hex::decode(mac).map_err(|_| "not a link code")?;
        if !constant_eq(&want, &got) {
            return Err("this link was not made by this reviewer service");
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| "not a link code")?;
        let v: Value = serde_json::from_slice(&raw).map_err(|_| "not a link code")?;
        if v["e"].as_i64().is_none_or(|e| now > e) {
            return Err("this link has expired: press the button in Slack again for a new one");
        }
        Ok(proto::SlackUser {
            team_id: v["t"].as_str().unwrap_or_default().to_owned(),
            user_id: v["u"].as_str().unwrap_or_default().to_owned(),
            name: v["n"].as_str().unwrap_or_default().to_owned(),
        })
    }

    fn mac(&self, context: &[u8], body: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(context);
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }

    /// Tells the Slack user something only they see, through the
    /// interaction's `response_url` (only one under the configured prefix).
    pub async fn tell(&self, response_url: &str, text: &str) {
        if !response_url.starts_with(&self.section.response_url_prefix) {
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
    let team = v["user"]["team_id"]
        .as_str()
        .or(v["team"]["id"].as_str())
        .unwrap_or_default();
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
        sha256: hex::decode(sha).map_err(|_| "a bad digest")?,
        response_url: v["response_url"].as_str().unwrap_or_default().to_owned(),
    })
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `POST /slack/interactions`.
pub async fn interactions(State(app): State<crate::State>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(slack) = app.slack.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Err(why) = slack.verify(&headers, &body, now()) {
        tracing::warn!(why, "a Slack interaction refused");
        return (StatusCode::UNAUTHORIZED, why).into_response();
    }
    let press = match parse(&body) {
        Ok(p) => p,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    // Answered at once (Slack waits three seconds); the vote goes on.
    let app = app.clone();
    tokio::spawn(async move { relay(app, press).await });
    StatusCode::OK.into_response()
}

async fn relay(app: crate::State, press: Press) {
    let Some(slack) = app.slack.as_ref() else { return };
    let token = match app
        .config
        .reviewer
        .notifications
        .as_ref()
        .map(|n| std::fs::read_to_string(&n.token_file))
    {
        Some(Ok(t)) => Token::new(t.trim().to_owned()),
        _ => {
            tracing::warn!("a Slack vote cannot be relayed: no notifications.token_file");
            slack
                .tell(
                    &press.response_url,
                    "This reviewer service cannot relay votes right now.",
                )
                .await;
            return;
        }
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
        Err(e) if e.code == crate::error::Code::NotFound && e.message.contains("Slack user") => {
            let code = slack.link_code(
                &press.slack.team_id,
                &press.slack.user_id,
                &press.slack.name,
                now(),
            );
            format!(
                "Nothing was voted: {}. Link your Slack user to your Entra ID sign-in once (good for ten \
                 minutes, only you see this): {}/slack/link?code={code}",
                e.message,
                app.public_url.trim_end_matches('/')
            )
        }
        Err(e) => format!("Nothing was voted: {}", e.message),
    };
    slack.tell(&press.response_url, &text).await;
}

/// Slack mrkdwn: `&`, `<` and `>` are control characters there.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The message for `n`: the request, and while it is pending, the buttons.
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
    let sql = asked
        .and_then(|a| a.statement.as_ref())
        .map(|s| s.text.clone())
        .unwrap_or_default();
    let sql: String = sql.chars().take(2500).collect();
    let sha = asked
        .and_then(|a| a.statement.as_ref())
        .map(|s| hex::encode(&s.sha256))
        .unwrap_or_default();
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
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*", escape(&title))}}),
        json!({"type": "section", "text": {"type": "mrkdwn",
            "text": format!("```{}```", escape(&sql).replace("```", "`\u{200b}``"))}}),
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": escape(&n.link)}]}),
    ];
    if pending {
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
    fn a_press_names_its_user_request_and_digest() {
        let payload = json!({"type": "block_actions", "user": {"id": "U1", "username": "alice", "team_id": "T1"},
            "actions": [{"action_id": APPROVE, "value": "01REQ:abcd"}], "response_url": "https://hooks.slack.com/x"});
        let body = format!(
            "payload={}",
            url::form_urlencoded::byte_serialize(payload.to_string().as_bytes()).collect::<String>()
        );
        let p = parse(body.as_bytes()).unwrap();
        assert_eq!(
            (p.slack.team_id.as_str(), p.slack.user_id.as_str(), p.approve),
            ("T1", "U1", true)
        );
        assert_eq!(
            (p.request_id.as_str(), p.sha256.as_slice()),
            ("01REQ", &[0xab, 0xcd][..])
        );
        assert!(parse(b"payload=%7B%22type%22%3A%22view_submission%22%7D").is_err());
        assert!(parse(b"nothing").is_err());
    }
}
