//! `control.tls`: the gRPC listener's TLS, done here rather than by tonic so
//! that the certificate is served through a [`LiveCert`] (a renewed pair on
//! disk is taken into use without a restart) while tonic still sees each
//! connection's client certificate (Attach binds it to the proxy id).

use std::net::SocketAddr;
use std::sync::Arc;

use airlock_reload::LiveCert;
use anyhow::Context;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::GrpcTls;

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
    /// `serve_with_incoming` (see [`airlock_reload::handshaken`]).
    pub async fn incoming(
        &self,
        listen: SocketAddr,
    ) -> anyhow::Result<impl tokio_stream::Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> + use<>>
    {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("serving gRPC on {listen}"))?;
        let ready = airlock_reload::handshaken(listener, self.acceptor.clone());
        Ok(ReceiverStream::new(ready).map(|(stream, _)| Ok(stream)))
    }
}
