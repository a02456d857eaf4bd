//! `airlock-control`: approval state as a projection of the event log,
//! decisions, gRPC services, and replay/verify/export for auditors.
//!
//! Built so far: `projection` (the fold) and `decide` (votes, outcomes,
//! expiry, as pure functions). The gRPC services, the log tailer and the
//! auditor commands follow in the control-plane issue.

pub mod decide;
pub mod projection;
