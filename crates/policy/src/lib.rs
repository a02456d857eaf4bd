//! Policy files, SQL classification and rule evaluation: (identity,
//! statement, session context) -> verdict. Pure: no tokio, no sockets, no
//! NATS, no protobuf (the binaries convert verdicts at their edge).
//!
//! * [`config`] reads policies from `airlock.yaml` and standalone policy files.
//! * [`classify()`] turns SQL text into [`Effect`]s (kind, tables, functions).
//! * [`Policy::judge`] turns a [`Classification`] into a [`Verdict`].
//! * [`VerdictCache`] remembers verdicts for repeated statements.

pub mod cache;
pub mod classify;
pub mod config;
mod error;
pub mod functions;
mod glob;
pub mod judge;
pub mod kind;

pub use cache::VerdictCache;
pub use classify::{
    Classification, ClassifyContext, DEFAULT_MAX_STATEMENT_BYTES, Effect, PreparedChange, PreparedStatements,
    classify,
};
pub use config::{Action, Policy, PolicySet, Rule};
pub use error::{Location, PolicyError};
pub use judge::{Decision, EffectVerdict, Verdict};
pub use kind::Kind;
