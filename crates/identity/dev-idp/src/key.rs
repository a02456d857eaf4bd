//! The issuer's signing key: an RSA 2048 key in a PKCS#8 PEM file.
//!
//! Owns creating the file (once, atomically, readable by the owner only),
//! loading it, and the public JWK with its `kid` (the RFC 7638 thumbprint,
//! so the same file always yields the same `kid`). Keys are made at run time
//! only; none is ever committed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use rsa::RsaPrivateKey;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::DevIdpError;

const RSA_BITS: usize = 2048;

/// A loaded signing key.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    jwk: Value,
    encoding: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("SigningKey").field("kid", &self.kid).finish()
    }
}

impl SigningKey {
    /// Loads `path`, creating it with a new key first if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, DevIdpError> {
        if !path.exists() {
            create(path)?;
        }
        let pem = fs::read_to_string(path).map_err(|e| unreadable(path, e.to_string()))?;
        let private = RsaPrivateKey::from_pkcs8_pem(&pem).map_err(|e| unreadable(path, e.to_string()))?;
        Self::from_private(&private)
    }

    fn from_private(private: &RsaPrivateKey) -> Result<Self, DevIdpError> {
        let n = URL_SAFE_NO_PAD.encode(private.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(private.e().to_bytes_be());
        // RFC 7638 §3.2: required members only, sorted, no whitespace.
        let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        let der = private
            .to_pkcs1_der()
            .map_err(|e| DevIdpError::Signing(e.to_string()))?;
        Ok(SigningKey {
            jwk: json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e}),
            kid,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
        })
    }

    /// The key id: the RFC 7638 SHA-256 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// The JWKS document served to verifiers.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk.clone()] })
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }
}

/// Writes a new key to `path` unless another process got there first: the
/// key goes to a private temporary file that is then hard-linked into place,
/// which fails if `path` exists, so two racing starts agree on one key.
fn create(path: &Path) -> Result<(), DevIdpError> {
    let not_created = |source| DevIdpError::KeyFileNotCreated {
        path: path.to_owned(),
        source,
    };
    tracing::info!(path = %path.display(), "creating a new development signing key");
    let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, RSA_BITS)
        .map_err(|e| DevIdpError::Signing(e.to_string()))?;
    let pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| DevIdpError::Signing(e.to_string()))?;

    let temporary = temporary_path(path);
    let mut file = private_file(&temporary).map_err(not_created)?;
    let written = file.write_all(pem.as_bytes()).and_then(|()| file.sync_all());
    drop(file);
    let linked = written.and_then(|()| fs::hard_link(&temporary, path));
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(not_created(e)),
    }
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new().write(true).create_new(true).open(path)
}

fn unreadable(path: &Path, reason: String) -> DevIdpError {
    DevIdpError::KeyFileUnreadable {
        path: path.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let first = SigningKey::load_or_create(&path).unwrap();
        let second = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(first.kid(), second.kid());
        assert_eq!(first.kid().len(), 43, "base64url SHA-256");
        assert_eq!(first.jwk()["kid"], first.kid());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(!format!("{first:?}").contains("PRIVATE"));
    }

    #[test]
    fn garbage_key_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        fs::write(&path, "not a key").unwrap();
        let err = SigningKey::load_or_create(&path).unwrap_err();
        assert!(matches!(err, DevIdpError::KeyFileUnreadable { .. }), "{err}");
    }
}
