//! `airlock-control review` and `login`: the reviewer API from a terminal.
//! Tables for people, `--json` (the API's own JSON) for scripts.
//!
//! The token is the file `--token-file` names, else `AIRLOCK_TOKEN`, else the file
//! `login` wrote (`$XDG_CONFIG_HOME/airlock/token`, or
//! `~/.config/airlock/token`). `login` signs in with the OAuth 2.0 device
//! authorization grant (RFC 8628) at the issuer of `identity.issuer` (or
//! `--issuer`): it prints a code and a page to enter it on, waits, and keeps
//! the access token in that file, readable by its owner only. The reviewer
//! is `--reviewer URL`, else `AIRLOCK_REVIEWER_URL`, else `reviewer.public_url`
//! (or `http://` + `reviewer.listen`) of `--config`.

// Printing results to standard output is what a CLI is for.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// The reviewer's base URL (default: AIRLOCK_REVIEWER_URL, else from --config).
    #[arg(long)]
    reviewer: Option<String>,
    /// airlock.yaml, for the reviewer's address.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Read the token from this file (default: AIRLOCK_TOKEN, else the login file).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// A CA certificate (PEM) for the reviewer's TLS, beside the system roots.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// Requests you may review (default: pending ones).
    List {
        /// pending, granted, denied, expired, cancelled, decided; comma-separated.
        #[arg(long, default_value = "pending")]
        state: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// One request: statement, identity, rule, impact, fingerprint, votes.
    Show {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Approve a request, optionally in scope (a grant).
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// Also allow statements like this one: `fingerprint` (its shape) or
        /// `rule` (its kinds on its tables, with --kinds and --tables).
        #[arg(long, value_parser = ["fingerprint", "rule"])]
        scope: Option<String>,
        /// How long the grant lives (e.g. 30m).
        #[arg(long, default_value = "30m")]
        ttl: String,
        /// How many statements the grant may let run.
        #[arg(long, default_value_t = 10)]
        max_uses: u32,
        /// The most rows each use may change per table (required over writes).
        #[arg(long)]
        max_rows: Option<u64>,
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
        /// Approve your own request under the policy's break-glass terms.
        #[arg(long)]
        break_glass: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Deny a request.
    Deny {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Grants (default: active ones), or one grant by id.
    Grants {
        id: Option<String>,
        /// active, used_up, revoked, expired; comma-separated.
        #[arg(long, default_value = "active")]
        state: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a grant: no proxy runs a statement under it from then on.
    Revoke {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The issuer (default: identity.issuer of --config).
    #[arg(long)]
    issuer: Option<String>,
    /// airlock.yaml, for the issuer.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The public client registered for device sign-in.
    #[arg(long, default_value = "airlock-cli")]
    client_id: String,
    /// Scopes asked for (Entra: the API's, e.g. api://airlock/.default).
    #[arg(long, default_value = "openid profile offline_access")]
    scope: String,
    /// Where to keep the token (default: the login file).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// A CA certificate (PEM) the issuer's TLS certificate chains to.
    #[arg(long)]
    ca: Option<PathBuf>,
}

/// The file `login` writes and `review` reads by default.
pub fn default_token_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("airlock").join("token"))
}

fn read_yaml(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_norway::from_str(&text).with_context(|| format!("{} is not YAML", path.display()))
}

impl Conn {
    fn base(&self) -> anyhow::Result<String> {
        if let Some(r) = &self.reviewer {
            return Ok(r.trim_end_matches('/').to_owned());
        }
        if let Ok(r) = std::env::var("AIRLOCK_REVIEWER_URL")
            && !r.is_empty()
        {
            return Ok(r.trim_end_matches('/').to_owned());
        }
        if let Some(path) = &self.config {
            let v = read_yaml(path)?;
            if let Some(u) = v.pointer("/reviewer/public_url").and_then(Value::as_str) {
                return Ok(u.trim_end_matches('/').to_owned());
            }
            if let Some(l) = v.pointer("/reviewer/listen").and_then(Value::as_str) {
                return Ok(format!("http://{l}"));
            }
        }
        bail!(
            "no reviewer: pass --reviewer URL, set AIRLOCK_REVIEWER_URL, or --config with a reviewer section"
        )
    }

    fn token(&self) -> anyhow::Result<String> {
        if self.token_file.is_none()
            && let Ok(t) = std::env::var("AIRLOCK_TOKEN")
            && !t.trim().is_empty()
        {
            return Ok(t.trim().to_owned());
        }
        let path = self
            .token_file
            .clone()
            .or_else(default_token_file)
            .ok_or_else(|| {
                anyhow!("no token: set AIRLOCK_TOKEN, pass --token-file, or run `airlock-control login`")
            })?;
        let t = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading the token from {} (set AIRLOCK_TOKEN, or run `airlock-control login`)",
                path.display()
            )
        })?;
        Ok(t.trim().to_owned())
    }

    fn client(&self) -> anyhow::Result<reqwest::Client> {
        client_with(self.ca.as_deref())
    }
}

fn client_with(ca: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        b = b.add_root_certificate(
            reqwest::Certificate::from_pem(&pem).context("--ca is not a PEM certificate")?,
        );
    }
    b.build().context("building the HTTP client")
}

/// Tokens and sign-ins go over TLS, or plain HTTP on this machine's
/// loopback only (a development stack): never in clear across a network.
fn check_transport(url: &str, what: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("{what}'s URL {url:?} is not a URL"))?;
    let host = parsed.host_str().unwrap_or("").trim_matches(['[', ']']);
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => bail!("refusing to send a token to {what} at {url}: use https (plain http only on loopback)"),
    }
}

/// One call to the reviewer API: its JSON, or its error as the API said it.
async fn call(
    conn: &Conn,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!("{}{path}", conn.base()?);
    check_transport(&url, "the reviewer")?;
    let mut req = conn.client()?.request(method, &url).bearer_auth(conn.token()?);
    if let Some(b) = body {
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.with_context(|| format!("calling {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let code = v.pointer("/error/code").and_then(Value::as_str).unwrap_or("");
        let message = v.pointer("/error/message").and_then(Value::as_str).unwrap_or("");
        bail!("{} {code}: {message}", status.as_u16());
    }
    Ok(v)
}

fn clip(s: &str, n: usize) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        format!(
            "{}…",
            one_line.chars().take(n.saturating_sub(1)).collect::<String>()
        )
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn who(v: &Value) -> String {
    let name = text(v, "/display_name");
    let subject = text(v, "/subject");
    if name.is_empty() {
        subject.to_owned()
    } else {
        format!("{name} ({subject})")
    }
}

/// Rows as aligned columns.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(header.iter().map(|h| (*h).to_owned()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

fn request_rows(v: &Value) -> Vec<Vec<String>> {
    v["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                text(r, "/id").to_owned(),
                text(r, "/state").to_owned(),
                who(&r["identity"]),
                text(r, "/connection/name").to_owned(),
                clip(text(r, "/statement/text"), 60),
            ]
        })
        .collect()
}

fn show_request(r: &Value) -> String {
    let mut out = vec![
        format!("request     {}", text(r, "/id")),
        format!("state       {}", text(r, "/state")),
        format!("requester   {}", who(&r["identity"])),
        format!("connection  {}", text(r, "/connection/name")),
        format!(
            "rule        {} ({})",
            text(r, "/verdict/rule"),
            text(r, "/verdict/policy")
        ),
        format!(
            "approvals   {} of {}",
            r["approvals_given"].as_u64().unwrap_or(0),
            r["approvals_required"].as_u64().unwrap_or(0)
        ),
        format!("deadline    {}", text(r, "/deadline")),
        format!("sha256      {}", text(r, "/statement/sha256")),
    ];
    let fp = text(r, "/fingerprint/hash");
    if fp.is_empty() {
        out.push(format!(
            "shape       none: {}",
            text(r, "/fingerprint/unavailable")
        ));
    } else {
        out.push(format!(
            "shape       {} ({})",
            text(r, "/fingerprint/normalized"),
            &fp[..fp.len().min(16)]
        ));
    }
    if r["break_glass"] == true {
        out.push("BREAK-GLASS the requester approved it themself".to_owned());
    }
    let reason = text(r, "/agent_reason");
    if !reason.is_empty() {
        out.push(format!(
            "reason      {} (the agent's own words, not verified)",
            clip(reason, 2048)
        ));
    }
    let estimate = &r["impact"]["estimate"];
    if !estimate.is_null() {
        let unavailable = text(estimate, "/unavailable");
        if unavailable.is_empty() {
            for t in estimate["tables"].as_array().into_iter().flatten() {
                out.push(format!(
                    "estimate    {} rows of {}",
                    t["rows"].as_u64().unwrap_or(0),
                    text(t, "/table")
                ));
            }
        } else {
            out.push(format!("estimate    none: {unavailable}"));
        }
    }
    let dry = &r["impact"]["dry_run"];
    if !dry.is_null() {
        for t in dry["tables"].as_array().into_iter().flatten() {
            out.push(format!(
                "dry run     {} rows of {}",
                t["rows"].as_u64().unwrap_or(0),
                text(t, "/table")
            ));
        }
    }
    let sql = text(r, "/statement/text");
    if sql.chars().any(hidden) {
        out.push(
            "WARNING     the statement holds control or invisible characters, shown escaped (\\u{..})"
                .to_owned(),
        );
    }
    // Indented, every line of it: no line of the statement passes for a
    // line of this report.
    out.push(String::new());
    out.extend(sql.lines().map(|l| format!("    {l}")));
    let votes: Vec<Vec<String>> = r["votes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            vec![
                who(&v["reviewer"]),
                text(v, "/decision").to_owned(),
                text(v, "/time").to_owned(),
                clip(text(v, "/reason"), 50),
            ]
        })
        .collect();
    if !votes.is_empty() {
        out.push(String::new());
        out.push(table(&["VOTER", "DECISION", "TIME", "REASON"], votes));
    }
    out.join("\n")
}

fn grant_rows(grants: &[Value]) -> Vec<Vec<String>> {
    grants
        .iter()
        .map(|g| {
            let what = if g["match"] == "fingerprint" {
                text(g, "/fingerprint/normalized").to_owned()
            } else {
                let kinds: Vec<&str> = g["kinds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let tables: Vec<&str> = g["tables"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                format!("{} on {}", kinds.join("|"), tables.join(", "))
            };
            vec![
                text(g, "/id").to_owned(),
                text(g, "/state").to_owned(),
                format!(
                    "{}/{}",
                    g["uses"].as_u64().unwrap_or(0),
                    g["max_uses"].as_u64().unwrap_or(0)
                ),
                text(g, "/expires_at").to_owned(),
                who(&g["identity"]),
                clip(&what, 50),
            ]
        })
        .collect()
}

/// A character a terminal would act on or not show: control characters
/// (escape sequences move the cursor, erase lines, hide text) and the
/// invisible format characters (bidirectional overrides reorder what is
/// read, zero-width ones hide).
fn hidden(c: char) -> bool {
    (c.is_control() && c != '\n')
        || matches!(c, '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}' | '\u{E0100}'..='\u{E01EF}')
}

/// Every string of an answer on one line (`\n` for a line break), but the
/// statement's own text, which is shown indented line by line: a name, a
/// reason or an error the agent chose cannot add a line to the report.
fn one_line_strings(v: &mut Value, top: bool) {
    match v {
        Value::String(s) if s.contains(['\n', '\r']) => *s = s.replace('\r', "\\r").replace('\n', "\\n"),
        Value::Array(items) => items.iter_mut().for_each(|x| one_line_strings(x, false)),
        Value::Object(fields) => {
            for (k, x) in fields.iter_mut() {
                match (top && k == "statement", x) {
                    (true, Value::Object(statement)) => statement
                        .iter_mut()
                        .filter(|(k, _)| *k != "text")
                        .for_each(|(_, y)| one_line_strings(y, false)),
                    (_, x) => one_line_strings(x, false),
                }
            }
        }
        _ => {}
    }
}

/// JSON as the terminal may show it: the hidden characters inside its
/// strings written as JSON escapes (`\u001b`), the same value to a parser.
fn json_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if hidden(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04x}", u));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Text as the terminal may show it: every hidden character escaped
/// (`\u{1b}`), so an agent's text can neither drive the reviewer's terminal
/// nor hide part of a statement.
fn terminal_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if hidden(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

fn print(conn: &Conn, v: &Value, human: impl FnOnce(&Value) -> String) -> anyhow::Result<()> {
    if conn.json {
        println!("{}", json_safe(&serde_json::to_string_pretty(v)?));
    } else {
        let mut shown = v.clone();
        one_line_strings(&mut shown, true);
        println!("{}", terminal_safe(&human(&shown)));
    }
    Ok(())
}

fn path_id(id: &str) -> anyhow::Result<&str> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("{id:?} is not a request or grant id");
    }
    Ok(id)
}

fn query_states(state: &str) -> String {
    state
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs one `review` command.
pub async fn review(command: ReviewCommand) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    match command {
        ReviewCommand::List { state, conn } => {
            let v = call(
                &conn,
                Method::GET,
                &format!("/api/v1/requests?state={}", query_states(&state)),
                None,
            )
            .await?;
            print(&conn, &v, |v| {
                table(
                    &["ID", "STATE", "REQUESTER", "CONNECTION", "STATEMENT"],
                    request_rows(v),
                )
            })?;
        }
        ReviewCommand::Show { id, conn } => {
            let v = call(
                &conn,
                Method::GET,
                &format!("/api/v1/requests/{}", path_id(&id)?),
                None,
            )
            .await?;
            print(&conn, &v, show_request)?;
        }
        ReviewCommand::Approve {
            id,
            reason,
            scope,
            ttl,
            max_uses,
            max_rows,
            kinds,
            tables,
            break_glass,
            conn,
        } => {
            let mut body = json!({"reason": reason});
            if let Some(m) = scope {
                let mut s = json!({"match": m, "ttl": ttl, "max_uses": max_uses});
                if let Some(n) = max_rows {
                    s["max_rows"] = json!(n);
                }
                if !kinds.is_empty() {
                    s["kinds"] = json!(kinds);
                }
                if !tables.is_empty() {
                    s["tables"] = json!(tables);
                }
                body["scope"] = s;
            }
            if break_glass {
                body["break_glass"] = json!(true);
            }
            let v = call(
                &conn,
                Method::POST,
                &format!("/api/v1/requests/{}/approve", path_id(&id)?),
                Some(body),
            )
            .await?;
            print(&conn, &v, |v| {
                format!("approved {id}: request is {}", text(v, "/request/state"))
            })?;
        }
        ReviewCommand::Deny { id, reason, conn } => {
            let v = call(
                &conn,
                Method::POST,
                &format!("/api/v1/requests/{}/deny", path_id(&id)?),
                Some(json!({"reason": reason})),
            )
            .await?;
            print(&conn, &v, |v| {
                format!("denied {id}: request is {}", text(v, "/request/state"))
            })?;
        }
        ReviewCommand::Grants {
            id: Some(id), conn, ..
        } => {
            let v = call(
                &conn,
                Method::GET,
                &format!("/api/v1/grants/{}", path_id(&id)?),
                None,
            )
            .await?;
            print(&conn, &v, |g| {
                let mut out = table(
                    &["ID", "STATE", "USES", "EXPIRES", "FOR", "ALLOWS"],
                    grant_rows(std::slice::from_ref(g)),
                );
                for u in g["recent_uses"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "\n  use {} at {} on {} (session {})",
                        u["number"].as_u64().unwrap_or(0),
                        text(u, "/time"),
                        text(u, "/proxy_id"),
                        text(u, "/session_id")
                    ));
                }
                out
            })?;
        }
        ReviewCommand::Grants {
            id: None,
            state,
            conn,
        } => {
            let v = call(
                &conn,
                Method::GET,
                &format!("/api/v1/grants?state={}", query_states(&state)),
                None,
            )
            .await?;
            print(&conn, &v, |v| {
                let grants = v["grants"].as_array().cloned().unwrap_or_default();
                table(
                    &["ID", "STATE", "USES", "EXPIRES", "FOR", "ALLOWS"],
                    grant_rows(&grants),
                )
            })?;
        }
        ReviewCommand::Revoke { id, reason, conn } => {
            let v = call(
                &conn,
                Method::DELETE,
                &format!("/api/v1/grants/{}", path_id(&id)?),
                Some(json!({"reason": reason})),
            )
            .await?;
            print(&conn, &v, |g| {
                format!(
                    "revoked grant {id} after {} uses",
                    g["uses"].as_u64().unwrap_or(0)
                )
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `login`: the device authorization grant at the issuer; the access token
/// kept in the token file.
pub async fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let issuer = match (&args.issuer, &args.config) {
        (Some(i), _) => i.clone(),
        (None, Some(path)) => read_yaml(path)?
            .pointer("/identity/issuer")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("{} has no identity.issuer", path.display()))?,
        (None, None) => bail!("pass --issuer URL, or --config airlock.yaml (its identity.issuer)"),
    };
    let http = client_with(args.ca.as_deref())?;
    check_transport(&issuer, "the issuer")?;
    let discovery_url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let discovery: Value = serde_json::from_str(
        &http
            .get(&discovery_url)
            .send()
            .await
            .with_context(|| format!("reading {discovery_url}"))?
            .text()
            .await?,
    )
    .with_context(|| format!("{discovery_url} is not JSON"))?;
    let device_endpoint = text(&discovery, "/device_authorization_endpoint").to_owned();
    let token_endpoint = text(&discovery, "/token_endpoint").to_owned();
    if device_endpoint.is_empty() || token_endpoint.is_empty() {
        bail!("the issuer does not offer device sign-in (no device_authorization_endpoint in its discovery)");
    }
    // The discovery is the issuer's own, and its endpoints are as safe to
    // reach as it is.
    let said = text(&discovery, "/issuer");
    if said.trim_end_matches('/') != issuer.trim_end_matches('/') {
        bail!("{discovery_url} names another issuer ({said:?}), not {issuer}");
    }
    check_transport(&device_endpoint, "the device authorization endpoint")?;
    check_transport(&token_endpoint, "the token endpoint")?;
    let started: Value = serde_json::from_str(
        &http
            .post(&device_endpoint)
            .form(&[
                ("client_id", args.client_id.as_str()),
                ("scope", args.scope.as_str()),
            ])
            .send()
            .await
            .context("asking for a device code")?
            .text()
            .await?,
    )
    .context("the device code answer is not JSON")?;
    let device_code = text(&started, "/device_code").to_owned();
    if device_code.is_empty() {
        bail!(
            "no device code: {} {}",
            text(&started, "/error"),
            text(&started, "/error_description")
        );
    }
    eprintln!(
        "To sign in, open {} and enter the code {}",
        text(&started, "/verification_uri"),
        text(&started, "/user_code")
    );
    let mut interval = Duration::from_secs(started["interval"].as_u64().unwrap_or(5).max(1));
    let deadline =
        std::time::Instant::now() + Duration::from_secs(started["expires_in"].as_u64().unwrap_or(900));
    loop {
        if std::time::Instant::now() >= deadline {
            bail!("the code expired before anyone signed in; run `airlock-control login` again");
        }
        tokio::time::sleep(interval).await;
        let answer: Value = serde_json::from_str(
            &http
                .post(&token_endpoint)
                .form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("client_id", args.client_id.as_str()),
                    ("device_code", device_code.as_str()),
                ])
                .send()
                .await
                .context("polling the token endpoint")?
                .text()
                .await?,
        )
        .context("the token answer is not JSON")?;
        if let Some(token) = answer["access_token"].as_str() {
            let path = args
                .token_file
                .clone()
                .or_else(default_token_file)
                .ok_or_else(|| anyhow!("no place for the token: pass --token-file"))?;
            write_private(&path, token)?;
            eprintln!("signed in; the token is in {}", path.display());
            return Ok(ExitCode::SUCCESS);
        }
        match text(&answer, "/error") {
            "authorization_pending" => {}
            "slow_down" => interval += Duration::from_secs(5),
            other => bail!("sign-in failed: {other} {}", text(&answer, "/error_description")),
        }
    }
}

/// Writes `token` to `path`, readable by its owner only: into a new file
/// created 0600 beside it (never an existing file or a link planted there),
/// then renamed over `path`, so no reader ever sees it half written or
/// readable by others. A directory it creates is its owner's only.
fn write_private(path: &Path, token: &str) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", path.display()))?;
    let temp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = (|| -> anyhow::Result<()> {
        let mut f = options
            .open(&temp)
            .with_context(|| format!("creating {}", temp.display()))?;
        std::io::Write::write_all(&mut f, token.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&temp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_text_cannot_drive_the_terminal_or_pass_for_a_line_of_the_report() {
        let r = serde_json::json!({
            "id": "01R",
            "state": "pending",
            "statement": {
                "text": "DELETE FROM orders /*\u{1b}[1A\u{1b}[2K\rSELECT 1 */\nvotes: alice approve\u{202e}",
                "sha256": "ab"
            },
            "agent_reason": "fine\nBREAK-GLASS none",
            "identity": {"display_name": "agent\napprovals   2 of 2", "subject": "s"},
            "fingerprint": {"hash": "ab", "normalized": "DELETE FROM orders RETURNING id AS \"\nstate       granted\""},
            "votes": []
        });
        let mut r = r;
        one_line_strings(&mut r, true);
        let shown = terminal_safe(&show_request(&r));
        assert!(!shown.chars().any(hidden), "{shown:?}");
        assert!(
            shown.contains("\\u{1b}[1A") && shown.contains("\\u{202e}"),
            "{shown}"
        );
        assert!(shown.contains("WARNING"), "{shown}");
        // The statement's second line is indented as the statement; the
        // reason stays on its own line.
        assert!(
            shown.lines().any(|l| l == "    votes: alice approve\\u{202e}"),
            "{shown}"
        );
        assert!(
            !shown.lines().any(|l| l.starts_with("votes:")
                || l.starts_with("BREAK-GLASS")
                || l.starts_with("approvals   2")
                || l.starts_with("state       granted")),
            "{shown}"
        );
        // Characters that render as nothing are escaped too; JSON output
        // keeps them as JSON escapes.
        assert_eq!(terminal_safe("a\u{3164}b\u{e0041}"), "a\\u{3164}b\\u{e0041}");
        let json = json_safe(&serde_json::json!({"t": "x\u{202e}\u{9b}y"}).to_string());
        assert!(!json.chars().any(hidden), "{json}");
        assert_eq!(
            serde_json::from_str::<Value>(&json).expect("still JSON")["t"],
            "x\u{202e}\u{9b}y"
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_token_file_is_its_owners_only_and_never_written_through_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("a directory");
        // An existing file readable by all is replaced, not rewritten.
        let path = dir.path().join("sub/token");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, "old").expect("old token");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private(&path, "new").expect("written");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "new");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A link planted at the path is replaced; its target is untouched.
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "theirs").expect("target");
        let link = dir.path().join("linked");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        write_private(&link, "secret").expect("written");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "theirs");
        assert!(
            !std::fs::symlink_metadata(&link)
                .expect("meta")
                .file_type()
                .is_symlink()
        );
        // A directory it creates is its owner's only.
        let fresh = dir.path().join("new-dir/token");
        write_private(&fresh, "t").expect("written");
        let mode = std::fs::metadata(dir.path().join("new-dir"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn tokens_go_over_tls_or_loopback_only() {
        for ok in [
            "https://review.example.com",
            "http://127.0.0.1:8080/x",
            "http://[::1]:9/",
            "http://localhost:1",
        ] {
            assert!(check_transport(ok, "it").is_ok(), "{ok}");
        }
        for refused in [
            "http://review.example.com",
            "http://10.0.0.5:8080",
            "ftp://127.0.0.1",
            "review.example.com",
        ] {
            assert!(check_transport(refused, "it").is_err(), "{refused}");
        }
    }

    #[test]
    fn tables_align_and_statements_are_clipped() {
        let t = table(
            &["ID", "STATE"],
            vec![
                vec!["01A".into(), "pending".into()],
                vec!["01BBBB".into(), "granted".into()],
            ],
        );
        assert_eq!(t, "ID      STATE\n01A     pending\n01BBBB  granted");
        assert_eq!(clip("DELETE FROM\n  orders", 60), "DELETE FROM orders");
        assert_eq!(clip("abcdefgh", 5), "abcd…");
    }

    #[test]
    fn ids_are_checked_before_any_call() {
        assert!(path_id("01J0ABC").is_ok());
        assert!(path_id("../x").is_err());
        assert!(path_id("").is_err());
    }
}
