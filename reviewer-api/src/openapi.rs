//! The OpenAPI 3.1 document served at `/api/v1/openapi.json`, written by
//! hand next to the handlers. A test checks that every route of the REST
//! router is in it and nothing else, with the error codes the server uses.

use serde_json::{Value, json};

use crate::error::Code;

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn ok_json(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn id_param(what: &str) -> Value {
    json!({"name": "id", "in": "path", "required": true, "description": what,
           "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}})
}

/// The refusals every authenticated route can answer with.
fn common_errors() -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("400".into(), error_response("Bad input (`invalid_argument`)."));
    m.insert(
        "401".into(),
        error_response("No token, or a token refused (`unauthenticated`)."),
    );
    m.insert(
        "403".into(),
        error_response("Not in a reviewer group (`not_a_reviewer`), or a browser request without its CSRF token (`csrf`)."),
    );
    m.insert(
        "503".into(),
        error_response("The control plane is unreachable or catching up (`unavailable`)."),
    );
    m
}

fn responses(ok: (&str, Value), extra: &[(&str, &str)]) -> Value {
    let mut m = common_errors();
    m.insert(ok.0.into(), ok.1);
    for (status, description) in extra {
        m.insert((*status).into(), error_response(description));
    }
    Value::Object(m)
}

fn vote_operation(decision: &str) -> Value {
    json!({
        "summary": format!("Vote to {decision} a held statement"),
        "description": "Passes the vote to the control plane with the caller's token; the control plane judges it. \
                        Send `statement_sha256` as shown so the vote binds to those exact bytes.",
        "security": [{"bearer": []}, {"session": []}],
        "parameters": [id_param("request id")],
        "requestBody": {"required": false, "content": {"application/json": {"schema": reference("VoteBody")}}},
        "responses": responses(
            ("200", ok_json("The vote was recorded.", reference("VoteResult"))),
            &[
                ("403", "Not a reviewer of this request (`not_a_reviewer`), self-approval (`self_approval`), an app identity (`app_identity`), or a missing CSRF token (`csrf`)."),
                ("404", "No such request (`not_found`)."),
                ("409", "Already decided (`already_decided`), expired (`expired`), already voted (`already_voted`), or the digest does not match (`digest_mismatch`)."),
            ],
        ),
    })
}

pub fn document() -> Value {
    let security = json!([{"bearer": []}, {"session": []}]);
    let codes: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Airlock reviewer API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "See who wants to run exactly what, and approve or deny. Every call is passed to the \
                            Airlock control plane with the caller's own token; the control plane decides."
        },
        "paths": {
            "/api/v1/requests": {"get": {
                "summary": "List approval requests the caller may review, newest first",
                "security": security,
                "parameters": [
                    {"name": "state", "in": "query", "description": "Comma-separated: pending, granted, denied, expired, cancelled, or decided (every final state). Default: all.",
                     "schema": {"type": "string"}},
                    {"name": "connection", "in": "query", "schema": {"type": "string"}},
                    {"name": "page_size", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {"name": "page_token", "in": "query", "schema": {"type": "string"}}
                ],
                "responses": responses(("200", ok_json("A page of requests.", reference("RequestPage"))), &[]),
            }},
            "/api/v1/requests/{id}": {"get": {
                "summary": "One approval request",
                "security": security,
                "parameters": [id_param("request id")],
                "responses": responses(("200", ok_json("The request.", reference("Request"))), &[("404", "No such request (`not_found`).")]),
            }},
            "/api/v1/requests/{id}/approve": {"post": vote_operation("approve")},
            "/api/v1/requests/{id}/deny": {"post": vote_operation("deny")},
            "/api/v1/sessions": {"get": {
                "summary": "List recorded sessions, newest first",
                "security": security,
                "parameters": [
                    {"name": "state", "in": "query", "description": "open, closed, or both comma-separated", "schema": {"type": "string"}},
                    {"name": "connection", "in": "query", "schema": {"type": "string"}},
                    {"name": "subject", "in": "query", "description": "Object id of the identity", "schema": {"type": "string"}},
                    {"name": "page_size", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {"name": "page_token", "in": "query", "schema": {"type": "string"}}
                ],
                "responses": responses(("200", ok_json("A page of sessions.", reference("SessionPage"))), &[]),
            }},
            "/api/v1/sessions/{id}": {"get": {
                "summary": "The whole recorded session: summary, timeline, requests",
                "security": security,
                "parameters": [id_param("session id")],
                "responses": responses(("200", ok_json("The session record.", reference("Session"))), &[("404", "No such session (`not_found`).")]),
            }},
            "/api/v1/sessions/{id}/kill": {"post": {
                "summary": "End a session (the proxy holding it closes it)",
                "security": security,
                "parameters": [id_param("session id")],
                "requestBody": {"required": false, "content": {"application/json": {"schema": reference("KillBody")}}},
                "responses": responses(
                    ("200", ok_json("The kill was recorded.", json!({"type": "object", "required": ["event_id", "sequence"],
                        "properties": {"event_id": {"type": "string"}, "sequence": {"type": "integer"}}}))),
                    &[("404", "No such session (`not_found`).")],
                ),
            }},
            "/api/v1/events": {"get": {
                "summary": "Request changes as server-sent events",
                "description": "Event types: requested, voted, granted, denied, expired, cancelled, and updated (catch-up \
                                views after a resume); `error` then the end of the stream when the control plane ends it. \
                                Each event's id is a stream sequence: reconnect with `Last-Event-ID` (or `?after=`) to \
                                resume. Data is a JSON `WatchEvent`.",
                "security": security,
                "parameters": [
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                    {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}}
                ],
                "responses": responses(("200", json!({"description": "An event stream.",
                    "content": {"text/event-stream": {"schema": reference("WatchEvent")}}})), &[]),
            }},
            "/api/v1/me": {"get": {
                "summary": "The verified caller",
                "security": security,
                "responses": responses(("200", ok_json("Who the token or session belongs to.", json!({"type": "object",
                    "properties": {"identity": reference("Identity"), "via": {"enum": ["bearer", "session"]}}}))), &[]),
            }},
            "/api/v1/openapi.json": {"get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
            }},
            "/healthz": {"get": {
                "summary": "200 while the control plane is reachable, else 503",
                "security": [],
                "responses": {
                    "200": ok_json("Healthy.", reference("Health")),
                    "503": ok_json("The control plane is unreachable.", reference("Health")),
                },
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics",
                "security": [],
                "responses": {"200": {"description": "OpenMetrics text format 1.0.0", "content": {"application/openmetrics-text": {}}}},
            }},
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "An access token from the configured issuer (Entra ID) for `identity.audience`."},
                "session": {"type": "apiKey", "in": "cookie", "name": "airlock_session",
                            "description": "Browser session after OIDC sign-in (`__Host-airlock_session` under HTTPS). \
                                            State-changing requests must also send `X-CSRF-Token`."}
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"enum": codes}, "message": {"type": "string"}}}}},
                "VoteBody": {"type": "object", "additionalProperties": false, "properties": {
                    "reason": {"type": "string", "maxLength": crate::api::MAX_REASON_CHARS},
                    "statement_sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$",
                                         "description": "The digest shown with the statement. Default: the request's, as read just before voting."}}},
                "KillBody": {"type": "object", "additionalProperties": false, "properties": {
                    "reason": {"type": "string", "maxLength": crate::api::MAX_REASON_CHARS}}},
                "VoteResult": {"type": "object", "properties": {
                    "request": reference("Request"), "event_id": {"type": "string"}, "sequence": {"type": "integer"}}},
                "Group": {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": "string"}}},
                "Identity": {"type": "object", "properties": {
                    "subject": {"type": "string"}, "display_name": {"type": "string"}, "kind": {"enum": ["user", "app", "unknown"]},
                    "groups": {"type": "array", "items": reference("Group")},
                    "tenant_id": {"type": "string"}, "client_app_id": {"type": "string"}}},
                "Connection": {"type": "object", "properties": {
                    "name": {"type": "string"}, "upstream_host": {"type": "string"}, "upstream_port": {"type": "integer"},
                    "upstream_database": {"type": "string"}, "upstream_user": {"type": "string"}}},
                "Client": {"type": "object", "properties": {
                    "address": {"type": "string"}, "user": {"type": "string"}, "database": {"type": "string"},
                    "application_name": {"type": "string"}, "tls": {"type": "boolean"}}},
                "Parameter": {"type": "object", "properties": {
                    "position": {"type": "integer"}, "type_oid": {"type": "integer"}, "format": {"enum": ["text", "binary"]},
                    "is_null": {"type": "boolean"}, "display": {"type": "string"}, "value_hex": {"type": "string"}}},
                "Statement": {"type": "object", "properties": {
                    "text": {"type": "string", "description": "The exact statement text."},
                    "protocol": {"enum": ["simple", "extended"]},
                    "parameters": {"type": "array", "items": reference("Parameter")},
                    "sha256": {"type": "string", "description": "SHA-256 of the exact bytes that execute, hex."}}},
                "Verdict": {"type": "object", "properties": {
                    "policy": {"type": "string"}, "rule_index": {"type": "integer"}, "rule": {"type": "string"},
                    "reason": {"type": "string"}, "default_applied": {"type": "boolean"},
                    "effects": {"type": "array", "items": {"type": "object", "properties": {
                        "kind": {"type": "string"}, "tables": {"type": "array", "items": {"type": "string"}}}}}}},
                "Vote": {"type": "object", "properties": {
                    "reviewer": reference("Identity"), "decision": {"enum": ["approve", "deny"]},
                    "reason": {"type": "string"}, "time": {"type": "string", "format": "date-time"}}},
                "Request": {"type": "object", "properties": {
                    "id": {"type": "string"}, "session_id": {"type": "string"},
                    "state": {"enum": ["pending", "granted", "denied", "expired", "cancelled"]},
                    "identity": reference("Identity"), "connection": reference("Connection"), "client": reference("Client"),
                    "statement": reference("Statement"), "verdict": reference("Verdict"),
                    "approvals_required": {"type": "integer"}, "approvals_given": {"type": "integer"},
                    "reviewer_groups": {"type": "array", "items": reference("Group")},
                    "requested_at": {"type": "string", "format": "date-time"},
                    "deadline": {"type": "string", "format": "date-time"},
                    "decided_at": {"type": ["string", "null"], "format": "date-time"},
                    "outcome_reason": {"type": "string"},
                    "votes": {"type": "array", "items": reference("Vote")},
                    "proxy_id": {"type": "string"}, "sequence": {"type": "integer"}}},
                "RequestPage": {"type": "object", "properties": {
                    "requests": {"type": "array", "items": reference("Request")}, "next_page_token": {"type": "string"}}},
                "WatchEvent": {"type": "object", "properties": {
                    "sequence": {"type": "integer"},
                    "kind": {"enum": ["requested", "voted", "granted", "denied", "expired", "cancelled", "updated"]},
                    "request": reference("Request")}},
                "SessionSummary": {"type": "object", "properties": {
                    "id": {"type": "string"}, "state": {"enum": ["open", "closed"]},
                    "identity": reference("Identity"), "connection": reference("Connection"), "client": reference("Client"),
                    "proxy_id": {"type": "string"}, "opened_at": {"type": "string"}, "closed_at": {"type": ["string", "null"]},
                    "statements_executed": {"type": "integer"}, "statements_refused": {"type": "integer"},
                    "requests_pending": {"type": "integer"}}},
                "SessionPage": {"type": "object", "properties": {
                    "sessions": {"type": "array", "items": reference("SessionSummary")}, "next_page_token": {"type": "string"}}},
                "TimelineEntry": {"type": "object", "properties": {
                    "sequence": {"type": "integer"}, "time": {"type": "string"}, "kind": {"type": "string"},
                    "request_id": {"type": "string"}, "summary": {"type": "string"},
                    "statement": reference("Statement"), "verdict": reference("Verdict"), "by": reference("Identity")}},
                "Session": {"type": "object", "properties": {
                    "summary": reference("SessionSummary"),
                    "timeline": {"type": "array", "items": reference("TimelineEntry")},
                    "requests": {"type": "array", "items": reference("Request")}}},
                "Health": {"type": "object", "properties": {
                    "status": {"type": "string"}, "control_reachable": {"type": "boolean"}}}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = document();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let served: BTreeSet<(String, String)> = crate::api::routes()
            .into_iter()
            .map(|(m, p, _)| (m.to_owned(), p.to_owned()))
            .collect();
        assert_eq!(served, documented);
        // The router holds these routes and more (UI, sign-in), none of them
        // under /api/ or at the documented paths.
        for (method, path, _) in crate::routes() {
            if path.starts_with("/api/") || path == "/healthz" || path == "/metrics" {
                assert!(
                    documented.contains(&(method.to_owned(), path.to_owned())),
                    "{method} {path} is served but not documented"
                );
            }
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().expect("name");
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "dangling reference to {name}"
            );
        }
    }
}
