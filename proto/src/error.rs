//! The stable codes of the control plane's refusals, which both ends of a
//! gRPC call must agree on: the control plane sets them, the reviewer and
//! integrators read them.
//!
//! A refusal carries its code as a `google.rpc.ErrorInfo` in the status
//! details (`grpc-status-details-bin`): `reason` is the code as
//! [`ErrorCode::as_str`] spells it (`not_a_reviewer`), `domain` is
//! [`DOMAIN`]. The reviewer's REST API answers with the same spellings, so a
//! code means one thing on every surface. The gRPC status code is fixed per
//! code here, so the two cannot drift apart.

use std::collections::HashMap;

use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every Airlock refusal.
pub const DOMAIN: &str = "airlock";

/// Why the control plane refused a call. Renaming a variant's string breaks
/// clients: add a new one instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No bearer token, or one the identity check refused.
    Unauthenticated,
    /// Not in a reviewer group (of the service, or of this request).
    NotAReviewer,
    /// The requester voted on its own request.
    SelfApproval,
    /// An application identity tried to vote or kill; only people may.
    AppIdentity,
    /// An approval from a sign-in that did not meet the authentication
    /// contexts the request requires (step-up); the `acrs` metadata of the
    /// `ErrorInfo` lists the missing ones, space-separated.
    StepUpRequired,
    /// No such request or session.
    NotFound,
    AlreadyDecided,
    /// This reviewer has voted on this request already.
    AlreadyVoted,
    Expired,
    /// The vote named a statement digest other than the request's.
    DigestMismatch,
    /// The session holding the statement has ended (or its proxy is
    /// gone): nothing waits for a decision, and the request is cancelled.
    SessionEnded,
    /// A malformed id or message.
    InvalidArgument,
    /// The replica is catching up with the log, or the log cannot be read
    /// or written; retry.
    Unavailable,
    /// A stream's reader fell too far behind and was dropped; resume it
    /// from the last sequence it received.
    FellBehind,
}

impl ErrorCode {
    /// Every code, for tables and tests.
    pub const ALL: &[ErrorCode] = &[
        ErrorCode::Unauthenticated,
        ErrorCode::NotAReviewer,
        ErrorCode::SelfApproval,
        ErrorCode::AppIdentity,
        ErrorCode::StepUpRequired,
        ErrorCode::NotFound,
        ErrorCode::AlreadyDecided,
        ErrorCode::AlreadyVoted,
        ErrorCode::Expired,
        ErrorCode::DigestMismatch,
        ErrorCode::SessionEnded,
        ErrorCode::InvalidArgument,
        ErrorCode::Unavailable,
        ErrorCode::FellBehind,
    ];

    /// The code on the wire (`ErrorInfo.reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::NotAReviewer => "not_a_reviewer",
            ErrorCode::SelfApproval => "self_approval",
            ErrorCode::AppIdentity => "app_identity",
            ErrorCode::StepUpRequired => "step_up_required",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyDecided => "already_decided",
            ErrorCode::AlreadyVoted => "already_voted",
            ErrorCode::Expired => "expired",
            ErrorCode::DigestMismatch => "digest_mismatch",
            ErrorCode::SessionEnded => "session_ended",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::FellBehind => "fell_behind",
        }
    }

    /// The code a wire string names, if any (a newer peer may send codes
    /// this build does not know).
    pub fn parse(reason: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == reason)
    }

    /// The gRPC status code a refusal with this code carries.
    pub fn grpc(self) -> tonic::Code {
        match self {
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::NotAReviewer
            | ErrorCode::SelfApproval
            | ErrorCode::AppIdentity
            | ErrorCode::StepUpRequired => tonic::Code::PermissionDenied,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::AlreadyDecided
            | ErrorCode::AlreadyVoted
            | ErrorCode::Expired
            | ErrorCode::DigestMismatch
            | ErrorCode::SessionEnded => tonic::Code::FailedPrecondition,
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::FellBehind => tonic::Code::DataLoss,
        }
    }

    /// A status refusing with this code: the gRPC code from [`Self::grpc`],
    /// `message` for people, and the code in an `ErrorInfo` for programs.
    /// The message reaches the caller: no tokens or secrets in it.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        self.status_with(message, HashMap::new())
    }

    /// [`Self::status`] with metadata in the `ErrorInfo` (for programs:
    /// e.g. the `acrs` a step-up needs).
    pub fn status_with(self, message: impl Into<String>, metadata: HashMap<String, String>) -> tonic::Status {
        tonic::Status::with_error_details(
            self.grpc(),
            message,
            ErrorDetails::with_error_info(self.as_str(), DOMAIN, metadata),
        )
    }

    /// The `ErrorInfo` metadata of an Airlock refusal (empty when none).
    pub fn metadata_of(status: &tonic::Status) -> HashMap<String, String> {
        let details = status.get_error_details();
        match details.error_info() {
            Some(info) if info.domain == DOMAIN => info.metadata.clone(),
            _ => HashMap::new(),
        }
    }

    /// The code a status carries in an `ErrorInfo` of [`DOMAIN`]; `None`
    /// when it carries none (a transport error, or an older or foreign
    /// server) or one this build does not know.
    pub fn of(status: &tonic::Status) -> Option<ErrorCode> {
        let details = status.get_error_details();
        let info = details.error_info()?;
        if info.domain != DOMAIN {
            return None;
        }
        ErrorCode::parse(&info.reason)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_survives_the_wire_and_keeps_its_grpc_code() {
        for &code in ErrorCode::ALL {
            let sent = code.status("why");
            // As a client receives it: through the HTTP/2 headers or trailers.
            let response: tonic::codegen::http::Response<()> = sent.into_http();
            let received = tonic::Status::from_header_map(response.headers()).expect("a status");
            assert_eq!(ErrorCode::of(&received), Some(code), "{code}");
            assert_eq!(received.code(), code.grpc(), "{code}");
            assert_eq!(received.message(), "why");
            let details = received.get_error_details();
            let info = details.error_info().expect("ErrorInfo");
            assert_eq!(
                (info.reason.as_str(), info.domain.as_str()),
                (code.as_str(), "airlock")
            );
        }
    }

    #[test]
    fn wire_strings_are_distinct_and_parse_back() {
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("something_new"), None);
    }

    #[test]
    fn statuses_without_an_airlock_error_info_have_no_code() {
        assert_eq!(ErrorCode::of(&tonic::Status::not_found("plain")), None);
        let foreign = tonic::Status::with_error_details(
            tonic::Code::NotFound,
            "elsewhere",
            ErrorDetails::with_error_info("not_found", "example.com", HashMap::new()),
        );
        assert_eq!(ErrorCode::of(&foreign), None);
    }
}
