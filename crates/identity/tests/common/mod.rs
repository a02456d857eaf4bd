//! Test harness: keys made in the test, an in-process JWKS/discovery server
//! on loopback whose answers the test controls, and token minting.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_identity::{CacheOptions, IdentityConfig, Verifier};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

pub const ISSUER: &str = "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0";
pub const AUDIENCE: &str = "api://airlock";
pub const TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub const REVIEWERS_GROUP: &str = "0b7e2f4c-8a5d-4c1e-9f3a-7d2c6b1e4a90";

/// RSA key generation is slow in debug builds: a few keys per test binary,
/// made once, shared by index. The kid is chosen per [`TestKey`], not here.
fn rsa_material(index: usize) -> &'static rsa::RsaPrivateKey {
    static KEYS: [OnceLock<rsa::RsaPrivateKey>; 4] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new()];
    KEYS[index]
        .get_or_init(|| rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("generate RSA key"))
}

/// A signing key and its public JWK.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Value,
    /// The public key as PEM, for the HMAC-with-public-key attack.
    pub public_pem: String,
}

impl TestKey {
    /// RSA 2048 key number `index` (0..4) under `kid`, for RS256.
    pub fn rsa(index: usize, kid: &str) -> TestKey {
        let private = rsa_material(index);
        let public = private.to_public_key();
        let der = private.to_pkcs1_der().expect("pkcs1 der");
        TestKey {
            kid: kid.to_owned(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({
                "kty": "RSA", "use": "sig", "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            }),
            public_pem: public.to_public_key_pem(LineEnding::LF).expect("pem"),
        }
    }

    /// A fresh P-256 key under `kid`, for ES256.
    pub fn ec(kid: &str) -> TestKey {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false);
        let der = secret.to_pkcs8_der().expect("pkcs8 der");
        TestKey {
            kid: kid.to_owned(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            jwk: json!({
                "kty": "EC", "use": "sig", "crv": "P-256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
                "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
            }),
            public_pem: secret
                .public_key()
                .to_public_key_pem(LineEnding::LF)
                .expect("pem"),
        }
    }

    /// Signs `claims` with this key's algorithm and kid.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, Some(&self.kid), claims)
    }

    /// Signs `header.payload` exactly as given (for hand-built segments).
    pub fn sign_message(&self, message: &str) -> String {
        jsonwebtoken::crypto::sign(message.as_bytes(), &self.encoding, self.alg).expect("sign")
    }

    /// Signs with a header built by the caller.
    pub fn sign_with_header(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).expect("sign")
    }

    /// Signs with an explicit header algorithm and kid.
    pub fn sign_as(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The claims of a good Entra v2 user token.
pub fn user_claims() -> Value {
    let now = now();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "iat": now - 5, "nbf": now - 5, "exp": now + 3600,
        "oid": "aaaaaaaa-0000-0000-0000-000000000001", "sub": "pairwise-sub-1",
        "tid": TENANT, "azp": "cccccccc-0000-0000-0000-000000000001", "idtyp": "user",
        "name": "Ada Lovelace", "preferred_username": "ada@example.com",
        "scp": "access_as_user", "groups": [REVIEWERS_GROUP, "99999999-0000-0000-0000-000000000009"],
        "roles": [], "ver": "2.0",
    })
}

/// The claims of a good Entra v2 app-only token.
pub fn app_claims() -> Value {
    let now = now();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "iat": now - 5, "nbf": now - 5, "exp": now + 3600,
        "oid": "bbbbbbbb-0000-0000-0000-000000000002", "sub": "bbbbbbbb-0000-0000-0000-000000000002",
        "tid": TENANT, "azp": "dddddddd-0000-0000-0000-000000000002", "idtyp": "app",
        "roles": ["Airlock.Agent"], "groups": ["6f1d1a52-0c3e-4b43-9d6e-2f1b5d0c9a11"],
        "app_displayname": "maintenance-agent", "ver": "2.0",
    })
}

/// `claims` with some members replaced, or removed where the value is null.
pub fn with(mut claims: Value, changes: Value) -> Value {
    let object = claims.as_object_mut().unwrap();
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            object.remove(key);
        } else {
            object.insert(key.clone(), value.clone());
        }
    }
    claims
}

/// How the test server answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Normal,
    /// 503 on every request.
    Down,
    /// Answer after this delay.
    Slow(Duration),
    /// A body bigger than the cap.
    Huge,
}

struct ServerState {
    jwks: Mutex<Value>,
    discovery: Mutex<Option<Value>>,
    mode: Mutex<Mode>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
}

/// An in-process issuer on 127.0.0.1: `/keys` and
/// `/.well-known/openid-configuration`.
pub struct JwksServer {
    pub base: String,
    state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    pub async fn start(keys: &[&TestKey]) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(ServerState {
            jwks: Mutex::new(jwks_of(keys)),
            discovery: Mutex::new(None),
            mode: Mutex::new(Mode::Normal),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/keys", get(serve_jwks))
            .route("/.well-known/openid-configuration", get(serve_discovery))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        JwksServer { base, state, task }
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/keys", self.base)
    }

    /// Replaces the JWKS document with these keys.
    pub fn set_keys(&self, keys: &[&TestKey]) {
        *self.state.jwks.lock().unwrap() = jwks_of(keys);
    }

    /// Replaces the JWKS document verbatim.
    pub fn set_jwks(&self, jwks: Value) {
        *self.state.jwks.lock().unwrap() = jwks;
    }

    /// Serves this discovery document (default: issuer = base, jwks_uri = /keys).
    pub fn set_discovery(&self, document: Value) {
        *self.state.discovery.lock().unwrap() = Some(document);
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    /// A configuration for [`ISSUER`] that fetches keys from this server.
    pub fn config(&self) -> IdentityConfig {
        let mut config = IdentityConfig::new(ISSUER, AUDIENCE);
        config.jwks_uri = Some(self.jwks_uri());
        config
            .group_names
            .insert("db-reviewers".into(), REVIEWERS_GROUP.into());
        config
    }

    pub fn verifier(&self) -> Verifier {
        Verifier::new(self.config()).unwrap()
    }

    pub fn verifier_with(&self, options: CacheOptions) -> Verifier {
        Verifier::with_options(self.config(), options).unwrap()
    }
}

pub fn jwks_of(keys: &[&TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}

async fn answer(state: &ServerState, body: Value) -> Response {
    let mode = state.mode.lock().unwrap().clone();
    match mode {
        Mode::Normal => axum::Json(body).into_response(),
        Mode::Down => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Mode::Slow(delay) => {
            tokio::time::sleep(delay).await;
            axum::Json(body).into_response()
        }
        Mode::Huge => {
            let padding = "x".repeat(70 * 1024);
            axum::Json(json!({"keys": [], "padding": padding})).into_response()
        }
    }
}

async fn serve_jwks(State(state): State<Arc<ServerState>>) -> Response {
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let body = state.jwks.lock().unwrap().clone();
    answer(&state, body).await
}

async fn serve_discovery(State(state): State<Arc<ServerState>>, headers: axum::http::HeaderMap) -> Response {
    state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let body = state.discovery.lock().unwrap().clone().unwrap_or_else(|| {
        json!({
            "issuer": format!("http://{host}"),
            "jwks_uri": format!("http://{host}/keys"),
            "id_token_signing_alg_values_supported": ["RS256"],
        })
    });
    answer(&state, body).await
}

/// The unknown-kid cooldown of [`fast_options`], and a wait just past it.
/// Long enough that a loaded machine finishes a test step well within it.
pub const COOLDOWN: Duration = Duration::from_millis(800);
pub const PAST_COOLDOWN: Duration = Duration::from_millis(900);

/// Options with short periods, so cache behaviour is observable in a test.
pub fn fast_options() -> CacheOptions {
    CacheOptions {
        unknown_kid_cooldown: COOLDOWN,
        cold_retry: Duration::from_millis(100),
        refresh_interval: Duration::from_secs(3600),
        refresh_retry: Duration::from_secs(3600),
        fetch_timeout: Duration::from_secs(5),
        max_key_age: Duration::from_secs(3600),
    }
}
