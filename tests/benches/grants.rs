//! Grant uses through a running stack (tests/bench/run.sh starts it): a
//! reviewer approves one held DELETE with a fingerprint scope, and then:
//!
//! * use: one agent session runs statements of that shape one after
//!   another, each a grant use (judged, the use claimed in the log with one
//!   append under optimistic concurrency, then run bounded); the latency per
//!   statement, against a SELECT of the same table and shape that policy
//!   allows (judged and run, recorded in the background);
//! * race: agents on every proxy given (AIRLOCK_BENCH_ADDRS) use the one
//!   grant at once; uses per second across all of them, and how many ran
//!   (never more than max_uses).
//!
//! Environment (set by run.sh):
//!   AIRLOCK_BENCH_ADDR, AIRLOCK_BENCH_USER, AIRLOCK_BENCH_DB, AIRLOCK_BENCH_PASSWORD
//!   AIRLOCK_BENCH_ADDRS         every proxy (comma-separated host:port) for the race
//!   AIRLOCK_BENCH_REVIEWER_TOKEN, AIRLOCK_BENCH_CONTROL
//!   AIRLOCK_BENCH_GRANT_USES    uses timed one after another (default 1000)
//!   AIRLOCK_BENCH_RACERS        agent sessions per proxy in the race (default 2)
//!   AIRLOCK_BENCH_OUT           where the JSON result goes
//! Without them it says so and does nothing (it is not a CI test).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use airlock_e2e::bench::{agent_config, env};
use airlock_e2e::{authed, request_id, session_with};
use airlock_eventlog::proto;

type Reviewer = proto::reviewer_service_client::ReviewerServiceClient<tonic::transport::Channel>;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn summary(name: &str, mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    format!(
        "\"{name}\": {{\"n\": {}, \"p50_ms\": {:.3}, \"p90_ms\": {:.3}, \"p99_ms\": {:.3}, \"max_ms\": {:.3}, \"mean_ms\": {mean:.3}}}",
        values.len(),
        percentile(&values, 50.0),
        percentile(&values, 90.0),
        percentile(&values, 99.0),
        values.last().copied().unwrap_or(f64::NAN),
    )
}

/// Holds one DELETE and approves it with a fingerprint scope of `uses`;
/// returns once its grant is active.
async fn grant(config: &tokio_postgres::Config, reviewer: &mut Reviewer, token: &str, uses: u32) -> String {
    let (client, mut notices) = session_with(config).await;
    let held = tokio::spawn(async move {
        client
            .simple_query("DELETE FROM airlock_bench_held WHERE id = -1")
            .await
    });
    let notice = tokio::time::timeout(Duration::from_secs(30), notices.recv())
        .await
        .expect("held in time")
        .expect("a notice");
    let id = request_id(&notice).expect("a request id");
    reviewer
        .decide(authed(
            token,
            proto::DecideRequest {
                request_id: id.clone(),
                decision: proto::Decision::Approve as i32,
                reason: "bench".into(),
                statement_sha256: vec![],
                max_rows: vec![],
                scope: Some(proto::GrantScope {
                    r#match: proto::grant_scope::Match::Fingerprint as i32,
                    ttl: prost_types::Duration::try_from(Duration::from_secs(3600)).ok(),
                    max_uses: uses,
                    max_rows: Some(1),
                    ..Default::default()
                }),
                break_glass: false,
                slack: None,
            },
        ))
        .await
        .expect("approve in scope");
    held.await.expect("task").expect("the approved statement ran");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let g = reviewer
            .get_grant(authed(token, proto::GetGrantRequest { grant_id: id.clone() }))
            .await;
        if g.is_ok_and(|g| g.into_inner().state == proto::GrantState::Active as i32) {
            break;
        }
        assert!(Instant::now() < deadline, "the grant was not issued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Pushed to the proxies over Attach.
    tokio::time::sleep(Duration::from_millis(500)).await;
    id
}

#[tokio::main]
async fn main() {
    let (Some(addr), Some(control), Some(out)) = (
        env("AIRLOCK_BENCH_ADDR"),
        env("AIRLOCK_BENCH_CONTROL"),
        env("AIRLOCK_BENCH_OUT"),
    ) else {
        eprintln!("grants: nothing to measure; tests/bench/run.sh runs this bench against a live stack");
        return;
    };
    let token = env("AIRLOCK_BENCH_REVIEWER_TOKEN").expect("AIRLOCK_BENCH_REVIEWER_TOKEN");
    let n: usize = env("AIRLOCK_BENCH_GRANT_USES").map_or(1000, |v| v.parse().expect("a count"));
    let racers: usize = env("AIRLOCK_BENCH_RACERS").map_or(2, |v| v.parse().expect("a count"));
    let addrs: Vec<String> = env("AIRLOCK_BENCH_ADDRS")
        .map(|a| a.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|| vec![addr.clone()]);
    let config = agent_config(&addr);
    let mut reviewer = Reviewer::connect(control)
        .await
        .expect("connect to the control plane");

    // 1. One client: grant uses against allowed reads of the same shape.
    let grant_id = grant(
        &config,
        &mut reviewer,
        &token,
        u32::try_from(n + 10).unwrap_or(u32::MAX),
    )
    .await;
    let (client, mut notices) = session_with(&config).await;
    // Warm up: the first use of a grant on a proxy reads its subject.
    for i in 0..10 {
        client
            .simple_query(&format!("DELETE FROM airlock_bench_held WHERE id = {}", -100 - i))
            .await
            .expect("a grant use");
    }
    let mut uses = Vec::with_capacity(n);
    let mut reads = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        client
            .simple_query(&format!("SELECT * FROM airlock_bench_held WHERE id = {i}"))
            .await
            .expect("an allowed read");
        reads.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        client
            .simple_query(&format!("DELETE FROM airlock_bench_held WHERE id = {i}"))
            .await
            .expect("a grant use");
        uses.push(t.elapsed().as_secs_f64() * 1e3);
    }
    assert!(
        notices.try_recv().is_err(),
        "a use was held: the grant ran out or never arrived"
    );
    drop(client);
    let _ = grant_id;

    // 2. The race: every proxy's agents on one grant until it is used up.
    let budget: u32 = 500;
    let race_grant = grant(&config, &mut reviewer, &token, budget).await;
    let next_id = Arc::new(AtomicI64::new(1_000_000));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for a in &addrs {
        for _ in 0..racers {
            let config = agent_config(a);
            let next_id = next_id.clone();
            tasks.push(tokio::spawn(async move {
                let (client, mut notices) = session_with(&config).await;
                let mut ran = 0u32;
                let mut last = Instant::now();
                loop {
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let sql = format!("DELETE FROM airlock_bench_held WHERE id = {id}");
                    tokio::select! {
                        r = client.simple_query(&sql) => { r.expect("a use"); ran += 1; last = Instant::now(); }
                        _ = notices.recv() => break,
                    }
                }
                (ran, last)
            }));
        }
    }
    let mut ran = 0u32;
    let mut last = started;
    for t in tasks {
        let (r, l) = t.await.expect("a racer");
        ran += r;
        last = last.max(l);
    }
    let secs = last.duration_since(started).as_secs_f64();
    assert_eq!(ran, budget, "statements run under a grant of {budget} uses");
    // The log agrees: the grant counted exactly its uses.
    let view = reviewer
        .get_grant(authed(&token, proto::GetGrantRequest { grant_id: race_grant }))
        .await
        .expect("the race's grant")
        .into_inner();
    assert_eq!(view.uses, budget, "uses the control plane folded");
    let json = format!(
        "{{{}, {}, \"race\": {{\"proxies\": {}, \"sessions\": {}, \"max_uses\": {budget}, \"ran\": {ran}, \"seconds\": {secs:.3}, \"uses_per_second\": {:.0}}}}}\n",
        summary("grant_use", uses),
        summary("allowed_read", reads),
        addrs.len(),
        addrs.len() * racers,
        f64::from(ran) / secs.max(1e-9),
    );
    std::fs::write(&out, &json).expect("write the result");
    eprint!("grants: {json}");
}
