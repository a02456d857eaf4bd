//! Minting Entra-shaped v2 access tokens.
//!
//! Owns which claims a development token carries and how they mirror
//! Microsoft Entra ID: `iss`, `aud`, `iat`/`nbf`/`exp`, `oid` and `sub`,
//! `tid`, `azp`, `idtyp`, `groups`, `roles`, `uti`, `ver`; users also get
//! `name`, `preferred_username` and `scp`; apps get `app_displayname` and no
//! `scp` (Entra's app-only tokens carry none).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Header};
use rand::RngCore;
use serde_json::{Value, json};

use crate::error::DevIdpError;
use crate::key::SigningKey;

/// A person (delegated token) or a workload (app-only token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    User,
    App,
}

/// What to put in a token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub issuer: String,
    pub audience: String,
    /// Object id; used for both `oid` and `sub`.
    pub subject: String,
    pub name: String,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    pub kind: PrincipalKind,
    pub ttl: Duration,
    pub tenant: String,
    pub client_id: String,
    /// `scp` for user tokens.
    pub scope: String,
    /// Group overage: the groups claim left out, Graph named instead.
    pub overage: bool,
    /// `acrs`: authentication contexts the sign-in met.
    pub acrs: Vec<String>,
}

/// The claims of the token `request` describes, issued at `now` (Unix s).
pub fn claims(request: &TokenRequest, now: u64) -> Value {
    let mut uti = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut uti);
    let mut claims = json!({
        "iss": request.issuer,
        "aud": request.audience,
        "iat": now,
        "nbf": now,
        "exp": now + request.ttl.as_secs(),
        "oid": request.subject,
        "sub": request.subject,
        "tid": request.tenant,
        "azp": request.client_id,
        "azpacr": "0",
        "groups": request.groups,
        "roles": request.roles,
        "uti": URL_SAFE_NO_PAD.encode(uti),
        "ver": "2.0",
    });
    let object = claims.as_object_mut().expect("a JSON object");
    if request.overage {
        // Entra's shape: the claim is gone and a source says where to ask.
        let collection = match request.kind {
            PrincipalKind::User => "users",
            PrincipalKind::App => "servicePrincipals",
        };
        object.remove("groups");
        object.insert("_claim_names".into(), json!({"groups": "src1"}));
        object.insert(
            "_claim_sources".into(),
            json!({"src1": {"endpoint": format!(
                "https://graph.microsoft.com/v1.0/{collection}/{}/getMemberObjects", request.subject
            )}}),
        );
    }
    if !request.acrs.is_empty() {
        object.insert("acrs".into(), json!(request.acrs));
    }
    match request.kind {
        PrincipalKind::User => {
            object.insert("idtyp".into(), json!("user"));
            object.insert("name".into(), json!(request.name));
            object.insert(
                "preferred_username".into(),
                json!(format!("{}@dev.airlock.invalid", request.subject)),
            );
            object.insert("scp".into(), json!(request.scope));
        }
        PrincipalKind::App => {
            object.insert("idtyp".into(), json!("app"));
            object.insert("app_displayname".into(), json!(request.name));
        }
    }
    claims
}

/// A signed RS256 token for `request`, valid from now for its ttl.
pub fn mint(key: &SigningKey, request: &TokenRequest) -> Result<String, DevIdpError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| DevIdpError::Signing(e.to_string()))?
        .as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid().to_owned());
    jsonwebtoken::encode(&header, &claims(request, now), key.encoding_key())
        .map_err(|e| DevIdpError::Signing(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: PrincipalKind) -> TokenRequest {
        TokenRequest {
            issuer: "http://127.0.0.1:9400".into(),
            audience: "api://airlock".into(),
            subject: "agent-7".into(),
            name: "Agent Seven".into(),
            groups: vec!["g1".into(), "g2".into()],
            roles: vec!["Airlock.Agent".into()],
            kind,
            ttl: Duration::from_secs(3600),
            tenant: "t1".into(),
            client_id: "c1".into(),
            scope: "access_as_user".into(),
            overage: false,
            acrs: Vec::new(),
        }
    }

    #[test]
    fn user_and_app_shapes() {
        let user = claims(&request(PrincipalKind::User), 1000);
        assert_eq!(user["exp"], 4600);
        assert_eq!(user["nbf"], 1000);
        assert_eq!(user["idtyp"], "user");
        assert_eq!(user["oid"], "agent-7");
        assert_eq!(user["name"], "Agent Seven");
        assert_eq!(user["scp"], "access_as_user");
        assert_eq!(user["groups"], json!(["g1", "g2"]));
        assert!(user.get("app_displayname").is_none());

        let app = claims(&request(PrincipalKind::App), 1000);
        assert_eq!(app["idtyp"], "app");
        assert_eq!(app["app_displayname"], "Agent Seven");
        assert!(app.get("scp").is_none());
        assert!(app.get("name").is_none());
        assert_eq!(app["roles"], json!(["Airlock.Agent"]));
        assert_ne!(user["uti"], app["uti"]);
        assert!(user.get("acrs").is_none());

        let overage = claims(
            &TokenRequest {
                overage: true,
                acrs: vec!["c1".into()],
                ..request(PrincipalKind::App)
            },
            1000,
        );
        assert!(overage.get("groups").is_none());
        assert_eq!(overage["_claim_names"]["groups"], "src1");
        assert!(
            overage["_claim_sources"]["src1"]["endpoint"]
                .as_str()
                .unwrap()
                .contains("/servicePrincipals/agent-7/")
        );
        assert_eq!(overage["acrs"], json!(["c1"]));
    }
}
