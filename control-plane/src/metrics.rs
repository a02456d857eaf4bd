//! The control plane's Prometheus metrics, served on `control.metrics_listen`
//! (`GET /metrics`, OpenMetrics text 1.0.0, as the proxy and reviewer serve).
//!
//! Counters and histograms are bumped where things happen (a decision
//! appended, a snapshot stored); gauges that describe the replica (fold lag,
//! pending requests, snapshot age) are read from it when scraped, so they are
//! never stale. This module owns the names; it owns none of the state.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use airlock_eventlog::proto::event::Body;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::live::Live;

/// What `/metrics` serves.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How a request ended, for the outcomes a control-plane replica appends
/// (proxies append cancellations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Granted,
    Denied,
    Expired,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Granted, Outcome::Denied, Outcome::Expired];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::Denied => "denied",
            Outcome::Expired => "expired",
        }
    }

    /// The outcome an event body records, if it is one a replica appends.
    pub fn of(body: &Body) -> Option<Outcome> {
        match body {
            Body::ApprovalGranted(_) => Some(Outcome::Granted),
            Body::ApprovalDenied(_) => Some(Outcome::Denied),
            Body::ApprovalExpired(_) => Some(Outcome::Expired),
            Body::ApprovalCancelled(_)
            | Body::ApprovalRequested(_)
            | Body::ApprovalVoted(_)
            | Body::SessionOpened(_)
            | Body::StatementExecuted(_)
            | Body::StatementsExecuted(_)
            | Body::StatementRefused(_)
            | Body::SessionKillRequested(_)
            | Body::SessionClosed(_)
            | Body::PolicyLoaded(_)
            | Body::Checkpoint(_)
            | Body::GrantIssued(_)
            | Body::GrantUsed(_)
            | Body::GrantRevoked(_)
            | Body::GrantExpired(_)
            | Body::SlackLinked(_)
            | Body::SlackUnlinked(_) => None,
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

/// Why the fold refuses events: the signature checks (`Untrusted`), and
/// the fold's own (`live.rs`).
const REJECTED_REASONS: [&str; 11] = [
    "unsigned",
    "malformed",
    "unknown_key",
    "bad_signature",
    "wrong_role",
    "wrong_writer",
    "no_body",
    "undecodable",
    "replayed",
    "wrong_subject",
    "wrong_proxy",
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectedLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// The newest stored snapshot this replica knows of.
#[derive(Debug, Clone, Copy)]
struct SnapshotSeen {
    sequence: u64,
    /// When the last event it covers was stored in the log.
    covers_until: SystemTime,
}

/// One replica's metrics. Made with its [`Live`]; read with [`Metrics::encode`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    fold_lag: Gauge,
    log_reachable: Gauge,
    pending: Gauge,
    decisions: Family<OutcomeLabels, Counter>,
    break_glass: Counter,
    rejected: Family<RejectedLabels, Counter>,
    decide_seconds: Histogram,
    snapshot_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    snapshot_behind: Gauge,
    snapshot_save_seconds: Histogram,
    snapshot: Mutex<Option<SnapshotSeen>>,
    pending_expiry: Gauge<f64, std::sync::atomic::AtomicU64>,
    checkpoint_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    since_checkpoint: Gauge,
    /// The newest checkpoint folded: its own stream sequence and when it
    /// was stored.
    checkpoint: Mutex<Option<(u64, SystemTime)>>,
    /// With checkpoints configured here: when this replica started, the age
    /// reported until it folds a checkpoint (so one never written shows).
    checkpoints_since: Mutex<Option<SystemTime>>,
    /// Certificate reloads, applied or refused.
    pub reloads: airlock_reload::Reloads,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register(
            "airlock_control_build_info",
            "Always 1; the version label names the running build",
            build,
        );
        let m = Metrics {
            registry,
            fold_lag: Gauge::default(),
            log_reachable: Gauge::default(),
            pending: Gauge::default(),
            decisions: Family::default(),
            break_glass: Counter::default(),
            rejected: Family::default(),
            // 1 ms to ~16 s: a vote is an append or two and a fold.
            decide_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            snapshot_age: Gauge::default(),
            snapshot_behind: Gauge::default(),
            // 10 ms to ~80 s: encoding and storing the whole projection.
            snapshot_save_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            snapshot: Mutex::new(None),
            pending_expiry: Gauge::default(),
            checkpoint_age: Gauge::default(),
            since_checkpoint: Gauge::default(),
            checkpoint: Mutex::new(None),
            checkpoints_since: Mutex::new(None),
            reloads: airlock_reload::Reloads::new(),
        };
        // Every outcome and reason is a series from the start, at 0: an
        // alert on its increase sees the first one.
        for outcome in Outcome::ALL {
            drop(m.decisions.get_or_create(&OutcomeLabels { outcome }));
        }
        for reason in REJECTED_REASONS {
            drop(m.rejected.get_or_create(&RejectedLabels { reason }));
        }
        m.register_all()
    }

    fn register_all(mut self) -> Metrics {
        self.reloads
            .register(self.registry.sub_registry_with_prefix("airlock_control"));
        let r = &mut self.registry;
        r.register(
            "airlock_control_fold_lag_events",
            "Events in the log this replica has not folded yet (as of the last probe, once a second)",
            self.fold_lag.clone(),
        );
        r.register(
            "airlock_control_log_reachable",
            "1 while the event log answers this replica's probes, else 0",
            self.log_reachable.clone(),
        );
        r.register(
            "airlock_control_pending_requests",
            "Approval requests waiting for a decision",
            self.pending.clone(),
        );
        r.register(
            "airlock_control_pending_expiry_seconds",
            "Time until the first pending approval request expires undecided (NaN when none is pending)",
            self.pending_expiry.clone(),
        );
        r.register(
            "airlock_control_checkpoint_age_seconds",
            "Time since the newest checkpoint this replica folded was stored in the log; before the first, since this replica started if it appends checkpoints, else NaN",
            self.checkpoint_age.clone(),
        );
        r.register(
            "airlock_control_events_since_checkpoint",
            "Events folded after the newest checkpoint (all folded events when none)",
            self.since_checkpoint.clone(),
        );
        r.register(
            "airlock_control_decisions",
            "Request outcomes this replica appended to the log, by outcome",
            self.decisions.clone(),
        );
        r.register(
            "airlock_control_break_glass",
            "Break-glass approvals (a requester approving their own held statement) this replica appended",
            self.break_glass.clone(),
        );
        r.register(
            "airlock_control_events_rejected",
            "Events in the log this replica did not fold because no trusted writer signed them \
             (signing.trust), by reason: forged or misconfigured writers",
            self.rejected.clone(),
        );
        r.register(
            "airlock_control_decide_duration_seconds",
            "Time to judge a vote and append it and any outcome, until folded back (Decide calls past authentication)",
            self.decide_seconds.clone(),
        );
        r.register(
            "airlock_control_snapshot_age_seconds",
            "Time since the last event the newest stored snapshot covers (NaN when none is known)",
            self.snapshot_age.clone(),
        );
        r.register(
            "airlock_control_snapshot_behind_events",
            "Events folded since the newest stored snapshot: what a restart from it would fold",
            self.snapshot_behind.clone(),
        );
        r.register(
            "airlock_control_snapshot_save_duration_seconds",
            "Time to encode and store a snapshot",
            self.snapshot_save_seconds.clone(),
        );
        self
    }

    /// An outcome this replica appended.
    pub fn decided(&self, outcome: Outcome) {
        self.decisions.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// A break-glass approval was appended.
    pub fn broke_glass(&self) {
        self.break_glass.inc();
    }

    /// An event not folded: its writer is not trusted for it.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&RejectedLabels { reason }).inc();
    }

    pub fn observe_decide(&self, took: Duration) {
        self.decide_seconds.observe(took.as_secs_f64());
    }

    pub fn observe_snapshot_save(&self, took: Duration) {
        self.snapshot_save_seconds.observe(took.as_secs_f64());
    }

    /// The sequence of the newest snapshot this replica knows of, if any.
    pub fn snapshot_sequence(&self) -> Option<u64> {
        self.snapshot_seen().map(|s| s.sequence)
    }

    /// The newest stored snapshot covers the log up to `sequence`, whose
    /// event was stored at `covers_until`.
    pub fn snapshot_stored(&self, sequence: u64, covers_until: SystemTime) {
        let mut seen = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        if seen.is_none_or(|s| s.sequence < sequence) {
            *seen = Some(SnapshotSeen {
                sequence,
                covers_until,
            });
        }
    }

    /// This replica appends checkpoints: until it folds one, the age is
    /// counted from now.
    pub fn checkpoints_expected(&self) {
        *self.checkpoints_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(SystemTime::now());
    }

    /// A checkpoint was folded: the event at `sequence`, stored at `stored_at`.
    pub fn checkpoint_folded(&self, sequence: u64, stored_at: SystemTime) {
        let mut seen = self.checkpoint.lock().unwrap_or_else(|p| p.into_inner());
        if seen.is_none_or(|(s, _)| s < sequence) {
            *seen = Some((sequence, stored_at));
        }
    }

    fn snapshot_seen(&self) -> Option<SnapshotSeen> {
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every metric, in the Prometheus text format, with the gauges read
    /// from `live` now.
    pub fn encode(&self, live: &Live) -> String {
        self.fold_lag.set(gauge_value(live.lag()));
        self.log_reachable.set(i64::from(live.log_reachable()));
        let (pending, first_deadline) = live.read(|s| {
            let pending = s.requests.values().filter(|r| r.is_pending());
            let deadline = pending
                .clone()
                .filter_map(|r| r.requested().deadline)
                .min_by_key(|t| (t.seconds, t.nanos));
            (pending.count(), deadline)
        });
        self.pending.set(gauge_value(pending as u64));
        let now = SystemTime::now();
        self.pending_expiry.set(match first_deadline {
            Some(t) => {
                let at = t.seconds as f64 + f64::from(t.nanos) / 1e9;
                let now = now
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                at - now
            }
            None => f64::NAN,
        });
        let checkpoint = *self.checkpoint.lock().unwrap_or_else(|p| p.into_inner());
        match checkpoint {
            Some((sequence, stored_at)) => {
                let age = now.duration_since(stored_at).unwrap_or_default();
                self.checkpoint_age.set(age.as_secs_f64());
                self.since_checkpoint
                    .set(gauge_value(live.sequence().saturating_sub(sequence)));
            }
            None => {
                let since = *self.checkpoints_since.lock().unwrap_or_else(|p| p.into_inner());
                self.checkpoint_age.set(match since {
                    Some(t) => now.duration_since(t).unwrap_or_default().as_secs_f64(),
                    None => f64::NAN,
                });
                self.since_checkpoint.set(gauge_value(live.sequence()));
            }
        }
        match self.snapshot_seen() {
            Some(s) => {
                let age = SystemTime::now()
                    .duration_since(s.covers_until)
                    .unwrap_or_default();
                self.snapshot_age.set(age.as_secs_f64());
                self.snapshot_behind
                    .set(gauge_value(live.sequence().saturating_sub(s.sequence)));
            }
            None => {
                self.snapshot_age.set(f64::NAN);
                self.snapshot_behind.set(gauge_value(live.sequence()));
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = text::encode(&mut out, &self.registry);
        out
    }
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `GET /metrics` for `live`'s replica.
pub fn router(live: Arc<Live>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let live = live.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                    live.metrics().encode(&live),
                )
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_only_what_a_replica_appends() {
        use airlock_eventlog::proto;
        assert_eq!(
            Outcome::of(&Body::ApprovalGranted(proto::ApprovalGranted::default())),
            Some(Outcome::Granted)
        );
        assert_eq!(
            Outcome::of(&Body::ApprovalExpired(proto::ApprovalExpired::default())),
            Some(Outcome::Expired)
        );
        assert_eq!(
            Outcome::of(&Body::ApprovalCancelled(proto::ApprovalCancelled::default())),
            None
        );
        assert_eq!(
            Outcome::of(&Body::ApprovalVoted(proto::ApprovalVoted::default())),
            None
        );
    }

    #[test]
    fn a_newer_snapshot_replaces_an_older_one_never_the_reverse() {
        let m = Metrics::new();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        m.snapshot_stored(10, t);
        m.snapshot_stored(5, t);
        assert_eq!(m.snapshot_sequence(), Some(10));
        m.snapshot_stored(20, t);
        assert_eq!(m.snapshot_sequence(), Some(20));
    }
}
