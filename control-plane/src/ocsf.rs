//! The log in OCSF (Open Cybersecurity Schema Framework) 1.3.0, the schema
//! Microsoft Sentinel and Splunk both ingest: what `export --format ocsf`
//! prints and `forward --format ocsf` sends. Pure: an export line (the
//! native JSON of one event, see `export`) in, OCSF records out.
//!
//! | Airlock event | OCSF class | activity |
//! |---|---|---|
//! | `session_opened` | Authentication (3002) | Logon (1), success |
//! | `session_closed` | Authentication (3002) | Logoff (2) |
//! | `statement_executed`, each of `statements_executed` | Datastore Activity (6005) | by what the statement does: Query (4) reads, Write (5) inserts and copies, Update (2), Delete (7) deletes, truncates and drops, Create (6), else Other (99); success, or failure with PostgreSQL's SQLSTATE |
//! | `statement_refused` | Datastore Activity (6005) | as above; failure, `status_detail` the cause |
//! | approvals, grants, kills | Datastore Activity (6005) | Other (99), `activity_name` saying which |
//! | `policy_loaded`, `checkpoint` | Application Lifecycle (6002) | Other (99), `app` the writing component |
//!
//! Where Airlock fields go: the identity to `actor.user` (or `user` for
//! Authentication): `uid` the Entra object id, `name`, `type` (User or
//! Application), `groups`, `org.uid` the tenant, `uid_alt` the client
//! application; the session id to `actor.session.uid` (`session.uid`);
//! the client's address to `src_endpoint`; the proxy to `dst_endpoint`;
//! the connection to `database.name`; the statement to
//! `query_info.query_string` (cut at OCSF's 65,535 characters; the SHA-256
//! of the whole text, hex, to `query_info.uid`), its first
//! table to `table.name`; the request id to `metadata.correlation_uid`
//! (else the session id); the event id to `metadata.uid` (a grouped
//! statement's own id), the stream sequence to `metadata.sequence`, the
//! subject to `metadata.log_name`, the event's kind to
//! `metadata.event_code`. The whole native event is kept under
//! `unmapped.airlock`, so nothing is lost in the mapping. A statement's
//! identity comes from its session's opening (looked up when the reader
//! started after it); a record whose session opening cannot be found has
//! `actor.session` only and `src_endpoint.name` "unknown" (OCSF requires
//! the endpoint). For votes and decisions, `actor.user` is the reviewer and
//! `src_endpoint` the agent's client (where the statement came from).

use std::num::NonZeroUsize;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The OCSF version every record claims.
pub const VERSION: &str = "1.3.0";

/// OCSF caps `query_info.query_string`; the whole text stays in
/// `unmapped.airlock`.
const MAX_QUERY_CHARS: usize = 65_535;

/// What a session's opening says, for the records of its statements.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionFacts {
    pub identity: Value,
    pub client: Value,
    pub connection: String,
    pub proxy_id: String,
}

impl SessionFacts {
    /// From a `session_opened` event (proto JSON).
    pub fn from_opened(opened: &Value) -> SessionFacts {
        SessionFacts {
            identity: opened["identity"].clone(),
            client: opened["client"].clone(),
            connection: opened["connection"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            proxy_id: opened["proxy_id"].as_str().unwrap_or_default().to_owned(),
        }
    }
}

/// Sessions seen, most recent first (bounded).
#[derive(Debug)]
pub struct Sessions {
    known: lru::LruCache<String, SessionFacts>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            known: lru::LruCache::new(NonZeroUsize::new(100_000).expect("non-zero")),
        }
    }
}

impl Sessions {
    pub fn get(&mut self, session: &str) -> Option<&SessionFacts> {
        self.known.get(session)
    }

    pub fn put(&mut self, session: &str, facts: SessionFacts) {
        self.known.put(session.to_owned(), facts);
    }

    /// Learns from `line` a session's opening: only on the session's own
    /// subject, and the first one stands (a later "opening" cannot
    /// change whom a session's statements are attributed to).
    pub fn learn(&mut self, line: &Value) {
        if line["kind"] == "session_opened"
            && let Some(session) = line["event"]["session_id"].as_str().filter(|s| !s.is_empty())
            && line["subject"].as_str() == Some(format!("airlock.v1.session.{session}").as_str())
            && !self.known.contains(session)
        {
            self.put(
                session,
                SessionFacts::from_opened(&line["event"]["session_opened"]),
            );
        }
    }
}

fn millis(rfc3339: &Value) -> Option<i64> {
    let t = OffsetDateTime::parse(rfc3339.as_str()?, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// An OCSF user from an Airlock identity (proto JSON).
fn user(identity: &Value) -> Value {
    let mut u = Map::new();
    let s = |k: &str| identity[k].as_str().filter(|v| !v.is_empty());
    if let Some(v) = s("subject") {
        u.insert("uid".into(), json!(v));
    }
    if let Some(v) = s("display_name") {
        u.insert("name".into(), json!(v));
    }
    if let Some(v) = s("client_app_id") {
        u.insert("uid_alt".into(), json!(v));
    }
    match identity["kind"].as_str() {
        Some("KIND_USER") => {
            u.insert("type_id".into(), json!(1));
            u.insert("type".into(), json!("User"));
        }
        Some("KIND_APP") => {
            u.insert("type_id".into(), json!(99));
            u.insert("type".into(), json!("Application"));
        }
        _ => {}
    }
    if let Some(t) = s("tenant_id") {
        u.insert("org".into(), json!({"uid": t}));
    }
    if let Some(groups) = identity["groups"].as_array().filter(|g| !g.is_empty()) {
        let groups: Vec<Value> = groups
            .iter()
            .map(|g| {
                let mut o = Map::new();
                if let Some(id) = g["id"].as_str() {
                    o.insert("uid".into(), json!(id));
                }
                if let Some(n) = g["name"].as_str().filter(|n| !n.is_empty()) {
                    o.insert("name".into(), json!(n));
                }
                Value::Object(o)
            })
            .collect();
        u.insert("groups".into(), Value::Array(groups));
    }
    Value::Object(u)
}

/// `ip:port` (or `[v6]:port`) as an OCSF network endpoint.
fn endpoint(address: &Value) -> Value {
    let Some(a) = address.as_str().filter(|a| !a.is_empty()) else {
        return json!({"name": "unknown"});
    };
    match a.parse::<std::net::SocketAddr>() {
        Ok(sa) => json!({"ip": sa.ip().to_string(), "port": sa.port()}),
        Err(_) => json!({"name": a}),
    }
}

/// The OCSF activity of a statement, from what the verdict says it does.
fn statement_activity(verdict: &Value) -> (u32, &'static str) {
    let kinds: Vec<&str> = verdict["effects"]
        .as_array()
        .map(|e| e.iter().filter_map(|x| x["kind"].as_str()).collect())
        .unwrap_or_default();
    let has = |k: &[&str]| kinds.iter().any(|x| k.contains(x));
    if has(&["DELETE", "TRUNCATE", "DROP"]) {
        (7, "Delete")
    } else if has(&["UPDATE", "MERGE"]) {
        (2, "Update")
    } else if has(&["INSERT", "COPY"]) {
        (5, "Write")
    } else if has(&["CREATE", "ALTER"]) {
        (6, "Create")
    } else if has(&["SELECT"]) {
        (4, "Query")
    } else {
        (99, "Other")
    }
}

fn first_table(verdict: &Value) -> Option<String> {
    verdict["effects"]
        .as_array()?
        .iter()
        .find_map(|e| e["tables"].as_array()?.first()?.as_str().map(str::to_owned))
}

fn title(kind: &str) -> String {
    kind.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

struct Base<'a> {
    line: &'a Value,
    uid: String,
    time: Option<i64>,
    correlation: Option<String>,
}

impl Base<'_> {
    fn record(
        &self,
        class: (u32, &str, u32, &str),
        activity: (u32, &str),
        severity: u32,
    ) -> Map<String, Value> {
        let (class_uid, class_name, category_uid, category_name) = class;
        let e = &self.line["event"];
        let mut product = Map::new();
        product.insert("name".into(), json!("Airlock"));
        product.insert("vendor_name".into(), json!("Airlock"));
        if let Some(v) = e["source"]["version"].as_str().filter(|v| !v.is_empty()) {
            product.insert("version".into(), json!(v));
        }
        let mut metadata = Map::new();
        metadata.insert("version".into(), json!(VERSION));
        metadata.insert("product".into(), Value::Object(product));
        metadata.insert("uid".into(), json!(self.uid));
        metadata.insert("event_code".into(), self.line["kind"].clone());
        if let Some(s) = self.line["sequence"].as_u64() {
            metadata.insert("sequence".into(), json!(s));
        }
        if let Some(s) = self.line["subject"].as_str() {
            metadata.insert("log_name".into(), json!(s));
        }
        if let Some(t) = millis(&self.line["stored_at"]) {
            metadata.insert("logged_time".into(), json!(t));
        }
        if let Some(c) = self.correlation.as_deref().filter(|c| !c.is_empty()) {
            metadata.insert("correlation_uid".into(), json!(c));
        }
        let severity_name = match severity {
            1 => "Informational",
            2 => "Low",
            3 => "Medium",
            4 => "High",
            _ => "Unknown",
        };
        let mut r = Map::new();
        r.insert("class_uid".into(), json!(class_uid));
        r.insert("class_name".into(), json!(class_name));
        r.insert("category_uid".into(), json!(category_uid));
        r.insert("category_name".into(), json!(category_name));
        r.insert("activity_id".into(), json!(activity.0));
        r.insert("activity_name".into(), json!(activity.1));
        r.insert(
            "type_uid".into(),
            json!(u64::from(class_uid) * 100 + u64::from(activity.0)),
        );
        r.insert("type_name".into(), json!(format!("{class_name}: {}", activity.1)));
        r.insert(
            "time".into(),
            json!(self.time.or_else(|| millis(&self.line["stored_at"])).unwrap_or(0)),
        );
        r.insert("severity_id".into(), json!(severity));
        r.insert("severity".into(), json!(severity_name));
        r.insert("metadata".into(), Value::Object(metadata));
        r.insert("unmapped".into(), json!({"airlock": self.line}));
        r
    }
}

const AUTHENTICATION: (u32, &str, u32, &str) = (3002, "Authentication", 3, "Identity & Access Management");
const DATASTORE: (u32, &str, u32, &str) = (6005, "Datastore Activity", 6, "Application Activity");
const LIFECYCLE: (u32, &str, u32, &str) = (6002, "Application Lifecycle", 6, "Application Activity");

fn status(r: &mut Map<String, Value>, ok: Option<bool>, code: Option<&str>, detail: Option<&str>) {
    let (id, name) = match ok {
        Some(true) => (1, "Success"),
        Some(false) => (2, "Failure"),
        None => (99, "Other"),
    };
    r.insert("status_id".into(), json!(id));
    r.insert("status".into(), json!(name));
    if let Some(c) = code.filter(|c| !c.is_empty()) {
        r.insert("status_code".into(), json!(c));
    }
    if let Some(d) = detail.filter(|d| !d.is_empty()) {
        r.insert("status_detail".into(), json!(d));
    }
}

/// Actor, endpoints and database of a datastore record, from the session.
fn datastore_context(
    r: &mut Map<String, Value>,
    source: &str,
    session: &str,
    facts: Option<&SessionFacts>,
    actor: Option<&Value>,
) {
    let mut a = Map::new();
    if let Some(identity) = actor.or(facts.map(|f| &f.identity)).filter(|i| i.is_object()) {
        a.insert("user".into(), user(identity));
    }
    if !session.is_empty() {
        a.insert("session".into(), json!({"uid": session}));
    }
    if let Some(app) = facts
        .filter(|_| actor.is_none())
        .and_then(|f| f.client["application_name"].as_str())
        .filter(|a| !a.is_empty())
    {
        a.insert("app_name".into(), json!(app));
    }
    if a.is_empty() {
        // Nothing of a session: the component that wrote the event.
        a.insert("app_name".into(), json!(source));
    }
    r.insert("actor".into(), Value::Object(a));
    r.insert(
        "src_endpoint".into(),
        facts.map_or_else(|| json!({"name": "unknown"}), |f| endpoint(&f.client["address"])),
    );
    if let Some(f) = facts {
        if !f.proxy_id.is_empty() {
            r.insert(
                "dst_endpoint".into(),
                json!({"svc_name": "airlock-proxy", "name": f.proxy_id}),
            );
        }
        if !f.connection.is_empty() {
            r.insert(
                "database".into(),
                json!({"name": f.connection, "type_id": 1, "type": "Relational"}),
            );
        }
    }
    if !r.contains_key("database") {
        // OCSF asks for the datastore; unknown without the session.
        r.insert(
            "database".into(),
            json!({"name": "unknown", "type_id": 0, "type": "Unknown"}),
        );
    }
}

fn statement_fields(r: &mut Map<String, Value>, statement: &Value, verdict: &Value) {
    if let Some(text) = statement["text"].as_str() {
        use sha2::Digest;
        let uid = hex::encode(sha2::Sha256::digest(text.as_bytes()));
        let cut: String = text.chars().take(MAX_QUERY_CHARS).collect();
        r.insert("query_info".into(), json!({"query_string": cut, "uid": uid}));
    }
    if let Some(t) = first_table(verdict) {
        r.insert("table".into(), json!({"name": t}));
    }
}

/// The OCSF records for one export line, with what `sessions` knows of its
/// session (the caller looks up openings it has not seen). Only a
/// `trusted` line (its writer checked, or no check asked for) teaches
/// `sessions` anything.
pub fn records(line: &Value, sessions: &mut Sessions, trusted: bool) -> Vec<Value> {
    if trusted {
        sessions.learn(line);
    }
    let e = &line["event"];
    let kind = line["kind"].as_str().unwrap_or("");
    let id = e["id"].as_str().unwrap_or("").to_owned();
    let session = e["session_id"].as_str().unwrap_or("").to_owned();
    let request = e["request_id"].as_str().filter(|r| !r.is_empty());
    let facts = sessions.get(&session).cloned();
    let base = |uid: String, time: Option<i64>, correlation: Option<&str>| Base {
        line,
        uid,
        time,
        correlation: Some(correlation.unwrap_or(&session).to_owned()),
    };
    let time = millis(&e["time"]);
    let body = &e[kind];
    let source = e["source"]["id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("airlock");
    match kind {
        "policy_loaded" | "checkpoint" => {
            // About Airlock itself, not a session: Application Lifecycle.
            let mut r = base(id, time, None).record(LIFECYCLE, (99, &title(kind)), 1);
            let mut app = Map::new();
            app.insert("name".into(), json!("Airlock"));
            app.insert("vendor_name".into(), json!("Airlock"));
            app.insert("uid".into(), json!(source));
            if let Some(v) = e["source"]["version"].as_str().filter(|v| !v.is_empty()) {
                app.insert("version".into(), json!(v));
            }
            r.insert("app".into(), Value::Object(app));
            status(&mut r, None, None, None);
            r.insert("message".into(), json!(format!("{} by {source}", title(kind))));
            vec![Value::Object(r)]
        }
        "session_opened" | "session_closed" => {
            let opened = kind == "session_opened";
            let activity = if opened { (1, "Logon") } else { (2, "Logoff") };
            let mut r = base(id, time, None).record(AUTHENTICATION, activity, 1);
            let identity = if opened {
                &body["identity"]
            } else {
                facts.as_ref().map_or(&Value::Null, |f| &f.identity)
            };
            r.insert("user".into(), user(identity));
            r.insert("session".into(), json!({"uid": session}));
            r.insert("auth_protocol_id".into(), json!(6));
            r.insert("auth_protocol".into(), json!("OAUTH 2.0"));
            if let Some(f) = &facts {
                r.insert("src_endpoint".into(), endpoint(&f.client["address"]));
                if !f.proxy_id.is_empty() {
                    r.insert(
                        "dst_endpoint".into(),
                        json!({"svc_name": "airlock-proxy", "name": f.proxy_id}),
                    );
                }
            }
            if opened {
                status(&mut r, Some(true), None, None);
                r.insert("message".into(), json!(format!("session {session} opened")));
            } else {
                let cause = body["cause"].as_str().unwrap_or("CAUSE_UNSPECIFIED");
                status(&mut r, None, None, Some(cause));
                r.insert(
                    "message".into(),
                    json!(format!("session {session} closed ({cause})")),
                );
            }
            vec![Value::Object(r)]
        }
        "statement_executed" | "statements_executed" => {
            let statements: Vec<(String, Option<i64>, &Value)> = if kind == "statement_executed" {
                vec![(id.clone(), time, body)]
            } else {
                body["statements"]
                    .as_array()
                    .map(|list| {
                        list.iter()
                            .enumerate()
                            .map(|(i, s)| {
                                let uid = s["id"]
                                    .as_str()
                                    .map_or_else(|| format!("{id}/{i}"), str::to_owned);
                                (uid, millis(&s["time"]).or(time), &s["statement"])
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            statements
                .into_iter()
                .map(|(uid, t, s)| {
                    let verdict = &s["verdict"];
                    let req = s["request_id"].as_str().filter(|r| !r.is_empty()).or(request);
                    let mut r = base(uid, t, req).record(DATASTORE, statement_activity(verdict), 1);
                    datastore_context(&mut r, source, &session, facts.as_ref(), None);
                    statement_fields(&mut r, &s["statement"], verdict);
                    let failed = s["error_sqlstate"].as_str().filter(|c| !c.is_empty());
                    status(
                        &mut r,
                        Some(failed.is_none()),
                        failed,
                        s["error_message"].as_str(),
                    );
                    let tag = s["command_tag"].as_str().unwrap_or("");
                    r.insert(
                        "message".into(),
                        json!(format!("statement ran in session {session}: {tag}")),
                    );
                    Value::Object(r)
                })
                .collect()
        }
        "statement_refused" => {
            let verdict = &body["verdict"];
            let mut r = base(id, time, request).record(DATASTORE, statement_activity(verdict), 3);
            datastore_context(&mut r, source, &session, facts.as_ref(), None);
            statement_fields(&mut r, &body["statement"], verdict);
            let cause = body["cause"].as_str().unwrap_or("CAUSE_UNSPECIFIED");
            status(&mut r, Some(false), body["sqlstate"].as_str(), Some(cause));
            let msg = body["message"].as_str().unwrap_or("");
            r.insert(
                "message".into(),
                json!(format!("statement refused ({cause}): {msg}")),
            );
            vec![Value::Object(r)]
        }
        _ => {
            // Approvals, grants, kills, policies, checkpoints.
            let break_glass = body["break_glass"].as_bool() == Some(true) || body["break_glass"].is_object();
            let severity = match kind {
                "approval_denied" | "session_kill_requested" | "grant_revoked" => 3,
                _ if break_glass => 4,
                _ => 1,
            };
            let mut r = base(id, time, request).record(DATASTORE, (99, &title(kind)), severity);
            // Who acted: the requester for a request (in its session); the
            // reviewer, the approver, the person who killed or revoked
            // otherwise (not the agent's session).
            let first_approver = &body["approvers"][0]["reviewer"];
            let actor = match kind {
                "approval_voted" | "approval_denied" => Some(&body["reviewer"]),
                "approval_granted" if first_approver.is_object() => Some(first_approver),
                "session_kill_requested" => Some(&body["requested_by"]),
                "grant_revoked" => Some(&body["revoked_by"]),
                "slack_linked" => Some(&body["identity"]),
                "slack_unlinked" => Some(&body["by"]),
                _ => None,
            };
            match actor.filter(|a| a.is_object()) {
                // The person acted, not the agent's session; the request's
                // connection and client stay.
                Some(person) => datastore_context(&mut r, source, "", facts.as_ref(), Some(person)),
                None => datastore_context(&mut r, source, &session, facts.as_ref(), None),
            }
            if kind == "approval_requested" {
                statement_fields(&mut r, &body["statement"], &body["verdict"]);
                if let Some(c) = body["connection"]["name"].as_str() {
                    r.insert(
                        "database".into(),
                        json!({"name": c, "type_id": 1, "type": "Relational"}),
                    );
                }
                if let Some(src) = body["client"].get("address") {
                    r.insert("src_endpoint".into(), endpoint(src));
                }
            }
            let ok = match kind {
                "approval_granted" => Some(true),
                "approval_denied" | "approval_expired" | "approval_cancelled" => Some(false),
                _ => None,
            };
            status(&mut r, ok, None, body["reason"].as_str());
            let what = if break_glass {
                format!("BREAK-GLASS {}", title(kind))
            } else {
                title(kind)
            };
            let approvers: Vec<&str> = body["approvers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| {
                            x["reviewer"]["display_name"]
                                .as_str()
                                .or(x["reviewer"]["subject"].as_str())
                        })
                        .collect()
                })
                .unwrap_or_default();
            let what = if approvers.is_empty() {
                what
            } else {
                format!("{what} by {}", approvers.join(", "))
            };
            let message = match request {
                Some(req) => format!("{what}: request {req}"),
                None => what,
            };
            r.insert("message".into(), json!(message));
            vec![Value::Object(r)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kind: &str, body: Value) -> Value {
        json!({
            "sequence": 7, "subject": "airlock.v1.session.s1", "stored_at": "2026-12-01T10:00:00.5Z",
            "sha256": "ab", "kind": kind,
            "event": {"id": "01E", "time": "2026-12-01T10:00:00.25Z", "session_id": "s1",
                      "source": {"version": "0.1.0"}, kind: body}
        })
    }

    fn opened() -> Value {
        line(
            "session_opened",
            json!({"identity": {"subject": "oid-agent-7", "display_name": "agent-7", "kind": "KIND_APP",
                                "tenant_id": "t1", "client_app_id": "app-1",
                                "groups": [{"id": "g1", "name": "db-agents"}]},
                   "client": {"address": "10.0.0.5:51000", "application_name": "psql"},
                   "connection": {"name": "prod"}, "proxy_id": "proxy-1"}),
        )
    }

    #[test]
    fn a_session_opening_is_an_authentication_logon_with_the_agents_identity() {
        let mut sessions = Sessions::default();
        let r = records(&opened(), &mut sessions, true);
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r["class_uid"], 3002);
        assert_eq!(r["type_uid"], 300201);
        assert_eq!(r["time"], 1_796_119_200_250i64);
        assert_eq!(r["user"]["uid"], "oid-agent-7");
        assert_eq!(r["user"]["type"], "Application");
        assert_eq!(r["user"]["org"]["uid"], "t1");
        assert_eq!(r["user"]["groups"][0]["name"], "db-agents");
        assert_eq!(r["src_endpoint"], json!({"ip": "10.0.0.5", "port": 51000}));
        assert_eq!(r["metadata"]["uid"], "01E");
        assert_eq!(r["metadata"]["version"], VERSION);
        assert_eq!(r["unmapped"]["airlock"]["kind"], "session_opened");
    }

    #[test]
    fn grouped_statements_are_one_record_each_with_the_sessions_identity() {
        let mut sessions = Sessions::default();
        records(&opened(), &mut sessions, true);
        let group = line(
            "statements_executed",
            json!({"statements": [
                {"id": "01A", "time": "2026-12-01T10:00:01Z", "statement": {
                    "statement": {"text": "SELECT 1", "sha256": "c2hh"},
                    "verdict": {"effects": [{"kind": "SELECT", "tables": ["public.orders"]}]},
                    "command_tag": "SELECT 1"}},
                {"id": "01B", "statement": {
                    "statement": {"text": "DELETE FROM t"},
                    "verdict": {"effects": [{"kind": "DELETE", "tables": ["public.t"]}]},
                    "error_sqlstate": "23503", "error_message": "fk"}}
            ]}),
        );
        let r = records(&group, &mut sessions, true);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0]["metadata"]["uid"], "01A");
        assert_eq!(r[0]["activity_id"], 4);
        assert_eq!(r[0]["actor"]["user"]["uid"], "oid-agent-7");
        assert_eq!(r[0]["actor"]["session"]["uid"], "s1");
        assert_eq!(r[0]["database"]["name"], "prod");
        assert_eq!(r[0]["table"]["name"], "public.orders");
        assert_eq!(r[0]["query_info"]["query_string"], "SELECT 1");
        assert_eq!(r[0]["status_id"], 1);
        assert_eq!(r[1]["metadata"]["uid"], "01B");
        assert_eq!(r[1]["activity_id"], 7);
        assert_eq!(r[1]["status_id"], 2);
        assert_eq!(r[1]["status_code"], "23503");
    }

    #[test]
    fn a_statement_of_an_unknown_session_still_has_its_session_and_the_required_fields() {
        let mut sessions = Sessions::default();
        let refused = line(
            "statement_refused",
            json!({"statement": {"text": "DROP TABLE t"}, "verdict": {"effects": [{"kind": "DROP"}]},
                   "cause": "CAUSE_POLICY", "message": "no", "sqlstate": "42501"}),
        );
        let r = &records(&refused, &mut sessions, true)[0];
        assert_eq!(r["actor"], json!({"session": {"uid": "s1"}}));
        assert_eq!(r["src_endpoint"], json!({"name": "unknown"}));
        assert_eq!(r["status_detail"], "CAUSE_POLICY");
        assert_eq!(r["severity_id"], 3);
        for k in [
            "activity_id",
            "actor",
            "category_uid",
            "class_uid",
            "metadata",
            "severity_id",
            "src_endpoint",
            "time",
            "type_uid",
        ] {
            assert!(r.get(k).is_some(), "{k}");
        }
    }

    #[test]
    fn a_later_opening_or_one_on_another_subject_does_not_change_attribution() {
        let mut sessions = Sessions::default();
        let mut forged = opened();
        forged["subject"] = json!("airlock.v1.request.r1");
        forged["event"]["session_opened"]["identity"]["subject"] = json!("oid-alice");
        records(&forged, &mut sessions, true);
        assert!(sessions.get("s1").is_none(), "not on the session's subject");
        records(&opened(), &mut sessions, true);
        let mut again = opened();
        again["event"]["session_opened"]["identity"]["subject"] = json!("oid-alice");
        records(&again, &mut sessions, true);
        assert_eq!(
            sessions.get("s1").unwrap().identity["subject"],
            "oid-agent-7",
            "the first stands"
        );
        let mut untrusted = Sessions::default();
        records(&opened(), &mut untrusted, false);
        assert!(
            untrusted.get("s1").is_none(),
            "an untrusted opening teaches nothing"
        );
    }

    #[test]
    fn a_kill_is_the_killers_act() {
        let mut sessions = Sessions::default();
        records(&opened(), &mut sessions, true);
        let kill = line(
            "session_kill_requested",
            json!({"requested_by": {"subject": "oid-bob", "kind": "KIND_USER"}, "reason": "runaway"}),
        );
        let r = &records(&kill, &mut sessions, true)[0];
        assert_eq!(r["actor"]["user"]["uid"], "oid-bob");
        assert_eq!(
            r["src_endpoint"]["ip"], "10.0.0.5",
            "where the killed session came from"
        );
        assert_eq!(r["severity_id"], 3);
    }

    #[test]
    fn a_break_glass_approval_is_high_and_says_so() {
        let mut sessions = Sessions::default();
        let granted = line(
            "approval_granted",
            json!({"break_glass": true, "approvers": [{"reviewer": {"subject": "oid-dana", "display_name": "Dana", "kind": "KIND_USER"}}]}),
        );
        let r = &records(&granted, &mut sessions, true)[0];
        assert_eq!(r["severity_id"], 4);
        assert_eq!(r["activity_id"], 99);
        assert_eq!(r["activity_name"], "Approval Granted");
        assert!(
            r["message"]
                .as_str()
                .unwrap()
                .starts_with("BREAK-GLASS Approval Granted by Dana")
        );
        assert_eq!(
            r["actor"]["user"]["uid"], "oid-dana",
            "the approver acted, not the agent"
        );
        assert!(r["actor"].get("session").is_none());
    }
}
