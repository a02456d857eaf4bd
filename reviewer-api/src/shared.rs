//! What reviewer replicas share when `reviewer.state: nats`: browser
//! sessions, sign-ins in progress, and the lease that elects the one
//! replica that sends notifications. All three live in NATS key-value
//! buckets, so a restart keeps every sign-in and any replica serves any
//! browser, with no sticky routing.
//!
//! Why NATS KV rather than signed, encrypted cookies: a sign-out ends the
//! session on every replica at once (a stateless cookie stays valid until
//! it expires, wherever it was copied to), the reviewer's Entra token never
//! leaves the server (a cookie would carry it to the browser and back), and
//! no cookie key has to be distributed to and rotated on every replica. The
//! lease needs NATS anyway.
//!
//! What is stored reveals nothing without the cookie: an entry's key is a
//! hash of the cookie (or of the sign-in's `state`), and its value is
//! sealed with ChaCha20-Poly1305 under a key derived from the same secret,
//! the entry's key as associated data. Whoever can read the buckets learns
//! how many reviewers are signed in, not who, and cannot use a session;
//! whoever can write them can delete sessions (sign reviewers out), not
//! forge one. The secrets are 256 random bits, so plain SHA-256 with a
//! purpose label suffices to derive both.

use std::time::{Duration, SystemTime};

use airlock_eventlog::{EventLog, NatsSettings};
use async_nats::jetstream::kv;
use bytes::Bytes;
use ring::aead;
use sha2::{Digest, Sha256};

/// Sign-ins in progress last this long at most (the identity provider's
/// page must be answered within it).
pub const LOGIN_TTL: Duration = Duration::from_secs(600);

/// A notifier that stops renewing loses the lease after this long.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// How often the holder renews the lease and the others try to take it.
pub const LEASE_RENEW: Duration = Duration::from_secs(2);

const SESSIONS: &str = "airlock_reviewer_sessions";
const LOGINS: &str = "airlock_reviewer_logins";
const LEASE: &str = "airlock_reviewer_lease";
const NOTIFIER: &str = "airlock_reviewer_notifier";
const SLACK: &str = "airlock_reviewer_slack";
/// How long a Slack request is remembered: longer than any timestamp
/// Slack's signature check lets through (five minutes either way).
const SLACK_SEEN_TTL: Duration = Duration::from_secs(15 * 60);
/// The key of the lease, and of the cursor in the notifier bucket.
const HOLDER: &str = "notifier";
const CURSOR: &str = "cursor";

/// The reviewer's buckets.
#[derive(Clone)]
pub struct Shared {
    sessions: kv::Store,
    logins: kv::Store,
    lease: kv::Store,
    /// The cursor of the notifications sent: outlives any lease.
    notifier: kv::Store,
    /// Slack requests already taken (hashes of their signatures).
    slack: kv::Store,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared(NATS KV)")
    }
}

/// A stored value the caller cannot use: a store error, or an entry that
/// does not open (tampered with, or written for another secret).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(String);

fn store_error(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{what}: {e}"))
}

impl Shared {
    /// Connects with `settings` (the `nats:` section) and opens the buckets,
    /// creating any that is missing. Sessions expire from NATS after
    /// `session_ttl` whatever the record says.
    pub async fn open(settings: &NatsSettings, session_ttl: Duration) -> anyhow::Result<Shared> {
        let log = EventLog::connect(settings.clone()).await?;
        let js = async_nats::jetstream::new(log.client().clone());
        // Each bucket is bounded: when full, new entries are refused (a
        // sign-in gets 503), never the disk filled. Entries are small; a
        // session holds one access token.
        let bucket = |name: &str, max_age: Duration, max_bytes: i64, description: &str| kv::Config {
            bucket: name.to_owned(),
            description: description.to_owned(),
            history: 1,
            max_age,
            max_bytes,
            max_value_size: 64 << 10,
            storage: async_nats::jetstream::stream::StorageType::File,
            num_replicas: settings.replicas,
            ..Default::default()
        };
        let mut stores = Vec::new();
        for config in [
            bucket(
                SESSIONS,
                session_ttl,
                128 << 20,
                "Airlock reviewer: browser sessions (sealed)",
            ),
            bucket(
                LOGINS,
                LOGIN_TTL,
                32 << 20,
                "Airlock reviewer: sign-ins in progress (sealed)",
            ),
            bucket(
                LEASE,
                LEASE_TTL,
                1 << 20,
                "Airlock reviewer: which replica sends notifications",
            ),
            bucket(
                NOTIFIER,
                Duration::ZERO,
                1 << 20,
                "Airlock reviewer: how far notifications were queued",
            ),
            bucket(
                SLACK,
                SLACK_SEEN_TTL,
                16 << 20,
                "Airlock reviewer: Slack requests already taken (hashes)",
            ),
        ] {
            let name = config.bucket.clone();
            let store = match js.get_key_value(&name).await {
                Ok(store) => store,
                Err(_) => js
                    .create_key_value(config)
                    .await
                    .map_err(|e| anyhow::anyhow!("creating the key-value bucket {name}: {e}"))?,
            };
            stores.push(store);
        }
        let slack = stores.pop().expect("five buckets");
        let notifier = stores.pop().expect("five buckets");
        let lease = stores.pop().expect("five buckets");
        let logins = stores.pop().expect("five buckets");
        let sessions = stores.pop().expect("five buckets");
        Ok(Shared {
            sessions,
            logins,
            lease,
            notifier,
            slack,
        })
    }

    /// Whether no replica has taken the Slack request signed `signature`
    /// before; from now on every replica has. An error when NATS does not
    /// answer: the caller refuses the request (a replay is never let
    /// through for want of an answer).
    pub async fn first_sight(&self, signature: &str) -> Result<bool, StoreError> {
        match self
            .slack
            .create(entry_key("slack", signature), Bytes::from_static(b"1"))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(store_error("remembering a Slack request", e)),
        }
    }

    /// Stores `value` for the browser holding `cookie`.
    pub async fn put_session(&self, cookie: &str, value: &[u8]) -> Result<(), StoreError> {
        put(&self.sessions, "session", cookie, value).await
    }

    pub async fn session(&self, cookie: &str) -> Result<Option<Vec<u8>>, StoreError> {
        get(&self.sessions, "session", cookie).await
    }

    pub async fn remove_session(&self, cookie: &str) -> Result<(), StoreError> {
        self.sessions
            .purge(entry_key("session", cookie))
            .await
            .map_err(|e| store_error("removing a browser session", e))
    }

    /// Browser sessions stored (expired ones count until NATS drops them).
    pub async fn session_count(&self) -> Result<u64, StoreError> {
        let store = self.sessions.clone();
        let status = store
            .status()
            .await
            .map_err(|e| store_error("counting browser sessions", e))?;
        Ok(status.values())
    }

    /// Stores a sign-in in progress under its OAuth `state` (which travels
    /// in URLs), sealed under `sealing`, a second secret that only the
    /// browser's login cookie carries.
    pub async fn put_login(&self, state: &str, sealing: &str, value: &[u8]) -> Result<(), StoreError> {
        let key = entry_key("login", state);
        self.logins
            .put(&key, seal(sealing, &key, value).into())
            .await
            .map(drop)
            .map_err(|e| store_error("storing a sign-in", e))
    }

    /// The sign-in started with `state`, removed as it is read: a callback
    /// is answered once.
    pub async fn take_login(&self, state: &str, sealing: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = entry_key("login", state);
        let Some(entry) = self
            .logins
            .entry(&key)
            .await
            .map_err(|e| store_error("reading a sign-in", e))?
        else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        // Only the reader whose delete names this revision takes it.
        if self
            .logins
            .delete_expect_revision(&key, Some(entry.revision))
            .await
            .is_err()
        {
            return Ok(None);
        }
        Ok(open(sealing, &key, &entry.value))
    }

    /// Takes the notifier lease for `holder` if nobody holds it (it
    /// lapses [`LEASE_TTL`] after its holder's last renewal); its revision.
    pub async fn take_lease(&self, holder: &str) -> Option<u64> {
        self.lease
            .create(HOLDER, Bytes::from(holder.to_owned()))
            .await
            .ok()
    }

    /// Renews the lease at `revision`: the new revision, or `None` if it
    /// was lost (it lapsed, and perhaps someone else holds it now).
    pub async fn renew_lease(&self, holder: &str, revision: u64) -> Option<u64> {
        self.lease
            .update(HOLDER, Bytes::from(holder.to_owned()), revision)
            .await
            .ok()
    }

    /// Gives the lease up (a holder whose watch does not work), so another
    /// takes it at once.
    pub async fn release_lease(&self, revision: u64) {
        let _ = self.lease.purge_expect_revision(HOLDER, Some(revision)).await;
    }

    /// How far the notifications were sent (0: from the start).
    pub async fn cursor(&self) -> Result<u64, StoreError> {
        let value = self
            .notifier
            .get(CURSOR)
            .await
            .map_err(|e| store_error("reading the notification cursor", e))?;
        Ok(value
            .and_then(|v| std::str::from_utf8(&v).ok().and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0))
    }

    pub async fn set_cursor(&self, cursor: u64) -> Result<(), StoreError> {
        self.notifier
            .put(CURSOR, Bytes::from(cursor.to_string()))
            .await
            .map(drop)
            .map_err(|e| store_error("storing the notification cursor", e))
    }
}

/// SHA-256 of `secret` under a purpose label.
fn derive(purpose: &str, secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"airlock reviewer shared state v1\0");
    h.update(purpose.as_bytes());
    h.update(b"\0");
    h.update(secret.as_bytes());
    h.finalize().into()
}

/// The bucket key of `secret`'s entry: its kind and a hash, never the
/// secret.
pub fn entry_key(kind: &str, secret: &str) -> String {
    format!("{kind}.{}", hex::encode(derive("entry key", secret)))
}

/// `value` sealed under `secret`, bound to the entry `key`.
pub fn seal(secret: &str, key: &str, value: &[u8]) -> Vec<u8> {
    let sealing = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &derive("sealing key", secret))
            .expect("a 32-byte key"),
    );
    let mut nonce = [0u8; aead::NONCE_LEN];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let mut out = value.to_vec();
    sealing
        .seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(key.as_bytes()),
            &mut out,
        )
        .expect("sealing fits in memory");
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&out);
    sealed
}

/// What [`seal`] sealed, if `sealed` opens under `secret` for entry `key`.
pub fn open(secret: &str, key: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < aead::NONCE_LEN {
        return None;
    }
    let (nonce, body) = sealed.split_at(aead::NONCE_LEN);
    let opening = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &derive("sealing key", secret)).ok()?,
    );
    let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut body = body.to_vec();
    let plain = opening
        .open_in_place(nonce, aead::Aad::from(key.as_bytes()), &mut body)
        .ok()?;
    Some(plain.to_vec())
}

async fn put(store: &kv::Store, kind: &str, secret: &str, value: &[u8]) -> Result<(), StoreError> {
    let key = entry_key(kind, secret);
    store
        .put(&key, seal(secret, &key, value).into())
        .await
        .map(drop)
        .map_err(|e| store_error(&format!("storing a {kind}"), e))
}

async fn get(store: &kv::Store, kind: &str, secret: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let key = entry_key(kind, secret);
    let Some(sealed) = store
        .get(&key)
        .await
        .map_err(|e| store_error(&format!("reading a {kind}"), e))?
    else {
        return Ok(None);
    };
    Ok(open(secret, &key, &sealed))
}

/// Seconds since the Unix epoch, for expiry times stored in records.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_secret_and_for_its_entry() {
        let key = entry_key("session", "cookie-a");
        assert!(key.starts_with("session.") && !key.contains("cookie-a"));
        assert_ne!(key, entry_key("session", "cookie-b"));
        assert_ne!(key, entry_key("login", "cookie-a"));
        let sealed = seal("cookie-a", &key, b"the reviewer's token");
        assert!(!sealed.windows(5).any(|w| w == b"token"), "sealed, not plain");
        assert_eq!(
            open("cookie-a", &key, &sealed).as_deref(),
            Some(&b"the reviewer's token"[..])
        );
        assert_eq!(open("cookie-b", &key, &sealed), None, "another secret");
        assert_eq!(
            open("cookie-a", &entry_key("session", "x"), &sealed),
            None,
            "moved to another entry"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(open("cookie-a", &key, &tampered), None);
        assert_eq!(open("cookie-a", &key, b"short"), None);
        assert_ne!(
            seal("cookie-a", &key, b"same"),
            seal("cookie-a", &key, b"same"),
            "fresh nonces"
        );
    }
}
