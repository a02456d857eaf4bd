//! Test harness for integration and end-to-end tests: throwaway `nats-server`
//! (JetStream on, temp store, free port) and throwaway PostgreSQL (initdb into
//! a temp dir, free port) instances.
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
//! The API is blocking on purpose: servers are shared across `#[tokio::test]`
//! functions that each run their own runtime, so nothing here may belong to a
//! runtime.

#![allow(clippy::print_stdout)]

mod nats;
mod postgres;
mod process;

pub use nats::{NatsServer, shared_nats};
pub use postgres::{Postgres, PostgresOptions, shared_postgres};
pub use process::{find_binary, free_port};

/// How the harness tells a developer to get the servers it needs.
pub const INSTALL_HINT: &str =
    "run ./deploy/local/install-deps.sh (installs nats-server and PostgreSQL where missing)";
