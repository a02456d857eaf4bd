//! `ReviewerService`: list, get, decide and watch requests; list, read and
//! kill sessions. Every call needs a reviewer's or an auditor's token, and
//! shows only what `crate::access` lets the caller see; votes and kills
//! need a reviewer's.

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{ReadFilter, SessionId, StoredEvent, new_event, subjects};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use airlock_proto::ErrorCode;

use crate::access::Caller;
use crate::act;
use crate::decide::{DecideError, Vote};
use crate::projection::Request as RequestState;

use super::{Control, decide_status, log_status, status, vote_status, who};

fn revoke_status(e: crate::grants::RevokeError) -> Status {
    use crate::grants::RevokeError;
    let code = match &e {
        RevokeError::Unknown(_) => ErrorCode::NotFound,
        RevokeError::Ended { .. } => ErrorCode::AlreadyDecided,
        RevokeError::NotAllowed { .. } => ErrorCode::NotAReviewer,
    };
    status(code, e.to_string())
}

/// Page size asked for (0: the default), capped.
fn page_size(asked: u32) -> usize {
    match asked {
        0 => 100,
        n => n.min(1000) as usize,
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
        let caller = self.reader(&request).await?;
        self.ready()?;
        let q = request.into_inner();
        let page_size = page_size(q.page_size);
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
                    || !caller.may_read_request(asked)
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
        // A person may read their own request where its policy allows
        // break-glass (to break glass on it), without the reviewers'
        // groups, sign-in contexts and clients; anyone else must be a
        // reviewer or an auditor.
        let identity = self.caller(&request).await?;
        let id = request.into_inner().request_id;
        let caller = self.roles().caller(identity.clone());
        let person = identity.kind == proto::identity::Kind::User as i32;
        if !person && !caller.reviewer && !caller.auditor {
            return Err(status(
                ErrorCode::NotAReviewer,
                format!("{} is not in a reviewer or auditor group", who(&identity)),
            ));
        }
        self.caught_up_with_request(&id).await;
        let own = self.live.read(|s| {
            let r = s.request(&id)?;
            let may = crate::decide::may_read_to_break_glass(&identity, r.requested())?;
            Some(may.map(|()| {
                let mut view = r.view.clone();
                for v in &mut view.votes {
                    if let Some(who) = v.reviewer.as_mut()
                        && who.subject != identity.subject
                    {
                        who.groups.clear();
                        who.acrs.clear();
                        who.roles.clear();
                        who.client_app_id.clear();
                    }
                }
                view
            }))
        });
        match own {
            Some(Ok(view)) => return Ok(Response::new(view)),
            // The requester, who may not read it this way: why (a reviewer
            // of it reads it as any reviewer).
            Some(Err(why)) if !caller.reviewer && !caller.auditor => {
                return Err(status(ErrorCode::NotAReviewer, why));
            }
            _ => {}
        }
        if !caller.reviewer && !caller.auditor {
            return Err(status(
                ErrorCode::NotAReviewer,
                format!("{} is not in a reviewer or auditor group", who(&caller.identity)),
            ));
        }
        let found = self.live.read(|s| {
            s.request(&id)
                .map(|r| (caller.may_read_request(r.requested()), r.view.clone()))
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
                Err(decide_status(DecideError::NotAReviewer {
                    who: who(&caller.identity),
                    groups,
                }))
            }
            None => Err(decide_status(DecideError::UnknownRequest(id))),
        }
    }

    async fn decide(
        &self,
        request: Request<proto::DecideRequest>,
    ) -> Result<Response<proto::DecideResponse>, Status> {
        // Break-glass is the requester's own approval: they need not be a
        // reviewer (the decision checks they are in the policy's
        // break-glass groups, a person, and the requester).
        let mut slack = None;
        let reviewer = if let Some(user) = request.get_ref().slack.clone() {
            // Relayed from Slack: the caller is the reviewer service, the
            // voter the person the Slack user is linked to.
            let relay = self.caller(&request).await?;
            let (voter, relay) = self.slack_voter(&user, relay).await?;
            slack = Some((user, relay));
            voter
        } else if request.get_ref().break_glass {
            self.caller(&request).await?
        } else {
            self.actor(&request).await?.identity
        };
        self.ready()?;
        let q = request.into_inner();
        let vote = Vote {
            request_id: q.request_id.clone(),
            reviewer,
            decision: proto::Decision::try_from(q.decision).unwrap_or(proto::Decision::Unspecified),
            reason: q.reason,
            statement_sha256: (!q.statement_sha256.is_empty()).then_some(q.statement_sha256),
            floor_acrs: self.floor_acrs.clone(),
            max_rows: q.max_rows,
            scope: q.scope,
            break_glass: q.break_glass,
            slack,
        };
        let started = std::time::Instant::now();
        let voted = act::vote(&self.live, &self.log, &vote, &self.source, &self.presence).await;
        self.live.metrics().observe_decide(started.elapsed());
        let voted = voted.map_err(vote_status)?;
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
        let caller = self.reader(&request).await?;
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
                    .filter(|r| caller.may_read_request(r.requested()))
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
                            .send(Err(status(
                                ErrorCode::FellBehind,
                                format!("watcher fell {n} events behind; resume with after_sequence"),
                            )))
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
                        .filter(|r| caller.may_read_request(r.requested()))
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
        let caller = self.reader(&request).await?;
        let q = request.into_inner();
        let page_size = page_size(q.page_size);
        let mut sessions = self.live.read(|s| {
            s.sessions
                .values()
                .filter(|x| caller.may_read_session(s, &x.summary.session_id))
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
        let caller = self.reader(&request).await?;
        let id = request.into_inner().session_id;
        let sid = SessionId::parse(&id).map_err(|e| status(ErrorCode::InvalidArgument, e.to_string()))?;
        let (summary, request_ids) = self.live.read(|s| {
            let x = s.sessions.get(&id).ok_or_else(|| no_session(&id))?;
            if !caller.may_read_session(s, &id) {
                return Err(not_theirs(&caller, &id, "see"));
            }
            // Only the requests the caller may see come with the session.
            let visible = x
                .request_ids
                .iter()
                .filter(|r| caller.may_read_request_id(s, r))
                .cloned()
                .collect::<Vec<_>>();
            Ok((x.summary.clone(), visible))
        })?;
        let mut timeline: Vec<StoredEvent> = self
            .log
            .read_subject(&subjects::session(&sid))
            .await
            .map_err(log_status)?;
        let mut requests = Vec::new();
        for rid in &request_ids {
            if let Ok(r) = airlock_eventlog::RequestId::parse(rid) {
                timeline.extend(
                    self.log
                        .read_all(ReadFilter::subjects(subjects::lifecycle(&r)))
                        .await
                        .map_err(log_status)?,
                );
            }
            if let Some(v) = self.live.read(|s| s.request(rid).map(|r| r.view.clone())) {
                requests.push(v);
            }
        }
        timeline.sort_by_key(|e| e.sequence);
        // Statements recorded together are shown one by one, each at the
        // sequence of the event that holds it; those that ran or were
        // refused under a request the caller may not see are left out.
        let timeline = self.live.read(|s| {
            timeline
                .into_iter()
                .flat_map(|e| {
                    airlock_eventlog::split_group(&e.event)
                        .into_iter()
                        .filter(|single| caller.may_read_session_event(s, single))
                        .map(move |single| proto::RecordedEvent {
                            sequence: e.sequence,
                            subject: e.subject.clone(),
                            event: Some(single),
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        });
        Ok(Response::new(proto::SessionView {
            summary: Some(summary),
            timeline,
            requests,
        }))
    }

    async fn list_grants(
        &self,
        request: Request<proto::ListGrantsRequest>,
    ) -> Result<Response<proto::ListGrantsResponse>, Status> {
        let caller = self.reader(&request).await?;
        self.ready()?;
        let q = request.into_inner();
        let grants = self.live.read(|s| {
            s.grants
                .values()
                .rev()
                .filter(|g| q.states.is_empty() || q.states.contains(&g.view.state))
                .filter(|g| {
                    s.request(&g.view.grant_id)
                        .is_some_and(|r| caller.may_read_request(r.requested()))
                })
                .take(1000)
                .map(|g| g.view.clone())
                .collect()
        });
        Ok(Response::new(proto::ListGrantsResponse { grants }))
    }

    async fn get_grant(
        &self,
        request: Request<proto::GetGrantRequest>,
    ) -> Result<Response<proto::GrantView>, Status> {
        let caller = self.reader(&request).await?;
        let id = request.into_inner().grant_id;
        let found = self.live.read(|s| {
            let g = s.grants.get(&id)?;
            let mine = s
                .request(&id)
                .is_some_and(|r| caller.may_read_request(r.requested()));
            Some((mine, g.view.clone()))
        });
        match found {
            Some((true, view)) => Ok(Response::new(view)),
            // Another group's grant: as unknown to this caller as a
            // request of theirs would be refused.
            Some((false, _)) | None => Err(revoke_status(crate::grants::RevokeError::Unknown(id))),
        }
    }

    async fn offer_slack_link(
        &self,
        request: Request<proto::OfferSlackLinkRequest>,
    ) -> Result<Response<proto::SlackLinkOffer>, Status> {
        let links = self.slack_links()?;
        // A reviewer, and a person: only they vote, so only they link.
        let caller = self.actor(&request).await?;
        if !caller.is_person() {
            return Err(decide_status(DecideError::AppIdentity {
                who: caller.identity.display_name.clone(),
            }));
        }
        if !links
            .section
            .ticket_clients
            .contains(&caller.identity.client_app_id)
        {
            return Err(status(
                ErrorCode::NotAReviewer,
                format!(
                    "link tickets are given only through the reviewer's sign-in (control.slack.ticket_clients), \
                     not to a token of client {:?}",
                    caller.identity.client_app_id
                ),
            ));
        }
        let Some(signer) = self.log.signer() else {
            return Err(status(
                ErrorCode::Unavailable,
                "this replica has no signing key: it cannot make link tickets",
            ));
        };
        let (ticket, made) = links.issue(signer, &caller.identity, std::time::SystemTime::now());
        tracing::info!(who = %caller.identity.subject, ticket = %made.id, "Slack link ticket made");
        Ok(Response::new(proto::SlackLinkOffer {
            ticket,
            expires_at: Some(made.expires_at.into()),
            link_ttl: links.section.link_ttl.try_into().ok(),
        }))
    }

    async fn link_slack(
        &self,
        request: Request<proto::LinkSlackRequest>,
    ) -> Result<Response<proto::SlackLinkView>, Status> {
        let links = self.slack_links()?;
        let relay = self.caller(&request).await?;
        if !self.is_slack_relay(&relay) {
            return Err(status(
                ErrorCode::NotAReviewer,
                format!(
                    "{} is not a Slack relay (control.slack.relays): links are made with a ticket typed in Slack",
                    who(&relay)
                ),
            ));
        }
        self.ready()?;
        let q = request.into_inner();
        let Some(trust) = self.log.trust() else {
            return Err(status(
                ErrorCode::Unavailable,
                "this replica trusts no keys: it cannot check link tickets",
            ));
        };
        let ticket = crate::slack::open(trust, &q.ticket, std::time::SystemTime::now())
            .map_err(|why| status(ErrorCode::InvalidArgument, why))?;
        let slack = q.slack.unwrap_or_default();
        let change = act::LinkChange::Link {
            ticket: &ticket,
            relay: &relay,
        };
        self.slack_change(&links, slack, change).await
    }

    async fn unlink_slack(
        &self,
        request: Request<proto::UnlinkSlackRequest>,
    ) -> Result<Response<proto::SlackLinkView>, Status> {
        let links = self.slack_links()?;
        let who = self.caller(&request).await?;
        if who.kind != proto::identity::Kind::User as i32 {
            return Err(decide_status(DecideError::AppIdentity {
                who: who.display_name.clone(),
            }));
        }
        self.ready()?;
        let q = request.into_inner();
        if q.reason.chars().count() > 2000 {
            return Err(status(
                ErrorCode::InvalidArgument,
                "reason is longer than 2000 characters",
            ));
        }
        let change = act::LinkChange::Unlink {
            who: &who,
            reason: &q.reason,
        };
        self.slack_change(&links, q.slack.unwrap_or_default(), change)
            .await
    }

    async fn get_slack_link(
        &self,
        request: Request<proto::GetSlackLinkRequest>,
    ) -> Result<Response<proto::SlackLinkView>, Status> {
        let links = self.slack_links()?;
        let caller = self.caller(&request).await?;
        let user = request.into_inner().slack.unwrap_or_default();
        let view = self.live.read(|s| {
            s.slack_links
                .get(&(user.team_id.clone(), user.user_id.clone()))
                .cloned()
        });
        let relay = self.is_slack_relay(&caller);
        match view {
            // Its person, or the relay, reads it; anyone else learns nothing.
            Some(v)
                if relay
                    || v.identity
                        .as_ref()
                        .is_some_and(|i| crate::slack::same_person(i, &caller)) =>
            {
                Ok(Response::new(with_expiry(&links, v)))
            }
            _ => Ok(Response::new(proto::SlackLinkView {
                slack: Some(user),
                ..Default::default()
            })),
        }
    }

    async fn list_slack_links(
        &self,
        request: Request<proto::ListSlackLinksRequest>,
    ) -> Result<Response<proto::ListSlackLinksResponse>, Status> {
        let links = self.slack_links()?;
        let caller = self.caller(&request).await?;
        let mine = self.live.read(|s| {
            s.slack_links
                .values()
                .filter(|v| {
                    v.identity
                        .as_ref()
                        .is_some_and(|i| crate::slack::same_person(i, &caller))
                })
                .cloned()
                .collect::<Vec<_>>()
        });
        Ok(Response::new(proto::ListSlackLinksResponse {
            links: mine.into_iter().map(|v| with_expiry(&links, v)).collect(),
        }))
    }

    async fn revoke_grant(
        &self,
        request: Request<proto::RevokeGrantRequest>,
    ) -> Result<Response<proto::GrantView>, Status> {
        let caller = self.actor(&request).await?;
        self.ready()?;
        let q = request.into_inner();
        if q.reason.chars().count() > 2000 {
            return Err(status(
                ErrorCode::InvalidArgument,
                "reason is longer than 2000 characters",
            ));
        }
        match act::revoke(
            &self.live,
            &self.log,
            &q.grant_id,
            &caller.identity,
            &q.reason,
            &self.source,
        )
        .await
        {
            Ok(view) => Ok(Response::new(view)),
            Err(act::RevokeActError::Refused(e)) => Err(revoke_status(e)),
            Err(act::RevokeActError::Log(e)) => Err(log_status(e)),
            Err(e) => Err(status(ErrorCode::Unavailable, e.to_string())),
        }
    }

    async fn kill_session(
        &self,
        request: Request<proto::KillSessionRequest>,
    ) -> Result<Response<proto::KillSessionResponse>, Status> {
        let caller = self.actor(&request).await?;
        if !caller.is_person() {
            return Err(decide_status(DecideError::AppIdentity {
                who: caller.identity.display_name.clone(),
            }));
        }
        let q = request.into_inner();
        let sid =
            SessionId::parse(&q.session_id).map_err(|e| status(ErrorCode::InvalidArgument, e.to_string()))?;
        let proxy_id = self.live.read(|s| {
            let x = s
                .sessions
                .get(sid.as_str())
                .ok_or_else(|| no_session(sid.as_str()))?;
            if !caller.reviews_session(s, sid.as_str()) {
                return Err(not_theirs(&caller, sid.as_str(), "kill"));
            }
            Ok(x.summary.proxy_id.clone())
        })?;
        let reviewer = caller.identity;
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
            // The fold's index for the subject is only a floor once the fold
            // has reached the subject's head.
            let head = self.log.head(&subject).await.map_err(log_status)?;
            if !self
                .live
                .wait_for(head.sequence, std::time::Duration::from_secs(5))
                .await
            {
                return Err(status(
                    ErrorCode::Unavailable,
                    "the control plane is catching up with the log; try again",
                ));
            }
            let floor = self.live.chain_index(&subject);
            match self.log.append_next_from(&subject, event.clone(), floor).await {
                Ok((appended, e)) => {
                    last = Some((appended, e));
                    break;
                }
                Err(airlock_eventlog::Error::Conflict { .. }) => continue,
                Err(e) => return Err(log_status(e)),
            }
        }
        let (appended, e) = last.ok_or_else(|| status(ErrorCode::Unavailable, "session kept changing"))?;
        Ok(Response::new(proto::KillSessionResponse {
            event_id: e.id,
            sequence: appended.sequence,
        }))
    }
}

fn no_session(id: &str) -> Status {
    status(ErrorCode::NotFound, format!("no session {id}"))
}

/// The refusal of a session the caller has no rights over: it filed
/// requests, none of them for the caller's groups.
fn not_theirs(caller: &Caller, id: &str, what: &str) -> Status {
    status(
        ErrorCode::NotAReviewer,
        format!(
            "{} may not {what} session {id}: none of its requests is for their reviewer groups",
            who(&caller.identity)
        ),
    )
}

impl Control {
    /// A request the fold does not know yet, though it is in the log (a
    /// requester or reviewer told of it a moment ago, by a hold notice or a
    /// notification): waits, briefly, for the fold to reach it, so a
    /// request is never "not found" just after it was filed.
    async fn caught_up_with_request(&self, id: &str) {
        if !self.live.is_ready() || self.live.read(|s| s.request(id).is_some()) {
            return;
        }
        let Ok(rid) = airlock_eventlog::RequestId::parse(id) else {
            return;
        };
        if let Ok(head) = self.log.head(&subjects::request(&rid)).await
            && head.sequence > 0
        {
            self.live
                .wait_for(head.sequence, std::time::Duration::from_secs(2))
                .await;
        }
    }
}

/// `view` with when it stops counting.
fn with_expiry(links: &crate::slack::SlackLinks, mut view: proto::SlackLinkView) -> proto::SlackLinkView {
    view.expires_at = link_ends(links, &view).map(Into::into);
    view
}

/// When `view` stops counting: its link time plus `control.slack.link_ttl`.
fn link_ends(links: &crate::slack::SlackLinks, view: &proto::SlackLinkView) -> Option<std::time::SystemTime> {
    view.linked_at
        .and_then(|t| std::time::SystemTime::try_from(t).ok())
        .map(|t| t + links.section.link_ttl)
}

impl Control {
    fn slack_links(&self) -> Result<crate::slack::SlackLinks, Status> {
        self.slack.clone().ok_or_else(|| {
            status(
                ErrorCode::NotAReviewer,
                "Slack approvals are not enabled (control.slack)",
            )
        })
    }

    /// A relay is the reviewer service's own application identity: an app
    /// token (never a person's) of a client listed in `control.slack.relays`.
    fn is_slack_relay(&self, caller: &proto::Identity) -> bool {
        caller.kind == proto::identity::Kind::App as i32
            && !caller.client_app_id.is_empty()
            && self
                .slack
                .as_ref()
                .is_some_and(|s| s.section.relays.contains(&caller.client_app_id))
    }

    /// The identity a relayed Slack vote is cast as: `relay` must be one of
    /// `control.slack.relays`, and the Slack user linked (within
    /// `control.slack.link_ttl`) to a person who is in
    /// `approvals.reviewers`. The person's groups are Graph's answer now
    /// where `identity.graph` is set (no answer, no vote), else the link's.
    /// Step-up never comes with a link, so a rule that asks for it cannot be
    /// approved from Slack.
    async fn slack_voter(
        &self,
        user: &proto::SlackUser,
        relay: proto::Identity,
    ) -> Result<(proto::Identity, proto::Identity), Status> {
        let links = self.slack_links()?;
        if !self.is_slack_relay(&relay) {
            return Err(status(
                ErrorCode::NotAReviewer,
                format!("{} is not a Slack relay (control.slack.relays)", who(&relay)),
            ));
        }
        let link = self.live.read(|s| {
            s.slack_links
                .get(&(user.team_id.clone(), user.user_id.clone()))
                .cloned()
        });
        let Some(link) = link else {
            return Err(status(
                ErrorCode::NotFound,
                format!("Slack user {} is not linked to an identity", user.user_id),
            ));
        };
        let fresh = link_ends(&links, &link).is_some_and(|end| std::time::SystemTime::now() < end);
        if !fresh {
            return Err(status(
                ErrorCode::NotFound,
                format!("Slack user {}'s link has expired; link again", user.user_id),
            ));
        }
        let mut voter = link.identity.unwrap_or_default();
        voter.acrs.clear();
        match self.auth.groups_now(&voter).await {
            None => {}
            Some(Ok(groups)) => {
                voter.groups = groups;
                voter.groups_source = "graph".into();
            }
            Some(Err(why)) => return Err(status(ErrorCode::Unavailable, why)),
        }
        if !self.roles().caller(voter.clone()).reviewer {
            return Err(status(
                ErrorCode::NotAReviewer,
                format!(
                    "{} (linked to Slack user {}) is not in a reviewer group (approvals.reviewers)",
                    who(&voter),
                    user.user_id
                ),
            ));
        }
        Ok((voter, relay))
    }

    async fn slack_change(
        &self,
        links: &crate::slack::SlackLinks,
        slack: proto::SlackUser,
        change: act::LinkChange<'_>,
    ) -> Result<Response<proto::SlackLinkView>, Status> {
        match act::slack_link(&self.live, &self.log, &slack, change, &self.source).await {
            Ok(view) => Ok(Response::new(with_expiry(links, view))),
            Err(act::SlackLinkError::Refused(why)) => Err(status(ErrorCode::InvalidArgument, why)),
            Err(act::SlackLinkError::Log(e)) => Err(log_status(e)),
            Err(e) => Err(status(ErrorCode::Unavailable, e.to_string())),
        }
    }
}
