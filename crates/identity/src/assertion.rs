//! Certificate credentials: the signed client assertion (RFC 7523) an
//! application presents instead of a client secret.
//!
//! Owns reading the certificate and its key, the SHA-256 thumbprint Entra
//! matches against the certificate registered on the application
//! (`x5t#S256`), and minting a short-lived assertion for one token endpoint.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::RsaPrivateKey;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::DecodePrivateKey;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::graph::ClientCertificate;

/// How long an assertion is valid: Entra accepts up to 10 minutes.
const ASSERTION_TTL_SECS: u64 = 5 * 60;

/// A loaded certificate credential.
#[derive(Clone)]
pub(crate) struct CertificateCredential {
    client_id: String,
    thumbprint: String,
    key: EncodingKey,
}

impl CertificateCredential {
    /// Reads the certificate and key files; the reason when they are unusable.
    pub(crate) fn load(files: &ClientCertificate, client_id: &str) -> Result<Self, String> {
        let cert = std::fs::read_to_string(&files.cert)
            .map_err(|e| format!("client_certificate.cert {}: {e}", files.cert))?;
        let der = pem_block(&cert, "CERTIFICATE")
            .ok_or_else(|| format!("client_certificate.cert {} holds no PEM certificate", files.cert))?;
        let key = std::fs::read_to_string(&files.key)
            .map_err(|e| format!("client_certificate.key {}: {e}", files.key))?;
        let not_rsa = |e: String| {
            format!(
                "client_certificate.key {} is not an RSA private key in PEM: {e}",
                files.key
            )
        };
        let private = RsaPrivateKey::from_pkcs8_pem(&key)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(&key))
            .map_err(|e| not_rsa(e.to_string()))?;
        let pkcs1 = private.to_pkcs1_der().map_err(|e| not_rsa(e.to_string()))?;
        let key = EncodingKey::from_rsa_der(pkcs1.as_bytes());
        Ok(CertificateCredential {
            client_id: client_id.to_owned(),
            thumbprint: URL_SAFE_NO_PAD.encode(Sha256::digest(&der)),
            key,
        })
    }

    /// A signed assertion for `audience` (the token endpoint).
    pub(crate) fn assertion(&self, audience: &str) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let mut jti = [0u8; 16];
        rand_bytes(&mut jti);
        let mut header = Header::new(Algorithm::RS256);
        header.x5t_s256 = Some(self.thumbprint.clone());
        let claims = json!({
            "aud": audience,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_TTL_SECS,
        });
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("signing the client assertion: {e}"))
    }
}

/// The DER bytes of the first PEM block labelled `label`.
pub(crate) fn pem_block(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let body: String = text[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(body).ok()
}

fn rand_bytes(out: &mut [u8]) {
    // The assertion id only needs to be unique; the time and a process
    // counter feed SHA-256 so no RNG crate is needed here.
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let digest = Sha256::new()
        .chain_update(nanos.to_le_bytes())
        .chain_update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes())
        .chain_update(std::process::id().to_le_bytes())
        .finalize();
    let n = out.len().min(digest.len());
    out[..n].copy_from_slice(&digest[..n]);
}

#[cfg(test)]
mod tests {
    use super::pem_block;

    #[test]
    fn pem_blocks() {
        let text = "junk\n-----BEGIN CERTIFICATE-----\nAAEC\nAw==\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_block(text, "CERTIFICATE").unwrap(), vec![0, 1, 2, 3]);
        assert!(pem_block(text, "PRIVATE KEY").is_none());
    }
}
