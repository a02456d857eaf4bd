//! The web UI's page frame, its one error exit ([`PageError`]) and the
//! security headers of every page. The pages themselves are in `ui`, the
//! SQL highlighter in `highlight`.
//!
//! Statements, names, reasons and everything else shown come from agents
//! and tokens: hostile input. Markup is written only with maud's `html!`,
//! which escapes every value it is given; nothing here or in `ui` builds
//! markup from strings. The pages are also served with a
//! Content-Security-Policy that allows no inline script and nothing from
//! another origin.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use crate::error::{ApiError, Code};

/// Who is signed in, for the page header.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    pub name: String,
    pub groups: Vec<String>,
    pub csrf: String,
}

/// What a page reloads itself for (`static/app.js` reads `data-live`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Never: a form may be half filled, or a reload would post it again.
    Off,
    /// Any request arriving or changing.
    Inbox,
    /// A change to the request on the page.
    Request,
}

impl Live {
    fn as_str(self) -> &'static str {
        match self {
            Live::Off => "",
            Live::Inbox => "inbox",
            Live::Request => "request",
        }
    }
}

/// A whole page around `body`, with the signed-in header when there is a
/// viewer.
pub fn page(title: &str, viewer: Option<&Viewer>, live: Live, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Airlock" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body data-live=(live.as_str()) {
                header {
                    a.brand href="/" { "Airlock" }
                    @if let Some(v) = viewer {
                        nav {
                            a href="/" { "Inbox" }
                            a href="/history" { "History" }
                            a href="/grants" { "Grants" }
                        }
                        div.who {
                            "Signed in as " strong { (v.name) }
                            @if !v.groups.is_empty() {
                                " " span.muted { "(" (v.groups.join(", ")) ")" }
                            }
                            form.inline method="post" action="/auth/logout" {
                                input type="hidden" name="csrf" value=(v.csrf);
                                button.link { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// After sign-in: moves on to `return_to` with a same-site navigation, so
/// the SameSite=Strict cookie just set is sent. `return_to` is a path on
/// this server (`oidc::safe_return`).
pub fn signed_in_page(name: &str, return_to: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content={ "0;url=" (return_to) };
                title { "Signed in · Airlock" }
                link rel="stylesheet" href="/static/app.css";
            }
            body {
                main {
                    section.card {
                        p { "Signed in as " strong { (name) } "." }
                        p { a #continue href=(return_to) { "Continue" } }
                    }
                }
            }
        }
    }
}

/// Why a page could not be shown. Every UI handler fails with this, and its
/// `IntoResponse` is the one place a failed page is logged and drawn, with
/// the status the JSON API gives the same error.
#[derive(Debug)]
pub enum PageError {
    /// A refusal or failure: an error page with the code and message.
    Refused(ApiError),
    /// No signed-in reviewer: the sign-in page (401), which comes back to
    /// `return_to` (a path on this server) once signed in.
    SignIn {
        return_to: String,
        /// Whether browser sign-in (`reviewer.oidc`) is configured.
        available: bool,
    },
    /// A refusal shown inside the page it concerns (a vote the control plane
    /// refused: the request page again, with why on top).
    InPage { error: ApiError, page: Markup },
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError::Refused(e)
    }
}

fn log(e: &ApiError) {
    match e.code {
        Code::Internal | Code::Unavailable => {
            tracing::warn!(code = e.code.as_str(), message = %e.message, "page failed")
        }
        Code::Unauthenticated
        | Code::NotAReviewer
        | Code::SelfApproval
        | Code::AppIdentity
        | Code::StepUpRequired
        | Code::NotFound
        | Code::AlreadyDecided
        | Code::AlreadyVoted
        | Code::Expired
        | Code::DigestMismatch
        | Code::SessionEnded
        | Code::Csrf
        | Code::InvalidArgument => {
            tracing::info!(code = e.code.as_str(), message = %e.message, "page refused")
        }
    }
}

fn error_page(e: &ApiError) -> Markup {
    let body = html! {
        section.card.error {
            h1 { (e.code.status().canonical_reason().unwrap_or("Error")) }
            p { (e.message) }
            p.muted { "code: " (e.code.as_str()) }
            p {
                a href="/" { "Back to the inbox" }
                " · "
                a href="/auth/login" { "Sign in" }
            }
        }
    };
    page("Error", None, Live::Off, body)
}

fn sign_in_page(return_to: &str, available: bool) -> Markup {
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("return_to", return_to)
        .finish();
    let body = html! {
        section.card {
            h1 { "Sign in" }
            @if available {
                p { "Reviewers sign in with their organisation account." }
                p { a.button #sign-in href={ "/auth/login?" (query) } { "Sign in" } }
            } @else {
                p {
                    "Browser sign-in is not configured on this server ("
                    code { "reviewer.oidc" }
                    "). Use the REST API with a bearer token."
                }
            }
        }
    };
    page("Sign in", None, Live::Off, body)
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, markup) = match self {
            PageError::Refused(e) => {
                log(&e);
                (e.code.status(), error_page(&e))
            }
            PageError::SignIn { return_to, available } => {
                (StatusCode::UNAUTHORIZED, sign_in_page(&return_to, available))
            }
            PageError::InPage { error, page } => {
                log(&error);
                (error.code.status(), page)
            }
        };
        (status, markup).into_response()
    }
}

/// Middleware: the security headers of every HTML response (pages, error
/// pages, the signed-in page), wherever it was made.
pub async fn secure_pages(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_html {
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                 form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// "2h 5m", "3m 12s", "40s".
pub fn duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "\"><script>alert(1)</script>'&amp;";
    const ESCAPED: &str = "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;'&amp;amp;";

    #[test]
    fn the_frame_escapes_the_viewer_and_title() {
        let viewer = Viewer {
            name: HOSTILE.into(),
            groups: vec![HOSTILE.into()],
            csrf: HOSTILE.into(),
        };
        let html = page(HOSTILE, Some(&viewer), Live::Inbox, html! { p { "body" } }).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert_eq!(html.matches(ESCAPED).count(), 4, "{html}");
        assert!(html.contains("<body data-live=\"inbox\">"), "{html}");
        assert!(
            html.contains(&format!("name=\"csrf\" value=\"{ESCAPED}\"")),
            "{html}"
        );
    }

    #[test]
    fn error_pages_carry_the_api_status_and_escape_the_message() {
        let response = PageError::from(ApiError::new(Code::NotFound, HOSTILE)).into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let html = error_page(&ApiError::new(Code::Csrf, HOSTILE)).into_string();
        assert!(html.contains(ESCAPED) && !html.contains("<script>"), "{html}");
        assert!(html.contains("code: csrf"), "{html}");

        let sign_in = PageError::SignIn {
            return_to: "/requests/x\"><b>".into(),
            available: true,
        }
        .into_response();
        assert_eq!(sign_in.status(), StatusCode::UNAUTHORIZED);
        let html = sign_in_page("/", true).into_string();
        assert!(html.contains("href=\"/auth/login?return_to=%2F\""), "{html}");
        let html = sign_in_page("/x\"><b>&", true).into_string();
        assert!(!html.contains("<b>") && !html.contains("x\">"), "{html}");
    }

    #[test]
    fn the_signed_in_page_moves_on() {
        let html = signed_in_page(HOSTILE, "/history").into_string();
        assert!(html.contains("content=\"0;url=/history\""), "{html}");
        assert!(html.contains(ESCAPED) && !html.contains("<script>"), "{html}");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(192), "3m 12s");
        assert_eq!(duration(7500), "2h 5m");
        assert_eq!(duration(-5), "0s");
    }
}
