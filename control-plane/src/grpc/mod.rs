//! The control plane's gRPC services: `ReviewerService` (list, get, decide,
//! watch, sessions, kill), `ProxyService` (`Attach`: decisions and kills to
//! the proxies holding them), `AuditService` (the log, then live) and the
//! standard health service.
//!
//! One file per service (`reviewer`, `attach`, `audit`, `health`), and
//! `proxy_auth` (who may open `Attach`); this one holds what they share:
//! the caller's identity and roles (the rules are in `crate::access`) and
//! the error exit. Every
//! refusal leaves through [`status`], which logs it and carries its stable
//! code ([`ErrorCode`], shared with the reviewer) as a `google.rpc.ErrorInfo`
//! in the status details, the convention gRPC clients read.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use airlock_eventlog::EventLog;
use airlock_eventlog::proto;
use airlock_proto::ErrorCode;
use tonic::{Request, Status};

use crate::access::{Caller, Roles};
use crate::act::VoteError;
use crate::decide::DecideError;
use crate::live::Live;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Verifies a reviewer's bearer token. The real one is the identity crate's
/// verifier; tests use a table.
pub trait ReviewerAuth: Send + Sync + 'static {
    /// The identity the token belongs to, or why it is refused (never
    /// containing the token).
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<proto::Identity, String>>;

    /// A person's groups now, from the identity provider, for a decision
    /// made without their token (a vote relayed from Slack): `None` when
    /// it cannot be asked (no `identity.graph`), else its answer or why
    /// there is none.
    fn groups_now<'a>(
        &'a self,
        _person: &'a proto::Identity,
    ) -> BoxFuture<'a, Option<Result<Vec<proto::Group>, String>>> {
        Box::pin(async { None })
    }
}

/// Everything the services share.
#[derive(Clone)]
pub struct Control {
    pub live: Arc<Live>,
    pub log: EventLog,
    pub auth: Arc<dyn ReviewerAuth>,
    pub source: proto::Source,
    /// Reviewer groups (`approvals.reviewers`, by name and object id):
    /// their members may use the reviewer service, narrowed to what the
    /// groups of each request allow (`crate::access`).
    pub kill_groups: Vec<String>,
    /// Auditor groups (`control.auditors`, by name and object id): their
    /// members read every record and the whole log, and decide nothing.
    pub auditor_groups: Vec<String>,
    /// How `Attach` authenticates proxies.
    pub attach: AttachAuth,
    /// Which proxy processes are alive: kept by `Attach`, asked before a
    /// vote (a statement whose proxy is gone cannot be approved).
    pub presence: Arc<crate::presence::Presence>,
    /// `approvals.require_acrs`: step-up every approval needs here.
    pub floor_acrs: Vec<String>,
    /// `control.slack`: who relays Slack votes and links; none when unset.
    pub slack: Option<crate::slack::SlackLinks>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The one way a refusal leaves: logged with its code, then sent with the
/// code in a `google.rpc.ErrorInfo` ([`ErrorCode::status`]) and the gRPC
/// status the shared table gives it. `message` reaches the caller.
fn status(code: ErrorCode, message: impl Into<String>) -> Status {
    let message = message.into();
    match code {
        ErrorCode::Unavailable | ErrorCode::FellBehind => {
            tracing::warn!(code = code.as_str(), %message, "request failed")
        }
        ErrorCode::Unauthenticated
        | ErrorCode::NotAReviewer
        | ErrorCode::SelfApproval
        | ErrorCode::AppIdentity
        | ErrorCode::StepUpRequired
        | ErrorCode::NotFound
        | ErrorCode::AlreadyDecided
        | ErrorCode::AlreadyVoted
        | ErrorCode::Expired
        | ErrorCode::DigestMismatch
        | ErrorCode::SessionEnded
        | ErrorCode::InvalidArgument => tracing::info!(code = code.as_str(), %message, "request refused"),
    }
    code.status(message)
}

fn decide_status(e: DecideError) -> Status {
    if let DecideError::StepUpRequired { missing, .. } = &e {
        let message = e.to_string();
        tracing::info!(code = ErrorCode::StepUpRequired.as_str(), %message, "request refused");
        let metadata = std::collections::HashMap::from([("acrs".to_owned(), missing.join(" "))]);
        return ErrorCode::StepUpRequired.status_with(message, metadata);
    }
    let code = match &e {
        DecideError::UnknownRequest(_) => ErrorCode::NotFound,
        DecideError::AlreadyDecided { .. } => ErrorCode::AlreadyDecided,
        DecideError::Expired { .. } => ErrorCode::Expired,
        DecideError::AppIdentity { .. } => ErrorCode::AppIdentity,
        DecideError::SelfApproval { .. } => ErrorCode::SelfApproval,
        DecideError::NotAReviewer { .. } => ErrorCode::NotAReviewer,
        DecideError::StepUpRequired { .. } => ErrorCode::StepUpRequired,
        DecideError::AlreadyVoted { .. } => ErrorCode::AlreadyVoted,
        DecideError::DigestMismatch { .. } => ErrorCode::DigestMismatch,
        DecideError::SessionEnded { .. } => ErrorCode::SessionEnded,
        DecideError::BreakGlassRefused(_) => ErrorCode::NotAReviewer,
        DecideError::NoDecision
        | DecideError::BadBounds(_)
        | DecideError::BadScope(_)
        | DecideError::BadBreakGlass(_)
        | DecideError::SlackVote(_) => ErrorCode::InvalidArgument,
    };
    status(code, e.to_string())
}

fn vote_status(e: VoteError) -> Status {
    match e {
        VoteError::Refused(d) => decide_status(d),
        VoteError::Log(l) => log_status(l),
        VoteError::Lagging | VoteError::Contended => status(ErrorCode::Unavailable, e.to_string()),
    }
}

/// The log could not be read or written: the caller may retry.
fn log_status(e: airlock_eventlog::Error) -> Status {
    status(ErrorCode::Unavailable, format!("event log: {e}"))
}

/// How a person is named in messages: display name, else subject.
fn who(identity: &proto::Identity) -> String {
    if identity.display_name.is_empty() {
        identity.subject.clone()
    } else {
        identity.display_name.clone()
    }
}

impl Control {
    fn roles(&self) -> Roles {
        Roles {
            reviewers: self.kill_groups.clone(),
            auditors: self.auditor_groups.clone(),
        }
    }

    /// The verified caller, who must be a reviewer or an auditor: records
    /// of sessions and requests are not for agents or anyone else. What
    /// each may see is narrowed further by `crate::access`.
    async fn reader<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let caller = self.roles().caller(self.caller(request).await?);
        if !caller.reviewer && !caller.auditor {
            return Err(status(
                ErrorCode::NotAReviewer,
                format!("{} is not in a reviewer or auditor group", who(&caller.identity)),
            ));
        }
        Ok(caller)
    }

    /// The verified caller, who must be a reviewer (`approvals.reviewers`)
    /// to act: auditors read, they do not decide. The request's or the
    /// session's own groups are checked after.
    async fn actor<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let caller = self.reader(request).await?;
        if !caller.reviewer {
            return Err(status(
                ErrorCode::NotAReviewer,
                format!(
                    "{} is an auditor: auditors read records, they do not vote or kill sessions",
                    who(&caller.identity)
                ),
            ));
        }
        Ok(caller)
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<proto::Identity, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| status(ErrorCode::Unauthenticated, "no bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| status(ErrorCode::Unauthenticated, "authorization is not a bearer token"))?;
        self.auth
            .verify(token.trim())
            .await
            .map_err(|why| status(ErrorCode::Unauthenticated, format!("token refused: {why}")))
    }

    fn ready(&self) -> Result<(), Status> {
        if self.live.is_ready() {
            Ok(())
        } else {
            Err(status(
                ErrorCode::Unavailable,
                "this replica is still catching up with the log",
            ))
        }
    }
}

mod attach;
mod audit;
pub mod health;
pub mod proxy_auth;
mod reviewer;

pub use attach::HEARTBEAT;
pub use proxy_auth::AttachAuth;
