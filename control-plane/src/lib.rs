//! `airlock-control`: approval state as a projection of the event log,
//! decisions, gRPC services, and replay/verify/export for auditors.
//!
//! `projection` (the fold), `snapshot` (the fold stored, so start-up reads
//! only the rest of the log), `decide` (votes, outcomes, expiry, as pure
//! functions), `access` (who may read and act on which request, session and
//! event, as pure functions), `live` (the fold kept current by tailing the log), `act`
//! (appending decisions with optimistic concurrency), `checkpoint` (signed
//! digests over ranges of the log), `grpc` (the reviewer, proxy, audit and
//! health services), `metrics` (Prometheus), `serve` (with `tls`, the gRPC
//! listener's certificate kept current), and the auditor
//! commands in `verify` and `export`.

pub mod access;
pub mod act;
pub mod check;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod decide;
pub mod export;
pub mod forward;
pub mod grants;
pub mod grpc;
pub mod live;
pub mod metrics;
pub mod ocsf;
pub mod policy_cmd;
pub mod presence;
pub mod projection;
pub mod review_cmd;
pub mod serve;
pub mod simulate;
pub mod slack;
pub mod snapshot;
pub mod tls;
pub mod verify;
