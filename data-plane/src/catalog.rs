//! Catalog facts per connection: what the database says about the names a
//! statement uses, read on a connection of the proxy's own with the
//! connection's credential, and kept for the policy crate to judge against
//! (see `airlock_policy::facts`). No round trip per statement: the facts
//! are read at start, every `proxy.catalog_refresh`, on SIGHUP, and at once
//! after a statement that may change the catalog runs through this proxy.
//!
//! Failing closed, three ways:
//! * facts that cannot be read (permissions, timeout, the database away)
//!   judge every call that is not `pg_catalog.`-qualified as unknown code,
//!   and `/readyz` reports the connection degraded;
//! * after a statement that may change the catalog has run, every session
//!   of the connection judges that way until facts read after it are in;
//! * a session whose change is not committed yet (or still in flight)
//!   judges that way until its transaction ends: no other connection can
//!   see what it made.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_policy::facts::{Called, CatalogFacts, RelationKind, RelationsBuilder};
use airlock_policy::{Catalog, Kind};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::upstream::{Upstream, UpstreamConfig};

/// The longest one read of the facts may take.
const READ_WITHIN: Duration = Duration::from_secs(10);

/// How soon a failed read is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What a statement is judged against.
#[derive(Debug, Clone)]
pub enum Facts {
    Known(Arc<CatalogFacts>),
    /// The last facts read, and why they may be out of date.
    Stale(Arc<CatalogFacts>, String),
    /// The last facts read, while this session's own change of the
    /// catalog is in flight or uncommitted.
    Changing(Arc<CatalogFacts>),
    /// None could be read: why.
    Unreadable(String),
}

impl Facts {
    /// As the policy crate takes them.
    pub fn catalog(&self) -> Catalog<'_> {
        match self {
            Facts::Known(f) => Catalog::Known(f),
            Facts::Stale(f, _) => Catalog::Stale(f),
            Facts::Changing(f) => Catalog::Changing(f),
            Facts::Unreadable(_) => Catalog::Unreadable,
        }
    }

    /// The search path a fresh session of the role has, as last read.
    pub fn search_path(&self) -> Option<&[String]> {
        match self {
            Facts::Known(f) | Facts::Stale(f, _) | Facts::Changing(f) => Some(f.search_path()),
            Facts::Unreadable(_) => None,
        }
    }

    /// The same facts, while this session's own change is not visible to
    /// them.
    fn changing(self) -> Facts {
        match self {
            Facts::Known(f) | Facts::Stale(f, _) | Facts::Changing(f) => Facts::Changing(f),
            Facts::Unreadable(why) => Facts::Unreadable(why),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    facts: Option<Arc<CatalogFacts>>,
    /// When the read that produced `facts` began.
    read_started: Option<Instant>,
    /// The catalog may have changed since this moment.
    changed_at: Option<Instant>,
    error: Option<String>,
}

/// One connection's facts, kept fresh by [`CatalogWatch::run`].
#[derive(Debug)]
pub struct CatalogWatch {
    connection: String,
    config: UpstreamConfig,
    every: Duration,
    state: Mutex<State>,
    wake: Notify,
    /// True once the first read has ended (well or not).
    first: watch::Sender<bool>,
}

impl CatalogWatch {
    pub fn new(connection: String, config: UpstreamConfig, every: Duration) -> Arc<CatalogWatch> {
        Arc::new(CatalogWatch {
            connection,
            config,
            every,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            first: watch::channel(false).0,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The facts to judge against now.
    pub fn current(&self) -> Facts {
        let s = self.state();
        match (&s.facts, s.read_started, &s.error) {
            (Some(f), Some(started), None) if s.changed_at.is_none_or(|c| started > c) => {
                Facts::Known(f.clone())
            }
            (Some(f), _, Some(e)) => Facts::Stale(f.clone(), format!("the last read failed: {e}")),
            (Some(f), _, None) => Facts::Stale(
                f.clone(),
                "the catalog changed through this proxy and is being read again".into(),
            ),
            (None, _, _) => Facts::Unreadable(
                s.error
                    .clone()
                    .unwrap_or_else(|| "the catalog has not been read yet".into()),
            ),
        }
    }

    /// Why this connection judges without facts, if it does (for `/readyz`).
    pub fn degraded(&self) -> Option<String> {
        let s = self.state();
        let error = s.error.as_deref()?;
        Some(if s.facts.is_some() {
            format!(
                "connection \"{}\": catalog facts out of date, the last read failed ({error}); calls not \
                 qualified with pg_catalog and relations made since are held as unknown code",
                self.connection
            )
        } else {
            format!(
                "connection \"{}\": catalog facts unreadable ({error}); calls not qualified with pg_catalog \
                 and reads of relations are held as unknown code",
                self.connection
            )
        })
    }

    /// The catalog may have changed: facts read before now are not trusted,
    /// and a read starts at once.
    pub fn changed(&self) {
        self.state().changed_at = Some(Instant::now());
        self.wake.notify_one();
    }

    /// Waits (at most `within`) until the first read has ended.
    pub async fn first_read(&self, within: Duration) {
        let mut rx = self.first.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|done| *done)).await;
    }

    /// Reads the facts now and then, for as long as the process runs.
    pub async fn run(self: Arc<Self>) {
        loop {
            let started = Instant::now();
            let read = match tokio::time::timeout(READ_WITHIN, read(&self.config)).await {
                Ok(r) => r,
                Err(_) => Err(format!("reading the catalog took longer than {READ_WITHIN:?}")),
            };
            let ok = read.is_ok();
            {
                let mut s = self.state();
                match read {
                    Ok(facts) => {
                        let (relations, functions) = facts.size();
                        if s.error.take().is_some() || s.facts.is_none() {
                            tracing::info!(connection = %self.connection, relations, functions, search_path = ?facts.search_path(), "catalog facts read");
                        }
                        // The same facts keep their identity, so cached
                        // verdicts stay valid.
                        if s.facts.as_deref() != Some(&facts) {
                            s.facts = Some(Arc::new(facts));
                        }
                        s.read_started = Some(started);
                    }
                    Err(e) => {
                        if s.error.as_deref() != Some(e.as_str()) {
                            tracing::error!(connection = %self.connection, error = %e, "catalog facts cannot be read: judging against the last facts read (if any), holding calls as unknown code");
                        }
                        // The last facts stay, for resolving and expanding
                        // relations; they are no longer current.
                        s.error = Some(e);
                    }
                }
            }
            self.first.send_replace(true);
            let wait = if ok {
                self.every
            } else {
                RETRY_AFTER.min(self.every)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

/// Whether a statement of these kinds may change what the facts say
/// (functions, relations, views, rules, search paths). Reads, writes of
/// rows, settings and transaction control do not; DDL, calls of code that
/// could run DDL, and text the parser could not read may.
pub fn may_change_catalog(kinds: &[Kind], parsed: bool) -> bool {
    !parsed
        || kinds.iter().any(|k| {
            !matches!(
                k,
                Kind::Select
                    | Kind::Insert
                    | Kind::Update
                    | Kind::Delete
                    | Kind::Merge
                    | Kind::Truncate
                    | Kind::Copy
                    | Kind::Lock
                    | Kind::Set
                    | Kind::Show
                    | Kind::Transaction
                    | Kind::Deallocate
                    | Kind::Listen
                    | Kind::Notify
                    | Kind::Vacuum
                    | Kind::Analyze
                    | Kind::Comment
                    | Kind::Discard
                    | Kind::Cursor
                    | Kind::ParserSetting
            )
        })
}

/// One session's view of its connection's facts: the connection's, unless
/// the session itself has a change of the catalog in flight or not yet
/// committed.
#[derive(Debug)]
pub struct SessionCatalog {
    watch: Arc<CatalogWatch>,
    /// Statements that may change the catalog, judged and not yet over.
    in_flight: AtomicUsize,
    /// One of them ran; its transaction has not ended since.
    uncommitted: AtomicBool,
}

impl SessionCatalog {
    pub fn new(watch: Arc<CatalogWatch>) -> Arc<SessionCatalog> {
        Arc::new(SessionCatalog {
            watch,
            in_flight: AtomicUsize::new(0),
            uncommitted: AtomicBool::new(false),
        })
    }

    pub fn watch(&self) -> &Arc<CatalogWatch> {
        &self.watch
    }

    /// The facts this session's next statement is judged against.
    pub fn facts(&self) -> Facts {
        let current = self.watch.current();
        if self.in_flight.load(Ordering::Acquire) > 0 || self.uncommitted.load(Ordering::Acquire) {
            return current.changing();
        }
        current
    }

    /// A statement that may change the catalog was judged to run (or be
    /// held): until it is over, this session judges without facts. Call
    /// [`Change::ran`] when it has run; drop it when it is over either way.
    pub fn change(self: &Arc<Self>) -> Change {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Change {
            session: self.clone(),
            ran: AtomicBool::new(false),
        }
    }

    /// PostgreSQL is ready for a query outside any transaction block: what
    /// this session changed is committed (or rolled back), and visible to
    /// a fresh read.
    pub fn idle(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 && self.uncommitted.load(Ordering::Acquire) {
            // The connection's facts go stale before the session's mark is
            // lifted, so no statement sees neither.
            self.watch.changed();
            self.uncommitted.store(false, Ordering::Release);
        }
    }
}

/// A statement that may change the catalog, judged and not yet over.
#[derive(Debug)]
pub struct Change {
    session: Arc<SessionCatalog>,
    ran: AtomicBool,
}

impl Change {
    /// It ran (all or part of it).
    pub fn ran(&self) {
        self.ran.store(true, Ordering::Release);
        // Committed already when it ran outside a transaction block.
        self.session.watch.changed();
    }
}

impl Drop for Change {
    fn drop(&mut self) {
        if self.ran.load(Ordering::Acquire) {
            self.session.uncommitted.store(true, Ordering::Release);
        }
        self.session.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads the facts of the database `config` logs in to.
pub async fn read(config: &UpstreamConfig) -> Result<CatalogFacts, String> {
    let params = [("application_name".to_owned(), "airlock-catalog".to_owned())];
    let mut up = Upstream::connect(config, &params)
        .await
        .map_err(|e| e.to_string())?;
    let result = read_on(&mut up).await;
    // Terminate; the connection closes either way.
    let _ = up.send(&[b'X', 0, 0, 0, 4]).await;
    result
}

async fn read_on(up: &mut Upstream) -> Result<CatalogFacts, String> {
    query(up, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    let path: Vec<String> = query(up, SEARCH_PATH)
        .await?
        .into_iter()
        .filter_map(|mut r| r.swap_remove(0))
        .collect();
    let functions: Vec<String> = query(up, FUNCTIONS)
        .await?
        .into_iter()
        .filter_map(|mut r| r.swap_remove(0))
        .collect();
    let mut relations = RelationsBuilder::default();
    for row in query(up, RELATIONS).await? {
        let [Some(schema), Some(name), Some(kind)] = &row[..] else {
            continue;
        };
        let kind = match kind.as_str() {
            "v" => RelationKind::View,
            "m" => RelationKind::MaterializedView,
            _ => RelationKind::Table,
        };
        relations.relation(format!("{schema}.{name}"), kind);
    }
    for row in query(up, RULE_DEPENDENCIES).await? {
        let [
            Some(schema),
            Some(name),
            Some(on_select),
            Some(is_relation),
            Some(rs),
            Some(rn),
            volatile,
        ] = &row[..]
        else {
            continue;
        };
        let at = format!("{schema}.{name}");
        let target = format!("{rs}.{rn}");
        if target == at {
            continue;
        }
        let on_select = on_select == "t";
        if is_relation == "t" {
            if on_select {
                relations.reads(&at, target);
            } else {
                relations.rule_table(&at, target);
            }
        } else {
            let called = Called {
                name: target,
                volatile: volatile.as_deref() == Some("t"),
            };
            if on_select {
                relations.read_call(&at, called);
            } else {
                relations.write_call(&at, called);
            }
        }
    }
    for row in query(up, VIEW_TRIGGERS).await? {
        let [Some(schema), Some(name), Some(fs), Some(fname), Some(volatile)] = &row[..] else {
            continue;
        };
        relations.write_call(
            &format!("{schema}.{name}"),
            Called {
                name: format!("{fs}.{fname}"),
                volatile: volatile == "t",
            },
        );
    }
    for row in query(up, POLICY_DEPENDENCIES).await? {
        let [
            Some(schema),
            Some(name),
            Some(is_relation),
            Some(rs),
            Some(rn),
            volatile,
        ] = &row[..]
        else {
            continue;
        };
        let at = format!("{schema}.{name}");
        let target = format!("{rs}.{rn}");
        if is_relation == "t" {
            if target != at {
                relations.guard_reads(&at, target);
            }
        } else {
            relations.guard_call(
                &at,
                Called {
                    name: target,
                    volatile: volatile.as_deref() == Some("t"),
                },
            );
        }
    }
    for row in query(up, CODE).await? {
        let [
            Some(schema),
            Some(name),
            Some(used),
            Some(fs),
            Some(fname),
            volatile,
        ] = &row[..]
        else {
            continue;
        };
        let at = format!("{schema}.{name}");
        let called = Called {
            name: format!("{fs}.{fname}"),
            volatile: volatile.as_deref() == Some("t"),
        };
        match used.as_str() {
            "read" => relations.read_call(&at, called),
            "guard" => relations.guard_call(&at, called),
            _ => relations.write_call(&at, called),
        }
    }
    for row in query(up, CASCADES).await? {
        let [Some(schema), Some(name), Some(rs), Some(rn)] = &row[..] else {
            continue;
        };
        relations.rule_table(&format!("{schema}.{name}"), format!("{rs}.{rn}"));
    }
    query(up, "COMMIT").await?;
    Ok(CatalogFacts::new(path, functions, relations.build()))
}

/// The role's effective search path: existing schemas, `$user` expanded.
const SEARCH_PATH: &str = "SELECT s FROM pg_catalog.unnest(pg_catalog.current_schemas(false)) WITH ORDINALITY AS u(s, n) ORDER BY n";

/// Names of functions outside `pg_catalog`.
const FUNCTIONS: &str = "SELECT DISTINCT p.proname FROM pg_catalog.pg_proc p \
     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname <> 'pg_catalog'";

/// Tables, views and materialized views outside the system schemas (and
/// other sessions' temporary schemas).
const RELATIONS: &str = "SELECT n.nspname, c.relname, c.relkind FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm') \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'";

/// What each rewrite rule refers to: relations, functions, and the
/// functions behind operators. A view's query is its ON SELECT rule.
const RULE_DEPENDENCIES: &str = "SELECT DISTINCT n.nspname, c.relname, r.ev_type = '1', rc.oid IS NOT NULL, \
       coalesce(rn.nspname, fn.nspname), coalesce(rc.relname, f.proname), f.provolatile = 'v' \
     FROM pg_catalog.pg_rewrite r \
     JOIN pg_catalog.pg_class c ON c.oid = r.ev_class \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
       AND d.objid = r.oid AND d.deptype = 'n' \
     LEFT JOIN pg_catalog.pg_class rc ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
       AND rc.oid = d.refobjid \
     LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace \
     LEFT JOIN pg_catalog.pg_operator o ON d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass \
       AND o.oid = d.refobjid \
     LEFT JOIN pg_catalog.pg_proc f ON f.oid = CASE \
       WHEN d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass THEN d.refobjid \
       ELSE o.oprcode::pg_catalog.oid END \
     LEFT JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND (rc.oid IS NOT NULL OR f.oid IS NOT NULL)";

/// What the row-level security policies of each table with row security
/// enabled refer to: relations, functions, and the functions behind
/// operators (evaluated on every access of a role the policies apply to).
const POLICY_DEPENDENCIES: &str = "SELECT DISTINCT n.nspname, c.relname, rc.oid IS NOT NULL, \
       coalesce(rn.nspname, fn.nspname), coalesce(rc.relname, f.proname), f.provolatile = 'v' \
     FROM pg_catalog.pg_policy p \
     JOIN pg_catalog.pg_class c ON c.oid = p.polrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass \
       AND d.objid = p.oid AND d.deptype = 'n' \
     LEFT JOIN pg_catalog.pg_class rc ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
       AND rc.oid = d.refobjid \
     LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace \
     LEFT JOIN pg_catalog.pg_operator o ON d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass \
       AND o.oid = d.refobjid \
     LEFT JOIN pg_catalog.pg_proc f ON f.oid = CASE \
       WHEN d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass THEN d.refobjid \
       ELSE o.oprcode::pg_catalog.oid END \
     LEFT JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace \
     WHERE c.relrowsecurity AND (rc.oid IS NOT NULL OR f.oid IS NOT NULL)";

/// Every function the code attached to a relation calls, read from the
/// stored expression trees (built-ins included: `pg_depend` leaves out
/// pinned objects), with how the code runs: `read` (a view's query),
/// `guard` (row-level security, on every access), `write` (rules other
/// than a view's query, triggers, column defaults and generated columns,
/// CHECK constraints, the CHECKs of columns' domains, index expressions
/// and predicates). Operators count
/// as the functions behind them.
const CODE: &str = "WITH exprs AS ( \
       SELECT r.ev_class AS rel, CASE WHEN r.ev_type = '1' THEN 'read' ELSE 'write' END AS used, \
              r.ev_action::pg_catalog.text || ' ' || coalesce(r.ev_qual::pg_catalog.text, '') AS tree \
         FROM pg_catalog.pg_rewrite r \
       UNION ALL SELECT p.polrelid, 'guard', \
              coalesce(p.polqual::pg_catalog.text, '') || ' ' || coalesce(p.polwithcheck::pg_catalog.text, '') \
         FROM pg_catalog.pg_policy p \
       UNION ALL SELECT d.adrelid, 'write', d.adbin::pg_catalog.text FROM pg_catalog.pg_attrdef d \
       UNION ALL SELECT c.conrelid, 'write', c.conbin::pg_catalog.text FROM pg_catalog.pg_constraint c \
         WHERE c.contype = 'c' AND c.conrelid <> 0 \
       UNION ALL SELECT i.indrelid, 'write', \
              coalesce(i.indexprs::pg_catalog.text, '') || ' ' || coalesce(i.indpred::pg_catalog.text, '') \
         FROM pg_catalog.pg_index i WHERE i.indexprs IS NOT NULL OR i.indpred IS NOT NULL \
       UNION ALL SELECT a.attrelid, 'write', c.conbin::pg_catalog.text \
         FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_constraint c ON c.contypid = a.atttypid \
         WHERE c.contype = 'c' AND a.attnum > 0 AND NOT a.attisdropped \
       UNION ALL SELECT t.tgrelid, 'write', ':funcid ' || t.tgfoid::pg_catalog.text || ' ' || \
              coalesce(t.tgqual::pg_catalog.text, '') \
         FROM pg_catalog.pg_trigger t WHERE NOT t.tgisinternal \
     ), ids AS ( \
       SELECT e.rel, e.used, m.g[1] AS kind, m.g[2]::pg_catalog.oid AS id \
         FROM exprs e, pg_catalog.regexp_matches(e.tree, ':(funcid|aggfnoid|winfnoid|opno) ([0-9]+)', 'g') AS m(g) \
     ) \
     SELECT DISTINCT n.nspname, c.relname, ids.used, fn.nspname, f.proname, f.provolatile = 'v' \
       FROM ids \
       JOIN pg_catalog.pg_class c ON c.oid = ids.rel \
       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
       LEFT JOIN pg_catalog.pg_operator o ON ids.kind = 'opno' AND o.oid = ids.id \
       JOIN pg_catalog.pg_proc f ON f.oid = CASE WHEN ids.kind = 'opno' THEN o.oprcode::pg_catalog.oid ELSE ids.id END \
       JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace \
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
        AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'";

/// Foreign keys whose deletes or updates cascade (or set null or default):
/// a write to the referenced table also writes the referencing one.
const CASCADES: &str = "SELECT DISTINCT tn.nspname, t.relname, rn.nspname, r.relname \
       FROM pg_catalog.pg_constraint c \
       JOIN pg_catalog.pg_class t ON t.oid = c.confrelid \
       JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace \
       JOIN pg_catalog.pg_class r ON r.oid = c.conrelid \
       JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace \
      WHERE c.contype = 'f' AND (c.confdeltype IN ('c', 'n', 'd') OR c.confupdtype IN ('c', 'n', 'd'))";

/// INSTEAD OF (and other) triggers on views: what writing through them runs.
const VIEW_TRIGGERS: &str = "SELECT n.nspname, c.relname, fn.nspname, f.proname, f.provolatile = 'v' \
     FROM pg_catalog.pg_trigger t \
     JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_catalog.pg_proc f ON f.oid = t.tgfoid \
     JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace \
     WHERE c.relkind = 'v' AND NOT t.tgisinternal";

use crate::upstream::query::Row;

/// Runs one statement over the simple protocol; its rows as text.
async fn query(up: &mut Upstream, sql: &str) -> Result<Vec<Row>, String> {
    let answer = crate::upstream::query::simple_answer(up, sql).await?;
    match answer.error {
        Some((sqlstate, message)) => Err(format!("reading the catalog: {message} ({sqlstate})")),
        None => Ok(answer.rows),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_kinds_may_change_the_catalog() {
        assert!(!may_change_catalog(&[Kind::Select, Kind::Delete], true));
        assert!(may_change_catalog(&[Kind::CreateFunction], true));
        assert!(may_change_catalog(&[Kind::Select, Kind::Function], true));
        assert!(may_change_catalog(&[Kind::Do], true));
        assert!(may_change_catalog(&[Kind::Select], false));
    }

    fn watch() -> Arc<CatalogWatch> {
        let config = UpstreamConfig {
            tls: Default::default(),
            host: "127.0.0.1".into(),
            port: 1,
            user: "maint".into(),
            database: "shop".into(),
            password: None,
            token: None,
            connect_timeout: Duration::from_secs(1),
        };
        CatalogWatch::new("shop".into(), config, Duration::from_secs(60))
    }

    fn know(w: &CatalogWatch) {
        let mut s = w.state();
        s.facts = Some(Arc::new(CatalogFacts::new(
            vec!["public".into()],
            Vec::<String>::new(),
            std::collections::HashMap::new(),
        )));
        s.read_started = Some(Instant::now());
    }

    #[tokio::test]
    async fn a_session_distrusts_its_facts_until_its_change_is_committed_and_read() {
        let w = watch();
        assert!(matches!(w.current(), Facts::Unreadable(_)), "not read yet");
        know(&w);
        let session = SessionCatalog::new(w.clone());
        let other = SessionCatalog::new(w.clone());
        assert!(matches!(session.facts(), Facts::Known(_)));
        let change = session.change();
        assert!(matches!(session.facts(), Facts::Changing(..)), "in flight");
        assert!(
            matches!(other.facts(), Facts::Known(_)),
            "others see no uncommitted change"
        );
        change.ran();
        drop(change);
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(
            matches!(session.facts(), Facts::Changing(..)),
            "ran, not committed"
        );
        assert!(
            matches!(other.facts(), Facts::Stale(..)),
            "ran: the connection's facts are stale"
        );
        know(&w);
        assert!(matches!(other.facts(), Facts::Known(_)));
        assert!(
            matches!(session.facts(), Facts::Changing(..)),
            "still in its transaction"
        );
        session.idle();
        assert!(
            matches!(session.facts(), Facts::Stale(..)),
            "committed: stale until read again"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        know(&w);
        assert!(matches!(session.facts(), Facts::Known(_)));
        // Judged but never run (refused, denied): nothing to wait for.
        drop(session.change());
        assert!(matches!(session.facts(), Facts::Known(_)));
    }
}
