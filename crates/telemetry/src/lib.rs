//! Telemetry for every Airlock binary, in one place: `tracing` with an env
//! filter, human or JSON logs, OpenTelemetry export over OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and W3C trace context
//! (`traceparent`) to carry a statement's trace across the event log.
//!
//! Environment:
//! * `AIRLOCK_LOG` (else `RUST_LOG`): filter directives, default `info`.
//! * `AIRLOCK_LOG_FORMAT=json`: one JSON object per line (for log shippers).
//! * `OTEL_EXPORTER_OTLP_ENDPOINT` (and the other standard `OTEL_*`
//!   variables): export spans over OTLP/gRPC. Unset: no export, no cost.
//!
//! Does not own: what is logged. Secrets (tokens, passwords, upstream
//! credentials) must never be put in a field; that is each caller's duty.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Setting up telemetry failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid log filter {filter:?} (from {var}): {detail}")]
    BadFilter {
        var: &'static str,
        filter: String,
        detail: String,
    },
    #[error("OTLP exporter for {endpoint}: {detail}")]
    Exporter { endpoint: String, detail: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps the exporter alive; dropping it flushes pending spans.
#[derive(Debug)]
#[must_use = "dropping the guard shuts telemetry down"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing spans at exit failed");
        }
    }
}

/// Installs the global subscriber for a binary named `service` (the
/// OpenTelemetry `service.name`). Call once, early in `main`, inside the
/// tokio runtime when OTLP export is wanted.
pub fn init(service: &'static str) -> Result<Guard, Error> {
    let (var, directives) = match std::env::var("AIRLOCK_LOG") {
        Ok(v) => ("AIRLOCK_LOG", v),
        Err(_) => match std::env::var("RUST_LOG") {
            Ok(v) => ("RUST_LOG", v),
            Err(_) => ("default", "info".to_owned()),
        },
    };
    let filter = EnvFilter::try_new(&directives).map_err(|e| Error::BadFilter {
        var,
        filter: directives.clone(),
        detail: e.to_string(),
    })?;
    let json = std::env::var("AIRLOCK_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(otlp_provider(service, &endpoint)?),
        _ => None,
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(EnvFilter::new(directives.clone()))
    });

    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .map_err(|_| Error::AlreadyInstalled)?;
    Ok(Guard { provider })
}

fn otlp_provider(service: &'static str, endpoint: &str) -> Result<SdkTracerProvider, Error> {
    // The endpoint and the other OTEL_EXPORTER_OTLP_* settings are read from
    // the environment by the exporter itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| Error::Exporter {
            endpoint: endpoint.to_owned(),
            detail: e.to_string(),
        })?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// W3C trace context, as stored in an event and its NATS headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: String,
}

impl TraceContext {
    pub fn is_empty(&self) -> bool {
        self.traceparent.is_empty()
    }
}

/// The trace context of the current span, to store with an event. Empty
/// when no span is being traced (export off, or outside any span).
pub fn current_trace_context() -> TraceContext {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return TraceContext::default();
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    TraceContext {
        traceparent: carrier.remove("traceparent").unwrap_or_default(),
        tracestate: carrier.remove("tracestate").unwrap_or_default(),
    }
}

/// Makes `span` continue the trace recorded with an event, so work done on
/// an event (a decision, a released statement) joins the trace of the
/// statement that caused it. A malformed context is ignored.
pub fn continue_trace(span: &tracing::Span, trace: &TraceContext) {
    if trace.is_empty() {
        return;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    carrier.insert("traceparent".to_owned(), trace.traceparent.clone());
    if !trace.tracestate.is_empty() {
        carrier.insert("tracestate".to_owned(), trace.tracestate.clone());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_tracer<R>(f: impl FnOnce() -> R) -> R {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn no_span_no_context() {
        assert!(current_trace_context().is_empty());
    }

    #[test]
    fn a_trace_continues_across_the_log() {
        with_tracer(|| {
            let written = {
                let span = tracing::info_span!("statement");
                let _g = span.enter();
                current_trace_context()
            };
            assert!(written.traceparent.starts_with("00-"), "{written:?}");
            let trace_id = written.traceparent.split('-').nth(1).map(str::to_owned);

            // A reader of the event continues the same trace in a new span.
            let span = tracing::info_span!("decision");
            continue_trace(&span, &written);
            let _g = span.enter();
            let read = current_trace_context();
            assert_eq!(read.traceparent.split('-').nth(1).map(str::to_owned), trace_id);
            assert_ne!(
                read.traceparent, written.traceparent,
                "a new span id in the same trace"
            );
        });
    }

    #[test]
    fn a_malformed_context_is_ignored() {
        with_tracer(|| {
            let span = tracing::info_span!("decision");
            continue_trace(
                &span,
                &TraceContext {
                    traceparent: "not-a-traceparent".into(),
                    tracestate: String::new(),
                },
            );
            let _g = span.enter();
            assert!(!current_trace_context().traceparent.contains("not-a"));
        });
    }
}
