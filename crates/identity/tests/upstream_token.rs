//! The proxy's own Entra token for the upstream (`upstream_auth: entra`),
//! against a local stand-in for the managed-identity endpoint and for the
//! tenant's token endpoint (workload identity): real HTTP on loopback.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_identity::{UpstreamToken, WorkloadIdentity};
use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

struct Issued {
    /// The token handed out now, and its lifetime in seconds.
    token: Mutex<(String, u64)>,
    up: Mutex<bool>,
    calls: AtomicUsize,
    seen: Mutex<Vec<HashMap<String, String>>>,
}

struct StandIn {
    base: String,
    state: Arc<Issued>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn imds(
    State(s): State<Arc<Issued>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    if !*s.up.lock().unwrap() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return (StatusCode::BAD_REQUEST, "Required metadata header not specified").into_response();
    }
    s.seen.lock().unwrap().push(q);
    let (token, ttl) = s.token.lock().unwrap().clone();
    // IMDS sends expires_in as a string.
    axum::Json(json!({"access_token": token, "expires_in": ttl.to_string(), "token_type": "Bearer"}))
        .into_response()
}

async fn exchange(State(s): State<Arc<Issued>>, Form(form): Form<HashMap<String, String>>) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    if !*s.up.lock().unwrap() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    s.seen.lock().unwrap().push(form);
    let (token, ttl) = s.token.lock().unwrap().clone();
    axum::Json(json!({"access_token": token, "expires_in": ttl, "token_type": "Bearer"})).into_response()
}

impl StandIn {
    async fn start(token: &str, ttl: u64) -> StandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Issued {
            token: Mutex::new((token.to_owned(), ttl)),
            up: Mutex::new(true),
            calls: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/metadata/identity/oauth2/token", get(imds))
            .route("/tenant/oauth2/v2.0/token", axum::routing::post(exchange))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        StandIn { base, state, task }
    }

    fn managed(&self) -> UpstreamToken {
        UpstreamToken::new(
            WorkloadIdentity::Managed {
                endpoint: format!("{}/metadata/identity/oauth2/token", self.base),
                client_id: Some("mi-client".into()),
            },
            "https://ossrdbms-aad.database.windows.net/.default",
        )
        .unwrap()
    }

    fn federated(&self, token_file: &std::path::Path) -> UpstreamToken {
        UpstreamToken::new(
            WorkloadIdentity::Federated {
                token_endpoint: format!("{}/tenant/oauth2/v2.0/token", self.base),
                client_id: "app-1".into(),
                token_file: token_file.to_owned(),
            },
            "https://ossrdbms-aad.database.windows.net/.default",
        )
        .unwrap()
    }

    fn serve(&self, token: &str, ttl: u64) {
        *self.state.token.lock().unwrap() = (token.to_owned(), ttl);
    }

    fn set_up(&self, up: bool) {
        *self.state.up.lock().unwrap() = up;
    }

    fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_managed_identity_token_is_kept_and_refreshed_before_it_expires() {
    let stand_in = StandIn::start("token-one", 4).await;
    let source = stand_in.managed();
    assert_eq!(source.token().await.unwrap().expose(), "token-one");
    assert_eq!(source.token().await.unwrap().expose(), "token-one");
    assert_eq!(stand_in.calls(), 1, "kept, not fetched per login");
    let asked = stand_in.state.seen.lock().unwrap()[0].clone();
    assert_eq!(asked["resource"], "https://ossrdbms-aad.database.windows.net");
    assert_eq!(asked["client_id"], "mi-client");
    assert_eq!(asked["api-version"], "2018-02-01");
    assert!(
        !format!("{source:?}").contains("token-one"),
        "never in Debug output"
    );

    // Half of a 4 s life: from 2 s on, a new token is fetched.
    stand_in.serve("token-two", 3600);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(source.token().await.unwrap().expose(), "token-two");
    assert_eq!(stand_in.calls(), 2);
    assert!(source.degraded().is_none());
}

#[tokio::test]
async fn an_endpoint_outage_keeps_a_valid_token_and_fails_closed_without_one() {
    let stand_in = StandIn::start("token-one", 8).await;
    let source = stand_in.managed();
    source.token().await.unwrap();
    stand_in.set_up(false);
    // Half of an 8 s life: due for refresh; and 2 s short of expiry, the
    // margin below which a token is not handed out.
    tokio::time::sleep(Duration::from_millis(4200)).await;
    // Due for refresh, the endpoint is down, the token is still valid.
    assert_eq!(source.token().await.unwrap().expose(), "token-one");
    assert!(source.failing());
    assert!(source.degraded().is_none(), "a valid token is held");
    let calls = stand_in.calls();
    for _ in 0..20 {
        source.token().await.unwrap();
    }
    assert_eq!(stand_in.calls(), calls, "logins do not hammer a failing endpoint");

    // Once it has expired, logins are refused, with the reason.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = source.token().await.unwrap_err();
    assert!(err.to_string().contains("HTTP 500"), "{err}");
    assert!(source.degraded().unwrap().contains("HTTP 500"));

    stand_in.set_up(true);
    stand_in.serve("token-three", 3600);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(source.token().await.unwrap().expose(), "token-three");
    assert!(source.degraded().is_none() && !source.failing());
}

#[tokio::test]
async fn workload_identity_exchanges_the_projected_token_read_anew_each_time() {
    let stand_in = StandIn::start("db-token", 3600).await;
    let dir = std::env::temp_dir().join(format!("airlock-federated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "projected-one\n").unwrap();
    let source = stand_in.federated(&file);
    assert_eq!(source.token().await.unwrap().expose(), "db-token");
    let form = stand_in.state.seen.lock().unwrap()[0].clone();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_id"], "app-1");
    assert_eq!(
        form["scope"],
        "https://ossrdbms-aad.database.windows.net/.default"
    );
    assert_eq!(form["client_assertion"], "projected-one");
    assert_eq!(
        form["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );

    // A missing file is a clear error, not a panic.
    std::fs::remove_file(&file).unwrap();
    let broken = stand_in.federated(&file);
    let err = broken.token().await.unwrap_err();
    assert!(err.to_string().contains("federated token file"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn endpoints_must_be_safe() {
    for bad in ["http://tokens.example/token", "ftp://127.0.0.1/token", "nonsense"] {
        let err = UpstreamToken::new(
            WorkloadIdentity::Managed {
                endpoint: bad.into(),
                client_id: None,
            },
            "scope/.default",
        )
        .unwrap_err();
        assert!(err.contains("token_endpoint"), "{bad}: {err}");
    }
}

/// Review finding: a huge `expires_in` overflowed the clock and panicked.
#[tokio::test]
async fn a_huge_lifetime_is_capped_not_a_panic() {
    let stand_in = StandIn::start("forever", u64::MAX).await;
    let source = stand_in.managed();
    assert_eq!(source.token().await.unwrap().expose(), "forever");
    assert!(source.refresh_due() > std::time::Instant::now() + Duration::from_secs(3600));
}
