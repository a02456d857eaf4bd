//! `ProxyService`: the `Attach` stream each proxy keeps, carrying decisions
//! and kill orders for what it holds.
//!
//! Who may attach, and as which proxy id, is `proxy_auth`'s. Whatever a
//! proxy announces, its stream carries only what the log says is its own:
//! the outcome of a request whose `ApprovalRequested` names its proxy id,
//! the kill order of a session whose `SessionOpened` does.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{ProxyId, StoredEvent};
use futures::StreamExt;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use airlock_proto::ErrorCode;

use crate::live::Live;
use crate::projection::{Projection, Request as RequestState};

use super::proxy_auth::Peer;
use super::{Control, status};

/// What a proxy holds, per Attach stream.
#[derive(Debug, Default)]
struct Holdings {
    /// Authenticated by `proxy_auth`: only this proxy's requests and
    /// sessions are told on the stream.
    proxy_id: String,
    requests: HashMap<String, String>,
    sessions: HashSet<String>,
    /// Sessions a kill order was sent for on this stream (sent once).
    killed: HashSet<String>,
}

/// The notice for a request that has ended, if it has.
fn notice(r: &RequestState, event_id: &str) -> Option<proto::DecisionNotice> {
    use proto::decision_notice::Outcome;
    let outcome = match r.state() {
        proto::RequestState::Granted => Outcome::Granted,
        proto::RequestState::Denied => Outcome::Denied,
        proto::RequestState::Expired => Outcome::Expired,
        proto::RequestState::Cancelled => Outcome::Cancelled,
        proto::RequestState::Pending | proto::RequestState::Unspecified => return None,
    };
    let approvers = r
        .view
        .votes
        .iter()
        .filter(|v| v.decision == proto::Decision::Approve as i32)
        .map(|v| proto::Approver {
            reviewer: v.reviewer.clone(),
            reason: v.reason.clone(),
            time: v.time,
        })
        .collect();
    let decided_by = r
        .view
        .votes
        .iter()
        .find(|v| v.decision == proto::Decision::Deny as i32)
        .and_then(|v| v.reviewer.clone());
    Some(proto::DecisionNotice {
        request_id: r.view.request_id.clone(),
        session_id: r.view.session_id.clone(),
        outcome: outcome as i32,
        statement_sha256: r
            .requested()
            .statement
            .as_ref()
            .map(|s| s.sha256.clone())
            .unwrap_or_default(),
        approvers,
        decided_by,
        reason: r.view.outcome_reason.clone(),
        event_id: event_id.to_owned(),
        sequence: r.view.sequence,
    })
}

fn control(m: proto::control_message::Message) -> proto::ControlMessage {
    proto::ControlMessage { message: Some(m) }
}

/// How long a replica that cannot reach the log keeps a proxy's stream:
/// well under `control.proxy_lost_after`, so the proxy is attached
/// elsewhere before the other replicas take it for lost.
const LET_GO_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Heartbeat period announced to proxies.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

#[tonic::async_trait]
impl proto::proxy_service_server::ProxyService for Control {
    type AttachStream = ReceiverStream<Result<proto::ControlMessage, Status>>;

    async fn attach(
        &self,
        request: Request<tonic::Streaming<proto::ProxyMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        use proto::proxy_message::Message as In;
        let peer = Peer::of(&request);
        peer.admit(self.attach)?;
        let mut inbound = request.into_inner();
        let hello = match inbound.next().await {
            Some(Ok(proto::ProxyMessage {
                message: Some(In::Hello(h)),
            })) => h,
            _ => {
                return Err(status(
                    ErrorCode::InvalidArgument,
                    "the first message on Attach must be Hello",
                ));
            }
        };
        ProxyId::parse(&hello.proxy_id)
            .map_err(|e| status(ErrorCode::InvalidArgument, format!("Hello's proxy_id: {e}")))?;
        peer.may_be(self.attach, &hello.proxy_id)?;
        self.ready()?;
        if !self.live.log_reachable() {
            // It could neither decide nor tell decisions, and would not be
            // announced: the proxy is better off at another replica.
            return Err(status(
                ErrorCode::Unavailable,
                "this replica cannot reach the event log; attach to another",
            ));
        }
        let (tx, rx) = mpsc::channel(256);
        // Subscribe before reading state, so no outcome falls in between.
        let mut changes = self.live.subscribe();
        let live = self.live.clone();
        let replica = self.source.id.clone();
        tracing::info!(proxy = %hello.proxy_id, instance = %hello.instance, held = hello.held.len(), "proxy attached");
        // This run is alive while the stream lasts (and a little after:
        // see `presence`).
        let alive = self
            .presence
            .attach(crate::presence::Run {
                proxy: hello.proxy_id.clone(),
                instance: hello.instance.clone(),
            })
            .map_err(|e| status(ErrorCode::InvalidArgument, e.to_string()))?;
        tokio::spawn(async move {
            let _alive = alive;
            let mut held = Holdings {
                proxy_id: hello.proxy_id.clone(),
                ..Holdings::default()
            };
            for h in hello.held {
                held.requests.insert(h.request_id, h.session_id);
            }
            held.sessions.extend(hello.session_ids);
            let welcome = control(proto::control_message::Message::Welcome(proto::Welcome {
                replica_id: replica,
                heartbeat_interval: prost_types::Duration::try_from(HEARTBEAT).ok(),
            }));
            if tx.send(Ok(welcome)).await.is_err() {
                return;
            }
            // Decisions made while the proxy was away.
            if !send_decided(&live, &mut held, &tx).await {
                return;
            }
            // Every live grant: any proxy may serve the identity it is for.
            let grants: Vec<proto::GrantNotice> = live.read(|s| {
                s.grants
                    .values()
                    .filter(|g| g.is_active())
                    .map(grant_notice)
                    .collect()
            });
            for g in grants {
                if tx
                    .send(Ok(control(proto::control_message::Message::Grant(g))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let mut heartbeat = tokio::time::interval(HEARTBEAT);
            // Since when this replica has not reached the log: it can
            // neither decide nor tell decisions, and the other replicas
            // soon take the proxy for lost. It lets the proxy go, to
            // attach to a replica that can.
            let mut unreachable_since: Option<tokio::time::Instant> = None;
            loop {
                tokio::select! {
                    msg = inbound.next() => match msg {
                        Some(Ok(proto::ProxyMessage { message: Some(m) })) => match m {
                            In::Holding(h) => {
                                if let Some(h) = h.held {
                                    held.sessions.insert(h.session_id.clone());
                                    held.requests.insert(h.request_id, h.session_id);
                                    if !send_decided(&live, &mut held, &tx).await { return; }
                                }
                            }
                            In::Released(r) => {
                                held.requests.remove(&r.request_id);
                                if r.session_closed { held.sessions.remove(&r.session_id); }
                            }
                            In::Heartbeat(_) => {}
                            In::Hello(_) => {}
                        },
                        Some(Ok(proto::ProxyMessage { message: None })) => {}
                        Some(Err(_)) | None => return,
                    },
                    change = changes.recv() => match change {
                        Ok(event) => {
                            if !forward(&live, &mut held, &event, &tx).await { return; }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            // Missed some: re-check everything held.
                            if !send_decided(&live, &mut held, &tx).await { return; }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = heartbeat.tick() => {
                        if live.log_reachable() {
                            unreachable_since = None;
                        } else if unreachable_since.get_or_insert_with(tokio::time::Instant::now).elapsed() >= LET_GO_AFTER {
                            tracing::warn!(proxy = %held.proxy_id, "the event log is unreachable from this replica: ending the proxy's Attach stream so it attaches elsewhere");
                            let _ = tx.send(Err(status(ErrorCode::Unavailable, "this replica cannot reach the event log"))).await;
                            return;
                        }
                        let beat = control(proto::control_message::Message::Heartbeat(proto::Heartbeat {}));
                        if tx.send(Ok(beat)).await.is_err() { return; }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

type Tx = mpsc::Sender<Result<proto::ControlMessage, Status>>;

/// Sends a notice for every held request that has ended, and every kill
/// order still pending for a session the proxy holds (made while it was
/// away, or on another replica's stream). False when the proxy is gone.
async fn send_decided(live: &Live, held: &mut Holdings, tx: &Tx) -> bool {
    let (notices, kills): (Vec<proto::DecisionNotice>, Vec<proto::KillOrder>) = live.read(|s| {
        let notices = held
            .requests
            .keys()
            .filter_map(|id| {
                s.request(id)
                    .filter(|r| held.filed(r))
                    .and_then(|r| notice(r, ""))
            })
            .collect();
        let kills = held
            .sessions
            .iter()
            .filter(|id| !held.killed.contains(*id) && held.opened(s, id))
            .filter_map(|id| {
                let session = s.sessions.get(id)?;
                session
                    .kill
                    .as_ref()
                    .map(|k| k.order.clone())
                    .or_else(|| closed_as_lost(session))
            })
            .collect();
        (notices, kills)
    });
    for k in kills {
        held.killed.insert(k.session_id.clone());
        if tx
            .send(Ok(control(proto::control_message::Message::Kill(k))))
            .await
            .is_err()
        {
            return false;
        }
    }
    for n in notices {
        held.requests.remove(&n.request_id);
        if tx
            .send(Ok(control(proto::control_message::Message::Decision(n))))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

impl Holdings {
    /// Whether this proxy filed request `r` (its `ApprovalRequested`
    /// names it): only then is its outcome told on this stream.
    fn filed(&self, r: &RequestState) -> bool {
        r.requested().proxy_id == self.proxy_id
    }

    /// Whether this proxy opened session `id` (its `SessionOpened` names
    /// it): only then is its kill order sent on this stream.
    fn opened(&self, s: &Projection, id: &str) -> bool {
        s.sessions
            .get(id)
            .is_some_and(|x| x.summary.proxy_id == self.proxy_id)
    }
}

/// The kill order for a session the control plane closed because its
/// proxy seemed gone, if that is how it closed.
fn closed_as_lost(session: &crate::projection::Session) -> Option<proto::KillOrder> {
    let s = &session.summary;
    (s.state == proto::SessionState::Closed as i32
        && s.close_cause == proto::session_closed::Cause::ProxyLost as i32)
        .then(|| proto::KillOrder {
            session_id: s.session_id.clone(),
            requested_by: Some(proto::Identity {
                display_name: "the control plane".to_owned(),
                ..Default::default()
            }),
            reason: "it lost contact with this proxy and closed the session in the log".to_owned(),
            event_id: String::new(),
            sequence: session.last_sequence,
        })
}

/// What a proxy is told of a grant: its GrantIssued as stored, and where
/// its subject stands.
fn grant_notice(g: &crate::projection::Grant) -> proto::GrantNotice {
    let id = &g.view.grant_id;
    proto::GrantNotice {
        grant_id: id.clone(),
        issued: g.issued_raw.clone(),
        issued_sequence: g.issued_sequence,
        subject: airlock_eventlog::RequestId::parse(id)
            .map(|r| airlock_eventlog::subjects::grant(&r))
            .unwrap_or_default(),
        head_sequence: g.head.sequence,
        head_hash: g.head.hash.clone(),
        head_index: g.head.index,
        uses: g.view.uses,
        live: g.is_active(),
    }
}

async fn forward(live: &Live, held: &mut Holdings, event: &StoredEvent, tx: &Tx) -> bool {
    let e = &event.event;
    match &e.body {
        Some(Body::GrantIssued(_) | Body::GrantUsed(_) | Body::GrantRevoked(_) | Body::GrantExpired(_)) => {
            let Some(n) = live.read(|s| s.grants.get(&e.request_id).map(grant_notice)) else {
                return true;
            };
            tx.send(Ok(control(proto::control_message::Message::Grant(n))))
                .await
                .is_ok()
        }
        Some(
            Body::ApprovalGranted(_)
            | Body::ApprovalDenied(_)
            | Body::ApprovalExpired(_)
            | Body::ApprovalCancelled(_),
        ) if held.requests.contains_key(&e.request_id) => {
            let n = live.read(|s| {
                s.request(&e.request_id)
                    .filter(|r| held.filed(r))
                    .and_then(|r| notice(r, &e.id))
            });
            if let Some(n) = n {
                held.requests.remove(&e.request_id);
                return tx
                    .send(Ok(control(proto::control_message::Message::Decision(n))))
                    .await
                    .is_ok();
            }
            true
        }
        // A session the control plane closed while its proxy seemed gone,
        // and that the proxy still has: it ends there too, so the log and
        // the proxy agree that it is over.
        Some(Body::SessionClosed(c))
            if c.cause == proto::session_closed::Cause::ProxyLost as i32
                && !held.killed.contains(&e.session_id) =>
        {
            let Some(order) = live.read(|s| {
                s.sessions
                    .get(&e.session_id)
                    .filter(|_| held.opened(s, &e.session_id))
                    .and_then(closed_as_lost)
            }) else {
                return true;
            };
            held.killed.insert(e.session_id.clone());
            tx.send(Ok(control(proto::control_message::Message::Kill(order))))
                .await
                .is_ok()
        }
        // Sessions opened after the proxy attached are known from the log
        // too: what counts is the proxy their SessionOpened named.
        Some(Body::SessionKillRequested(k)) if live.read(|s| held.opened(s, &e.session_id)) => {
            if !held.killed.insert(e.session_id.clone()) {
                return true;
            }
            let order = proto::KillOrder {
                session_id: e.session_id.clone(),
                requested_by: k.requested_by.clone(),
                reason: k.reason.clone(),
                event_id: e.id.clone(),
                sequence: event.sequence,
            };
            tx.send(Ok(control(proto::control_message::Message::Kill(order))))
                .await
                .is_ok()
        }
        _ => true,
    }
}
