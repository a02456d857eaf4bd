//! Where and as whom the proxy logs into PostgreSQL: the connection's
//! credential and TLS mode. Plain data; the agent never sees any of it.

use std::fmt;
use std::time::Duration;

/// A password that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself. Never log what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// TLS to the upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UpstreamTls {
    #[default]
    Disable,
    /// Encrypted; the certificate is not checked (libpq's `require`).
    Require,
    /// Encrypted; chain checked against this CA file, and the host name.
    VerifyFull { root_cert: std::path::PathBuf },
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub tls: UpstreamTls,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    pub password: Option<Secret>,
    /// `upstream_auth: entra`: the proxy's own Entra token is the password
    /// (fetched, kept and refreshed by the identity crate); `password` is
    /// then unset.
    pub token: Option<std::sync::Arc<airlock_identity::UpstreamToken>>,
    pub connect_timeout: Duration,
}
