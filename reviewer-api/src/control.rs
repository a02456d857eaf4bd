//! The gRPC client to the control plane's `ReviewerService`. Every call
//! carries the caller's own bearer token, so the control plane judges the
//! real reviewer; this process holds no authority of its own.

use std::sync::{Arc, RwLock};
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

/// Cheap to clone: clones share the channel, and a reload of
/// `reviewer.control_tls` replaces it for all of them.
#[derive(Debug, Clone)]
pub struct ControlClient {
    url: String,
    tls: Option<ControlTlsSection>,
    inner: Arc<RwLock<ReviewerServiceClient<Channel>>>,
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
pub(crate) fn client_tls(section: &ControlTlsSection) -> anyhow::Result<ClientTlsConfig> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).with_context(|| format!("reviewer.control_tls: reading {}", p.display()))
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&section.ca)?));
    if let (Some(cert), Some(key)) = (&section.cert, &section.key) {
        // Checked now, not at the next handshake: a renewed pair that does
        // not belong together is refused and the one in force kept.
        airlock_reload::load_certified_key(cert, key)
            .map_err(|e| anyhow::anyhow!("reviewer.control_tls: {e}"))?;
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}

impl ControlClient {
    /// A client that connects on first use (and reconnects after failures),
    /// so the reviewer starts even while the control plane is down; over
    /// TLS with `tls` (whose files are read now, and again when they change:
    /// see [`ControlClient::watch_tls`]).
    pub fn new(url: &str, tls: Option<&ControlTlsSection>) -> anyhow::Result<Self> {
        Ok(ControlClient {
            inner: Arc::new(RwLock::new(Self::connect(url, tls)?)),
            url: url.to_owned(),
            tls: tls.cloned(),
        })
    }

    fn connect(url: &str, tls: Option<&ControlTlsSection>) -> anyhow::Result<ReviewerServiceClient<Channel>> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(client_tls(tls)?)?;
        }
        let channel = endpoint
            .connect_timeout(Duration::from_secs(5))
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .connect_lazy();
        Ok(ReviewerServiceClient::new(channel))
    }

    /// With `reviewer.control_tls`: watches its files, and when they change
    /// and still check, calls from then on go over a new channel with them
    /// (streams already open keep theirs).
    pub fn watch_tls(&self, reloads: airlock_reload::Reloads) {
        let Some(tls) = &self.tls else { return };
        let paths = [Some(&tls.ca), tls.cert.as_ref(), tls.key.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let me = self.clone();
        airlock_reload::watch(
            "reviewer.control_tls",
            paths,
            reloads,
            Arc::new(move || {
                let fresh = Self::connect(&me.url, me.tls.as_ref()).map_err(|e| format!("{e:#}"))?;
                *me.inner.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                Ok(())
            }),
        );
    }

    fn client(&self) -> ReviewerServiceClient<Channel> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
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
            .client()
            .list_requests(Self::unary(token, q)?)
            .await?
            .into_inner())
    }

    pub async fn get_request(&self, token: &Token, id: &str) -> Result<proto::RequestView, ApiError> {
        let q = proto::GetRequestRequest {
            request_id: id.to_owned(),
        };
        Ok(self
            .client()
            .get_request(Self::unary(token, q)?)
            .await?
            .into_inner())
    }

    pub async fn decide(
        &self,
        token: &Token,
        q: proto::DecideRequest,
    ) -> Result<proto::DecideResponse, ApiError> {
        Ok(self.client().decide(Self::unary(token, q)?).await?.into_inner())
    }

    pub async fn get_slack_link(
        &self,
        token: &Token,
        slack: proto::SlackUser,
    ) -> Result<proto::SlackLinkView, ApiError> {
        let q = proto::GetSlackLinkRequest { slack: Some(slack) };
        Ok(self
            .client()
            .get_slack_link(Self::unary(token, q)?)
            .await?
            .into_inner())
    }

    pub async fn offer_slack_link(&self, token: &Token) -> Result<proto::SlackLinkOffer, ApiError> {
        let q = proto::OfferSlackLinkRequest {};
        Ok(self
            .client()
            .offer_slack_link(Self::unary(token, q)?)
            .await?
            .into_inner())
    }

    pub async fn list_slack_links(&self, token: &Token) -> Result<Vec<proto::SlackLinkView>, ApiError> {
        let q = proto::ListSlackLinksRequest {};
        Ok(self
            .client()
            .list_slack_links(Self::unary(token, q)?)
            .await?
            .into_inner()
            .links)
    }

    /// Relays a ticket typed in Slack by `slack` (the relay's own token).
    pub async fn link_slack(
        &self,
        token: &Token,
        slack: proto::SlackUser,
        ticket: &str,
    ) -> Result<proto::SlackLinkView, ApiError> {
        let q = proto::LinkSlackRequest {
            slack: Some(slack),
            ticket: ticket.to_owned(),
        };
        Ok(self
            .client()
            .link_slack(Self::unary(token, q)?)
            .await?
            .into_inner())
    }

    pub async fn unlink_slack(
        &self,
        token: &Token,
        slack: proto::SlackUser,
        reason: &str,
    ) -> Result<proto::SlackLinkView, ApiError> {
        let q = proto::UnlinkSlackRequest {
            slack: Some(slack),
            reason: reason.to_owned(),
        };
        Ok(self
            .client()
            .unlink_slack(Self::unary(token, q)?)
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
        Ok(self.client().watch(authed(token, q)?).await?.into_inner())
    }

    pub async fn list_sessions(
        &self,
        token: &Token,
        q: proto::ListSessionsRequest,
    ) -> Result<proto::ListSessionsResponse, ApiError> {
        Ok(self
            .client()
            .list_sessions(Self::unary(token, q)?)
            .await?
            .into_inner())
    }

    pub async fn get_session(&self, token: &Token, id: &str) -> Result<proto::SessionView, ApiError> {
        let q = proto::GetSessionRequest {
            session_id: id.to_owned(),
        };
        Ok(self
            .client()
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
            .client()
            .kill_session(Self::unary(token, q)?)
            .await?
            .into_inner())
    }

    pub async fn list_grants(
        &self,
        token: &Token,
        states: Vec<i32>,
    ) -> Result<proto::ListGrantsResponse, ApiError> {
        let q = proto::ListGrantsRequest { states };
        Ok(self
            .client()
            .list_grants(Self::unary(token, q)?)
            .await?
            .into_inner())
    }

    pub async fn get_grant(&self, token: &Token, id: &str) -> Result<proto::GrantView, ApiError> {
        let q = proto::GetGrantRequest {
            grant_id: id.to_owned(),
        };
        Ok(self
            .client()
            .get_grant(Self::unary(token, q)?)
            .await?
            .into_inner())
    }

    pub async fn revoke_grant(
        &self,
        token: &Token,
        id: &str,
        reason: String,
    ) -> Result<proto::GrantView, ApiError> {
        let q = proto::RevokeGrantRequest {
            grant_id: id.to_owned(),
            reason,
        };
        Ok(self
            .client()
            .revoke_grant(Self::unary(token, q)?)
            .await?
            .into_inner())
    }
}
