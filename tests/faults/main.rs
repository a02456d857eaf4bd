//! The fault suite: the stack from its binaries on a three-node JetStream
//! cluster with the stream replicated three times, agents reading and
//! holding statements while nodes die, quorum is lost and nodes are cut off
//! from the network. After each fault, once healthy again, the invariants
//! are checked against the real PostgreSQL and the exported log:
//!
//! * nothing unapproved ran: a held DELETE removed its row only if its
//!   request was granted;
//! * every statement the agent saw succeed is in the log exactly once, and
//!   one that failed at most once;
//! * every request ended;
//! * `airlock-control verify` passes;
//! * clients got an answer (rows or an error) within a bound.
//!
//! Recovery times are printed on standard error (`FAULTS:` lines) for docs/reliability.md.
//! Run with `cargo nextest run -p airlock-e2e --test faults`; the scenario
//! with hosts needs root (network namespaces).

use std::time::{Duration, Instant};

use airlock_e2e::binaries::{ALICE, BinaryStack, hold};
use airlock_e2e::review::{authed, vote};
use airlock_e2e::{StackBuilder, eventually};
use airlock_eventlog::proto;
use tokio::sync::watch;

mod soak;

/// One scenario at a time within a test process (`cargo test` runs a
/// binary's tests in threads): three clusters at once on a small machine
/// would measure the machine, not Airlock.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Longest an agent may wait for any answer during a fault.
const ANSWER_BOUND: Duration = Duration::from_secs(20);

/// A stream of reads from one agent, each marked so the log can be
/// searched for it, on a session that is opened again after a failure.
struct Reads {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<ReadReport>,
}

#[derive(Debug, Default)]
struct ReadReport {
    /// Tells this agent's reads from another's in the log.
    name: &'static str,
    /// Each read answered with rows, and when.
    ok: Vec<(u64, Instant)>,
    failed: Vec<(u64, String)>,
    logins_failed: u64,
    slowest: Duration,
}

impl ReadReport {
    /// What marks read `i` in its text, and so in the log.
    fn marker(&self, i: u64) -> String {
        format!("q-{}{i}*/", self.name)
    }
}

impl Reads {
    fn start(port: u16, token: String) -> Reads {
        Reads::start_named("", port, token)
    }

    fn start_named(name: &'static str, port: u16, token: String) -> Reads {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut report = ReadReport {
                name,
                ..ReadReport::default()
            };
            let mut client: Option<tokio_postgres::Client> = None;
            let mut i = 0u64;
            while !*stopped.borrow() {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    let started = Instant::now();
                    match tokio::time::timeout(ANSWER_BOUND, connect(port, &token)).await {
                        Ok(Ok(c)) => client = Some(c),
                        _ => {
                            report.logins_failed += 1;
                            report.slowest = report.slowest.max(started.elapsed());
                            let _ = tokio::time::timeout(Duration::from_millis(200), stopped.changed()).await;
                            continue;
                        }
                    }
                    report.slowest = report.slowest.max(started.elapsed());
                }
                i += 1;
                let sql = format!("SELECT /*{} {i} AS n", report.marker(i));
                let started = Instant::now();
                let answer = tokio::time::timeout(
                    ANSWER_BOUND,
                    client.as_ref().expect("connected").simple_query(&sql),
                )
                .await;
                report.slowest = report.slowest.max(started.elapsed());
                match answer {
                    Ok(Ok(_)) => report.ok.push((i, Instant::now())),
                    Ok(Err(e)) => {
                        report.failed.push((i, e.to_string()));
                        client = None;
                    }
                    Err(_) => {
                        report.failed.push((i, "no answer in time".into()));
                        client = None;
                    }
                }
                let _ = tokio::time::timeout(Duration::from_millis(40), stopped.changed()).await;
            }
            report
        });
        Reads { stop, task }
    }

    async fn finish(self) -> ReadReport {
        let _ = self.stop.send(true);
        self.task.await.expect("the reading agent")
    }
}

async fn connect(port: u16, token: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(port)
        .user("agent-7")
        .password(token)
        .dbname("prod-maintenance")
        .connect_timeout(Duration::from_secs(10));
    let (client, conn) = c.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// How long until a new login and a read succeed, probing every 100 ms.
async fn time_to_serve(port: u16, token: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(5), connect(port, token)).await
            && c.simple_query("SELECT 1").await.is_ok()
        {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "no login served within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Approves request `id` as alice, retrying while the control plane cannot
/// (it is catching up, or the log is unavailable); when the vote landed.
async fn approve(stack: &BinaryStack, alice: &str, id: &str, within: Duration) -> Instant {
    let started = Instant::now();
    loop {
        let mut client = stack.reviewer().await;
        match client
            .decide(authed(alice, vote(id, proto::Decision::Approve, "fault test")))
            .await
        {
            Ok(_) => return Instant::now(),
            Err(e) => {
                assert!(
                    started.elapsed() < within,
                    "could not approve {id} within {within:?}: {e:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The invariants, once the stack is healthy again. `deletes` are the
/// held DELETEs: (order id, request id).
async fn check(stack: &BinaryStack, reads: &ReadReport, deletes: &[(u32, String)], alice: &str) {
    // Every request ends: whatever is still pending is left to expire,
    // which takes the hold timeout; none of ours may be.
    let mut client = stack.reviewer().await;
    for (order, id) in deletes {
        let view = eventually("the request to have ended", Duration::from_secs(60), || {
            let mut client = client.clone();
            let id = id.clone();
            async move {
                let v = client
                    .get_request(authed(alice, proto::GetRequestRequest { request_id: id }))
                    .await
                    .map(|r| r.into_inner());
                airlock_e2e::satisfies(v, |v| {
                    v.as_ref()
                        .is_ok_and(|v| v.state != proto::RequestState::Pending as i32)
                })
            }
        })
        .await
        .expect("the request");
        let remaining = stack
            .pg
            .psql("shop", &format!("SELECT count(*) FROM orders WHERE id = {order}"));
        let granted = view.state == proto::RequestState::Granted as i32;
        assert_eq!(
            remaining,
            if granted { "0" } else { "1" },
            "order {order}: the row is gone only if request {id} was granted ({view:?})"
        );
    }
    let _ = &mut client;
    // Every read the agent saw succeed is recorded exactly once; a failed
    // one at most once (it may have run before the failure).
    let log = eventually("the reads to be recorded", Duration::from_secs(60), || async {
        let out = stack
            .control_command(&["export", "--from", "1"])
            .output()
            .expect("export");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let missing = reads
            .ok
            .iter()
            .filter(|(i, _)| !text.contains(&reads.marker(*i)))
            .count();
        airlock_e2e::satisfies(text, |_| out.status.success() && missing == 0)
    })
    .await;
    for (i, _) in &reads.ok {
        assert_eq!(
            log.matches(&reads.marker(*i)).count(),
            1,
            "read {i} succeeded: recorded exactly once"
        );
    }
    for (i, why) in &reads.failed {
        assert!(
            log.matches(&reads.marker(*i)).count() <= 1,
            "read {i} failed ({why}): recorded at most once"
        );
    }
    let out = stack.control_command(&["verify"]).output().expect("verify");
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        reads.slowest <= ANSWER_BOUND + Duration::from_secs(1),
        "an agent waited {:?}",
        reads.slowest
    );
}

fn stack() -> StackBuilder {
    StackBuilder::new()
        .nats_cluster(3)
        .hold_timeout(Duration::from_secs(600))
        .orders(20)
}

fn figure(name: &str, value: Duration) {
    eprintln!("FAULTS: {name}: {} ms", value.as_millis());
}

#[tokio::test]
async fn the_stream_leader_dies_under_load() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut stack = stack().start_binaries();
    let agent = stack.agent_token();
    let alice = stack.user_token(ALICE);
    let reads = Reads::start(stack.proxy_port, agent.clone());
    let held = hold(&stack, &agent, "DELETE FROM orders WHERE id = 1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let cluster = stack.cluster.as_mut().expect("a cluster");
    let leader = cluster
        .stream_leader(None, "AIRLOCK")
        .expect("the stream has a leader");
    cluster.kill(leader);
    let killed = Instant::now();
    let serve = time_to_serve(stack.proxy_port, &agent, Duration::from_secs(60)).await;
    figure("new logins served after the stream leader died", serve);
    let voted = approve(&stack, &alice, &held.request_id, Duration::from_secs(60)).await;
    let ran = tokio::time::timeout(Duration::from_secs(60), held.outcome)
        .await
        .expect("the agent hears its outcome in time")
        .expect("join");
    figure("vote to agent with a node down", voted.elapsed());
    assert!(ran.is_ok(), "the approved DELETE ran: {ran:?}");
    figure("whole scenario since the kill", killed.elapsed());

    stack.cluster.as_mut().expect("a cluster").restart(leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = reads.finish().await;
    eprintln!(
        "FAULTS: leader death: {} reads ok, {} failed, {} logins failed, slowest answer {} ms",
        report.ok.len(),
        report.failed.len(),
        report.logins_failed,
        report.slowest.as_millis()
    );
    check(&stack, &report, &[(1, held.request_id)], &alice).await;
}

#[tokio::test]
async fn quorum_is_lost_and_comes_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut stack = stack().start_binaries();
    let agent = stack.agent_token();
    let alice = stack.user_token(ALICE);
    let reads = Reads::start(stack.proxy_port, agent.clone());
    let held = hold(&stack, &agent, "DELETE FROM orders WHERE id = 2").await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Two of three nodes down: the stream cannot store anything.
    let cluster = stack.cluster.as_mut().expect("a cluster");
    cluster.kill(0);
    cluster.kill(1);
    // A login that cannot be recorded is refused, in bounded time, before
    // the client is told it is in.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let refused = tokio::time::timeout(Duration::from_secs(30), connect(stack.proxy_port, &agent))
        .await
        .expect("an answer in bounded time");
    let refused_in = started.elapsed();
    figure("login refused without quorum", refused_in);
    let e = refused.expect_err("no login without a log");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("57P03"), "{e}");
    // Nothing new is held without the log.
    let second = tokio::time::timeout(Duration::from_secs(30), connect(stack.proxy_port, &agent)).await;
    assert!(matches!(second, Ok(Err(_))), "still refused");

    let cluster = stack.cluster.as_mut().expect("a cluster");
    cluster.restart(0);
    cluster.restart(1);
    let back = Instant::now();
    let serve = time_to_serve(stack.proxy_port, &agent, Duration::from_secs(90)).await;
    figure("new logins served after quorum came back", serve);
    let voted = approve(&stack, &alice, &held.request_id, Duration::from_secs(90)).await;
    let ran = tokio::time::timeout(Duration::from_secs(60), held.outcome)
        .await
        .expect("the agent hears its outcome in time")
        .expect("join");
    figure("vote to agent after quorum came back", voted.elapsed());
    figure("quorum back to vote landed", voted.duration_since(back));
    assert!(ran.is_ok(), "the approved DELETE ran: {ran:?}");
    let report = reads.finish().await;
    eprintln!(
        "FAULTS: quorum loss: {} reads ok, {} failed, {} logins failed, slowest answer {} ms",
        report.ok.len(),
        report.failed.len(),
        report.logins_failed,
        report.slowest.as_millis()
    );
    check(&stack, &report, &[(2, held.request_id)], &alice).await;
}

#[tokio::test]
async fn the_whole_cluster_restarts() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut stack = stack().start_binaries();
    let agent = stack.agent_token();
    let alice = stack.user_token(ALICE);
    let held = hold(&stack, &agent, "DELETE FROM orders WHERE id = 3").await;
    let cluster = stack.cluster.as_mut().expect("a cluster");
    for i in 0..3 {
        cluster.stop(i);
    }
    for i in 0..3 {
        cluster.restart(i);
    }
    let back = Instant::now();
    let voted = approve(&stack, &alice, &held.request_id, Duration::from_secs(90)).await;
    let ran = tokio::time::timeout(Duration::from_secs(60), held.outcome)
        .await
        .expect("the agent hears its outcome in time")
        .expect("join");
    figure("vote to agent after a NATS restart", voted.elapsed());
    figure("NATS back to vote landed", voted.duration_since(back));
    assert!(ran.is_ok(), "the approved DELETE ran: {ran:?}");
    check(&stack, &ReadReport::default(), &[(3, held.request_id)], &alice).await;
}

#[tokio::test]
async fn a_node_cut_off_from_the_network() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut stack = stack().nats_hosts().start_binaries();
    let agent = stack.agent_token();
    let alice = stack.user_token(ALICE);
    let reads = Reads::start(stack.proxy_port, agent.clone());
    let held = hold(&stack, &agent, "DELETE FROM orders WHERE id = 4").await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let leader = stack
        .cluster
        .as_ref()
        .expect("a cluster")
        .stream_leader(None, "AIRLOCK")
        .expect("the stream has a leader");
    // Cut off from the other nodes and from every client: established
    // connections stall, as across a real partition.
    let net = stack.net.as_ref().expect("hosts");
    net.isolate(&stack.nats_hosts[leader]);
    let serve = time_to_serve(stack.proxy_port, &agent, Duration::from_secs(90)).await;
    figure("new logins served after the stream leader was cut off", serve);
    let voted = approve(&stack, &alice, &held.request_id, Duration::from_secs(90)).await;
    let ran = tokio::time::timeout(Duration::from_secs(90), held.outcome)
        .await
        .expect("the agent hears its outcome in time")
        .expect("join");
    figure("vote to agent with the leader cut off", voted.elapsed());
    assert!(ran.is_ok(), "the approved DELETE ran: {ran:?}");
    stack.net.as_ref().expect("hosts").heal();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = reads.finish().await;
    eprintln!(
        "FAULTS: partition: {} reads ok, {} failed, {} logins failed, slowest answer {} ms",
        report.ok.len(),
        report.failed.len(),
        report.logins_failed,
        report.slowest.as_millis()
    );
    check(&stack, &report, &[(4, held.request_id)], &alice).await;
    let _ = &mut stack;
}
