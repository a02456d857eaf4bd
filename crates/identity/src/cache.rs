//! The JWKS cache: which keys are trusted right now, and when to ask again.
//!
//! Owns the fetch policy:
//! * a `kid` not in the cache triggers a refetch, at most once per
//!   `unknown_kid_cooldown` (30 s), so a flood of forged kids cannot turn
//!   Airlock into a load generator against the issuer;
//! * fetches are single-flight: concurrent callers wait for the one fetch in
//!   progress and then look again, they never start their own;
//! * a background task refreshes the keys every `refresh_interval`;
//! * a failed fetch never drops keys: verification goes on with the cached
//!   set while the issuer is briefly unreachable, up to `max_key_age` since
//!   the last successful fetch, after which the cache fails closed.
//!
//! Knows nothing about tokens beyond the `kid` string.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{FetchError, VerifyError, clip};
use crate::fetch::{Fetcher, check_fetch_url};
use crate::keys::{JwkEntry, KeySet};

/// How the cache fetches and refreshes. The defaults suit production; tests
/// shorten them.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Minimum time between two refetches caused by unknown `kid`s.
    pub unknown_kid_cooldown: Duration,
    /// Minimum time between two attempts while no key was ever fetched.
    pub cold_retry: Duration,
    /// Background refresh period.
    pub refresh_interval: Duration,
    /// Background retry period after a failed refresh.
    pub refresh_retry: Duration,
    /// Time limit of one HTTP request, body included.
    pub fetch_timeout: Duration,
    /// Cached keys are trusted at most this long after the last successful
    /// fetch; past it, verification fails closed until a fetch succeeds.
    pub max_key_age: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            unknown_kid_cooldown: Duration::from_secs(30),
            cold_retry: Duration::from_secs(5),
            refresh_interval: Duration::from_secs(60 * 60),
            refresh_retry: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(10),
            max_key_age: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// Where the keys come from.
#[derive(Debug, Clone)]
pub(crate) enum KeySource {
    /// `jwks_uri` was configured.
    Jwks { uri: String },
    /// Discover `jwks_uri` from `discovery`, whose `issuer` must be `issuer`.
    Discover { discovery: String, issuer: String },
}

/// Shared between all clones of a verifier and its refresh task.
#[derive(Debug)]
pub(crate) struct KeyCache {
    source: KeySource,
    fetcher: Fetcher,
    options: CacheOptions,
    state: RwLock<State>,
    /// Held for the whole of a fetch: this is the single flight.
    fetch_lock: Arc<tokio::sync::Mutex<()>>,
    /// Completed HTTP fetches of the JWKS document (success or failure), for
    /// tests and metrics.
    jwks_fetches: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    keys: Arc<KeySet>,
    /// When the current keys were fetched; None: never.
    fetched_at: Option<Instant>,
    /// When the last fetch attempt finished, and how many have finished.
    /// The count lets a caller that waited on the fetch lock see that
    /// someone else fetched meanwhile; it moves only when a fetch is over,
    /// so a caller that arrives mid-fetch also waits for its result.
    last_attempt: Option<Instant>,
    completed: u64,
    last_error: Option<FetchError>,
    /// The jwks_uri found by discovery.
    discovered_jwks_uri: Option<String>,
}

impl State {
    /// The keys, unless none were ever fetched or they are too old to trust.
    fn trusted_keys(&self, now: Instant, max_age: Duration) -> Option<&Arc<KeySet>> {
        match self.fetched_at {
            Some(at) if now.duration_since(at) <= max_age => Some(&self.keys),
            _ => None,
        }
    }
}

impl KeyCache {
    pub(crate) fn new(source: KeySource, fetcher: Fetcher, options: CacheOptions) -> Arc<Self> {
        Arc::new(KeyCache {
            source,
            fetcher,
            options,
            state: RwLock::new(State::default()),
            fetch_lock: Arc::new(tokio::sync::Mutex::new(())),
            jwks_fetches: AtomicU64::new(0),
        })
    }

    /// How many times the JWKS document was requested.
    pub(crate) fn jwks_fetches(&self) -> u64 {
        self.jwks_fetches.load(Ordering::Relaxed)
    }

    /// The entry for `kid`, refetching the JWKS when policy allows.
    ///
    /// Cancel safety: dropping the future is safe at any point. A fetch runs
    /// in its own task, so a caller that goes away (a client disconnecting
    /// mid-login) never abandons it: the result still lands in the cache,
    /// and cancelling cannot be used to get around the cooldown.
    pub(crate) async fn entry(self: &Arc<Self>, kid: &str) -> Result<Arc<JwkEntry>, VerifyError> {
        let seen_completed = {
            let state = self.read();
            if let Some(keys) = state.trusted_keys(Instant::now(), self.options.max_key_age)
                && let Some(entry) = keys.get(kid)
            {
                return Ok(entry);
            }
            state.completed
        };

        let flight = self.fetch_lock.clone().lock_owned().await;
        let now = Instant::now();
        {
            let state = self.read();
            let trusted = state.trusted_keys(now, self.options.max_key_age).cloned();
            if let Some(entry) = trusted.as_ref().and_then(|keys| keys.get(kid)) {
                return Ok(entry);
            }
            if state.completed != seen_completed {
                // Someone fetched while we waited: their result is ours.
                return lookup_after_fetch(&state, trusted.as_deref(), kid);
            }
            let cooldown = match trusted {
                Some(_) => self.options.unknown_kid_cooldown,
                None => self.options.cold_retry,
            };
            if let Some(last) = state.last_attempt
                && now.duration_since(last) < cooldown
            {
                return Err(match (trusted, &state.last_error) {
                    (Some(_), _) => VerifyError::UnknownKeyId {
                        kid: clip(kid),
                        detail: format!(
                            "not in the issuer's JWKS; the JWKS was last requested {} s ago and is refetched for unknown keys at most every {} s",
                            now.duration_since(last).as_secs(),
                            cooldown.as_secs()
                        ),
                    },
                    (None, Some(error)) => VerifyError::JwksUnavailable(error.clone()),
                    (None, None) => VerifyError::JwksUnavailable(FetchError::Transport {
                        url: self.describe_source(),
                        detail: "cached keys are too old and no fetch has succeeded since".into(),
                    }),
                });
            }
        }
        tracing::debug!(kid = %clip(kid), "key id not cached; fetching the JWKS");
        // The outcome is recorded in the state (keys or last_error).
        let _ = self.fetch_detached(flight).await;
        let state = self.read();
        let trusted = state
            .trusted_keys(Instant::now(), self.options.max_key_age)
            .cloned();
        lookup_after_fetch(&state, trusted.as_deref(), kid)
    }

    /// Fetches now (waiting for any fetch in progress first). Returns the
    /// number of keys, or why the fetch failed; cached keys are kept on
    /// failure.
    pub(crate) async fn refresh(self: &Arc<Self>) -> Result<usize, FetchError> {
        let flight = self.fetch_lock.clone().lock_owned().await;
        self.fetch_detached(flight).await
    }

    /// Runs one fetch in its own task, which keeps `flight` (the fetch lock)
    /// until the fetch is over, whatever happens to the caller.
    async fn fetch_detached(
        self: &Arc<Self>,
        flight: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<usize, FetchError> {
        let cache = Arc::clone(self);
        let task = tokio::spawn(async move {
            let _flight = flight;
            cache.fetch_locked().await
        });
        task.await.unwrap_or_else(|join| {
            Err(FetchError::Transport {
                url: self.describe_source(),
                detail: format!("the fetch task ended abnormally: {join}"),
            })
        })
    }

    /// One fetch; the caller holds `fetch_lock`.
    async fn fetch_locked(&self) -> Result<usize, FetchError> {
        let result = self.fetch_keys().await;
        let mut state = self.write();
        state.completed += 1;
        state.last_attempt = Some(Instant::now());
        match result {
            Ok(keys) => {
                let count = keys.len();
                state.keys = Arc::new(keys);
                state.fetched_at = Some(Instant::now());
                state.last_error = None;
                tracing::debug!(keys = count, "JWKS fetched");
                Ok(count)
            }
            Err(error) => {
                tracing::warn!(%error, "JWKS fetch failed; keeping the cached keys");
                state.last_error = Some(error.clone());
                Err(error)
            }
        }
    }

    async fn fetch_keys(&self) -> Result<KeySet, FetchError> {
        let uri = self.jwks_uri().await?;
        self.jwks_fetches.fetch_add(1, Ordering::Relaxed);
        let document = self.fetcher.get_json(&uri, "JWKS").await?;
        KeySet::from_jwks(&document).map_err(|detail| FetchError::BadDocument {
            url: uri,
            what: "JWKS",
            detail,
        })
    }

    /// The JWKS URI: configured, or discovered once and remembered.
    async fn jwks_uri(&self) -> Result<String, FetchError> {
        let (discovery, issuer) = match &self.source {
            KeySource::Jwks { uri } => return Ok(uri.clone()),
            KeySource::Discover { discovery, issuer } => (discovery, issuer),
        };
        if let Some(uri) = self.read().discovered_jwks_uri.clone() {
            return Ok(uri);
        }
        let document = self.fetcher.get_json(discovery, "OpenID configuration").await?;
        let bad = |detail: &str| FetchError::BadDocument {
            url: discovery.clone(),
            what: "OpenID configuration",
            detail: detail.to_owned(),
        };
        let found = document
            .get("issuer")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("no issuer"))?;
        if found != issuer {
            return Err(FetchError::DiscoveryIssuerMismatch {
                url: discovery.clone(),
                found: clip(found),
                expected: issuer.clone(),
            });
        }
        let uri = document
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("no jwks_uri"))?;
        check_fetch_url(uri)?;
        self.write().discovered_jwks_uri = Some(uri.to_owned());
        Ok(uri.to_owned())
    }

    fn describe_source(&self) -> String {
        match &self.source {
            KeySource::Jwks { uri } => uri.clone(),
            KeySource::Discover { discovery, .. } => discovery.clone(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding this lock leaves consistent data (every
        // write is a few field stores), so poisoning is ignored.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn lookup_after_fetch(
    state: &State,
    trusted: Option<&KeySet>,
    kid: &str,
) -> Result<Arc<JwkEntry>, VerifyError> {
    match (trusted, &state.last_error) {
        (Some(keys), None) => keys.get(kid).ok_or_else(|| VerifyError::UnknownKeyId {
            kid: clip(kid),
            detail: "not in the issuer's JWKS, even after refetching it".into(),
        }),
        (Some(keys), Some(error)) => keys.get(kid).ok_or_else(|| VerifyError::UnknownKeyId {
            kid: clip(kid),
            detail: format!("not in the cached JWKS, and refetching it failed: {error}"),
        }),
        (None, Some(error)) => Err(VerifyError::JwksUnavailable(error.clone())),
        (None, None) => Err(VerifyError::UnknownKeyId {
            kid: clip(kid),
            detail: "no JWKS has been fetched".into(),
        }),
    }
}

/// Refreshes `cache` every `refresh_interval` (every `refresh_retry` after a
/// failure) until every verifier sharing it is dropped.
pub(crate) fn spawn_refresh(cache: &Arc<KeyCache>) -> Option<tokio::task::JoinHandle<()>> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("no tokio runtime: JWKS keys are only refreshed on demand");
        return None;
    };
    let weak: Weak<KeyCache> = Arc::downgrade(cache);
    let mut wait = cache.options.refresh_interval;
    Some(runtime.spawn(async move {
        loop {
            tokio::time::sleep(wait).await;
            let Some(cache) = weak.upgrade() else { return };
            wait = match cache.refresh().await {
                Ok(_) => cache.options.refresh_interval,
                Err(_) => cache.options.refresh_retry,
            };
        }
    }))
}
