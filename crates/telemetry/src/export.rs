//! Span export over OTLP, gRPC or HTTP/protobuf, behind a batch processor.
//!
//! The batch processor sends from a thread of its own; both transports do
//! their I/O on the Tokio runtime the binary runs: tonic's channel spawns its
//! connection task when it is built, and the HTTP client below spawns each
//! request. So the provider is built inside the runtime, and must be shut
//! down (spans flushed) before the runtime stops. Endpoint, headers,
//! compression and TLS come from the standard `OTEL_EXPORTER_OTLP_*`
//! variables, read by the exporter itself.

use std::time::Duration;

use opentelemetry::{Key, KeyValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::{Error, Protocol};

/// The tracer provider exporting over `protocol`. Must run inside a Tokio
/// runtime ([`Error::NoRuntime`] otherwise, rather than tonic's panic).
pub(crate) fn provider(service: &'static str, protocol: Protocol) -> Result<SdkTracerProvider, Error> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
    let failed = |detail: String| Error::Exporter { protocol, detail };
    let exporter = match protocol {
        Protocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_protocol(opentelemetry_otlp::Protocol::Grpc)
            .build(),
        Protocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(RuntimeHttpClient::new(runtime, timeout()).map_err(failed)?)
            .build(),
    }
    .map_err(|e| failed(e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(service))
        .build())
}

/// `service.name` is the binary's unless the operator named it
/// (`OTEL_SERVICE_NAME`, or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`).
fn resource(service: &'static str) -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&Key::from_static_str("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    let mut builder =
        Resource::builder().with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if !named {
        builder = builder.with_service_name(service);
    }
    builder.build()
}

/// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT`
/// (milliseconds), else 10 s: what the exporter's own clients use.
fn timeout() -> Duration {
    ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(10))
}

/// Collector answers are tiny; anything larger is refused, not buffered.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// The OTLP/HTTP client: the workspace's reqwest (rustls on ring, the
/// system's roots), each request spawned on the binary's runtime, so it
/// works from the batch processor's thread, which has no reactor.
#[derive(Debug)]
struct RuntimeHttpClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl RuntimeHttpClient {
    fn new(runtime: tokio::runtime::Handle, timeout: Duration) -> Result<RuntimeHttpClient, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(RuntimeHttpClient { client, runtime })
    }
}

#[async_trait::async_trait]
impl HttpClient for RuntimeHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let mut response = client.execute(reqwest::Request::try_from(request)?).await?;
            let status = response.status();
            let headers = std::mem::take(response.headers_mut());
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(format!("the collector's answer is over {MAX_RESPONSE_BYTES} bytes").into());
                }
                body.extend_from_slice(&chunk);
            }
            let mut answer = Response::builder().status(status).body(Bytes::from(body))?;
            *answer.headers_mut() = headers;
            Ok::<_, HttpError>(answer)
        });
        // A join error: the runtime is shutting down.
        sent.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
            assert!(
                matches!(provider("airlock-test", protocol), Err(Error::NoRuntime)),
                "{protocol}"
            );
        }
    }

    #[tokio::test]
    async fn both_protocols_build_inside_the_runtime() {
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let provider = provider("airlock-test", protocol).expect("an exporter");
            // Nothing listens on the default endpoint: shutting down must
            // still return (an error about the export, not a hang or panic).
            let _ = tokio::task::spawn_blocking(move || provider.shutdown())
                .await
                .expect("shutdown returns");
        }
    }
}
