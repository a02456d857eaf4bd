//! W3C trace context (`traceparent`, `tracestate`) of `tracing` spans: read
//! from a span to store with an event, and set as a span's parent when the
//! event is read, so one statement's trace runs across processes through the
//! event log. Knows nothing of events: the eventlog crate maps these to and
//! from the envelope.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

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

    /// The 32 hex digits of the trace id, if the context has one.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.split('-').nth(1).filter(|id| id.len() == 32)
    }
}

/// The trace context of the current span, to store with an event. Empty
/// when no span is being traced (export off, or outside any span).
pub fn current_trace_context() -> TraceContext {
    span_trace_context(&tracing::Span::current())
}

/// The trace context of `span`; empty if it is not traced.
pub fn span_trace_context(span: &tracing::Span) -> TraceContext {
    let cx = span.context();
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

/// Whether the current span belongs to a trace that spans are exported
/// for. False whenever export is off, so callers can skip work then.
pub fn is_traced() -> bool {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .is_valid()
}

/// Makes `span` continue the trace recorded with an event, so work done on
/// an event (a decision, a released statement) joins the trace of the
/// statement that caused it. A malformed context is ignored. Call before
/// the span is first entered.
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
        // Fails only if the span is disabled (export off): nothing to link.
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

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
        assert!(!is_traced());
        with_tracer(|| {
            assert!(!is_traced(), "outside any span");
            let span = tracing::info_span!("statement");
            let _g = span.enter();
            assert!(is_traced());
        });
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
            let trace_id = written.trace_id().map(str::to_owned);
            assert!(trace_id.is_some(), "{written:?}");

            // A reader of the event continues the same trace in a new span.
            let span = tracing::info_span!("decision");
            continue_trace(&span, &written);
            let read = span_trace_context(&span);
            assert_eq!(read.trace_id().map(str::to_owned), trace_id);
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
