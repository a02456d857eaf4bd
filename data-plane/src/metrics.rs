//! The proxy's Prometheus metrics, served on `GET /metrics` of
//! `proxy.metrics_listen` (OpenMetrics text 1.0.0). This module owns the names;
//! the session bumps them where things happen. Durations are histograms in
//! seconds; counters end in `_total`.

use std::net::SocketAddr;
use std::sync::Arc;

use airlock_eventlog::proto::statement_refused::Cause;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// What a statement was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
    RequireApproval,
}

/// Why a statement was refused (or a session ended for its token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// A deny rule, the policy default, or a rule of the session.
    Policy,
    /// A reviewer denied it.
    Denied,
    /// Nobody decided in time.
    Expired,
    Cancelled,
    /// The control plane or event log could not take the request.
    Unavailable,
    /// The recording buffer stayed full.
    BufferFull,
    /// A grant for other bytes than the ones held.
    DigestMismatch,
    /// Too large to put before a reviewer.
    TooLarge,
    /// The session's token expired (the session ended).
    TokenExpired,
    /// Approved, but it changed more rows than its bound (rolled back).
    BoundExceeded,
}

impl Refusal {
    /// Every cause: each is a series from the start, at 0, so an alert on
    /// its increase sees the first one.
    pub const ALL: [Refusal; 10] = [
        Refusal::Policy,
        Refusal::Denied,
        Refusal::Expired,
        Refusal::Cancelled,
        Refusal::Unavailable,
        Refusal::BufferFull,
        Refusal::DigestMismatch,
        Refusal::TooLarge,
        Refusal::TokenExpired,
        Refusal::BoundExceeded,
    ];

    /// The metric cause of a recorded refusal's cause.
    pub fn of(cause: Cause) -> Refusal {
        match cause {
            Cause::Policy | Cause::Unspecified => Refusal::Policy,
            Cause::Denied => Refusal::Denied,
            Cause::Expired => Refusal::Expired,
            Cause::Cancelled => Refusal::Cancelled,
            Cause::Unavailable => Refusal::Unavailable,
            Cause::DigestMismatch => Refusal::DigestMismatch,
            Cause::BoundExceeded => Refusal::BoundExceeded,
        }
    }
}

impl EncodeLabelValue for Verdict {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(
            encoder,
            match self {
                Verdict::Allow => "allow",
                Verdict::Deny => "deny",
                Verdict::RequireApproval => "require-approval",
            },
        )
    }
}

impl EncodeLabelValue for Refusal {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(
            encoder,
            match self {
                Refusal::Policy => "policy",
                Refusal::Denied => "denied",
                Refusal::Expired => "expired",
                Refusal::Cancelled => "cancelled",
                Refusal::Unavailable => "unavailable",
                Refusal::BufferFull => "buffer_full",
                Refusal::DigestMismatch => "digest_mismatch",
                Refusal::TooLarge => "too_large",
                Refusal::TokenExpired => "token_expired",
                Refusal::BoundExceeded => "bound_exceeded",
            },
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VerdictLabels {
    verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CauseLabels {
    cause: Refusal,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// Every metric the proxy keeps. Cheap to bump from any task.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Counter,
    connections_open: Gauge,
    logins_refused: Counter,
    statements: Family<VerdictLabels, Counter>,
    refusals: Family<CauseLabels, Counter>,
    held_now: Gauge,
    grant_uses: Counter,
    hold_seconds: Histogram,
    upstream_seconds: Histogram,
    attached: Gauge,
    record_buffered: Gauge,
    record_capacity: Gauge,
    /// Policy and certificate reloads, applied or refused.
    pub reloads: airlock_reload::Reloads,
}

impl Metrics {
    /// The proxy's metrics, with the recorder's own counters (events
    /// acknowledged by the log, appends retried) among them.
    pub fn new(recorder: &crate::record::RecorderStats) -> Arc<Metrics> {
        let mut m = Metrics::default();
        m.registry.register(
            "events_recorded",
            "Session events acknowledged by the log",
            recorder.appended.clone(),
        );
        m.registry
            .register("event_retries", "Event appends retried", recorder.retries.clone());
        m.registry.register_with_unit(
            "log_append",
            "Time from sending an event to the log until it answered (acknowledged or failed)",
            Unit::Seconds,
            recorder.append_seconds.clone(),
        );
        Arc::new(m)
    }

    /// Client sessions open now.
    pub fn sessions_open(&self) -> i64 {
        self.connections_open.get()
    }

    pub fn connection_accepted(&self) {
        self.connections.inc();
    }

    pub fn session_opened(&self) {
        self.connections_open.inc();
    }

    pub fn session_closed(&self) {
        self.connections_open.dec();
    }

    pub fn login_refused(&self) {
        self.logins_refused.inc();
    }

    pub fn judged(&self, verdict: Verdict) {
        self.statements.get_or_create(&VerdictLabels { verdict }).inc();
    }

    pub fn refused(&self, cause: Refusal) {
        self.refusals.get_or_create(&CauseLabels { cause }).inc();
    }

    /// A hold began; the returned guard ends it (and observes its length)
    /// however the wait ends.
    pub fn hold(&self) -> HoldTimer<'_> {
        self.held_now.inc();
        HoldTimer {
            metrics: self,
            since: std::time::Instant::now(),
        }
    }

    /// A held statement ran under a grant.
    pub fn grant_used(&self) {
        self.grant_uses.inc();
    }

    /// A statement PostgreSQL answered, `seconds` after it was forwarded.
    pub fn answered(&self, seconds: f64) {
        self.upstream_seconds.observe(seconds);
    }

    /// What is read at each scrape rather than counted: whether an Attach
    /// stream is up, and how full the recording buffer is.
    pub fn sample(&self, attached: bool, buffered: usize, capacity: usize) {
        self.attached.set(i64::from(attached));
        self.record_buffered
            .set(i64::try_from(buffered).unwrap_or(i64::MAX));
        self.record_capacity
            .set(i64::try_from(capacity).unwrap_or(i64::MAX));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("airlock_proxy");
        let m = Metrics {
            registry: Registry::default(),
            connections: Counter::default(),
            connections_open: Gauge::default(),
            logins_refused: Counter::default(),
            statements: Family::default(),
            refusals: Family::default(),
            held_now: Gauge::default(),
            grant_uses: Counter::default(),
            // 1 ms to about 70 minutes: holds wait for people.
            hold_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 12)),
            // 100 us to about 7 minutes.
            upstream_seconds: Histogram::new(exponential_buckets(0.0001, 4.0, 12)),
            attached: Gauge::default(),
            record_buffered: Gauge::default(),
            record_capacity: Gauge::default(),
            reloads: airlock_reload::Reloads::new(),
        };
        m.reloads.register(&mut registry);
        for cause in Refusal::ALL {
            drop(m.refusals.get_or_create(&CauseLabels { cause }));
        }
        for verdict in [Verdict::Allow, Verdict::Deny, Verdict::RequireApproval] {
            drop(m.statements.get_or_create(&VerdictLabels { verdict }));
        }
        registry.register(
            "connections",
            "Client connections accepted",
            m.connections.clone(),
        );
        registry.register(
            "connections_open",
            "Client sessions open now",
            m.connections_open.clone(),
        );
        registry.register(
            "logins_refused",
            "Logins refused (token, policy, upstream)",
            m.logins_refused.clone(),
        );
        registry.register(
            "statements",
            "Statements judged, by verdict",
            m.statements.clone(),
        );
        registry.register(
            "refusals",
            "Statements refused, by cause (token_expired: sessions ended for an expired token)",
            m.refusals.clone(),
        );
        registry.register(
            "held_now",
            "Statements waiting for a decision now",
            m.held_now.clone(),
        );
        registry.register(
            "grant_uses",
            "Held statements run under a grant (each use claimed in the log)",
            m.grant_uses.clone(),
        );
        registry.register_with_unit(
            "hold",
            "Time held statements waited for their decision",
            Unit::Seconds,
            m.hold_seconds.clone(),
        );
        registry.register_with_unit(
            "upstream",
            "Time from forwarding a statement to its completion upstream",
            Unit::Seconds,
            m.upstream_seconds.clone(),
        );
        registry.register(
            "attached",
            "1 while an Attach stream to a control-plane replica is up (else held statements are refused)",
            m.attached.clone(),
        );
        registry.register(
            "record_buffered",
            "Events waiting in the recording buffer for the log",
            m.record_buffered.clone(),
        );
        registry.register(
            "record_buffer_capacity",
            "Events the recording buffer holds at most (proxy.record_buffer)",
            m.record_capacity.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("build_info", "This proxy's version (always 1)", build);
        Metrics { registry, ..m }
    }
}

/// Counts a hold while it lasts.
#[derive(Debug)]
pub struct HoldTimer<'a> {
    metrics: &'a Metrics,
    since: std::time::Instant,
}

impl Drop for HoldTimer<'_> {
    fn drop(&mut self) {
        self.metrics.held_now.dec();
        self.metrics
            .hold_seconds
            .observe(self.since.elapsed().as_secs_f64());
    }
}

/// Serves `/metrics`, and the routes of `health` ([`crate::health`]), until
/// the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    sample: impl Fn(&Metrics) + Clone + Send + Sync + 'static,
    health: axum::Router,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                sample(&m);
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .merge(health);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let stats = crate::record::RecorderStats::default();
        let m = Metrics::new(&stats);
        m.judged(Verdict::Allow);
        m.session_opened();
        m.session_closed();
        m.refused(Refusal::of(Cause::Denied));
        m.refused(Refusal::BufferFull);
        drop(m.hold());
        stats.appended.inc_by(3);
        let text = m.render();
        for line in [
            "airlock_proxy_statements_total{verdict=\"allow\"} 1",
            "airlock_proxy_connections_open 0",
            "airlock_proxy_refusals_total{cause=\"denied\"} 1",
            "airlock_proxy_refusals_total{cause=\"buffer_full\"} 1",
            "airlock_proxy_hold_seconds_count 1",
            "airlock_proxy_held_now 0",
            "airlock_proxy_events_recorded_total 3",
            "# TYPE airlock_proxy_upstream_seconds histogram",
            "airlock_proxy_build_info{version=\"",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
