//! Logging into a real PostgreSQL with each password method.

use std::time::Duration;

use airlock_proxy::codec::{FeMessage, TxStatus};
use airlock_proxy::upstream::{Secret, Upstream, UpstreamConfig, UpstreamError, ready_status};
use airlock_testkit::{Postgres, PostgresOptions};

fn config(pg: &Postgres, user: &str, password: Option<&str>) -> UpstreamConfig {
    UpstreamConfig {
        tls: Default::default(),
        host: "127.0.0.1".into(),
        port: pg.port(),
        user: user.into(),
        database: "shop".into(),
        password: password.map(Secret::new),
        token: None,
        connect_timeout: Duration::from_secs(5),
    }
}

async fn select_one(up: &mut Upstream) -> String {
    up.send(
        &FeMessage::Query {
            sql: "SELECT current_user".into(),
        }
        .to_frame()
        .to_bytes(),
    )
    .await
    .expect("send");
    let mut user = String::new();
    loop {
        let f = up.recv().await.expect("recv");
        if f.tag == b'D' {
            // DataRow: one column: i16 count, i32 len, bytes.
            user = String::from_utf8_lossy(&f.body[6..]).into_owned();
        }
        if let Some(status) = ready_status(&f) {
            assert_eq!(status, TxStatus::Idle);
            return user;
        }
    }
}

#[tokio::test]
async fn logs_in_with_scram_md5_cleartext_and_trust() {
    let pg = Postgres::start_with(
        PostgresOptions::default()
            .hba("host all md5_user 127.0.0.1/32 md5")
            .hba("host all clear_user 127.0.0.1/32 password")
            .hba("host all trust_user 127.0.0.1/32 trust"),
    );
    pg.create_database("shop");
    pg.create_role("scram_user", "scram-pass");
    pg.psql(
        "postgres",
        "SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN PASSWORD 'md5-pass'",
    );
    pg.create_role("clear_user", "clear-pass");
    pg.psql("postgres", "CREATE ROLE trust_user LOGIN");

    for (user, password) in [
        ("scram_user", Some("scram-pass")),
        ("md5_user", Some("md5-pass")),
        ("clear_user", Some("clear-pass")),
        ("trust_user", None),
    ] {
        let mut up = Upstream::connect(
            &config(&pg, user, password),
            &[("application_name".into(), "airlock-test".into())],
        )
        .await
        .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_ne!(up.process_id, 0, "{user}: BackendKeyData received");
        assert!(
            up.parameters.iter().any(|(k, _)| k == "server_version"),
            "{user}: ParameterStatus collected"
        );
        assert_eq!(select_one(&mut up).await, user);
    }
}

#[tokio::test]
async fn a_wrong_password_is_refused_without_showing_it() {
    let pg = Postgres::start();
    pg.create_database("shop");
    pg.create_role("maint", "right");
    let err = Upstream::connect(&config(&pg, "maint", Some("wrong-secret")), &[])
        .await
        .expect_err("wrong password");
    match &err {
        UpstreamError::Refused { sqlstate, .. } => assert_eq!(sqlstate, "28P01"),
        other => panic!("want Refused, got {other:?}"),
    }
    assert!(
        !format!("{err} {err:?}").contains("wrong-secret"),
        "the password leaked: {err:?}"
    );

    let err = Upstream::connect(&config(&pg, "maint", None), &[])
        .await
        .expect_err("no password");
    assert!(matches!(err, UpstreamError::PasswordRequired { .. }), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_clear_error() {
    let port = airlock_testkit::free_port();
    let cfg = UpstreamConfig {
        tls: Default::default(),
        host: "127.0.0.1".into(),
        port,
        user: "u".into(),
        database: "d".into(),
        password: None,
        token: None,
        connect_timeout: Duration::from_secs(2),
    };
    let err = Upstream::connect(&cfg, &[]).await.expect_err("nothing listens");
    assert!(matches!(err, UpstreamError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")));
}

#[tokio::test]
async fn tls_to_the_upstream_require_and_verify_full() {
    use airlock_proxy::upstream::UpstreamTls;
    let pg = Postgres::start_with(
        PostgresOptions::default()
            .tls()
            .hba("hostssl all maint 127.0.0.1/32 scram-sha-256")
            .hba("host all maint 127.0.0.1/32 reject"),
    );
    pg.create_database("shop");
    pg.create_role("maint", "pw");
    let mut cfg = config(&pg, "maint", Some("pw"));

    // Plain text is refused by this server's pg_hba.
    assert!(Upstream::connect(&cfg, &[]).await.is_err());

    for tls in [
        UpstreamTls::Require,
        UpstreamTls::VerifyFull {
            root_cert: pg.server_ca(),
        },
    ] {
        cfg.tls = tls.clone();
        let mut up = Upstream::connect(&cfg, &[])
            .await
            .unwrap_or_else(|e| panic!("{tls:?}: {e}"));
        up.send(
            &FeMessage::Query {
                sql: "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()".into(),
            }
            .to_frame()
            .to_bytes(),
        )
        .await
        .expect("send");
        let mut ssl = String::new();
        loop {
            let f = up.recv().await.expect("recv");
            if f.tag == b'D' {
                ssl = String::from_utf8_lossy(&f.body[6..]).into_owned();
            }
            if ready_status(&f).is_some() {
                break;
            }
        }
        assert_eq!(ssl, "t", "{tls:?}: the upstream session is encrypted");
    }

    // verify-full against another CA fails: the chain is checked.
    let other = tempfile::tempdir().expect("tempdir");
    let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
    std::fs::write(other.path().join("ca.crt"), ca.cert.pem()).expect("write");
    cfg.tls = UpstreamTls::VerifyFull {
        root_cert: other.path().join("ca.crt"),
    };
    let err = Upstream::connect(&cfg, &[])
        .await
        .expect_err("untrusted certificate");
    assert!(matches!(err, UpstreamError::Tls { .. }), "{err:?}");
}
