//! HTTP fetching of OIDC discovery documents and JWKS.
//!
//! Owns the transport rules: https (rustls, system trust store), or http only
//! to a loopback host; no redirects; a timeout on every request; a cap on the
//! body size. Knows nothing about keys or caching: it returns JSON values.

use std::net::IpAddr;
use std::time::Duration;

use url::{Host, Url};

use crate::error::{ConfigError, FetchError};

/// The largest discovery or JWKS body accepted. Entra's JWKS is about 10 KiB.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// Parses `raw` and checks it may be fetched: `https`, or `http` when the host
/// is a loopback address (127.0.0.0/8, ::1, `localhost`).
pub fn check_fetch_url(raw: &str) -> Result<Url, FetchError> {
    let url = Url::parse(raw).map_err(|e| FetchError::InvalidUrl {
        url: raw.to_owned(),
        reason: e.to_string(),
    })?;
    let loopback = match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(FetchError::InsecureUrl { url: raw.to_owned() }),
    }
}

/// A small HTTP client for discovery and JWKS documents.
#[derive(Debug, Clone)]
pub(crate) struct Fetcher {
    client: reqwest::Client,
    timeout: Duration,
}

impl Fetcher {
    pub(crate) fn new(timeout: Duration) -> Result<Self, ConfigError> {
        let client = reqwest::Client::builder()
            // A redirect could lead from https to plain http; issuers do not
            // redirect their metadata, so none are followed.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(false)
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("airlock-identity/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::HttpClient(e.to_string()))?;
        Ok(Fetcher { client, timeout })
    }

    /// GETs `url` and parses the body as JSON; `what` names the document in
    /// errors. The URL is checked again here so that a discovered `jwks_uri`
    /// obeys the same rule as a configured one.
    pub(crate) async fn get_json(
        &self,
        url: &str,
        what: &'static str,
    ) -> Result<serde_json::Value, FetchError> {
        let parsed = check_fetch_url(url)?;
        let body = tokio::time::timeout(self.timeout, self.get_capped(parsed))
            .await
            .map_err(|_| FetchError::Timeout {
                url: url.to_owned(),
                after: self.timeout,
            })??;
        serde_json::from_slice(&body).map_err(|e| FetchError::BadDocument {
            url: url.to_owned(),
            what,
            detail: e.to_string(),
        })
    }

    async fn get_capped(&self, url: Url) -> Result<Vec<u8>, FetchError> {
        let shown = url.to_string();
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                FetchError::Timeout {
                    url: shown.clone(),
                    after: self.timeout,
                }
            } else {
                FetchError::Transport {
                    url: shown.clone(),
                    detail: error_chain(&e),
                }
            }
        };
        let mut response = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(transport)?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(FetchError::Status {
                url: shown.clone(),
                status: response.status().as_u16(),
            });
        }
        let too_large = || FetchError::BodyTooLarge {
            url: shown.clone(),
            limit: MAX_DOCUMENT_BYTES,
        };
        if response
            .content_length()
            .is_some_and(|len| len > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(too_large());
        }
        // The length header may be absent or lie: count what arrives.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// An error and its sources on one line (reqwest hides the useful part, such
/// as "connection refused" or a TLS failure, in the chain).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::check_fetch_url;

    #[test]
    fn fetch_url_rule() {
        for ok in [
            "https://login.microsoftonline.com/t/discovery/v2.0/keys",
            "http://127.0.0.1:8080/keys",
            "http://127.8.9.10/keys",
            "http://[::1]:9/keys",
            "http://localhost:9/keys",
            "https://10.0.0.1/keys",
        ] {
            check_fetch_url(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "http://login.microsoftonline.com/keys",
            "http://10.0.0.1/keys",
            "http://localhost.evil.example/keys",
            "ftp://127.0.0.1/keys",
            "file:///etc/keys",
            "not a url",
        ] {
            assert!(check_fetch_url(bad).is_err(), "{bad} should be refused");
        }
    }
}
