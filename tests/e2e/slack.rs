//! Slack approvals bound to Entra ID, through the real reviewer and control
//! plane, with a stand-in for Slack's Web API and its requests (button
//! presses and slash commands) signed as Slack signs them: the held request
//! is posted with its whole statement and Approve and Deny buttons; a
//! reviewer signs in with Entra ID, gets a link ticket and types it into
//! Slack; their button then approves as them and the agent's statement
//! runs; the message is updated in place. A forged signature, a stale or
//! replayed request, another workspace or channel, an unlinked user, a
//! reused ticket, a person or an agent posing as the relay, a vote without
//! the digest, a reviewer outside the rule's groups and a self-approval are
//! each refused, and nothing is voted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_e2e::binaries::{AGENTS, ALICE, BinaryStack, CLIENT_ID, ERIN, LEADS, REVIEWERS, hold};
use airlock_e2e::review::authed;
use airlock_e2e::{Process, StackBuilder, eventually};
use airlock_eventlog::proto;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "slack-signing-secret-for-this-test-run";
const RELAY_CLIENT: &str = "00000000-0000-4000-8000-00000000f1a7";
const TEAM: &str = "T0AIRLOCK";

const ACCESS: &str = "connections:
  - name: prod-maintenance
    upstream: postgres://maint@127.0.0.1:{PG}/shop
    password_env: PROD_MAINT_PASSWORD
policies:
  - policy: db-maintenance-agents
    connection: prod-maintenance
    rules:
      - match: SELECT
        action: allow
      - match: DELETE
        action: require-approval
      - match: DROP
        action: require-approval
        reviewers: [dba-leads]
    record: true
";

/// What the stand-in for Slack received.
#[derive(Debug, Default)]
struct Slack {
    posted: Mutex<Vec<Value>>,
    updated: Mutex<Vec<Value>>,
    told: Mutex<Vec<(String, Value)>>,
}

async fn post_message(State(s): State<Arc<Slack>>, body: axum::Json<Value>) -> axum::Json<Value> {
    let n = {
        let mut posted = s.posted.lock().unwrap();
        posted.push(body.0.clone());
        posted.len()
    };
    axum::Json(json!({"ok": true, "channel": body.0["channel"], "ts": format!("1700000000.{n:06}")}))
}

async fn update(State(s): State<Arc<Slack>>, body: axum::Json<Value>) -> axum::Json<Value> {
    s.updated.lock().unwrap().push(body.0.clone());
    axum::Json(json!({"ok": true}))
}

async fn respond(State(s): State<Arc<Slack>>, Path(id): Path<String>, body: axum::Json<Value>) {
    s.told.lock().unwrap().push((id, body.0));
}

async fn start_slack() -> (String, Arc<Slack>) {
    let slack = Arc::new(Slack::default());
    let app = Router::new()
        .route("/api/chat.postMessage", post(post_message))
        .route("/api/chat.update", post(update))
        .route("/respond/{id}", post(respond))
        .with_state(slack.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), slack)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A `block_actions` callback body and Slack's headers for it.
fn press_body(user: &str, action: &str, value: &str, respond: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase(), "team_id": TEAM},
        "team": {"id": TEAM},
        "channel": {"id": "C0REVIEW"},
        "actions": [{"action_id": action, "value": value}],
        "response_url": respond,
    });
    format!(
        "payload={}",
        url::form_urlencoded::byte_serialize(payload.to_string().as_bytes()).collect::<String>()
    )
}

fn signature(secret: &str, ts: i64, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

async fn send(stack: &BinaryStack, body: &str, ts: i64, sig: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/slack/interactions", stack.reviewer_url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", sig)
        .body(body.to_owned())
        .send()
        .await
        .expect("the reviewer answers")
        .status()
        .as_u16()
}

/// Presses a button in the review channel as Slack would send it; returns
/// the HTTP status.
async fn press(stack: &BinaryStack, user: &str, action: &str, value: &str, respond: &str) -> u16 {
    let body = press_body(user, action, value, respond);
    let ts = now();
    send(stack, &body, ts, &signature(SECRET, ts, &body)).await
}

/// Sends `/airlock <text>` as `user` of `team`; returns the HTTP status.
async fn command(stack: &BinaryStack, team: &str, user: &str, text: &str, respond: &str) -> u16 {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("command", "/airlock")
        .append_pair("text", text)
        .append_pair("team_id", team)
        .append_pair("user_id", user)
        .append_pair("user_name", &user.to_lowercase())
        .append_pair("channel_id", "D0DIRECT")
        .append_pair("response_url", respond)
        .finish();
    let ts = now();
    reqwest::Client::new()
        .post(format!("{}/slack/commands", stack.reviewer_url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", signature(SECRET, ts, &body))
        .body(body)
        .send()
        .await
        .expect("the reviewer answers")
        .status()
        .as_u16()
}

/// Gets a ticket with `token` (a person's, of the reviewer UI's client) and
/// types it in Slack as `user`; what the reviewer answered there.
async fn link_through_slack(
    stack: &BinaryStack,
    slack: &Slack,
    token: &str,
    user: &str,
    respond: &str,
) -> String {
    let offer = stack
        .reviewer()
        .await
        .offer_slack_link(authed(token, proto::OfferSlackLinkRequest {}))
        .await
        .expect("a reviewer gets a ticket")
        .into_inner();
    let typed = format!("link {}", offer.ticket);
    assert_eq!(command(stack, TEAM, user, &typed, respond).await, 200);
    told(slack, respond.rsplit('/').next().unwrap_or_default()).await
}

/// The value of the Approve button of the message about `id`.
async fn button(slack: &Slack, id: &str) -> (Value, String) {
    eventually(
        &format!("request {id} in Slack"),
        Duration::from_secs(20),
        || async {
            let posted = slack.posted.lock().unwrap();
            posted
                .iter()
                .find(|m| m.to_string().contains(id))
                .and_then(|m| {
                    let actions = m["blocks"].as_array()?.iter().find(|b| b["type"] == "actions")?;
                    Some((m.clone(), actions["elements"][0]["value"].as_str()?.to_owned()))
                })
                .ok_or(())
        },
    )
    .await
}

/// The text the message shows as its statement (and parameters).
fn shown(message: &Value) -> String {
    message["blocks"]
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

fn csrf(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a CSRF token")
        .to_owned()
}

/// What the reviewer told the presser through `response_url` `id`.
async fn told(slack: &Slack, id: &str) -> String {
    eventually(
        &format!("the reviewer to answer press {id}"),
        Duration::from_secs(20),
        || async {
            slack
                .told
                .lock()
                .unwrap()
                .iter()
                .find(|(i, _)| i == id)
                .map(|(_, v)| v["text"].as_str().unwrap_or("").to_owned())
                .ok_or(())
        },
    )
    .await
}

/// Signs `user` in to the reviewer UI through the dev issuer; returns the
/// session cookie.
async fn sign_in(stack: &BinaryStack, http: &reqwest::Client, user: &str) -> String {
    let login = http
        .get(format!("{}/auth/login?return_to=/", stack.reviewer_url))
        .send()
        .await
        .unwrap();
    let login_cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let authorize = url::Url::parse(login.headers()["location"].to_str().unwrap()).unwrap();
    let mut form: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    form.push(("user".into(), user.into()));
    let picked = http
        .post(authorize.as_str().split('?').next().unwrap())
        .form(&form)
        .send()
        .await
        .unwrap();
    let callback = picked.headers()["location"].to_str().unwrap().to_owned();
    let done = http
        .get(&callback)
        .header("cookie", &login_cookie)
        .send()
        .await
        .unwrap();
    done.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("airlock_session="))
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

fn pending(stack: &BinaryStack, id: &str) -> bool {
    let out = stack
        .control_command(&["export", "--from", "1"])
        .output()
        .unwrap();
    !String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.contains(id) && (l.contains("\"approval_voted\"") || l.contains("\"approval_granted\"")))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_linked_reviewer_approves_with_a_slack_button_and_forgeries_are_refused() {
    let (base, slack) = start_slack().await;
    let reviewer_yaml = format!(
        "  notifications:\n    token_file: {{DIR}}/notifier.token\n    backoff: 200ms\n    timeout: 2s\n\
         \x20 slack:\n    signing_secret_env: AIRLOCK_TEST_SLACK_SECRET\n    bot_token_env: AIRLOCK_TEST_SLACK_BOT\n\
         \x20   team: {TEAM}\n    channel: C0REVIEW\n    api_url: {base}/api\n    response_url_prefix: {base}/respond/\n"
    );
    let stack = tokio::task::block_in_place(|| {
        StackBuilder::new()
            .orders(10)
            .access(ACCESS)
            .reviewer_yaml(&reviewer_yaml)
            .control_yaml(&format!(
                "  slack: {{ relays: [{RELAY_CLIENT}], ticket_clients: [{CLIENT_ID}] }}\n"
            ))
            .env(Process::Reviewer, "AIRLOCK_TEST_SLACK_SECRET", SECRET)
            .env(Process::Reviewer, "AIRLOCK_TEST_SLACK_BOT", "xoxb-test-only")
            .notifier_token()
            .reviewer()
            // Votes from Slack ask Graph for the voter's groups now.
            .graph()
            .start_binaries()
    });
    // The reviewer service's own identity: an app of the relay client.
    let relay = stack.token(&[
        "--sub",
        "oid-reviewer-app",
        "--name",
        "airlock-reviewer",
        "--app",
        "--group",
        REVIEWERS,
        "--group",
        LEADS,
        "--client-id",
        RELAY_CLIENT,
    ]);
    std::fs::write(stack.dir.join("notifier.token"), &relay).unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    eventually("the notifier to connect", Duration::from_secs(20), || async {
        let m = http
            .get(format!("{}/metrics", stack.reviewer_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        m.lines()
            .any(|l| l.trim() == "airlock_reviewer_notifier_connected 1")
            .then_some(())
            .ok_or(())
    })
    .await;

    // The agent's DELETE is held; Slack gets all of it, with the buttons.
    let agent = stack.agent_token();
    let sql = "DELETE FROM public.orders WHERE id = 1 -- <!channel> *ok* ```";
    let held = hold(&stack, &agent, sql).await;
    let id = held.request_id.clone();
    let (posted, value) = button(&slack, &id).await;
    assert_eq!(posted["channel"], "C0REVIEW");
    assert_eq!(shown(&posted), sql, "the statement as plain text, whole");
    let actions = posted["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .expect("buttons");
    assert_eq!(actions["elements"][0]["action_id"], "airlock_approve");
    assert_eq!(actions["elements"][1]["action_id"], "airlock_deny");
    assert!(
        value.starts_with(&format!("{id}:")) && value.len() == id.len() + 65,
        "{value}"
    );
    let respond = |n: &str| format!("{base}/respond/{n}");

    // Forged: another secret. Stale: six minutes old. Nothing voted.
    let body = press_body("UALICE", "airlock_approve", &value, &respond("forged"));
    let ts = now();
    assert_eq!(
        send(
            &stack,
            &body,
            ts,
            &signature("not the signing secret at all", ts, &body)
        )
        .await,
        401
    );
    let old = now() - 360;
    assert_eq!(
        send(&stack, &body, old, &signature(SECRET, old, &body)).await,
        401
    );
    // Another workspace, signed alike: refused.
    let other = body.replace(TEAM, "T0ELSEWHERE");
    let ts = now();
    assert_eq!(
        send(&stack, &other, ts, &signature(SECRET, ts, &other)).await,
        403
    );

    // Unlinked: told where to link, nothing voted.
    assert_eq!(
        press(&stack, "UALICE", "airlock_approve", &value, &respond("1")).await,
        200
    );
    let text = told(&slack, "1").await;
    assert!(
        text.contains("Nothing was voted") && text.contains("/slack"),
        "{text}"
    );
    assert!(pending(&stack, &id), "nothing voted while unlinked");

    // Alice signs in with Entra ID and gets a ticket on the Slack page.
    let cookie = sign_in(&stack, &http, ALICE.0).await;
    let page = http
        .get(format!("{}/slack", stack.reviewer_url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("No Slack user is linked to you"), "{html}");
    let offered = http
        .post(format!("{}/slack/ticket", stack.reviewer_url))
        .header("cookie", &cookie)
        .header("origin", &stack.reviewer_url)
        .form(&[("csrf", csrf(&html).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(offered.status(), 200);
    let offered = offered.text().await.unwrap();
    assert!(offered.contains("never paste it"), "{offered}");
    let typed = offered
        .split("<pre id=\"command\">")
        .nth(1)
        .and_then(|s| s.split("</pre>").next())
        .expect("the command to type")
        .to_owned();
    let ticket = typed
        .strip_prefix("/airlock link ")
        .expect("/airlock link <ticket>")
        .to_owned();

    // The ticket is no use to Alice's own token or an agent: only the relay
    // links, with the Slack user Slack vouched for.
    let mut control = stack.reviewer().await;
    let ualice = proto::SlackUser {
        team_id: TEAM.into(),
        user_id: "UALICE".into(),
        name: String::new(),
    };
    for (who, token) in [("Alice", stack.user_token(ALICE)), ("the agent", agent.clone())] {
        let q = proto::LinkSlackRequest {
            slack: Some(ualice.clone()),
            ticket: ticket.clone(),
        };
        let refused = control
            .link_slack(authed(&token, q))
            .await
            .expect_err("only a relay links");
        assert!(
            refused.message().contains("not a Slack relay"),
            "{who}: {refused:?}"
        );
    }
    // Alice's token for another client (a CLI, a tool an agent runs) gets
    // no ticket: only the reviewer's sign-in does.
    let refused = control
        .offer_slack_link(authed(&stack.user_token(ALICE), proto::OfferSlackLinkRequest {}))
        .await
        .expect_err("no ticket outside the reviewer's sign-in");
    assert!(refused.message().contains("ticket_clients"), "{refused:?}");
    // Erin is no reviewer: no ticket for her.
    let refused = control
        .offer_slack_link(authed(&stack.user_token(ERIN), proto::OfferSlackLinkRequest {}))
        .await
        .expect_err("no ticket for a non-reviewer");
    assert!(refused.message().contains("not in a reviewer"), "{refused:?}");

    // Alice types it in Slack: linked, and told as whom.
    assert_eq!(
        command(
            &stack,
            TEAM,
            "UALICE",
            typed.strip_prefix("/airlock ").unwrap(),
            &respond("l1")
        )
        .await,
        200
    );
    let text = told(&slack, "l1").await;
    assert!(
        text.contains("Linked") && text.contains("Alice Reviewer"),
        "{text}"
    );
    // The same ticket again, by another Slack user: refused.
    assert_eq!(
        command(
            &stack,
            TEAM,
            "UMALLORY",
            &format!("link {ticket}"),
            &respond("l2")
        )
        .await,
        200
    );
    let text = told(&slack, "l2").await;
    assert!(
        text.contains("Nothing was linked") && text.contains("already used"),
        "{text}"
    );
    // A damaged ticket: refused with what to do.
    // (One character of the body changed: its signature no longer checks.)
    let at = "airlock-link-".len() + 10;
    let flipped = if &ticket[at..=at] == "A" { "B" } else { "A" };
    let damaged = format!("link {}{flipped}{}", &ticket[..at], &ticket[at + 1..]);
    assert_eq!(
        command(&stack, TEAM, "UMALLORY", &damaged, &respond("l3")).await,
        200
    );
    let text = told(&slack, "l3").await;
    assert!(
        text.contains("Nothing was linked") && text.contains("not made by this Airlock"),
        "{text}"
    );
    assert_eq!(
        command(&stack, TEAM, "UMALLORY", "status", &respond("l4")).await,
        200
    );
    assert!(told(&slack, "l4").await.contains("not linked"));

    // A press in another channel votes nothing.
    let elsewhere =
        press_body("UALICE", "airlock_approve", &value, &respond("c1")).replace("C0REVIEW", "C0OTHER");
    let ts = now();
    assert_eq!(
        send(&stack, &elsewhere, ts, &signature(SECRET, ts, &elsewhere)).await,
        200
    );
    assert!(told(&slack, "c1").await.contains("review channel"));
    assert!(pending(&stack, &id));

    // A replayed press (the same signed body) is refused.
    let body = press_body("UALICE", "airlock_approve", &value, &respond("2"));
    let ts = now();
    let sig = signature(SECRET, ts, &body);
    assert_eq!(send(&stack, &body, ts, &sig).await, 200);
    assert_eq!(send(&stack, &body, ts, &sig).await, 401, "a replay");
    let text = told(&slack, "2").await;
    assert!(text.contains("recorded"), "{text}");

    // The statement ran, approved as Alice, relayed from Slack.
    held.outcome.await.unwrap().expect("the approved DELETE ran");
    let out = stack
        .control_command(&["export", "--from", "1"])
        .output()
        .unwrap();
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect();
    let voted: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "approval_voted" && e["event"]["request_id"] == id.as_str())
        .collect();
    assert_eq!(voted.len(), 1, "one vote, the replay took nothing");
    let v = &voted[0]["event"]["approval_voted"];
    assert_eq!(v["reviewer"]["subject"], "oid-alice");
    assert_eq!(v["slack"]["user_id"], "UALICE");
    assert_eq!(v["relayed_by"]["client_app_id"], RELAY_CLIENT);
    let linked: Vec<&Value> = events.iter().filter(|e| e["kind"] == "slack_linked").collect();
    assert_eq!(linked.len(), 1, "one link, the reused ticket made none");
    assert_eq!(
        linked[0]["event"]["slack_linked"]["identity"]["subject"],
        "oid-alice"
    );
    assert_eq!(
        linked[0]["event"]["slack_linked"]["relayed_by"]["client_app_id"],
        RELAY_CLIENT
    );
    // The message is updated in place: outcome said, buttons gone.
    let updated = eventually("the message updated", Duration::from_secs(20), || async {
        slack
            .updated
            .lock()
            .unwrap()
            .iter()
            .find(|m| m.to_string().contains(&id))
            .cloned()
            .ok_or(())
    })
    .await;
    assert_eq!(updated["ts"], "1700000000.000001");
    assert!(updated["text"].as_str().unwrap().contains("granted"), "{updated}");
    assert!(
        !updated["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["type"] == "actions")
    );

    // A DROP needs a DBA lead: Alice's button votes nothing there.
    // (The notifier is not told of requests for dba-leads: the button is
    // made as a message would carry it, from the request.)
    let drop = hold(&stack, &agent, "DROP TABLE public.orders").await;
    let view = control
        .get_request(authed(
            &relay,
            proto::GetRequestRequest {
                request_id: drop.request_id.clone(),
            },
        ))
        .await
        .expect("the relay, in dba-leads, reads it")
        .into_inner();
    let digest = view.request.unwrap().statement.unwrap().sha256;
    let drop_value = format!("{}:{}", drop.request_id, hex::encode(digest));
    assert_eq!(
        press(&stack, "UALICE", "airlock_approve", &drop_value, &respond("3")).await,
        200
    );
    let text = told(&slack, "3").await;
    assert!(
        text.contains("Nothing was voted") && text.contains("dba-leads"),
        "{text}"
    );
    assert!(pending(&stack, &drop.request_id));

    // A relayed vote must name the statement's digest.
    let second = hold(&stack, &agent, "DELETE FROM public.orders WHERE id = 2").await;
    let q = proto::DecideRequest {
        request_id: second.request_id.clone(),
        decision: proto::Decision::Deny as i32,
        reason: "x".into(),
        slack: Some(ualice.clone()),
        ..Default::default()
    };
    let refused = control.decide(authed(&relay, q)).await.expect_err("no digest");
    assert!(refused.message().contains("digest"), "{refused:?}");
    assert!(pending(&stack, &second.request_id));

    // Frank's token says db-reviewers, so he gets a ticket and links; but
    // Graph, asked at his vote, says he is in no group: nothing voted.
    let frank = stack.token(&[
        "--sub",
        "oid-frank",
        "--name",
        "Frank Former",
        "--group",
        REVIEWERS,
        "--client-id",
        CLIENT_ID,
    ]);
    let linked = link_through_slack(&stack, &slack, &frank, "UFRANK", &respond("f1")).await;
    assert!(linked.contains("Frank Former"), "{linked}");
    let (_, second_value) = button(&slack, &second.request_id).await;
    assert_eq!(
        press(&stack, "UFRANK", "airlock_approve", &second_value, &respond("f2")).await,
        200
    );
    let text = told(&slack, "f2").await;
    assert!(
        text.contains("Nothing was voted") && text.contains("not in a reviewer group"),
        "{text}"
    );
    assert!(pending(&stack, &second.request_id));

    // Dave, a reviewer who also runs statements, links his Slack user and
    // presses Approve on his own request: a self-approval, refused. First,
    // a statement of his with a parameter bound in binary (as
    // tokio-postgres binds): its message cannot vouch for the value's
    // reading, so it has no buttons.
    let dave = stack.token(&[
        "--sub",
        "oid-dave",
        "--name",
        "Dave Both",
        "--group",
        REVIEWERS,
        "--group",
        AGENTS,
        "--client-id",
        CLIENT_ID,
    ]);
    let linked = link_through_slack(&stack, &slack, &dave, "UDAVE", &respond("d1")).await;
    assert!(linked.contains("Dave Both"), "{linked}");
    let (client, mut notices) = airlock_e2e::session(stack.proxy_port, &dave).await;
    let _run = tokio::spawn(async move {
        client
            .execute("DELETE FROM public.orders WHERE id = $1", &[&3i32])
            .await
    });
    let notice = tokio::time::timeout(Duration::from_secs(30), notices.recv())
        .await
        .unwrap()
        .unwrap();
    let binary = airlock_e2e::request_id(&notice).unwrap();
    let posted = eventually(
        "the binary-parameter request in Slack",
        Duration::from_secs(20),
        || async {
            slack
                .posted
                .lock()
                .unwrap()
                .iter()
                .find(|m| m.to_string().contains(&binary))
                .cloned()
                .ok_or(())
        },
    )
    .await;
    assert!(
        posted.to_string().contains("bound in binary")
            && !posted["blocks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["type"] == "actions"),
        "{posted}"
    );
    let (client, mut notices) = airlock_e2e::session(stack.proxy_port, &dave).await;
    let _run = tokio::spawn(async move {
        client
            .simple_query("DELETE FROM public.orders WHERE id = 4")
            .await
    });
    let notice = tokio::time::timeout(Duration::from_secs(30), notices.recv())
        .await
        .unwrap()
        .unwrap();
    let own = airlock_e2e::request_id(&notice).unwrap();
    let (_, own_value) = button(&slack, &own).await;
    assert_eq!(
        press(&stack, "UDAVE", "airlock_approve", &own_value, &respond("4")).await,
        200
    );
    let text = told(&slack, "4").await;
    assert!(
        text.contains("Nothing was voted") && text.contains("self-approval"),
        "{text}"
    );
    assert!(pending(&stack, &own));

    // An agent's token is no relay, even naming a linked Slack user.
    let q = proto::DecideRequest {
        request_id: own.clone(),
        decision: proto::Decision::Approve as i32,
        reason: "x".into(),
        statement_sha256: hex::decode(own_value.split(':').nth(1).unwrap()).unwrap(),
        slack: Some(ualice.clone()),
        ..Default::default()
    };
    let refused = control
        .decide(authed(&agent, q))
        .await
        .expect_err("an agent cannot relay");
    assert!(refused.message().contains("not a Slack relay"), "{refused:?}");
    assert!(pending(&stack, &own));

    // Alice's page lists her link; she ends it, and her button votes nothing.
    let html = http
        .get(format!("{}/slack", stack.reviewer_url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("UALICE") && html.contains("End this link"),
        "{html}"
    );
    let ended = http
        .post(format!("{}/slack/unlink", stack.reviewer_url))
        .header("cookie", &cookie)
        .header("origin", &stack.reviewer_url)
        .form(&[("csrf", csrf(&html).as_str()), ("team", TEAM), ("user", "UALICE")])
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);
    assert_eq!(
        press(&stack, "UALICE", "airlock_approve", &own_value, &respond("5")).await,
        200
    );
    assert!(told(&slack, "5").await.contains("not linked"));
    assert!(pending(&stack, &own));
    stack.assert_verify_passes();
}

/// With `reviewer.state: nats`, a Slack request taken by one replica is a
/// replay on every other: a press or a command captured on its way and sent
/// to another replica does nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_slack_request_taken_by_one_reviewer_replica_is_a_replay_on_the_other() {
    let (base, slack) = start_slack().await;
    let reviewer_yaml = format!(
        "  notifications:\n    token_file: {{DIR}}/notifier.token\n\
         \x20 slack:\n    signing_secret_env: AIRLOCK_TEST_SLACK_SECRET\n    bot_token_env: AIRLOCK_TEST_SLACK_BOT\n\
         \x20   team: {TEAM}\n    channel: C0REVIEW\n    api_url: {base}/api\n    response_url_prefix: {base}/respond/\n"
    );
    let stack = tokio::task::block_in_place(|| {
        StackBuilder::new()
            .reviewer_yaml(&reviewer_yaml)
            .control_yaml(&format!(
                "  slack: {{ relays: [{RELAY_CLIENT}], ticket_clients: [{CLIENT_ID}] }}\n"
            ))
            .env(Process::Reviewer, "AIRLOCK_TEST_SLACK_SECRET", SECRET)
            .env(Process::Reviewer, "AIRLOCK_TEST_SLACK_BOT", "xoxb-test-only")
            .notifier_token()
            .reviewer_replicas(2)
            .start_binaries()
    });
    let ports = stack.reviewer_ports.clone();
    let to = |port: u16, path: &str, body: &str, ts: i64| {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", ts.to_string())
            .header("x-slack-signature", signature(SECRET, ts, body))
            .body(body.to_owned())
            .send()
    };
    let value = format!("01NOREQUEST:{}", "ab".repeat(32));
    let press = press_body("UALICE", "airlock_approve", &value, &format!("{base}/respond/p"));
    let ts = now();
    assert_eq!(
        to(ports[0], "/slack/interactions", &press, ts)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        to(ports[1], "/slack/interactions", &press, ts)
            .await
            .unwrap()
            .status(),
        401,
        "the same press on the other replica"
    );
    // Its signature in upper case is the same signature.
    let upper = signature(SECRET, ts, &press)
        .replacen("v0=", "", 1)
        .to_uppercase();
    let again = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/slack/interactions", ports[1]))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", format!("v0={upper}"))
        .body(press.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 401, "the same press, its signature in upper case");
    let cmd = format!("team_id={TEAM}&user_id=UMALLORY&text=status&response_url={base}/respond/c");
    let ts = now();
    assert_eq!(
        to(ports[1], "/slack/commands", &cmd, ts).await.unwrap().status(),
        200
    );
    assert_eq!(
        to(ports[0], "/slack/commands", &cmd, ts).await.unwrap().status(),
        401
    );
    // Each was acted on once.
    told(&slack, "p").await;
    told(&slack, "c").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let told = slack.told.lock().unwrap();
    assert_eq!(told.iter().filter(|(i, _)| i == "p").count(), 1);
    assert_eq!(told.iter().filter(|(i, _)| i == "c").count(), 1);
}
