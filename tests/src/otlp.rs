//! An OTLP trace receiver for tests: the collector side of both transports
//! the binaries can export over, on loopback. gRPC is the OTLP
//! `TraceService`; HTTP takes `POST /v1/traces` with a protobuf body. Every
//! span received is kept, flattened, with the transport that carried it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;

use crate::eventually;

/// One span as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    /// `grpc` or `http/protobuf`.
    pub via: &'static str,
    pub name: String,
    /// Hex, as in `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// Attributes with their values as text.
    pub attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The running receiver; stops with the test's runtime.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// For `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`.
    pub grpc_endpoint: String,
    /// For `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` (the exporter adds
    /// `/v1/traces`).
    pub http_endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();

        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let grpc_addr: SocketAddr = grpc.local_addr().expect("addr");
        let service = TraceServiceServer::new(Grpc(spans.clone()));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc)),
        );

        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let http_addr: SocketAddr = http.local_addr().expect("addr");
        let kept = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(request) => {
                            keep(&kept, "http/protobuf", request);
                            (
                                axum::http::StatusCode::OK,
                                [("content-type", "application/x-protobuf")],
                                ExportTraceServiceResponse::default().encode_to_vec(),
                            )
                        }
                        Err(_) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            [("content-type", "text/plain")],
                            b"not an ExportTraceServiceRequest".to_vec(),
                        ),
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(http, app).await });

        Receiver {
            grpc_endpoint: format!("http://{grpc_addr}"),
            http_endpoint: format!("http://{http_addr}"),
            spans,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("lock").clone()
    }

    /// Waits until `done` holds for the spans received, and returns them;
    /// panics with what arrived after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        eventually("the spans expected", timeout, || async {
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            let seen: Vec<String> = spans
                .iter()
                .map(|s| format!("{} {} {:?}", s.service, s.name, s.attributes))
                .collect();
            Err(seen)
        })
        .await
    }
}

struct Grpc(Arc<Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, "grpc", request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn keep(spans: &Mutex<Vec<ReceivedSpan>>, via: &'static str, request: ExportTraceServiceRequest) {
    let mut kept = spans.lock().expect("lock");
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| text_attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                kept.push(ReceivedSpan {
                    service: service.clone(),
                    via,
                    name: span.name,
                    trace_id: hex::encode(span.trace_id),
                    span_id: hex::encode(span.span_id),
                    parent_span_id: hex::encode(span.parent_span_id),
                    attributes: text_attributes(&span.attributes),
                });
            }
        }
    }
}

fn text_attributes(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.as_ref().map(text).unwrap_or_default()))
        .collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
