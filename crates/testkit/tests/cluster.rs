//! The cluster harness forms real JetStream clusters, and leadership moves
//! when a leader dies or is cut off, as the fault tests rely on.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use airlock_testkit::{Host, NatsCluster, Net, eventually_blocking, satisfies};

/// Elections took 5 to 9 s after a leader went quiet, in runs with
/// nats-server 2.15.1 (raft's election timeout is randomised).
const ELECTION: Duration = Duration::from_secs(20);

#[test]
fn a_killed_meta_leader_is_replaced_and_rejoins_after_restart() {
    let started = Instant::now();
    let mut cluster = NatsCluster::start(3);
    eprintln!("formed in {:?}", started.elapsed());
    assert_eq!(cluster.urls().split(',').count(), 3);
    assert!(cluster.urls().starts_with("nats://127.0.0.1:"));
    let first = cluster.meta_leader().expect("a formed cluster has a meta leader");

    cluster.kill(first);
    assert!(!cluster.is_running(first));
    let killed = Instant::now();
    eventually_blocking("a new meta leader", ELECTION, || {
        satisfies(cluster.meta_leader(), |l| l.is_some_and(|l| l != first))
    });
    eprintln!("new meta leader {:?} after the kill", killed.elapsed());

    cluster.restart(first);
    assert!(cluster.is_running(first));
    // Every node, the restarted one included, follows one leader and is current.
    cluster.wait_formed(Duration::from_secs(30));
    assert!(
        cluster.store_dir(first).join("jetstream").is_dir(),
        "the restarted node kept its store"
    );
}

#[test]
fn a_killed_stream_leader_is_replaced_by_a_current_replica() {
    let mut cluster = NatsCluster::start(3);
    let created = js_request(
        cluster.client_addr(0),
        "$JS.API.STREAM.CREATE.FAULTS",
        STREAM_CONFIG,
    );
    assert!(!created.contains("\"error\""), "stream create: {created}");
    eventually_blocking("three current replicas of FAULTS", ELECTION, || {
        satisfies(cluster.stream_current_replicas(None, "FAULTS"), |n| *n == Some(3))
    });
    let first = cluster
        .stream_leader(None, "FAULTS")
        .expect("a stream with current replicas has a leader");
    assert_eq!(
        cluster.stream_leader(Some("AIRLOCK"), "FAULTS"),
        None,
        "no such account"
    );
    assert_eq!(cluster.stream_leader(None, "NO_SUCH_STREAM"), None);

    cluster.kill(first);
    eventually_blocking("a new leader of FAULTS", ELECTION, || {
        satisfies(cluster.stream_leader(None, "FAULTS"), |l| {
            l.is_some_and(|l| l != first)
        })
    });
}

#[test]
fn an_isolated_meta_leader_is_replaced_by_the_majority_and_rejoins_after_healing() {
    let net = Net::new();
    let hosts: Vec<Host> = (1..=3).map(|i| net.host(&format!("n{i}"))).collect();
    let cluster = NatsCluster::start_on(&hosts);
    assert_eq!(cluster.url(0), format!("nats://{}:4222", hosts[0].ip()));
    let first = cluster.meta_leader().expect("a formed cluster has a meta leader");

    net.isolate(&hosts[first]);
    let isolated = Instant::now();
    eventually_blocking("a meta leader among the two others", ELECTION, || {
        satisfies(cluster.meta_leader(), |l| l.is_some_and(|l| l != first))
    });
    eprintln!("new meta leader {:?} after isolation", isolated.elapsed());

    net.heal();
    let healed = Instant::now();
    cluster.wait_formed(Duration::from_secs(60));
    eprintln!("whole again {:?} after healing", healed.elapsed());
}

/// A partition that the root namespace sees both sides of: the old leader
/// may go on naming itself for a while, but it is not *the* leader.
#[test]
fn a_partitioned_meta_leader_loses_to_the_majority() {
    let net = Net::new();
    let hosts: Vec<Host> = (1..=3).map(|i| net.host(&format!("n{i}"))).collect();
    let cluster = NatsCluster::start_on(&hosts);
    let first = cluster.meta_leader().expect("a formed cluster has a meta leader");
    let others: Vec<&Host> = hosts.iter().filter(|h| **h != hosts[first]).collect();

    net.partition(&[&hosts[first]], &others);
    let parted = Instant::now();
    eventually_blocking("a meta leader on the majority side", ELECTION, || {
        satisfies(cluster.meta_leader(), |l| l.is_some_and(|l| l != first))
    });
    eprintln!("new meta leader {:?} after the partition", parted.elapsed());

    net.heal();
    let healed = Instant::now();
    cluster.wait_formed(Duration::from_secs(60));
    eprintln!("whole again {:?} after healing", healed.elapsed());
}

/// Three replicas on file storage.
const STREAM_CONFIG: &str = r#"{"name":"FAULTS","subjects":["faults.>"],"num_replicas":3,"storage":"file"}"#;

/// One JetStream API request over the bare NATS protocol (no client crate
/// in the harness): the reply's payload.
fn js_request(addr: SocketAddr, subject: &str, body: &str) -> String {
    let mut conn = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let request = format!(
        "CONNECT {{\"verbose\":false,\"headers\":true}}\r\nSUB _INBOX.harness 1\r\n\
         PUB {subject} _INBOX.harness {}\r\n{body}\r\n",
        body.len()
    );
    conn.write_all(request.as_bytes()).expect("send the request");
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = conn.read(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no reply to {subject}: {e}; so far {:?}",
                String::from_utf8_lossy(&seen)
            )
        });
        assert!(
            n > 0,
            "{addr} closed the connection: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        assert!(!text.contains("-ERR"), "{text}");
        // "MSG <subject> <sid> <size>\r\n<payload>\r\n"
        let Some(start) = text.find("MSG _INBOX.harness ") else {
            continue;
        };
        let Some((header, rest)) = text[start..].split_once("\r\n") else {
            continue;
        };
        let size: usize = header
            .rsplit(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("MSG size");
        if rest.len() >= size {
            return rest[..size].to_owned();
        }
    }
}
