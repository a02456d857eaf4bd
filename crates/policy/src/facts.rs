//! What the database a statement will run on says about the names in it:
//! the facts the classifier needs so that it judges the objects PostgreSQL
//! will run, not just the names written. The data plane reads them from
//! the database (on a connection of its own) and passes them in; this
//! module only holds them and answers questions about them.
//!
//! * Functions: every name defined outside `pg_catalog`. A call written
//!   `lower(x)` runs the built-in only if nothing else by that name can be
//!   found first; with a `lower` in any other schema (any argument types)
//!   the call is judged as unknown code.
//! * Relations: every table, view and materialized view outside the system
//!   schemas, with, for views, what their query reads and calls, and for
//!   any relation, what its rewrite rules (and a view's INSTEAD OF
//!   triggers) write and call, and what its row-level security policies
//!   read and call.
//! * The effective `search_path` of the role the proxy logs in as, which
//!   unqualified names resolve through.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// What classification knows about the database's catalog.
#[derive(Debug, Clone, Copy, Default)]
pub enum Catalog<'a> {
    /// No database to ask (offline tools): names are taken for what they
    /// say, built-ins for built-ins, unqualified tables for the default
    /// schema's, views for tables.
    #[default]
    Assumed,
    /// No facts could ever be read: every call that is not
    /// `pg_catalog.`-qualified is judged as unknown code, an unqualified
    /// relation could be in any schema, and reading or writing a relation
    /// outside `pg_catalog` (which may be a view, or have rules) is judged
    /// as running unknown code.
    Unreadable,
    /// Facts read from the database, and current.
    Known(&'a CatalogFacts),
    /// The last facts read, which may be out of date (a change of the
    /// catalog since, a failed read): relations resolve and expand through
    /// them, calls that are not `pg_catalog.`-qualified are unknown code,
    /// and reading or writing a relation they do not know (made since) is
    /// judged as running unknown code.
    Stale(&'a CatalogFacts),
    /// This session itself may have changed the catalog, uncommitted (no
    /// other connection sees it): as [`Catalog::Stale`], and any relation
    /// may have been redefined, so reading or writing one (outside
    /// `pg_catalog`) is judged as running unknown code.
    Changing(&'a CatalogFacts),
}

impl Catalog<'_> {
    /// Identifies the facts a verdict was reached under, for caches: equal
    /// keys mean equal facts.
    pub fn key(&self) -> u64 {
        match self {
            Catalog::Assumed => 0,
            Catalog::Unreadable => 1,
            Catalog::Known(f) => f.id * 2,
            Catalog::Stale(f) => f.id * 2 + 1,
            // Never cached (the session's own state): see `uses_session`.
            Catalog::Changing(f) => f.id * 2 + 1,
        }
    }
}

/// A function a view or rule calls, by its schema-qualified name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Called {
    /// `schema.name`.
    pub name: String,
    /// Marked `VOLATILE` in the catalog.
    pub volatile: bool,
}

/// What a relation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelationKind {
    /// A table (plain, partitioned or foreign): reading it runs nothing.
    Table,
    /// A view: reading it runs its query.
    View,
    /// A materialized view: reading it reads stored rows; `REFRESH` runs
    /// its query.
    MaterializedView,
}

/// One relation's facts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Relation {
    pub kind: RelationKind,
    /// Relations its query reads (views and materialized views).
    pub reads: BTreeSet<String>,
    /// Functions its query calls, directly or through operators.
    pub read_calls: BTreeSet<Called>,
    /// Relations writing it reaches: what its rewrite rules other than the
    /// view's own query act on (`CREATE RULE ... DO INSTEAD DELETE FROM
    /// t`), and the tables whose foreign keys cascade from it.
    pub rule_tables: BTreeSet<String>,
    /// What writing to it runs: the functions its rules call, its triggers
    /// (a view's INSTEAD OF ones included), its column defaults and
    /// generated columns, its CHECK constraints and its index expressions.
    pub write_calls: BTreeSet<Called>,
    /// Relations its row-level security policies read (any access to it
    /// evaluates them).
    pub guard_reads: BTreeSet<String>,
    /// Functions its row-level security policies call.
    pub guard_calls: BTreeSet<Called>,
}

impl Relation {
    pub fn new(kind: RelationKind) -> Relation {
        Relation {
            kind,
            reads: BTreeSet::new(),
            read_calls: BTreeSet::new(),
            rule_tables: BTreeSet::new(),
            write_calls: BTreeSet::new(),
            guard_reads: BTreeSet::new(),
            guard_calls: BTreeSet::new(),
        }
    }
}

/// The facts of one database as one role sees it. Built by the data plane
/// (see [`CatalogFacts::new`]), shared read-only.
#[derive(Debug, Clone)]
pub struct CatalogFacts {
    /// Distinguishes facts for caches; equal for a clone.
    id: u64,
    search_path: Vec<String>,
    functions: HashSet<String>,
    relations: HashMap<String, Relation>,
}

impl PartialEq for CatalogFacts {
    /// Equal content (the id is not compared).
    fn eq(&self, other: &Self) -> bool {
        self.search_path == other.search_path
            && self.functions == other.functions
            && self.relations == other.relations
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(2);

impl CatalogFacts {
    /// `search_path`: the schemas unqualified names are looked up in, in
    /// order, as `current_schemas(false)` reports them (existing schemas
    /// only, `$user` expanded; `pg_catalog` only where the path names it).
    /// `functions`: the names of all functions outside `pg_catalog`.
    /// `relations`: keyed `schema.name`.
    pub fn new(
        search_path: Vec<String>,
        functions: impl IntoIterator<Item = String>,
        relations: HashMap<String, Relation>,
    ) -> CatalogFacts {
        CatalogFacts {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            search_path,
            functions: functions.into_iter().collect(),
            relations,
        }
    }

    pub fn search_path(&self) -> &[String] {
        &self.search_path
    }

    /// Whether a function by this name (bare) exists outside `pg_catalog`.
    pub fn defines_outside_catalog(&self, bare: &str) -> bool {
        self.functions.contains(bare)
    }

    pub fn relation(&self, qualified: &str) -> Option<&Relation> {
        self.relations.get(qualified)
    }

    /// Every relation named `bare` (as PostgreSQL folds it), whatever its
    /// schema, sorted: what an unqualified name may be when the session's
    /// search path is not known.
    pub fn named(&self, bare: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .relations
            .keys()
            .filter(|q| q.strip_suffix(bare).is_some_and(|schema| schema.ends_with('.')))
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// How many relations and functions the facts hold (for logs).
    pub fn size(&self) -> (usize, usize) {
        (self.relations.len(), self.functions.len())
    }

    /// The schemas looked in for an unqualified relation, in order:
    /// `pg_catalog` first unless the path places it.
    pub fn relation_path(&self) -> impl Iterator<Item = &str> {
        let implicit = (!self.search_path.iter().any(|s| s == "pg_catalog")).then_some("pg_catalog");
        implicit
            .into_iter()
            .chain(self.search_path.iter().map(String::as_str))
    }

    /// Everything reading `qualified` reaches, following views inside
    /// views: the relations read and the functions called. `writing`: what
    /// an INSERT, UPDATE, DELETE or MERGE on it reaches (its query, its
    /// rules' targets, its rules' and INSTEAD OF triggers' calls).
    pub fn reach(&self, qualified: &str, writing: bool) -> Reach {
        self.reach_as(qualified, writing, false)
    }

    /// [`CatalogFacts::reach`]; `refreshing`: `qualified` is a materialized
    /// view being refreshed, which runs its query.
    pub fn reach_as(&self, qualified: &str, writing: bool, refreshing: bool) -> Reach {
        let mut reach = Reach::default();
        let mut stack = vec![(qualified.to_owned(), writing)];
        let mut seen: HashSet<(String, bool)> = HashSet::new();
        while let Some((name, writes)) = stack.pop() {
            if !seen.insert((name.clone(), writes)) {
                continue;
            }
            let Some(rel) = self.relations.get(&name) else {
                continue;
            };
            // Row-level security: evaluated on every access.
            for t in &rel.guard_reads {
                reach.tables.insert(t.clone());
                stack.push((t.clone(), false));
            }
            reach.calls.extend(rel.guard_calls.iter().cloned());
            let query_runs = rel.kind == RelationKind::View
                || (refreshing && name == qualified && rel.kind == RelationKind::MaterializedView);
            if query_runs {
                for t in &rel.reads {
                    reach.tables.insert(t.clone());
                    // A view's query reads the relations it names; writing
                    // through an auto-updatable view writes its one base.
                    stack.push((t.clone(), writes));
                }
                reach.calls.extend(rel.read_calls.iter().cloned());
            }
            if writes {
                for t in &rel.rule_tables {
                    reach.tables.insert(t.clone());
                    stack.push((t.clone(), true));
                }
                reach.write_calls.extend(rel.write_calls.iter().cloned());
            }
        }
        reach.tables.remove(qualified);
        reach
    }
}

/// What acting on a relation reaches beyond it ([`CatalogFacts::reach`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reach {
    pub tables: BTreeSet<String>,
    /// Functions that run as the relations are read (views, row-level
    /// security).
    pub calls: BTreeSet<Called>,
    /// Functions that run as they are written (rules, triggers, defaults,
    /// checks, index expressions).
    pub write_calls: BTreeSet<Called>,
}

/// Builds [`Relation`]s from catalog rows (one per fact), as the data
/// plane reads them.
#[derive(Debug, Default)]
pub struct RelationsBuilder {
    relations: BTreeMap<String, Relation>,
}

impl RelationsBuilder {
    pub fn relation(&mut self, qualified: String, kind: RelationKind) {
        self.relations.insert(qualified, Relation::new(kind));
    }

    /// A relation the view's query reads.
    pub fn reads(&mut self, view: &str, relation: String) {
        if let Some(r) = self.relations.get_mut(view) {
            r.reads.insert(relation);
        }
    }

    pub fn read_call(&mut self, view: &str, called: Called) {
        if let Some(r) = self.relations.get_mut(view) {
            r.read_calls.insert(called);
        }
    }

    pub fn rule_table(&mut self, relation: &str, target: String) {
        if let Some(r) = self.relations.get_mut(relation) {
            r.rule_tables.insert(target);
        }
    }

    /// A relation a row-level security policy of `relation` reads.
    pub fn guard_reads(&mut self, relation: &str, read: String) {
        if let Some(r) = self.relations.get_mut(relation) {
            r.guard_reads.insert(read);
        }
    }

    /// A function a row-level security policy of `relation` calls.
    pub fn guard_call(&mut self, relation: &str, called: Called) {
        if let Some(r) = self.relations.get_mut(relation) {
            r.guard_calls.insert(called);
        }
    }

    pub fn write_call(&mut self, relation: &str, called: Called) {
        if let Some(r) = self.relations.get_mut(relation) {
            r.write_calls.insert(called);
        }
    }

    pub fn build(self) -> HashMap<String, Relation> {
        self.relations.into_iter().collect()
    }
}
