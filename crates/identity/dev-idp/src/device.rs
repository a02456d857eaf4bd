//! Sign-in from a terminal for development: the OAuth 2.0 device
//! authorization grant (RFC 8628), as `airlock-control login` uses against
//! Entra ID. **Development and tests only**: the verification page lets
//! anyone approve a code as any configured test user, with no password.
//!
//! A device client asks for a code (`devicecode`), shows the user code and
//! the verification page, and polls the token endpoint; the page takes the
//! user code and a test user, and the next poll gets that user's access
//! token. A code lives ten minutes, is redeemed once, and a poll before
//! approval is answered `authorization_pending`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;

use crate::login::{UserConfig, esc, login_of, page, refuse_page, token_error};
use crate::server::Published;
use crate::token::{PrincipalKind, TokenRequest};

/// The grant type a device client polls with.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// How long a device code waits for its user.
pub const DEVICE_TTL: Duration = Duration::from_secs(600);

/// A device authorization waiting for (or approved by) a user.
#[derive(Debug)]
pub struct Pending {
    client_id: String,
    user_code: String,
    issued: Instant,
    user: Option<UserConfig>,
}

/// Eight letters without look-alikes, shown as `ABCD-EFGH`.
fn user_code() -> String {
    const LETTERS: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let s: String = bytes
        .iter()
        .map(|b| LETTERS[*b as usize % LETTERS.len()] as char)
        .collect();
    format!("{}-{}", &s[..4], &s[4..])
}

fn normalise(code: &str) -> String {
    code.trim().to_ascii_uppercase().replace(' ', "")
}

/// POST `devicecode`: a device code and a user code for a device client.
pub async fn device_code(
    State(published): State<Arc<Published>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(login) = published.login.as_ref() else {
        return token_error("invalid_request", "no login is configured (--login-config)");
    };
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    if !login
        .config
        .clients
        .iter()
        .any(|c| c.client_id == client_id && c.device)
    {
        return token_error("invalid_client", "not a registered device client");
    }
    let device_code = crate::login::random_code();
    let code = user_code();
    {
        let mut devices = login.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.retain(|_, p| p.issued.elapsed() < DEVICE_TTL);
        devices.insert(
            device_code.clone(),
            Pending {
                client_id,
                user_code: code.clone(),
                issued: Instant::now(),
                user: None,
            },
        );
    }
    let base = published.issuer.trim_end_matches('/');
    let verification = format!("{base}/oauth2/v2.0/deviceauth");
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({
            "device_code": device_code,
            "user_code": code,
            "verification_uri": verification,
            "verification_uri_complete": format!("{verification}?user_code={code}"),
            "expires_in": DEVICE_TTL.as_secs(),
            "interval": 1,
            "message": format!("To sign in, open {verification} and enter the code {code}."),
        })),
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
pub struct VerifyParams {
    #[serde(default)]
    user_code: String,
    #[serde(default)]
    user: String,
}

/// GET `deviceauth`: enter the code and pick a test user.
pub async fn verify_page(
    State(published): State<Arc<Published>>,
    axum::extract::Query(p): axum::extract::Query<VerifyParams>,
) -> Response {
    let login = match login_of(&published) {
        Ok(l) => l,
        Err(why) => return refuse_page(&why),
    };
    let users: String = login
        .config
        .users
        .iter()
        .map(|u| {
            format!(
                "<button type=\"submit\" name=\"user\" value=\"{}\" data-user=\"{}\"><strong>{}</strong><br>\
                 <small>{} · groups: {}</small></button>",
                esc(&u.sub),
                esc(&u.sub),
                esc(&u.name),
                esc(&u.sub),
                esc(&u.groups.join(", "))
            )
        })
        .collect();
    page(
        StatusCode::OK,
        &format!(
            "<h1>Sign in a device</h1><form method=\"post\"><label>Code <input name=\"user_code\" value=\"{}\" \
             autocomplete=\"off\"></label>{users}</form>",
            esc(&p.user_code)
        ),
    )
}

/// POST `deviceauth`: the code is approved for the picked user.
pub async fn verify_submit(State(published): State<Arc<Published>>, Form(p): Form<VerifyParams>) -> Response {
    let login = match login_of(&published) {
        Ok(l) => l,
        Err(why) => return refuse_page(&why),
    };
    let Some(user) = login.config.users.iter().find(|u| u.sub == p.user) else {
        return refuse_page(&format!("no test user {:?}", p.user));
    };
    let wanted = normalise(&p.user_code);
    let mut devices = login.devices.lock().unwrap_or_else(|e| e.into_inner());
    let Some(pending) = devices
        .values_mut()
        .find(|d| d.user_code == wanted && d.issued.elapsed() < DEVICE_TTL && d.user.is_none())
    else {
        return refuse_page("no device is waiting for that code (mistyped, expired or used)");
    };
    pending.user = Some(user.clone());
    page(
        StatusCode::OK,
        &format!(
            "<h1>Signed in</h1><p id=\"done\">{} is signed in on the device; return to it.</p>",
            esc(&user.name)
        ),
    )
}

/// The token endpoint's answer to a device client's poll.
pub fn exchange(published: &Published, form: &HashMap<String, String>) -> Response {
    let Some(login) = published.login.as_ref() else {
        return token_error("unsupported_grant_type", "no login is configured");
    };
    let device_code = form.get("device_code").cloned().unwrap_or_default();
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let user = {
        let mut devices = login.devices.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pending) = devices.get(&device_code) else {
            return token_error("invalid_grant", "unknown or already redeemed device code");
        };
        if pending.client_id != client_id {
            return token_error("invalid_grant", "the device code was issued to another client");
        }
        if pending.issued.elapsed() >= DEVICE_TTL {
            devices.remove(&device_code);
            return token_error("expired_token", "the device code expired");
        }
        let Some(user) = pending.user.clone() else {
            return token_error("authorization_pending", "the user has not signed in yet");
        };
        // Redeemed once.
        devices.remove(&device_code);
        user
    };
    let request = TokenRequest {
        issuer: published.issuer.clone(),
        audience: login.config.audience.clone(),
        subject: user.sub.clone(),
        name: user.name.clone(),
        groups: user.groups.clone(),
        roles: Vec::new(),
        kind: PrincipalKind::User,
        ttl: login.config.ttl,
        tenant: login.config.tenant.clone(),
        client_id,
        scope: "access_as_user".into(),
        overage: user.overage,
        acrs: Vec::new(),
    };
    match crate::token::mint(&published.key, &request) {
        Ok(access_token) => (
            StatusCode::OK,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(json!({
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": login.config.ttl.as_secs(),
                "scope": "access_as_user",
            })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": "server_error", "error_description": e.to_string()})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_are_two_groups_of_four_unambiguous_letters() {
        for _ in 0..100 {
            let c = user_code();
            assert_eq!(c.len(), 9, "{c}");
            assert_eq!(&c[4..5], "-");
            assert!(
                c.chars()
                    .filter(|x| *x != '-')
                    .all(|x| "BCDFGHJKLMNPQRSTVWXZ".contains(x)),
                "{c}"
            );
        }
        assert_eq!(normalise(" abcd-efgh "), "ABCD-EFGH");
    }
}
