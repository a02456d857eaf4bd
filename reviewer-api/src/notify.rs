//! Notifications on new requests and on outcomes: Slack incoming webhooks,
//! Microsoft Teams Adaptive Cards, and a generic JSON webhook signed with
//! HMAC-SHA256.
//!
//! A watcher task follows the control plane's `Watch` (with the token in
//! `notifications.token_file`) and puts each notification on every
//! webhook's own bounded queue; one worker per webhook delivers with
//! retries and exponential backoff. Nothing waits for a webhook: votes and
//! proxies never pass through here, the watcher never blocks on a queue
//! (when one is full its oldest notification is dropped and counted), and a
//! slow or dead endpoint only delays its own queue. With `reviewer.state:
//! nats`, one replica of a fleet sends: the holder of a lease in NATS KV.
//!
//! Generic webhook signature: headers `X-Airlock-Timestamp` (Unix seconds)
//! and `X-Airlock-Signature: v1=<hex>`, where `<hex>` is
//! HMAC-SHA256(key, "<timestamp>.<body>") over the exact body bytes. A
//! receiver recomputes it, compares in constant time, and refuses old
//! timestamps (say, more than five minutes) to stop replays.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_proto::v1 as proto;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::auth::{self, Token};
use crate::config::{NotificationsSection, NotifyOn, WebhookKind, WebhookSection};
use crate::control::ControlClient;
use crate::json;
use crate::metrics::Metrics;
use crate::shared::{LEASE_RENEW, Shared};

/// What happened, for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Occasion {
    Requested,
    Decided,
}

/// One notification, before it is shaped for a particular webhook.
#[derive(Debug, Clone)]
pub struct Notification {
    pub occasion: Occasion,
    pub view: proto::RequestView,
    /// Link to the request page.
    pub link: String,
    pub sequence: u64,
}

/// The signature header value for `body` sent at `timestamp`.
pub fn sign(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn who(i: Option<&proto::Identity>) -> String {
    match i {
        Some(i) if !i.display_name.is_empty() => i.display_name.clone(),
        Some(i) => i.subject.clone(),
        None => "unknown".into(),
    }
}

pub(crate) fn headline(n: &Notification) -> String {
    let asked = n.view.request.clone().unwrap_or_default();
    let connection = asked.connection.as_ref().map(|c| c.name.as_str()).unwrap_or("?");
    match n.occasion {
        Occasion::Requested => format!(
            "{} wants to run a statement on {} that needs {} approval(s)",
            who(asked.identity.as_ref()),
            connection,
            asked.approvals_required
        ),
        Occasion::Decided if n.view.votes.iter().any(|v| v.break_glass) => {
            let reason = n
                .view
                .votes
                .iter()
                .find(|v| v.break_glass)
                .map(|v| v.reason.clone())
                .unwrap_or_default();
            format!(
                "BREAK-GLASS: {} approved their own statement on {} ({}): {}",
                who(asked.identity.as_ref()),
                connection,
                json::state_name(n.view.state),
                reason
            )
        }
        Occasion::Decided => format!(
            "Request by {} on {}: {}{}",
            who(asked.identity.as_ref()),
            connection,
            json::state_name(n.view.state),
            if n.view.outcome_reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", n.view.outcome_reason)
            }
        ),
    }
}

fn statement_text(n: &Notification) -> String {
    n.view
        .request
        .as_ref()
        .and_then(|r| r.statement.as_ref())
        .map(|s| s.text.clone())
        .unwrap_or_default()
}

/// What the statement would touch, in one line: the dry run's counts, else
/// the estimate, else why there is neither.
pub(crate) fn impact_line(asked: &proto::ApprovalRequested) -> String {
    let rows = |tables: &[proto::TableRows]| {
        tables
            .iter()
            .map(|t| format!("{} rows of {}", t.rows, t.table))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let impact = asked.impact.clone().unwrap_or_default();
    match (impact.dry_run, impact.estimate) {
        (Some(d), _) if d.unavailable.is_empty() => format!("dry run changed: {}", rows(&d.tables)),
        (_, Some(e)) if e.unavailable.is_empty() && !e.tables.is_empty() => {
            format!("estimate: about {}", rows(&e.tables))
        }
        (_, Some(e)) if !e.unavailable.is_empty() => e.unavailable,
        _ => "no estimate".into(),
    }
}

/// The agent's reason, labelled as its own claim; empty when none.
pub(crate) fn reason_line(asked: &proto::ApprovalRequested) -> String {
    if asked.agent_reason.is_empty() {
        String::new()
    } else {
        format!("agent says (unverified): {}", clip(&asked.agent_reason, 500))
    }
}

/// Teams renders Markdown in card text: the agent's words must not become
/// links or formatting.
fn markdown_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(
            c,
            '\\' | '[' | ']' | '(' | ')' | '*' | '_' | '`' | '#' | '<' | '>' | '!' | '~'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Slack mrkdwn: `&`, `<` and `>` are control characters there.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(max).collect();
        s.push('…');
        s
    }
}

/// A Slack incoming-webhook message.
pub fn slack_payload(n: &Notification) -> Value {
    let title = headline(n);
    // A code block cannot be closed early by the statement's own backticks.
    let sql = slack_escape(&clip(&statement_text(n), 2500)).replace("```", "`\u{200b}``");
    let asked = n.view.request.clone().unwrap_or_default();
    let rule = asked.verdict.clone().unwrap_or_default();
    json!({
        "text": format!("{} — {}", slack_escape(&title), n.link),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*", slack_escape(&title))}},
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("```{sql}```")}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": slack_escape(&format!(
                    "request {} · policy {} · rule {} · {}", n.view.request_id, rule.policy, rule.rule, rule.reason))},
                {"type": "mrkdwn", "text": slack_escape(&[impact_line(&asked), reason_line(&asked)]
                    .iter().filter(|l| !l.is_empty()).cloned().collect::<Vec<_>>().join(" · "))}
            ]},
            {"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Open in Airlock"},
                "url": n.link}]}
        ]
    })
}

/// A Microsoft Teams message with an Adaptive Card (as Teams incoming
/// webhooks and Workflows accept).
pub fn teams_payload(n: &Notification) -> Value {
    let asked = n.view.request.clone().unwrap_or_default();
    let rule = asked.verdict.clone().unwrap_or_default();
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true, "text": headline(n)},
                    {"type": "TextBlock", "fontType": "Monospace", "wrap": true, "text": clip(&statement_text(n), 2500)},
                    {"type": "FactSet", "facts": [
                        {"title": "Request", "value": n.view.request_id},
                        {"title": "State", "value": json::state_name(n.view.state)},
                        {"title": "Identity", "value": who(asked.identity.as_ref())},
                        {"title": "Connection", "value": asked.connection.as_ref().map(|c| c.name.clone()).unwrap_or_default()},
                        {"title": "Rule", "value": format!("{} {}", rule.policy, rule.rule)},
                        {"title": "Reason", "value": rule.reason},
                        {"title": "Impact", "value": impact_line(&asked)},
                        {"title": "Agent's reason (unverified)", "value": markdown_escape(&clip(&asked.agent_reason, 500))},
                        {"title": "Approvals", "value": format!("{} of {}", json::approvals_given(&n.view), asked.approvals_required)}
                    ]}
                ],
                "actions": [{"type": "Action.OpenUrl", "title": "Open in Airlock", "url": n.link}]
            }
        }]
    })
}

/// The generic webhook's JSON: the whole request as the REST API shows it.
pub fn generic_payload(n: &Notification) -> Value {
    json!({
        "type": match n.occasion { Occasion::Requested => "request.created", Occasion::Decided => "request.decided" },
        "sequence": n.sequence,
        "url": n.link,
        "summary": headline(n),
        "request": json::request(&n.view),
    })
}

/// One webhook's queue and its delivery settings.
#[derive(Debug)]
struct Queue {
    items: Mutex<VecDeque<Notification>>,
    ready: Notify,
    capacity: usize,
}

impl Queue {
    /// Never blocks: a full queue loses its oldest item.
    fn push(&self, n: Notification, metrics: &Metrics) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if items.len() >= self.capacity {
            items.pop_front();
            metrics.webhook_dropped.inc();
        }
        items.push_back(n);
        drop(items);
        self.ready.notify_one();
    }

    async fn pop(&self) -> Notification {
        loop {
            let next = self.items.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
            if let Some(n) = next {
                return n;
            }
            self.ready.notified().await;
        }
    }
}

/// The notifier: the queues, one per webhook.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    hooks: Vec<(WebhookSection, Arc<Queue>)>,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    /// Queues `n` for every webhook that wants it; returns at once.
    pub fn dispatch(&self, n: &Notification) {
        for (hook, queue) in &self.hooks {
            let wanted = match n.occasion {
                Occasion::Requested => hook.on.contains(&NotifyOn::Requested),
                Occasion::Decided => hook.on.contains(&NotifyOn::Decided),
            };
            if wanted {
                self.metrics.notifications_queued.inc();
                queue.push(n.clone(), &self.metrics);
            }
        }
    }
}

/// Starts one delivery worker per webhook; returns the dispatcher.
pub fn start_workers(section: &NotificationsSection, metrics: Arc<Metrics>) -> anyhow::Result<Dispatcher> {
    let http = reqwest::Client::builder()
        .timeout(section.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut hooks = Vec::new();
    for hook in &section.webhooks {
        let key = match (&hook.kind, &hook.secret_env) {
            (WebhookKind::Generic, Some(var)) => Some(
                std::env::var(var)
                    .map_err(|_| anyhow::anyhow!("webhook secret_env names {var}, which is not set"))?
                    .into_bytes(),
            ),
            (WebhookKind::Generic, None) => anyhow::bail!("a generic webhook needs secret_env"),
            _ => None,
        };
        let queue = Arc::new(Queue {
            items: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            capacity: section.queue,
        });
        tokio::spawn(deliver_forever(
            hook.clone(),
            key,
            queue.clone(),
            http.clone(),
            section.attempts,
            section.backoff,
            metrics.clone(),
        ));
        hooks.push((hook.clone(), queue));
    }
    Ok(Dispatcher { hooks, metrics })
}

/// Where a webhook's URL points, without its path or query (which often
/// hold the webhook's secret): safe to log.
fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The Slack app's worker: posts each request with its buttons and
/// updates it when decided, with retries.
async fn post_forever(
    poster: Arc<crate::slack::Poster>,
    queue: Arc<Queue>,
    attempts: u32,
    backoff: Duration,
) {
    loop {
        let n = queue.pop().await;
        let mut delay = backoff;
        for attempt in 1..=attempts {
            match poster.send(&n).await {
                Ok(()) => break,
                Err(why) if attempt < attempts => {
                    tracing::info!(request = %n.view.request_id, attempt, %why, "Slack post failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(300));
                }
                Err(why) => tracing::warn!(request = %n.view.request_id, %why, "Slack post given up"),
            }
        }
    }
}

async fn deliver_forever(
    hook: WebhookSection,
    key: Option<Vec<u8>>,
    queue: Arc<Queue>,
    http: reqwest::Client,
    attempts: u32,
    backoff: Duration,
    metrics: Arc<Metrics>,
) {
    let host = host_of(&hook.url);
    loop {
        let n = queue.pop().await;
        let payload = match hook.kind {
            WebhookKind::Slack => slack_payload(&n),
            WebhookKind::Teams => teams_payload(&n),
            WebhookKind::Generic => generic_payload(&n),
        };
        let body = payload.to_string().into_bytes();
        let mut delay = backoff;
        for attempt in 1..=attempts {
            let mut request = http
                .post(&hook.url)
                .header("content-type", "application/json")
                .header(
                    "user-agent",
                    concat!("airlock-reviewer/", env!("CARGO_PKG_VERSION")),
                );
            if let Some(key) = &key {
                let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
                request = request
                    .header("x-airlock-timestamp", timestamp.to_string())
                    .header("x-airlock-signature", sign(key, timestamp, &body))
                    .header(
                        "x-airlock-event",
                        if n.occasion == Occasion::Requested {
                            "request.created"
                        } else {
                            "request.decided"
                        },
                    );
            }
            let started = std::time::Instant::now();
            let outcome = request.body(body.clone()).send().await;
            metrics.webhook_seconds.observe(started.elapsed().as_secs_f64());
            let failure = match outcome {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("answered {}", r.status())),
                Err(e) => Some(if e.is_timeout() {
                    "timed out".to_owned()
                } else {
                    "unreachable".to_owned()
                }),
            };
            match failure {
                None => {
                    metrics.webhook_delivered.inc();
                    break;
                }
                Some(why) if attempt < attempts => {
                    metrics.webhook_retried.inc();
                    tracing::info!(webhook = %host, request = %n.view.request_id, attempt, %why, "webhook delivery failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(300));
                }
                Some(why) => {
                    metrics.webhook_failed.inc();
                    tracing::warn!(webhook = %host, request = %n.view.request_id, attempts, %why, "webhook delivery gave up");
                }
            }
        }
    }
}

/// What to notify for one watch event, if anything. `seen` remembers what
/// was already sent, so a resumed watch (which replays current views) does
/// not notify twice.
fn occasion_of(item: &proto::WatchEvent, seen: &mut HashSet<(String, bool)>) -> Option<Occasion> {
    let view = item.request.as_ref()?;
    let pending = view.state == proto::RequestState::Pending as i32;
    let occasion = match json::change_kind(item.event.as_ref()) {
        "requested" => Occasion::Requested,
        "granted" | "denied" | "expired" | "cancelled" => Occasion::Decided,
        "updated" if pending => Occasion::Requested,
        "updated" => Occasion::Decided,
        _ => return None,
    };
    if seen.len() > 100_000 {
        seen.clear();
    }
    seen.insert((view.request_id.clone(), occasion == Occasion::Decided))
        .then_some(occasion)
}

/// Starts the workers and the watcher. With `shared` (`reviewer.state:
/// nats`), only the replica holding the notifier lease watches and sends;
/// the others wait to take it over (see [`lead`]).
pub fn spawn(
    section: NotificationsSection,
    slack: Option<crate::slack::SlackSection>,
    control: ControlClient,
    public_url: String,
    metrics: Arc<Metrics>,
    shared: Option<Arc<Shared>>,
) -> anyhow::Result<Dispatcher> {
    let mut dispatcher = start_workers(&section, metrics.clone())?;
    if let Some(slack) = slack {
        let poster = Arc::new(crate::slack::Poster::new(slack)?);
        let queue = Arc::new(Queue {
            items: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            capacity: section.queue,
        });
        tokio::spawn(post_forever(
            poster,
            queue.clone(),
            section.attempts,
            section.backoff,
        ));
        let hook = WebhookSection {
            kind: WebhookKind::Slack,
            url: String::new(),
            secret_env: None,
            on: vec![NotifyOn::Requested, NotifyOn::Decided],
        };
        dispatcher.hooks.push((hook, queue));
    }
    let watcher = Watcher {
        section,
        control,
        public_url,
        metrics,
        dispatcher: dispatcher.clone(),
    };
    tokio::spawn(async move {
        match shared {
            Some(shared) => lead(watcher, shared).await,
            None => watcher.watch(Arc::new(AtomicU64::new(0))).await,
        }
    });
    Ok(dispatcher)
}

/// One notifier: watches the control plane and hands each occasion to the
/// workers.
struct Watcher {
    section: NotificationsSection,
    control: ControlClient,
    public_url: String,
    metrics: Arc<Metrics>,
    dispatcher: Dispatcher,
}

/// A lease holder whose watch has not been connected for this long gives
/// the lease up.
const GIVE_UP_UNWATCHED: Duration = Duration::from_secs(30);

/// Notifications sent once per fleet: a replica sends only while it holds
/// the lease in NATS KV, renewing it every [`LEASE_RENEW`]. A holder that
/// dies stops renewing, the lease lapses [`crate::shared::LEASE_TTL`] later, and another
/// replica takes it within [`LEASE_RENEW`] after that. A holder that cannot
/// renew (NATS unreachable, or the lease lapsed and was taken) stops
/// sending within about two renewal periods, before another can take the
/// lease; one whose own watch has failed for [`GIVE_UP_UNWATCHED`] gives
/// the lease up. The holder stores how far it has queued with every
/// renewal, and the next one resumes from there: an occasion queued in the
/// last renewal period before a crash is sent again, and deliveries still
/// queued (or being retried) when the holder crashes are lost.
async fn lead(watcher: Watcher, shared: Arc<Shared>) {
    let holder = format!("{}-{}", std::process::id(), auth::random_token());
    loop {
        let Some(mut revision) = shared.take_lease(&holder).await else {
            tokio::time::sleep(LEASE_RENEW).await;
            continue;
        };
        let after = match shared.cursor().await {
            Ok(after) => after,
            Err(e) => {
                tracing::warn!(error = %e, "notifier: cannot read where notifications stopped");
                shared.release_lease(revision).await;
                tokio::time::sleep(LEASE_RENEW).await;
                continue;
            }
        };
        tracing::info!(
            after,
            "this replica holds the notifier lease: it sends notifications"
        );
        watcher.metrics.notifier_leader.set(1);
        let cursor = Arc::new(AtomicU64::new(after));
        // Every step is bounded, so a holder that cannot renew notices it
        // within about two renewal periods of its last renewal, well before
        // the lease lapses and another replica may take it.
        let renewing = async {
            let mut unwatched = Duration::ZERO;
            loop {
                tokio::time::sleep(LEASE_RENEW).await;
                let renewed = tokio::time::timeout(LEASE_RENEW, shared.renew_lease(&holder, revision)).await;
                match renewed {
                    Ok(Some(next)) => revision = next,
                    Ok(None) | Err(_) => return "it could not renew the lease",
                }
                let stored =
                    tokio::time::timeout(LEASE_RENEW, shared.set_cursor(cursor.load(Ordering::Acquire)))
                        .await;
                if !matches!(stored, Ok(Ok(()))) {
                    tracing::warn!("notifier: cannot store how far notifications got");
                }
                // A holder whose own watch does not work (no token, control
                // plane unreachable from here) hands the lease on.
                unwatched = if watcher.metrics.notifier_connected.get() == 1 {
                    Duration::ZERO
                } else {
                    unwatched + LEASE_RENEW
                };
                if unwatched >= GIVE_UP_UNWATCHED {
                    shared.release_lease(revision).await;
                    return "its watch on the control plane has not worked for a while";
                }
            }
        };
        let why = tokio::select! {
            () = watcher.watch(cursor.clone()) => "its watch ended",
            why = renewing => why,
        };
        watcher.metrics.notifier_leader.set(0);
        watcher.metrics.notifier_connected.set(0);
        tracing::warn!(
            why,
            "this replica no longer holds the notifier lease: another one sends notifications"
        );
        // Let another replica take it before trying again.
        tokio::time::sleep(LEASE_RENEW * 2).await;
    }
}

impl Watcher {
    /// Watches from `cursor` for ever, moving it past every event seen.
    async fn watch(&self, cursor: Arc<AtomicU64>) {
        let (section, control, metrics, d) = (&self.section, &self.control, &self.metrics, &self.dispatcher);
        let mut seen = HashSet::new();
        let mut pause = Duration::from_secs(1);
        loop {
            let token = match tokio::fs::read_to_string(&section.token_file).await {
                Ok(t) if !t.trim().is_empty() => Token::new(t.trim().to_owned()),
                Ok(_) | Err(_) => {
                    tracing::warn!(file = %section.token_file.display(), "notifier: no token to watch with");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(60));
                    continue;
                }
            };
            let after = cursor.load(Ordering::Acquire);
            match control.watch(&token, after).await {
                Ok(mut stream) => {
                    metrics.notifier_connected.set(1);
                    tracing::info!(after, "notifier watching the control plane");
                    pause = Duration::from_secs(1);
                    loop {
                        match stream.message().await {
                            Ok(Some(item)) => {
                                cursor.fetch_max(item.sequence, Ordering::AcqRel);
                                if let Some(occasion) = occasion_of(&item, &mut seen) {
                                    let view = item.request.clone().unwrap_or_default();
                                    d.dispatch(&Notification {
                                        occasion,
                                        link: format!("{}/requests/{}", self.public_url, view.request_id),
                                        view,
                                        sequence: item.sequence,
                                    });
                                }
                            }
                            Ok(None) => break,
                            Err(status) => {
                                tracing::warn!(code = ?status.code(), message = status.message(), "notifier watch ended");
                                break;
                            }
                        }
                    }
                    metrics.notifier_connected.set(0);
                }
                Err(e) => {
                    tracing::warn!(code = e.code.as_str(), message = %e.message, "notifier cannot watch")
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(60));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification() -> Notification {
        Notification {
            occasion: Occasion::Requested,
            view: proto::RequestView {
                request_id: "01REQ".into(),
                state: proto::RequestState::Pending as i32,
                request: Some(proto::ApprovalRequested {
                    identity: Some(proto::Identity {
                        display_name: "agent-7".into(),
                        ..Default::default()
                    }),
                    statement: Some(proto::Statement {
                        text: "DELETE FROM t WHERE note = '```<b>&'".into(),
                        ..Default::default()
                    }),
                    approvals_required: 1,
                    impact: Some(proto::Impact {
                        estimate: Some(proto::ImpactEstimate {
                            tables: vec![proto::TableRows {
                                table: "public.t".into(),
                                rows: 3,
                                ..Default::default()
                            }],
                            ..Default::default()
                        }),
                        dry_run: None,
                    }),
                    agent_reason: "ticket <42>".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            link: "https://airlock.example/requests/01REQ".into(),
            sequence: 9,
        }
    }

    #[test]
    fn a_break_glass_grant_is_announced_as_such() {
        let mut n = notification();
        n.occasion = Occasion::Decided;
        n.view.state = proto::RequestState::Granted as i32;
        n.view.votes.push(proto::Vote {
            decision: proto::Decision::Approve as i32,
            reason: "orders down, INC-4711, removing the poison row".into(),
            break_glass: true,
            ..Default::default()
        });
        let h = headline(&n);
        assert!(
            h.starts_with("BREAK-GLASS: agent-7 approved their own statement"),
            "{h}"
        );
        assert!(h.contains("INC-4711"), "{h}");
        n.view.votes[0].break_glass = false;
        assert!(!headline(&n).contains("BREAK-GLASS"));
    }

    #[test]
    fn hmac_signature_is_over_timestamp_and_body() {
        // RFC 4231 test case 2 key and data, split as "<timestamp>.<body>".
        let sig = sign(b"Jefe", 1_700_000_000, b"{}");
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"1700000000.{}");
        assert_eq!(sig, format!("v1={}", hex::encode(mac.finalize().into_bytes())));
        assert_ne!(sig, sign(b"Jefe", 1_700_000_001, b"{}"));
        assert_ne!(sig, sign(b"Jefe", 1_700_000_000, b"{ }"));
    }

    #[test]
    fn payloads_carry_the_link_and_escape_the_statement() {
        let n = notification();
        let slack = slack_payload(&n).to_string();
        assert!(slack.contains("https://airlock.example/requests/01REQ"));
        assert!(slack.contains("&lt;b&gt;&amp;"), "{slack}");
        assert!(!slack.contains("'```<b>"), "{slack}");
        let teams = teams_payload(&n);
        assert_eq!(teams["attachments"][0]["content"]["type"], "AdaptiveCard");
        assert_eq!(
            teams["attachments"][0]["content"]["actions"][0]["url"],
            "https://airlock.example/requests/01REQ"
        );
        // The facts a reviewer decides on, and the agent's own words as
        // such, escaped.
        assert!(slack.contains("estimate: about 3 rows of public.t"), "{slack}");
        assert!(
            slack.contains("agent says (unverified): ticket &lt;42&gt;"),
            "{slack}"
        );
        assert!(teams.to_string().contains("Agent's reason (unverified)"));
        // Review finding: Teams renders Markdown; the agent's words stay text.
        let mut linked = notification();
        if let Some(r) = linked.view.request.as_mut() {
            r.agent_reason = "[Approve now](https://evil.example)".into();
        }
        let card = teams_payload(&linked).to_string();
        assert!(
            card.contains("\\\\[Approve now\\\\]\\\\(https://evil.example\\\\)"),
            "{card}"
        );
        let generic = generic_payload(&n);
        assert_eq!(generic["type"], "request.created");
        assert_eq!(generic["request"]["impact"]["estimate"]["tables"][0]["rows"], 3);
        assert_eq!(
            generic["request"]["statement"]["text"],
            "DELETE FROM t WHERE note = '```<b>&'"
        );
    }

    #[test]
    fn resumed_watches_do_not_notify_twice() {
        let mut seen = HashSet::new();
        let n = notification();
        let item = proto::WatchEvent {
            request: Some(n.view.clone()),
            event: None,
            sequence: 3,
        };
        assert_eq!(occasion_of(&item, &mut seen), Some(Occasion::Requested));
        assert_eq!(occasion_of(&item, &mut seen), None);
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest_without_waiting() {
        let metrics = Metrics::new();
        let q = Queue {
            items: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            capacity: 2,
        };
        for seq in 1..=3 {
            let mut n = notification();
            n.sequence = seq;
            q.push(n, &metrics);
        }
        assert_eq!(metrics.webhook_dropped.get(), 1);
        assert_eq!(q.pop().await.sequence, 2);
        assert_eq!(q.pop().await.sequence, 3);
    }
}
