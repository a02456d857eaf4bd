//! `airlock-control`: approval state as a projection of the event log,
//! decisions, gRPC services, and replay/verify/export for auditors.
//!
//! Not built yet: reserved by the workspace layout, filled in by the control-plane issue.
