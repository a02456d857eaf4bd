//! Which proxy processes are alive, as the control plane can tell: a run
//! of a proxy (its id and the instance it made at start) is alive while
//! some replica holds an `Attach` stream from it.
//!
//! Each replica knows its own streams, and tells the others every
//! [`ANNOUNCE_EVERY`] on a core NATS subject outside the log
//! ([`SUBJECT`]): liveness is not a fact worth keeping. A run no replica
//! has held for `control.proxy_lost_after` is *lost*: its sessions are
//! closed in the log and its pending requests cancelled (`act::reconcile`),
//! so no reviewer approves a statement that nobody waits on and no session
//! of a crashed proxy stays open for ever.
//!
//! Only a replica that has heard the others for that long judges: after
//! its start, and after every reconnect to NATS (announcements sent while
//! it was away were missed, and an outage of the whole cluster must not
//! look like every proxy dying). Being wrong one way (a live proxy taken
//! for lost) fails closed: its held statements are refused and its
//! sessions end. Being wrong the other way only delays the cleanup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_eventlog::EventLog;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Core NATS subject of the replicas' announcements (outside the stream's
/// `airlock.v1.>`: nothing here is recorded).
pub const SUBJECT: &str = "airlock.control.presence";

/// How often a replica announces the runs attached to it.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// Announcements larger than this are ignored (a replica with thousands of
/// proxies announces well under it).
const MAX_ANNOUNCEMENT: usize = 4 * 1024 * 1024;

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
    runs: Vec<Run>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Runs attached here, with how many streams each has (a reconnect
    /// may briefly overlap the stream it replaces).
    local: HashMap<Run, usize>,
    /// When each run was last attached here or announced by a replica.
    seen: HashMap<Run, Instant>,
    /// Since when announcements have been heard without a gap.
    watching_since: Option<Instant>,
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

impl Presence {
    pub fn new(lost_after: Duration) -> Arc<Presence> {
        Arc::new(Presence {
            lost_after,
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stream from `run` is attached here until the guard drops.
    pub fn attach(self: &Arc<Presence>, run: Run) -> Attached {
        let mut inner = self.lock();
        *inner.local.entry(run.clone()).or_default() += 1;
        inner.seen.insert(run.clone(), Instant::now());
        drop(inner);
        Attached {
            presence: self.clone(),
            run,
        }
    }

    /// Announcements are heard from now on, after a gap (start, reconnect).
    pub fn watching(&self, now: Instant) {
        self.lock().watching_since = Some(now);
    }

    /// Announcements may be missed (the NATS connection is down).
    pub fn not_watching(&self) {
        self.lock().watching_since = None;
    }

    fn heard(&self, runs: Vec<Run>, now: Instant) {
        let mut inner = self.lock();
        for run in runs {
            inner.seen.insert(run, now);
        }
        // Forget runs long gone, so the map stays as large as the fleet.
        let forget = self.lost_after * 10;
        inner.seen.retain(|_, at| now.duration_since(*at) < forget);
    }

    fn local_runs(&self) -> Vec<Run> {
        self.lock().local.keys().cloned().collect()
    }

    /// Whether `proxy`'s run `instance` is lost: attached nowhere for
    /// `lost_after`, as judged by a replica that has been listening at
    /// least that long. Never true while this replica may have missed news.
    pub fn lost(&self, proxy: &str, instance: &str, now: Instant) -> bool {
        let inner = self.lock();
        let Some(since) = inner.watching_since else {
            return false;
        };
        if now.duration_since(since) < self.lost_after {
            return false;
        }
        let run = Run {
            proxy: proxy.to_owned(),
            instance: instance.to_owned(),
        };
        if inner.local.contains_key(&run) {
            return false;
        }
        match inner.seen.get(&run) {
            Some(at) => now.duration_since(*at) >= self.lost_after,
            None => true,
        }
    }

    /// Whether no run of `proxy` at all has been alive for `lost_after`
    /// (for a request whose session the log does not show).
    pub fn proxy_lost(&self, proxy: &str, now: Instant) -> bool {
        let inner = self.lock();
        let Some(since) = inner.watching_since else {
            return false;
        };
        if now.duration_since(since) < self.lost_after {
            return false;
        }
        !inner.local.keys().any(|r| r.proxy == proxy)
            && !inner
                .seen
                .iter()
                .any(|(r, at)| r.proxy == proxy && now.duration_since(*at) < self.lost_after)
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

/// Announces this replica's runs and hears the others', until dropped.
/// Resubscribes after errors; every reconnect to NATS restarts the
/// listening period.
pub async fn run(presence: Arc<Presence>, log: EventLog, replica: String) {
    let mut connects = log.connects();
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
        presence.watching(Instant::now());
        let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = heard.next() => {
                    let Some(message) = message else { break };
                    if message.payload.len() > MAX_ANNOUNCEMENT {
                        continue;
                    }
                    match serde_json::from_slice::<Announcement>(&message.payload) {
                        Ok(a) => presence.heard(a.runs, Instant::now()),
                        Err(e) => tracing::debug!(error = %e, "ignoring a malformed presence announcement"),
                    }
                }
                _ = tick.tick() => {
                    let a = Announcement { replica: replica.clone(), runs: presence.local_runs() };
                    if let Ok(bytes) = serde_json::to_vec(&a)
                        && let Err(e) = log.client().publish(SUBJECT, bytes.into()).await
                    {
                        tracing::debug!(error = %e, "presence announcement not sent");
                    }
                }
                changed = connects.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Reconnected: whatever was announced meanwhile is
                    // lost; listen a full period before judging again.
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

    #[tokio::test(start_paused = true)]
    async fn nothing_is_lost_before_a_full_period_of_listening() {
        let p = Presence::new(LOST);
        let t0 = Instant::now();
        assert!(!p.lost("p1", "a", t0), "not listening yet");
        p.watching(t0);
        assert!(!p.lost("p1", "a", t0 + LOST / 2));
        assert!(p.lost("p1", "a", t0 + LOST), "never heard of for a whole period");
        assert!(p.proxy_lost("p1", t0 + LOST));
        p.not_watching();
        assert!(!p.lost("p1", "a", t0 + LOST * 2), "may have missed news");
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_attached_here_or_announced_elsewhere_is_alive() {
        let p = Presence::new(LOST);
        let t0 = Instant::now();
        p.watching(t0 - LOST);
        let here = p.attach(run("p1", "a"));
        assert!(!p.lost("p1", "a", t0 + LOST * 3), "attached here");
        p.heard(vec![run("p2", "b")], t0);
        assert!(!p.lost("p2", "b", t0 + LOST / 2));
        assert!(p.lost("p2", "b", t0 + LOST), "announcements stopped");
        // A restarted proxy: the new run is alive, the old one is not.
        assert!(p.lost("p1", "old", t0));
        assert!(!p.proxy_lost("p1", t0));
        drop(here);
        let gone = Instant::now();
        assert!(!p.lost("p1", "a", gone + LOST / 2), "detached only just now");
        assert!(p.lost("p1", "a", gone + LOST));
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_streams_of_one_run_count_until_the_last_ends() {
        let p = Presence::new(LOST);
        let t0 = Instant::now();
        p.watching(t0 - LOST);
        let first = p.attach(run("p1", "a"));
        let second = p.attach(run("p1", "a"));
        drop(first);
        assert!(!p.lost("p1", "a", t0 + LOST * 2), "the second stream is still up");
        drop(second);
        assert_eq!(p.local_runs(), Vec::<Run>::new());
    }
}
