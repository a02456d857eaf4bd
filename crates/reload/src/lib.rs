//! Files that change under a running binary: the policies in `airlock.yaml`
//! and TLS certificates, watched on disk and swapped in whole when the new
//! version checks. A version that does not check is refused with a log line
//! and a count in `<binary>_config_reloads_total{outcome="refused"}`, and the
//! old one stays in force.
//!
//! Files are polled, not watched through inotify: twice a second each file
//! is read through its path, following symlinks, and its bytes hashed. That
//! sees Kubernetes' way of updating a mounted ConfigMap or Secret (the
//! `..data` symlink swapped to a new directory, the file's own path never
//! written), editors that write a new file and rename it, and in-place
//! writes alike. A change is applied once two reads in a row agree on it:
//! a file still being written in place (which may parse, cut short at a
//! line's end, as a weaker policy) is not taken into use half written.
//! Only regular files of at most [`MAX_FILE`] bytes are read.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// How often watched files are read. A change is applied after two reads
/// agree, so within two of these.
pub const POLL: Duration = Duration::from_millis(500);

/// Larger files are not read (a path swapped to a device or a huge file
/// must not stall or exhaust the watcher); they never check.
pub const MAX_FILE: u64 = 16 << 20;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Refused,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Outcome::Applied => "applied",
            Outcome::Refused => "refused",
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    what: String,
    outcome: Outcome,
}

/// Reloads by what was reloaded and how it went; cheap to clone (one
/// counter family shared).
#[derive(Debug, Clone, Default)]
pub struct Reloads {
    family: Family<Labels, Counter>,
}

impl Reloads {
    pub fn new() -> Reloads {
        Reloads::default()
    }

    /// Adds `<prefix>_config_reloads_total{what, outcome}` to `registry`
    /// (its prefix names the binary: `airlock_proxy`, `airlock_control`,
    /// `airlock_reviewer`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "config_reloads",
            "Changed files taken into use (applied) or refused because the new version does not check (the old one stays in force)",
            self.family.clone(),
        );
    }

    pub fn record(&self, what: &str, outcome: Outcome) {
        self.family
            .get_or_create(&Labels {
                what: what.to_owned(),
                outcome,
            })
            .inc();
    }

    pub fn count(&self, what: &str, outcome: Outcome) -> u64 {
        self.family
            .get_or_create(&Labels {
                what: what.to_owned(),
                outcome,
            })
            .get()
    }
}

/// What a set of files holds now: the hash of their bytes, or of why one
/// could not be read (so a file that disappears, then comes back, is seen).
fn fingerprint(paths: &[PathBuf]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for path in paths {
        match read_regular(path) {
            Ok(bytes) => add_ok(&mut hash, &bytes),
            Err(e) => {
                hash.update(b"error");
                hash.update(e.as_bytes());
            }
        }
    }
    hash.finalize().into()
}

fn add_ok(hash: &mut Sha256, bytes: &[u8]) {
    hash.update(b"ok");
    hash.update((bytes.len() as u64).to_le_bytes());
    hash.update(bytes);
}

/// What [`fingerprint`] gives for files that hold `contents` (the bytes a
/// binary loaded at start), to watch for changes from exactly those.
pub fn fingerprint_of(contents: &[&[u8]]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for bytes in contents {
        add_ok(&mut hash, bytes);
    }
    hash.finalize().into()
}

fn read_regular(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.kind().to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    if meta.len() > MAX_FILE {
        return Err("too large".to_owned());
    }
    std::fs::read(path).map_err(|e| e.kind().to_string())
}

/// Applies a new version of the watched files: `Ok` once it is in force,
/// `Err` with the reason it was refused (the old version stays).
pub type Apply = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Watches `paths` for as long as the returned task runs, calling `apply`
/// once each time what they hold changes. `what` names them in logs and in
/// the metric. The state seen when this is called counts as in force.
pub fn watch(what: &str, paths: Vec<PathBuf>, reloads: Reloads, apply: Apply) -> tokio::task::JoinHandle<()> {
    let since = fingerprint(&paths);
    watch_every(what, paths, reloads, apply, POLL, since)
}

/// [`watch`], every `every`, with `since` (see [`fingerprint_of`]) as the
/// state in force.
pub fn watch_every(
    what: &str,
    paths: Vec<PathBuf>,
    reloads: Reloads,
    apply: Apply,
    every: Duration,
    since: [u8; 32],
) -> tokio::task::JoinHandle<()> {
    let what = what.to_owned();
    let paths = Arc::new(paths);
    tokio::spawn(async move {
        let mut seen = since;
        let mut changed: Option<[u8; 32]> = None;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let reading = paths.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&reading)).await else {
                continue;
            };
            if now == seen {
                changed = None;
                continue;
            }
            // Applied once a second read agrees: not half written.
            if changed != Some(now) {
                changed = Some(now);
                continue;
            }
            // A refused version is not tried again until the files change
            // once more: one log line per bad version, not one per second.
            seen = now;
            changed = None;
            run(&what, &reloads, &apply);
        }
    })
}

/// Applies once and records the outcome (for SIGHUP and for the watcher).
pub fn run(what: &str, reloads: &Reloads, apply: &Apply) -> bool {
    // A panic in `apply` is a refusal, not the end of the watcher.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply()))
        .unwrap_or_else(|_| Err("the reload panicked".to_owned()));
    match outcome {
        Ok(()) => {
            reloads.record(what, Outcome::Applied);
            tracing::info!(what, "reloaded");
            true
        }
        Err(error) => {
            reloads.record(what, Outcome::Refused);
            tracing::error!(what, %error, "reload refused; the version in force stays");
            false
        }
    }
}

/// A certificate chain and its key from PEM files, checked to belong
/// together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in the file", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, private, &rustls::crypto::ring::default_provider()).map_err(|e| {
        format!(
            "{} and {} do not make a certificate and key: {e}",
            cert.display(),
            key.display()
        )
    })
}

/// A certificate and key in force, for a TLS server or client, replaced when
/// their files change (see [`LiveCert::watch`]).
#[derive(Debug)]
pub struct LiveCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl LiveCert {
    /// Loads the pair; an error names the file and the cause.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<LiveCert>, String> {
        let loaded = load_certified_key(cert, key)?;
        Ok(Arc::new(LiveCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(loaded)),
        }))
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the files again and puts the pair in force if it checks.
    pub fn reload(&self) -> Result<(), String> {
        let loaded = load_certified_key(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
        Ok(())
    }

    /// Watches both files; `what` names them in logs and in the metric.
    pub fn watch(self: &Arc<Self>, what: &str, reloads: Reloads) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        watch(
            what,
            vec![self.cert.clone(), self.key.clone()],
            reloads,
            Arc::new(move || me.reload()),
        )
    }
}

impl rustls::server::ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for LiveCert {
    fn resolve(&self, _issuers: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client that has not finished its TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts on `listener` for as long as the returned receiver lives, and
/// hands over the connections that completed their TLS handshake with
/// `acceptor` (a [`LiveCert`]'s, so renewals apply from the next one). Each
/// handshake runs on its own task, so a client that stalls holds up nobody
/// else; failed and timed-out handshakes are dropped (logged at debug).
pub fn handshaken(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> tokio::sync::mpsc::Receiver<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    std::net::SocketAddr,
)> {
    let (tx, ready) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = tcp.set_nodelay(true);
            let (acceptor, ready) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = ready.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ready
}

#[cfg(test)]
mod tests;

/// A listener for `axum::serve` whose connections have completed their TLS
/// handshake ([`handshaken`]).
#[derive(Debug)]
pub struct TlsListener {
    addr: std::net::SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
}

impl TlsListener {
    pub fn new(
        listener: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
    ) -> std::io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let ready = handshaken(listener, acceptor);
        Ok(TlsListener { addr, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
