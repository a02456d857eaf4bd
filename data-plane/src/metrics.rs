//! Prometheus metrics for the proxy: plain atomics, rendered in the text
//! exposition format on `GET /metrics` of `proxy.metrics_listen`.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every counter the proxy keeps. Durations are kept in microseconds and
/// exposed in seconds.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_open: AtomicU64,
    pub logins_refused: AtomicU64,
    pub statements_allowed: AtomicU64,
    pub statements_denied: AtomicU64,
    pub statements_held: AtomicU64,
    pub held_now: AtomicU64,
    pub hold_micros_sum: AtomicU64,
    pub holds_ended: AtomicU64,
    pub upstream_micros_sum: AtomicU64,
    pub upstream_statements: AtomicU64,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(counter: &AtomicU64) {
        // Saturating: a gauge never wraps below zero.
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(1))
        });
    }

    pub fn add(counter: &AtomicU64, v: u64) {
        counter.fetch_add(v, Ordering::Relaxed);
    }

    /// The text exposition format.
    pub fn render(&self, recorded: u64, record_retries: u64) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let secs = |c: &AtomicU64| g(c) as f64 / 1e6;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |v: String| vec![(String::new(), v)];
        metric(
            "airlock_proxy_connections_total",
            "counter",
            "Client connections accepted.",
            &one(g(&self.connections_total).to_string()),
        );
        metric(
            "airlock_proxy_connections_open",
            "gauge",
            "Client sessions open now.",
            &one(g(&self.connections_open).to_string()),
        );
        metric(
            "airlock_proxy_logins_refused_total",
            "counter",
            "Logins refused (token, policy, upstream).",
            &one(g(&self.logins_refused).to_string()),
        );
        metric(
            "airlock_proxy_statements_total",
            "counter",
            "Statements judged, by verdict.",
            &[
                (
                    "{verdict=\"allow\"}".into(),
                    g(&self.statements_allowed).to_string(),
                ),
                (
                    "{verdict=\"deny\"}".into(),
                    g(&self.statements_denied).to_string(),
                ),
                (
                    "{verdict=\"require-approval\"}".into(),
                    g(&self.statements_held).to_string(),
                ),
            ],
        );
        metric(
            "airlock_proxy_held_now",
            "gauge",
            "Statements waiting for a decision now.",
            &one(g(&self.held_now).to_string()),
        );
        metric(
            "airlock_proxy_hold_seconds",
            "summary",
            "Time held statements waited for their decision.",
            &[
                ("_sum".into(), secs(&self.hold_micros_sum).to_string()),
                ("_count".into(), g(&self.holds_ended).to_string()),
            ],
        );
        metric(
            "airlock_proxy_upstream_seconds",
            "summary",
            "Time from forwarding a statement to its completion upstream.",
            &[
                ("_sum".into(), secs(&self.upstream_micros_sum).to_string()),
                ("_count".into(), g(&self.upstream_statements).to_string()),
            ],
        );
        metric(
            "airlock_proxy_events_recorded_total",
            "counter",
            "Session events acknowledged by the log.",
            &one(recorded.to_string()),
        );
        metric(
            "airlock_proxy_event_retries_total",
            "counter",
            "Event appends retried.",
            &one(record_retries.to_string()),
        );
        out
    }
}

/// Serves `/metrics` (and `/healthz`) until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    recorder: crate::record::Recorder,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let (m, r) = (metrics.clone(), recorder.clone());
                async move {
                    let body = m.render(
                        r.stats.appended.load(Ordering::Relaxed),
                        r.stats.retries.load(Ordering::Relaxed),
                    );
                    ([("content-type", "text/plain; version=0.0.4")], body)
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::inc(&m.statements_allowed);
        Metrics::inc(&m.connections_open);
        Metrics::dec(&m.connections_open);
        Metrics::dec(&m.connections_open);
        Metrics::add(&m.hold_micros_sum, 1_500_000);
        let text = m.render(3, 0);
        assert!(
            text.contains("airlock_proxy_statements_total{verdict=\"allow\"} 1"),
            "{text}"
        );
        assert!(text.contains("airlock_proxy_connections_open 0"), "{text}");
        assert!(text.contains("airlock_proxy_hold_seconds_sum 1.5"), "{text}");
        assert!(text.contains("airlock_proxy_events_recorded_total 3"), "{text}");
    }
}
