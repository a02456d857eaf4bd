//! Errors of the development issuer, named by condition.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DevIdpError {
    /// The issuer only ever listens on loopback: it is not a real IdP.
    #[error("refusing to listen on {0}: airlock-dev-idp listens on loopback addresses only (127.0.0.1, ::1)")]
    NonLoopbackListen(SocketAddr),
    /// `--issuer` is not an http(s) URL.
    #[error("invalid --issuer {url:?}: {reason}")]
    InvalidIssuer { url: String, reason: String },
    /// The key file exists but cannot be read or parsed.
    #[error("cannot read the signing key file {path}: {reason}")]
    KeyFileUnreadable { path: PathBuf, reason: String },
    /// The key file cannot be created.
    #[error("cannot create the signing key file {path}: {source}")]
    KeyFileNotCreated {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The `--login-config` file cannot be read or is not valid.
    #[error("login config {path}: {reason}")]
    LoginConfig { path: PathBuf, reason: String },
    /// The `--graph-config` file cannot be read or is not valid.
    #[error("graph config {path}: {reason}")]
    GraphConfig { path: PathBuf, reason: String },
    /// Key generation or token signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
    /// Binding or serving failed.
    #[error("cannot serve on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Writing the token to standard output failed.
    #[error("cannot write to standard output: {0}")]
    Output(#[source] std::io::Error),
}
