//! The REST surface's one error type and its one exit, [`ApiError`]'s
//! `IntoResponse`: a JSON body `{"error": {"code", "message"}}` with the
//! status the house error table gives the code.
//!
//! The reviewer decides nothing, so most errors are the control plane's
//! refusals passed on: its `airlock-error` metadata code is kept as is, and
//! only the HTTP status is chosen here. Never put a token or cookie in a
//! message: messages are logged and shown.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Every error code the REST API answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// No token, or a token the identity crate (or the control plane) refused.
    Unauthenticated,
    /// The caller may not review this request or read these records.
    NotAReviewer,
    SelfApproval,
    AppIdentity,
    NotFound,
    AlreadyDecided,
    AlreadyVoted,
    Expired,
    DigestMismatch,
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
            Code::NotFound => "not_found",
            Code::AlreadyDecided => "already_decided",
            Code::AlreadyVoted => "already_voted",
            Code::Expired => "expired",
            Code::DigestMismatch => "digest_mismatch",
            Code::Csrf => "csrf",
            Code::InvalidArgument => "invalid_argument",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::NotAReviewer | Code::SelfApproval | Code::AppIdentity | Code::Csrf => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyDecided | Code::AlreadyVoted | Code::Expired | Code::DigestMismatch => {
                StatusCode::CONFLICT
            }
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
        Code::NotFound,
        Code::AlreadyDecided,
        Code::AlreadyVoted,
        Code::Expired,
        Code::DigestMismatch,
        Code::Csrf,
        Code::InvalidArgument,
        Code::Unavailable,
        Code::Internal,
    ];

    fn from_control(code: &str) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| c.as_str() == code)
    }
}

/// An error on its way to a client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: Code,
    pub message: String,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
}

/// The control plane's refusal, with its `airlock-error` code when it sent
/// one, else a code from the gRPC status.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let sent = status
            .metadata()
            .get("airlock-error")
            .and_then(|v| v.to_str().ok())
            .and_then(Code::from_control);
        let code = sent.unwrap_or(match status.code() {
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
        ApiError { code, message }
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
            Json(json!({"error": {"code": self.code.as_str(), "message": self.message}})),
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

    fn status_with(code: tonic::Code, airlock: Option<&'static str>) -> tonic::Status {
        let mut s = tonic::Status::new(code, "why");
        if let Some(a) = airlock {
            s.metadata_mut()
                .insert("airlock-error", tonic::metadata::MetadataValue::from_static(a));
        }
        s
    }

    #[test]
    fn control_plane_codes_map_to_statuses() {
        let table = [
            ("unauthenticated", tonic::Code::Unauthenticated, 401),
            ("not_a_reviewer", tonic::Code::PermissionDenied, 403),
            ("self_approval", tonic::Code::PermissionDenied, 403),
            ("app_identity", tonic::Code::PermissionDenied, 403),
            ("not_found", tonic::Code::NotFound, 404),
            ("already_decided", tonic::Code::FailedPrecondition, 409),
            ("already_voted", tonic::Code::FailedPrecondition, 409),
            ("expired", tonic::Code::FailedPrecondition, 409),
            ("digest_mismatch", tonic::Code::FailedPrecondition, 409),
            ("invalid_argument", tonic::Code::InvalidArgument, 400),
            ("unavailable", tonic::Code::Unavailable, 503),
        ];
        for (code, grpc, http) in table {
            let e = ApiError::from(status_with(grpc, Some(code)));
            assert_eq!(e.code.as_str(), code);
            assert_eq!(e.code.status().as_u16(), http, "{code}");
            assert_eq!(e.message, "why");
        }
        // An unknown code falls back to the gRPC code.
        let e = ApiError::from(status_with(tonic::Code::NotFound, Some("something_new")));
        assert_eq!(e.code, Code::NotFound);
        let e = ApiError::from(status_with(tonic::Code::Internal, None));
        assert_eq!(e.code.status().as_u16(), 500);
    }
}
