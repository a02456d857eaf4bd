//! A bounded verdict cache, so a repeated statement costs a hash lookup.
//! Keyed by policy digest, default schema, the catalog facts judged
//! against ([`Catalog::key`]) and the exact statement text;
//! verdicts that depend on session state (`EXECUTE`, `PREPARE`,
//! `DEALLOCATE`) are never stored, so one session's prepared statements
//! cannot leak into another's judgement.
//!
//! Thread-safe behind a mutex; the proxy shares one per policy set.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::classify::{PreparedStatements, SessionNames};
use crate::config::Policy;
use crate::facts::Catalog;
use crate::judge::Verdict;

/// Entries kept unless the caller says otherwise.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Longer statements are judged every time rather than kept, so the cache's
/// memory stays bounded by capacity x this (about 640 MiB at the very worst,
/// a few MiB for real traffic).
pub const MAX_CACHED_STATEMENT_BYTES: usize = 64 * 1024;

#[derive(Debug)]
struct Entry {
    digest: String,
    schema: String,
    catalog: u64,
    sql: String,
    verdict: Arc<Verdict>,
}

/// Cache of verdicts. Lookups hash the key once and compare the stored key
/// in full, so a hash collision can never return another statement's verdict.
#[derive(Debug)]
pub struct VerdictCache {
    entries: Mutex<LruCache<u64, Vec<Entry>>>,
}

impl Default for VerdictCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl VerdictCache {
    /// A cache holding at most `capacity` statements (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        VerdictCache {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    fn key(digest: &str, schema: &str, catalog: u64, sql: &str) -> u64 {
        let mut h = DefaultHasher::new();
        (digest, schema, catalog, sql).hash(&mut h);
        h.finish()
    }

    /// The verdict for `sql` under `policy`, from the cache or freshly
    /// judged, with no catalog facts ([`Catalog::Assumed`]).
    pub fn evaluate(
        &self,
        policy: &Policy,
        sql: &str,
        default_schema: &str,
        prepared: &PreparedStatements,
    ) -> Arc<Verdict> {
        self.evaluate_on(
            policy,
            sql,
            default_schema,
            Catalog::Assumed,
            SessionNames::default(),
            prepared,
        )
    }

    /// The verdict for `sql` under `policy` against `catalog`, from the
    /// cache or freshly judged.
    pub fn evaluate_on(
        &self,
        policy: &Policy,
        sql: &str,
        default_schema: &str,
        catalog: Catalog<'_>,
        session: SessionNames,
        prepared: &PreparedStatements,
    ) -> Arc<Verdict> {
        // Long text is judged afresh: keeping it would make the cache's memory
        // unbounded in practice, and oversized text is refused anyway.
        // A session with temporary relations, or its own search path, is
        // judged against its own names, and one whose own change of the
        // catalog is in flight differently from one whose facts are merely
        // stale (under the same facts' key): never from, or into, the
        // shared cache.
        let cacheable_size = !session.any()
            && !matches!(catalog, Catalog::Changing(_))
            && sql.len() <= MAX_CACHED_STATEMENT_BYTES.min(policy.max_statement_bytes);
        let facts = catalog.key();
        let key = Self::key(policy.digest(), default_schema, facts, sql);
        if cacheable_size && let Some(hit) = self.lookup(key, policy.digest(), default_schema, facts, sql) {
            return hit;
        }
        let verdict = Arc::new(policy.evaluate_on(sql, default_schema, catalog, session, prepared));
        if cacheable_size && !verdict.uses_session {
            self.store(
                key,
                Entry {
                    digest: policy.digest().to_owned(),
                    schema: default_schema.to_owned(),
                    catalog: facts,
                    sql: sql.to_owned(),
                    verdict: Arc::clone(&verdict),
                },
            );
        }
        verdict
    }

    fn lookup(&self, key: u64, digest: &str, schema: &str, catalog: u64, sql: &str) -> Option<Arc<Verdict>> {
        // A poisoned lock only means another thread panicked mid-insert; the
        // map is still consistent, so keep using it.
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&key)?
            .iter()
            .find(|e| e.sql == sql && e.digest == digest && e.schema == schema && e.catalog == catalog)
            .map(|e| Arc::clone(&e.verdict))
    }

    fn store(&self, key: u64, entry: Entry) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get_mut(&key) {
            Some(bucket) => bucket.push(entry),
            None => {
                entries.put(key, vec![entry]);
            }
        }
    }

    /// Statements currently cached (hash buckets, nearly always one each).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
