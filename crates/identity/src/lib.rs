//! OIDC / Microsoft Entra ID access-token verification and claim mapping.
//!
//! Owns the answer to "who is this caller?" for the proxy, the control plane
//! and the reviewer API: a [`Verifier`] built from the `identity:` section of
//! `airlock.yaml` ([`IdentityConfig`]) turns an access token into an
//! [`Identity`] or a precise [`VerifyError`]. It does not decide what the
//! caller may do (that is `airlock-policy`). It calls Microsoft Graph only
//! for tokens with group overage, and only when `identity.graph` is set
//! (see [`GraphConfig`]).
//!
//! What a token must satisfy, in order:
//! 1. at most `max_token_bytes` (default 16 KiB), three base64url segments;
//! 2. header `alg` is RS256, PS256 or ES256 (never `none`, never HMAC), no
//!    `crit`, and a `kid`;
//! 3. the issuer's JWKS has a usable key under that `kid` of a type matching
//!    `alg` (RSA ≥ 2048 bits, or EC P-256), and the signature verifies;
//! 4. `iss` equals a configured issuer exactly; `aud` (string or list)
//!    contains a configured audience; `exp` is present and, with the leeway
//!    (default 60 s), not passed; `nbf`, when present, has arrived;
//! 5. a client app claim (`azp` or `appid`): Entra access tokens always
//!    have one, ID tokens never, so an ID token cannot pass as an access
//!    token; and group overage only when `identity.graph` can resolve it.
//!
//! Keys come only from the configured `jwks_uri` or, without one, from the
//! `jwks_uri` in `<issuer>/.well-known/openid-configuration`; never from the
//! token (`jku`, `x5u`, `jwk`, `x5c` are ignored). See [`CacheOptions`] for
//! the refetch, refresh and outage rules.
//!
//! ```no_run
//! # async fn login(config: airlock_identity::IdentityConfig, password: &str)
//! #     -> Result<(), airlock_identity::VerifyError> {
//! // Once per process; clones share the key cache.
//! let verifier = airlock_identity::Verifier::new(config)?;
//! // Per login: the password is the access token.
//! let identity = verifier.verify(password).await?;
//! let may_review = identity.in_group("db-reviewers");
//! # let _ = may_review; Ok(()) }
//! ```
//!
//! Identity mapping (Entra): subject = `oid`, else `sub`; tenant = `tid`;
//! display name = `name`, `preferred_username`, `upn` or `app_displayname`;
//! client app = `azp`, else `appid`; kind: see [`PrincipalKind`]; groups from
//! `groups_claim`, each with its `group_names` name when configured; roles
//! from `roles`.

mod assertion;
mod cache;
mod check;
mod claims;
mod config;
mod error;
mod fetch;
mod graph;
mod identity;
mod jwt;
mod keys;
mod verifier;
mod workload;

pub use cache::CacheOptions;
pub use check::{CheckReport, check_token};
pub use config::{DEFAULT_LEEWAY, DEFAULT_MAX_TOKEN_BYTES, IdentityConfig, IdentitySection, OneOrMany};
pub use error::{ConfigError, FetchError, VerifyError};
pub use fetch::{MAX_DOCUMENT_BYTES, check_fetch_url};
pub use graph::{
    ClientCertificate, DEFAULT_GRAPH_CACHE_TTL, DEFAULT_GRAPH_ENDPOINT, DEFAULT_GRAPH_TIMEOUT, GraphConfig,
    GraphError,
};
pub use identity::{
    ClientAppId, GroupId, GroupMembership, GroupsSource, Identity, PrincipalKind, SubjectId, TenantId,
};
pub use verifier::Verifier;
pub use workload::{
    AZURE_POSTGRES_SCOPE, Credential, IMDS_TOKEN_ENDPOINT, TokenError, UpstreamToken, WorkloadIdentity,
};

mod to_proto;
