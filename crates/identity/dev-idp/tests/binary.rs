//! The real `airlock-dev-idp` binary: `serve` publishes discovery and the
//! JWKS, `token` mints, and `airlock-identity`'s verifier accepts the result
//! exactly as the proxy would (discovery, no jwks_uri configured).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use airlock_identity::{IdentityConfig, PrincipalKind, Verifier};

const BIN: &str = env!("CARGO_BIN_EXE_airlock-dev-idp");

/// A running `serve`, killed when dropped.
struct Served {
    child: Child,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(port: u16, issuer: &str, key_file: &Path) -> Served {
    let child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--issuer", issuer])
        .arg("--key-file")
        .arg(key_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start airlock-dev-idp serve");
    Served { child }
}

fn token(key_file: &Path, issuer: &str, extra: &[&str]) -> String {
    let output = Command::new(BIN)
        .arg("token")
        .arg("--key-file")
        .arg(key_file)
        .args(["--issuer", issuer, "--audience", "api://airlock"])
        .args(extra)
        .output()
        .expect("run airlock-dev-idp token");
    assert_success(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NEVER PRODUCTION"), "no warning: {stderr}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits until the issuer answers with its keys.
async fn wait_ready(verifier: &Verifier) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match verifier.refresh_keys().await {
            Ok(keys) => {
                assert_eq!(keys, 1);
                return;
            }
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("dev-idp never became ready: {error}"),
        }
    }
}

#[tokio::test]
async fn served_keys_verify_minted_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("dev-idp.key.pem");
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}/dev-tenant/v2.0");
    let _served = serve(port, &issuer, &key_file);

    let mut config = IdentityConfig::new(issuer.clone(), "api://airlock");
    config
        .group_names
        .insert("db-reviewers".into(), "0b7e2f4c-reviewers".into());
    let verifier = Verifier::new(config).unwrap();
    wait_ready(&verifier).await;

    // A reviewer (user token).
    let reviewer = token(
        &key_file,
        &issuer,
        &[
            "--sub",
            "reviewer-1",
            "--name",
            "Rita Reviewer",
            "--group",
            "0b7e2f4c-reviewers",
            "--group",
            "other-group",
            "--ttl",
            "10m",
        ],
    );
    let identity = verifier.verify(&reviewer).await.unwrap();
    assert_eq!(identity.subject.0, "reviewer-1");
    assert_eq!(identity.kind, PrincipalKind::User);
    assert_eq!(identity.display_name.as_deref(), Some("Rita Reviewer"));
    assert!(identity.in_group("db-reviewers"));
    assert_eq!(identity.groups.len(), 2);
    assert_eq!(identity.issuer, issuer);
    let ttl = identity.expires_at - time::OffsetDateTime::now_utc();
    assert!(ttl > time::Duration::minutes(9) && ttl <= time::Duration::minutes(10));

    // An agent (app-only token) with an app role.
    let agent = token(
        &key_file,
        &issuer,
        &[
            "--sub",
            "agent-7",
            "--name",
            "maintenance-agent",
            "--app",
            "--role",
            "Airlock.Agent",
            "--tenant",
            "tenant-x",
        ],
    );
    let identity = verifier.verify(&agent).await.unwrap();
    assert_eq!(identity.kind, PrincipalKind::App);
    assert!(identity.has_role("Airlock.Agent"));
    assert_eq!(identity.tenant.unwrap().0, "tenant-x");
    assert_eq!(identity.display_name.as_deref(), Some("maintenance-agent"));

    // A token for another audience is refused by the same verifier.
    let output = Command::new(BIN)
        .arg("token")
        .arg("--key-file")
        .arg(&key_file)
        .args(["--issuer", &issuer, "--audience", "api://other"])
        .args(["--sub", "x", "--name", "x"])
        .output()
        .unwrap();
    assert_success(&output);
    let other = String::from_utf8(output.stdout).unwrap();
    let err = verifier.verify(other.trim()).await.unwrap_err();
    assert_eq!(err.code(), "wrong_audience");

    // A token signed by a different key file is refused.
    let stranger_key = dir.path().join("stranger.key.pem");
    let forged = token(&stranger_key, &issuer, &["--sub", "x", "--name", "x"]);
    let err = verifier.verify(&forged).await.unwrap_err();
    assert_eq!(err.code(), "unknown_key_id", "{err}");
}

#[test]
fn serve_refuses_non_loopback_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--key-file"])
        .arg(dir.path().join("k.pem"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("loopback"), "{stderr}");
    assert!(stderr.contains("NEVER PRODUCTION"), "{stderr}");
    assert!(!dir.path().join("k.pem").exists(), "no key for a refused start");
}

#[test]
fn help_says_development_only() {
    for args in [&["--help"][..], &["serve", "--help"], &["token", "--help"]] {
        let output = Command::new(BIN).args(args).output().unwrap();
        assert_success(&output);
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains("NEVER PRODUCTION"), "{args:?}: {help}");
    }
}
