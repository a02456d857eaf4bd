//! The control plane's gRPC services: `ReviewerService` (list, get, decide,
//! watch, sessions, kill), `ProxyService` (`Attach`: decisions and kills to
//! the proxies holding them) and `AuditService` (the log, then live).
//!
//! Every error leaves through [`status`], which logs the full reason and
//! sets a stable `airlock-error` code in the metadata for integrators.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use airlock_eventlog::EventLog;
use airlock_eventlog::proto;
use tonic::{Request, Status};

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

mod attach;
mod audit;
mod reviewer;

pub use attach::HEARTBEAT;
