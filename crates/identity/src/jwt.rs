//! The shape of a compact JWS (RFC 7515 §7.1) and its protected header.
//!
//! Owns the checks made before any key is looked up: size, three segments,
//! header JSON, the algorithm allow-list, `crit`, `kid`. Nothing here trusts
//! the payload; signature and claims are checked elsewhere.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;

use crate::error::{VerifyError, clip};

/// The only algorithms Airlock accepts. Never `none`, never HMAC: an HMAC
/// "verified" with a public key is the classic algorithm-confusion forgery.
pub(crate) const ALLOWED_ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256];

/// What the header says, once it has passed the pre-key checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckedHeader {
    pub(crate) alg: Algorithm,
    pub(crate) kid: String,
}

/// Checks the token's outer shape and header. `max_bytes` is applied first,
/// before anything is decoded.
pub(crate) fn check_header(token: &str, max_bytes: usize) -> Result<CheckedHeader, VerifyError> {
    if token.len() > max_bytes {
        return Err(VerifyError::TokenTooLarge {
            size: token.len(),
            max: max_bytes,
        });
    }
    let segments: Vec<&str> = token.split('.').collect();
    match segments.len() {
        3 => {}
        5 => {
            return Err(malformed(
                "5 segments: an encrypted token (JWE), not a signed one",
            ));
        }
        n => return Err(malformed(&format!("{n} segments, a JWS has 3"))),
    }
    let header_bytes = URL_SAFE_NO_PAD
        .decode(segments[0])
        .map_err(|_| malformed("header is not base64url"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header_bytes).map_err(|_| malformed("header is not JSON"))?;
    let header = header
        .as_object()
        .ok_or_else(|| malformed("header is not a JSON object"))?;

    let alg_name = match header.get("alg") {
        Some(serde_json::Value::String(alg)) => alg.as_str(),
        Some(_) => return Err(malformed("header alg is not a string")),
        None => return Err(malformed("header has no alg")),
    };
    let alg = ALLOWED_ALGORITHMS
        .into_iter()
        .find(|allowed| algorithm_name(*allowed) == alg_name)
        .ok_or_else(|| VerifyError::AlgorithmNotAllowed { alg: clip(alg_name) })?;

    // RFC 7515 §4.1.11: a recipient must reject extensions it does not
    // understand, and Airlock understands none.
    if let Some(crit) = header.get("crit") {
        return Err(VerifyError::UnsupportedCriticalHeader {
            names: clip(&crit.to_string()),
        });
    }
    // `jku`, `x5u`, `jwk` and `x5c` are ignored on purpose: keys only ever
    // come from the configured issuer's JWKS, never from the token itself.
    let kid = match header.get("kid") {
        Some(serde_json::Value::String(kid)) if !kid.is_empty() => kid.clone(),
        Some(serde_json::Value::String(_)) | None => return Err(VerifyError::MissingKeyId),
        Some(_) => return Err(malformed("header kid is not a string")),
    };
    // Checked after `alg`, so an unsigned `alg: none` token is reported as
    // such rather than as a shape problem.
    if segments[1].is_empty() || segments[2].is_empty() {
        return Err(malformed("an empty payload or signature segment"));
    }
    if URL_SAFE_NO_PAD.decode(segments[1]).is_err() {
        return Err(malformed("payload is not base64url"));
    }
    if URL_SAFE_NO_PAD.decode(segments[2]).is_err() {
        return Err(malformed("signature is not base64url (cut short?)"));
    }
    Ok(CheckedHeader { alg, kid })
}

/// The JOSE name of an algorithm Airlock may meet (`Algorithm` is
/// non-exhaustive, so the rest have a catch-all name).
pub(crate) fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::PS256 => "PS256",
        Algorithm::ES256 => "ES256",
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES384 => "ES384",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => "(other)",
    }
}

fn malformed(reason: &str) -> VerifyError {
    VerifyError::Malformed {
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with_header(header: &str) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode("{}"),
            URL_SAFE_NO_PAD.encode("sig")
        )
    }

    #[test]
    fn header_cases() {
        let ok = check_header(&token_with_header(r#"{"alg":"RS256","kid":"k1"}"#), 16384).unwrap();
        assert_eq!(ok.alg, Algorithm::RS256);
        assert_eq!(ok.kid, "k1");

        let cases: &[(&str, &str)] = &[
            (r#"{"alg":"none","kid":"k1"}"#, "algorithm_not_allowed"),
            (r#"{"alg":"HS256","kid":"k1"}"#, "algorithm_not_allowed"),
            (r#"{"alg":"RS512","kid":"k1"}"#, "algorithm_not_allowed"),
            (r#"{"alg":"rs256","kid":"k1"}"#, "algorithm_not_allowed"),
            (r#"{"kid":"k1"}"#, "malformed"),
            (r#"{"alg":1,"kid":"k1"}"#, "malformed"),
            (r#"{"alg":"RS256"}"#, "missing_key_id"),
            (r#"{"alg":"RS256","kid":""}"#, "missing_key_id"),
            (r#"{"alg":"RS256","kid":7}"#, "malformed"),
            (
                r#"{"alg":"RS256","kid":"k1","crit":["b64"],"b64":false}"#,
                "unsupported_critical_header",
            ),
            (r#"[1,2]"#, "malformed"),
            (r#"not json"#, "malformed"),
        ];
        for (header, code) in cases {
            let err = check_header(&token_with_header(header), 16384).unwrap_err();
            assert_eq!(err.code(), *code, "{header}: {err}");
        }
    }

    #[test]
    fn shape_cases() {
        for (token, code) in [
            ("", "malformed"),
            ("abc", "malformed"),
            ("a.b", "malformed"),
            ("a.b.c.d.e", "malformed"),
            ("eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.e30.", "malformed"),
            ("eyJhbGciOiJub25lIn0.e30.", "algorithm_not_allowed"),
            ("!!!.e30.c2ln", "malformed"),
        ] {
            let err = check_header(token, 16384).unwrap_err();
            assert_eq!(err.code(), code, "{token:?}: {err}");
        }
        let big = "a".repeat(2000);
        assert_eq!(check_header(&big, 1024).unwrap_err().code(), "token_too_large");
    }
}
