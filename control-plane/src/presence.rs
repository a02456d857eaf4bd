//! Which proxy processes are alive, as the control plane can tell: a run
//! of a proxy (its id and the instance it made at start) is alive while
//! some replica holds an `Attach` stream from it.
//!
//! Each replica knows its own streams, and tells the others every
//! [`ANNOUNCE_EVERY`] on a core NATS subject outside the log ([`SUBJECT`]),
//! signed with its control key and numbered, so a copy of an old
//! announcement (NATS lets any client have the server deliver a stored
//! message to a subject of its choosing) is refused. A run no replica has
//! held for `control.proxy_lost_after` is *lost*: its sessions are closed in
//! the log and its pending requests cancelled (`act::reconcile`), so no
//! reviewer approves a statement that nobody waits on and no session of a
//! crashed proxy stays open for ever.
//!
//! A replica judges only while it has evidence that it hears the others:
//! it is connected to NATS, has been for a whole `proxy_lost_after`, and
//! heard its own last announcement come back. After a start, a reconnect,
//! or with the subject denied by NATS permissions, it judges nothing. A run
//! it has never heard of (a proxy just started, attached to another
//! replica) counts from when this replica first asked about it. Being wrong
//! one way (a live proxy taken for lost) fails closed: its held statements
//! are refused and its sessions end. Being wrong the other way only delays
//! the cleanup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_eventlog::EventLog;
use airlock_eventlog::signing::{Role, Signer, Trust};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Core NATS subject of the replicas' announcements (outside the stream's
/// `airlock.v1.>`: nothing here is recorded).
pub const SUBJECT: &str = "airlock.control.presence";

/// How often a replica announces the runs attached to it.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// The shortest `proxy_lost_after` that leaves room for announcements to
/// arrive: a shorter one would take live proxies for lost.
pub const LOST_AFTER_MIN: Duration = Duration::from_secs(20);

/// The longest `proxy_lost_after` taken (a day).
pub const LOST_AFTER_MAX: Duration = Duration::from_secs(24 * 3600);

/// A replica judges only if its own announcement came back this recently.
const ECHO_WITHIN: Duration = Duration::from_secs(5);

/// Runs per announcement message, to stay far below NATS's payload limit.
const RUNS_PER_MESSAGE: usize = 1000;

/// Announcements larger than this are ignored.
const MAX_ANNOUNCEMENT: usize = 1024 * 1024;

/// Streams one proxy id may hold on one replica at once (a reconnect may
/// briefly overlap the stream it replaces).
pub const RUNS_PER_PROXY: usize = 4;

/// What a replica's signature covers, before the announcement's bytes.
const DOMAIN: &[u8] = b"airlock.control.presence.v1\n";

/// One run of a proxy process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Run {
    pub proxy: String,
    /// Empty for proxies (and sessions) from before runs were told.
    pub instance: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    replica: String,
    /// This run of the replica (a ULID: later runs sort later) and the
    /// announcement's number within it: replays are refused.
    boot: String,
    counter: u64,
    runs: Vec<Run>,
}

/// An announcement as sent: its JSON, and the replica's signature over it.
#[derive(Debug, Serialize, Deserialize)]
struct Signed {
    body: String,
    #[serde(default)]
    key_id: String,
    #[serde(default)]
    signature: String,
}

#[derive(Debug, Default)]
struct Inner {
    /// Runs attached here, with how many streams each has.
    local: HashMap<Run, usize>,
    /// When each run was last attached here or announced by a replica.
    seen: HashMap<Run, Instant>,
    /// Runs asked about before ever being seen, and since when.
    noticed: HashMap<Run, Instant>,
    /// Since when this replica has been connected and listening.
    watching_since: Option<Instant>,
    /// When this replica last heard its own announcement.
    echo: Option<Instant>,
    /// The latest counter accepted from each replica run (boot), and
    /// when: a copy of an older announcement of a run is refused. Keyed by
    /// boot, not by replica id: two replicas sharing an id, or one
    /// restarted with its clock behind, are each heard.
    latest: HashMap<String, (u64, Instant)>,
}

/// The runs this replica knows to be alive. Shared by the `Attach`
/// streams, the announcer and `reconcile`.
#[derive(Debug)]
pub struct Presence {
    lost_after: Duration,
    inner: Mutex<Inner>,
}

/// An `Attach` stream's run, alive while this lives.
#[derive(Debug)]
pub struct Attached {
    presence: Arc<Presence>,
    run: Run,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut inner = self.presence.lock();
        inner.seen.insert(self.run.clone(), Instant::now());
        if let Some(n) = inner.local.get_mut(&self.run) {
            *n -= 1;
            if *n == 0 {
                inner.local.remove(&self.run);
            }
        }
    }
}

/// Why a Hello's run is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunRefused {
    #[error("Hello's instance must be a ULID (26 characters) or empty")]
    BadInstance,
    #[error("proxy {0} already holds {RUNS_PER_PROXY} Attach streams on this replica")]
    TooMany(String),
}

impl Presence {
    /// `lost_after` zero: never judge any proxy lost.
    pub fn new(lost_after: Duration) -> Arc<Presence> {
        Arc::new(Presence {
            lost_after,
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stream from `run` is attached here until the guard drops. A run's
    /// instance must be a ULID (or empty, from an older proxy), and one
    /// proxy id holds a few streams at most: what a proxy announces is
    /// repeated to every replica, and must stay small.
    pub fn attach(self: &Arc<Presence>, run: Run) -> Result<Attached, RunRefused> {
        if !run.instance.is_empty() && ulid::Ulid::from_string(&run.instance).is_err() {
            return Err(RunRefused::BadInstance);
        }
        let mut inner = self.lock();
        let streams: usize = inner
            .local
            .iter()
            .filter(|(r, _)| r.proxy == run.proxy)
            .map(|(_, n)| *n)
            .sum();
        if streams >= RUNS_PER_PROXY {
            return Err(RunRefused::TooMany(run.proxy));
        }
        *inner.local.entry(run.clone()).or_default() += 1;
        inner.seen.insert(run.clone(), Instant::now());
        drop(inner);
        Ok(Attached {
            presence: self.clone(),
            run,
        })
    }

    /// Connected and listening from now on, after a gap (start, reconnect).
    pub fn watching(&self, now: Instant) {
        let mut inner = self.lock();
        inner.watching_since = Some(now);
        inner.echo = None;
    }

    /// Announcements may be missed (the NATS connection is down).
    pub fn not_watching(&self) {
        let mut inner = self.lock();
        inner.watching_since = None;
        inner.echo = None;
    }

    /// Whether this replica may judge at `now`: listening for a whole
    /// period, and hearing itself.
    fn judging(&self, inner: &Inner, now: Instant) -> bool {
        if self.lost_after.is_zero() {
            return false;
        }
        let listening = inner
            .watching_since
            .is_some_and(|since| now.saturating_duration_since(since) >= self.lost_after);
        let hears_itself = inner
            .echo
            .is_some_and(|at| now.saturating_duration_since(at) <= ECHO_WITHIN);
        listening && hears_itself
    }

    /// Takes in an announcement of `replica` (its signature already
    /// checked). Old or replayed ones are ignored.
    fn heard(&self, a: Announcement, own: Option<&str>, now: Instant) {
        let mut inner = self.lock();
        if inner
            .latest
            .get(&a.boot)
            .is_some_and(|(counter, _)| a.counter <= *counter)
        {
            return;
        }
        inner.latest.insert(a.boot.clone(), (a.counter, now));
        if own == Some(a.boot.as_str()) {
            // Its own voice back after a silence: whatever the others said
            // meanwhile may be lost too, so listening starts again.
            let silent = inner
                .echo
                .is_none_or(|at| now.saturating_duration_since(at) > ECHO_WITHIN);
            if silent && let Some(since) = inner.watching_since.as_mut() {
                *since = (*since).max(now);
            }
            inner.echo = Some(now);
        }
        for run in a.runs {
            inner.noticed.remove(&run);
            inner.seen.insert(run, now);
        }
    }

    /// Forgets runs long gone, so the maps stay as large as the fleet.
    fn forget_old(&self, now: Instant) {
        let forget = self.lost_after.saturating_mul(10).max(Duration::from_secs(600));
        let mut inner = self.lock();
        inner
            .seen
            .retain(|_, at| now.saturating_duration_since(*at) < forget);
        inner
            .noticed
            .retain(|_, at| now.saturating_duration_since(*at) < forget);
        inner
            .latest
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < forget);
    }

    fn local_runs(&self) -> Vec<Run> {
        self.lock().local.keys().cloned().collect()
    }

    /// Whether `proxy`'s run `instance` is lost: attached nowhere for
    /// `lost_after`, as judged by a replica that hears the others. A run
    /// never seen counts from the first time it is asked about.
    pub fn lost(&self, proxy: &str, instance: &str, now: Instant) -> bool {
        let mut inner = self.lock();
        if !self.judging(&inner, now) {
            return false;
        }
        let run = Run {
            proxy: proxy.to_owned(),
            instance: instance.to_owned(),
        };
        if inner.local.contains_key(&run) {
            return false;
        }
        let since = match inner.seen.get(&run) {
            Some(at) => *at,
            None => *inner.noticed.entry(run).or_insert(now),
        };
        now.saturating_duration_since(since) >= self.lost_after
    }

    /// Whether no run of `proxy` at all has been alive for `lost_after`
    /// (for a request whose session the log does not show).
    pub fn proxy_lost(&self, proxy: &str, now: Instant) -> bool {
        let mut inner = self.lock();
        if !self.judging(&inner, now) {
            return false;
        }
        if inner.local.keys().any(|r| r.proxy == proxy) {
            return false;
        }
        let last = inner
            .seen
            .iter()
            .filter(|(r, _)| r.proxy == proxy)
            .map(|(_, at)| *at)
            .max();
        let since = match last {
            Some(at) => at,
            None => *inner
                .noticed
                .entry(Run {
                    proxy: proxy.to_owned(),
                    instance: "*".to_owned(),
                })
                .or_insert(now),
        };
        now.saturating_duration_since(since) >= self.lost_after
    }

    /// How long a run goes unheard before it is lost (zero: never).
    pub fn lost_after(&self) -> Duration {
        self.lost_after
    }
}

/// [`Presence`] at one instant, as the pure rules of `decide` ask it.
#[derive(Debug)]
pub struct At<'a>(pub &'a Presence, pub Instant);

impl crate::decide::Liveness for At<'_> {
    fn lost(&self, proxy: &str, instance: &str) -> bool {
        self.0.lost(proxy, instance, self.1)
    }

    fn proxy_lost(&self, proxy: &str) -> bool {
        self.0.proxy_lost(proxy, self.1)
    }

    fn lost_after(&self) -> Duration {
        self.0.lost_after
    }
}

fn sign(body: String, signer: Option<&Signer>) -> Signed {
    match signer {
        Some(s) => {
            let message = [DOMAIN, body.as_bytes()].concat();
            Signed {
                key_id: s.key_id().to_owned(),
                signature: hex::encode(s.sign(&message).to_bytes()),
                body,
            }
        }
        None => Signed {
            body,
            key_id: String::new(),
            signature: String::new(),
        },
    }
}

/// The announcement in `bytes`, if it is well formed and, where this
/// replica checks writers (`trust`), signed by a control key it trusts.
fn open(bytes: &[u8], trust: Option<&Trust>) -> Option<Announcement> {
    if bytes.len() > MAX_ANNOUNCEMENT {
        return None;
    }
    let signed: Signed = serde_json::from_slice(bytes).ok()?;
    if let Some(trust) = trust {
        // A key id the trust list does not name costs no verification.
        if !trust
            .keys()
            .iter()
            .any(|k| k.role == Role::Control && k.key_id == signed.key_id)
        {
            return None;
        }
        let signature = hex::decode(&signed.signature).ok()?;
        let message = [DOMAIN, signed.body.as_bytes()].concat();
        trust
            .check_detached(Role::Control, &signed.key_id, &message, &signature)
            .ok()?;
    }
    serde_json::from_str(&signed.body).ok()
}

/// Announces this replica's runs and hears the others', until dropped.
/// Listening restarts (and judging waits a whole period) whenever the
/// connection to NATS drops.
pub async fn run(presence: Arc<Presence>, log: EventLog, replica: String) {
    let boot = ulid::Ulid::new().to_string();
    let mut counter = 0u64;
    let mut connects = log.connects();
    let mut slow = log.slow_consumers();
    let mut denied_warned = false;
    let mut refused_warned: Option<Instant> = None;
    loop {
        presence.not_watching();
        let mut heard = match log.client().subscribe(SUBJECT).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hear the other replicas' proxies; retrying");
                tokio::time::sleep(ANNOUNCE_EVERY).await;
                continue;
            }
        };
        connects.borrow_and_update();
        let mut connected = log.connected();
        if connected {
            presence.watching(Instant::now());
        }
        let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = heard.next() => {
                    let Some(message) = message else { break };
                    match open(&message.payload, log.trust()) {
                        Some(a) => presence.heard(a, Some(&boot), Instant::now()),
                        None => {
                            // Another replica signing with a key this one
                            // does not trust would go unheard, and its
                            // proxies be taken for gone: say so, now and
                            // then.
                            if refused_warned.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                                refused_warned = Some(Instant::now());
                                tracing::warn!(subject = SUBJECT, "ignoring a presence announcement that is malformed or not signed by a trusted control key (is every replica's key in signing.trust?)");
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    match (connected, log.connected()) {
                        (true, false) => presence.not_watching(),
                        (false, true) => presence.watching(now),
                        _ => {}
                    }
                    connected = log.connected();
                    presence.forget_old(now);
                    let runs = presence.local_runs();
                    let chunks: Vec<&[Run]> = if runs.is_empty() { vec![&[]] } else { runs.chunks(RUNS_PER_MESSAGE).collect() };
                    for chunk in chunks {
                        counter += 1;
                        let a = Announcement { replica: replica.clone(), boot: boot.clone(), counter, runs: chunk.to_vec() };
                        let Ok(body) = serde_json::to_string(&a) else { continue };
                        let Ok(bytes) = serde_json::to_vec(&sign(body, log.signer())) else { continue };
                        if let Err(e) = log.client().publish(SUBJECT, bytes.into()).await {
                            tracing::warn!(error = %e, "presence announcement not sent");
                        }
                    }
                    let echo_missing = {
                        let inner = presence.lock();
                        connected && inner.watching_since.is_some_and(|s| now.saturating_duration_since(s) > ECHO_WITHIN * 2) && inner.echo.is_none_or(|e| now.saturating_duration_since(e) > ECHO_WITHIN)
                    };
                    if echo_missing && !denied_warned {
                        denied_warned = true;
                        tracing::warn!(subject = SUBJECT, "this replica does not hear its own presence announcements (check the control user's NATS permissions for the subject): it will judge no proxy gone");
                    }
                }
                dropped = slow.changed() => {
                    if dropped.is_err() {
                        return;
                    }
                    // The client dropped messages of a subscription that
                    // fell behind (a flood on the subject): announcements
                    // may be among them.
                    tracing::warn!(subject = SUBJECT, "presence announcements may have been dropped (slow consumer): listening a whole period again before judging");
                    presence.watching(Instant::now());
                }
                changed = connects.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Reconnected: whatever was announced meanwhile is
                    // lost; listen a full period before judging again.
                    connected = true;
                    presence.watching(Instant::now());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOST: Duration = Duration::from_secs(30);

    fn run(proxy: &str, instance: &str) -> Run {
        Run {
            proxy: proxy.into(),
            instance: instance.into(),
        }
    }

    fn announcement(replica: &str, boot: &str, counter: u64, runs: Vec<Run>) -> Announcement {
        Announcement {
            replica: replica.into(),
            boot: boot.into(),
            counter,
            runs,
        }
    }

    /// This replica heard its own announcement at `at`.
    fn echo(p: &Presence, at: Instant) {
        p.lock().echo = Some(at);
    }

    /// A presence that has listened a whole period and hears itself.
    fn listening(t0: Instant) -> Arc<Presence> {
        let p = Presence::new(LOST);
        p.watching(t0 - LOST);
        echo(&p, t0);
        p
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_lost_without_a_full_period_of_listening_and_its_own_echo() {
        let p = Presence::new(LOST);
        let t0 = Instant::now();
        assert!(!p.lost("p1", "", t0), "not listening yet");
        p.watching(t0);
        echo(&p, t0 + LOST / 2);
        assert!(!p.lost("p1", "", t0 + LOST / 2), "listening for half a period");
        echo(&p, t0 + LOST);
        assert!(!p.lost("p1", "", t0 + LOST), "first asked about now");
        echo(&p, t0 + LOST * 2);
        assert!(
            p.lost("p1", "", t0 + LOST * 2),
            "unheard for a whole period since first asked"
        );
        // Without its own echo (the subject denied, the connection gone
        // quiet) a replica judges nothing.
        assert!(!p.lost("p1", "", t0 + LOST * 2 + ECHO_WITHIN * 2));
        p.not_watching();
        assert!(!p.lost("p1", "", t0 + LOST * 2), "may have missed news");
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_attached_here_or_announced_elsewhere_is_alive() {
        let t0 = Instant::now();
        let p = listening(t0);
        let here = p.attach(run("p1", "")).expect("attach");
        assert!(!p.lost("p1", "", t0), "attached here");
        let b = "01J0000000000000000000000B";
        p.heard(
            announcement("other", "B1", 1, vec![run("p2", b)]),
            Some("BOOT"),
            t0,
        );
        echo(&p, t0 + LOST);
        assert!(p.lost("p2", b, t0 + LOST), "announcements of it stopped");
        // A replay of the announcement that named it changes nothing.
        p.heard(
            announcement("other", "B1", 1, vec![run("p2", b)]),
            Some("BOOT"),
            t0 + LOST,
        );
        assert!(p.lost("p2", b, t0 + LOST));
        // A restarted proxy: the new run is alive, the old one is not.
        assert!(!p.proxy_lost("p1", t0 + LOST));
        drop(here);
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_never_heard_of_is_not_lost_at_once() {
        let t0 = Instant::now();
        let p = listening(t0);
        let fresh = "01J0000000000000000000000F";
        assert!(!p.lost("p9", fresh, t0), "first asked now");
        // Its replica announces it two seconds later: alive.
        p.heard(
            announcement("other", "B1", 1, vec![run("p9", fresh)]),
            Some("BOOT"),
            t0 + ANNOUNCE_EVERY,
        );
        echo(&p, t0 + LOST);
        assert!(
            !p.lost("p9", fresh, t0 + LOST),
            "heard {ANNOUNCE_EVERY:?} after first asked"
        );
    }

    /// Second review: replay protection keyed by replica id silenced for
    /// ever a replica sharing its id with another (or restarted with its
    /// clock behind: an older boot), and its proxies were taken for gone.
    #[tokio::test(start_paused = true)]
    async fn two_runs_of_one_replica_id_are_both_heard() {
        let t0 = Instant::now();
        let p = listening(t0);
        let (old, new) = ("01J0000000000000000000000A", "01J0000000000000000000000B");
        p.heard(
            announcement("control-1", new, 5, vec![run("p1", "")]),
            Some("BOOT"),
            t0,
        );
        p.heard(
            announcement("control-1", old, 9, vec![run("p2", "")]),
            Some("BOOT"),
            t0,
        );
        echo(&p, t0 + LOST);
        assert!(
            p.lost("p1", "", t0 + LOST) && p.lost("p2", "", t0 + LOST),
            "both were heard, then silent"
        );
        p.heard(
            announcement("control-1", old, 10, vec![run("p2", "")]),
            Some("BOOT"),
            t0 + LOST,
        );
        assert!(!p.lost("p2", "", t0 + LOST), "the older boot is still heard");
    }

    /// Second review: a replica connected all along but deaf for a while
    /// (its subscription silent) judged as soon as its own voice came
    /// back, before the others' next announcements.
    #[tokio::test(start_paused = true)]
    async fn its_own_voice_back_after_a_silence_restarts_listening() {
        let t0 = Instant::now();
        let p = Presence::new(LOST);
        p.watching(t0 - LOST * 3);
        p.heard(announcement("me", "BOOT", 1, vec![]), Some("BOOT"), t0 - LOST * 2);
        p.heard(
            announcement("other", "B1", 1, vec![run("p2", "")]),
            Some("BOOT"),
            t0 - LOST * 2,
        );
        // Deaf from then on; its own announcement comes back at t0.
        p.heard(announcement("me", "BOOT", 2, vec![]), Some("BOOT"), t0);
        assert!(!p.lost("p2", "", t0), "may have missed the others meanwhile");
        echo(&p, t0 + LOST);
        assert!(
            p.lost("p2", "", t0 + LOST),
            "a whole period heard since, without p2"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn runs_are_checked_and_bounded_per_proxy() {
        let p = Presence::new(LOST);
        assert_eq!(
            p.attach(run("p1", &"x".repeat(1 << 20))).err(),
            Some(RunRefused::BadInstance)
        );
        let ids = [
            "01J00000000000000000000001",
            "01J00000000000000000000002",
            "01J00000000000000000000003",
            "01J00000000000000000000004",
        ];
        let held: Vec<Attached> = ids
            .iter()
            .map(|i| p.attach(run("p1", i)).expect("attach"))
            .collect();
        assert!(matches!(
            p.attach(run("p1", "01J00000000000000000000005")),
            Err(RunRefused::TooMany(_))
        ));
        assert!(
            p.attach(run("p2", "")).is_ok(),
            "other proxies are not limited by p1"
        );
        drop(held);
        assert!(p.attach(run("p1", "01J00000000000000000000005")).is_ok());
    }

    #[test]
    fn announcements_must_be_signed_by_a_control_key_where_control_keys_are_trusted() {
        use airlock_eventlog::signing::TrustedKey;
        let control = Signer::generate();
        let proxy = Signer::generate();
        let trust = Trust::new(vec![
            TrustedKey::new(Role::Control, control.verifying_key()),
            TrustedKey::new(Role::Proxy, proxy.verifying_key()),
        ]);
        let body = serde_json::to_string(&announcement("r", "B", 1, vec![run("p", "")])).expect("json");
        let by = |s: Option<&Signer>| serde_json::to_vec(&sign(body.clone(), s)).expect("json");
        assert!(open(&by(Some(&control)), Some(&trust)).is_some());
        assert!(
            open(&by(Some(&proxy)), Some(&trust)).is_none(),
            "a proxy key announces nothing"
        );
        assert!(open(&by(None), Some(&trust)).is_none(), "unsigned");
        assert!(
            open(&by(None), None).is_some(),
            "a replica that trusts no keys takes it"
        );
        assert!(open(b"{not json", Some(&trust)).is_none());
        let mut tampered: Signed = serde_json::from_slice(&by(Some(&control))).expect("json");
        tampered.body = tampered.body.replace("\"p\"", "\"q\"");
        assert!(open(&serde_json::to_vec(&tampered).expect("json"), Some(&trust)).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_turns_judging_off() {
        let p = Presence::new(Duration::ZERO);
        let t0 = Instant::now();
        p.watching(t0 - LOST);
        echo(&p, t0);
        assert!(!p.lost("p1", "", t0 + LOST * 10));
        assert!(!p.proxy_lost("p1", t0 + LOST * 10));
    }
}
