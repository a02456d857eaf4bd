//! Who is calling: a bearer token (API callers) or a browser session cookie
//! (made by the OIDC sign-in in `oidc.rs`), and CSRF protection for
//! state-changing browser requests.
//!
//! Tokens are verified here with the identity crate, so a bad one is a 401
//! before anything reaches the control plane; the control plane verifies
//! them again and alone decides what the caller may do. Browser sessions live
//! in this process's memory (a restart signs everyone out), or with
//! `reviewer.state: nats` in NATS KV, where every replica sees them and a
//! restart keeps them.
//!
//! Never log a [`Token`] or a cookie value: neither implements `Display`,
//! and `Debug` prints only a placeholder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_identity::Verifier;
use airlock_proto::v1 as proto;
use axum::http::HeaderMap;
use axum::http::header;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, Code};
use crate::shared::Shared;

/// A bearer token. Only [`Token::expose`] gives the text, to put it in the
/// `authorization` metadata of a control-plane call.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    pub fn new(text: String) -> Self {
        Token(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone)]
pub enum Via {
    Bearer,
    /// A browser session; state-changing requests must carry its CSRF token.
    Session {
        csrf: String,
    },
}

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token: Token,
    pub identity: proto::Identity,
    pub via: Via,
}

impl Caller {
    pub fn name(&self) -> &str {
        if self.identity.display_name.is_empty() {
            &self.identity.subject
        } else {
            &self.identity.display_name
        }
    }

    pub fn csrf(&self) -> &str {
        match &self.via {
            Via::Session { csrf } => csrf,
            Via::Bearer => "",
        }
    }
}

/// A signed-in browser.
#[derive(Debug, Clone)]
struct BrowserSession {
    token: Token,
    identity: proto::Identity,
    csrf: String,
    expires: Instant,
}

/// Browser sessions: in this process's memory by the SHA-256 of their
/// cookie value (the value itself is never stored), or, with
/// `reviewer.state: nats`, in NATS KV shared by every replica (see
/// [`crate::shared`]).
#[derive(Debug, Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], BrowserSession>>,
    shared: Option<Arc<Shared>>,
}

/// A browser session as stored in NATS KV (sealed; see [`crate::shared`]).
#[derive(Serialize, Deserialize)]
struct StoredSession {
    token: String,
    /// The protobuf encoding of the identity, base64.
    identity: String,
    csrf: String,
    /// Unix seconds.
    expires: i64,
}

/// At most this many live sessions; past it, expired ones are swept and, if
/// still full, sign-in is refused rather than memory grown without bound.
const MAX_SESSIONS: usize = 100_000;

pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hash(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// Compares secrets without an early exit on the first differing byte.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "browser sessions cannot be reached");
    ApiError::new(
        Code::Unavailable,
        "browser sessions cannot be reached right now; try again",
    )
}

impl Sessions {
    /// Sessions kept in NATS KV, shared by every replica.
    pub fn shared(shared: Arc<Shared>) -> Sessions {
        Sessions {
            by_hash: Mutex::default(),
            shared: Some(shared),
        }
    }

    /// Stores a session for a verified token; returns the cookie value.
    pub async fn create(
        &self,
        token: Token,
        identity: proto::Identity,
        ttl: Duration,
    ) -> Result<String, ApiError> {
        let cookie = random_token();
        let until_token_expiry = identity
            .token_expires_at
            .as_ref()
            .map(|t| t.seconds - time::OffsetDateTime::now_utc().unix_timestamp())
            .unwrap_or(0);
        let ttl = ttl.min(Duration::from_secs(
            u64::try_from(until_token_expiry).unwrap_or(0),
        ));
        if let Some(shared) = &self.shared {
            let stored = StoredSession {
                token: token.expose().to_owned(),
                identity: URL_SAFE_NO_PAD.encode(identity.encode_to_vec()),
                csrf: random_token(),
                expires: crate::shared::unix_now() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
            };
            let bytes = serde_json::to_vec(&stored).map_err(unavailable)?;
            shared.put_session(&cookie, &bytes).await.map_err(unavailable)?;
            return Ok(cookie);
        }
        let mut map = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SESSIONS {
            let now = Instant::now();
            map.retain(|_, s| s.expires > now);
            if map.len() >= MAX_SESSIONS {
                return Err(ApiError::new(Code::Unavailable, "too many browser sessions"));
            }
        }
        map.insert(
            hash(&cookie),
            BrowserSession {
                token,
                identity,
                csrf: random_token(),
                expires: Instant::now() + ttl,
            },
        );
        Ok(cookie)
    }

    async fn get(&self, cookie: &str) -> Result<Option<BrowserSession>, ApiError> {
        if let Some(shared) = &self.shared {
            let Some(bytes) = shared.session(cookie).await.map_err(unavailable)? else {
                return Ok(None);
            };
            let Ok(stored) = serde_json::from_slice::<StoredSession>(&bytes) else {
                return Ok(None);
            };
            let left = stored.expires - crate::shared::unix_now();
            let Ok(left) = u64::try_from(left) else {
                return Ok(None);
            };
            if left == 0 {
                return Ok(None);
            }
            let Some(identity) = URL_SAFE_NO_PAD
                .decode(&stored.identity)
                .ok()
                .and_then(|b| proto::Identity::decode(b.as_slice()).ok())
            else {
                return Ok(None);
            };
            return Ok(Some(BrowserSession {
                token: Token::new(stored.token),
                identity,
                csrf: stored.csrf,
                expires: Instant::now() + Duration::from_secs(left),
            }));
        }
        let mut map = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        let key = hash(cookie);
        Ok(match map.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        })
    }

    /// Ends the session on every replica that shares it.
    pub async fn remove(&self, cookie: &str) -> Result<(), ApiError> {
        if let Some(shared) = &self.shared {
            return shared.remove_session(cookie).await.map_err(unavailable);
        }
        self.by_hash
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&hash(cookie));
        Ok(())
    }

    /// Sessions stored (with NATS KV: entries in the bucket, expired ones
    /// until NATS drops them; 0 when it cannot be asked).
    pub async fn count(&self) -> usize {
        match &self.shared {
            Some(shared) => shared
                .session_count()
                .await
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                .unwrap_or(0),
            None => self.by_hash.lock().unwrap_or_else(|e| e.into_inner()).len(),
        }
    }
}

/// Names of the cookies. With `Secure`, the session cookie takes the
/// `__Host-` prefix, which browsers accept only from HTTPS, for `Path=/` and
/// without `Domain`.
pub fn session_cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-airlock_session"
    } else {
        "airlock_session"
    }
}

pub const LOGIN_COOKIE: &str = "airlock_login";

/// The value of cookie `name` from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
}

/// A `Set-Cookie` value. The session cookie is SameSite=Strict; the
/// short-lived login cookie must come back on the identity provider's
/// redirect (a cross-site navigation), so it is Lax.
pub fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age: Duration,
    strict: bool,
    secure: bool,
) -> String {
    format!(
        "{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite={}{}",
        max_age.as_secs(),
        if strict { "Strict" } else { "Lax" },
        if secure { "; Secure" } else { "" }
    )
}

pub fn clear_cookie(name: &str, path: &str, secure: bool) -> String {
    format!(
        "{name}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Verifies callers.
#[derive(Debug)]
pub struct Authenticator {
    pub verifier: Verifier,
    pub sessions: Sessions,
    pub secure_cookies: bool,
    /// `scheme://host[:port]` of the public URL, for the Origin check.
    pub origin: String,
}

impl Authenticator {
    /// A bearer token when the request has an `Authorization` header, else
    /// the browser session.
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value
                .to_str()
                .map_err(|_| ApiError::unauthenticated("authorization header is not text"))?;
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| ApiError::unauthenticated("authorization is not a bearer token"))?;
            let identity = self.verify(token).await?;
            return Ok(Caller {
                token: Token::new(token.to_owned()),
                identity,
                via: Via::Bearer,
            });
        }
        let cookie = cookie(headers, session_cookie_name(self.secure_cookies))
            .ok_or_else(|| ApiError::unauthenticated("sign in, or send Authorization: Bearer <token>"))?;
        let session = self
            .sessions
            .get(&cookie)
            .await?
            .ok_or_else(|| ApiError::unauthenticated("the browser session has ended; sign in again"))?;
        Ok(Caller {
            token: session.token,
            identity: session.identity,
            via: Via::Session { csrf: session.csrf },
        })
    }

    /// Verifies a token with the identity crate. The reason is kept (it
    /// never contains the token).
    pub async fn verify(&self, token: &str) -> Result<proto::Identity, ApiError> {
        match self.verifier.verify(token).await {
            Ok(identity) => Ok(identity.to_proto()),
            // Graph's own words are for the operator's log.
            Err(e @ airlock_identity::VerifyError::GraphUnavailable(_)) if e.is_unavailable() => {
                tracing::warn!(error = %e, "a reviewer's group overage could not be resolved");
                Err(ApiError::new(
                    Code::Unavailable,
                    "your token lists too many groups, and Microsoft Graph cannot be asked about them right \
                     now; try again later",
                ))
            }
            Err(e) if e.is_unavailable() => Err(ApiError::new(
                Code::Unavailable,
                format!("cannot check tokens right now: {e}"),
            )),
            Err(e) => Err(ApiError::unauthenticated(format!("token refused: {e}"))),
        }
    }

    /// The caller of a state-changing request. Browser sessions must send
    /// their CSRF token (`csrf` form field or `X-CSRF-Token` header), and an
    /// `Origin`, when sent, must be this server's. Bearer callers carry no
    /// ambient credential, so they need neither.
    pub async fn changing(&self, headers: &HeaderMap, form_csrf: Option<&str>) -> Result<Caller, ApiError> {
        let caller = self.caller(headers).await?;
        if let Via::Session { csrf } = &caller.via {
            if let Some(origin) = headers.get(header::ORIGIN)
                && origin.to_str().ok() != Some(self.origin.as_str())
            {
                return Err(ApiError::new(Code::Csrf, "cross-origin request refused"));
            }
            let sent = form_csrf
                .map(str::to_owned)
                .or_else(|| {
                    headers
                        .get("x-csrf-token")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            if sent.is_empty() || !same_secret(&sent, csrf) {
                return Err(ApiError::new(
                    Code::Csrf,
                    "missing or wrong CSRF token; reload the page and try again",
                ));
            }
        }
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_parse_and_tokens_stay_secret() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; airlock_session=xyz ; b=2".parse().unwrap());
        assert_eq!(cookie(&h, "airlock_session").as_deref(), Some("xyz"));
        assert_eq!(cookie(&h, "missing"), None);
        assert_eq!(format!("{:?}", Token::new("secret".into())), "Token(..)");
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        let c = set_cookie("n", "v", "/", Duration::from_secs(60), true, true);
        assert_eq!(c, "n=v; Path=/; Max-Age=60; HttpOnly; SameSite=Strict; Secure");
    }

    #[tokio::test]
    async fn sessions_end_with_their_token() {
        let sessions = Sessions::default();
        let mut identity = proto::Identity {
            token_expires_at: Some(prost_types::Timestamp {
                seconds: time::OffsetDateTime::now_utc().unix_timestamp() + 3600,
                nanos: 0,
            }),
            ..Default::default()
        };
        let cookie = sessions
            .create(Token::new("t".into()), identity.clone(), Duration::from_secs(60))
            .await
            .unwrap();
        assert!(sessions.get(&cookie).await.unwrap().is_some());
        assert!(sessions.get("other").await.unwrap().is_none());
        sessions.remove(&cookie).await.unwrap();
        assert!(sessions.get(&cookie).await.unwrap().is_none());
        // A token already expired makes a session that is already over.
        identity.token_expires_at = Some(prost_types::Timestamp { seconds: 1, nanos: 0 });
        let cookie = sessions
            .create(Token::new("t".into()), identity, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(sessions.get(&cookie).await.unwrap().is_none());
    }
}
