//! The control plane's gRPC services: `ReviewerService` (list, get, decide,
//! watch, sessions, kill), `ProxyService` (`Attach`: decisions and kills to
//! the proxies holding them) and `AuditService` (the log, then live).
//!
//! Every error leaves through [`status`], which logs the full reason and
//! sets a stable `airlock-error` code in the metadata for integrators.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{EventLog, ReadFilter, SessionId, StoredEvent, new_event, subjects};
use futures::StreamExt;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::act::{self, VoteError};
use crate::decide::{DecideError, Vote, in_reviewer_groups};
use crate::live::Live;
use crate::projection::Request as RequestState;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Verifies a reviewer's bearer token. The real one is the identity crate's
/// verifier; tests use a table.
pub trait ReviewerAuth: Send + Sync + 'static {
    /// The identity the token belongs to, or why it is refused (never
    /// containing the token).
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<proto::Identity, String>>;
}

/// Everything the services share.
#[derive(Clone)]
pub struct Control {
    pub live: Arc<Live>,
    pub log: EventLog,
    pub auth: Arc<dyn ReviewerAuth>,
    pub source: proto::Source,
    /// Reviewer groups (`approvals.reviewers`, by name and object id):
    /// their members may read records and kill sessions.
    pub kill_groups: Vec<String>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The error -> status table (see the house style's error table).
fn status(code: &'static str, grpc: tonic::Code, message: String) -> Status {
    tracing::info!(code, %message, "request refused");
    let mut s = Status::new(grpc, message);
    s.metadata_mut()
        .insert("airlock-error", tonic::metadata::MetadataValue::from_static(code));
    s
}

fn decide_status(e: DecideError) -> Status {
    let (code, grpc) = match &e {
        DecideError::UnknownRequest(_) => ("not_found", tonic::Code::NotFound),
        DecideError::AlreadyDecided { .. } => ("already_decided", tonic::Code::FailedPrecondition),
        DecideError::Expired { .. } => ("expired", tonic::Code::FailedPrecondition),
        DecideError::AppIdentity { .. } => ("app_identity", tonic::Code::PermissionDenied),
        DecideError::SelfApproval { .. } => ("self_approval", tonic::Code::PermissionDenied),
        DecideError::NotAReviewer { .. } => ("not_a_reviewer", tonic::Code::PermissionDenied),
        DecideError::AlreadyVoted { .. } => ("already_voted", tonic::Code::FailedPrecondition),
        DecideError::DigestMismatch { .. } => ("digest_mismatch", tonic::Code::FailedPrecondition),
        DecideError::NoDecision => ("invalid_argument", tonic::Code::InvalidArgument),
    };
    status(code, grpc, e.to_string())
}

fn vote_status(e: VoteError) -> Status {
    match e {
        VoteError::Refused(d) => decide_status(d),
        VoteError::Log(l) => status("unavailable", tonic::Code::Unavailable, format!("event log: {l}")),
        VoteError::Lagging | VoteError::Contended => {
            status("unavailable", tonic::Code::Unavailable, e.to_string())
        }
    }
}

impl Control {
    /// The verified caller, who must be in one of the reviewer groups
    /// (`approvals.reviewers`): records of sessions and requests are not for
    /// agents or anyone else. Deciding checks the request's own groups too.
    async fn reviewer<T>(&self, request: &Request<T>) -> Result<proto::Identity, Status> {
        let identity = self.caller(request).await?;
        let member = identity.groups.iter().any(|g| {
            self.kill_groups
                .iter()
                .any(|k| *k == g.id || (!g.name.is_empty() && *k == g.name))
        });
        if !member {
            let who = if identity.display_name.is_empty() {
                identity.subject.clone()
            } else {
                identity.display_name.clone()
            };
            return Err(status(
                "not_a_reviewer",
                tonic::Code::PermissionDenied,
                format!("{who} is not in a reviewer group"),
            ));
        }
        Ok(identity)
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<proto::Identity, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                status(
                    "unauthenticated",
                    tonic::Code::Unauthenticated,
                    "no bearer token".into(),
                )
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                status(
                    "unauthenticated",
                    tonic::Code::Unauthenticated,
                    "authorization is not a bearer token".into(),
                )
            })?;
        self.auth.verify(token.trim()).await.map_err(|why| {
            status(
                "unauthenticated",
                tonic::Code::Unauthenticated,
                format!("token refused: {why}"),
            )
        })
    }

    fn ready(&self) -> Result<(), Status> {
        if self.live.is_ready() {
            Ok(())
        } else {
            Err(status(
                "unavailable",
                tonic::Code::Unavailable,
                "this replica is still catching up with the log".into(),
            ))
        }
    }
}

fn state_filter(states: &[i32]) -> impl Fn(&RequestState) -> bool + '_ {
    move |r| states.is_empty() || states.contains(&r.view.state)
}

#[tonic::async_trait]
impl proto::reviewer_service_server::ReviewerService for Control {
    async fn list_requests(
        &self,
        request: Request<proto::ListRequestsRequest>,
    ) -> Result<Response<proto::ListRequestsResponse>, Status> {
        let caller = self.reviewer(&request).await?;
        self.ready()?;
        let q = request.into_inner();
        let page_size = if q.page_size == 0 {
            100
        } else {
            q.page_size.min(1000)
        } as usize;
        let keep = state_filter(&q.states);
        let (requests, next) = self.live.read(|s| {
            // Newest first; the page token is the last id of the page before.
            let mut out = Vec::new();
            let mut next = String::new();
            for (id, r) in s.requests.iter().rev() {
                if !q.page_token.is_empty() && id.as_str() >= q.page_token.as_str() {
                    continue;
                }
                let asked = r.requested();
                // Reviewers see only requests their groups may review.
                if !keep(r)
                    || !in_reviewer_groups(&caller, asked)
                    || (!q.connection.is_empty()
                        && asked.connection.as_ref().map(|c| c.name.as_str()) != Some(q.connection.as_str()))
                    || (!q.reviewer_group.is_empty()
                        && !asked
                            .reviewer_groups
                            .iter()
                            .any(|g| g.id == q.reviewer_group || g.name == q.reviewer_group))
                {
                    continue;
                }
                if out.len() == page_size {
                    next = out
                        .last()
                        .map(|v: &proto::RequestView| v.request_id.clone())
                        .unwrap_or_default();
                    break;
                }
                out.push(r.view.clone());
            }
            (out, next)
        });
        Ok(Response::new(proto::ListRequestsResponse {
            requests,
            next_page_token: next,
        }))
    }

    async fn get_request(
        &self,
        request: Request<proto::GetRequestRequest>,
    ) -> Result<Response<proto::RequestView>, Status> {
        let caller = self.reviewer(&request).await?;
        let id = request.into_inner().request_id;
        let found = self.live.read(|s| {
            s.request(&id)
                .map(|r| (in_reviewer_groups(&caller, r.requested()), r.view.clone()))
        });
        match found {
            Some((true, view)) => Ok(Response::new(view)),
            // Another group's request: refused as its vote would be.
            Some((false, view)) => {
                let groups = view
                    .request
                    .as_ref()
                    .map(|r| {
                        r.reviewer_groups
                            .iter()
                            .map(|g| {
                                if g.name.is_empty() {
                                    g.id.clone()
                                } else {
                                    g.name.clone()
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                let who = if caller.display_name.is_empty() {
                    caller.subject.clone()
                } else {
                    caller.display_name.clone()
                };
                Err(decide_status(DecideError::NotAReviewer { who, groups }))
            }
            None => Err(decide_status(DecideError::UnknownRequest(id))),
        }
    }

    async fn decide(
        &self,
        request: Request<proto::DecideRequest>,
    ) -> Result<Response<proto::DecideResponse>, Status> {
        let reviewer = self.reviewer(&request).await?;
        self.ready()?;
        let q = request.into_inner();
        let vote = Vote {
            request_id: q.request_id.clone(),
            reviewer,
            decision: proto::Decision::try_from(q.decision).unwrap_or(proto::Decision::Unspecified),
            reason: q.reason,
            statement_sha256: (!q.statement_sha256.is_empty()).then_some(q.statement_sha256),
        };
        let voted = act::vote(&self.live, &self.log, &vote, &self.source)
            .await
            .map_err(vote_status)?;
        let view = self
            .live
            .read(|s| s.request(&q.request_id).map(|r| r.view.clone()));
        Ok(Response::new(proto::DecideResponse {
            request: view,
            event_id: voted.event_id,
            sequence: voted.sequence,
        }))
    }

    type WatchStream = ReceiverStream<Result<proto::WatchEvent, Status>>;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = self.reviewer(&request).await?;
        let q = request.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let mut changes = self.live.subscribe();
        let live = self.live.clone();
        // Catch-up first: views changed after the client's last sequence.
        let backlog: Vec<proto::RequestView> = if q.after_sequence > 0 {
            live.read(|s| {
                let mut v: Vec<_> = s
                    .requests
                    .values()
                    .filter(|r| r.view.sequence > q.after_sequence)
                    .filter(|r| state_filter(&q.states)(r))
                    .filter(|r| in_reviewer_groups(&caller, r.requested()))
                    .map(|r| r.view.clone())
                    .collect();
                v.sort_by_key(|r| r.sequence);
                v
            })
        } else {
            Vec::new()
        };
        tokio::spawn(async move {
            for view in backlog {
                let sequence = view.sequence;
                let item = proto::WatchEvent {
                    request: Some(view),
                    event: None,
                    sequence,
                };
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
            loop {
                let event = match changes.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "watcher fell {n} events behind; resume with after_sequence"
                            ))))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if event.event.request_id.is_empty() || !event.subject.starts_with("airlock.v1.request.") {
                    continue;
                }
                let view = live.read(|s| {
                    s.request(&event.event.request_id)
                        .filter(|r| in_reviewer_groups(&caller, r.requested()))
                        .map(|r| r.view.clone())
                });
                let Some(view) = view else { continue };
                if !q.states.is_empty() && !q.states.contains(&view.state) {
                    continue;
                }
                let item = proto::WatchEvent {
                    request: Some(view),
                    event: Some(event.event.clone()),
                    sequence: event.sequence,
                };
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_sessions(
        &self,
        request: Request<proto::ListSessionsRequest>,
    ) -> Result<Response<proto::ListSessionsResponse>, Status> {
        self.reviewer(&request).await?;
        let q = request.into_inner();
        let page_size = if q.page_size == 0 {
            100
        } else {
            q.page_size.min(1000)
        } as usize;
        let mut sessions = self.live.read(|s| {
            s.sessions
                .values()
                .filter(|x| q.states.is_empty() || q.states.contains(&x.summary.state))
                .filter(|x| {
                    q.connection.is_empty()
                        || x.summary.connection.as_ref().map(|c| c.name.as_str())
                            == Some(q.connection.as_str())
                })
                .filter(|x| {
                    q.subject.is_empty()
                        || x.summary.identity.as_ref().map(|i| i.subject.as_str()) == Some(q.subject.as_str())
                })
                .map(|x| x.summary.clone())
                .collect::<Vec<_>>()
        });
        sessions.sort_by(|a, b| b.session_id.cmp(&a.session_id));
        let start = if q.page_token.is_empty() {
            0
        } else {
            sessions
                .iter()
                .position(|s| s.session_id < q.page_token)
                .unwrap_or(sessions.len())
        };
        let page: Vec<_> = sessions.into_iter().skip(start).take(page_size + 1).collect();
        let next = if page.len() > page_size {
            page[page_size - 1].session_id.clone()
        } else {
            String::new()
        };
        Ok(Response::new(proto::ListSessionsResponse {
            sessions: page.into_iter().take(page_size).collect(),
            next_page_token: next,
        }))
    }

    async fn get_session(
        &self,
        request: Request<proto::GetSessionRequest>,
    ) -> Result<Response<proto::SessionView>, Status> {
        self.reviewer(&request).await?;
        let id = request.into_inner().session_id;
        let sid = SessionId::parse(&id)
            .map_err(|e| status("invalid_argument", tonic::Code::InvalidArgument, e.to_string()))?;
        let (summary, request_ids) = self
            .live
            .read(|s| {
                s.sessions
                    .get(&id)
                    .map(|x| (x.summary.clone(), x.request_ids.clone()))
            })
            .ok_or_else(|| status("not_found", tonic::Code::NotFound, format!("no session {id}")))?;
        let log_err = |e: airlock_eventlog::Error| {
            status("unavailable", tonic::Code::Unavailable, format!("event log: {e}"))
        };
        let mut timeline: Vec<StoredEvent> = self
            .log
            .read_subject(&subjects::session(&sid))
            .await
            .map_err(log_err)?;
        let mut requests = Vec::new();
        for rid in &request_ids {
            if let Ok(r) = airlock_eventlog::RequestId::parse(rid) {
                timeline.extend(
                    self.log
                        .read_subject(&subjects::request(&r))
                        .await
                        .map_err(log_err)?,
                );
            }
            if let Some(v) = self.live.read(|s| s.request(rid).map(|r| r.view.clone())) {
                requests.push(v);
            }
        }
        timeline.sort_by_key(|e| e.sequence);
        Ok(Response::new(proto::SessionView {
            summary: Some(summary),
            // Statements recorded together are shown one by one, each at
            // the sequence of the event that holds it.
            timeline: timeline
                .into_iter()
                .flat_map(|e| {
                    airlock_eventlog::split_group(&e.event)
                        .into_iter()
                        .map(move |single| proto::RecordedEvent {
                            sequence: e.sequence,
                            subject: e.subject.clone(),
                            event: Some(single),
                        })
                })
                .collect(),
            requests,
        }))
    }

    async fn kill_session(
        &self,
        request: Request<proto::KillSessionRequest>,
    ) -> Result<Response<proto::KillSessionResponse>, Status> {
        let reviewer = self.reviewer(&request).await?;
        if reviewer.kind != proto::identity::Kind::User as i32 {
            return Err(decide_status(DecideError::AppIdentity {
                who: reviewer.display_name.clone(),
            }));
        }
        if !reviewer.groups.iter().any(|g| {
            self.kill_groups
                .iter()
                .any(|k| *k == g.id || (!g.name.is_empty() && *k == g.name))
        }) {
            return Err(status(
                "not_a_reviewer",
                tonic::Code::PermissionDenied,
                format!(
                    "{} is not in a group allowed to kill sessions",
                    reviewer.display_name
                ),
            ));
        }
        let q = request.into_inner();
        let sid = SessionId::parse(&q.session_id)
            .map_err(|e| status("invalid_argument", tonic::Code::InvalidArgument, e.to_string()))?;
        let proxy_id = self
            .live
            .read(|s| s.sessions.get(sid.as_str()).map(|x| x.summary.proxy_id.clone()))
            .ok_or_else(|| status("not_found", tonic::Code::NotFound, format!("no session {sid}")))?;
        let mut event = new_event(
            &self.source,
            Body::SessionKillRequested(proto::SessionKillRequested {
                requested_by: Some(reviewer),
                reason: q.reason,
                proxy_id,
            }),
        );
        event.session_id = sid.to_string();
        let subject = subjects::session(&sid);
        let mut last = None;
        for _ in 0..5 {
            match self.log.append_next(&subject, event.clone()).await {
                Ok((appended, e)) => {
                    last = Some((appended, e));
                    break;
                }
                Err(airlock_eventlog::Error::Conflict { .. }) => continue,
                Err(e) => {
                    return Err(status(
                        "unavailable",
                        tonic::Code::Unavailable,
                        format!("event log: {e}"),
                    ));
                }
            }
        }
        let (appended, e) = last.ok_or_else(|| {
            status(
                "unavailable",
                tonic::Code::Unavailable,
                "session kept changing".into(),
            )
        })?;
        Ok(Response::new(proto::KillSessionResponse {
            event_id: e.id,
            sequence: appended.sequence,
        }))
    }
}

/// What a proxy holds, per Attach stream.
#[derive(Debug, Default)]
struct Holdings {
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
        let mut inbound = request.into_inner();
        let hello = match inbound.next().await {
            Some(Ok(proto::ProxyMessage {
                message: Some(In::Hello(h)),
            })) => h,
            _ => {
                return Err(status(
                    "invalid_argument",
                    tonic::Code::InvalidArgument,
                    "the first message on Attach must be Hello".into(),
                ));
            }
        };
        self.ready()?;
        let (tx, rx) = mpsc::channel(256);
        // Subscribe before reading state, so no outcome falls in between.
        let mut changes = self.live.subscribe();
        let live = self.live.clone();
        let replica = self.source.id.clone();
        tracing::info!(proxy = %hello.proxy_id, held = hello.held.len(), "proxy attached");
        tokio::spawn(async move {
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
            let mut heartbeat = tokio::time::interval(HEARTBEAT);
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
            .filter_map(|id| s.request(id).and_then(|r| notice(r, "")))
            .collect();
        let kills = held
            .sessions
            .iter()
            .filter(|id| !held.killed.contains(*id))
            .filter_map(|id| s.sessions.get(id)?.kill.as_ref().map(|k| k.order.clone()))
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

async fn forward(live: &Live, held: &mut Holdings, event: &StoredEvent, tx: &Tx) -> bool {
    let e = &event.event;
    match &e.body {
        Some(
            Body::ApprovalGranted(_)
            | Body::ApprovalDenied(_)
            | Body::ApprovalExpired(_)
            | Body::ApprovalCancelled(_),
        ) if held.requests.contains_key(&e.request_id) => {
            if let Some(n) = live.read(|s| s.request(&e.request_id).and_then(|r| notice(r, &e.id))) {
                held.requests.remove(&e.request_id);
                return tx
                    .send(Ok(control(proto::control_message::Message::Decision(n))))
                    .await
                    .is_ok();
            }
            true
        }
        // Sessions opened after the proxy attached are known from the log:
        // the kill names the proxy its SessionOpened named.
        Some(Body::SessionKillRequested(k))
            if held.sessions.contains(&e.session_id)
                || (!k.proxy_id.is_empty() && k.proxy_id == held.proxy_id) =>
        {
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

#[tonic::async_trait]
impl proto::audit_service_server::AuditService for Control {
    type SubscribeStream = ReceiverStream<Result<proto::LogEvent, Status>>;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.reviewer(&request).await?;
        let q = request.into_inner();
        let filter = ReadFilter {
            subjects: q.subjects.clone(),
        };
        let log_err = |e: airlock_eventlog::Error| {
            status("unavailable", tonic::Code::Unavailable, format!("event log: {e}"))
        };
        let stream: Pin<
            Box<dyn futures::Stream<Item = Result<StoredEvent, airlock_eventlog::Error>> + Send>,
        > = if q.stop_at_end {
            Box::pin(self.log.read(q.start_sequence, filter).await.map_err(log_err)?)
        } else {
            Box::pin(self.log.tail(q.start_sequence, filter).await.map_err(log_err)?)
        };
        let (tx, rx) = mpsc::channel(256);
        let live = self.live.clone();
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            let mut by_identity = (!q.identity.is_empty()).then(|| IdentityFilter::new(&q.identity));
            while let Some(item) = stream.next().await {
                let out = match item {
                    Ok(e) => {
                        let kind = e
                            .event
                            .body
                            .as_ref()
                            .map(airlock_eventlog::body_kind)
                            .unwrap_or("");
                        // Asking for statement_executed also gets the
                        // statements recorded together.
                        let wanted = |k: &String| {
                            k == kind || (k == "statement_executed" && kind == "statements_executed")
                        };
                        if (!q.kinds.is_empty() && !q.kinds.iter().any(wanted))
                            || (!q.session_id.is_empty() && e.event.session_id != q.session_id)
                            || (!q.request_id.is_empty() && e.event.request_id != q.request_id)
                            || by_identity.as_mut().is_some_and(|f| !f.matches(&live, &e))
                        {
                            continue;
                        }
                        let stored_at = prost_types::Timestamp {
                            seconds: e.stored_at.unix_timestamp(),
                            nanos: e.stored_at.nanosecond() as i32,
                        };
                        Ok(proto::LogEvent {
                            sequence: e.sequence,
                            subject: e.subject,
                            stored_at: Some(stored_at),
                            event: Some(e.event),
                            raw: e.raw.to_vec(),
                        })
                    }
                    Err(e) => Err(Status::unavailable(format!("event log: {e}"))),
                };
                let stop = out.is_err();
                if tx.send(out).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The audit stream's identity filter: an identity's sessions and requests
/// are learnt from the events that open them as the stream passes them, and
/// looked up in the projection for those opened before the stream started.
struct IdentityFilter {
    subject: String,
    /// Session and request ids, and whether they belong to the identity.
    sessions: HashMap<String, bool>,
    requests: HashMap<String, bool>,
}

impl IdentityFilter {
    fn new(subject: &str) -> IdentityFilter {
        IdentityFilter {
            subject: subject.to_owned(),
            sessions: HashMap::new(),
            requests: HashMap::new(),
        }
    }

    fn is(&self, who: Option<&proto::Identity>) -> bool {
        who.is_some_and(|i| i.subject == self.subject)
    }

    fn session(&mut self, live: &Live, id: &str) -> bool {
        if id.is_empty() {
            return false;
        }
        if let Some(known) = self.sessions.get(id) {
            return *known;
        }
        let mine = live.read(|s| {
            s.sessions.get(id).is_some_and(|x| {
                x.summary
                    .identity
                    .as_ref()
                    .is_some_and(|i| i.subject == self.subject)
            })
        });
        self.sessions.insert(id.to_owned(), mine);
        mine
    }

    fn request(&mut self, live: &Live, id: &str) -> bool {
        if id.is_empty() {
            return false;
        }
        if let Some(known) = self.requests.get(id) {
            return *known;
        }
        let mine = live.read(|s| {
            s.request(id).is_some_and(|r| {
                r.requested()
                    .identity
                    .as_ref()
                    .is_some_and(|i| i.subject == self.subject)
            })
        });
        self.requests.insert(id.to_owned(), mine);
        mine
    }

    fn matches(&mut self, live: &Live, stored: &StoredEvent) -> bool {
        let e = &stored.event;
        match &e.body {
            Some(Body::SessionOpened(o)) => {
                let mine = self.is(o.identity.as_ref());
                self.sessions.insert(e.session_id.clone(), mine);
                mine
            }
            Some(Body::ApprovalRequested(r)) => {
                let mine = self.is(r.identity.as_ref());
                self.requests.insert(e.request_id.clone(), mine);
                mine
            }
            Some(Body::ApprovalVoted(v)) if self.is(v.reviewer.as_ref()) => true,
            Some(Body::SessionKillRequested(k)) if self.is(k.requested_by.as_ref()) => true,
            _ => self.session(live, &e.session_id) || self.request(live, &e.request_id),
        }
    }
}
