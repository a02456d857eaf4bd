//! TLS to the upstream, as libpq's sslmode: `disable` (plain TCP),
//! `require` (encrypted, the server's certificate not checked) and
//! `verify-full` (chain checked against `sslrootcert`, and the host name).

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{UpstreamConfig, UpstreamError, UpstreamTls};
use crate::conn::ClientStream;

/// Negotiates TLS as configured (SSLRequest, then the handshake).
pub(super) async fn tls(
    mut stream: TcpStream,
    config: &UpstreamConfig,
    addr: &str,
) -> Result<Box<dyn ClientStream>, UpstreamError> {
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    let err = |detail: String| UpstreamError::Tls {
        addr: addr.to_owned(),
        detail,
    };
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match &config.tls {
        UpstreamTls::Disable => return Ok(Box::new(stream)),
        UpstreamTls::Require => Arc::new(AnyCertificate(provider())),
        UpstreamTls::VerifyFull { root_cert } => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(root_cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| err(format!("reading sslrootcert {}: {e}", root_cert.display())))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| err(format!("sslrootcert {}: {e}", root_cert.display())))?;
            }
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider()))
                .build()
                .map_err(|e| err(e.to_string()))?
        }
    };
    // SSLRequest.
    stream.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(err("the server does not accept TLS connections".into()));
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(config.host.clone())
        .map_err(|e| err(format!("host name {}: {e}", config.host)))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, stream)
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(Box::new(stream))
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// libpq's `sslmode=require`: any certificate, but handshake signatures are
/// still checked (the session is encrypted to whoever holds the key).
#[derive(Debug)]
struct AnyCertificate(rustls::crypto::CryptoProvider);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
