//! Approval round trip through a running stack (the release binaries that
//! tests/bench/run.sh starts): agents send DELETEs the policy holds, a
//! reviewer approves each through the control plane's gRPC `Decide`, and the
//! agents get their results. Two latencies, each per statement:
//!
//! * release: from the reviewer's `Decide` call returning (the decision is
//!   acknowledged) to the agent receiving its result. Zero when the agent
//!   already had it (the release raced ahead of the acknowledgement).
//! * visibility: from JetStream storing `ApprovalRequested` (the stored
//!   message's timestamp) to the request arriving on a reviewer's `Watch`
//!   stream. Both clocks are this machine's.
//! * listed: from the agent sending the statement to the request arriving
//!   on `Watch`, its impact estimate (EXPLAIN on the proxy's own
//!   connection) included; `estimated` counts those that carry one.
//!
//! `AIRLOCK_BENCH_APPROVAL_FORM=unbounded` sends each DELETE with a second
//! statement in the same Query, which EXPLAIN cannot take: no estimate, so
//! the approval carries no row bounds and the release is the plain one.
//! The default (`bounded`) is one DELETE, estimated, and released under
//! bounds (bounded execution's own round trips included).
//!
//! Environment (all set by run.sh):
//!   AIRLOCK_BENCH_ADDR, AIRLOCK_BENCH_USER, AIRLOCK_BENCH_DB, AIRLOCK_BENCH_PASSWORD
//!       the proxy, and the agent's login (password = token)
//!   AIRLOCK_BENCH_REVIEWER_TOKEN, AIRLOCK_BENCH_CONTROL   the reviewer and the control plane
//!   AIRLOCK_BENCH_NATS         the event log, to read when each request was stored
//!   AIRLOCK_BENCH_STATEMENTS   how many statements (default 500)
//!   AIRLOCK_BENCH_AGENTS       agent sessions holding at once (default 8)
//!   AIRLOCK_BENCH_OUT          where the JSON result goes
//! Without them it says so and does nothing (it is not a CI test).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use airlock_e2e::bench::{agent_config, env};
use airlock_e2e::{authed, request_id, session_with};
use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{EventLog, NatsSettings};
use futures::StreamExt;
use tokio::sync::mpsc;

type Reviewer = proto::reviewer_service_client::ReviewerServiceClient<tonic::transport::Channel>;

/// When a request arrived on `Watch`, its stream sequence, and whether it
/// carried an impact estimate.
type Arrival = (SystemTime, u64, bool);

/// Nearest-rank percentile of sorted values.
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

/// One agent session with its NOTICEs collected.
async fn agent(
    config: &tokio_postgres::Config,
) -> (Arc<tokio_postgres::Client>, mpsc::UnboundedReceiver<String>) {
    let (client, notices) = session_with(config).await;
    (Arc::new(client), notices)
}

/// What one held statement measured.
struct Held {
    request_id: String,
    /// Statement sent -> hold NOTICE received.
    noticed: Duration,
    /// Decide returned -> result received (zero if the result came first).
    release: Duration,
    /// The result arrived before Decide returned.
    raced: bool,
    /// Statement sent -> result received, the whole round trip.
    total: Duration,
    /// When the statement was sent, by the wall clock (for `listed`).
    sent_at: SystemTime,
}

/// One agent: holds `count` statements one after another, each approved
/// by the reviewer as soon as its NOTICE names the request.
async fn agent_loop(
    config: tokio_postgres::Config,
    mut reviewer: Reviewer,
    token: String,
    first_id: i64,
    count: usize,
    unbounded: bool,
) -> Vec<Held> {
    let (client, mut notices) = agent(&config).await;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        // Deletes nothing (the table is empty) but needs approval.
        let mut sql = format!(
            "DELETE FROM airlock_bench_held WHERE id = {}",
            first_id + i as i64
        );
        if unbounded {
            sql.push_str("; DELETE FROM airlock_bench_held WHERE false");
        }
        let sent_at = SystemTime::now();
        let sent = Instant::now();
        let c = client.clone();
        let running = tokio::spawn(async move {
            let r = c.simple_query(&sql).await;
            (r, Instant::now())
        });
        let notice = tokio::time::timeout(Duration::from_secs(30), notices.recv())
            .await
            .expect("a hold NOTICE within 30s")
            .expect("the session is open");
        let noticed = sent.elapsed();
        let id = request_id(&notice).unwrap_or_else(|| panic!("a request id in the NOTICE: {notice}"));
        reviewer
            .decide(authed(
                &token,
                proto::DecideRequest {
                    request_id: id.clone(),
                    decision: proto::Decision::Approve as i32,
                    reason: "benchmark".into(),
                    statement_sha256: vec![],
                    max_rows: vec![],
                    scope: None,
                    break_glass: false,
                    slack: None,
                },
            ))
            .await
            .expect("the reviewer's approval is accepted");
        let acknowledged = Instant::now();
        let (result, done) = tokio::time::timeout(Duration::from_secs(30), running)
            .await
            .expect("the statement is released within 30s")
            .expect("the agent task");
        result.expect("the approved DELETE ran");
        out.push(Held {
            request_id: id,
            noticed,
            release: done.saturating_duration_since(acknowledged),
            raced: done < acknowledged,
            total: done - sent,
            sent_at,
        });
    }
    out
}

#[tokio::main]
async fn main() {
    let (Some(addr), Some(control), Some(nats), Some(out)) = (
        env("AIRLOCK_BENCH_ADDR"),
        env("AIRLOCK_BENCH_CONTROL"),
        env("AIRLOCK_BENCH_NATS"),
        env("AIRLOCK_BENCH_OUT"),
    ) else {
        eprintln!("approval: nothing to measure; tests/bench/run.sh runs this bench against a live stack");
        return;
    };
    let statements: usize = env("AIRLOCK_BENCH_STATEMENTS").map_or(500, |v| v.parse().expect("a count"));
    let agents: usize = env("AIRLOCK_BENCH_AGENTS")
        .map_or(8, |v| v.parse().expect("a count"))
        .clamp(1, statements.max(1));
    let token = env("AIRLOCK_BENCH_REVIEWER_TOKEN").expect("AIRLOCK_BENCH_REVIEWER_TOKEN");
    let config = agent_config(&addr);
    let log = EventLog::connect(NatsSettings::new(nats))
        .await
        .expect("connect to NATS");
    let reviewer = Reviewer::connect(control)
        .await
        .expect("connect to the control plane");

    // A reviewer watching every request: when did each new one arrive?
    let unbounded = env("AIRLOCK_BENCH_APPROVAL_FORM").as_deref() == Some("unbounded");
    // When each request arrived, its sequence, and whether it carried an
    // estimate.
    let seen: Arc<Mutex<HashMap<String, Arrival>>> = Arc::default();
    let mut watch = reviewer
        .clone()
        .watch(authed(&token, proto::WatchRequest::default()))
        .await
        .expect("watch requests")
        .into_inner();
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(item) = watch.next().await {
                let at = SystemTime::now();
                let Ok(item) = item else { break };
                if let Some(event) = &item.event
                    && let Some(Body::ApprovalRequested(asked)) = &event.body
                {
                    let estimated = asked
                        .impact
                        .as_ref()
                        .and_then(|i| i.estimate.as_ref())
                        .is_some_and(|e| e.unavailable.is_empty());
                    seen.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(event.request_id.clone(), (at, item.sequence, estimated));
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let per_agent = statements.div_ceil(agents);
    let mut tasks = Vec::new();
    let mut left = statements;
    for a in 0..agents {
        let count = per_agent.min(left);
        left -= count;
        if count == 0 {
            break;
        }
        tasks.push(tokio::spawn(agent_loop(
            config.clone(),
            reviewer.clone(),
            token.clone(),
            (a * per_agent) as i64 + 1,
            count,
            unbounded,
        )));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.extend(t.await.expect("an agent task"));
    }
    let elapsed = started.elapsed();
    // Late Watch deliveries are still measured.
    tokio::time::sleep(Duration::from_secs(1)).await;
    watcher.abort();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut visible = Vec::new();
    let mut listed = Vec::new();
    let mut estimated = 0;
    let mut unseen = 0;
    for h in &held {
        let Some((at, sequence, with_estimate)) = seen.get(&h.request_id) else {
            unseen += 1;
            continue;
        };
        estimated += usize::from(*with_estimate);
        if let Ok(d) = at.duration_since(h.sent_at) {
            listed.push(ms(d));
        }
        let stored = log.get(*sequence).await.expect("read ApprovalRequested");
        let stored_ns = stored.stored_at.unix_timestamp_nanos();
        let at_ns = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        visible.push((at_ns - stored_ns) as f64 / 1e6);
    }
    let raced = held.iter().filter(|h| h.raced).count();
    let json = format!(
        "{{\"statements\": {}, \"agents\": {agents}, \"elapsed_s\": {:.2}, \"released_before_ack\": {raced}, \
         \"not_seen_on_watch\": {unseen}, \"form\": \"{}\", \"estimated\": {estimated},\n {},\n {},\n {},\n {},\n {}}}\n",
        held.len(),
        elapsed.as_secs_f64(),
        if unbounded { "unbounded" } else { "bounded" },
        summary("release", held.iter().map(|h| ms(h.release)).collect()),
        summary("visible", visible),
        summary("listed", listed),
        summary("notice", held.iter().map(|h| ms(h.noticed)).collect()),
        summary("total", held.iter().map(|h| ms(h.total)).collect()),
    );
    std::fs::write(&out, &json).expect("write the result");
    eprint!("approval: {json}");
}
