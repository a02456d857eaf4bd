//! Test harness for integration and end-to-end tests: throwaway `nats-server`
//! (JetStream on, temp store, free port) and throwaway PostgreSQL (initdb into
//! a temp dir, free port) instances, and [`eventually`], the one way a test
//! waits for something to happen.
//!
//! For fault tests: [`NatsCluster`], a JetStream cluster whose nodes can be
//! killed and restarted, and [`Net`], simulated hosts (network namespaces,
//! root only) that can be partitioned and isolated.
//!
//! Every server runs under a small shell watchdog that holds a pipe from the
//! test process. When the test process ends, however it ends (normal exit, a
//! panic, SIGKILL), the pipe closes and the watchdog stops the server and
//! removes its directory. So a shared, process-wide server (`shared_nats`,
//! `shared_postgres`) never outlives the test binary, even though statics are
//! never dropped.
//!
//! A missing binary is a panic that says how to install it: tests never skip
//! silently.
//!
//! The servers' API is blocking on purpose: servers are shared across
//! `#[tokio::test]` functions that each run their own runtime, so nothing
//! here may belong to a runtime. (`eventually` is a future, but it only
//! sleeps on whichever runtime polls it.)

#![allow(clippy::print_stdout)]

mod cluster;
mod nats;
mod net;
mod postgres;
mod process;
mod tls;
mod wait;

pub use cluster::{DEFAULT_ACCOUNT, NatsCluster};
pub use nats::{NatsRole, NatsServer, shared_nats};
pub use net::{Host, Net};
pub use postgres::{Postgres, PostgresOptions, shared_postgres};
pub use process::{find_binary, free_port};
pub use tls::{CertFiles, TestCa};
pub use wait::{POLL_INTERVAL, Probe, eventually, eventually_blocking, satisfies};

/// How the harness tells a developer to get the servers it needs.
pub const INSTALL_HINT: &str =
    "run ./deploy/local/install-deps.sh (installs nats-server and PostgreSQL where missing)";

/// Set to `release` to run the workspace's binaries from an optimised
/// build (long runs such as the soak, where a debug build's signature
/// checks would make the control plane lag behind the log).
pub const PROFILE_ENV: &str = "AIRLOCK_TEST_PROFILE";

/// Whether [`PROFILE_ENV`] asks for optimised binaries.
pub fn release_binaries() -> bool {
    std::env::var(PROFILE_ENV).is_ok_and(|p| p == "release")
}

/// The target directory's profile folder the binaries come from.
pub fn binary_profile() -> &'static str {
    if release_binaries() { "release" } else { "debug" }
}

/// Path of a binary of this workspace, building it first if it is missing
/// (when a single package's tests are run alone).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let path = target.join(binary_profile()).join(name);
    if !path.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--bin", name])
            .args(release_binaries().then_some("--release"))
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --bin {name} failed");
    }
    path
}
