//! The REST surface's one error type and its one exit, [`ApiError`]'s
//! `IntoResponse`: a JSON body `{"error": {"code", "message"}}` with the
//! status the house error table gives the code.
//!
//! The reviewer decides nothing, so most errors are the control plane's
//! refusals passed on: the code it sends ([`ErrorCode`], in the status's
//! `google.rpc.ErrorInfo`) becomes the REST code of the same spelling, and
//! only the HTTP status is chosen here. Never put a token or cookie in a
//! message: messages are logged and shown.

use airlock_proto::ErrorCode;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Every error code the REST API answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// No token, or a token the identity crate (or the control plane) refused.
    Unauthenticated,
    /// The caller may not review this request or read these records.
    NotAReviewer,
    SelfApproval,
    AppIdentity,
    /// Approving needs a sign-in that met more authentication contexts.
    StepUpRequired,
    NotFound,
    AlreadyDecided,
    AlreadyVoted,
    Expired,
    DigestMismatch,
    /// The session holding the statement has ended: nothing to decide.
    SessionEnded,
    /// A state-changing browser request without a valid CSRF token.
    Csrf,
    InvalidArgument,
    /// The control plane (or the issuer) cannot be reached or is not ready.
    Unavailable,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthenticated => "unauthenticated",
            Code::NotAReviewer => "not_a_reviewer",
            Code::SelfApproval => "self_approval",
            Code::AppIdentity => "app_identity",
            Code::StepUpRequired => "step_up_required",
            Code::NotFound => "not_found",
            Code::AlreadyDecided => "already_decided",
            Code::AlreadyVoted => "already_voted",
            Code::Expired => "expired",
            Code::DigestMismatch => "digest_mismatch",
            Code::SessionEnded => "session_ended",
            Code::Csrf => "csrf",
            Code::InvalidArgument => "invalid_argument",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::NotAReviewer
            | Code::SelfApproval
            | Code::AppIdentity
            | Code::StepUpRequired
            | Code::Csrf => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyDecided
            | Code::AlreadyVoted
            | Code::Expired
            | Code::DigestMismatch
            | Code::SessionEnded => StatusCode::CONFLICT,
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Every code, for the OpenAPI document and tests.
    pub const ALL: &[Code] = &[
        Code::Unauthenticated,
        Code::NotAReviewer,
        Code::SelfApproval,
        Code::AppIdentity,
        Code::StepUpRequired,
        Code::NotFound,
        Code::AlreadyDecided,
        Code::AlreadyVoted,
        Code::Expired,
        Code::DigestMismatch,
        Code::SessionEnded,
        Code::Csrf,
        Code::InvalidArgument,
        Code::Unavailable,
        Code::Internal,
    ];
}

/// The control plane's codes as REST codes: the same spelling, except a
/// watch that fell behind, which a REST client sees as `internal` (its event
/// stream ends and it reconnects).
impl From<ErrorCode> for Code {
    fn from(code: ErrorCode) -> Code {
        match code {
            ErrorCode::Unauthenticated => Code::Unauthenticated,
            ErrorCode::NotAReviewer => Code::NotAReviewer,
            ErrorCode::SelfApproval => Code::SelfApproval,
            ErrorCode::AppIdentity => Code::AppIdentity,
            ErrorCode::StepUpRequired => Code::StepUpRequired,
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::AlreadyDecided => Code::AlreadyDecided,
            ErrorCode::AlreadyVoted => Code::AlreadyVoted,
            ErrorCode::Expired => Code::Expired,
            ErrorCode::DigestMismatch => Code::DigestMismatch,
            ErrorCode::SessionEnded => Code::SessionEnded,
            ErrorCode::InvalidArgument => Code::InvalidArgument,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::FellBehind => Code::Internal,
        }
    }
}

/// An error on its way to a client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    /// For `step_up_required`: the authentication contexts a new sign-in
    /// must meet.
    pub acrs: Vec<String>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            acrs: Vec::new(),
        }
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
}

/// The control plane's refusal, with the code its `ErrorInfo` names when it
/// sent one, else a code from the gRPC status (transport errors, and codes
/// newer than this build).
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let code = ErrorCode::of(&status)
            .map(Code::from)
            .unwrap_or(match status.code() {
                tonic::Code::Unauthenticated => Code::Unauthenticated,
                tonic::Code::PermissionDenied => Code::NotAReviewer,
                tonic::Code::NotFound => Code::NotFound,
                tonic::Code::FailedPrecondition | tonic::Code::Aborted => Code::AlreadyDecided,
                tonic::Code::InvalidArgument | tonic::Code::OutOfRange => Code::InvalidArgument,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                    Code::Unavailable
                }
                tonic::Code::Ok
                | tonic::Code::Unknown
                | tonic::Code::AlreadyExists
                | tonic::Code::ResourceExhausted
                | tonic::Code::Unimplemented
                | tonic::Code::Internal
                | tonic::Code::DataLoss => Code::Internal,
            });
        let message = if status.message().is_empty() {
            format!("control plane: {}", status.code())
        } else {
            status.message().to_owned()
        };
        let acrs = if code == Code::StepUpRequired {
            ErrorCode::metadata_of(&status)
                .get("acrs")
                .map(|a| a.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        ApiError { code, message, acrs }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self.code {
            Code::Internal | Code::Unavailable => {
                tracing::warn!(code = self.code.as_str(), message = %self.message, "request failed")
            }
            _ => tracing::info!(code = self.code.as_str(), message = %self.message, "request refused"),
        }
        let mut response = (
            self.code.status(),
            Json(crate::json::ErrorJson::new(self.code, self.message).with_acrs(self.acrs)),
        )
            .into_response();
        if self.code == Code::Unauthenticated {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"airlock\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A refusal as the control plane sends it, or a bare status.
    fn status_with(code: tonic::Code, airlock: Option<ErrorCode>) -> tonic::Status {
        match airlock {
            Some(a) => {
                assert_eq!(a.grpc(), code, "{a}");
                a.status("why")
            }
            None => tonic::Status::new(code, "why"),
        }
    }

    #[test]
    fn a_step_up_refusal_names_the_contexts_in_the_json() {
        let refused = ErrorCode::StepUpRequired.status_with(
            "approving needs c1",
            std::collections::HashMap::from([("acrs".to_owned(), "c1 c2".to_owned())]),
        );
        let error = ApiError::from(refused);
        assert_eq!(error.code, Code::StepUpRequired);
        assert_eq!(error.acrs, ["c1", "c2"]);
        let json = serde_json::to_value(
            crate::json::ErrorJson::new(error.code, error.message).with_acrs(error.acrs),
        )
        .expect("json");
        assert_eq!(
            json,
            json!({"error": {"code": "step_up_required", "message": "approving needs c1", "acrs": ["c1", "c2"]}})
        );
    }

    #[test]
    fn control_plane_codes_map_to_statuses() {
        let table = [
            (
                ErrorCode::Unauthenticated,
                tonic::Code::Unauthenticated,
                "unauthenticated",
                401,
            ),
            (
                ErrorCode::NotAReviewer,
                tonic::Code::PermissionDenied,
                "not_a_reviewer",
                403,
            ),
            (
                ErrorCode::SelfApproval,
                tonic::Code::PermissionDenied,
                "self_approval",
                403,
            ),
            (
                ErrorCode::AppIdentity,
                tonic::Code::PermissionDenied,
                "app_identity",
                403,
            ),
            (
                ErrorCode::StepUpRequired,
                tonic::Code::PermissionDenied,
                "step_up_required",
                403,
            ),
            (ErrorCode::NotFound, tonic::Code::NotFound, "not_found", 404),
            (
                ErrorCode::AlreadyDecided,
                tonic::Code::FailedPrecondition,
                "already_decided",
                409,
            ),
            (
                ErrorCode::SessionEnded,
                tonic::Code::FailedPrecondition,
                "session_ended",
                409,
            ),
            (
                ErrorCode::AlreadyVoted,
                tonic::Code::FailedPrecondition,
                "already_voted",
                409,
            ),
            (
                ErrorCode::Expired,
                tonic::Code::FailedPrecondition,
                "expired",
                409,
            ),
            (
                ErrorCode::DigestMismatch,
                tonic::Code::FailedPrecondition,
                "digest_mismatch",
                409,
            ),
            (
                ErrorCode::InvalidArgument,
                tonic::Code::InvalidArgument,
                "invalid_argument",
                400,
            ),
            (
                ErrorCode::Unavailable,
                tonic::Code::Unavailable,
                "unavailable",
                503,
            ),
            (ErrorCode::FellBehind, tonic::Code::DataLoss, "internal", 500),
        ];
        assert_eq!(
            table.len(),
            ErrorCode::ALL.len(),
            "every control-plane code is in the table"
        );
        for (sent, grpc, code, http) in table {
            let e = ApiError::from(status_with(grpc, Some(sent)));
            assert_eq!(e.code.as_str(), code, "{sent}");
            assert_eq!(e.code.status().as_u16(), http, "{sent}");
            assert_eq!(e.message, "why");
        }
        // The code in the ErrorInfo wins over the gRPC code's guess...
        let e = ApiError::from(status_with(
            tonic::Code::FailedPrecondition,
            Some(ErrorCode::AlreadyVoted),
        ));
        assert_eq!(e.code, Code::AlreadyVoted);
        // ...and without one (a transport error), the gRPC code decides.
        let e = ApiError::from(status_with(tonic::Code::FailedPrecondition, None));
        assert_eq!(e.code, Code::AlreadyDecided);
        let e = ApiError::from(status_with(tonic::Code::Internal, None));
        assert_eq!(e.code.status().as_u16(), 500);
    }

    #[tokio::test]
    async fn a_refused_vote_answers_the_same_json_as_before() {
        let refused = ErrorCode::NotAReviewer.status("erin is not in a reviewer group");
        let response = ApiError::from(refused).into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            body,
            json!({"error": {"code": "not_a_reviewer", "message": "erin is not in a reviewer group"}})
        );
    }
}
