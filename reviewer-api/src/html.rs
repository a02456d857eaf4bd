//! HTML building blocks for the web UI: escaping, SQL highlighting, the page
//! frame, and the error and signed-in pages.
//!
//! Statements, names, reasons and everything else shown come from agents
//! and tokens: hostile input. Every value goes through [`esc`] (or
//! [`highlight`], which escapes each token) before it touches markup, and
//! the pages are served with a Content-Security-Policy that allows no
//! inline script and nothing from another origin.

use std::fmt::Write;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Characters a reviewer could not see but the database would: controls
/// other than newline and tab, bidirectional overrides and zero-width
/// characters. Shown as a visible marker so nothing hides in a statement.
fn hidden(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t' && c != '\r')
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// True when the statement holds characters [`highlight`] marks.
pub fn has_hidden(text: &str) -> bool {
    text.chars().any(hidden)
}

fn push_escaped_visible(out: &mut String, text: &str) {
    for c in text.chars() {
        if hidden(c) {
            let _ = write!(
                out,
                "<span class=\"hidden\" title=\"invisible character\">U+{:04X}</span>",
                c as u32
            );
        } else {
            out.push_str(&esc(c.encode_utf8(&mut [0; 4])));
        }
    }
}

const KEYWORDS: &[&str] = &[
    "ALTER",
    "AND",
    "AS",
    "BEGIN",
    "BY",
    "CALL",
    "CASCADE",
    "COMMIT",
    "COPY",
    "CREATE",
    "DELETE",
    "DISTINCT",
    "DO",
    "DROP",
    "EXPLAIN",
    "ANALYZE",
    "FROM",
    "GRANT",
    "GROUP",
    "HAVING",
    "IN",
    "INSERT",
    "INTO",
    "IS",
    "JOIN",
    "LIMIT",
    "MERGE",
    "NOT",
    "NULL",
    "ON",
    "OR",
    "ORDER",
    "RETURNING",
    "REVOKE",
    "ROLLBACK",
    "SELECT",
    "SET",
    "TABLE",
    "TRUNCATE",
    "UPDATE",
    "USING",
    "VALUES",
    "WHERE",
    "WITH",
    "LEFT",
    "RIGHT",
    "INNER",
    "OUTER",
    "UNION",
    "ALL",
    "EXISTS",
    "BETWEEN",
    "LIKE",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "TRUE",
    "FALSE",
];

/// Finds where a `$tag$` opening at `start` ends, if it is one.
fn dollar_tag(s: &str, start: usize) -> Option<usize> {
    let rest = &s[start + 1..];
    let end = rest.find('$')?;
    let tag = &rest[..end];
    if tag.chars().all(|c| c.is_alphanumeric() || c == '_') && !tag.starts_with(|c: char| c.is_ascii_digit())
    {
        Some(start + 1 + end + 1)
    } else {
        None
    }
}

/// The statement as escaped HTML with spans for keywords, strings,
/// numbers and comments. Every byte of `sql` is in the output, in order:
/// highlighting never drops or reorders text.
pub fn highlight(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() * 2);
    let bytes = sql.as_bytes();
    let mut i = 0;
    let span = |out: &mut String, class: &str, text: &str| {
        let _ = write!(out, "<span class=\"{class}\">");
        push_escaped_visible(out, text);
        out.push_str("</span>");
    };
    while i < sql.len() {
        let rest = &sql[i..];
        let c = rest.chars().next().unwrap_or(' ');
        let end = if rest.starts_with("--") {
            let e = rest.find('\n').map_or(sql.len(), |n| i + n);
            span(&mut out, "c", &sql[i..e]);
            e
        } else if let Some(body) = rest.strip_prefix("/*") {
            let e = body.find("*/").map_or(sql.len(), |n| i + 2 + n + 2);
            span(&mut out, "c", &sql[i..e]);
            e
        } else if c == '\'' || c == '"' {
            // A quoted string or identifier; a doubled quote stays inside.
            let mut j = i + 1;
            loop {
                match sql[j..].find(c) {
                    None => {
                        j = sql.len();
                        break;
                    }
                    Some(n) => {
                        j += n + 1;
                        if bytes.get(j) == Some(&(c as u8)) {
                            j += 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            span(&mut out, if c == '\'' { "s" } else { "i" }, &sql[i..j]);
            j
        } else if c == '$' && dollar_tag(sql, i).is_some() {
            let open = dollar_tag(sql, i).unwrap_or(i + 1);
            let tag = &sql[i..open];
            let e = sql[open..].find(tag).map_or(sql.len(), |n| open + n + tag.len());
            span(&mut out, "s", &sql[i..e]);
            e
        } else if c.is_ascii_digit() {
            let e = rest
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '.' || ch == '_'))
                .map_or(sql.len(), |n| i + n);
            span(&mut out, "n", &sql[i..e]);
            e
        } else if c.is_alphabetic() || c == '_' {
            let e = rest
                .find(|ch: char| !(ch.is_alphanumeric() || ch == '_' || ch == '$'))
                .map_or(sql.len(), |n| i + n);
            let word = &sql[i..e];
            if KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word)) {
                span(&mut out, "k", word);
            } else {
                push_escaped_visible(&mut out, word);
            }
            e
        } else {
            let e = i + c.len_utf8();
            push_escaped_visible(&mut out, &sql[i..e]);
            e
        };
        i = end.max(i + c.len_utf8());
    }
    out
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

/// Security headers of every page.
pub fn secure_headers(response: &mut Response) {
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

/// Who is signed in, for the page header.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    pub name: String,
    pub groups: Vec<String>,
    pub csrf: String,
}

/// A whole page. `body` must already be escaped markup.
pub fn page(status: StatusCode, title: &str, viewer: Option<&Viewer>, live: &str, body: &str) -> Response {
    let mut nav = String::new();
    if let Some(v) = viewer {
        let _ = write!(
            nav,
            "<nav><a href=\"/\">Inbox</a><a href=\"/history\">History</a></nav>\
             <div class=\"who\">Signed in as <strong>{}</strong>{}\
             <form method=\"post\" action=\"/auth/logout\" class=\"inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button class=\"link\">Sign out</button></form></div>",
            esc(&v.name),
            if v.groups.is_empty() {
                String::new()
            } else {
                format!(" <span class=\"muted\">({})</span>", esc(&v.groups.join(", ")))
            },
            esc(&v.csrf),
        );
    }
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Airlock</title><link rel=\"stylesheet\" href=\"/static/app.css\">\
         <script src=\"/static/app.js\" defer></script></head>\
         <body data-live=\"{}\"><header><a class=\"brand\" href=\"/\">Airlock</a>{nav}</header>\
         <main>{body}</main></body></html>\n",
        esc(title),
        esc(live),
    );
    let mut response = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    secure_headers(&mut response);
    response
}

/// An error as a page, with the same code and status as the JSON API.
pub fn error_page(e: &ApiError) -> Response {
    let body = format!(
        "<section class=\"card error\"><h1>{}</h1><p>{}</p><p class=\"muted\">code: {}</p>\
         <p><a href=\"/\">Back to the inbox</a> · <a href=\"/auth/login\">Sign in</a></p></section>",
        esc(e.code.status().canonical_reason().unwrap_or("Error")),
        esc(&e.message),
        esc(e.code.as_str()),
    );
    tracing::info!(code = e.code.as_str(), message = %e.message, "page refused");
    page(e.code.status(), "Error", None, "", &body)
}

/// After sign-in: moves on to `return_to` with a same-site navigation, so
/// the SameSite=Strict cookie just set is sent.
pub fn signed_in_page(name: &str, return_to: &str) -> Response {
    let target = esc(return_to);
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"0;url={target}\">\
         <title>Signed in · Airlock</title><link rel=\"stylesheet\" href=\"/static/app.css\"></head>\
         <body><main><section class=\"card\"><p>Signed in as <strong>{}</strong>.</p>\
         <p><a id=\"continue\" href=\"{target}\">Continue</a></p></section></main></body></html>\n",
        esc(name)
    );
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response();
    secure_headers(&mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removes tags and undoes [`esc`], to compare with the input.
    fn text_of(markup: &str) -> String {
        let mut out = String::new();
        let mut in_tag = false;
        for c in markup.chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        out.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&")
    }

    #[test]
    fn highlighting_keeps_every_character_and_escapes_them() {
        let cases = [
            "DELETE FROM orders WHERE id = 3",
            "select 'it''s' , \"Odd\"\"Name\" from t -- <script>alert(1)</script>\nwhere x < 2 && y > 1",
            "/* unterminated <b>",
            "SELECT $body$ <img src=x onerror=alert(1)> $body$, $1, 1.5e3, 'unterminated",
            "SELECT 'é' || \"ünïcode\" FROM täble",
            "",
        ];
        for sql in cases {
            let html = highlight(sql);
            assert_eq!(text_of(&html), sql, "{html}");
            assert!(!html.contains("<script"), "{html}");
            assert!(!html.contains("<img"), "{html}");
        }
        assert!(highlight("DELETE x").starts_with("<span class=\"k\">DELETE</span>"));
    }

    #[test]
    fn invisible_characters_are_shown() {
        let sql = "SELECT 1 -- \u{202E}gnp.exe\nDELETE\u{200B}";
        assert!(has_hidden(sql));
        let html = highlight(sql);
        assert!(html.contains("U+202E") && html.contains("U+200B"), "{html}");
        assert!(!has_hidden("SELECT 1\n\tFROM t"));
    }

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(192), "3m 12s");
        assert_eq!(duration(7500), "2h 5m");
        assert_eq!(duration(-5), "0s");
    }
}
