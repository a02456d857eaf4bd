//! JWKS cache behaviour against an in-process issuer: refetch policy,
//! single flight, rotation, outages, size and time limits, discovery.
//!
//! Real loopback HTTP with short periods rather than `tokio::time::pause()`:
//! a paused clock auto-advances while a request waits on the socket, which
//! would fire the fetch timeout spuriously.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_identity::{
    CacheOptions, CheckReport, FetchError, IdentityConfig, Verifier, VerifyError, check_token,
};
use common::*;
use serde_json::json;

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn unknown_kid_refetches_at_most_once_per_cooldown() {
    let main = TestKey::rsa(0, "main");
    let stranger = TestKey::ec("stranger");
    let server = JwksServer::start(&[&main]).await;
    let verifier = server.verifier_with(fast_options());

    verifier.verify(&main.sign(&user_claims())).await.unwrap();
    assert_eq!(server.jwks_fetches(), 1);

    // Past the cooldown: one refetch, and the kid is still unknown after it.
    tokio::time::sleep(PAST_COOLDOWN).await;
    let unknown = stranger.sign(&user_claims());
    let err = verifier.verify(&unknown).await.unwrap_err();
    assert!(matches!(err, VerifyError::UnknownKeyId { .. }), "{err}");
    assert!(err.to_string().contains("even after refetching"), "{err}");
    assert_eq!(server.jwks_fetches(), 2);

    // Within the cooldown: refused without asking the issuer again.
    for _ in 0..5 {
        let err = verifier.verify(&unknown).await.unwrap_err();
        assert!(err.to_string().contains("at most every"), "{err}");
    }
    assert_eq!(server.jwks_fetches(), 2);

    // Known keys never cause a fetch.
    verifier.verify(&main.sign(&user_claims())).await.unwrap();
    assert_eq!(server.jwks_fetches(), 2);

    // After the cooldown the next unknown kid may refetch again.
    tokio::time::sleep(PAST_COOLDOWN).await;
    verifier.verify(&unknown).await.unwrap_err();
    assert_eq!(server.jwks_fetches(), 3);
}

#[tokio::test]
async fn production_cooldown_is_thirty_seconds() {
    assert_eq!(
        CacheOptions::default().unknown_kid_cooldown,
        Duration::from_secs(30)
    );
    let main = TestKey::rsa(0, "main");
    let stranger = TestKey::ec("stranger");
    let server = JwksServer::start(&[&main]).await;
    let verifier = server.verifier();
    verifier.verify(&main.sign(&user_claims())).await.unwrap();
    // Right after a fetch, a burst of unknown kids causes no fetch at all.
    for i in 0..20 {
        let token = stranger.sign_as(
            jsonwebtoken::Algorithm::ES256,
            Some(&format!("forged-{i}")),
            &user_claims(),
        );
        let err = verifier.verify(&token).await.unwrap_err();
        assert_eq!(err.code(), "unknown_key_id");
    }
    assert_eq!(server.jwks_fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unknown_kids_cause_one_fetch() {
    let main = TestKey::rsa(0, "main");
    let stranger = TestKey::ec("stranger");
    let server = JwksServer::start(&[&main]).await;
    let verifier = server.verifier_with(fast_options());
    verifier.verify(&main.sign(&user_claims())).await.unwrap();
    assert_eq!(server.jwks_fetches(), 1);
    tokio::time::sleep(PAST_COOLDOWN).await;

    // A slow issuer makes sure all callers overlap with the one fetch.
    server.set_mode(Mode::Slow(Duration::from_millis(300)));
    let tokens: Vec<String> = (0..100)
        .map(|i| {
            stranger.sign_as(
                jsonwebtoken::Algorithm::ES256,
                Some(&format!("unknown-{i}")),
                &user_claims(),
            )
        })
        .collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(tokens.len()));
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let verifier = verifier.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                verifier.verify(&token).await
            })
        })
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.code(), "unknown_key_id", "{err}");
    }
    assert_eq!(server.jwks_fetches(), 2, "100 unknown kids, one fetch");
    assert_eq!(verifier.jwks_fetch_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_under_load_fetches_once() {
    let main = TestKey::rsa(0, "main");
    let server = JwksServer::start(&[&main]).await;
    server.set_mode(Mode::Slow(Duration::from_millis(200)));
    let verifier = server.verifier();
    let token = main.sign(&user_claims());
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let verifier = verifier.clone();
            let token = token.clone();
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(server.jwks_fetches(), 1);
}

#[tokio::test]
async fn key_rotation_on_demand() {
    let old = TestKey::rsa(0, "2025-01");
    let new = TestKey::rsa(1, "2025-07");
    let server = JwksServer::start(&[&old]).await;
    let verifier = server.verifier_with(fast_options());
    let old_token = old.sign(&user_claims());
    verifier.verify(&old_token).await.unwrap();

    // The issuer rotates: the new key is published, the old one removed.
    server.set_keys(&[&new]);
    tokio::time::sleep(PAST_COOLDOWN).await;
    let new_identity = verifier.verify(&new.sign(&user_claims())).await.unwrap();
    assert_eq!(new_identity.tenant.unwrap().0, TENANT);
    assert_eq!(server.jwks_fetches(), 2);

    let err = verifier.verify(&old_token).await.unwrap_err();
    assert_eq!(err.code(), "unknown_key_id", "{err}");
    // A fresh token from the removed key fails the same way.
    let err = verifier.verify(&old.sign(&app_claims())).await.unwrap_err();
    assert_eq!(err.code(), "unknown_key_id", "{err}");
}

#[tokio::test]
async fn key_rotation_by_background_refresh() {
    let old = TestKey::rsa(0, "2025-01");
    let new = TestKey::rsa(1, "2025-07");
    let server = JwksServer::start(&[&old]).await;
    let verifier = server.verifier_with(CacheOptions {
        refresh_interval: Duration::from_millis(200),
        ..CacheOptions::default()
    });
    let old_token = old.sign(&user_claims());
    verifier.verify(&old_token).await.unwrap();
    let before = server.jwks_fetches();

    // Publish the new key beside the old one: the refresh picks it up with
    // no unknown-kid refetch (the 30 s cooldown would otherwise apply).
    server.set_keys(&[&old, &new]);
    wait_for("a background refresh", || server.jwks_fetches() > before).await;
    wait_for("the refresh to land", || {
        verifier.jwks_fetch_count() > before as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    verifier.verify(&new.sign(&user_claims())).await.unwrap();

    // Retire the old key: after the next refresh its tokens are refused.
    server.set_keys(&[&new]);
    let before = server.jwks_fetches();
    wait_for("another background refresh", || server.jwks_fetches() > before).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = verifier.verify(&old_token).await.unwrap_err();
    assert_eq!(err.code(), "unknown_key_id", "{err}");
    verifier.verify(&new.sign(&app_claims())).await.unwrap();
}

#[tokio::test]
async fn issuer_outage_keeps_cached_keys_until_max_age() {
    let main = TestKey::rsa(0, "main");
    let stranger = TestKey::ec("stranger");
    let server = JwksServer::start(&[&main]).await;
    let verifier = server.verifier_with(CacheOptions {
        max_key_age: Duration::from_secs(3),
        ..fast_options()
    });
    let token = main.sign(&user_claims());
    verifier.verify(&token).await.unwrap();

    server.set_mode(Mode::Down);
    tokio::time::sleep(PAST_COOLDOWN).await;
    let err = verifier.verify(&stranger.sign(&user_claims())).await.unwrap_err();
    assert_eq!(err.code(), "unknown_key_id");
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    assert!(matches!(
        verifier.refresh_keys().await,
        Err(FetchError::Status { status: 503, .. })
    ));
    // The issuer is down, the cached key still verifies.
    verifier.verify(&token).await.unwrap();

    // Past the maximum age without a successful fetch: fail closed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = verifier.verify(&token).await.unwrap_err();
    assert_eq!(err.code(), "jwks_unavailable", "{err}");
    assert!(err.is_unavailable());

    // The issuer comes back: verification recovers on its own.
    server.set_mode(Mode::Normal);
    tokio::time::sleep(Duration::from_millis(200)).await;
    verifier.verify(&token).await.unwrap();
}

#[tokio::test]
async fn cold_start_with_issuer_down_fails_closed() {
    let main = TestKey::rsa(0, "main");
    let server = JwksServer::start(&[&main]).await;
    server.set_mode(Mode::Down);
    let verifier = server.verifier_with(fast_options());
    let err = verifier.verify(&main.sign(&user_claims())).await.unwrap_err();
    assert_eq!(err.code(), "jwks_unavailable", "{err}");
    assert!(err.to_string().contains("503"), "{err}");
}

#[tokio::test]
async fn oversized_jwks_is_refused() {
    let main = TestKey::rsa(0, "main");
    let server = JwksServer::start(&[&main]).await;
    server.set_mode(Mode::Huge);
    let verifier = server.verifier_with(fast_options());
    let err = verifier.refresh_keys().await.unwrap_err();
    assert!(
        matches!(err, FetchError::BodyTooLarge { limit: 65536, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn slow_issuer_times_out() {
    let main = TestKey::rsa(0, "main");
    let server = JwksServer::start(&[&main]).await;
    server.set_mode(Mode::Slow(Duration::from_secs(5)));
    let verifier = server.verifier_with(CacheOptions {
        fetch_timeout: Duration::from_millis(300),
        ..fast_options()
    });
    let started = Instant::now();
    let err = verifier.refresh_keys().await.unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn discovery_finds_the_jwks() {
    let main = TestKey::rsa(0, "main");
    let server = JwksServer::start(&[&main]).await;
    let config = IdentityConfig::new(server.base.clone(), AUDIENCE);
    let verifier = Verifier::new(config.clone()).unwrap();
    let token = main.sign(&with(user_claims(), json!({"iss": server.base})));
    verifier.verify(&token).await.unwrap();
    verifier.verify(&token).await.unwrap();
    assert_eq!(server.discovery_fetches(), 1);
    assert_eq!(server.jwks_fetches(), 1);

    // OIDC Discovery §4.3: the document must name the issuer it is for.
    server.set_discovery(json!({"issuer": "https://evil.example", "jwks_uri": server.jwks_uri()}));
    let err = Verifier::new(config.clone())
        .unwrap()
        .refresh_keys()
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::DiscoveryIssuerMismatch { .. }), "{err}");

    // A discovered jwks_uri obeys the same https-or-loopback rule.
    server.set_discovery(json!({"issuer": server.base, "jwks_uri": "http://keys.example/keys"}));
    let err = Verifier::new(config).unwrap().refresh_keys().await.unwrap_err();
    assert!(matches!(err, FetchError::InsecureUrl { .. }), "{err}");
}

#[tokio::test]
async fn check_token_reports_identity_or_reason() {
    let main = TestKey::rsa(0, "main");
    let server = JwksServer::start(&[&main]).await;
    let config = server.config();

    let good = format!("{}\n", main.sign(&user_claims()));
    let report = CheckReport::from_result(&check_token(&config, &good).await);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["accepted"], true);
    assert_eq!(json["identity"]["groups"][0]["name"], "db-reviewers");

    let now = now();
    let expired = main.sign(&with(user_claims(), json!({"exp": now - 600})));
    let report = CheckReport::from_result(&check_token(&config, &expired).await);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["accepted"], false);
    assert_eq!(json["reason"], "token_expired");
    assert!(json["message"].as_str().unwrap().contains("expired at"));
    assert!(json.get("identity").is_none());
}

#[tokio::test]
async fn https_is_spoken_and_fails_cleanly_against_a_plain_server() {
    // The TLS stack is wired (no crypto-provider panic): a handshake against
    // a plain-HTTP port fails as a transport error.
    let main = TestKey::rsa(0, "main");
    let server = JwksServer::start(&[&main]).await;
    let mut config = server.config();
    config.jwks_uri = Some(server.jwks_uri().replace("http://", "https://"));
    let verifier = Verifier::with_options(config, fast_options()).unwrap();
    let err = verifier.refresh_keys().await.unwrap_err();
    assert!(matches!(err, FetchError::Transport { .. }), "{err}");
    assert_eq!(server.jwks_fetches(), 0);
}

#[tokio::test]
async fn a_cancelled_verification_does_not_abandon_the_fetch() {
    let main = TestKey::rsa(0, "main");
    let server = JwksServer::start(&[&main]).await;
    server.set_mode(Mode::Slow(Duration::from_millis(300)));
    let verifier = server.verifier();
    let token = main.sign(&user_claims());

    // The caller gives up (a client disconnecting mid-login)...
    let gave_up = tokio::time::timeout(Duration::from_millis(50), verifier.verify(&token)).await;
    assert!(gave_up.is_err());
    // ...but the fetch it started completes and fills the cache.
    wait_for("the fetch to land", || verifier.jwks_fetch_count() == 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    verifier.verify(&token).await.unwrap();
    assert_eq!(server.jwks_fetches(), 1);
}
