//! A client connection after startup, as the session receives it: the
//! byte stream (TCP or TLS), what the client asked for, and the one way to
//! end it before a session exists. Shared by the front door and the
//! session, so neither imports the other's internals.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::codec::{BeMessage, Diagnostic, FrameReader};

/// Any byte stream the session can run over (TCP or TLS over TCP).
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> ClientStream for T {}

/// The client's side after startup.
pub struct Login {
    pub io: FrameReader<Box<dyn ClientStream>>,
    pub peer: SocketAddr,
    pub tls: bool,
    pub params: Vec<(String, String)>,
    /// When the client must have finished logging in (`proxy.startup_timeout`
    /// from the moment it connected): a client that never sends its token
    /// does not keep a connection slot.
    pub deadline: tokio::time::Instant,
    /// Held until the login is decided: counts against
    /// `proxy.max_unauthenticated`.
    pub unauthenticated: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("peer", &self.peer)
            .field("tls", &self.tls)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// Sends a FATAL error (from [`crate::error_response`]) and flushes; the
/// caller then drops the connection.
pub async fn fatal<S: AsyncWrite + Unpin + ?Sized>(io: &mut FrameReader<Box<S>>, error: &Diagnostic)
where
    Box<S>: AsyncRead + Unpin,
{
    let mut out = BytesMut::new();
    BeMessage::ErrorResponse(error).encode(&mut out);
    let w = io.get_mut();
    let _ = w.write_all(&out).await;
    let _ = w.flush().await;
}
