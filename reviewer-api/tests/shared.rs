//! What reviewer replicas share through a real NATS server
//! (`reviewer.state: nats`): sessions one replica stores are seen by
//! another and by a restarted one, a sign-out ends them everywhere, a
//! sign-in callback is answered once, and the notifier lease has one holder
//! at a time and passes on when its holder stops.

use std::time::{Duration, Instant};

use airlock_eventlog::NatsSettings;
use airlock_reviewer::shared::{LEASE_RENEW, LEASE_TTL, Shared, entry_key};
use airlock_testkit::{NatsRole, NatsServer, TestCa};

fn settings(nats: &NatsServer) -> NatsSettings {
    serde_norway::from_str(&format!("url: {}", nats.url())).expect("nats settings")
}

#[tokio::test]
async fn replicas_see_each_others_sessions_and_a_sign_out_ends_them_everywhere() {
    let nats = NatsServer::start();
    let one = Shared::open(&settings(&nats), Duration::from_secs(3600))
        .await
        .expect("open");
    let two = Shared::open(&settings(&nats), Duration::from_secs(3600))
        .await
        .expect("open");
    one.put_session("cookie-1", b"alice's session")
        .await
        .expect("put");
    assert_eq!(
        two.session("cookie-1").await.expect("get").as_deref(),
        Some(&b"alice's session"[..])
    );
    assert_eq!(two.session("cookie-2").await.expect("get"), None);
    // A replica started later (a restart) sees it too.
    let three = Shared::open(&settings(&nats), Duration::from_secs(3600))
        .await
        .expect("open");
    assert!(three.session("cookie-1").await.expect("get").is_some());
    two.remove_session("cookie-1").await.expect("remove");
    assert_eq!(one.session("cookie-1").await.expect("get"), None);

    // What NATS holds is sealed: no cookie, no token in the clear.
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let kv = async_nats::jetstream::new(client)
        .get_key_value("airlock_reviewer_sessions")
        .await
        .expect("bucket");
    one.put_session("cookie-9", b"bearer eyJ-secret-token")
        .await
        .expect("put");
    let raw = kv
        .get(entry_key("session", "cookie-9"))
        .await
        .expect("get")
        .expect("stored");
    assert!(!raw.windows(6).any(|w| w == b"secret"), "stored sealed");
    // Someone who can write the bucket can delete a session, not forge one.
    kv.put(entry_key("session", "cookie-9"), b"forged".to_vec().into())
        .await
        .expect("overwrite");
    assert_eq!(one.session("cookie-9").await.expect("get"), None);
}

#[tokio::test]
async fn a_sign_in_started_on_one_replica_finishes_on_another_once() {
    let nats = NatsServer::start();
    let one = Shared::open(&settings(&nats), Duration::from_secs(3600))
        .await
        .expect("open");
    let two = Shared::open(&settings(&nats), Duration::from_secs(3600))
        .await
        .expect("open");
    one.put_login("state-1", "seal-1", b"pkce verifier")
        .await
        .expect("put");
    assert_eq!(
        two.take_login("state-1", "seal-1")
            .await
            .expect("take")
            .as_deref(),
        Some(&b"pkce verifier"[..])
    );
    assert_eq!(
        one.take_login("state-1", "seal-1").await.expect("take"),
        None,
        "answered once"
    );
    one.put_login("state-3", "seal-3", b"verifier 3")
        .await
        .expect("put");
    assert_eq!(
        two.take_login("state-3", "state-3").await.expect("take"),
        None,
        "the state does not open what the cookie's secret sealed"
    );
    assert_eq!(two.take_login("state-2", "seal-2").await.expect("take"), None);
}

#[tokio::test]
async fn the_notifier_lease_has_one_holder_and_passes_on_when_it_stops_renewing() {
    let nats = NatsServer::start();
    let one = Shared::open(&settings(&nats), Duration::from_secs(3600))
        .await
        .expect("open");
    let two = Shared::open(&settings(&nats), Duration::from_secs(3600))
        .await
        .expect("open");
    let mut revision = one.take_lease("one").await.expect("the first takes it");
    assert_eq!(two.take_lease("two").await, None, "held");
    one.set_cursor(41).await.expect("cursor");
    // Renewed past the lease's lifetime: still one holder.
    let until = Instant::now() + LEASE_TTL + LEASE_RENEW;
    while Instant::now() < until {
        tokio::time::sleep(LEASE_RENEW).await;
        revision = one.renew_lease("one", revision).await.expect("renewed");
        assert_eq!(two.take_lease("two").await, None, "still held");
    }
    // The holder stops (dies): the lease lapses and the other takes it,
    // within the lease's lifetime and one renewal period.
    let stopped = Instant::now();
    let taken = loop {
        if let Some(r) = two.take_lease("two").await {
            break r;
        }
        assert!(
            stopped.elapsed() < LEASE_TTL + LEASE_RENEW * 3,
            "not taken over in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = stopped.elapsed();
    eprintln!("lease taken over {took:?} after its holder stopped");
    assert!(
        took >= LEASE_TTL - Duration::from_secs(1),
        "not before it lapsed: {took:?}"
    );
    assert_eq!(
        one.renew_lease("one", revision).await,
        None,
        "the old holder lost it"
    );
    assert_eq!(
        two.cursor().await.expect("cursor"),
        41,
        "the new holder resumes where the old one got"
    );
    two.release_lease(taken).await;
    assert!(one.take_lease("one").await.is_some(), "released at once");
}

/// With the deployed permissions, the reviewer's NATS user reaches its own
/// buckets and nothing of the log.
#[tokio::test]
async fn the_reviewer_user_reaches_its_buckets_and_not_the_log() {
    let ca = TestCa::new("reviewer NATS CA");
    let nats = NatsServer::start_secured(&ca, false);
    let d = ca.dir().display();
    let user = NatsRole::Reviewer.user();
    let password = ca.dir().join("reviewer.password");
    std::fs::write(&password, nats.password(NatsRole::Reviewer)).expect("password file");
    let settings: NatsSettings = serde_norway::from_str(&format!(
        "url: {}\ntls: {{ ca: {d}/ca.crt }}\nuser: {user}\npassword_file: {}\ninbox_prefix: _INBOX_{user}\n",
        nats.url(),
        password.display()
    ))
    .expect("settings");
    let shared = Shared::open(&settings, Duration::from_secs(3600))
        .await
        .expect("open as the reviewer");
    shared.put_session("cookie", b"session").await.expect("put");
    assert!(shared.session("cookie").await.expect("get").is_some());
    let revision = shared.take_lease("me").await.expect("the lease");
    let log = airlock_eventlog::EventLog::connect(settings)
        .await
        .expect("connect");
    let denied = log.read_all(airlock_eventlog::ReadFilter::default()).await;
    assert!(denied.is_err(), "the reviewer cannot read the log");

    // Review finding: NATS does not check reply subjects, so a user of the
    // log's account could have the server store its answer on a subject of
    // the reviewer's bucket, overwriting the lease. The reviewer's account
    // is its own: the answer lands in the log's account, not in the bucket.
    let proxy_password = ca.dir().join("proxy.password");
    std::fs::write(&proxy_password, nats.password(NatsRole::Proxy)).expect("password file");
    let proxy_settings: NatsSettings = serde_norway::from_str(&format!(
        "url: {}\ntls: {{ ca: {d}/ca.crt }}\nuser: airlock-proxy\npassword_file: {}\ninbox_prefix: _INBOX_airlock-proxy\n",
        nats.url(),
        proxy_password.display()
    ))
    .expect("settings");
    let proxy = airlock_eventlog::EventLog::connect(proxy_settings)
        .await
        .expect("connect as a proxy");
    for reply in [
        "$KV.airlock_reviewer_lease.notifier",
        "$KV.airlock_reviewer_notifier.cursor",
    ] {
        proxy
            .client()
            .publish_with_reply("$JS.API.INFO", reply, "".into())
            .await
            .expect("publish");
    }
    proxy.client().flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        shared.renew_lease("me", revision).await.is_some(),
        "the lease is untouched"
    );
    assert_eq!(
        shared.cursor().await.expect("cursor"),
        0,
        "the cursor is untouched"
    );
}
