//! What a reviewer does through the control plane's gRPC API: list what is
//! pending, approve or deny. The same on both kinds of stack; a client over
//! TLS works as well as the stacks' plain ones.

use std::time::Duration;

use airlock_eventlog::proto;

use crate::eventually;

pub type ReviewerClient = proto::reviewer_service_client::ReviewerServiceClient<tonic::transport::Channel>;

/// Connects a reviewer's client to the control plane at `url`.
pub async fn connect(url: String) -> ReviewerClient {
    ReviewerClient::connect(url).await.expect("the reviewer connects")
}

/// A gRPC request with a reviewer's bearer token.
pub fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// A vote on `request_id`, not pinned to a statement digest.
pub fn vote(request_id: &str, decision: proto::Decision, reason: &str) -> proto::DecideRequest {
    proto::DecideRequest {
        request_id: request_id.to_owned(),
        decision: decision as i32,
        reason: reason.to_owned(),
        statement_sha256: vec![],
        max_rows: vec![],
        scope: None,
        break_glass: false,
        slack: None,
    }
}

/// Casts `vote` as the holder of `token`.
pub async fn decide(
    client: &mut ReviewerClient,
    token: &str,
    vote: proto::DecideRequest,
) -> Result<proto::DecideResponse, tonic::Status> {
    client.decide(authed(token, vote)).await.map(|r| r.into_inner())
}

/// The first pending request, as `token` may see it, whose statement text
/// satisfies `matches`; waits (ten seconds at most) for the control plane to
/// list it.
pub async fn pending(
    client: &mut ReviewerClient,
    token: &str,
    matches: impl Fn(&str) -> bool,
) -> proto::RequestView {
    let text = |v: &proto::RequestView| {
        v.request
            .as_ref()
            .and_then(|r| r.statement.as_ref())
            .map(|s| s.text.clone())
            .unwrap_or_default()
    };
    eventually("a pending request to match", Duration::from_secs(10), || {
        let (mut client, matches) = (client.clone(), &matches);
        async move {
            let listed = client
                .list_requests(authed(
                    token,
                    proto::ListRequestsRequest {
                        states: vec![proto::RequestState::Pending as i32],
                        ..Default::default()
                    },
                ))
                .await
                .map_err(|s| vec![format!("{s:?}")])?
                .into_inner()
                .requests;
            listed
                .iter()
                .find(|v| matches(&text(v)))
                .cloned()
                .ok_or_else(|| listed.iter().map(text).collect::<Vec<_>>())
        }
    })
    .await
}
