//! Counters for `/metrics` (Prometheus text format 0.0.4), and the
//! middleware that counts HTTP responses. Plain atomics: no registry crate.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

#[derive(Debug, Default)]
pub struct Metrics {
    pub http_2xx: AtomicU64,
    pub http_3xx: AtomicU64,
    pub http_4xx: AtomicU64,
    pub http_5xx: AtomicU64,
    pub votes_approve: AtomicU64,
    pub votes_deny: AtomicU64,
    pub votes_refused: AtomicU64,
    pub kills: AtomicU64,
    pub event_streams_open: AtomicU64,
    pub sign_ins: AtomicU64,
    pub sign_ins_refused: AtomicU64,
    pub notifications_queued: AtomicU64,
    pub webhook_delivered: AtomicU64,
    pub webhook_retried: AtomicU64,
    pub webhook_failed: AtomicU64,
    pub webhook_dropped: AtomicU64,
    pub notifier_connected: AtomicU64,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(counter: &AtomicU64) {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(1))
        });
    }

    pub fn render(&self, browser_sessions: usize) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        };
        metric(
            "airlock_reviewer_http_responses_total",
            "counter",
            "HTTP responses by status class.",
            &[
                ("class=\"2xx\"", get(&self.http_2xx)),
                ("class=\"3xx\"", get(&self.http_3xx)),
                ("class=\"4xx\"", get(&self.http_4xx)),
                ("class=\"5xx\"", get(&self.http_5xx)),
            ],
        );
        metric(
            "airlock_reviewer_votes_total",
            "counter",
            "Votes passed to the control plane: accepted by decision, or refused.",
            &[
                ("result=\"approve\"", get(&self.votes_approve)),
                ("result=\"deny\"", get(&self.votes_deny)),
                ("result=\"refused\"", get(&self.votes_refused)),
            ],
        );
        metric(
            "airlock_reviewer_kills_total",
            "counter",
            "Session kills accepted by the control plane.",
            &[("", get(&self.kills))],
        );
        metric(
            "airlock_reviewer_event_streams_open",
            "gauge",
            "Server-sent event streams open now.",
            &[("", get(&self.event_streams_open))],
        );
        metric(
            "airlock_reviewer_browser_sessions",
            "gauge",
            "Signed-in browser sessions held in memory.",
            &[("", browser_sessions as u64)],
        );
        metric(
            "airlock_reviewer_sign_ins_total",
            "counter",
            "Browser sign-ins, completed or refused.",
            &[
                ("result=\"ok\"", get(&self.sign_ins)),
                ("result=\"refused\"", get(&self.sign_ins_refused)),
            ],
        );
        metric(
            "airlock_reviewer_notifications_total",
            "counter",
            "Notifications queued for webhooks.",
            &[("", get(&self.notifications_queued))],
        );
        metric(
            "airlock_reviewer_webhook_deliveries_total",
            "counter",
            "Webhook delivery outcomes: delivered, retried (attempts that failed and were retried), failed (gave up), dropped (queue full).",
            &[
                ("result=\"delivered\"", get(&self.webhook_delivered)),
                ("result=\"retried\"", get(&self.webhook_retried)),
                ("result=\"failed\"", get(&self.webhook_failed)),
                ("result=\"dropped\"", get(&self.webhook_dropped)),
            ],
        );
        metric(
            "airlock_reviewer_notifier_connected",
            "gauge",
            "1 while the notifier's watch on the control plane is open.",
            &[("", get(&self.notifier_connected))],
        );
        out
    }
}

/// Counts every response by status class.
pub async fn track(State(app): State<crate::State>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let m = &app.metrics;
    let counter = match response.status().as_u16() {
        200..=299 => &m.http_2xx,
        300..=399 => &m.http_3xx,
        400..=499 => &m.http_4xx,
        _ => &m.http_5xx,
    };
    Metrics::inc(counter);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        Metrics::inc(&m.votes_approve);
        Metrics::inc(&m.event_streams_open);
        Metrics::dec(&m.event_streams_open);
        Metrics::dec(&m.event_streams_open);
        let text = m.render(3);
        assert!(
            text.contains("airlock_reviewer_votes_total{result=\"approve\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("airlock_reviewer_event_streams_open 0\n"), "{text}");
        assert!(text.contains("airlock_reviewer_browser_sessions 3\n"), "{text}");
        assert!(text.contains("# TYPE airlock_reviewer_http_responses_total counter\n"));
    }
}
