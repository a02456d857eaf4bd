//! Simulated hosts for partition tests: each [`Host`] is a Linux network
//! namespace with one veth pair into a bridge of the root namespace, on a
//! private /24. The bridge has the subnet's `.1`, so the root namespace, where
//! the test code and PostgreSQL run, reaches every host.
//!
//! Faults use iproute2 only (no nftables, no iptables):
//! * [`Net::partition`] adds `blackhole` routes for the other side's addresses
//!   in each host's namespace. A packet to the other side is dropped before
//!   it leaves, so an established TCP connection stalls (its sends queue,
//!   retransmissions vanish) as it would behind a broken switch, and resumes
//!   after [`Net::heal`]. A *new* connect fails at once with EINVAL ("Invalid
//!   argument"): the kernel refuses to route it, rather than letting it time out.
//! * [`Net::isolate`] sets the host's veth down on the bridge side: the host
//!   loses everyone, the root namespace included. Connects to it time out;
//!   its own connects fail after ARP gives up (about 3 s, "No route to host").
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and `ip` from iproute2; panics
//! saying so otherwise, so a test that needs a network never skips silently.
//!
//! Does not own the processes on the hosts: start them with
//! [`Host::command`] (for example through [`crate::NatsCluster::start_on`]).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// Second octet of every test network: 10.213.<index>.0/24.
const SUBNET_PREFIX: [u8; 2] = [10, 213];

/// Prefix of every namespace and interface name. Interface names have at
/// most 15 bytes: `alk255h254` and `alk255br` fit.
const NAME_PREFIX: &str = "alk";

/// A bridge with hosts behind it, on `10.213.<index>.0/24`. The index comes
/// from the process id and is claimed with a lock file, so test processes
/// (and several `Net`s of one process) never share names or addresses.
/// Dropping it removes every namespace, veth and the bridge.
#[derive(Debug)]
pub struct Net {
    index: u8,
    /// Held while the names with `index` are ours; released on drop.
    _claim: File,
    state: Mutex<State>,
}

/// What a `Net` has made, so it can undo it.
#[derive(Debug, Default)]
struct State {
    hosts: Vec<Host>,
    /// (namespace, address) of every blackhole route added by `partition`.
    blackholes: Vec<(String, Ipv4Addr)>,
    /// Bridge-side veths set down by `isolate`.
    isolated: Vec<String>,
}

/// A simulated host: a network namespace with one address on its [`Net`].
/// A plain value: it stays usable only while its `Net` lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    name: String,
    netns: String,
    ip: Ipv4Addr,
    /// The veth's end on the bridge, in the root namespace.
    veth: String,
}

impl Host {
    /// The name given to [`Net::host`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's address, reachable from the root namespace and from every
    /// host of its `Net` (unless partitioned or isolated).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `ip:port` on this host.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    /// The network namespace's name (for `ip netns exec` by hand).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// A command that runs `program` inside this host's namespace, through
    /// `ip netns exec`. That execs `program` in place (same pid, no child),
    /// so a signal to the spawned process reaches `program` itself.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(ip_binary());
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// Whether a TCP connect from this host to `addr` succeeds within
    /// `within`. Runs bash's `/dev/tcp` inside the namespace (the test
    /// process itself stays in the root namespace). Panics if the probe
    /// itself cannot run, so a missing namespace is no failed connect.
    pub fn can_connect(&self, addr: SocketAddr, within: Duration) -> bool {
        let script = format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port());
        let out = self
            .command("timeout")
            .arg(format!("{}", within.as_secs_f64()))
            .args(["bash", "-c", &script])
            .output()
            .unwrap_or_else(|e| panic!("run `timeout bash` in namespace {}: {e}", self.netns));
        // bash exits 1 when the connect fails, timeout 124 when it hangs.
        match out.status.code() {
            Some(0) => true,
            Some(1 | 124) => false,
            _ => panic!(
                "the connect probe in namespace {} did not run ({}): {}",
                self.netns,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }
}

impl Net {
    /// Makes a bridge with the address `10.213.<index>.1/24` in the root
    /// namespace, first removing whatever a crashed run left under the same
    /// index. Panics without root, or when `ip` fails.
    // No `Default`: making kernel state as root is no default value.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Net {
        require_net_admin();
        let (index, claim) = claim_index();
        let net = Net {
            index,
            _claim: claim,
            state: Mutex::new(State::default()),
        };
        let bridge = net.bridge();
        ip(&format!("link add {bridge} type bridge forward_delay 0"));
        ip(&format!("addr add {}/24 dev {bridge}", net.bridge_ip()));
        ip(&format!("link set {bridge} up"));
        net
    }

    /// The root namespace's address on this net (the bridge's), and every
    /// host's default gateway.
    pub fn bridge_ip(&self) -> Ipv4Addr {
        self.address(1)
    }

    /// The subnet, e.g. `10.213.42.0/24`.
    pub fn subnet(&self) -> String {
        format!("{}/24", self.address(0))
    }

    /// A new host called `name` (letters, digits, `-`, `_`; at most 16):
    /// a namespace with loopback up and an `eth0` holding the next free
    /// address of the subnet, with a default route via the bridge.
    pub fn host(&self, name: &str) -> Host {
        assert!(
            !name.is_empty()
                && name.len() <= 16
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "host name {name:?}: use 1 to 16 letters, digits, '-' or '_'"
        );
        let mut state = self.state();
        assert!(
            state.hosts.iter().all(|h| h.name != name),
            "this Net already has a host called {name:?}"
        );
        // .1 is the bridge; hosts take .2 to .254.
        let last_octet = u8::try_from(state.hosts.len() + 2)
            .ok()
            .filter(|o| *o < 255)
            .unwrap_or_else(|| panic!("a Net holds at most 253 hosts"));
        let host = Host {
            name: name.to_owned(),
            netns: format!("{}-{name}", self.prefix()),
            ip: self.address(last_octet),
            veth: format!("{}h{last_octet}", self.prefix()),
        };
        // Recorded first, so drop removes even a half-made host.
        state.hosts.push(host.clone());
        let (ns, veth) = (&host.netns, &host.veth);
        ip(&format!("netns add {ns}"));
        ip(&format!("link add {veth} type veth peer name eth0 netns {ns}"));
        ip(&format!("link set {veth} master {} up", self.bridge()));
        ip(&format!("-n {ns} link set lo up"));
        ip(&format!("-n {ns} addr add {}/24 dev eth0", host.ip));
        ip(&format!("-n {ns} link set eth0 up"));
        ip(&format!("-n {ns} route add default via {}", self.bridge_ip()));
        host
    }

    /// Cuts every host of `side_a` off from every host of `side_b`, both
    /// ways, with blackhole routes; each side still reaches the root
    /// namespace and the hosts of its own side. Adds to earlier faults.
    pub fn partition(&self, side_a: &[&Host], side_b: &[&Host]) {
        let mut state = self.state();
        for a in side_a {
            for b in side_b {
                assert_ne!(a, b, "host {} is on both sides of the partition", a.name);
                for (from, to) in [(a, b), (b, a)] {
                    let route = (from.netns.clone(), to.ip);
                    if !state.blackholes.contains(&route) {
                        ip(&format!("-n {} route add blackhole {}/32", from.netns, to.ip));
                        state.blackholes.push(route);
                    }
                }
            }
        }
    }

    /// Cuts `host` off from everyone, the root namespace included, by
    /// setting its veth down. Connections to and from it stall.
    pub fn isolate(&self, host: &Host) {
        let mut state = self.state();
        if !state.isolated.contains(&host.veth) {
            ip(&format!("link set {} down", host.veth));
            state.isolated.push(host.veth.clone());
        }
    }

    /// Undoes every [`Net::partition`] and [`Net::isolate`]. Stalled TCP
    /// connections resume at their next retransmission (which backs off:
    /// after a long fault, that can be seconds away).
    pub fn heal(&self) {
        let mut state = self.state();
        for (netns, to) in std::mem::take(&mut state.blackholes) {
            ip(&format!("-n {netns} route del blackhole {to}/32"));
        }
        for veth in std::mem::take(&mut state.isolated) {
            ip(&format!("link set {veth} up"));
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn prefix(&self) -> String {
        format!("{NAME_PREFIX}{}", self.index)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix())
    }

    fn address(&self, last_octet: u8) -> Ipv4Addr {
        let [a, b] = SUBNET_PREFIX;
        Ipv4Addr::new(a, b, self.index, last_octet)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Veths first: deleting a namespace frees its veth only once the
        // last process in it is gone, and then asynchronously.
        let hosts = std::mem::take(&mut self.state().hosts);
        for host in &hosts {
            remove(&format!("link del {}", host.veth));
            remove(&format!("netns del {}", host.netns));
        }
        remove(&format!("link del {}", self.bridge()));
    }
}

/// Panics unless this process may make namespaces and interfaces.
fn require_net_admin() {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    assert!(
        has(CAP_NET_ADMIN) && has(CAP_SYS_ADMIN),
        "airlock_testkit::Net needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to make network \
         namespaces, veth pairs and a bridge; run this test as root (e.g. in the dev container, or \
         `sudo -E env PATH=$PATH cargo test ...`)"
    );
}

/// Claims a subnet index: the process id's, or the next one free, held with
/// a lock file (released when the process ends, however it ends). Clears
/// first what crashed runs left under any index no live process holds, and
/// passes over an index whose subnet some real interface of this machine
/// uses.
fn claim_index() -> (u8, File) {
    let dir = std::env::temp_dir().join("airlock-test-nets");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("create {} (lock files for test networks): {e}", dir.display()));
    for index in indices_in_names() {
        if let Some(_unheld) = try_claim(&dir, index) {
            remove_leftovers(index);
        }
    }
    let start = std::process::id() % 256;
    for step in 0..256 {
        let index = u8::try_from((start + step) % 256).unwrap_or(0);
        let Some(claim) = try_claim(&dir, index) else {
            continue;
        };
        let [a, b] = SUBNET_PREFIX;
        let in_use = format!(" {a}.{b}.{index}.");
        if !ip_output("-4 -o addr show").contains(&in_use) {
            return (index, claim);
        }
    }
    panic!("no free test network: all of 10.213.0.0/16 is in use or claimed by other test processes");
}

/// The lock file of `index`, if no one (in this process or another) holds it.
fn try_claim(dir: &Path, index: u8) -> Option<File> {
    let path = dir.join(index.to_string());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.try_lock().is_ok().then_some(file)
}

/// The indices in the names of the namespaces and root-namespace interfaces
/// that look like this harness's: `alk<index>-<host>`, `alk<index>h<n>`,
/// `alk<index>br`.
fn indices_in_names() -> BTreeSet<u8> {
    let namespaces = ip_output("netns list");
    let links = ip_output("-o link show");
    let names = namespaces
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .chain(links.lines().filter_map(link_name));
    names
        .filter_map(|name| {
            let rest = name.strip_prefix(NAME_PREFIX)?;
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let (index, suffix) = rest.split_at(digits);
            let ours = suffix.starts_with('-') || suffix.starts_with('h') || suffix == "br";
            ours.then(|| index.parse().ok()).flatten()
        })
        .collect()
}

/// Removes the namespaces, veths and bridge named with `index`: only a
/// crashed process that held the same index can have left them.
fn remove_leftovers(index: u8) {
    let prefix = format!("{NAME_PREFIX}{index}");
    for line in ip_output("netns list").lines() {
        let netns = line.split_whitespace().next().unwrap_or_default();
        if netns.starts_with(&format!("{prefix}-")) {
            remove(&format!("netns del {netns}"));
        }
    }
    for line in ip_output("-o link show").lines() {
        let Some(name) = link_name(line) else {
            continue;
        };
        if name.starts_with(&format!("{prefix}h")) || name == format!("{prefix}br") {
            remove(&format!("link del {name}"));
        }
    }
}

/// The interface name in a line of `ip -o link show`:
/// "7: alk12h2@if2: <BROADCAST,...>" is `alk12h2` (the `@` names the peer).
fn link_name(line: &str) -> Option<&str> {
    line.split(": ").nth(1).and_then(|n| n.split('@').next())
}

/// Runs `ip <args>`, the arguments separated by spaces (none of ours holds
/// one: host names are checked); panics with the command and its stderr if
/// it fails.
fn ip(args: &str) {
    ip_output(args);
}

/// Runs `ip <args>` and returns its stdout; panics with the command and its
/// stderr if it fails.
fn ip_output(args: &str) -> String {
    match run_ip(args) {
        Ok(stdout) => stdout,
        Err(e) => panic!("{e}"),
    }
}

/// Best-effort `ip args` for cleanup, where a panic would abort an unwinding
/// test: reports a failure on stderr, except that the thing is already gone.
fn remove(args: &str) {
    if let Err(e) = run_ip(args)
        && !e.contains("Cannot find device")
        && !e.contains("No such file")
    {
        eprintln!("airlock-testkit: cleaning up the test network: {e}");
    }
}

fn run_ip(args: &str) -> Result<String, String> {
    let out = Command::new(ip_binary())
        .args(args.split_whitespace())
        .output()
        .map_err(|e| format!("`ip {args}` did not run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {args}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// iproute2's `ip`: on PATH, or in the sbin directories a non-root PATH
/// often lacks.
fn ip_binary() -> PathBuf {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join("ip"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`ip` was not found; install iproute2 (e.g. apt-get install iproute2)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{Supervised, find_binary};
    use crate::wait::{poll_blocking, satisfies};
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::path::Path;

    const NATS_PORT: u16 = 4222;
    const SHORT: Duration = Duration::from_secs(2);

    /// A plain nats-server on `host` (no JetStream): something that listens.
    fn listener_on(host: &Host, dir: &Path) -> Supervised {
        let binary = find_binary("nats-server", "AIRLOCK_NATS_SERVER", &[]);
        let mut cmd = host.command(binary);
        cmd.args(["-a", &host.ip().to_string(), "-p", &NATS_PORT.to_string()]);
        let server = Supervised::spawn(&mut cmd, &dir.join(format!("{}.log", host.name())), None);
        assert!(
            poll_blocking(Duration::from_secs(15), || root_reaches(host.addr(NATS_PORT))).is_ok(),
            "nats-server on host {} did not listen; its log:\n{}",
            host.name(),
            server.log_tail()
        );
        server
    }

    fn root_reaches(addr: SocketAddr) -> bool {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    }

    #[test]
    fn hosts_reach_each_other_until_partitioned_and_again_after_healing() {
        let net = Net::new();
        let a = net.host("a");
        let b = net.host("b");
        let c = net.host("c");
        let dir = tempfile::tempdir().expect("tempdir");
        let _on_a = listener_on(&a, dir.path());
        let _on_b = listener_on(&b, dir.path());

        assert!(root_reaches(a.addr(NATS_PORT)) && root_reaches(b.addr(NATS_PORT)));
        assert!(
            a.can_connect(b.addr(NATS_PORT), SHORT),
            "a -> b before the partition"
        );
        assert!(
            b.can_connect(a.addr(NATS_PORT), SHORT),
            "b -> a before the partition"
        );

        net.partition(&[&a], &[&b, &c]);
        assert!(
            !a.can_connect(b.addr(NATS_PORT), SHORT),
            "a -> b across the partition"
        );
        assert!(
            !b.can_connect(a.addr(NATS_PORT), SHORT),
            "b -> a across the partition"
        );
        assert!(
            !c.can_connect(a.addr(NATS_PORT), SHORT),
            "c -> a across the partition"
        );
        assert!(c.can_connect(b.addr(NATS_PORT), SHORT), "c -> b on the same side");
        assert!(
            root_reaches(a.addr(NATS_PORT)) && root_reaches(b.addr(NATS_PORT)),
            "the root namespace is on both sides"
        );

        net.heal();
        assert!(a.can_connect(b.addr(NATS_PORT), SHORT), "a -> b after healing");
        assert!(b.can_connect(a.addr(NATS_PORT), SHORT), "b -> a after healing");
    }

    #[test]
    fn an_isolated_host_stalls_established_connections_until_healed() {
        let net = Net::new();
        let a = net.host("a");
        let b = net.host("b");
        let dir = tempfile::tempdir().expect("tempdir");
        let _on_a = listener_on(&a, dir.path());

        // A NATS connection from the root namespace: INFO, then PING/PONG.
        let mut conn = TcpStream::connect_timeout(&a.addr(NATS_PORT), SHORT).expect("connect to a");
        conn.set_read_timeout(Some(SHORT)).expect("read timeout");
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf).expect("INFO from a");
        assert!(
            buf[..n].starts_with(b"INFO "),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        conn.write_all(b"CONNECT {\"verbose\":false}\r\n")
            .expect("CONNECT");

        net.isolate(&a);
        assert!(!root_reaches(a.addr(NATS_PORT)), "root -> isolated a");
        assert!(!b.can_connect(a.addr(NATS_PORT), SHORT), "b -> isolated a");
        conn.write_all(b"PING\r\n")
            .expect("a stalled connection still takes writes");
        let stalled = conn.read(&mut buf);
        assert!(
            matches!(&stalled, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "no answer and no reset while isolated, got {stalled:?}"
        );

        net.heal();
        // The PING is retransmitted once the link is back. (The server may
        // have sent a PING of its own meanwhile.)
        conn.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("read timeout");
        let mut answer = String::new();
        while !answer.contains("PONG") {
            let n = conn
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("no PONG after healing: {e}; got {answer:?}"));
            assert!(n > 0, "a closed the connection; got {answer:?}");
            answer.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(root_reaches(a.addr(NATS_PORT)), "root -> a after healing");
        assert!(b.can_connect(a.addr(NATS_PORT), SHORT), "b -> a after healing");
    }

    /// `ip netns exec` execs the program, so the watchdog's signal reaches
    /// the program itself, not a wrapper that would leave it running.
    #[test]
    fn a_process_on_a_host_is_the_program_itself_and_stops() {
        let net = Net::new();
        let a = net.host("a");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sleeper =
            Supervised::spawn(a.command("sleep").arg("300"), &dir.path().join("sleep.log"), None);
        // `ip` runs first, switches namespace, then execs in place.
        let comm = || std::fs::read_to_string(format!("/proc/{}/comm", sleeper.pid())).unwrap_or_default();
        let execed = poll_blocking(Duration::from_secs(5), || {
            satisfies(comm(), |c| c.trim() == "sleep")
        });
        assert!(execed.is_ok(), "the supervised pid runs {execed:?}, not sleep");
        let netns = std::fs::read_link(format!("/proc/{}/ns/net", sleeper.pid())).expect("its netns");
        let ours = std::fs::read_link("/proc/self/ns/net").expect("our netns");
        assert_ne!(netns, ours, "the program runs in the host's namespace");
        sleeper.stop("TERM");
        assert!(
            !Path::new(&format!("/proc/{}", sleeper.pid())).exists(),
            "sleep {} still running after stop",
            sleeper.pid()
        );
    }

    /// A run that dies skips `Drop`; the next claim of its index clears up.
    #[test]
    fn leftovers_of_a_crashed_run_are_removed() {
        let net = Net::new();
        let a = net.host("a");
        let (index, bridge) = (net.index, net.bridge());
        // What a crash leaves: the kernel state, never dropped. (The lock
        // stays held too, so no other test claims this index meanwhile.)
        std::mem::forget(net);
        assert!(ip_output("netns list").contains(a.netns()));
        remove_leftovers(index);
        assert!(
            !ip_output("netns list").contains(a.netns()),
            "namespace left behind"
        );
        let links = ip_output("-o link show");
        assert!(!links.contains(&format!("{}@", a.veth)), "veth left behind");
        assert!(!links.contains(&format!(" {bridge}:")), "bridge left behind");
    }

    #[test]
    fn drop_removes_namespaces_veths_and_the_bridge() {
        let net = Net::new();
        let a = net.host("a");
        let bridge = net.bridge();
        drop(net);
        assert!(
            !ip_output("netns list").contains(a.netns()),
            "namespace left behind"
        );
        let links = ip_output("-o link show");
        assert!(!links.contains(&format!("{}@", a.veth)), "veth left behind");
        assert!(!links.contains(&format!(" {bridge}:")), "bridge left behind");
    }
}
