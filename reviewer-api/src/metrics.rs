//! The reviewer's metrics, served on `/metrics` in the OpenMetrics text
//! format, and the middleware that counts and times HTTP responses.
//!
//! Every labelled series is made when [`Metrics::new`] runs, with label
//! values fixed here: a series exists (at 0) before its first event, and no
//! caller can invent a label value. Counters are registered without their
//! `_total` suffix, which the encoder adds.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bucket bounds (seconds) of the latency histograms: 5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    /// The route's pattern (`/api/v1/requests/{id}`), never the path
    /// itself, so ids do not become series.
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type LatencyFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

/// The series the rest of the crate updates, and the registry that
/// renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    http_2xx: Counter,
    http_3xx: Counter,
    http_4xx: Counter,
    http_5xx: Counter,
    http_seconds: LatencyFamily,
    pub votes_approve: Counter,
    pub votes_deny: Counter,
    pub votes_refused: Counter,
    pub kills: Counter,
    pub event_streams_open: Gauge,
    browser_sessions: Gauge,
    pub sign_ins: Counter,
    pub sign_ins_refused: Counter,
    pub notifications_queued: Counter,
    pub webhook_delivered: Counter,
    pub webhook_retried: Counter,
    pub webhook_failed: Counter,
    pub webhook_dropped: Counter,
    /// Time of one webhook delivery attempt, failed or not.
    pub webhook_seconds: Histogram,
    pub notifier_connected: Gauge,
    /// 1 while this replica holds the notifier lease (`reviewer.state: nats`).
    pub notifier_leader: Gauge,
    /// Certificate reloads, applied or refused.
    pub reloads: airlock_reload::Reloads,
}

/// Registers a family with one series per value of `values`, and returns
/// those series in the same order.
fn labelled<L, const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    values: [&'static str; N],
    label: impl Fn(&'static str) -> L,
) -> [Counter; N]
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Counter>::default();
    registry.register(name, help, family.clone());
    values.map(|v| family.get_or_create(&label(v)).clone())
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut r = Registry::with_prefix("airlock_reviewer");

        let build = Family::<VersionLabel, Gauge>::default();
        r.register(
            "build_info",
            "The running build: always 1, with its version as a label",
            build.clone(),
        );
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);

        let [http_2xx, http_3xx, http_4xx, http_5xx] = labelled(
            &mut r,
            "http_responses",
            "HTTP responses by status class",
            ["2xx", "3xx", "4xx", "5xx"],
            |class| ClassLabel { class },
        );
        let reloads = airlock_reload::Reloads::new();
        reloads.register(&mut r);
        let http_seconds: LatencyFamily = Family::new_with_constructor(latency_histogram);
        r.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request, by route pattern (`unmatched` for none); for an event \
             stream, until the stream opened",
            Unit::Seconds,
            http_seconds.clone(),
        );
        let [votes_approve, votes_deny, votes_refused] = labelled(
            &mut r,
            "votes",
            "Votes passed to the control plane: accepted by decision, or refused",
            ["approve", "deny", "refused"],
            |result| ResultLabel { result },
        );
        let kills = Counter::default();
        r.register(
            "kills",
            "Session kills accepted by the control plane",
            kills.clone(),
        );
        let event_streams_open = Gauge::default();
        r.register(
            "event_streams_open",
            "Server-sent event streams open now",
            event_streams_open.clone(),
        );
        let browser_sessions = Gauge::default();
        r.register(
            "browser_sessions",
            "Signed-in browser sessions held in memory",
            browser_sessions.clone(),
        );
        let [sign_ins, sign_ins_refused] = labelled(
            &mut r,
            "sign_ins",
            "Browser sign-ins, completed or refused",
            ["ok", "refused"],
            |result| ResultLabel { result },
        );
        let notifications_queued = Counter::default();
        r.register(
            "notifications",
            "Notifications queued for webhooks",
            notifications_queued.clone(),
        );
        let [
            webhook_delivered,
            webhook_retried,
            webhook_failed,
            webhook_dropped,
        ] = labelled(
            &mut r,
            "webhook_deliveries",
            "Webhook delivery outcomes: delivered, retried (attempts that failed and were retried), \
             failed (gave up), dropped (queue full)",
            ["delivered", "retried", "failed", "dropped"],
            |result| ResultLabel { result },
        );
        let webhook_seconds = latency_histogram();
        r.register_with_unit(
            "webhook_request_duration",
            "Time of one webhook delivery attempt, answered or not",
            Unit::Seconds,
            webhook_seconds.clone(),
        );
        let notifier_connected = Gauge::default();
        r.register(
            "notifier_connected",
            "1 while the notifier's watch on the control plane is open",
            notifier_connected.clone(),
        );
        let notifier_leader = Gauge::default();
        r.register(
            "notifier_leader",
            "1 while this replica holds the notifier lease and so is the one that sends notifications (reviewer.state: nats)",
            notifier_leader.clone(),
        );

        Arc::new(Metrics {
            registry: r,
            http_2xx,
            http_3xx,
            http_4xx,
            http_5xx,
            http_seconds,
            votes_approve,
            votes_deny,
            votes_refused,
            kills,
            event_streams_open,
            browser_sessions,
            sign_ins,
            sign_ins_refused,
            notifications_queued,
            webhook_delivered,
            webhook_retried,
            webhook_failed,
            webhook_dropped,
            webhook_seconds,
            notifier_connected,
            notifier_leader,
            reloads,
        })
    }

    /// Every metric in the OpenMetrics text format ([`CONTENT_TYPE`]).
    /// `browser_sessions` is read at scrape time.
    pub fn render(&self, browser_sessions: usize) -> String {
        self.browser_sessions
            .set(i64::try_from(browser_sessions).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Counts every response by status class and times it by route.
pub async fn track(State(app): State<crate::State>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let m = &app.metrics;
    m.http_seconds
        .get_or_create(&RouteLabel { route })
        .observe(started.elapsed().as_secs_f64());
    let counter = match response.status().as_u16() {
        200..=299 => &m.http_2xx,
        300..=399 => &m.http_3xx,
        400..=499 => &m.http_4xx,
        _ => &m.http_5xx,
    };
    counter.inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_text_with_conventional_names() {
        let m = Metrics::new();
        m.votes_approve.inc();
        m.event_streams_open.inc();
        m.event_streams_open.dec();
        m.webhook_seconds.observe(0.2);
        m.http_seconds
            .get_or_create(&RouteLabel {
                route: "/requests/{id}".into(),
            })
            .observe(0.03);
        let text = m.render(3);
        let build = format!(
            "airlock_reviewer_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        for line in [
            build.as_str(),
            "# TYPE airlock_reviewer_build_info gauge\n",
            "airlock_reviewer_votes_total{result=\"approve\"} 1\n",
            "airlock_reviewer_votes_total{result=\"refused\"} 0\n",
            "# TYPE airlock_reviewer_votes counter\n",
            "airlock_reviewer_http_responses_total{class=\"5xx\"} 0\n",
            "airlock_reviewer_kills_total 0\n",
            "airlock_reviewer_event_streams_open 0\n",
            "airlock_reviewer_browser_sessions 3\n",
            "airlock_reviewer_sign_ins_total{result=\"ok\"} 0\n",
            "airlock_reviewer_notifications_total 0\n",
            "airlock_reviewer_webhook_deliveries_total{result=\"dropped\"} 0\n",
            "airlock_reviewer_notifier_connected 0\n",
            "# UNIT airlock_reviewer_webhook_request_duration_seconds seconds\n",
            "airlock_reviewer_webhook_request_duration_seconds_bucket{le=\"0.25\"} 1\n",
            "airlock_reviewer_webhook_request_duration_seconds_bucket{le=\"0.1\"} 0\n",
            "airlock_reviewer_webhook_request_duration_seconds_count 1\n",
            "# TYPE airlock_reviewer_http_request_duration_seconds histogram\n",
            "airlock_reviewer_http_request_duration_seconds_count{route=\"/requests/{id}\"} 1\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
