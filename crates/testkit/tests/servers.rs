//! The harness starts real servers that work, and cleans up after them.

use airlock_testkit::{NatsServer, Postgres, PostgresOptions, shared_nats, shared_postgres};
use std::net::TcpStream;

#[test]
fn nats_starts_with_jetstream_and_stops_on_drop() {
    let mut nats = NatsServer::start();
    let port = nats.port();
    let store = nats.store_dir();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    nats.stop();
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "stopped server still accepts"
    );
    nats.restart();
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "restart on the same port"
    );
    assert!(store.exists(), "JetStream store kept across restart");
    drop(nats);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!store.exists(), "store removed on drop");
}

#[test]
fn postgres_runs_queries_and_logs_statements() {
    let pg = Postgres::start_with(PostgresOptions::default().setting("log_statement", "all"));
    pg.create_database("shop");
    pg.psql(
        "shop",
        "CREATE TABLE orders (id int primary key); INSERT INTO orders VALUES (1), (2)",
    );
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM orders"), "2");
    assert!(
        pg.server_log().contains("INSERT INTO orders"),
        "log_statement=all reaches the server log"
    );
    pg.create_role("maint", "s3cret");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'maint'"
        ),
        "t"
    );
}

#[test]
fn shared_servers_are_shared() {
    assert_eq!(shared_nats().port(), shared_nats().port());
    assert_eq!(shared_postgres().psql("postgres", "SELECT 40 + 2"), "42");
}
