//! Telemetry for every Airlock binary, in one place: `tracing` with an env
//! filter, human or JSON logs, OpenTelemetry span export over OTLP (gRPC or
//! HTTP/protobuf), and W3C trace context (`traceparent`) to carry a
//! statement's trace across the event log.
//!
//! Environment:
//! * `AIRLOCK_LOG` (else `RUST_LOG`): filter directives, default `info`. A
//!   filter that does not parse stops the binary ([`Error::BadFilter`]).
//! * `AIRLOCK_LOG_FORMAT=json` (or `text`): one JSON object per line.
//! * `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`:
//!   export spans. Unset: no export, no cost.
//! * `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`: `grpc` (default) or
//!   `http/protobuf`. `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true`
//!   turn export off. The other standard variables (headers, timeout,
//!   sampler, batch delays, resource attributes) are read by the SDK.
//!
//! The OTLP exporters do their I/O on the Tokio runtime, so telemetry starts
//! inside it: binaries call [`run_binary`], which orders runtime, telemetry,
//! work and the final flush.
//!
//! Does not own: what is logged. Secrets (tokens, passwords, upstream
//! credentials) must never be put in a field; that is each caller's duty.

use std::fmt::Display;
use std::future::Future;
use std::process::{ExitCode, Termination};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

mod context;
mod export;
mod settings;

pub use context::{TraceContext, continue_trace, current_trace_context, is_traced, span_trace_context};
pub use settings::{LogFormat, Protocol, Settings};

/// Setting up telemetry failed. Each message names the variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{var}={filter:?} is not a valid log filter: {detail}")]
    BadFilter {
        var: &'static str,
        filter: String,
        detail: String,
    },
    #[error("{var}={value:?} is not supported: expected {expected}")]
    BadSetting {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("OTLP export must be started inside the Tokio runtime")]
    NoRuntime,
    #[error("the OTLP exporter ({protocol}): {detail}")]
    Exporter { protocol: Protocol, detail: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps the exporter alive; dropping it flushes pending spans. Drop it
/// while the runtime still runs: the exporter sends on it.
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
/// OpenTelemetry `service.name`), configured from the environment. Call
/// once, inside the Tokio runtime (see [`run_binary`]).
pub fn init(service: &'static str) -> Result<Guard, Error> {
    install(service, &Settings::from_env()?)
}

/// Installs the global subscriber with `settings`.
pub fn install(service: &'static str, settings: &Settings) -> Result<Guard, Error> {
    let filter = || {
        EnvFilter::try_new(&settings.filter).map_err(|e| Error::BadFilter {
            var: settings.filter_source,
            filter: settings.filter.clone(),
            detail: e.to_string(),
        })
    };
    let fmt = match settings.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = settings
        .export
        .map(|protocol| export::provider(service, protocol))
        .transpose()?;
    let otel = match &provider {
        Some(p) => Some(
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer(service))
                .with_filter(filter()?),
        ),
        None => None,
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter()?))
        .with(otel)
        .try_init()
        .map_err(|_| Error::AlreadyInstalled)?;
    Ok(Guard { provider })
}

/// Runs a binary: starts the Tokio runtime, then telemetry inside it, then
/// `work`; flushes spans before the runtime stops. A telemetry error stops
/// the binary before any work. Errors are printed as `service: error` (the
/// alternate form, so an `anyhow` chain is shown whole).
pub fn run_binary<T, E>(service: &'static str, work: impl Future<Output = Result<T, E>>) -> ExitCode
where
    T: Termination,
    E: Display,
{
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{service}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = match runtime.block_on(async { init(service) }) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("{service}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(work);
    // Flush while the runtime's workers still carry the exporter's I/O.
    drop(telemetry);
    match outcome {
        Ok(done) => done.report(),
        Err(e) => {
            eprintln!("{service}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Keeps a service alive through `SIGHUP`, which would otherwise end it,
/// saying in the log what a reload does for it: a service manager's
/// "reload" (systemd's `ExecReload`) must not stop a binary whose files
/// are re-read on their own. Call from within the runtime.
pub fn survive_hangup(service: &'static str, reloads: &'static str) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!(service, "SIGHUP: {reloads}");
            }
        });
    }
}
