//! Policy files, SQL classification and rule evaluation: (identity,
//! statement, session context) -> verdict. Pure: no tokio, no sockets, no
//! NATS, no protobuf (the binaries convert verdicts at their edge).
//!
//! * [`config`] reads policies from `airlock.yaml` and standalone policy files.
//! * [`classify()`] turns SQL text into [`Effect`]s (kind, tables, functions).
//! * [`Policy::judge`] turns a [`Classification`] into a [`Verdict`];
//!   [`Policy::evaluate`] does both.
//! * [`VerdictCache`] remembers verdicts for repeated statements.
//!
//! # Policy format
//!
//! ```yaml
//! policy: db-maintenance-agents   # Entra group: name from identity.group_names, or object id
//! connection: prod-maintenance    # a name from connections:
//! record: true
//! default: require-approval       # statements no rule matches: require-approval | deny
//! unparsed: require-approval      # SQL the parser cannot read: require-approval | deny
//! reviewers: [db-reviewers]       # optional; else approvals.reviewers of airlock.yaml
//! approvals: 1                    # optional; distinct reviewers needed
//! timeout: 15m                    # optional; else approvals.timeout, else 15m
//! max_statement_bytes: 1048576    # optional; larger statements are refused unparsed
//! rules:
//!   - match: SELECT               # kinds: `A|B` or a list; see [`Kind`]
//!     tables: [public.*]          # optional globs on schema-qualified names
//!     action: allow
//!   - match: FUNCTION             # calls of functions not known to be read-only
//!     functions: [pg_cancel_backend]
//!     action: allow
//!   - match: DELETE|DROP|UPDATE
//!     action: require-approval
//!     approvals: 2
//!     reviewers: [dba-leads]
//!     timeout: 30m
//!     reason: writes need a second pair of eyes
//! ```
//!
//! In `airlock.yaml`, a connection may set `default_schema:` (beside the keys
//! the proxy reads); unqualified table names on it resolve there, else to
//! `public`.
//!
//! Rules are tried in order per effect; the first whose kinds, tables and
//! functions match decides it. An `allow` rule with `tables:`/`functions:`
//! must cover every table/function of the effect; a `deny` or
//! `require-approval` rule needs only one (and names functions bare or
//! qualified). `functions:` without `match:` means `match: FUNCTION`. The
//! strictest effect decides the statement.
//!
//! # Kinds that need care
//!
//! * `FUNCTION`: any call of a function not on the read-only allowlist in
//!   [`functions`], wherever it appears (select list, WHERE, FROM, ORDER BY,
//!   `EXECUTE` arguments). `SELECT pg_terminate_backend(...)` is a `SELECT`
//!   *and* a `FUNCTION`, so `match: SELECT -> allow` does not cover it.
//! * `PROGRAM` / `SERVER FILE`: COPY to or from a shell command or a file on
//!   the database server (beside the `COPY` and, for FROM, `INSERT` effects).
//! * `SET ROLE`: `SET ROLE`, `SET SESSION AUTHORIZATION`, `RESET ROLE`,
//!   `SET role = ...` (quoted or not), `set_config('role', ...)`. Other
//!   settings (`search_path` included, `BEGIN READ WRITE`) are `SET`.
//! * `EXECUTE`: only for `EXECUTE name` this session never prepared; a known
//!   name is judged as what `PREPARE` held (the proxy keeps
//!   [`PreparedStatements`] per session and applies
//!   [`Verdict::prepared_changes`]).
//! * `TRANSACTION`: BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE: always allowed.
//! * Tables: `schema.*` in an effect stands for relations of a schema it does
//!   not name (`DROP SCHEMA hr`), `*.*` for relations anywhere (`CASCADE`);
//!   an effect that acts on relations but names none has an unresolved
//!   target. A table-scoped deny or hold catches all three when they could
//!   touch its tables; a table-scoped allow never covers `*.*` or an
//!   unresolved target. Unqualified `pg_*` names are `pg_catalog`'s.
//!
//! # The database's catalog
//!
//! Classification takes a [`Catalog`]: with [`CatalogFacts`] read from the
//! database (the data plane reads them), a read-only built-in's name is
//! trusted only when no function of that name exists outside `pg_catalog`,
//! unqualified tables resolve through the role's search path, views are
//! judged by what they read and call, and writes through views and rules
//! reach their base tables ([`facts`]). [`Catalog::Unreadable`] trusts
//! only `pg_catalog.`-qualified calls; [`Catalog::Assumed`] (offline tools)
//! takes names for what they say.
//!
//! # Known limits
//!
//! * Table names resolve through the role's search path as a fresh session
//!   has it, not the session's own `SET search_path`: a policy that allows
//!   `SET` lets an agent point unqualified names elsewhere, so table-scoped
//!   rules should come with `SET` left to approval (the default).
//! * A function's body is not looked into: user code is a `FUNCTION` effect.
//! * Nor is what only the catalog knows beyond the facts: `o.f` (or `(o).f`) is taken for a
//!   column, though PostgreSQL calls a function `f(o)` when `o` has no
//!   column `f`; operators and casts resolved to user code by their operand
//!   types are not seen (a cast to a type that is not built in is a call).
//! * Text sqlparser cannot read (`U&"..."` identifiers, `DO`, `ALTER SYSTEM`,
//!   `CLUSTER`, `TABLE x`, ...) gets the `unparsed` action even when it is harmless.

pub mod cache;
pub mod classify;
pub mod config;
mod error;
pub mod facts;
pub mod fingerprint;
pub mod functions;
mod glob;
pub mod ident;
pub mod judge;
pub mod kind;
pub mod trial;

pub use cache::VerdictCache;

pub use classify::{
    Classification, ClassifyContext, DEFAULT_MAX_STATEMENT_BYTES, Effect, PreparedChange, PreparedStatements,
    SessionNames, classify, prepared_key,
};
pub use config::{Action, Policy, PolicySet, Rule};
pub use error::{Location, PolicyError};
pub use facts::{Catalog, CatalogFacts};
pub use judge::{Decision, EffectVerdict, Verdict};
pub use kind::Kind;
