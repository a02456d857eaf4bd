//! `identity check`: what an operator runs when an agent cannot get in.
//!
//! Owns the one-shot path the CLI (`airlock-control identity check`) calls:
//! a token in, the identity it maps to or the precise refusal out, both as
//! JSON. Reading standard input and choosing the exit code stay in the CLI.

use serde::Serialize;

use crate::config::IdentityConfig;
use crate::error::VerifyError;
use crate::identity::Identity;
use crate::verifier::Verifier;

/// Verifies one token with a fresh verifier (so the JWKS is fetched now).
/// Surrounding whitespace, as left by `echo` or a pasted line, is ignored.
pub async fn check_token(config: &IdentityConfig, token: &str) -> Result<Identity, VerifyError> {
    let verifier = Verifier::new(config.clone())?;
    verifier.verify(token.trim()).await
}

/// The JSON the CLI prints: `{"accepted": true, "identity": {...}}` or
/// `{"accepted": false, "reason": "token_expired", "message": "..."}`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub accepted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl CheckReport {
    /// The report for an outcome of [`check_token`].
    pub fn from_result(result: &Result<Identity, VerifyError>) -> Self {
        match result {
            Ok(identity) => CheckReport {
                accepted: true,
                identity: Some(identity.clone()),
                reason: None,
                message: None,
            },
            Err(error) => CheckReport {
                accepted: false,
                identity: None,
                reason: Some(error.code()),
                message: Some(error_chain(error)),
            },
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // thiserror's `{0}` already shows a wrapped source; skip repeats.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
