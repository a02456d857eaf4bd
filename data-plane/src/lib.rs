//! `airlock-proxy`: the Postgres wire-protocol gate that agents connect to.
//!
//! Built so far: `codec` (bytes <-> frames <-> messages) and `upstream`
//! (logging into PostgreSQL with the connection's credential). The session
//! state machine and the server follow in the data-plane issue.

pub mod attach;
pub mod cancel;
pub mod codec;
pub mod config;
pub mod gate;
pub mod metrics;
pub mod names;
pub mod params;
pub mod policy_gate;
pub mod record;
pub mod run;
pub mod server;
pub mod session;
pub mod upstream;
