//! Trace context in the event envelope (`Event.trace`, also sent as the
//! `traceparent`/`tracestate` headers): written when an event is appended,
//! read back by whoever acts on it, so a held statement's trace runs from
//! the proxy through the log to the control plane's decision and back.
//!
//! Which appends are traced: the approval lifecycle (request subjects)
//! always is, in a `log.append` span that starts a trace when the caller is
//! in none; any other append only when its caller is already traced, so the
//! recording of every statement does not each start a trace of its own.
//! With span export off none of this costs more than a span that is never
//! exported, and no event carries a context.

use airlock_telemetry::TraceContext;
use tracing::Span;

use crate::proto::{self, Event};
use crate::subjects::{SubjectKind, classify};

/// The trace context stored in `event`; empty if it carries none.
pub fn of(event: &Event) -> TraceContext {
    context(event.trace.as_ref())
}

/// `trace` (as kept from an event) as a context to continue; empty if none.
pub fn context(trace: Option<&proto::TraceContext>) -> TraceContext {
    trace
        .map(|t| TraceContext {
            traceparent: t.traceparent.clone(),
            tracestate: t.tracestate.clone(),
        })
        .unwrap_or_default()
}

/// Puts the current span's trace context on `event`, unless the event
/// already carries one or the current span is not traced.
pub fn stamp(event: &mut Event) {
    stamp_from(event, &Span::current());
}

fn stamp_from(event: &mut Event, span: &Span) {
    if event.trace.is_some() {
        return;
    }
    let cx = airlock_telemetry::span_trace_context(span);
    if !cx.is_empty() {
        event.trace = Some(proto::TraceContext {
            traceparent: cx.traceparent,
            tracestate: cx.tracestate,
        });
    }
}

/// The span an append of `event` to `subject` runs in (disabled when the
/// append is not traced, see the module header), its context stamped on
/// the event. Call before the event is linked and encoded: the stored bytes,
/// and so the hash chain, include the context.
pub(crate) fn append_span(subject: &str, event: &mut Event) -> Span {
    let span = span_for(subject, event);
    stamp_from(event, &span);
    span
}

/// As [`append_span`], for an event given as is: its context is the
/// caller's to set (see [`stamp`]).
pub(crate) fn append_span_as_is(subject: &str, event: &Event) -> Span {
    span_for(subject, event)
}

fn span_for(subject: &str, event: &Event) -> Span {
    let lifecycle = matches!(
        classify(subject),
        SubjectKind::Request(_) | SubjectKind::Decision(_)
    );
    if !lifecycle && !airlock_telemetry::is_traced() {
        return Span::none();
    }
    let kind = event.body.as_ref().map(crate::body_kind).unwrap_or("none");
    tracing::info_span!("log.append", subject, kind, event_id = %event.id)
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::proto::event::Body;
    use crate::{RequestId, SessionId, new_event, subjects};

    fn with_tracer<R>(f: impl FnOnce() -> R) -> R {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    fn event(body: Body) -> Event {
        new_event(&proto::Source::default(), body)
    }

    fn requested() -> Event {
        event(Body::ApprovalRequested(proto::ApprovalRequested::default()))
    }

    #[test]
    fn a_request_append_starts_a_trace_and_stores_its_context() {
        with_tracer(|| {
            let subject = subjects::request(&RequestId::generate());
            let mut e = requested();
            let span = append_span(&subject, &mut e);
            let stored = of(&e);
            assert!(stored.trace_id().is_some(), "{e:?}");
            assert_eq!(stored, airlock_telemetry::span_trace_context(&span));
        });
    }

    #[test]
    fn a_request_append_joins_the_callers_trace() {
        with_tracer(|| {
            let caller = tracing::info_span!("hold");
            let _in = caller.enter();
            let caller_trace = airlock_telemetry::current_trace_context();
            let mut e = requested();
            append_span(&subjects::request(&RequestId::generate()), &mut e);
            assert_eq!(of(&e).trace_id(), caller_trace.trace_id());
            assert_ne!(of(&e), caller_trace, "the append is a span of its own");
        });
    }

    #[test]
    fn other_appends_are_traced_only_inside_a_trace() {
        with_tracer(|| {
            let subject = subjects::session(&SessionId::generate());
            let mut e = event(Body::SessionClosed(proto::SessionClosed::default()));
            let span = append_span(&subject, &mut e);
            assert!(span.is_none() && e.trace.is_none(), "{e:?}");

            let caller = tracing::info_span!("statement");
            let _in = caller.enter();
            append_span(&subject, &mut e);
            assert!(e.trace.is_some());
        });
    }

    #[test]
    fn a_context_already_on_the_event_is_kept() {
        with_tracer(|| {
            let mut e = requested();
            let theirs = proto::TraceContext {
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                tracestate: String::new(),
            };
            e.trace = Some(theirs.clone());
            append_span(&subjects::request(&RequestId::generate()), &mut e);
            stamp(&mut e);
            assert_eq!(e.trace, Some(theirs));
        });
    }

    #[test]
    fn without_export_no_event_carries_a_context() {
        let mut e = requested();
        append_span(&subjects::request(&RequestId::generate()), &mut e);
        stamp(&mut e);
        assert_eq!(e.trace, None);
        assert!(of(&e).is_empty());
    }
}
