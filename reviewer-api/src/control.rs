//! The gRPC client to the control plane's `ReviewerService`. Every call
//! carries the caller's own bearer token, so the control plane judges the
//! real reviewer; this process holds no authority of its own.

use std::time::Duration;

use airlock_proto::v1 as proto;
use airlock_proto::v1::reviewer_service_client::ReviewerServiceClient;
use anyhow::Context;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::auth::Token;
use crate::config::ControlTlsSection;
use crate::error::ApiError;

/// How long one unary call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct ControlClient {
    inner: ReviewerServiceClient<Channel>,
}

fn authed<T>(token: &Token, message: T) -> Result<tonic::Request<T>, ApiError> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {}", token.expose())
        .parse()
        .map_err(|_| ApiError::unauthenticated("the token holds characters a header cannot carry"))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// tonic's TLS settings from `reviewer.control_tls`.
fn client_tls(section: &ControlTlsSection) -> anyhow::Result<ClientTlsConfig> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).with_context(|| format!("reviewer.control_tls: reading {}", p.display()))
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&section.ca)?));
    if let (Some(cert), Some(key)) = (&section.cert, &section.key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}

impl ControlClient {
    /// A client that connects on first use (and reconnects after failures),
    /// so the reviewer starts even while the control plane is down; over
    /// TLS with `tls` (whose files are read now).
    pub fn new(url: &str, tls: Option<&ControlTlsSection>) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(client_tls(tls)?)?;
        }
        let channel = endpoint
            .connect_timeout(Duration::from_secs(5))
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .connect_lazy();
        Ok(ControlClient {
            inner: ReviewerServiceClient::new(channel),
        })
    }

    fn unary<T>(token: &Token, message: T) -> Result<tonic::Request<T>, ApiError> {
        let mut request = authed(token, message)?;
        request.set_timeout(CALL_TIMEOUT);
        Ok(request)
    }

    pub async fn list_requests(
        &self,
        token: &Token,
        q: proto::ListRequestsRequest,
    ) -> Result<proto::ListRequestsResponse, ApiError> {
        Ok(self
            .inner
            .clone()
            .list_requests(Self::unary(token, q)?)
            .await?
            .into_inner())
    }

    pub async fn get_request(&self, token: &Token, id: &str) -> Result<proto::RequestView, ApiError> {
        let q = proto::GetRequestRequest {
            request_id: id.to_owned(),
        };
        Ok(self
            .inner
            .clone()
            .get_request(Self::unary(token, q)?)
            .await?
            .into_inner())
    }

    pub async fn decide(
        &self,
        token: &Token,
        q: proto::DecideRequest,
    ) -> Result<proto::DecideResponse, ApiError> {
        Ok(self
            .inner
            .clone()
            .decide(Self::unary(token, q)?)
            .await?
            .into_inner())
    }

    /// Opens the stream of request changes after `after_sequence` (0: from
    /// now). Refusals (token, group) come back here, before any event.
    pub async fn watch(
        &self,
        token: &Token,
        after_sequence: u64,
    ) -> Result<tonic::Streaming<proto::WatchEvent>, ApiError> {
        let q = proto::WatchRequest {
            after_sequence,
            states: Vec::new(),
        };
        Ok(self.inner.clone().watch(authed(token, q)?).await?.into_inner())
    }

    pub async fn list_sessions(
        &self,
        token: &Token,
        q: proto::ListSessionsRequest,
    ) -> Result<proto::ListSessionsResponse, ApiError> {
        Ok(self
            .inner
            .clone()
            .list_sessions(Self::unary(token, q)?)
            .await?
            .into_inner())
    }

    pub async fn get_session(&self, token: &Token, id: &str) -> Result<proto::SessionView, ApiError> {
        let q = proto::GetSessionRequest {
            session_id: id.to_owned(),
        };
        Ok(self
            .inner
            .clone()
            .get_session(Self::unary(token, q)?)
            .await?
            .into_inner())
    }

    pub async fn kill_session(
        &self,
        token: &Token,
        id: &str,
        reason: String,
    ) -> Result<proto::KillSessionResponse, ApiError> {
        let q = proto::KillSessionRequest {
            session_id: id.to_owned(),
            reason,
        };
        Ok(self
            .inner
            .clone()
            .kill_session(Self::unary(token, q)?)
            .await?
            .into_inner())
    }
}
