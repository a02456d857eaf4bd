//! Group overage resolved through Microsoft Graph, against a local stand-in
//! for the tenant's token endpoint and Graph's `checkMemberGroups` (real
//! HTTP on loopback; the test controls its answers and counts its calls).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_identity::{ClientCertificate, GraphConfig, GroupsSource, IdentityConfig, Verifier};
use axum::Form;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{JwksServer, REVIEWERS_GROUP, TestKey, app_claims, user_claims, with};
use jsonwebtoken::{DecodingKey, Validation};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const CLIENT_ID: &str = "eeeeeeee-0000-0000-0000-00000000000e";
const USER_OID: &str = "aaaaaaaa-0000-0000-0000-000000000001";
const APP_OID: &str = "bbbbbbbb-0000-0000-0000-000000000002";
const AGENTS_GROUP: &str = "6f1d1a52-0c3e-4b43-9d6e-2f1b5d0c9a11";
/// A group the user is in but that no configuration names.
const UNNAMED_GROUP: &str = "99999999-0000-0000-0000-000000000009";

/// What the stand-in does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Up,
    Down,
    Slow(Duration),
}

struct GraphState {
    mode: Mutex<Mode>,
    /// object id -> groups (transitive), as Graph would know them.
    members: Mutex<HashMap<String, Vec<String>>>,
    /// How the application must prove itself: the secret, or the thumbprint
    /// and key of its certificate.
    secret: String,
    certificate: Option<(String, DecodingKey)>,
    token_endpoint: Mutex<String>,
    tokens_issued: Mutex<Vec<String>>,
    token_requests: AtomicUsize,
    checks: AtomicUsize,
    asked: Mutex<Vec<Vec<String>>>,
}

struct GraphStandIn {
    base: String,
    state: Arc<GraphState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GraphStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GraphStandIn {
    async fn start(certificate: Option<(String, DecodingKey)>) -> GraphStandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let members = HashMap::from([
            (
                USER_OID.to_owned(),
                vec![REVIEWERS_GROUP.to_uppercase(), UNNAMED_GROUP.to_owned()],
            ),
            (APP_OID.to_owned(), vec![AGENTS_GROUP.to_owned()]),
        ]);
        let state = Arc::new(GraphState {
            mode: Mutex::new(Mode::Up),
            members: Mutex::new(members),
            secret: std::env::var("CARGO_PKG_NAME").expect("cargo sets CARGO_PKG_NAME for tests"),
            certificate,
            token_endpoint: Mutex::new(format!("{base}/tenant/oauth2/v2.0/token")),
            tokens_issued: Mutex::new(Vec::new()),
            token_requests: AtomicUsize::new(0),
            checks: AtomicUsize::new(0),
            asked: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/tenant/oauth2/v2.0/token", post(token))
            .route(
                "/graph/v1.0/{collection}/{id}/checkMemberGroups",
                post(check_member_groups),
            )
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        GraphStandIn { base, state, task }
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    fn checks(&self) -> usize {
        self.state.checks.load(Ordering::SeqCst)
    }

    /// `identity:` for the issuer of `jwks` with Graph pointed here,
    /// authenticating with the secret.
    fn config(&self, jwks: &JwksServer) -> IdentityConfig {
        let mut config = jwks.config();
        let mut graph = GraphConfig::new(CLIENT_ID);
        // The test cannot set environment variables (no unsafe code), so
        // the secret is a variable cargo sets for every test process.
        graph.client_secret_env = Some("CARGO_PKG_NAME".into());
        graph.token_endpoint = Some(self.state.token_endpoint.lock().unwrap().clone());
        graph.endpoint = format!("{}/graph", self.base);
        graph.timeout = Duration::from_secs(1);
        config.graph = Some(graph);
        config
    }
}

async fn token(State(state): State<Arc<GraphState>>, Form(form): Form<HashMap<String, String>>) -> Response {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    if *state.mode.lock().unwrap() == Mode::Down {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let refuse = |why: &str| {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client", "error_description": why})),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || form.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || form.get("scope").is_none_or(|s| !s.ends_with("/graph/.default"))
    {
        return refuse("bad grant, client or scope");
    }
    match (
        &state.certificate,
        form.get("client_secret"),
        form.get("client_assertion"),
    ) {
        (None, Some(secret), None) if *secret == state.secret => {}
        (Some((thumbprint, key)), None, Some(assertion)) => {
            let header = jsonwebtoken::decode_header(assertion).unwrap();
            if header.x5t_s256.as_deref() != Some(thumbprint.as_str()) {
                return refuse("unknown certificate thumbprint");
            }
            let mut validation = Validation::new(jsonwebtoken::Algorithm::RS256);
            validation.set_audience(&[state.token_endpoint.lock().unwrap().clone()]);
            validation.set_issuer(&[CLIENT_ID]);
            let Ok(data) = jsonwebtoken::decode::<Value>(assertion, key, &validation) else {
                return refuse("the assertion does not verify");
            };
            if data.claims["sub"] != CLIENT_ID || data.claims["jti"].as_str().is_none_or(str::is_empty) {
                return refuse("bad assertion claims");
            }
        }
        _ => return refuse("wrong credential"),
    }
    let issued = format!("graph-app-token-{}", state.token_requests.load(Ordering::SeqCst));
    state.tokens_issued.lock().unwrap().push(issued.clone());
    axum::Json(json!({"token_type": "Bearer", "expires_in": 3599, "access_token": issued})).into_response()
}

async fn check_member_groups(
    State(state): State<Arc<GraphState>>,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    state.checks.fetch_add(1, Ordering::SeqCst);
    let mode = *state.mode.lock().unwrap();
    match mode {
        Mode::Down => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Mode::Slow(delay) => tokio::time::sleep(delay).await,
        Mode::Up => {}
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    if !state.tokens_issued.lock().unwrap().contains(&bearer) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {"code": "InvalidAuthenticationToken", "message": "no"}})),
        )
            .into_response();
    }
    let expected = if id == APP_OID {
        "servicePrincipals"
    } else {
        "users"
    };
    if collection != expected {
        return StatusCode::NOT_FOUND.into_response();
    }
    let asked: Vec<String> = serde_json::from_str::<Value>(&body).unwrap()["groupIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(asked.len() <= 20, "checkMemberGroups takes at most 20 ids");
    state.asked.lock().unwrap().push(asked.clone());
    // A careless Graph could answer more than was asked: the stand-in
    // answers everything it knows, and Airlock must keep only what it asked.
    let member = state
        .members
        .lock()
        .unwrap()
        .get(&id)
        .cloned()
        .unwrap_or_default();
    axum::Json(json!({"value": member})).into_response()
}

fn overage(claims: Value) -> Value {
    with(
        claims,
        json!({"groups": null, "_claim_names": {"groups": "src1"},
               "_claim_sources": {"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}}}),
    )
}

async fn setup() -> (TestKey, JwksServer, GraphStandIn) {
    let key = TestKey::rsa(0, "graph-key");
    let jwks = JwksServer::start(&[&key]).await;
    let graph = GraphStandIn::start(None).await;
    (key, jwks, graph)
}

#[tokio::test]
async fn an_overage_token_gets_only_the_configured_groups_graph_confirms() {
    let (key, jwks, graph) = setup().await;
    let verifier = Verifier::new(graph.config(&jwks)).unwrap();
    verifier.ask_graph_about([AGENTS_GROUP, "db-reviewers", "not-a-group-id"]);
    let mut asked = verifier.graph_groups();
    asked.sort();
    assert_eq!(
        asked,
        [REVIEWERS_GROUP, AGENTS_GROUP],
        "names resolve; other names cannot be asked"
    );

    let user = verifier.verify(&key.sign(&overage(user_claims()))).await.unwrap();
    assert_eq!(user.groups_source, GroupsSource::Graph);
    assert!(user.in_group("db-reviewers"), "{:?}", user.groups);
    assert!(
        !user.in_group(UNNAMED_GROUP),
        "Graph answered a group that was not asked about: {:?}",
        user.groups
    );
    assert_eq!(user.groups.len(), 1);
    assert_eq!(user.to_proto().groups_source, "graph");

    let app = verifier.verify(&key.sign(&overage(app_claims()))).await.unwrap();
    assert!(app.in_group(AGENTS_GROUP));
    assert!(!app.in_group("db-reviewers"));

    // A token that lists its groups is taken as it is: Graph is not asked,
    // and cannot add to it.
    let calls = verifier.graph_calls();
    let plain = verifier.verify(&key.sign(&user_claims())).await.unwrap();
    assert_eq!(plain.groups_source, GroupsSource::Token);
    assert_eq!(verifier.graph_calls(), calls);
    assert_eq!(graph.checks(), 2);
}

#[tokio::test]
async fn a_non_member_gets_no_group_and_a_token_without_graph_is_refused() {
    let (key, jwks, graph) = setup().await;
    let verifier = Verifier::new(graph.config(&jwks)).unwrap();
    let stranger = with(
        overage(user_claims()),
        json!({"oid": "cccccccc-0000-0000-0000-000000000003"}),
    );
    let identity = verifier.verify(&key.sign(&stranger)).await.unwrap();
    assert!(identity.groups.is_empty());
    assert!(!identity.in_group("db-reviewers"));

    // Without identity.graph, overage is refused, and the message says what to set.
    let without = Verifier::new(jwks.config()).unwrap();
    let err = without
        .verify(&key.sign(&overage(user_claims())))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "group_overage");
    assert!(err.to_string().contains("identity.graph"), "{err}");
}

#[tokio::test]
async fn graph_down_refuses_with_the_reason_keeps_fresh_answers_and_recovers() {
    let (key, jwks, graph) = setup().await;
    let mut config = graph.config(&jwks);
    config.graph.as_mut().unwrap().cache_ttl = Duration::from_secs(2);
    let verifier = Verifier::new(config).unwrap();
    verifier.ask_graph_about([AGENTS_GROUP]);
    let reviewer = key.sign(&overage(user_claims()));
    verifier.verify(&reviewer).await.unwrap();

    graph.set_mode(Mode::Down);
    // The answer from before the outage still counts while it is fresh.
    assert!(verifier.verify(&reviewer).await.unwrap().in_group("db-reviewers"));
    // Another identity, never seen: refused, and the reason says why.
    let agent = key.sign(&overage(app_claims()));
    let err = verifier.verify(&agent).await.unwrap_err();
    assert_eq!(err.code(), "graph_unavailable");
    assert!(err.is_unavailable());
    assert!(err.to_string().contains("HTTP 503"), "{err}");

    // Once the answer is older than cache_ttl, the reviewer is refused too.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        verifier.verify(&reviewer).await.unwrap_err().code(),
        "graph_unavailable"
    );

    graph.set_mode(Mode::Up);
    assert!(verifier.verify(&agent).await.unwrap().in_group(AGENTS_GROUP));
    assert!(verifier.verify(&reviewer).await.unwrap().in_group("db-reviewers"));
}

#[tokio::test]
async fn a_slow_graph_is_given_up_on_after_the_timeout() {
    let (key, jwks, graph) = setup().await;
    let verifier = Verifier::new(graph.config(&jwks)).unwrap();
    graph.set_mode(Mode::Slow(Duration::from_secs(5)));
    let started = Instant::now();
    let err = verifier
        .verify(&key.sign(&overage(user_claims())))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.code(), "graph_unavailable", "{err}");
    assert!(err.to_string().contains("did not answer within 1s"), "{err}");
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
}

#[tokio::test]
async fn a_hundred_concurrent_logins_of_one_identity_ask_graph_once() {
    let (key, jwks, graph) = setup().await;
    let verifier = Verifier::new(graph.config(&jwks)).unwrap();
    // Slow enough that every login arrives while the first question is out.
    graph.set_mode(Mode::Slow(Duration::from_millis(300)));
    let token = key.sign(&overage(user_claims()));
    let logins: Vec<_> = (0..100)
        .map(|_| {
            let verifier = verifier.clone();
            let token = token.clone();
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for login in logins {
        assert!(login.await.unwrap().unwrap().in_group("db-reviewers"));
    }
    assert_eq!(graph.checks(), 1);
    assert_eq!(verifier.graph_calls(), 1);
    assert_eq!(graph.state.token_requests.load(Ordering::SeqCst), 1);

    // The same with Graph down: one question, a hundred refusals.
    let agent = key.sign(&overage(app_claims()));
    graph.set_mode(Mode::Down);
    let before = graph.checks() + graph.state.token_requests.load(Ordering::SeqCst);
    let logins: Vec<_> = (0..100)
        .map(|_| {
            let verifier = verifier.clone();
            let agent = agent.clone();
            tokio::spawn(async move { verifier.verify(&agent).await })
        })
        .collect();
    for login in logins {
        assert_eq!(login.await.unwrap().unwrap_err().code(), "graph_unavailable");
    }
    let after = graph.checks() + graph.state.token_requests.load(Ordering::SeqCst);
    assert!(
        after - before <= 2,
        "{} requests for one identity",
        after - before
    );
}

#[tokio::test]
async fn a_wrong_secret_is_reported_as_the_credentials() {
    let (key, jwks, graph) = setup().await;
    let mut config = graph.config(&jwks);
    // Another variable cargo sets: not the secret the tenant knows.
    config.graph.as_mut().unwrap().client_secret_env = Some("CARGO_PKG_VERSION".into());
    let verifier = Verifier::new(config).unwrap();
    let err = verifier
        .verify(&key.sign(&overage(user_claims())))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "graph_unavailable");
    assert!(err.to_string().contains("invalid_client"), "{err}");
}

#[tokio::test]
async fn a_certificate_credential_signs_an_assertion_the_tenant_accepts() {
    let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    let pem = private.to_pkcs8_pem(LineEnding::LF).unwrap();
    let pair = rcgen::KeyPair::from_pem(&pem).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["airlock-graph-client".into()])
        .unwrap()
        .self_signed(&pair)
        .unwrap();
    let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(cert.der()));
    let public = private.to_public_key();
    let decoding = DecodingKey::from_rsa_raw_components(&public.n().to_bytes_be(), &public.e().to_bytes_be());

    let key = TestKey::rsa(0, "graph-key");
    let jwks = JwksServer::start(&[&key]).await;
    let graph = GraphStandIn::start(Some((thumbprint, decoding))).await;
    let dir = std::env::temp_dir().join(format!("airlock-graph-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), pem.as_bytes()).unwrap();
    let mut config = graph.config(&jwks);
    let g = config.graph.as_mut().unwrap();
    g.client_secret_env = None;
    g.client_certificate = Some(ClientCertificate {
        cert: dir.join("cert.pem").display().to_string(),
        key: dir.join("key.pem").display().to_string(),
    });
    let verifier = Verifier::new(config.clone()).unwrap();
    let identity = verifier.verify(&key.sign(&overage(user_claims()))).await.unwrap();
    assert!(identity.in_group("db-reviewers"));

    // A missing key file is a configuration error, named.
    config
        .graph
        .as_mut()
        .unwrap()
        .client_certificate
        .as_mut()
        .unwrap()
        .key = dir.join("nope.pem").display().to_string();
    let err = Verifier::new(config).unwrap_err();
    assert!(err.to_string().contains("nope.pem"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
