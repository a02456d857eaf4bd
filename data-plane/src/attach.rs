//! The proxy's one `Attach` stream to the control plane. It announces the
//! requests held here, receives their decisions and the kill orders for
//! sessions here, and reconnects with backoff, re-announcing everything held
//! (the control plane then sends decisions made meanwhile).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_eventlog::proto;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug)]
struct Held {
    session_id: String,
    sha256: Vec<u8>,
    /// Its `ApprovalRequested` is stored: only then does it need a
    /// cancellation (one with nothing before it on the request's subject
    /// would be a chain that does not start at its beginning).
    filed: bool,
    decision: oneshot::Sender<proto::DecisionNotice>,
}

#[derive(Debug, Default)]
struct Inner {
    held: HashMap<String, Held>,
    sessions: HashMap<String, mpsc::Sender<proto::KillOrder>>,
    /// The current stream's outbound queue, when attached.
    out: Option<mpsc::UnboundedSender<proto::ProxyMessage>>,
}

/// What this proxy holds, shared by sessions and the attach task.
#[derive(Debug)]
pub struct Holds {
    inner: Mutex<Inner>,
    attached: AtomicBool,
    /// This run of the process: in every Hello and SessionOpened, so the
    /// control plane can tell the sessions of a run that ended.
    instance: String,
    /// The live grants the control plane pushed, applied here.
    pub grants: crate::grants::Grants,
}

/// A request still registered when its session ended: it was never
/// decided, cancelled or run here.
#[derive(Debug)]
pub struct Abandoned {
    pub request_id: String,
}

fn message(m: proto::proxy_message::Message) -> proto::ProxyMessage {
    proto::ProxyMessage { message: Some(m) }
}

impl Holds {
    pub fn new() -> Arc<Holds> {
        Arc::new(Holds {
            inner: Mutex::default(),
            attached: AtomicBool::new(false),
            instance: ulid::Ulid::new().to_string(),
            grants: crate::grants::Grants::default(),
        })
    }

    /// This run of the proxy process.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while an Attach stream is up (else gated statements fail closed).
    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    /// Registers a held request; the receiver gets its decision.
    pub fn hold(
        &self,
        request_id: &str,
        session_id: &str,
        sha256: &[u8],
    ) -> oneshot::Receiver<proto::DecisionNotice> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        inner.held.insert(
            request_id.to_owned(),
            Held {
                session_id: session_id.to_owned(),
                sha256: sha256.to_vec(),
                filed: false,
                decision: tx,
            },
        );
        if let Some(out) = &inner.out {
            let _ = out.send(message(proto::proxy_message::Message::Holding(proto::Holding {
                held: Some(proto::Held {
                    request_id: request_id.to_owned(),
                    session_id: session_id.to_owned(),
                    statement_sha256: sha256.to_vec(),
                }),
            })));
        }
        rx
    }

    /// The request's `ApprovalRequested` is stored.
    pub fn filed(&self, request_id: &str) {
        if let Some(h) = self.lock().held.get_mut(request_id) {
            h.filed = true;
        }
    }

    /// The request is no longer held here.
    pub fn release(&self, request_id: &str) {
        let mut inner = self.lock();
        if let Some(h) = inner.held.remove(request_id)
            && let Some(out) = &inner.out
        {
            let _ = out.send(message(proto::proxy_message::Message::Released(
                proto::Released {
                    request_id: request_id.to_owned(),
                    session_id: h.session_id,
                    session_closed: false,
                },
            )));
        }
    }

    /// A session opened here: kill orders for it arrive on the receiver.
    pub fn open_session(&self, session_id: &str) -> mpsc::Receiver<proto::KillOrder> {
        let (tx, rx) = mpsc::channel(1);
        self.lock().sessions.insert(session_id.to_owned(), tx);
        rx
    }

    /// The session ended. Returns the filed requests it still held: ended
    /// by a route that did not settle them (PostgreSQL going away, an
    /// error), so the caller files their cancellation. (One whose filing
    /// was cut short, if it was stored after all, is cancelled by the
    /// control plane once the log shows the session closed.)
    pub fn close_session(&self, session_id: &str) -> Vec<Abandoned> {
        let mut inner = self.lock();
        inner.sessions.remove(session_id);
        let abandoned: Vec<String> = inner
            .held
            .iter()
            .filter(|(_, h)| h.session_id == session_id)
            .map(|(id, _)| id.clone())
            .collect();
        let abandoned: Vec<String> = abandoned
            .into_iter()
            .filter(|id| inner.held.remove(id).is_some_and(|h| h.filed))
            .collect();
        if let Some(out) = &inner.out {
            let _ = out.send(message(proto::proxy_message::Message::Released(
                proto::Released {
                    request_id: String::new(),
                    session_id: session_id.to_owned(),
                    session_closed: true,
                },
            )));
        }
        abandoned
            .into_iter()
            .map(|request_id| Abandoned { request_id })
            .collect()
    }

    fn deliver(&self, notice: proto::DecisionNotice) {
        if let Some(h) = self.lock().held.remove(&notice.request_id) {
            let _ = h.decision.send(notice);
        }
    }

    fn kill(&self, order: proto::KillOrder) {
        if let Some(tx) = self.lock().sessions.get(&order.session_id) {
            let _ = tx.try_send(order);
        }
    }

    /// Starts a stream: everything held goes in the Hello.
    fn connect_stream(&self, proxy_id: &str) -> mpsc::UnboundedReceiver<proto::ProxyMessage> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        let hello = proto::ProxyHello {
            proxy_id: proxy_id.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            held: inner
                .held
                .iter()
                .map(|(id, h)| proto::Held {
                    request_id: id.clone(),
                    session_id: h.session_id.clone(),
                    statement_sha256: h.sha256.clone(),
                })
                .collect(),
            session_ids: inner.sessions.keys().cloned().collect(),
            instance: self.instance.clone(),
        };
        let _ = tx.send(message(proto::proxy_message::Message::Hello(hello)));
        inner.out = Some(tx);
        rx
    }

    fn disconnected(&self) {
        self.attached.store(false, Ordering::Release);
        self.lock().out = None;
    }
}

/// TLS for the Attach link: the control plane's CA and, for a control
/// plane that authenticates proxies, this proxy's client certificate. The
/// files are watched ([`ControlTls::watch`]): each new connection uses the
/// latest version that checked.
#[derive(Debug, Clone)]
pub struct ControlTls {
    section: crate::config::ControlTlsSection,
    current: Arc<std::sync::RwLock<tonic::transport::ClientTlsConfig>>,
}

impl ControlTls {
    pub fn load(section: &crate::config::ControlTlsSection) -> anyhow::Result<ControlTls> {
        Ok(ControlTls {
            section: section.clone(),
            current: Arc::new(std::sync::RwLock::new(Self::read(section)?)),
        })
    }

    fn read(section: &crate::config::ControlTlsSection) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
        use anyhow::Context;
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("proxy.control_tls: reading {}", p.display()))
        };
        let ca = read(&section.ca)?;
        // Parsed now, not at the next connection: a CA file that is not one
        // is refused (and the one in force kept) instead of failing every
        // Attach from then on.
        use rustls::pki_types::pem::PemObject;
        let parsed = rustls::pki_types::CertificateDer::pem_slice_iter(&ca)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("proxy.control_tls.ca {}: {e}", section.ca.display()))?;
        if parsed.is_empty() {
            anyhow::bail!(
                "proxy.control_tls.ca {}: no certificate in the file",
                section.ca.display()
            );
        }
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca));
        match (&section.cert, &section.key) {
            (Some(cert), Some(key)) => {
                // Checked here, not at the next handshake: a pair that does
                // not belong together is refused and the old one kept.
                airlock_reload::load_certified_key(cert, key)
                    .map_err(|e| anyhow::anyhow!("proxy.control_tls: {e}"))?;
                tls = tls.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => anyhow::bail!("proxy.control_tls: set both cert and key, or neither"),
        }
        // What tonic will build at the next connection, built now.
        tonic::transport::Endpoint::from_static("https://control.invalid")
            .tls_config(tls.clone())
            .map_err(|e| anyhow::anyhow!("proxy.control_tls: {e}"))?;
        Ok(tls)
    }

    fn current(&self) -> tonic::transport::ClientTlsConfig {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the CA, certificate and key whenever one changes on disk.
    pub fn watch(&self, reloads: airlock_reload::Reloads) {
        let me = self.clone();
        let paths = [
            Some(&self.section.ca),
            self.section.cert.as_ref(),
            self.section.key.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        airlock_reload::watch(
            "proxy.control_tls",
            paths,
            reloads,
            Arc::new(move || {
                let fresh = Self::read(&me.section).map_err(|e| format!("{e:#}"))?;
                *me.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                Ok(())
            }),
        );
    }
}

/// Keeps one Attach stream up for as long as the task runs, to any of the
/// `controls` (`http://host:port` URLs of control-plane replicas): on a
/// failure it moves on to the next replica, with backoff once all failed.
pub async fn run(controls: Vec<String>, proxy_id: String, holds: Arc<Holds>) {
    run_with_tls(controls, None, proxy_id, holds).await
}

/// [`run`], over TLS when `tls` is given (the URLs are then `https://`).
pub async fn run_with_tls(
    controls: Vec<String>,
    tls: Option<ControlTls>,
    proxy_id: String,
    holds: Arc<Holds>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut i = 0usize;
    loop {
        let Some(control) = controls.get(i % controls.len().max(1)).cloned() else {
            tracing::error!("no control plane configured: gated statements will be refused");
            return;
        };
        i = i.wrapping_add(1);
        let was_attached = match attach_once(&control, tls.as_ref(), &proxy_id, &holds).await {
            Ok(()) => {
                tracing::warn!(%control, "control plane closed the Attach stream; reconnecting");
                true
            }
            Err((attached, e)) => {
                tracing::warn!(%control, error = %e, "Attach to the control plane failed; trying the next replica");
                attached
            }
        };
        holds.disconnected();
        if was_attached {
            // It worked until now: reconnect at once, elsewhere if need be.
            backoff = Duration::from_millis(100);
            continue;
        }
        if i.is_multiple_of(controls.len().max(1)) {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// One Attach stream; on failure, whether it had been attached.
async fn attach_once(
    control: &str,
    tls: Option<&ControlTls>,
    proxy_id: &str,
    holds: &Holds,
) -> Result<(), (bool, String)> {
    let mut attached = false;
    let result = attach_inner(control, tls, proxy_id, holds, &mut attached).await;
    result.map_err(|e| (attached, e))
}

async fn attach_inner(
    control: &str,
    tls: Option<&ControlTls>,
    proxy_id: &str,
    holds: &Holds,
    attached: &mut bool,
) -> Result<(), String> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(control.to_owned())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.current()).map_err(|e| e.to_string())?;
    }
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    let mut client = proto::proxy_service_client::ProxyServiceClient::new(channel);
    let outbound = holds.connect_stream(proxy_id);
    let mut inbound = client
        .attach(tokio_stream::wrappers::UnboundedReceiverStream::new(outbound))
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    // Missing three heartbeats means the link is dead.
    let silence = crate::attach::DEAD_AFTER;
    loop {
        let next = tokio::time::timeout(silence, inbound.next())
            .await
            .map_err(|_| "no heartbeat from the control plane".to_owned())?;
        let Some(msg) = next else { return Ok(()) };
        let msg = msg.map_err(|s| s.message().to_owned())?;
        use proto::control_message::Message;
        match msg.message {
            Some(Message::Welcome(w)) => {
                *attached = true;
                holds.attached.store(true, Ordering::Release);
                // The live grants follow the Welcome: what this proxy knew
                // of them before may have ended meanwhile.
                holds.grants.reset();
                tracing::info!(replica = %w.replica_id, "attached to the control plane");
            }
            Some(Message::Decision(d)) => holds.deliver(d),
            Some(Message::Kill(k)) => holds.kill(k),
            Some(Message::Grant(g)) => holds.grants.notice(g),
            Some(Message::Heartbeat(_)) | None => {}
        }
        if *attached {
            holds.grants.heard();
        }
    }
}

/// The control plane sends a heartbeat every 5 s; three missed end the link.
pub const DEAD_AFTER: Duration = Duration::from_secs(15);
