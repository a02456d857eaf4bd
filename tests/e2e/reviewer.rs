//! `airlock-reviewer` against the real binaries: a control plane on a real
//! nats-server, a proxy on a real PostgreSQL, tokens from `airlock-dev-idp`.
//! REST (list, get, approve, deny, quorum, every refusal with its status),
//! the server-sent event stream and its resume, and the browser sign-in
//! (authorization code + PKCE, session cookie, CSRF) driven over plain HTTP.
//!
//! Every answer read through [`Api`] (and every event of the stream) is also
//! checked against the OpenAPI document the running reviewer serves: the
//! schema of its path, method and status, with `$ref`s resolved in the
//! document's components, as JSON Schema 2020-12 (OpenAPI 3.1's dialect).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_e2e::binaries::{
    self, AGENTS, ALICE, BOB, CLIENT_ID, ERIN, Options, REVIEWERS, ReviewerStack, hold,
};
use airlock_e2e::{eventually, satisfies};
use reqwest::StatusCode;
use serde_json::{Map, Value, json};
use tokio::sync::OnceCell;

struct Api {
    base: String,
    http: reqwest::Client,
    /// The server's own document, fetched on first use.
    contract: OnceCell<Arc<Contract>>,
}

impl Api {
    fn new(stack: &ReviewerStack) -> Api {
        Api {
            base: stack.reviewer_url.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            contract: OnceCell::new(),
        }
    }

    async fn contract(&self) -> Arc<Contract> {
        self.contract
            .get_or_init(|| async {
                let url = format!("{}/api/v1/openapi.json", self.base);
                let response = self.http.get(url).send().await.expect("the document");
                assert_eq!(response.status(), 200, "the document is served");
                Arc::new(Contract::new(
                    response.json().await.expect("the document is JSON"),
                ))
            })
            .await
            .clone()
    }

    async fn get(&self, token: Option<&str>, path: &str) -> (StatusCode, Value) {
        let mut r = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let response = r.send().await.expect("GET");
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        self.contract().await.check("GET", path, status, None, &body);
        (status, body)
    }

    async fn post(&self, token: Option<&str>, path: &str, body: Value) -> (StatusCode, Value) {
        let mut r = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let response = r.send().await.expect("POST");
        let status = response.status();
        let answer = response.json().await.unwrap_or(Value::Null);
        self.contract()
            .await
            .check("POST", path, status, Some(&body), &answer);
        (status, answer)
    }

    async fn vote(&self, token: &str, id: &str, decision: &str, body: Value) -> (StatusCode, Value) {
        self.post(Some(token), &format!("/api/v1/requests/{id}/{decision}"), body)
            .await
    }
}

/// Holds `sql` on a new session with `token`, and waits until the control
/// plane has folded the request (the proxy's notice can arrive first).
async fn hold_seen(stack: &ReviewerStack, api: &Api, viewer: &str, token: &str, sql: &str) -> binaries::Held {
    let held = hold(stack, token, sql).await;
    let path = format!("/api/v1/requests/{}", held.request_id);
    eventually(
        "the request to reach the reviewer",
        Duration::from_secs(10),
        || async {
            satisfies(api.get(Some(viewer), &path).await.0, |s| {
                *s != StatusCode::NOT_FOUND
            })
        },
    )
    .await;
    held
}

/// Asserts a JSON error with this status and code.
#[track_caller]
fn refused(got: &(StatusCode, Value), status: u16, code: &str) {
    assert_eq!(got.0.as_u16(), status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert!(
        got.1["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a human message: {}",
        got.1
    );
}

/// The reviewer's OpenAPI document as the running server serves it, and
/// which of its answers the test has seen.
struct Contract {
    doc: Value,
    /// `components`, closed (see [`closed`]): a `$ref` in a checked schema
    /// resolves here.
    components: Value,
    /// "METHOD /path/{template} STATUS" of every answer checked.
    checked: Mutex<BTreeSet<String>>,
}

impl Contract {
    fn new(doc: Value) -> Contract {
        assert!(
            doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")),
            "OpenAPI 3.1, whose schemas are JSON Schema 2020-12: {}",
            doc["openapi"]
        );
        let mut components = doc["components"].clone();
        let schemas = components["schemas"]
            .as_object_mut()
            .expect("the document has component schemas");
        for (name, schema) in schemas.iter_mut() {
            if let Err(e) = jsonschema::meta::validate(schema) {
                panic!("component {name} is not a JSON Schema: {e}");
            }
            *schema = closed(schema);
        }
        Contract {
            doc,
            components,
            checked: Mutex::new(BTreeSet::new()),
        }
    }

    /// The documented operation that `method` on a concrete `path` falls
    /// under, with its path template; literal segments win over `{...}`.
    fn operation(&self, method: &str, path: &str) -> Option<(String, &Value)> {
        let path = path.split('?').next().unwrap_or(path);
        let segments: Vec<&str> = path.split('/').collect();
        let mut best: Option<(usize, &String, &Value)> = None;
        for (template, item) in self.doc["paths"].as_object()? {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != segments.len() {
                continue;
            }
            let mut holes = 0;
            let fits = parts.iter().zip(&segments).all(|(part, segment)| {
                if part.starts_with('{') && part.ends_with('}') {
                    holes += 1;
                    !segment.is_empty()
                } else {
                    part == segment
                }
            });
            let Some(op) = item.get(method.to_lowercase()).filter(|_| fits) else {
                continue;
            };
            if best.is_none_or(|(fewest, ..)| holes < fewest) {
                best = Some((holes, template, op));
            }
        }
        best.map(|(_, template, op)| (template.clone(), op))
    }

    /// Fails unless the answer (and, for an accepted request, the body sent)
    /// is what the document says for this path, method and status. Paths
    /// the document does not name (an unknown route's 404) are skipped.
    #[track_caller]
    fn check(&self, method: &str, path: &str, status: StatusCode, sent: Option<&Value>, answer: &Value) {
        let Some((template, op)) = self.operation(method, path) else {
            return;
        };
        let what = format!("{method} {template} {}", status.as_u16());
        let response = op["responses"]
            .get(status.as_str())
            .unwrap_or_else(|| panic!("{what}: the document lists no such answer; the server sent {answer}"));
        let media = response["content"]
            .get("application/json")
            .unwrap_or_else(|| panic!("{what}: the document says this is not JSON: {response}"));
        if let Some(schema) = media.get("schema") {
            self.conforms(schema, answer, &what);
        }
        if let Some(sent) = sent.filter(|_| status.is_success())
            && let Some(schema) = op["requestBody"]["content"]["application/json"].get("schema")
        {
            self.conforms(schema, sent, &format!("{what}, the body it accepted"));
        }
        self.checked.lock().expect("checked").insert(what);
    }

    /// Fails unless `instance` is valid against `schema`, a schema of this
    /// document (`$ref`s into its components).
    #[track_caller]
    fn conforms(&self, schema: &Value, instance: &Value, what: &str) {
        let mut root = closed(schema);
        let root_map = root.as_object_mut().expect("a schema object");
        root_map.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        root_map.insert("components".into(), self.components.clone());
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{what}: the document's schema does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("  at {:?}: {e}", e.instance_path().to_string()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: the answer is not what the document says:\n{}\n{instance:#}",
            errors.join("\n")
        );
    }

    /// The schema of one server-sent event's data: an `error` event carries
    /// an `Error`, every other the stream's documented item.
    fn event_schema(&self, event: &str) -> Value {
        if event == "error" {
            return json!({"$ref": "#/components/schemas/Error"});
        }
        let (_, op) = self
            .operation("GET", "/api/v1/events")
            .expect("the event stream is documented");
        op["responses"]["200"]["content"]["text/event-stream"]["schema"].clone()
    }

    /// Fails unless every one of `expected` was checked.
    #[track_caller]
    fn assert_checked(&self, expected: &[&str]) {
        let checked = self.checked.lock().expect("checked");
        let missing: Vec<&&str> = expected.iter().filter(|e| !checked.contains(**e)).collect();
        assert!(
            missing.is_empty(),
            "never checked: {missing:?}; checked: {checked:#?}"
        );
    }
}

/// `schema`, closed: an object schema that lists its properties refuses
/// any other, so a field the server sends and the document does not name
/// fails the check. (The served document leaves objects open, so clients
/// keep working when a field is added; the server's own test is stricter.)
fn closed(schema: &Value) -> Value {
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (keyword, value) in map {
        let value = match (keyword.as_str(), value) {
            ("properties" | "patternProperties" | "$defs", Value::Object(named)) => {
                Value::Object(named.iter().map(|(k, v)| (k.clone(), closed(v))).collect())
            }
            ("allOf" | "anyOf" | "oneOf" | "prefixItems", Value::Array(list)) => {
                Value::Array(list.iter().map(closed).collect())
            }
            ("items" | "additionalProperties" | "not" | "contains", v) => closed(v),
            (_, v) => v.clone(),
        };
        out.insert(keyword.clone(), value);
    }
    if out.contains_key("properties") && !out.contains_key("additionalProperties") {
        out.insert("additionalProperties".into(), json!(false));
    }
    Value::Object(out)
}

#[tokio::test]
async fn rest_lists_gets_approves_denies_and_refuses_with_the_right_status() {
    let stack = ReviewerStack::start(Options::default());
    let api = Api::new(&stack);
    let agent = stack.agent_token();
    let alice = stack.user_token(ALICE);
    let bob = stack.user_token(BOB);
    let erin = stack.user_token(ERIN);

    // 401: no token, a garbage token.
    let none = api.get(None, "/api/v1/requests").await;
    refused(&none, 401, "unauthenticated");
    refused(
        &api.get(Some("not-a-token"), "/api/v1/requests").await,
        401,
        "unauthenticated",
    );
    // 403: a person outside every reviewer group.
    refused(
        &api.get(Some(&erin), "/api/v1/requests").await,
        403,
        "not_a_reviewer",
    );

    // A held DELETE, as the reviewer sees it.
    let held = hold_seen(&stack, &api, &alice, &agent, "DELETE FROM orders WHERE id = 3").await;
    let (status, page) = api.get(Some(&alice), "/api/v1/requests?state=pending").await;
    assert_eq!(status, 200, "{page}");
    let listed = page["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .find(|r| r["id"] == held.request_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{} not listed: {page}", held.request_id));
    assert_eq!(listed["state"], "pending");
    assert_eq!(listed["statement"]["text"], "DELETE FROM orders WHERE id = 3");
    assert_eq!(listed["statement"]["sha256"].as_str().map(str::len), Some(64));
    assert_eq!(listed["identity"]["display_name"], "agent-7");
    assert_eq!(listed["identity"]["kind"], "app");
    assert_eq!(listed["identity"]["groups"][0]["name"], "db-maintenance-agents");
    assert_eq!(listed["connection"]["name"], "prod-maintenance");
    assert_eq!(listed["verdict"]["reason"], "deletes need a reviewer");
    assert_eq!(listed["approvals_required"], 1);
    assert_eq!(listed["approvals_given"], 0);
    assert!(
        listed["deadline"].is_string() && listed["requested_at"].is_string(),
        "{listed}"
    );
    let (status, one) = api
        .get(Some(&alice), &format!("/api/v1/requests/{}", held.request_id))
        .await;
    assert_eq!(status, 200);
    assert_eq!(one["statement"]["text"], listed["statement"]["text"]);

    // 404 and 400.
    refused(
        &api.get(Some(&alice), "/api/v1/requests/01ARZ3NDEKTSV4RRFFQ69G5FAV")
            .await,
        404,
        "not_found",
    );
    refused(
        &api.get(Some(&alice), "/api/v1/requests/bad!id").await,
        400,
        "invalid_argument",
    );
    refused(
        &api.get(Some(&alice), "/api/v1/no-such-route").await,
        404,
        "not_found",
    );
    refused(
        &api.get(Some(&alice), "/api/v1/requests?state=bogus").await,
        400,
        "invalid_argument",
    );
    let id = held.request_id.clone();
    refused(
        &api.vote(&alice, &id, "approve", json!({"reasons": "typo"})).await,
        400,
        "invalid_argument",
    );

    // 403: the agent itself; an app identity in the reviewer group.
    refused(
        &api.vote(&agent, &id, "approve", json!({})).await,
        403,
        "not_a_reviewer",
    );
    let app = stack.token(&[
        "--sub",
        "oid-bot",
        "--name",
        "review-bot",
        "--app",
        "--group",
        REVIEWERS,
    ]);
    refused(
        &api.vote(&app, &id, "approve", json!({})).await,
        403,
        "app_identity",
    );
    // 409: a digest other than the one shown.
    let wrong = "00".repeat(32);
    refused(
        &api.vote(&alice, &id, "approve", json!({"statement_sha256": wrong}))
            .await,
        409,
        "digest_mismatch",
    );
    assert_eq!(
        stack.pg.psql("shop", "SELECT count(*) FROM orders WHERE id = 3"),
        "1",
        "nothing ran"
    );

    // Alice approves the digest she was shown: it runs on the agent's session.
    let (status, voted) = api
        .vote(
            &alice,
            &id,
            "approve",
            json!({"reason": "old test order", "statement_sha256": listed["statement"]["sha256"]}),
        )
        .await;
    assert_eq!(status, 200, "{voted}");
    assert_eq!(voted["request"]["state"], "granted");
    assert_eq!(
        voted["request"]["votes"][0]["reviewer"]["display_name"],
        "Alice Reviewer"
    );
    let rows = tokio::time::timeout(Duration::from_secs(20), held.outcome)
        .await
        .expect("the held statement finishes")
        .expect("join")
        .expect("the DELETE ran");
    assert_eq!(rows, 1);
    assert_eq!(
        stack.pg.psql("shop", "SELECT count(*) FROM orders WHERE id = 3"),
        "0"
    );
    // 409: already decided.
    refused(
        &api.vote(&bob, &id, "approve", json!({})).await,
        409,
        "already_decided",
    );

    // A denial: the statement is refused with the reason, the row stays.
    let held = hold_seen(&stack, &api, &alice, &agent, "DELETE FROM orders WHERE id = 5").await;
    let (status, voted) = api
        .vote(
            &bob,
            &held.request_id,
            "deny",
            json!({"reason": "order 5 is a real customer"}),
        )
        .await;
    assert_eq!(status, 200, "{voted}");
    assert_eq!(voted["request"]["state"], "denied");
    let err = tokio::time::timeout(Duration::from_secs(20), held.outcome)
        .await
        .expect("the held statement finishes")
        .expect("join")
        .expect_err("denied");
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "42501");
    assert!(
        db.message().contains("order 5 is a real customer")
            || format!("{db:?}").contains("order 5 is a real customer"),
        "{db:?}"
    );
    assert_eq!(
        stack.pg.psql("shop", "SELECT count(*) FROM orders WHERE id = 5"),
        "1"
    );

    // Quorum: an UPDATE needs two different people; one person twice is 409.
    let held = hold_seen(
        &stack,
        &api,
        &alice,
        &agent,
        "UPDATE orders SET status = 'void' WHERE id = 7",
    )
    .await;
    let id = held.request_id.clone();
    let (status, voted) = api.vote(&alice, &id, "approve", json!({"reason": "one"})).await;
    assert_eq!(status, 200, "{voted}");
    assert_eq!(voted["request"]["state"], "pending");
    assert_eq!(voted["request"]["approvals_given"], 1);
    assert_eq!(voted["request"]["approvals_required"], 2);
    refused(
        &api.vote(&alice, &id, "approve", json!({})).await,
        409,
        "already_voted",
    );
    let (status, voted) = api.vote(&bob, &id, "approve", json!({"reason": "two"})).await;
    assert_eq!(status, 200, "{voted}");
    assert_eq!(voted["request"]["state"], "granted");
    assert_eq!(voted["request"]["approvals_given"], 2);
    let rows = tokio::time::timeout(Duration::from_secs(20), held.outcome)
        .await
        .expect("in time")
        .expect("join")
        .expect("the UPDATE ran");
    assert_eq!(rows, 1);
    assert_eq!(
        stack.pg.psql("shop", "SELECT status FROM orders WHERE id = 7"),
        "void"
    );

    // 403: a request only dba-leads may review is not shown to db-reviewers.
    let drop_held = hold_seen(&stack, &api, &alice, &agent, "DROP TABLE orders").await;
    refused(
        &api.get(
            Some(&alice),
            &format!("/api/v1/requests/{}", drop_held.request_id),
        )
        .await,
        403,
        "not_a_reviewer",
    );
    refused(
        &api.vote(&alice, &drop_held.request_id, "approve", json!({}))
            .await,
        403,
        "not_a_reviewer",
    );
    let (_, page) = api.get(Some(&alice), "/api/v1/requests").await;
    assert!(
        !page.to_string().contains(&drop_held.request_id),
        "not listed to db-reviewers: {page}"
    );

    // 403: self-approval, by a person who is both agent and reviewer.
    let dave = stack.token(&[
        "--sub", "oid-dave", "--name", "Dave", "--group", AGENTS, "--group", REVIEWERS,
    ]);
    let own = hold_seen(&stack, &api, &alice, &dave, "DELETE FROM orders WHERE id = 9").await;
    refused(
        &api.vote(&dave, &own.request_id, "approve", json!({})).await,
        403,
        "self_approval",
    );

    // 409: expired (TRUNCATE waits three seconds at most).
    let late = hold_seen(&stack, &api, &alice, &agent, "TRUNCATE orders").await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let got = api.vote(&alice, &late.request_id, "approve", json!({})).await;
    assert_eq!(got.0.as_u16(), 409, "{}", got.1);
    assert!(
        got.1["error"]["code"] == "expired" || got.1["error"]["code"] == "already_decided",
        "{}",
        got.1
    );

    // History and the session record.
    let (status, decided) = api.get(Some(&alice), "/api/v1/requests?state=decided").await;
    assert_eq!(status, 200);
    let states: Vec<&str> = decided["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(|r| r["state"].as_str())
        .collect();
    assert!(
        states.contains(&"granted") && states.contains(&"denied"),
        "{states:?}"
    );
    let granted = decided["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .find(|r| r["statement"]["text"] == "DELETE FROM orders WHERE id = 3")
        .expect("the first DELETE in the history");
    let session = granted["session_id"].as_str().expect("session id");
    let (status, record) = api
        .get(Some(&alice), &format!("/api/v1/sessions/{session}"))
        .await;
    assert_eq!(status, 200, "{record}");
    let kinds: Vec<&str> = record["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for kind in [
        "session_opened",
        "approval_requested",
        "approval_voted",
        "approval_granted",
        "statement_executed",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    refused(
        &api.get(Some(&alice), "/api/v1/sessions/01ARZ3NDEKTSV4RRFFQ69G5FAV")
            .await,
        404,
        "not_found",
    );
    let (status, sessions) = api.get(Some(&alice), "/api/v1/sessions?state=open").await;
    assert_eq!(status, 200, "{sessions}");

    // A kill, by a reviewer, of dave's session.
    let (status, killed) = api
        .post(
            Some(&alice),
            &format!(
                "/api/v1/sessions/{}/kill",
                own_session(&api, &alice, &own.request_id).await
            ),
            json!({"reason": "self-approval attempt"}),
        )
        .await;
    assert_eq!(status, 200, "{killed}");
    assert!(killed["sequence"].as_u64().is_some_and(|s| s > 0), "{killed}");

    // Who am I, health, metrics, the OpenAPI document.
    let (status, me) = api.get(Some(&alice), "/api/v1/me").await;
    assert_eq!(status, 200);
    assert_eq!(me["identity"]["subject"], "oid-alice");
    assert_eq!(me["via"], "bearer");
    let (status, health) = api.get(None, "/healthz").await;
    assert_eq!(status, 200, "{health}");
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("airlock_reviewer_votes_total{result=\"approve\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("airlock_reviewer_votes_total{result=\"deny\"} 1"),
        "{metrics}"
    );
    let (status, doc) = api.get(None, "/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/requests/{id}/approve"]["post"].is_object());

    // Every answer above was checked against that document; these at least.
    api.contract().await.assert_checked(&[
        "GET /api/v1/requests 200",
        "GET /api/v1/requests 400",
        "GET /api/v1/requests 401",
        "GET /api/v1/requests 403",
        "GET /api/v1/requests/{id} 200",
        "GET /api/v1/requests/{id} 400",
        "GET /api/v1/requests/{id} 403",
        "GET /api/v1/requests/{id} 404",
        "POST /api/v1/requests/{id}/approve 200",
        "POST /api/v1/requests/{id}/approve 400",
        "POST /api/v1/requests/{id}/approve 403",
        "POST /api/v1/requests/{id}/approve 409",
        "POST /api/v1/requests/{id}/deny 200",
        "GET /api/v1/sessions 200",
        "GET /api/v1/sessions/{id} 200",
        "GET /api/v1/sessions/{id} 404",
        "POST /api/v1/sessions/{id}/kill 200",
        "GET /api/v1/me 200",
        "GET /healthz 200",
    ]);

    // No token ever reached the reviewer's log.
    let log = stack.reviewer_log();
    for t in [&agent, &alice, &bob, &erin, &app, &dave] {
        assert!(!log.contains(t.as_str()), "a token in the log");
    }
}

async fn own_session(api: &Api, token: &str, request_id: &str) -> String {
    let (_, r) = api
        .get(Some(token), &format!("/api/v1/requests/{request_id}"))
        .await;
    r["session_id"].as_str().expect("session id").to_owned()
}

/// One server-sent event.
#[derive(Debug)]
struct Sse {
    id: String,
    event: String,
    data: Value,
}

/// Reads `/api/v1/events` frames, each checked against the document.
struct EventStream {
    response: reqwest::Response,
    buffer: String,
    contract: Arc<Contract>,
    /// Events checked so far.
    checked: usize,
}

impl EventStream {
    async fn open(api: &Api, token: &str, last_event_id: Option<&str>) -> EventStream {
        let contract = api.contract().await;
        let mut r = api
            .http
            .get(format!("{}/api/v1/events", api.base))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            r = r.header("last-event-id", id);
        }
        let response = r.send().await.expect("events");
        assert_eq!(response.status(), 200);
        assert!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"))
        );
        EventStream {
            response,
            buffer: String::new(),
            contract,
            checked: 0,
        }
    }

    async fn next(&mut self) -> Sse {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if event.is_empty() && data.is_empty() {
                    continue; // a keep-alive comment
                }
                let data = serde_json::from_str(&data).unwrap_or(Value::Null);
                let what = format!("GET /api/v1/events, a {event:?} event");
                self.contract
                    .conforms(&self.contract.event_schema(&event), &data, &what);
                if event != "error" {
                    assert_eq!(data["kind"], event.as_str(), "the event is named by its kind");
                    assert_eq!(data["sequence"].to_string(), id, "the event id is its sequence");
                }
                self.checked += 1;
                return Sse { id, event, data };
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.response.chunk())
                .await
                .expect("an event in time")
                .expect("stream")
                .expect("the stream goes on");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event about `request_id` of kind `event`.
    async fn until(&mut self, request_id: &str, event: &str) -> Sse {
        loop {
            let e = self.next().await;
            if e.event == event && e.data["request"]["id"] == request_id {
                return e;
            }
        }
    }
}

#[tokio::test]
async fn events_stream_requests_votes_and_outcomes_and_resume_with_last_event_id() {
    let stack = ReviewerStack::start(Options::default());
    let api = Api::new(&stack);
    let agent = stack.agent_token();
    let alice = stack.user_token(ALICE);

    refused(&api.get(None, "/api/v1/events").await, 401, "unauthenticated");
    refused(
        &api.get(Some(&stack.user_token(ERIN)), "/api/v1/events").await,
        403,
        "not_a_reviewer",
    );

    let mut events = EventStream::open(&api, &alice, None).await;
    let held = hold(&stack, &agent, "DELETE FROM orders WHERE id = 11").await;
    let requested = events.until(&held.request_id, "requested").await;
    assert_eq!(requested.data["kind"], "requested");
    assert_eq!(
        requested.data["request"]["statement"]["text"],
        "DELETE FROM orders WHERE id = 11"
    );
    assert_eq!(requested.data["request"]["identity"]["display_name"], "agent-7");
    let requested_seq: u64 = requested.id.parse().expect("the id is a sequence");
    assert_eq!(requested.data["sequence"], requested_seq);

    let (status, _) = api
        .vote(
            &alice,
            &held.request_id,
            "approve",
            json!({"reason": "stream test"}),
        )
        .await;
    assert_eq!(status, 200);
    let voted = events.until(&held.request_id, "voted").await;
    let granted = events.until(&held.request_id, "granted").await;
    assert!(voted.id.parse::<u64>().expect("seq") > requested_seq);
    assert!(granted.id.parse::<u64>().expect("seq") > voted.id.parse::<u64>().expect("seq"));
    assert_eq!(granted.data["request"]["state"], "granted");
    drop(events);

    // Resume after the request event: the request's current view comes back
    // first (it changed since), then the stream is live again.
    let mut resumed = EventStream::open(&api, &alice, Some(&requested.id)).await;
    let caught_up = resumed.until(&held.request_id, "updated").await;
    assert_eq!(caught_up.data["request"]["state"], "granted");
    assert!(caught_up.id.parse::<u64>().expect("seq") > requested_seq);
    let next = hold(&stack, &agent, "DELETE FROM orders WHERE id = 12").await;
    let live = resumed.until(&next.request_id, "requested").await;
    assert_eq!(live.data["request"]["state"], "pending");

    // Resuming after the newest event sends nothing old.
    let mut tail = EventStream::open(&api, &alice, Some(&live.id)).await;
    let (status, _) = api
        .vote(&alice, &next.request_id, "deny", json!({"reason": "no"}))
        .await;
    assert_eq!(status, 200);
    let first = tail.next().await;
    assert_eq!(first.data["request"]["id"], next.request_id.as_str(), "{first:?}");
    assert_ne!(first.event, "updated", "{first:?}");
    assert!(
        tail.checked > 0 && resumed.checked > 0,
        "events were checked against the document"
    );
    api.contract()
        .await
        .assert_checked(&["GET /api/v1/events 401", "GET /api/v1/events 403"]);
    let _ = binaries::LEADS;
}

/// Follows the browser sign-in by hand: login, the dev issuer's page, the
/// user's pick, the callback; then the cookie, and CSRF on a vote.
#[tokio::test]
async fn browser_sign_in_uses_pkce_and_a_strict_cookie_and_votes_need_csrf() {
    let stack = ReviewerStack::start(Options::default());
    let api = Api::new(&stack);
    let http = &api.http;

    // A browser with no session sees the sign-in page.
    let page = http.get(format!("{}/", api.base)).send().await.expect("inbox");
    assert_eq!(page.status(), 401);
    assert!(
        page.text()
            .await
            .expect("text")
            .contains("/auth/login?return_to=%2F")
    );

    let login = http
        .get(format!("{}/auth/login?return_to=/history", api.base))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), 303);
    let login_cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("login cookie")
        .to_owned();
    assert!(
        login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Lax"),
        "{login_cookie}"
    );
    let authorize = login.headers()["location"].to_str().expect("location").to_owned();
    let url = url::Url::parse(&authorize).expect("authorize URL");
    let param = |k: &str| {
        url.query_pairs()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    assert!(authorize.starts_with(&stack.issuer), "{authorize}");
    assert_eq!(param("client_id"), CLIENT_ID);
    assert_eq!(param("code_challenge_method"), "S256");
    assert_eq!(param("code_challenge").len(), 43);

    // The dev issuer's page lists the test users and says what it is.
    let picker = http.get(&authorize).send().await.expect("authorize page");
    assert_eq!(picker.status(), 200);
    let html = picker.text().await.expect("html");
    assert!(
        html.contains("Alice Reviewer") && html.contains("DEVELOPMENT AND TESTS ONLY"),
        "{html}"
    );

    // Picking Alice sends the browser back with a code.
    let mut form: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    form.push(("user".into(), ALICE.0.into()));
    let picked = http
        .post(url.as_str().split('?').next().expect("path"))
        .form(&form)
        .send()
        .await
        .expect("pick");
    assert_eq!(picked.status(), 303);
    let callback = picked.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(
        callback.starts_with(&format!("{}/auth/callback?", api.base)),
        "{callback}"
    );
    let code = url::Url::parse(&callback)
        .expect("callback URL")
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code");

    // Without the login cookie (another browser), the callback is refused.
    let foreign = http.get(&callback).send().await.expect("callback");
    assert_eq!(foreign.status(), 403);

    let login_value = login_cookie.split(';').next().expect("name=value").to_owned();
    let done = http
        .get(&callback)
        .header("cookie", &login_value)
        .send()
        .await
        .expect("callback");
    assert_eq!(done.status(), 200);
    let cookies: Vec<String> = done
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.starts_with("airlock_session="))
        .unwrap_or_else(|| panic!("a session cookie in {cookies:?}"));
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    assert!(
        !session.contains("Secure"),
        "plain HTTP on loopback: no Secure flag"
    );
    let body = done.text().await.expect("text");
    assert!(
        body.contains("url=/history"),
        "moves on to where sign-in began: {body}"
    );
    let session_value = session.split(';').next().expect("name=value").to_owned();

    // The code is single-use: the issuer refuses it a second time.
    let reuse = http
        .post(format!("{}/oauth2/v2.0/token", stack.issuer))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", &format!("{}/auth/callback", api.base)),
            ("client_id", CLIENT_ID),
            ("code_verifier", &"a".repeat(43)),
        ])
        .send()
        .await
        .expect("token");
    assert_eq!(reuse.status(), 400);
    let reuse: Value = reuse.json().await.expect("json");
    assert_eq!(reuse["error"], "invalid_grant");
    // And the callback cannot be replayed.
    let replay = http
        .get(&callback)
        .header("cookie", &login_value)
        .send()
        .await
        .expect("callback");
    assert_eq!(replay.status(), 401);

    // Signed in: the inbox greets Alice.
    let inbox = http
        .get(format!("{}/", api.base))
        .header("cookie", &session_value)
        .send()
        .await
        .expect("inbox");
    assert_eq!(inbox.status(), 200);
    let csp = inbox.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = inbox.text().await.expect("html");
    assert!(html.contains("Alice Reviewer"), "{html}");
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a CSRF token in the page")
        .to_owned();

    // A cookie vote without the CSRF token is refused; with it, it reaches
    // the control plane (which does not know this request).
    let agent = stack.agent_token();
    let held = hold_seen(
        &stack,
        &api,
        &stack.user_token(ALICE),
        &agent,
        "DELETE FROM orders WHERE id = 2",
    )
    .await;
    let held_id = held.request_id.clone();
    let url = format!("{}/api/v1/requests/{}/approve", api.base, held.request_id);
    let no_csrf = http
        .post(&url)
        .header("cookie", &session_value)
        .send()
        .await
        .expect("vote");
    assert_eq!(no_csrf.status(), 403);
    let body: Value = no_csrf.json().await.expect("json");
    assert_eq!(body["error"]["code"], "csrf");
    let cross = http
        .post(&url)
        .header("cookie", &session_value)
        .header("x-csrf-token", &csrf)
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("vote");
    assert_eq!(cross.status(), 403, "another origin");
    let ok = http
        .post(&url)
        .header("cookie", &session_value)
        .header("x-csrf-token", &csrf)
        .header("origin", &api.base)
        .send()
        .await
        .expect("vote");
    assert_eq!(ok.status(), 200, "{}", ok.text().await.unwrap_or_default());
    let rows = tokio::time::timeout(Duration::from_secs(20), held.outcome)
        .await
        .expect("in time")
        .expect("join")
        .expect("ran");
    assert_eq!(rows, 1);

    // The pages escape what agents send: a statement is hostile input.
    let hostile = hold_seen(
        &stack,
        &api,
        &stack.user_token(ALICE),
        &agent,
        "DELETE FROM orders WHERE id = 6 -- </pre><script>alert(1)</script>\u{202e}",
    )
    .await;
    let page = |path: String| {
        let http = http.clone();
        let cookie = session_value.clone();
        async move {
            let r = http
                .get(path)
                .header("cookie", cookie)
                .send()
                .await
                .expect("page");
            (r.status(), r.text().await.expect("html"))
        }
    };
    let (status, inbox) = page(format!("{}/", api.base)).await;
    assert_eq!(status, 200);
    assert!(inbox.contains(&hostile.request_id), "listed");
    assert!(!inbox.contains("<script>alert"), "{inbox}");
    assert!(
        inbox.contains("&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{inbox}"
    );
    assert!(inbox.contains("U+202E"), "the bidi override is made visible");
    let (status, one) = page(format!("{}/requests/{}", api.base, hostile.request_id)).await;
    assert_eq!(status, 200);
    assert!(
        !one.contains("<script>alert") && one.contains("id=\"approve\""),
        "{one}"
    );
    drop(hostile);
    let (status, history) = page(format!("{}/history", api.base)).await;
    assert_eq!(status, 200);
    assert!(history.contains("DELETE FROM orders WHERE id = 2"), "{history}");
    let (_, record) = api
        .get(
            Some(&stack.user_token(ALICE)),
            &format!("/api/v1/requests/{}", held_id),
        )
        .await;
    let (status, timeline) = page(format!(
        "{}/sessions/{}",
        api.base,
        record["session_id"].as_str().expect("session")
    ))
    .await;
    assert_eq!(status, 200);
    assert!(
        timeline.contains("approval_granted") && timeline.contains("statement_executed"),
        "{timeline}"
    );
    let (status, missing) = page(format!("{}/requests/01ARZ3NDEKTSV4RRFFQ69G5FAV", api.base)).await;
    assert_eq!(status, 404, "{missing}");

    // The form post of the web UI: same CSRF rule.
    let held = hold_seen(
        &stack,
        &api,
        &stack.user_token(ALICE),
        &agent,
        "DELETE FROM orders WHERE id = 4",
    )
    .await;
    let form_url = format!("{}/requests/{}/decide", api.base, held.request_id);
    let forged = http
        .post(&form_url)
        .header("cookie", &session_value)
        .form(&[("decision", "approve"), ("reason", "x")])
        .send()
        .await
        .expect("form");
    assert_eq!(forged.status(), 403);
    let voted = http
        .post(&form_url)
        .header("cookie", &session_value)
        .form(&[
            ("decision", "deny"),
            ("reason", "not today"),
            ("csrf", csrf.as_str()),
        ])
        .send()
        .await
        .expect("form");
    assert_eq!(voted.status(), 303);
    let err = tokio::time::timeout(Duration::from_secs(20), held.outcome)
        .await
        .expect("in time")
        .expect("join")
        .expect_err("denied");
    assert!(format!("{err:?}").contains("not today"), "{err:?}");

    // The session page's kill form: the same CSRF rule; the agent's session
    // ends, naming who ended it and why.
    let held = hold_seen(
        &stack,
        &api,
        &stack.user_token(ALICE),
        &agent,
        "DELETE FROM orders WHERE id = 5",
    )
    .await;
    let (_, record) = api
        .get(
            Some(&stack.user_token(ALICE)),
            &format!("/api/v1/requests/{}", held.request_id),
        )
        .await;
    let sid = record["session_id"].as_str().expect("session").to_owned();
    let (status, open) = page(format!("{}/sessions/{sid}", api.base)).await;
    assert_eq!(status, 200);
    assert!(
        open.contains("id=\"kill\""),
        "an open session offers the kill form: {open}"
    );
    let kill_url = format!("{}/sessions/{sid}/kill", api.base);
    let forged = http
        .post(&kill_url)
        .header("cookie", &session_value)
        .form(&[("reason", "x")])
        .send()
        .await
        .expect("form");
    assert_eq!(forged.status(), 403, "no CSRF token: refused");
    let killed = http
        .post(&kill_url)
        .header("cookie", &session_value)
        .form(&[("reason", "runaway agent"), ("csrf", csrf.as_str())])
        .send()
        .await
        .expect("form");
    assert_eq!(killed.status(), 303);
    assert_eq!(
        killed.headers()["location"].to_str().expect("location"),
        format!("/sessions/{sid}?killed=1")
    );
    let err = tokio::time::timeout(Duration::from_secs(20), held.outcome)
        .await
        .expect("in time")
        .expect("join")
        .expect_err("killed");
    let err = format!("{err:?}");
    assert!(
        err.contains("E57P01") && err.contains("Alice Reviewer") && err.contains("runaway agent"),
        "{err}"
    );

    // Sign out ends the session.
    let out = http
        .post(format!("{}/auth/logout", api.base))
        .header("cookie", &session_value)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), 303);
    let after = http
        .get(format!("{}/api/v1/me", api.base))
        .header("cookie", &session_value)
        .send()
        .await
        .expect("me");
    assert_eq!(after.status(), 401);
    assert!(
        !stack
            .reviewer_log()
            .contains(session_value.trim_start_matches("airlock_session="))
    );
}
