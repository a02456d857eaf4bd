//! `AuditService`: the log from a sequence, filtered, then live. Auditors
//! read all of it; reviewers only the events of the requests and sessions
//! they may see (`crate::access`); nobody else any.

use std::collections::HashMap;
use std::pin::Pin;

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{ReadFilter, StoredEvent};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use airlock_eventlog::subjects::{SubjectKind, classify};

use crate::access::{Caller, requests_named};
use crate::live::Live;

use super::{Control, log_status};

#[tonic::async_trait]
impl proto::audit_service_server::AuditService for Control {
    type SubscribeStream = ReceiverStream<Result<proto::LogEvent, Status>>;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = self.reader(&request).await?;
        let scope = (!caller.auditor).then(|| ReviewerScope::new(caller));
        let q = request.into_inner();
        let filter = ReadFilter {
            subjects: q.subjects.clone(),
        };
        let stream: Pin<
            Box<dyn futures::Stream<Item = Result<StoredEvent, airlock_eventlog::Error>> + Send>,
        > = if q.stop_at_end {
            Box::pin(
                self.log
                    .read(q.start_sequence, filter)
                    .await
                    .map_err(log_status)?,
            )
        } else {
            Box::pin(
                self.log
                    .tail(q.start_sequence, filter)
                    .await
                    .map_err(log_status)?,
            )
        };
        let (tx, rx) = mpsc::channel(256);
        let live = self.live.clone();
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            let mut scope = scope;
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
                        // The scope first: it learns from every event it passes.
                        if scope.as_mut().is_some_and(|f| !f.matches(&live, &e))
                            || (!q.kinds.is_empty() && !q.kinds.iter().any(wanted))
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
                    Err(e) => Err(log_status(e)),
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

/// What a reviewer may read of the log: the events of the requests whose
/// groups include theirs, and of the sessions they may see, each event of
/// which must also name only such requests. A request's groups are learnt
/// from its `ApprovalRequested` as the stream passes it (the fold may not
/// have it yet), or else looked up in the fold; an unknown request is
/// nobody's. Fleet events (`PolicyLoaded`) and checkpoints are for
/// auditors.
struct ReviewerScope {
    caller: Caller,
    /// Requests passed on the stream: whether the caller may see them.
    requests: HashMap<String, bool>,
    /// Requests passed on the stream, by the session that filed them.
    filed: HashMap<String, Vec<String>>,
}

impl ReviewerScope {
    fn new(caller: Caller) -> ReviewerScope {
        ReviewerScope {
            caller,
            requests: HashMap::new(),
            filed: HashMap::new(),
        }
    }

    fn request(&self, state: &crate::projection::Projection, id: &str) -> bool {
        match self.requests.get(id) {
            Some(known) => *known,
            None => self.caller.may_read_request_id(state, id),
        }
    }

    fn session(&self, state: &crate::projection::Projection, id: &str) -> bool {
        let folded = state.session_requests.get(id).into_iter().flatten();
        let passed = self.filed.get(id).into_iter().flatten();
        self.caller
            .reviews_session_with(folded.chain(passed).map(|r| self.request(state, r)))
    }

    fn matches(&mut self, live: &Live, stored: &StoredEvent) -> bool {
        let e = &stored.event;
        if let Some(Body::ApprovalRequested(r)) = &e.body {
            let mine = self.caller.may_read_request(r);
            self.requests.insert(e.request_id.clone(), mine);
            self.filed
                .entry(e.session_id.clone())
                .or_default()
                .push(e.request_id.clone());
            return mine;
        }
        live.read(|state| match classify(&stored.subject) {
            // A grant is its request's: whoever may read one reads both.
            SubjectKind::Request(id) | SubjectKind::Decision(id) | SubjectKind::Grant(id) => {
                self.request(state, &id)
            }
            SubjectKind::Session(id) => {
                self.session(state, &id) && requests_named(e).into_iter().all(|r| self.request(state, r))
            }
            // Who is linked to whom in Slack: not for every reader.
            SubjectKind::SlackLink(..)
            | SubjectKind::Proxy(_)
            | SubjectKind::Checkpoint
            | SubjectKind::Other => false,
        })
    }
}
