//! Cancel requests. A client cancels with the key the proxy gave it in
//! BackendKeyData, on a new connection, which in a fleet may reach any
//! proxy. The proxy that holds the session acts on it: a held statement is
//! cancelled (its request becomes ApprovalCancelled, the client gets 57014);
//! a statement running upstream is cancelled there with the upstream's own
//! key, which the client never sees.
//!
//! A proxy that does not know the key passes it on over NATS (core, not the
//! event log) to every proxy, without the secret in it: the message carries
//! the process id, a time, a nonce and an HMAC-SHA256, under the fleet's
//! cancel key (`proxy.cancel_key_env`), of those and the secret. Only the
//! proxy holding a session with that process id and secret can match it, a
//! listener on NATS without the key learns nothing it can use (with the
//! key, which every proxy holds, the 32-bit secret could be searched for
//! offline), a forged message (no key) matches nothing, and a replay is
//! refused (its nonce was seen, or its time is out of the window). Without a cancel key a proxy neither passes
//! cancels on nor takes them from NATS. A wrong secret does nothing, as in
//! PostgreSQL.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Subject prefix for cancels passed between proxies (outside the event
/// log's `airlock.v1.>`: cancels are signals, not records).
pub const CANCEL_SUBJECT: &str = "airlock.cancel.v2";

/// How far a passed-on cancel's time may be from this proxy's clock.
const WINDOW: Duration = Duration::from_secs(30);

/// The shortest cancel key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// Version byte, process id, milliseconds since the epoch, nonce, HMAC.
const MESSAGE_BYTES: usize = 1 + 4 + 8 + 16 + 32;
const VERSION: u8 = 2;

/// What a session registers so it can be cancelled.
#[derive(Debug, Clone)]
pub struct Cancellable {
    /// Set while a statement is held awaiting a decision.
    pub holding: Arc<AtomicBool>,
    /// Cancels the held statement.
    pub cancel_hold: mpsc::Sender<()>,
    pub upstream_addr: String,
    pub upstream_key: (i32, i32),
}

/// The fleet's cancel key (never printed).
#[derive(Clone)]
pub struct CancelKey(Arc<[u8]>);

impl std::fmt::Debug for CancelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CancelKey(..)")
    }
}

impl CancelKey {
    /// A key of at least [`MIN_KEY_BYTES`] bytes.
    pub fn new(bytes: &[u8]) -> Result<CancelKey, String> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!(
                "the cancel key is {} bytes; at least {MIN_KEY_BYTES} are needed \
                 (e.g. `openssl rand -base64 48`)",
                bytes.len()
            ));
        }
        Ok(CancelKey(bytes.into()))
    }

    /// The HMAC over everything a sealed cancel vouches for.
    fn mac(&self, pid: i32, secret: i32, millis: u64, nonce: &[u8; 16]) -> Hmac<Sha256> {
        // HMAC takes a key of any length; this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key");
        mac.update(b"airlock cancel v2");
        mac.update(&pid.to_be_bytes());
        mac.update(&secret.to_be_bytes());
        mac.update(&millis.to_be_bytes());
        mac.update(nonce);
        mac
    }

    fn tag(&self, pid: i32, secret: i32, millis: u64, nonce: &[u8; 16]) -> [u8; 32] {
        self.mac(pid, secret, millis, nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// In constant time.
    fn verify(&self, pid: i32, secret: i32, millis: u64, nonce: &[u8; 16], tag: &[u8]) -> bool {
        self.mac(pid, secret, millis, nonce).verify_slice(tag).is_ok()
    }

    /// The message passing on a cancel for (`pid`, `secret`) at `now`.
    fn seal(&self, pid: i32, secret: i32, now: SystemTime) -> Vec<u8> {
        let millis = millis(now);
        let nonce: [u8; 16] = rand::random();
        let mut m = Vec::with_capacity(MESSAGE_BYTES);
        m.push(VERSION);
        m.extend_from_slice(&pid.to_be_bytes());
        m.extend_from_slice(&millis.to_be_bytes());
        m.extend_from_slice(&nonce);
        m.extend_from_slice(&self.tag(pid, secret, millis, &nonce));
        m
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A passed-on cancel, as read from NATS (not yet matched to a session).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sealed {
    pid: i32,
    millis: u64,
    nonce: [u8; 16],
    tag: [u8; 32],
}

impl Sealed {
    fn parse(m: &[u8]) -> Option<Sealed> {
        if m.len() != MESSAGE_BYTES || m[0] != VERSION {
            return None;
        }
        Some(Sealed {
            pid: i32::from_be_bytes(m[1..5].try_into().ok()?),
            millis: u64::from_be_bytes(m[5..13].try_into().ok()?),
            nonce: m[13..29].try_into().ok()?,
            tag: m[29..61].try_into().ok()?,
        })
    }
}

/// Nonces of passed-on cancels taken in the last window, so a replay is
/// refused. Bounded: past this many, the oldest are forgotten (they are
/// out of the window by then, or the fleet is under a flood of valid
/// cancels, which only key holders can make).
#[derive(Debug, Default)]
struct Seen {
    order: VecDeque<(u64, [u8; 16])>,
    nonces: std::collections::HashSet<[u8; 16]>,
}

const MAX_SEEN: usize = 100_000;

impl Seen {
    /// Records `nonce`; false if it was already seen.
    fn first_time(&mut self, nonce: [u8; 16], now_millis: u64) -> bool {
        let horizon = now_millis.saturating_sub(2 * WINDOW.as_millis() as u64);
        while let Some((at, old)) = self.order.front().copied() {
            if at >= horizon && self.order.len() < MAX_SEEN {
                break;
            }
            self.order.pop_front();
            self.nonces.remove(&old);
        }
        if !self.nonces.insert(nonce) {
            return false;
        }
        self.order.push_back((now_millis, nonce));
        true
    }
}

/// Why a passed-on cancel was not acted on (for the debug log and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Malformed,
    OutOfWindow,
    NoSession,
    Replayed,
}

/// Sessions of this proxy by the key their clients hold.
#[derive(Debug, Default)]
pub struct Cancels {
    /// Ordered by process id, so a passed-on cancel looks only at the
    /// sessions with its process id (one, as a rule), not at all of them.
    sessions: Mutex<BTreeMap<(i32, i32), Cancellable>>,
    nats: Mutex<Option<async_nats::Client>>,
    key: Option<CancelKey>,
    seen: Mutex<Seen>,
}

impl Cancels {
    /// Cancels for this proxy's sessions only: none passed on to the fleet
    /// or taken from it.
    pub fn new() -> Arc<Cancels> {
        Arc::new(Cancels::default())
    }

    /// Cancels passed between the proxies of a fleet that share `key`.
    pub fn with_key(key: CancelKey) -> Arc<Cancels> {
        Arc::new(Cancels {
            key: Some(key),
            ..Cancels::default()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(i32, i32), Cancellable>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, key: (i32, i32), c: Cancellable) {
        self.lock().insert(key, c);
    }

    pub fn unregister(&self, key: (i32, i32)) {
        self.lock().remove(&key);
    }

    /// Handles a CancelRequest that arrived on this proxy.
    pub async fn cancel(&self, process_id: i32, secret_key: i32) {
        if self.act(process_id, secret_key).await {
            return;
        }
        let Some(key) = &self.key else {
            return;
        };
        let nats = self.nats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(nats) = nats {
            let sealed = key.seal(process_id, secret_key, SystemTime::now());
            let subject = format!("{CANCEL_SUBJECT}.{process_id}");
            if let Err(e) = nats.publish(subject, sealed.into()).await {
                tracing::warn!(error = %e, "could not pass a cancel request to the fleet");
            }
        }
    }

    /// Acts on a cancel for a session of this proxy; false if none matches.
    async fn act(&self, process_id: i32, secret_key: i32) -> bool {
        let Some(c) = self.lock().get(&(process_id, secret_key)).cloned() else {
            return false;
        };
        act_on(c).await;
        true
    }

    /// The first session with process id `pid` whose secret `matches`,
    /// looking only at the sessions with that process id.
    fn with_process_id(&self, pid: i32, mut matches: impl FnMut(i32, i32) -> bool) -> Option<Cancellable> {
        self.lock()
            .range((pid, i32::MIN)..=(pid, i32::MAX))
            .find(|((p, secret), _)| matches(*p, *secret))
            .map(|(_, c)| c.clone())
    }

    /// The session a passed-on cancel names, if it names one of this
    /// proxy's and is neither stale nor replayed.
    fn open(&self, message: &[u8], now: SystemTime) -> Result<Cancellable, Refused> {
        let key = self.key.as_ref().ok_or(Refused::NoSession)?;
        let m = Sealed::parse(message).ok_or(Refused::Malformed)?;
        let now_millis = millis(now);
        if now_millis.abs_diff(m.millis) > WINDOW.as_millis() as u64 {
            return Err(Refused::OutOfWindow);
        }
        // Process ids are unique on a proxy, and random across the fleet:
        // at most a few sessions share one, and only the one whose secret
        // matches the tag is cancelled.
        let found = self
            .with_process_id(m.pid, |pid, secret| {
                key.verify(pid, secret, m.millis, &m.nonce, &m.tag)
            })
            .ok_or(Refused::NoSession)?;
        if !self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first_time(m.nonce, now_millis)
        {
            return Err(Refused::Replayed);
        }
        Ok(found)
    }

    /// Listens for cancels passed on by other proxies (with a cancel key;
    /// without one, there is nothing to listen for).
    pub async fn listen(self: Arc<Self>, nats: async_nats::Client) {
        if self.key.is_none() {
            return;
        }
        *self.nats.lock().unwrap_or_else(|p| p.into_inner()) = Some(nats.clone());
        let mut sub = match nats.subscribe(format!("{CANCEL_SUBJECT}.*")).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot receive cancel requests from other proxies");
                return;
            }
        };
        while let Some(msg) = sub.next().await {
            match self.open(&msg.payload, SystemTime::now()) {
                // Each on its own task: a relay waits for its upstream, and
                // one slow upstream must not delay the fleet's other cancels.
                Ok(c) => {
                    tokio::spawn(act_on(c));
                }
                Err(Refused::NoSession) => {}
                Err(why) => tracing::debug!(reason = ?why, "a passed-on cancel was refused"),
            }
        }
    }
}

/// Cancels what the session is doing: the held statement, or the query
/// running upstream.
async fn act_on(c: Cancellable) {
    if c.holding.load(Ordering::Acquire) {
        let _ = c.cancel_hold.try_send(());
    } else {
        relay(&c.upstream_addr, c.upstream_key).await;
    }
}

/// Sends PostgreSQL a CancelRequest for the upstream session.
pub async fn relay(addr: &str, (pid, key): (i32, i32)) {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await
    else {
        tracing::warn!(%addr, "cannot reach the upstream to cancel a query");
        return;
    };
    let mut packet = Vec::with_capacity(16);
    packet.extend_from_slice(&16i32.to_be_bytes());
    packet.extend_from_slice(&crate::codec::CANCEL_REQUEST_CODE.to_be_bytes());
    packet.extend_from_slice(&pid.to_be_bytes());
    packet.extend_from_slice(&key.to_be_bytes());
    if s.write_all(&packet).await.is_err() {
        return;
    }
    // PostgreSQL closes the connection once it has passed the request on
    // to the backend; libpq waits for that, and so does the proxy before it
    // closes the client's cancel connection: a client that then sends its
    // next statement does not have that one cancelled instead.
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> (Cancellable, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel(1);
        let c = Cancellable {
            holding: Arc::new(AtomicBool::new(true)),
            cancel_hold: tx,
            upstream_addr: "127.0.0.1:1".into(),
            upstream_key: (0, 0),
        };
        (c, rx)
    }

    fn key(b: u8) -> CancelKey {
        CancelKey::new(&[b; 32]).expect("32 bytes")
    }

    #[test]
    fn a_short_key_is_refused() {
        let e = CancelKey::new(&[1; 31]).expect_err("too short");
        assert!(e.contains("at least 32"), "{e}");
    }

    #[test]
    fn a_sealed_cancel_opens_only_for_the_session_it_names_and_only_once() {
        let fleet = Cancels::with_key(key(7));
        let (c, _rx) = session();
        fleet.register((42, 1234), c);
        let now = SystemTime::now();
        let sealed = key(7).seal(42, 1234, now);
        // The secret is not in the message.
        assert!(!sealed.windows(4).any(|w| w == 1234i32.to_be_bytes()));
        assert!(fleet.open(&sealed, now).is_ok());
        assert_eq!(fleet.open(&sealed, now).err(), Some(Refused::Replayed));
        // Another session's secret, another key, or no key match nothing.
        let wrong_secret = key(7).seal(42, 1235, now);
        assert_eq!(fleet.open(&wrong_secret, now).err(), Some(Refused::NoSession));
        let forged = key(8).seal(42, 1234, now);
        assert_eq!(fleet.open(&forged, now).err(), Some(Refused::NoSession));
        let keyless = Cancels::new();
        let (c, _rx2) = session();
        keyless.register((42, 1234), c);
        assert_eq!(
            keyless.open(&key(7).seal(42, 1234, now), now).err(),
            Some(Refused::NoSession)
        );
    }

    #[test]
    fn a_stale_or_malformed_cancel_is_refused() {
        let fleet = Cancels::with_key(key(7));
        let (c, _rx) = session();
        fleet.register((42, 1234), c);
        let now = SystemTime::now();
        let old = key(7).seal(42, 1234, now - Duration::from_secs(31));
        assert_eq!(fleet.open(&old, now).err(), Some(Refused::OutOfWindow));
        let future = key(7).seal(42, 1234, now + Duration::from_secs(31));
        assert_eq!(fleet.open(&future, now).err(), Some(Refused::OutOfWindow));
        // The old format: process id and secret in clear.
        let mut clear = 42i32.to_be_bytes().to_vec();
        clear.extend_from_slice(&1234i32.to_be_bytes());
        assert_eq!(fleet.open(&clear, now).err(), Some(Refused::Malformed));
        // A tampered time breaks the tag.
        let mut tampered = key(7).seal(42, 1234, now);
        tampered[12] ^= 1;
        assert_eq!(fleet.open(&tampered, now).err(), Some(Refused::NoSession));
    }

    /// Review finding: each passed-on cancel was checked against every
    /// session of the proxy, under the lock logins take.
    #[test]
    fn a_passed_on_cancel_looks_only_at_sessions_with_its_process_id() {
        let fleet = Cancels::with_key(key(7));
        let mut receivers = Vec::new();
        for pid in 0..10_000 {
            let (c, rx) = session();
            receivers.push(rx);
            fleet.register((pid, pid ^ 0x5a5a), c);
        }
        // Sessions at the bounds of the range, and one process id with two.
        for (pid, secret) in [(42, i32::MIN), (42, i32::MAX), (43, i32::MIN)] {
            let (c, rx) = session();
            receivers.push(rx);
            fleet.register((pid, secret), c);
        }
        let mut looked_at = Vec::new();
        let found = fleet.with_process_id(42, |pid, secret| {
            looked_at.push((pid, secret));
            false
        });
        assert!(found.is_none());
        looked_at.sort();
        assert_eq!(looked_at, [(42, i32::MIN), (42, 42 ^ 0x5a5a), (42, i32::MAX)]);
        let now = SystemTime::now();
        assert!(fleet.open(&key(7).seal(42, 42 ^ 0x5a5a, now), now).is_ok());
        assert_eq!(
            fleet.open(&key(7).seal(20_000, 1, now), now).err(),
            Some(Refused::NoSession)
        );
    }

    #[test]
    fn seen_nonces_are_forgotten_after_the_window() {
        let mut seen = Seen::default();
        let t = 1_000_000_000u64;
        assert!(seen.first_time([1; 16], t));
        assert!(!seen.first_time([1; 16], t + 1_000));
        assert!(seen.first_time([2; 16], t + 61_000));
        assert_eq!(seen.order.len(), 1, "the old nonce is gone");
    }
}
