//! Serving HTTPS directly (`reviewer.tls`), for deployments without a
//! TLS-terminating proxy in front. Handshakes run in their own tasks with a
//! timeout, so a slow or silent client never holds up the others.

use std::path::PathBuf;
use std::sync::Arc;

use airlock_reload::LiveCert;
use anyhow::Context;
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

/// `reviewer.tls:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Builds the acceptor from PEM files (HTTP/2 and HTTP/1.1 offered). The
/// certificate is served through the returned [`LiveCert`], to watch for
/// renewal.
pub fn acceptor(files: &TlsFiles) -> anyhow::Result<(TlsAcceptor, Arc<LiveCert>)> {
    let live = LiveCert::load(&files.cert, &files.key).map_err(|e| anyhow::anyhow!("reviewer.tls: {e}"))?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_cert_resolver(live.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), live))
}

pub use airlock_reload::TlsListener;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn serves_https_with_the_configured_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let files = TlsFiles {
            cert: dir.path().join("c.pem"),
            key: dir.path().join("k.pem"),
        };
        std::fs::write(&files.cert, cert.cert.pem()).unwrap();
        std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let (tls, live) = acceptor(&files).unwrap();
        let listener = TlsListener::new(tcp, tls).unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "over TLS" }));
        tokio::spawn(async move { axum::serve(listener, app).await });

        // A client that never handshakes does not block the next one.
        let _silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
            .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], port)))
            .build()
            .unwrap();
        let body = client
            .get(format!("https://localhost:{port}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "over TLS");

        // A renewed certificate is served from the next handshake on.
        let renewed = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&files.cert, renewed.cert.pem()).unwrap();
        std::fs::write(&files.key, renewed.signing_key.serialize_pem()).unwrap();
        live.reload().unwrap();
        let trusting = |pem: String| {
            reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
                .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], port)))
                .build()
                .unwrap()
        };
        let url = format!("https://localhost:{port}/");
        assert!(
            trusting(cert.cert.pem()).get(&url).send().await.is_err(),
            "the old certificate is no longer served"
        );
        let body = trusting(renewed.cert.pem())
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "over TLS");

        let bad = TlsFiles {
            cert: files.key.clone(),
            key: files.key.clone(),
        };
        assert!(acceptor(&bad).is_err(), "a key is not a certificate");
    }
}
