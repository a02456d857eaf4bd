//! The OpenAPI 3.1 document served at `/api/v1/openapi.json`, derived with
//! `utoipa`: the operations from the handlers' `#[utoipa::path]` (`api`,
//! `events`), the schemas from the very types they serialise (`json`).
//! Written here by hand: the list of operations, the title, and the two
//! ways to sign in.
//!
//! This module sits above the handlers (it names them), so nothing below
//! imports it; the router takes its one route from [`routes`]. Tests here
//! check that the document names exactly the served REST routes and that
//! every reference resolves; the end-to-end tests check real responses
//! against it.

use std::sync::LazyLock;

use axum::Json;
use axum::routing::get;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Required};
use utoipa::{Modify, OpenApi};

use crate::Route;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Airlock reviewer API",
        description = "See who wants to run exactly what, and approve or deny. Every call is passed to \
                       the Airlock control plane with the caller's own token; the control plane decides."
    ),
    paths(
        crate::api::list_requests,
        crate::api::get_request,
        crate::api::approve,
        crate::api::deny,
        crate::api::list_sessions,
        crate::api::get_session,
        crate::api::kill_session,
        crate::api::list_grants,
        crate::api::get_grant,
        crate::api::revoke_grant,
        crate::events::events,
        crate::api::me,
        serve,
        crate::api::healthz,
        crate::api::livez,
        crate::api::readyz,
        crate::api::metrics,
    ),
    // Reached only through `json::Refusals`, which the derive cannot see into.
    components(schemas(crate::json::ErrorJson)),
    modifiers(&SignIn, &EmptyBodies),
    tags(
        (name = "requests", description = "Held statements and the votes on them."),
        (name = "sessions", description = "Recorded sessions, and ending one."),
        (name = "grants", description = "Approvals in scope: their uses, and revoking one."),
        (name = "events", description = "Request changes as they happen."),
        (name = "caller", description = "Who the server thinks you are."),
        (name = "service", description = "Health, metrics and this document; no sign-in."),
    )
)]
struct ApiDoc;

/// The security schemes the operations name: `bearer` (any client) and
/// `session` (the web UI's cookie after OIDC sign-in).
struct SignIn;

impl Modify for SignIn {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An access token from the configured issuer (Entra ID) for `identity.audience`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "airlock_session",
                "Browser session after OIDC sign-in (`__Host-airlock_session` under HTTPS). \
                 State-changing requests must also send `X-CSRF-Token`.",
            ))),
        );
    }
}

/// Every request body may be left out: the handlers read an empty body as
/// `{}` (`api::json_body`). The derive marks a body required unless its type
/// is an `Option`, and an `Option` would also admit `null`, which they
/// refuse; so the bodies are declared as their plain types and made optional
/// here.
struct EmptyBodies;

impl Modify for EmptyBodies {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for item in doc.paths.paths.values_mut() {
            for op in [&mut item.post, &mut item.put, &mut item.patch, &mut item.delete] {
                if let Some(RefOr::T(body)) = op.as_mut().and_then(|op| op.request_body.as_mut()) {
                    body.required = Some(Required::False);
                }
            }
        }
    }
}

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);
    &DOCUMENT
}

/// This route, for the router.
pub fn routes() -> Vec<Route> {
    vec![("GET", "/api/v1/openapi.json", get(serve))]
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "service",
    responses((status = 200, description = "OpenAPI 3.1.", content_type = "application/json")),
)]
async fn serve() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{Value, json};

    use super::*;

    fn doc() -> Value {
        serde_json::to_value(document()).expect("the document serialises")
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let served: BTreeSet<(String, String)> = crate::api::routes()
            .into_iter()
            .chain(routes())
            .map(|(m, p, _)| (m.to_owned(), p.to_owned()))
            .collect();
        assert_eq!(served, documented);
        // The router holds these routes and more (UI, sign-in), none of them
        // under /api/ or at the documented paths.
        for (method, path, _) in crate::routes() {
            if path.starts_with("/api/")
                || path == "/healthz"
                || path == "/livez"
                || path == "/readyz"
                || path == "/metrics"
            {
                assert!(
                    documented.contains(&(method.to_owned(), path.to_owned())),
                    "{method} {path} is served but not documented"
                );
            }
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = doc();
        let text = doc.to_string();
        let mut seen = 0;
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().expect("name");
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "dangling reference to {name}"
            );
            seen += 1;
        }
        assert!(seen > 20, "the operations refer to shared schemas");
    }

    /// What the server answers, per operation: every JSON answer names a
    /// schema, and every refusal is the one error shape.
    #[test]
    fn every_answer_has_a_schema_and_every_refusal_is_an_error() {
        let doc = doc();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let responses = op["responses"].as_object().expect("responses");
                assert!(responses.contains_key("200"), "{method} {path}");
                for (status, response) in responses {
                    let content = response["content"].as_object();
                    if path == "/api/v1/openapi.json" {
                        continue;
                    }
                    let (media, body) = content
                        .and_then(|c| c.iter().next())
                        .unwrap_or_else(|| panic!("{method} {path} {status} has a body"));
                    assert!(body["schema"].is_object(), "{method} {path} {status}");
                    let refusal = status.starts_with('4') || status.starts_with('5');
                    if refusal && path.starts_with("/api/") {
                        assert_eq!(media, "application/json", "{method} {path} {status}");
                        assert_eq!(
                            body["schema"],
                            json!({"$ref": "#/components/schemas/Error"}),
                            "{method} {path} {status}"
                        );
                    }
                }
                if let Some(body) = op.get("requestBody") {
                    assert_eq!(body["required"], false, "{method} {path}: an empty body is {{}}");
                }
                if path.starts_with("/api/v1/") && path != "/api/v1/openapi.json" {
                    assert_eq!(
                        op["security"],
                        json!([{"bearer": []}, {"session": []}]),
                        "{method} {path}"
                    );
                    assert!(responses.contains_key("401"), "{method} {path}");
                }
            }
        }
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["session"]["in"], "cookie");
    }

    #[test]
    fn ids_in_paths_are_described_as_check_id_reads_them() {
        let doc = doc();
        let mut seen = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for op in item.as_object().expect("path item").values() {
                for p in op["parameters"].as_array().into_iter().flatten() {
                    if p["in"] == "path" {
                        assert_eq!(p["name"], "id", "{path}");
                        assert_eq!(p["required"], true, "{path}");
                        assert_eq!(p["schema"]["pattern"], crate::api::ID_PATTERN, "{path}");
                        seen += 1;
                    }
                }
            }
        }
        assert_eq!(seen, 7);
    }
}
