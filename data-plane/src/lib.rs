//! `airlock-proxy`: the Postgres wire-protocol gate that agents connect to.
//!
//! Not built yet: reserved by the workspace layout, filled in by the data-plane issue.
