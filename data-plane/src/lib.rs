//! `airlock-proxy`: the Postgres wire-protocol gate that agents connect to.
//!
//! The rooms, from the bytes up (each imports only rooms listed before it,
//! but for `attach`, which reads its TLS files' section from `config`):
//! * `codec`: bytes <-> frames <-> `FeMessage`/`BeMessage`, with limits;
//! * `params`: bound parameter values shown readably;
//! * `conn`: a client connection after startup (`ClientStream`, `Login`);
//! * `upstream`: logging into PostgreSQL with the connection's credential;
//! * `gate`: what the session asks of identity and policy (a trait);
//!   `error_response`: every error and notice a client can see;
//! * `names`: prepared statements and portals as PostgreSQL has them;
//! * `record`: the per-session recorder into the event log;
//! * `attach`: the Attach stream to the control plane (held requests,
//!   decisions, kills); `cancel`: cancel requests across the fleet;
//! * `metrics`: Prometheus counters;
//! * `session`: one client session (login, relay, holds, refusals);
//! * `server`: the front door (sockets, TLS, startup, connection limits);
//! * `policy_gate`: the real `Gate` (identity and policy crates);
//! * `config`, `check` and `run`: airlock.yaml, everything checked in it
//!   before starting, and the wiring of it all.

pub mod attach;
pub mod cancel;
pub mod catalog;
pub mod check;
pub mod codec;
pub mod config;
pub mod conn;
pub mod error_response;
pub mod gate;
pub mod grants;
pub mod health;
pub mod impact;
pub mod metrics;
pub mod names;
pub mod params;
pub mod policy_gate;
pub mod record;
pub mod run;
pub mod server;
pub mod session;
pub mod upstream;
