//! Browser sign-in on the real `airlock-dev-idp serve --login-config`: the
//! authorization page, code issuance, and the token endpoint's refusals
//! (PKCE verifier missing or wrong, code reused, another client or redirect
//! URI, no PKCE at all); the token it issues verifies as the reviewer's
//! access token would.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock_identity::{IdentityConfig, PrincipalKind, Verifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_airlock-dev-idp");
const REDIRECT: &str = "http://127.0.0.1:1/auth/callback";

struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

struct Idp {
    issuer: String,
    http: reqwest::Client,
    _served: Served,
    _dir: tempfile::TempDir,
}

impl Idp {
    async fn start() -> Idp {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("login.yaml"),
            format!(
                "audience: api://airlock\nclients:\n  - client_id: ui\n    redirect_uris: [{REDIRECT}]\n\
                 users:\n  - {{ sub: oid-alice, name: Alice <Reviewer>, groups: [grp-reviewers] }}\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let issuer = format!("http://127.0.0.1:{port}");
        let served = Served(
            Command::new(BIN)
                .args([
                    "serve",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--issuer",
                    &issuer,
                ])
                .arg("--key-file")
                .arg(dir.path().join("k.pem"))
                .arg("--login-config")
                .arg(dir.path().join("login.yaml"))
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "dev-idp never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        Idp {
            issuer,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            _served: served,
            _dir: dir,
        }
    }

    fn authorize_params(&self, verifier: &str) -> Vec<(&'static str, String)> {
        vec![
            ("response_type", "code".into()),
            ("client_id", "ui".into()),
            ("redirect_uri", REDIRECT.into()),
            ("scope", "openid api://airlock/access_as_user".into()),
            ("state", "s-123".into()),
            ("code_challenge", challenge(verifier)),
            ("code_challenge_method", "S256".into()),
        ]
    }

    /// Picks Alice; returns the code from the redirect.
    async fn code(&self, verifier: &str) -> String {
        let mut form = self.authorize_params(verifier);
        form.push(("user", "oid-alice".into()));
        let r = self
            .http
            .post(format!("{}/oauth2/v2.0/authorize", self.issuer))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let location = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
        assert!(location.as_str().starts_with(REDIRECT), "{location}");
        let get = |k: &str| {
            location
                .query_pairs()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.into_owned())
        };
        assert_eq!(get("state").as_deref(), Some("s-123"));
        get("code").expect("a code")
    }

    async fn exchange(&self, form: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}/oauth2/v2.0/token", self.issuer))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }
}

/// Spoils one field of an exchange form.
type Change = fn(&mut Vec<(&str, &str)>);

fn exchange_form<'a>(code: &'a str, verifier: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("client_id", "ui"),
        ("code_verifier", verifier),
    ]
}

#[tokio::test]
async fn authorization_code_with_pkce_and_its_refusals() {
    let idp = Idp::start().await;
    let verifier = "v".repeat(50);

    // Discovery advertises the endpoints.
    let discovery: serde_json::Value = serde_json::from_slice(
        &idp.http
            .get(format!("{}/.well-known/openid-configuration", idp.issuer))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        discovery["authorization_endpoint"],
        format!("{}/oauth2/v2.0/authorize", idp.issuer)
    );
    assert_eq!(discovery["code_challenge_methods_supported"][0], "S256");

    // The page lists the test users, escaped, and says what it is.
    let page = idp
        .http
        .get(format!("{}/oauth2/v2.0/authorize", idp.issuer))
        .query(&idp.authorize_params(&verifier))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Alice &lt;Reviewer&gt;") && html.contains("NEVER PRODUCTION"),
        "{html}"
    );

    // Refused before any redirect: unknown client, unregistered redirect, no PKCE.
    for (key, value) in [
        ("client_id", "someone-else"),
        ("redirect_uri", "http://evil.example/cb"),
        ("code_challenge_method", "plain"),
    ] {
        let mut params = idp.authorize_params(&verifier);
        params.retain(|(k, _)| *k != key);
        params.push((key, value.into()));
        let r = idp
            .http
            .get(format!("{}/oauth2/v2.0/authorize", idp.issuer))
            .query(&params)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{key}={value}");
        assert!(r.headers().get("location").is_none());
    }

    // Each wrong exchange is refused, and burns the code.
    let cases: [(&str, Change, &str); 4] = [
        (
            "no verifier",
            |f| f.retain(|(k, _)| *k != "code_verifier"),
            "required",
        ),
        (
            "wrong verifier",
            |f| f[4].1 = "w-wrong-verifier-wrong-verifier-wrong-verifier-1",
            "does not match",
        ),
        ("other client", |f| f[3].1 = "other", "another client"),
        (
            "other redirect",
            |f| f[2].1 = "http://127.0.0.1:1/other",
            "redirect_uri",
        ),
    ];
    for (what, change, expected) in cases {
        let code = idp.code(&verifier).await;
        let mut form = exchange_form(&code, &verifier);
        change(&mut form);
        let (status, body) = idp.exchange(&form).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"], "invalid_grant", "{what}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or("")
                .contains(expected),
            "{what}: {body}"
        );
        let (status, body) = idp.exchange(&exchange_form(&code, &verifier)).await;
        assert_eq!(status, 400, "{what}: a refused code cannot be retried");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or("")
                .contains("already used"),
            "{body}"
        );
    }

    // The right exchange: an access token the reviewer's verifier accepts.
    let code = idp.code(&verifier).await;
    let (status, body) = idp.exchange(&exchange_form(&code, &verifier)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    let token = body["access_token"].as_str().unwrap();
    let verifier_of_tokens = Verifier::new(IdentityConfig::new(idp.issuer.clone(), "api://airlock")).unwrap();
    let identity = verifier_of_tokens.verify(token).await.unwrap();
    assert_eq!(identity.subject.0, "oid-alice");
    assert_eq!(identity.kind, PrincipalKind::User);
    assert!(identity.in_group("grp-reviewers"));
    assert_eq!(identity.client_app.unwrap().0, "ui");
    // Once only.
    let (status, body) = idp.exchange(&exchange_form(&code, &verifier)).await;
    assert_eq!(status, 400);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("already used"),
        "{body}"
    );
    let (status, body) = idp.exchange(&exchange_form("never-issued", &verifier)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
}
