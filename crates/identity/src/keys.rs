//! A JWKS document (RFC 7517) turned into verification keys by `kid`.
//!
//! Owns which JWKS entries may verify what: RSA keys of at least 2048 bits
//! verify RS256 (or PS256 when the JWK's `alg` says so), P-256 EC keys verify
//! ES256; everything else is kept as an unusable entry, so a token naming it
//! gets a precise reason instead of "unknown key". No network, no cache here.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use crate::error::{VerifyError, clip};
use crate::jwt::algorithm_name;

/// Smallest RSA modulus accepted, in bits (NIST SP 800-131A).
pub(crate) const MIN_RSA_BITS: usize = 2048;

/// One JWKS entry.
#[derive(Debug, Clone)]
pub(crate) enum JwkEntry {
    /// May verify tokens whose header says `alg`.
    Usable { key: DecodingKey, alg: Algorithm },
    /// Listed by the issuer but never used; `kty` and `reason` explain why.
    Unusable { kty: String, problem: Problem },
}

/// Why a JWKS entry is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem {
    /// A key type Airlock never verifies with (`oct`, `OKP`, other curves).
    KeyType,
    /// Usable type, but the JWK pins an algorithm outside the allow-list.
    Algorithm(String),
    /// Anything else: `use` is not `sig`, weak or broken material, duplicate.
    Other(String),
}

/// The keys of one JWKS fetch.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySet {
    keys: HashMap<String, Arc<JwkEntry>>,
}

impl KeySet {
    /// Parses a JWKS document. Entries without a `kid` are skipped (a token
    /// must always name its key); a malformed document is an error.
    pub(crate) fn from_jwks(document: &Value) -> Result<KeySet, String> {
        let entries = document
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("no \"keys\" array")?;
        let mut keys: HashMap<String, Arc<JwkEntry>> = HashMap::new();
        let mut seen_material: HashMap<String, &Value> = HashMap::new();
        for jwk in entries {
            let Some(kid) = jwk.get("kid").and_then(Value::as_str) else {
                continue;
            };
            // Two different keys under one kid: refuse both rather than guess.
            if let Some(previous) = seen_material.insert(kid.to_owned(), jwk) {
                if previous != jwk {
                    keys.insert(
                        kid.to_owned(),
                        Arc::new(JwkEntry::Unusable {
                            kty: kty_of(jwk),
                            problem: Problem::Other("the JWKS lists this kid more than once".into()),
                        }),
                    );
                }
                continue;
            }
            keys.insert(kid.to_owned(), Arc::new(parse_entry(jwk)));
        }
        Ok(KeySet { keys })
    }

    pub(crate) fn get(&self, kid: &str) -> Option<Arc<JwkEntry>> {
        self.keys.get(kid).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

impl JwkEntry {
    /// The key to verify a token with header algorithm `alg`, or why not.
    pub(crate) fn key_for(&self, kid: &str, alg: Algorithm) -> Result<&DecodingKey, VerifyError> {
        match self {
            JwkEntry::Usable { key, alg: key_alg } if *key_alg == alg => Ok(key),
            JwkEntry::Usable { alg: key_alg, .. } => {
                let same_family = matches!(
                    (key_alg, alg),
                    (
                        Algorithm::RS256 | Algorithm::PS256,
                        Algorithm::RS256 | Algorithm::PS256
                    )
                );
                if same_family {
                    Err(VerifyError::KeyAlgorithmMismatch {
                        kid: clip(kid),
                        token_alg: algorithm_name(alg).into(),
                        key_alg: algorithm_name(*key_alg).into(),
                    })
                } else {
                    Err(VerifyError::KeyTypeMismatch {
                        kid: clip(kid),
                        alg: algorithm_name(alg).into(),
                        kty: kty_name(*key_alg).into(),
                    })
                }
            }
            JwkEntry::Unusable { kty, problem } => Err(match problem {
                Problem::KeyType => VerifyError::KeyTypeMismatch {
                    kid: clip(kid),
                    alg: algorithm_name(alg).into(),
                    kty: clip(kty),
                },
                Problem::Algorithm(key_alg) => VerifyError::KeyAlgorithmMismatch {
                    kid: clip(kid),
                    token_alg: algorithm_name(alg).into(),
                    key_alg: clip(key_alg),
                },
                Problem::Other(reason) => VerifyError::KeyUnusable {
                    kid: clip(kid),
                    reason: reason.clone(),
                },
            }),
        }
    }
}

fn kty_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => "EC",
        Algorithm::RS256 | Algorithm::PS256 => "RSA",
        _ => "(other)",
    }
}

fn kty_of(jwk: &Value) -> String {
    jwk.get("kty")
        .and_then(Value::as_str)
        .unwrap_or("(none)")
        .to_owned()
}

fn parse_entry(jwk: &Value) -> JwkEntry {
    let kty = kty_of(jwk);
    let unusable = |problem| JwkEntry::Unusable {
        kty: kty.clone(),
        problem,
    };
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    if let Some(usage) = text("use")
        && usage != "sig"
    {
        return unusable(Problem::Other(format!(
            "its use is {:?}, not \"sig\"",
            clip(usage)
        )));
    }
    let pinned = text("alg");
    match kty.as_str() {
        "RSA" => {
            let alg = match pinned {
                None | Some("RS256") => Algorithm::RS256,
                Some("PS256") => Algorithm::PS256,
                Some(other) => return unusable(Problem::Algorithm(other.to_owned())),
            };
            let (Some(n), Some(e)) = (text("n"), text("e")) else {
                return unusable(Problem::Other("RSA key without n or e".into()));
            };
            let Ok(modulus) = URL_SAFE_NO_PAD.decode(n) else {
                return unusable(Problem::Other("RSA modulus is not base64url".into()));
            };
            let bits = significant_bits(&modulus);
            if bits < MIN_RSA_BITS {
                return unusable(Problem::Other(format!(
                    "RSA key of {bits} bits; at least {MIN_RSA_BITS} required"
                )));
            }
            match DecodingKey::from_rsa_components(n, e) {
                Ok(key) => JwkEntry::Usable { key, alg },
                Err(err) => unusable(Problem::Other(format!("invalid RSA key: {err}"))),
            }
        }
        "EC" => {
            match pinned {
                None | Some("ES256") => {}
                Some(other) => return unusable(Problem::Algorithm(other.to_owned())),
            }
            if text("crv") != Some("P-256") {
                return unusable(Problem::KeyType);
            }
            let (Some(x), Some(y)) = (text("x"), text("y")) else {
                return unusable(Problem::Other("EC key without x or y".into()));
            };
            match DecodingKey::from_ec_components(x, y) {
                Ok(key) => JwkEntry::Usable {
                    key,
                    alg: Algorithm::ES256,
                },
                Err(err) => unusable(Problem::Other(format!("invalid EC key: {err}"))),
            }
        }
        _ => unusable(Problem::KeyType),
    }
}

/// Bits in a big-endian unsigned integer, leading zeros not counted.
fn significant_bits(bytes: &[u8]) -> usize {
    let mut rest = bytes.iter().skip_while(|b| **b == 0);
    match rest.next() {
        None => 0,
        Some(first) => (8 - first.leading_zeros() as usize) + 8 * rest.count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bit_count() {
        assert_eq!(significant_bits(&[]), 0);
        assert_eq!(significant_bits(&[0, 0]), 0);
        assert_eq!(significant_bits(&[0, 1]), 1);
        assert_eq!(significant_bits(&[0x80, 0]), 16);
        assert_eq!(significant_bits(&[0, 0x7f, 0]), 15);
    }

    #[test]
    fn entries_classified() {
        let small_n = URL_SAFE_NO_PAD.encode([0xc1u8; 128]);
        let set = KeySet::from_jwks(&json!({"keys": [
            {"kid": "oct", "kty": "oct", "k": "c2VjcmV0"},
            {"kid": "enc", "kty": "RSA", "use": "enc", "n": small_n, "e": "AQAB"},
            {"kid": "small", "kty": "RSA", "n": small_n, "e": "AQAB"},
            {"kid": "rs512", "kty": "RSA", "alg": "RS512", "n": small_n, "e": "AQAB"},
            {"kid": "p384", "kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "RSA", "n": small_n, "e": "AQAB"},
        ]}))
        .unwrap();
        assert_eq!(set.len(), 5);
        let code = |kid: &str| {
            set.get(kid)
                .unwrap()
                .key_for(kid, Algorithm::RS256)
                .unwrap_err()
                .code()
        };
        assert_eq!(code("oct"), "key_type_mismatch");
        assert_eq!(code("enc"), "key_unusable");
        assert_eq!(code("small"), "key_unusable");
        assert_eq!(code("rs512"), "key_algorithm_mismatch");
        assert_eq!(code("p384"), "key_type_mismatch");
        assert!(KeySet::from_jwks(&json!({"nokeys": []})).is_err());
    }
}
