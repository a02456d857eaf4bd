//! A throwaway JetStream cluster of `nats-server`s for fault tests: kill,
//! stop and restart nodes, and ask who leads. Every node runs under the
//! watchdog of [`crate::process`], with its config, log and store in a temp
//! dir of its own.
//!
//! Leadership is read from each node's monitoring endpoint, `/jsz`
//! (`meta_cluster.leader` for the meta group,
//! `account_details[].stream_detail[].cluster.leader` for a stream; both
//! hold a server name). Both go stale in a fault: followers go on naming a
//! dead leader until they elect another (5 to 9 s), and a leader cut off by
//! a partition goes on naming itself for about 20 s after the majority has
//! elected a new one. So a node counts as leader only when it names itself
//! and a majority of its group names it too.
//!
//! Does not own the network: [`NatsCluster::start_on`] places nodes on the
//! [`Host`]s of a [`crate::Net`], which is where partitions are made.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Deserialize;

use crate::net::Host;
use crate::process::{Supervised, find_binary, free_port, log_tail};
use crate::wait::poll_blocking;

/// How long [`NatsCluster::start`] waits for a meta leader that every node
/// follows, with every peer current.
const FORMATION_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a node's client and monitoring ports may take to open.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(15);

/// The `/jsz` query that lists every account's streams with their raft
/// groups.
const STREAMS_QUERY: &str = "/jsz?accounts=true&streams=true";
const CONSUMERS_QUERY: &str = "/jsz?accounts=true&streams=true&consumers=true";

/// The account of a server without accounts (the "global" account).
pub const DEFAULT_ACCOUNT: &str = "$G";

/// The usual NATS ports, used on a [`Host`]: each host has an address of
/// its own, so nothing else can hold them.
const HOST_CLIENT_PORT: u16 = 4222;
const HOST_CLUSTER_PORT: u16 = 6222;
const HOST_MONITOR_PORT: u16 = 8222;

/// `n` `nats-server`s with JetStream, routed to each other as one cluster.
/// Node `i` (from 0) is named `n{i+1}`; every method takes the index.
/// Dropping it kills every node and removes their stores.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
}

/// One server of the cluster. Its ports and dir stay the same across
/// `stop` and `restart`.
#[derive(Debug)]
struct Node {
    name: String,
    /// Where it runs: `None` for the root namespace (on 127.0.0.1).
    host: Option<Host>,
    ip: Ipv4Addr,
    client_port: u16,
    cluster_port: u16,
    monitor_port: u16,
    /// Config, log and JetStream store.
    dir: tempfile::TempDir,
    process: Option<Supervised>,
}

impl NatsCluster {
    /// A cluster of `nodes` servers on free ports of 127.0.0.1. Returns once
    /// it has formed; panics, with every node's log, if it does not.
    pub fn start(nodes: usize) -> NatsCluster {
        assert!(nodes > 0, "a cluster needs at least one node");
        NatsCluster::start_placed(&vec![None; nodes])
    }

    /// A cluster with node `i` inside `hosts[i]`, listening on that host's
    /// address on the usual ports (client 4222, cluster 6222, monitoring
    /// 8222). Returns once it has formed; panics, with every node's log, if
    /// it does not.
    pub fn start_on(hosts: &[Host]) -> NatsCluster {
        assert!(!hosts.is_empty(), "a cluster needs at least one host");
        let placement: Vec<_> = hosts.iter().cloned().map(Some).collect();
        NatsCluster::start_placed(&placement)
    }

    fn start_placed(placement: &[Option<Host>]) -> NatsCluster {
        // Free ports are picked before the servers bind them; retry a clash.
        let mut last_log = String::new();
        for _ in 0..3 {
            let mut cluster = NatsCluster::configure(placement);
            match cluster.launch_all() {
                Ok(()) => {
                    cluster.wait_formed(FORMATION_TIMEOUT);
                    return cluster;
                }
                Err(log) if log.contains("address already in use") => last_log = log,
                Err(log) => panic!("the nats cluster did not start:\n{log}"),
            }
        }
        panic!("the nats cluster did not start after 3 tries:\n{last_log}")
    }

    /// Picks ports and dirs and writes every node's config file.
    fn configure(placement: &[Option<Host>]) -> NatsCluster {
        static CLUSTERS: AtomicU32 = AtomicU32::new(0);
        let cluster_name = format!(
            "airlock-test-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let nodes: Vec<Node> = placement
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let dir = tempfile::Builder::new()
                    .prefix(&format!("airlock-nats-n{}-", i + 1))
                    .tempdir()
                    .expect("create a temp dir for a cluster node");
                let (ip, client_port, cluster_port, monitor_port) = match host {
                    Some(h) => (h.ip(), HOST_CLIENT_PORT, HOST_CLUSTER_PORT, HOST_MONITOR_PORT),
                    None => (Ipv4Addr::LOCALHOST, free_port(), free_port(), free_port()),
                };
                Node {
                    name: format!("n{}", i + 1),
                    host: host.clone(),
                    ip,
                    client_port,
                    cluster_port,
                    monitor_port,
                    dir,
                    process: None,
                }
            })
            .collect();
        for node in &nodes {
            let routes: Vec<String> = nodes
                .iter()
                .filter(|other| other.name != node.name)
                .map(|other| format!("nats-route://{}:{}", other.ip, other.cluster_port))
                .collect();
            node.write_config(&cluster_name, &routes);
        }
        NatsCluster { nodes }
    }

    /// Starts every node, then waits for each to listen: the routes of the
    /// first can only connect once the others run. On failure, every
    /// node's log.
    fn launch_all(&mut self) -> Result<(), String> {
        for node in &mut self.nodes {
            node.spawn();
        }
        let mut failed = false;
        for node in &mut self.nodes {
            failed |= node.wait_listening().is_err();
        }
        if failed { Err(self.logs()) } else { Ok(()) }
    }

    /// Waits until the cluster has formed: one meta leader that every node
    /// follows, a meta group of every node, and every follower current
    /// according to the leader. Returns the leader; panics after `within`
    /// with what each node reported and every node's log.
    pub fn wait_formed(&self, within: Duration) -> usize {
        poll_blocking(within, || self.formation()).unwrap_or_else(|seen| {
            panic!(
                "the nats cluster did not form within {within:?}; last seen: {seen}\n{}",
                self.logs()
            )
        })
    }

    /// The meta leader if the cluster has formed, or what is missing.
    fn formation(&self) -> Result<usize, String> {
        let views = self.views("/jsz");
        let groups = meta_groups(&views);
        let summary = || describe(&self.nodes, &views);
        let leader = self
            .agreed_leader(&groups)
            .ok_or_else(|| format!("no meta leader; {}", summary()))?;
        let leader_name = &self.nodes[leader].name;
        if groups
            .iter()
            .any(|g| g.is_none_or(|g| g.leader.as_ref() != Some(leader_name)))
        {
            return Err(format!("not every node follows {leader_name}; {}", summary()));
        }
        let seen_by_leader = groups[leader].map(|g| (g.cluster_size, g.current_followers(leader_name)));
        if seen_by_leader != Some((Some(self.nodes.len()), self.nodes.len() - 1)) {
            return Err(format!("not every peer is current; {}", summary()));
        }
        Ok(leader)
    }

    /// The node that leads the meta group (JetStream's cluster-wide
    /// metadata), if one names itself and a majority agrees. `None` while an
    /// election is pending, and while the followers still name a leader that
    /// is gone.
    pub fn meta_leader(&self) -> Option<usize> {
        let views = self.views("/jsz");
        let groups = meta_groups(&views);
        self.agreed_leader(&groups)
    }

    /// The node that leads `stream` of `account` (`None`: the default
    /// account, [`DEFAULT_ACCOUNT`]), if one names itself and a majority of
    /// the stream's replicas agrees.
    pub fn stream_leader(&self, account: Option<&str>, stream: &str) -> Option<usize> {
        let views = self.views(STREAMS_QUERY);
        let groups = stream_groups(&views, account, stream);
        self.agreed_leader(&groups)
    }

    /// The consumers of `stream` of `account` (the control plane's tail
    /// among them: ordered consumers have one replica), each with the node
    /// that leads it, as that node reports.
    pub fn consumer_hosts(&self, account: Option<&str>, stream: &str) -> Vec<(String, usize)> {
        let account = account.unwrap_or(DEFAULT_ACCOUNT);
        let views = self.views(CONSUMERS_QUERY);
        let mut hosts = Vec::new();
        for (i, view) in views.iter().enumerate() {
            let Ok(view) = view else { continue };
            let name = &self.nodes[i].name;
            let consumers = view
                .account_details
                .iter()
                .filter(|a| a.name == account)
                .flat_map(|a| &a.stream_detail)
                .filter(|s| s.name == stream)
                .flat_map(|s| &s.consumer_detail);
            for c in consumers {
                let leader = c.cluster.as_ref().and_then(|g| g.leader.as_ref());
                if leader.is_none_or(|l| l == name) {
                    hosts.push((c.name.clone(), i));
                }
            }
        }
        hosts
    }

    /// How many replicas of `stream` of `account` are current, the leader
    /// included, according to its leader; `None` without a leader. A test
    /// waits for this to reach the replica count before it kills a leader,
    /// so the survivors hold every acknowledged message.
    pub fn stream_current_replicas(&self, account: Option<&str>, stream: &str) -> Option<usize> {
        let views = self.views(STREAMS_QUERY);
        let groups = stream_groups(&views, account, stream);
        let leader = self.agreed_leader(&groups)?;
        groups[leader].map(|g| 1 + g.current_followers(&self.nodes[leader].name))
    }

    /// The node, among those whose group view is given, that names itself
    /// leader and is named by a majority of the group (its size as the
    /// candidate counts it). A stale leader cut off from the rest may still
    /// name itself; it lacks the majority.
    fn agreed_leader(&self, groups: &[Option<&RaftGroup>]) -> Option<usize> {
        groups.iter().enumerate().find_map(|(i, group)| {
            let group = (*group)?;
            let name = &self.nodes[i].name;
            if group.leader.as_ref() != Some(name) {
                return None;
            }
            let size = group.cluster_size.unwrap_or(0).max(group.peers(name));
            let votes = groups
                .iter()
                .flatten()
                .filter(|g| g.leader.as_ref() == Some(name))
                .count();
            (votes > size / 2).then_some(i)
        })
    }

    /// Every node's `/jsz` answer (or why there is none), fetched in
    /// parallel: an unreachable node costs a connect timeout.
    fn views(&self, query: &str) -> Vec<Result<Jsz, String>> {
        let addrs: Vec<SocketAddr> = self.nodes.iter().map(Node::monitor_addr).collect();
        std::thread::scope(|scope| {
            let fetches: Vec<_> = addrs
                .iter()
                .map(|addr| scope.spawn(move || jsz(*addr, query)))
                .collect();
            fetches
                .into_iter()
                .map(|f| {
                    f.join()
                        .unwrap_or_else(|_| Err("the /jsz fetch panicked".to_owned()))
                })
                .collect()
        })
    }

    /// How many nodes the cluster has.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s server name, `n{i+1}`.
    pub fn name(&self, i: usize) -> &str {
        &self.node(i).name
    }

    /// The [`Host`] node `i` runs on; `None` on loopback.
    pub fn host(&self, i: usize) -> Option<&Host> {
        self.node(i).host.as_ref()
    }

    /// `nats://<ip>:<port>` of node `i`.
    pub fn url(&self, i: usize) -> String {
        let node = self.node(i);
        format!("nats://{}:{}", node.ip, node.client_port)
    }

    /// Every node's URL, comma-separated (what a client's server list takes).
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s client address.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        let node = self.node(i);
        SocketAddr::from((node.ip, node.client_port))
    }

    /// Node `i`'s monitoring (HTTP) address.
    pub fn monitor_addr(&self, i: usize) -> SocketAddr {
        self.node(i).monitor_addr()
    }

    /// Node `i`'s JetStream store directory (kept across `stop`, `kill` and
    /// `restart`).
    pub fn store_dir(&self, i: usize) -> PathBuf {
        self.node(i).store_dir()
    }

    /// Kills node `i` with SIGKILL: no shutdown, as in a crash or power loss.
    pub fn kill(&mut self, i: usize) {
        if let Some(p) = self.node_mut(i).process.as_mut() {
            p.stop("KILL");
        }
    }

    /// Stops node `i` with SIGTERM (a clean shutdown), keeping its store.
    pub fn stop(&mut self, i: usize) {
        if let Some(p) = self.node_mut(i).process.as_mut() {
            p.stop("TERM");
        }
    }

    /// Starts node `i` again (stopping it first if it runs) on the same
    /// ports, config and store, and waits until it listens. It rejoins on
    /// its own; [`NatsCluster::wait_formed`] waits for that. Its host, if
    /// any, must be reachable from the root namespace.
    pub fn restart(&mut self, i: usize) {
        self.stop(i);
        let node = self.node_mut(i);
        node.spawn();
        if let Err(log) = node.wait_listening() {
            panic!("nats-server {} did not restart; its log:\n{log}", node.name);
        }
    }

    /// Whether node `i`'s server is alive (not killed, stopped or crashed).
    pub fn is_running(&mut self, i: usize) -> bool {
        self.node_mut(i)
            .process
            .as_mut()
            .is_some_and(Supervised::is_running)
    }

    /// Node `i`'s log so far (for assertion messages).
    pub fn log(&self, i: usize) -> String {
        log_tail(&self.node(i).log_path())
    }

    /// Every node's log, headed by its name and URL.
    fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| format!("--- {} ({}) log:\n{}", self.name(i), self.url(i), self.log(i)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes
            .get(i)
            .unwrap_or_else(|| panic!("no node {i}: the cluster has {} (from 0)", self.nodes.len()))
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        let size = self.nodes.len();
        self.nodes
            .get_mut(i)
            .unwrap_or_else(|| panic!("no node {i}: the cluster has {size} (from 0)"))
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        // Nothing is kept, so there is no clean shutdown to wait for.
        for node in &mut self.nodes {
            if let Some(mut p) = node.process.take() {
                p.stop("KILL");
            }
        }
    }
}

impl Node {
    fn config_path(&self) -> PathBuf {
        self.dir.path().join("nats.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// nats-server keeps its streams in `<store_dir>/jetstream`.
    fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn monitor_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.monitor_port))
    }

    /// A config file rather than flags: routes and the cluster name have no
    /// flag form worth reading, and a test can look at the file.
    fn write_config(&self, cluster_name: &str, routes: &[String]) {
        let routes: String = routes.iter().map(|r| format!("    \"{r}\"\n")).collect();
        // Clients reach only the servers they are given: a node announcing
        // its address would let a client cut off behind a relay (a
        // partition in the fault suite) go round it.
        let config = format!(
            "# Node {name} of a test cluster made by airlock-testkit.\n\
             server_name: {name}\n\
             listen: \"{ip}:{client}\"\n\
             http: \"{ip}:{monitor}\"\n\
             jetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n}}\n\
             cluster {{\n  name: \"{cluster_name}\"\n  listen: \"{ip}:{cluster}\"\n  no_advertise: true\n  routes: [\n{routes}  ]\n}}\n",
            name = self.name,
            ip = self.ip,
            client = self.client_port,
            monitor = self.monitor_port,
            cluster = self.cluster_port,
            store = self.store_dir().display(),
        );
        std::fs::write(self.config_path(), config)
            .unwrap_or_else(|e| panic!("write {}: {e}", self.config_path().display()));
    }

    /// Starts the server under the watchdog, inside its host if it has one.
    fn spawn(&mut self) {
        let binary = find_binary("nats-server", "AIRLOCK_NATS_SERVER", &[]);
        let mut cmd = match &self.host {
            Some(host) => host.command(binary),
            None => Command::new(binary),
        };
        cmd.arg("-c").arg(self.config_path());
        // No clean-up by the watchdog: a node is killed and restarted on
        // the same store, and the old watchdog, seeing its server die after
        // the lifeline closed, would remove the store under the new one.
        // The temp dir goes with the cluster.
        self.process = Some(Supervised::spawn(&mut cmd, &self.log_path(), None));
    }

    /// Waits until the client and monitoring ports accept connections, or
    /// the server exits; its log on failure.
    fn wait_listening(&mut self) -> Result<(), String> {
        let addrs = [SocketAddr::from((self.ip, self.client_port)), self.monitor_addr()];
        let Some(process) = self.process.as_mut() else {
            return Err("never started".to_owned());
        };
        let listening = poll_blocking(LISTEN_TIMEOUT, || {
            if !process.is_running() {
                return Ok(false);
            }
            let open = addrs
                .iter()
                .all(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok());
            if open { Ok(true) } else { Err("not listening yet") }
        });
        if listening == Ok(true) {
            Ok(())
        } else {
            Err(log_tail(&self.log_path()))
        }
    }
}

/// The part of a `/jsz` answer this harness reads (checked against
/// nats-server 2.15.1).
#[derive(Debug, Deserialize)]
struct Jsz {
    /// Absent until JetStream runs clustered.
    meta_cluster: Option<RaftGroup>,
    /// Only with `?accounts=true` (or `streams=true`).
    #[serde(default)]
    account_details: Vec<AccountDetail>,
}

/// A raft group as `/jsz` shows it: `meta_cluster`, or a stream's `cluster`.
#[derive(Debug, Deserialize)]
struct RaftGroup {
    /// The leader's server name, as this node knows it; absent during an
    /// election.
    leader: Option<String>,
    /// The other members. (At start-up a node may list itself here too.)
    #[serde(default)]
    replicas: Vec<Replica>,
    /// The meta group's size; streams have none.
    cluster_size: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct Replica {
    name: String,
    /// Caught up with the leader. Only the leader's view is fresh: a
    /// follower's view of the others lags.
    #[serde(default)]
    current: bool,
}

#[derive(Debug, Deserialize)]
struct AccountDetail {
    /// The account's name (`$G` without accounts).
    name: String,
    #[serde(default)]
    stream_detail: Vec<StreamDetail>,
}

#[derive(Debug, Deserialize)]
struct StreamDetail {
    name: String,
    cluster: Option<RaftGroup>,
    /// Only with `?consumers=true`: the consumers this node has.
    #[serde(default)]
    consumer_detail: Vec<ConsumerDetail>,
}

#[derive(Debug, Deserialize)]
struct ConsumerDetail {
    name: String,
    cluster: Option<RaftGroup>,
}

impl Jsz {
    fn meta(&self) -> Option<&RaftGroup> {
        self.meta_cluster.as_ref()
    }

    /// The stream's raft group as this node sees it; `None` when the node
    /// holds no replica of it.
    fn stream(&self, account: Option<&str>, stream: &str) -> Option<&RaftGroup> {
        let account = account.unwrap_or(DEFAULT_ACCOUNT);
        self.account_details
            .iter()
            .filter(|a| a.name == account)
            .flat_map(|a| &a.stream_detail)
            .find(|s| s.name == stream)
            .and_then(|s| s.cluster.as_ref())
    }
}

impl RaftGroup {
    /// The group's members as `me` sees them, `me` included.
    fn peers(&self, me: &str) -> usize {
        1 + self.replicas.iter().filter(|r| r.name != me).count()
    }

    /// Members other than `me` that are current.
    fn current_followers(&self, me: &str) -> usize {
        self.replicas.iter().filter(|r| r.name != me && r.current).count()
    }
}

/// Each node's view of the meta group (`None`: no answer, or no group yet).
fn meta_groups(views: &[Result<Jsz, String>]) -> Vec<Option<&RaftGroup>> {
    views
        .iter()
        .map(|v| v.as_ref().ok().and_then(Jsz::meta))
        .collect()
}

/// Each node's view of `stream`'s group (`None`: no answer, or no replica
/// of the stream on that node).
fn stream_groups<'a>(
    views: &'a [Result<Jsz, String>],
    account: Option<&str>,
    stream: &str,
) -> Vec<Option<&'a RaftGroup>> {
    views
        .iter()
        .map(|v| v.as_ref().ok().and_then(|j| j.stream(account, stream)))
        .collect()
}

/// One line per node of what `/jsz` said, for timeout messages.
fn describe(nodes: &[Node], views: &[Result<Jsz, String>]) -> String {
    nodes
        .iter()
        .zip(views)
        .map(|(node, view)| match view {
            Err(e) => format!("{}: {e}", node.name),
            Ok(Jsz {
                meta_cluster: None, ..
            }) => format!("{}: no meta group yet", node.name),
            Ok(Jsz {
                meta_cluster: Some(g),
                ..
            }) => format!(
                "{}: leader {}, size {:?}, current {:?}",
                node.name,
                g.leader.as_deref().unwrap_or("none"),
                g.cluster_size,
                g.replicas
                    .iter()
                    .filter(|r| r.current)
                    .map(|r| &r.name)
                    .collect::<Vec<_>>(),
            ),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `GET <path>` on a node's monitoring port, parsed.
fn jsz(addr: SocketAddr, path: &str) -> Result<Jsz, String> {
    let body = http_get(addr, path)?;
    serde_json::from_str(&body).map_err(|e| format!("{path} on {addr} is not the JSON expected: {e}"))
}

/// A plain HTTP/1.0 GET: the server closes the connection after the body,
/// so reading to the end is the whole answer. The body of a 200, or why not.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let io_timeout = Some(Duration::from_secs(2));
    stream
        .set_read_timeout(io_timeout)
        .and_then(|()| stream.set_write_timeout(io_timeout))
        .map_err(|e| format!("set timeouts on {addr}: {e}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut response = String::new();
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.read_to_string(&mut response).map(drop))
        .map_err(|e| format!("GET {path} from {addr}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path} from {addr}: no end of headers"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(body.to_owned())
    } else {
        Err(format!("GET {path} from {addr}: {status}"))
    }
}
