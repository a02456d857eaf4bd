//! `airlock-proxy`: the Postgres wire-protocol gate that agents connect to.
//!
//! Built so far: `codec` (bytes <-> frames <-> messages). The session state
//! machine, upstream connection and server follow in the data-plane issue.

pub mod codec;
