//! Policy files, SQL classification and rule evaluation: (identity,
//! statement, session context) -> verdict. Pure: no tokio, no sockets, no NATS.
//!
//! Not built yet: this crate is reserved by the workspace layout and is
//! filled in by the policy issue. Nothing uses it so far.
