//! Errors of the identity crate, named by condition.
//!
//! Security intent: no variant ever carries the token, and every string taken
//! from a token (a `kid`, an `alg`, an issuer) goes through [`clip`] first, so
//! a hostile header cannot flood or forge log lines. These errors are meant to
//! be logged in full and shown to operators; what a *client* sees is decided
//! by each surface (the proxy sends 28000 with a short message).

use std::time::Duration;

/// Why a token was refused, or why it could not be checked.
///
/// `Display` gives the precise reason for the log and for `identity check`;
/// [`VerifyError::code`] gives a stable short code for metrics and JSON.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Longer than `max_token_bytes`; refused before any parsing.
    #[error("token is {size} bytes, more than the {max} allowed (identity.max_token_bytes)")]
    TokenTooLarge { size: usize, max: usize },
    /// Not a compact JWS: wrong number of segments, bad base64url, bad JSON.
    #[error("token is malformed: {reason}")]
    Malformed { reason: String },
    /// The header names an algorithm Airlock never accepts (`none`, any HMAC,
    /// anything but RS256, PS256, ES256).
    #[error("algorithm {alg:?} is not allowed (only RS256, PS256 and ES256 are accepted)")]
    AlgorithmNotAllowed { alg: String },
    /// The header has a `crit` member; Airlock understands no extensions.
    #[error("token header marks extensions as critical ({names}); none are supported")]
    UnsupportedCriticalHeader { names: String },
    /// The header has no `kid`, so no key can be chosen.
    #[error("token header has no key id (kid)")]
    MissingKeyId,
    /// The issuer's JWKS has no key with this `kid`.
    #[error("unknown key id {kid:?}: {detail}")]
    UnknownKeyId { kid: String, detail: String },
    /// The JWKS entry for `kid` is of a key type that cannot verify `alg`
    /// (for example a symmetric `oct` key, or an EC key for RS256).
    #[error("key {kid:?} in the JWKS has key type {kty:?}, which cannot verify {alg}")]
    KeyTypeMismatch { kid: String, alg: String, kty: String },
    /// The JWKS entry pins an algorithm other than the token's.
    #[error("key {kid:?} in the JWKS is for {key_alg}, but the token says {token_alg}")]
    KeyAlgorithmMismatch {
        kid: String,
        token_alg: String,
        key_alg: String,
    },
    /// The JWKS entry exists but must not be used for signatures (wrong `use`,
    /// weak or invalid key material, or an ambiguous duplicate `kid`).
    #[error("key {kid:?} in the JWKS cannot be used: {reason}")]
    KeyUnusable { kid: String, reason: String },
    /// The signature does not verify with the key the `kid` names: forged,
    /// altered after signing, truncated, or signed by another key.
    #[error("signature does not verify with key {kid:?}")]
    BadSignature { kid: String },
    /// `exp` is in the past, beyond the leeway.
    #[error("token expired at {expired_at} ({ago_secs} s ago; leeway {leeway_secs} s)")]
    TokenExpired {
        expired_at: String,
        ago_secs: i64,
        leeway_secs: u64,
    },
    /// `nbf` is in the future, beyond the leeway.
    #[error("token not valid before {not_before} ({in_secs} s from now; leeway {leeway_secs} s)")]
    TokenNotYetValid {
        not_before: String,
        in_secs: i64,
        leeway_secs: u64,
    },
    /// `iss` is not one of the configured issuers (compared exactly).
    #[error(
        "token issuer {found:?} is not the configured issuer ({expected}); note Entra v1 tokens say https://sts.windows.net/<tenant>/ and v2 tokens https://login.microsoftonline.com/<tenant>/v2.0"
    )]
    WrongIssuer { found: String, expected: String },
    /// `aud` does not contain the configured audience.
    #[error("token audience {found} does not contain the configured audience ({expected})")]
    WrongAudience { found: String, expected: String },
    /// A claim Airlock requires is absent.
    #[error("token has no {claim} claim")]
    MissingClaim { claim: &'static str },
    /// A claim is present but of the wrong shape.
    #[error("token claim {claim} is invalid: {reason}")]
    InvalidClaim { claim: &'static str, reason: String },
    /// No client application claim (`azp`, or v1 `appid`): every Entra
    /// access token has one and ID tokens have none, so this is an ID token
    /// (or something else) presented where an access token belongs.
    #[error(
        "token has no azp or appid claim, so it is not an Entra access token (an ID token?); request an access token for the configured audience"
    )]
    NotAnAccessToken,
    /// Entra left the groups out because there are too many (group overage:
    /// `_claim_names` names the groups claim, or `hasgroups` is set).
    #[error(
        "token has too many groups for Entra to include them (group overage), and identity.graph is not configured: set identity.graph so Airlock asks Microsoft Graph about the groups it names, or assign app roles and set identity.groups_claim: roles, or limit the groups claim in the app registration to groups assigned to the application"
    )]
    GroupOverage,
    /// The token has group overage and Microsoft Graph could not say which
    /// of the configured groups the caller is in.
    #[error("token has group overage and its groups could not be resolved: {0}")]
    GraphUnavailable(#[source] crate::graph::GraphError),
    /// No key material could be obtained at all (cold cache, issuer down).
    #[error("no signing keys available: {0}")]
    JwksUnavailable(#[source] FetchError),
    /// The `identity:` configuration is unusable.
    #[error("identity configuration: {0}")]
    Config(#[from] ConfigError),
}

impl VerifyError {
    /// A stable, short code for this reason: for metrics labels, JSON output
    /// and tests. Exhaustive on purpose: a new variant needs a new code.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::TokenTooLarge { .. } => "token_too_large",
            VerifyError::Malformed { .. } => "malformed",
            VerifyError::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            VerifyError::UnsupportedCriticalHeader { .. } => "unsupported_critical_header",
            VerifyError::MissingKeyId => "missing_key_id",
            VerifyError::UnknownKeyId { .. } => "unknown_key_id",
            VerifyError::KeyTypeMismatch { .. } => "key_type_mismatch",
            VerifyError::KeyAlgorithmMismatch { .. } => "key_algorithm_mismatch",
            VerifyError::KeyUnusable { .. } => "key_unusable",
            VerifyError::BadSignature { .. } => "bad_signature",
            VerifyError::TokenExpired { .. } => "token_expired",
            VerifyError::TokenNotYetValid { .. } => "token_not_yet_valid",
            VerifyError::WrongIssuer { .. } => "wrong_issuer",
            VerifyError::WrongAudience { .. } => "wrong_audience",
            VerifyError::MissingClaim { .. } => "missing_claim",
            VerifyError::InvalidClaim { .. } => "invalid_claim",
            VerifyError::NotAnAccessToken => "not_an_access_token",
            VerifyError::GroupOverage => "group_overage",
            VerifyError::GraphUnavailable(_) => "graph_unavailable",
            VerifyError::JwksUnavailable(_) => "jwks_unavailable",
            VerifyError::Config(_) => "config",
        }
    }

    /// True when the token may well be fine and Airlock could not check it
    /// (issuer unreachable, bad configuration). Surfaces still refuse, but log
    /// these as an outage rather than as a bad token.
    pub fn is_unavailable(&self) -> bool {
        match self {
            VerifyError::JwksUnavailable(_) | VerifyError::Config(_) | VerifyError::GraphUnavailable(_) => {
                true
            }
            VerifyError::TokenTooLarge { .. }
            | VerifyError::Malformed { .. }
            | VerifyError::AlgorithmNotAllowed { .. }
            | VerifyError::UnsupportedCriticalHeader { .. }
            | VerifyError::MissingKeyId
            | VerifyError::UnknownKeyId { .. }
            | VerifyError::KeyTypeMismatch { .. }
            | VerifyError::KeyAlgorithmMismatch { .. }
            | VerifyError::KeyUnusable { .. }
            | VerifyError::BadSignature { .. }
            | VerifyError::TokenExpired { .. }
            | VerifyError::TokenNotYetValid { .. }
            | VerifyError::WrongIssuer { .. }
            | VerifyError::WrongAudience { .. }
            | VerifyError::MissingClaim { .. }
            | VerifyError::InvalidClaim { .. }
            | VerifyError::NotAnAccessToken
            | VerifyError::GroupOverage => false,
        }
    }
}

/// Why fetching OIDC discovery or the JWKS failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// Only https, or http to a loopback host, is ever fetched.
    #[error("refusing to fetch {url}: only https, or http on a loopback address, is allowed")]
    InsecureUrl { url: String },
    /// The URL does not parse.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// No answer within the fetch timeout.
    #[error("fetching {url} timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    /// Connection, TLS or protocol failure.
    #[error("fetching {url} failed: {detail}")]
    Transport { url: String, detail: String },
    /// A status other than 200 (redirects are not followed).
    #[error("fetching {url} returned HTTP {status}")]
    Status { url: String, status: u16 },
    /// The body is larger than the cap.
    #[error("response from {url} is larger than {limit} bytes")]
    BodyTooLarge { url: String, limit: usize },
    /// The body is not the JSON document expected.
    #[error("response from {url} is not a valid {what}: {detail}")]
    BadDocument {
        url: String,
        what: &'static str,
        detail: String,
    },
    /// OpenID Connect Discovery 1.0 §4.3: the document's `issuer` must equal
    /// the issuer it was fetched for.
    #[error("discovery document at {url} names issuer {found:?}, expected {expected:?}")]
    DiscoveryIssuerMismatch {
        url: String,
        found: String,
        expected: String,
    },
}

/// Why an `identity:` configuration cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    /// `issuer` is empty.
    #[error("identity.issuer is empty")]
    NoIssuer,
    /// `audience` is empty.
    #[error("identity.audience is empty")]
    NoAudience,
    /// `groups_claim` is empty.
    #[error("identity.groups_claim is empty")]
    NoGroupsClaim,
    /// Two names in `group_names` map to one object id.
    #[error("identity.group_names maps both {first:?} and {second:?} to {id}")]
    DuplicateGroupId {
        id: String,
        first: String,
        second: String,
    },
    /// `max_token_bytes` is zero or absurd.
    #[error("identity.max_token_bytes must be between 1024 and 1048576, not {0}")]
    MaxTokenBytes(usize),
    /// `jwks_uri`, or the discovery URL built from the issuer, is not https
    /// (or http on loopback).
    #[error("identity: {0}")]
    Url(#[source] FetchError),
    /// `identity.graph` is unusable.
    #[error("identity.graph: {0}")]
    Graph(String),
    /// The HTTP client could not be built (TLS roots, ...).
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
}

/// A string from a token or a remote document, made safe for a log line:
/// at most 80 characters, control characters replaced.
pub(crate) fn clip(value: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = value
        .chars()
        .take(MAX)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if value.chars().count() > MAX {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn clip_bounds_and_cleans() {
        assert_eq!(clip("abc"), "abc");
        assert_eq!(clip("a\nb\u{1b}"), "a?b?");
        let long = "x".repeat(500);
        assert_eq!(clip(&long).chars().count(), 81);
    }
}
