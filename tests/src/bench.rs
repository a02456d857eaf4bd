//! What the benchmarks (`tests/benches`, run by tests/bench/run.sh against
//! a live stack) share: their settings from the environment and the
//! agent's login they describe.

/// An `AIRLOCK_BENCH_*` setting; unset and empty are the same.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The agent's login to `addr` (host:port): `AIRLOCK_BENCH_USER`,
/// `AIRLOCK_BENCH_DB`, and `AIRLOCK_BENCH_PASSWORD` (the token), in plain
/// text.
pub fn agent_config(addr: &str) -> tokio_postgres::Config {
    let (host, port) = addr.rsplit_once(':').expect("AIRLOCK_BENCH_ADDR is host:port");
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port.parse().expect("a port"))
        .user(env("AIRLOCK_BENCH_USER").unwrap_or_default())
        .dbname(env("AIRLOCK_BENCH_DB").unwrap_or_default())
        .password(env("AIRLOCK_BENCH_PASSWORD").unwrap_or_default())
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    config
}
