//! Cancel requests. A client cancels with the key the proxy gave it in
//! BackendKeyData, on a new connection, which in a fleet may reach any
//! proxy. The proxy that holds the session acts on it: a held statement is
//! cancelled (its request becomes ApprovalCancelled, the client gets 57014);
//! a statement running upstream is cancelled there with the upstream's own
//! key, which the client never sees. A proxy that does not know the key
//! passes it on over NATS (core, not the event log) to every proxy; only the
//! one holding the session acts, and a wrong secret does nothing, as in
//! PostgreSQL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Subject prefix for cancels passed between proxies (outside the event
/// log's `airlock.v1.>`: cancels are signals, not records).
pub const CANCEL_SUBJECT: &str = "airlock.cancel.v1";

/// What a session registers so it can be cancelled.
#[derive(Debug, Clone)]
pub struct Cancellable {
    /// Set while a statement is held awaiting a decision.
    pub holding: Arc<AtomicBool>,
    /// Cancels the held statement.
    pub cancel_hold: mpsc::Sender<()>,
    pub upstream_addr: String,
    pub upstream_key: (i32, i32),
}

/// Sessions of this proxy by the key their clients hold.
#[derive(Debug, Default)]
pub struct Cancels {
    sessions: Mutex<HashMap<(i32, i32), Cancellable>>,
    nats: Mutex<Option<async_nats::Client>>,
}

impl Cancels {
    pub fn new() -> Arc<Cancels> {
        Arc::new(Cancels::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, i32), Cancellable>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, key: (i32, i32), c: Cancellable) {
        self.lock().insert(key, c);
    }

    pub fn unregister(&self, key: (i32, i32)) {
        self.lock().remove(&key);
    }

    /// Handles a CancelRequest that arrived on this proxy.
    pub async fn cancel(&self, process_id: i32, secret_key: i32) {
        if self.act(process_id, secret_key).await {
            return;
        }
        let nats = self.nats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(nats) = nats {
            let mut payload = Vec::with_capacity(8);
            payload.extend_from_slice(&process_id.to_be_bytes());
            payload.extend_from_slice(&secret_key.to_be_bytes());
            let subject = format!("{CANCEL_SUBJECT}.{process_id}");
            if let Err(e) = nats.publish(subject, payload.into()).await {
                tracing::warn!(error = %e, "could not pass a cancel request to the fleet");
            }
        }
    }

    /// Acts on a cancel for a session of this proxy; false if none matches.
    async fn act(&self, process_id: i32, secret_key: i32) -> bool {
        let Some(c) = self.lock().get(&(process_id, secret_key)).cloned() else {
            return false;
        };
        if c.holding.load(Ordering::Acquire) {
            let _ = c.cancel_hold.try_send(());
        } else {
            relay(&c.upstream_addr, c.upstream_key).await;
        }
        true
    }

    /// Listens for cancels passed on by other proxies.
    pub async fn listen(self: Arc<Self>, nats: async_nats::Client) {
        *self.nats.lock().unwrap_or_else(|p| p.into_inner()) = Some(nats.clone());
        let mut sub = match nats.subscribe(format!("{CANCEL_SUBJECT}.*")).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot receive cancel requests from other proxies");
                return;
            }
        };
        while let Some(msg) = sub.next().await {
            let p = &msg.payload;
            if p.len() != 8 {
                continue;
            }
            let pid = i32::from_be_bytes([p[0], p[1], p[2], p[3]]);
            let key = i32::from_be_bytes([p[4], p[5], p[6], p[7]]);
            // Each on its own task: a relay waits for its upstream, and one
            // slow upstream must not delay the fleet's other cancels.
            let cancels = self.clone();
            tokio::spawn(async move { cancels.act(pid, key).await });
        }
    }
}

/// Sends PostgreSQL a CancelRequest for the upstream session.
pub async fn relay(addr: &str, (pid, key): (i32, i32)) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        tracing::warn!(%addr, "cannot reach the upstream to cancel a query");
        return;
    };
    let mut packet = Vec::with_capacity(16);
    packet.extend_from_slice(&16i32.to_be_bytes());
    packet.extend_from_slice(&crate::codec::CANCEL_REQUEST_CODE.to_be_bytes());
    packet.extend_from_slice(&pid.to_be_bytes());
    packet.extend_from_slice(&key.to_be_bytes());
    if s.write_all(&packet).await.is_err() {
        return;
    }
    // PostgreSQL closes the connection once it has passed the request on
    // to the backend; libpq waits for that, and so does the proxy before it
    // closes the client's cancel connection: a client that then sends its
    // next statement does not have that one cancelled instead.
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}
