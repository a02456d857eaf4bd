//! Good tokens map to the right identity; bad tokens are refused with the
//! right reason. Keys are made here, served by an in-process JWKS server.

mod common;

use airlock_identity::{PrincipalKind, VerifyError};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const MAIN: &str = "main-2025";
const EC: &str = "ec-2025";
const RETIRED: &str = "retired-2024";
const OCT: &str = "symmetric";
const ENC: &str = "encryption-only";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token whose three segments are built by hand.
fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string()),
        b64(claims.to_string()),
        b64(signature)
    )
}

/// Replaces the payload of a signed token, keeping its header and signature.
fn swap_payload(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], b64(claims.to_string()), parts[2])
}

#[tokio::test]
async fn good_tokens_map_to_identities() {
    let main = TestKey::rsa(0, MAIN);
    let ec = TestKey::ec(EC);
    let server = JwksServer::start(&[&main, &ec]).await;
    let verifier = server.verifier();

    let user = verifier.verify(&main.sign(&user_claims())).await.unwrap();
    assert_eq!(user.subject.0, "aaaaaaaa-0000-0000-0000-000000000001");
    assert_eq!(user.kind, PrincipalKind::User);
    assert_eq!(user.tenant.as_ref().unwrap().0, TENANT);
    assert_eq!(user.display_name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(
        user.client_app.as_ref().unwrap().0,
        "cccccccc-0000-0000-0000-000000000001"
    );
    assert!(user.in_group("db-reviewers"));
    assert!(user.in_group(&REVIEWERS_GROUP.to_uppercase()));
    assert_eq!(user.groups.len(), 2);
    assert_eq!(user.groups[1].name, None);
    assert_eq!(user.issuer, ISSUER);

    let app = verifier.verify(&ec.sign(&app_claims())).await.unwrap();
    assert_eq!(app.kind, PrincipalKind::App);
    assert_eq!(app.display_name.as_deref(), Some("maintenance-agent"));
    assert!(app.has_role("Airlock.Agent"));

    // An audience list containing ours, and an Entra v1-style app token
    // (no idtyp, no scp, appid instead of azp) with the v1 issuer allowed.
    let mut config = server.config();
    config.issuer = airlock_identity::OneOrMany::Many(vec![
        format!("https://sts.windows.net/{TENANT}/"),
        ISSUER.to_owned(),
    ]);
    let v1_verifier = airlock_identity::Verifier::new(config).unwrap();
    let v1 = with(
        app_claims(),
        json!({"iss": format!("https://sts.windows.net/{TENANT}/"), "aud": ["other", AUDIENCE],
               "idtyp": null, "azp": null, "appid": "eeeeeeee-0000-0000-0000-000000000005"}),
    );
    let v1 = v1_verifier.verify(&main.sign(&v1)).await.unwrap();
    assert_eq!(v1.kind, PrincipalKind::App);
    assert_eq!(v1.client_app.unwrap().0, "eeeeeeee-0000-0000-0000-000000000005");

    // The identity serialises for `identity check`.
    let json = serde_json::to_value(&user).unwrap();
    assert_eq!(json["kind"], "user");
    assert_eq!(json["groups"][0]["name"], "db-reviewers");
    assert!(json["expires_at"].as_str().unwrap().ends_with('Z'));
}

/// One bad token and the reason it must be refused with.
struct Case {
    name: &'static str,
    token: String,
    code: &'static str,
    /// Text the message must contain, to pin the precise reason.
    says: &'static str,
}

#[tokio::test]
async fn bad_tokens_are_refused_with_the_right_reason() {
    let main = TestKey::rsa(0, MAIN);
    let ec = TestKey::ec(EC);
    let retired = TestKey::rsa(1, RETIRED);
    let impostor = TestKey::rsa(2, MAIN); // other key material, same kid
    let stranger = TestKey::rsa(3, "not-published");
    let server = JwksServer::start(&[&main, &ec, &retired]).await;
    let verifier = server.verifier();

    // The retired key verified once, then the issuer dropped it from the
    // JWKS and the cache refreshed.
    verifier.verify(&retired.sign(&user_claims())).await.unwrap();
    let mut jwks = jwks_of(&[&main, &ec]);
    let keys = jwks["keys"].as_array_mut().unwrap();
    keys.push(json!({"kty": "oct", "kid": OCT, "k": b64(main.public_pem.as_bytes())}));
    let mut enc = main.jwk.clone();
    enc["kid"] = json!(ENC);
    enc["use"] = json!("enc");
    keys.push(enc);
    server.set_jwks(jwks);
    verifier.refresh_keys().await.unwrap();

    let good = main.sign(&user_claims());
    let now = now();
    let parts: Vec<&str> = good.split('.').collect();
    let hs256_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(MAIN.into());
        let key = EncodingKey::from_secret(main.public_pem.as_bytes());
        jsonwebtoken::encode(&header, &user_claims(), &key).unwrap()
    };

    let cases = vec![
        Case {
            name: "alg none, empty signature",
            token: format!(
                "{}.{}.",
                b64(json!({"alg": "none", "kid": MAIN}).to_string()),
                parts[1]
            ),
            code: "algorithm_not_allowed",
            says: "\"none\"",
        },
        Case {
            name: "alg none with a signature copied from a good token",
            token: format!(
                "{}.{}.{}",
                b64(json!({"alg": "none", "kid": MAIN}).to_string()),
                parts[1],
                parts[2]
            ),
            code: "algorithm_not_allowed",
            says: "none",
        },
        Case {
            name: "alg None (case games)",
            token: raw_token(&json!({"alg": "None", "kid": MAIN}), &user_claims(), b""),
            code: "algorithm_not_allowed",
            says: "None",
        },
        Case {
            name: "HS256 signed with the RSA public key's bytes",
            token: hs256_with_public_key,
            code: "algorithm_not_allowed",
            says: "HS256",
        },
        Case {
            name: "RS512, outside the allow-list",
            token: main.sign_as(Algorithm::RS512, Some(MAIN), &user_claims()),
            code: "algorithm_not_allowed",
            says: "RS512",
        },
        Case {
            name: "unknown kid (refetched once, still unknown)",
            token: stranger.sign(&user_claims()),
            code: "unknown_key_id",
            says: "not-published",
        },
        Case {
            name: "kid of a key removed from the JWKS",
            token: retired.sign(&user_claims()),
            code: "unknown_key_id",
            says: RETIRED,
        },
        Case {
            name: "no kid",
            token: main.sign_as(Algorithm::RS256, None, &user_claims()),
            code: "missing_key_id",
            says: "kid",
        },
        Case {
            name: "jku pointing elsewhere is ignored; its kid is unknown",
            token: {
                // A key the attacker holds, advertised through jku.
                let attacker = TestKey::rsa(3, "attacker");
                let mut header = Header::new(Algorithm::RS256);
                header.kid = Some("attacker".into());
                header.jku = Some("http://127.0.0.1:1/attacker-keys".into());
                attacker.sign_with_header(&header, &user_claims())
            },
            code: "unknown_key_id",
            says: "attacker",
        },
        Case {
            name: "expired",
            token: main.sign(&with(user_claims(), json!({"exp": now - 3600, "nbf": now - 7200}))),
            code: "token_expired",
            says: "expired at",
        },
        Case {
            name: "expired just beyond the 60 s leeway",
            token: main.sign(&with(user_claims(), json!({"exp": now - 61}))),
            code: "token_expired",
            says: "leeway 60 s",
        },
        Case {
            name: "nbf in the future",
            token: main.sign(&with(user_claims(), json!({"nbf": now + 600}))),
            code: "token_not_yet_valid",
            says: "not valid before",
        },
        Case {
            name: "wrong iss",
            token: main.sign(&with(user_claims(), json!({"iss": "https://evil.example/v2.0"}))),
            code: "wrong_issuer",
            says: "evil.example",
        },
        Case {
            name: "v1 issuer while only v2 is configured",
            token: main.sign(&with(
                user_claims(),
                json!({"iss": format!("https://sts.windows.net/{TENANT}/")}),
            )),
            code: "wrong_issuer",
            says: "sts.windows.net",
        },
        Case {
            name: "wrong aud",
            token: main.sign(&with(user_claims(), json!({"aud": "api://someone-else"}))),
            code: "wrong_audience",
            says: "someone-else",
        },
        Case {
            name: "aud list without ours",
            token: main.sign(&with(user_claims(), json!({"aud": ["a", "b"]}))),
            code: "wrong_audience",
            says: "api://airlock",
        },
        Case {
            name: "missing exp",
            token: main.sign(&with(user_claims(), json!({"exp": null}))),
            code: "missing_claim",
            says: "exp",
        },
        Case {
            name: "no oid and no sub",
            token: main.sign(&with(user_claims(), json!({"oid": null, "sub": null}))),
            code: "missing_claim",
            says: "oid or sub",
        },
        Case {
            name: "claims altered after signing (group added)",
            token: swap_payload(
                &good,
                &with(
                    user_claims(),
                    json!({"groups": [REVIEWERS_GROUP, "6f1d1a52-0c3e-4b43-9d6e-2f1b5d0c9a11"]}),
                ),
            ),
            code: "bad_signature",
            says: MAIN,
        },
        Case {
            name: "claims altered after signing (exp extended)",
            token: swap_payload(&good, &with(user_claims(), json!({"exp": now + 86400 * 365}))),
            code: "bad_signature",
            says: MAIN,
        },
        Case {
            name: "truncated signature (whole bytes cut)",
            token: {
                let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
                format!("{}.{}.{}", parts[0], parts[1], b64(&signature[..200]))
            },
            code: "bad_signature",
            says: MAIN,
        },
        Case {
            name: "truncated signature (cut mid-character)",
            token: good[..good.len() - 1].to_owned(),
            code: "malformed",
            says: "signature is not base64url",
        },
        Case {
            name: "signature stripped",
            token: format!("{}.{}.", parts[0], parts[1]),
            code: "malformed",
            says: "signature",
        },
        Case {
            name: "signed by another key under the same kid",
            token: impostor.sign(&user_claims()),
            code: "bad_signature",
            says: MAIN,
        },
        Case {
            name: "JWKS entry of the wrong key type (oct) under the kid",
            token: main.sign_as(Algorithm::RS256, Some(OCT), &user_claims()),
            code: "key_type_mismatch",
            says: "oct",
        },
        Case {
            name: "RS256 token naming an EC key",
            token: main.sign_as(Algorithm::RS256, Some(EC), &user_claims()),
            code: "key_type_mismatch",
            says: "EC",
        },
        Case {
            name: "ES256 token naming an RSA key",
            token: ec.sign_as(Algorithm::ES256, Some(MAIN), &user_claims()),
            code: "key_type_mismatch",
            says: "RSA",
        },
        Case {
            name: "PS256 token naming an RS256 key",
            token: main.sign_as(Algorithm::PS256, Some(MAIN), &user_claims()),
            code: "key_algorithm_mismatch",
            says: "PS256",
        },
        Case {
            name: "JWKS entry for encryption, not signatures",
            token: main.sign_as(Algorithm::RS256, Some(ENC), &user_claims()),
            code: "key_unusable",
            says: "\"enc\"",
        },
        Case {
            name: "critical header extension",
            token: raw_token(
                &json!({"alg": "RS256", "kid": MAIN, "crit": ["exp"], "exp": 1}),
                &user_claims(),
                b"sig",
            ),
            code: "unsupported_critical_header",
            says: "crit",
        },
        Case {
            name: "oversized token",
            token: main.sign(&with(
                user_claims(),
                json!({"padding": "p".repeat(20 * 1024)}),
            )),
            code: "token_too_large",
            says: "16384",
        },
        Case {
            name: "garbage",
            token: "this is not a token at all".into(),
            code: "malformed",
            says: "segments",
        },
        Case {
            name: "garbage in three segments",
            token: "a!b.c$d.e%f".into(),
            code: "malformed",
            says: "base64url",
        },
        Case {
            name: "empty password",
            token: String::new(),
            code: "malformed",
            says: "segments",
        },
        Case {
            name: "encrypted token (JWE)",
            token: format!("{}.a.b.c.d", b64(json!({"alg": "RSA-OAEP", "enc": "A256GCM"}).to_string())),
            code: "malformed",
            says: "JWE",
        },
        Case {
            name: "payload is not JSON (signed)",
            token: {
                // A correctly signed token whose payload is not a JSON object.
                let header = b64(json!({"alg": "RS256", "kid": MAIN, "typ": "JWT"}).to_string());
                let payload = b64("[1,2,3]");
                let message = format!("{header}.{payload}");
                let signature = main.sign_message(&message);
                format!("{message}.{signature}")
            },
            code: "malformed",
            says: "JSON",
        },
        Case {
            name: "an ID token (no azp/appid, nonce) instead of an access token",
            token: main.sign(&with(
                user_claims(),
                json!({"azp": null, "scp": null, "idtyp": null, "nonce": "n-0S6_WzA2Mj"}),
            )),
            code: "not_an_access_token",
            says: "ID token",
        },
        Case {
            name: "group overage",
            token: main.sign(&with(
                user_claims(),
                json!({"groups": null, "_claim_names": {"groups": "src1"},
                       "_claim_sources": {"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}}}),
            )),
            code: "group_overage",
            says: "app roles",
        },
        Case {
            name: "group overage (v1 hasgroups)",
            token: main.sign(&with(user_claims(), json!({"groups": null, "hasgroups": true}))),
            code: "group_overage",
            says: "Graph",
        },
    ];

    assert!(cases.len() >= 20, "the issue asks for at least 20 cases");
    let mut failures = Vec::new();
    for case in &cases {
        match verifier.verify(&case.token).await {
            Ok(identity) => failures.push(format!("{}: accepted as {:?}", case.name, identity.subject)),
            Err(error) => {
                let message = error.to_string();
                if error.code() != case.code || !message.contains(case.says) {
                    failures.push(format!(
                        "{}: expected {} saying {:?}, got {}: {message}",
                        case.name,
                        case.code,
                        case.says,
                        error.code()
                    ));
                }
                assert_token_not_leaked(&error, &case.token);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The unknown kids caused at most one refetch beyond the two deliberate
    // fetches (first use, refresh): the 30 s cooldown holds the rest.
    assert!(server.jwks_fetches() <= 3, "fetches: {}", server.jwks_fetches());
}

/// No error message may contain the token or its signature.
fn assert_token_not_leaked(error: &VerifyError, token: &str) {
    let message = format!("{error} {error:?}");
    if token.len() > 16 {
        assert!(!message.contains(token), "token leaked into {message}");
    }
    if let Some(signature) = token.rsplit('.').next()
        && signature.len() > 16
    {
        assert!(!message.contains(signature), "signature leaked into {message}");
    }
}
