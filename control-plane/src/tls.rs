//! `control.tls`: the gRPC listener's TLS, done here rather than by tonic so
//! that the certificate is served through a [`LiveCert`] (a renewed pair on
//! disk is taken into use without a restart) while tonic still sees each
//! connection's client certificate (Attach binds it to the proxy id).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_reload::LiveCert;
use anyhow::Context;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::GrpcTls;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The acceptor for `control.tls`, and the certificate to watch.
pub struct GrpcListener {
    acceptor: TlsAcceptor,
    pub certificate: Arc<LiveCert>,
}

impl std::fmt::Debug for GrpcListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcListener")
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

impl GrpcListener {
    /// Server certificate always; with `client_ca`, client certificates
    /// signed by it are verified when offered (optional at the handshake:
    /// reviewers and integrators come with tokens; Attach requires one).
    pub fn load(tls: &GrpcTls) -> anyhow::Result<GrpcListener> {
        let certificate =
            LiveCert::load(&tls.cert, &tls.key).map_err(|e| anyhow::anyhow!("control.tls: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("control.tls")?;
        let builder = match &tls.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .with_context(|| format!("control.tls.client_ca: reading {}", ca.display()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    anyhow::bail!("control.tls.client_ca: no CA certificate in {}", ca.display());
                }
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .allow_unauthenticated()
                        .build()
                        .context("control.tls.client_ca")?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(GrpcListener {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate,
        })
    }

    /// Connections on `listen` that completed their handshake, for
    /// `serve_with_incoming`. Each handshake runs on its own task, so a
    /// client that stalls holds up nobody else.
    pub async fn incoming(
        &self,
        listen: SocketAddr,
    ) -> anyhow::Result<ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>>> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("serving gRPC on {listen}"))?;
        let (ready, incoming) = tokio::sync::mpsc::channel(64);
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            loop {
                let (socket, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, go on.
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let (acceptor, sender) = (acceptor.clone(), ready.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "gRPC TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "gRPC TLS handshake timed out"),
                    }
                });
                if ready.is_closed() {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(incoming))
    }
}
