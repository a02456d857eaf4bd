//! `airlock-control`: approval state as a projection of the event log,
//! decisions, gRPC services, and replay/verify/export for auditors.
//!
//! Built so far: `projection` (the fold), `decide` (votes, outcomes, expiry,
//! as pure functions), `live` (the fold kept current by tailing the log),
//! `act` (appending decisions with optimistic concurrency) and `grpc` (the
//! reviewer, proxy and audit services). Snapshots, the `serve` command and
//! the auditor commands follow in the control-plane issue.

pub mod act;
pub mod cli;
pub mod config;
pub mod decide;
pub mod grpc;
pub mod live;
pub mod policy_cmd;
pub mod projection;
pub mod serve;
pub mod verify;
