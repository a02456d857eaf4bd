//! Memory per idle connection: opens many authenticated connections to a
//! running server (airlock-proxy, or PgBouncer for comparison), runs one
//! `SELECT 1` on each so every session is fully open, then leaves them idle
//! and reads the server's resident memory (`VmRSS` in /proc/<pid>/status)
//! before and after.
//!
//! Run by tests/bench/run.sh, which starts the stack and passes everything
//! in the environment:
//!   AIRLOCK_BENCH_PID          the server process to measure
//!   AIRLOCK_BENCH_ADDR         host:port to connect to
//!   AIRLOCK_BENCH_USER, AIRLOCK_BENCH_DB, AIRLOCK_BENCH_PASSWORD
//!   AIRLOCK_BENCH_CONNECTIONS  how many (default 1000)
//!   AIRLOCK_BENCH_OUT          where the JSON result goes
//! Without them it says so and does nothing (it is not a CI test).

use std::time::{Duration, Instant};

use airlock_e2e::bench::{agent_config, env};
use futures::StreamExt;

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

struct Target {
    config: tokio_postgres::Config,
}

impl Target {
    /// One connection, used once, then kept open and idle.
    async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client.simple_query("SELECT 1").await?;
        Ok(client)
    }

    async fn connect_many(&self, n: usize) -> Vec<tokio_postgres::Client> {
        // A few logins at a time, as a fleet of agents starting up would.
        futures::stream::iter(0..n)
            .map(|_| self.connect())
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .map(|c| c.expect("an idle connection logs in"))
            .collect()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (Some(pid), Some(addr), Some(out)) = (
        env("AIRLOCK_BENCH_PID"),
        env("AIRLOCK_BENCH_ADDR"),
        env("AIRLOCK_BENCH_OUT"),
    ) else {
        eprintln!("idle: nothing to measure; tests/bench/run.sh runs this bench against a live stack");
        return;
    };
    let pid: u32 = pid.parse().expect("AIRLOCK_BENCH_PID is a pid");
    let n: usize = env("AIRLOCK_BENCH_CONNECTIONS").map_or(1000, |v| v.parse().expect("a count"));
    let mut config = agent_config(&addr);
    config.connect_timeout(Duration::from_secs(30));
    let target = Target { config };

    // Warm up: first logins fill caches (signing keys, pools) that do not
    // grow with the number of connections.
    drop(target.connect_many(20).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid);
    let fds_before = open_fds(pid);

    let started = Instant::now();
    let clients = target.connect_many(n).await;
    let connect_secs = started.elapsed().as_secs_f64();
    // Let the server settle (sessions' first events recorded, buffers idle).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = rss_kib(pid);
    let fds_during = open_fds(pid);
    drop(clients);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);

    let per_connection = (during.saturating_sub(before)) as f64 / n as f64;
    let json = format!(
        "{{\"connections\": {n}, \"rss_before_kib\": {before}, \"rss_idle_kib\": {during}, \
         \"rss_after_close_kib\": {after}, \"per_connection_kib\": {per_connection:.2}, \
         \"fds_before\": {fds_before}, \"fds_idle\": {fds_during}, \"connect_secs\": {connect_secs:.2}}}\n"
    );
    std::fs::write(&out, &json).expect("write the result");
    eprint!("idle: {json}");
}
