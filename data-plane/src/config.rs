//! The sections of airlock.yaml the proxy reads: `nats`, `identity`,
//! `proxy`, `connections`, and (through the policy crate) `approvals` and
//! `policies`. Reading the file and refusing unknown top-level sections
//! is airlock-config's; this module owns the proxy's section types and the
//! checks on their values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_config::ConfigFile;
use airlock_eventlog::NatsSettings;
use airlock_eventlog::signing::SigningSection;
use airlock_identity::IdentityConfig;
use anyhow::{Context, bail};
use serde::Deserialize;

use crate::upstream::{Secret, UpstreamConfig};

/// `proxy:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    pub listen: SocketAddr,
    /// The control plane's gRPC URL, e.g. `http://127.0.0.1:7070`, or a
    /// list of replicas' URLs (the proxy attaches to one, and moves on to
    /// the next when it fails).
    pub control: airlock_identity::OneOrMany,
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// Accept plain-text logins from loopback clients. Development only.
    #[serde(default)]
    pub allow_plaintext_loopback: bool,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections still logging in (before the token is accepted or
    /// refused) at most, within `max_connections`; past it a new connection
    /// is refused with 53300. Default: a quarter of `max_connections`, so
    /// sockets that never log in cannot take every slot.
    #[serde(default)]
    pub max_unauthenticated: Option<usize>,
    #[serde(default = "default_startup_timeout", with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// This proxy's id in events; default: host name and pid.
    #[serde(default)]
    pub proxy_id: Option<String>,
    /// Public URL of the reviewer UI, named in hold notices.
    #[serde(default)]
    pub reviewer_url: Option<String>,
    /// Where to serve Prometheus `/metrics`, `/livez`, `/readyz` and
    /// `/healthz` (off when unset).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// On SIGTERM, how long sessions may go on before they are ended. Below
    /// Kubernetes' default grace period (30 s), with room for the events to
    /// reach the log.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Events buffered for the log before statements are refused.
    #[serde(default = "default_record_buffer")]
    pub record_buffer: usize,
    /// How long a session's recorder waits for more statements to record
    /// together in one event (zero: only those already waiting). Bounds how
    /// far the log may trail an allowed statement; held statements and
    /// their approvals are never delayed by it.
    #[serde(default = "default_record_linger", with = "humantime_serde")]
    pub record_linger: Duration,
    /// How often each connection's catalog facts (functions that shadow
    /// built-ins, views, the role's search path) are read again; they are
    /// also read at once after a statement that may change the catalog
    /// runs through this proxy, and on SIGHUP. 1s to 1h.
    #[serde(default = "default_catalog_refresh", with = "humantime_serde")]
    pub catalog_refresh: Duration,
    /// TLS to the control plane (`https://` control URLs): the CA that
    /// signed its certificate, and this proxy's client certificate and key,
    /// which a control plane with `control.tls.client_ca` requires.
    #[serde(default)]
    pub control_tls: Option<ControlTlsSection>,
    /// This proxy's Ed25519 private key (PKCS#8 PEM, `airlock-control
    /// signing-key`): every event it appends is signed with it, and its
    /// public half is listed in `signing.trust` as `role: proxy`. Required.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// The environment variable holding the fleet's cancel key (at least 32
    /// bytes, the same on every proxy): with it, a cancel that reaches a
    /// proxy not holding the session is passed on over NATS, sealed
    /// ([`crate::cancel`]); without it, cancels reach only the sessions of
    /// the proxy they arrive at.
    #[serde(default)]
    pub cancel_key_env: Option<String>,
    /// How long the impact estimate of a held statement (EXPLAIN on a
    /// connection of the proxy's own) may take before the request is filed
    /// without it. 100ms to 30s.
    #[serde(default = "default_impact_timeout", with = "humantime_serde")]
    pub impact_timeout: Duration,
    /// A dry run's `statement_timeout`. 100ms to 5m.
    #[serde(default = "default_dry_run_timeout", with = "humantime_serde")]
    pub dry_run_timeout: Duration,
    /// A dry run's `lock_timeout`: the longest it waits for a lock another
    /// transaction holds (and so the longest it may make others wait
    /// behind it). 10ms to 1m.
    #[serde(default = "default_dry_run_lock_timeout", with = "humantime_serde")]
    pub dry_run_lock_timeout: Duration,
}

impl ProxySection {
    /// The impact estimate's and dry run's time limits.
    pub fn impact_limits(&self) -> crate::impact::Limits {
        crate::impact::Limits {
            estimate: self.impact_timeout,
            dry_run: self.dry_run_timeout,
            dry_run_locks: self.dry_run_lock_timeout,
        }
    }
}

fn default_impact_timeout() -> Duration {
    crate::impact::Limits::default().estimate
}
fn default_dry_run_timeout() -> Duration {
    crate::impact::Limits::default().dry_run
}
fn default_dry_run_lock_timeout() -> Duration {
    crate::impact::Limits::default().dry_run_locks
}

/// `proxy.control_tls:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlTlsSection {
    pub ca: PathBuf,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

fn default_max_connections() -> usize {
    1000
}
fn default_startup_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_record_buffer() -> usize {
    16_384
}
/// The longest `proxy.record_linger` accepted.
pub const MAX_RECORD_LINGER: Duration = Duration::from_secs(1);

fn default_catalog_refresh() -> Duration {
    Duration::from_secs(60)
}

/// 20 ms: at the rate one busy session of a loaded proxy runs statements
/// (a few hundred a second each), 2 ms grouped about one statement per
/// event, and every event costs an append, a signature and a fold; 20 ms
/// groups about ten (pgbench -S, 8 clients: NATS 48 -> 10 us and the
/// control plane 29 -> 7 us per transaction, 1.55x the throughput). The log
/// trails an allowed statement by that much more; nothing waits on it.
fn default_record_linger() -> Duration {
    Duration::from_millis(20)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One entry of `connections:`. The credential lives here; agents never
/// see it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSection {
    pub name: String,
    /// `postgres://user@host:port/database` (no password in the URL).
    pub upstream: String,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `password` (the default: `password_env` or `password_file`, or none
    /// for trust), or `entra`: the proxy's own Entra token is the password
    /// (Azure Database for PostgreSQL), fetched from the managed identity
    /// endpoint or, with `federated_token_file`, by workload identity.
    #[serde(default)]
    pub upstream_auth: UpstreamAuth,
    /// With `entra`: the token's scope (default Azure Database for
    /// PostgreSQL's).
    #[serde(default)]
    pub token_scope: Option<String>,
    /// With `entra`: where tokens come from. Default: the instance metadata
    /// service, or, with `federated_token_file`, the tenant's token
    /// endpoint (`$AZURE_AUTHORITY_HOST$AZURE_TENANT_ID/oauth2/v2.0/token`).
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// With `entra`: a user-assigned managed identity's client id, or the
    /// application of workload identity (default `$AZURE_CLIENT_ID`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// With `entra`: Kubernetes workload identity's projected token file
    /// (as the webhook sets `$AZURE_FEDERATED_TOKEN_FILE`).
    #[serde(default)]
    pub federated_token_file: Option<PathBuf>,
    /// Schema unqualified table names resolve to (read by the policy crate).
    #[serde(default)]
    pub default_schema: Option<String>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// How the proxy logs into a connection's upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamAuth {
    #[default]
    Password,
    Entra,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// What `airlock-proxy` needs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub path: PathBuf,
    pub text: String,
    pub nats: NatsSettings,
    pub identity: IdentityConfig,
    pub proxy: ProxySection,
    pub connections: Vec<(String, UpstreamConfig)>,
    /// `signing:`: the writers this proxy trusts (a grant runs only if a
    /// trusted control-plane key signed it).
    pub signing: Option<SigningSection>,
}

/// Reads airlock.yaml and resolves each connection's password.
pub fn load(path: &Path) -> anyhow::Result<ProxyConfig> {
    from_file(&ConfigFile::load(path)?, &|name| std::env::var(name).ok())
}

/// Parses airlock.yaml text; `env` looks up environment variables.
pub fn parse(text: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ProxyConfig> {
    from_file(&ConfigFile::parse(text, path)?, env)
}

pub(crate) fn from_file(
    file: &ConfigFile,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<ProxyConfig> {
    let in_file = || format!("in {}", file.path().display());
    let nats = file.required::<NatsSettings>("nats", "url of the NATS server")?;
    let identity = file.required::<IdentityConfig>("identity", "issuer and audience")?;
    let proxy = file.required::<ProxySection>("proxy", "listen, control")?;
    check_record_linger(&proxy).with_context(in_file)?;
    let raw: Vec<ConnectionSection> = file.section("connections")?.unwrap_or_default();
    // A connection's problem is placed at its `name:` line.
    let place = |name: &str| {
        let text = file.text();
        let from = text.find("\nconnections:").map_or(0, |at| at + 1);
        let line = text[from..]
            .lines()
            .position(|l| {
                let l = l.trim_start().trim_start_matches("- ").trim_start();
                l.strip_prefix("name:").is_some_and(|v| {
                    let v = v.split(" #").next().unwrap_or(v);
                    v.trim().trim_matches(['"', '\'']) == name
                })
            })
            .map(|i| text[..from].lines().count() + i + 1);
        match line {
            Some(line) => format!("{}:{line}", file.path().display()),
            None => in_file(),
        }
    };
    let connections = connections(raw, env, &place)?;
    let signing = file.section::<SigningSection>("signing")?;
    Ok(ProxyConfig {
        path: file.path().to_path_buf(),
        text: file.text().to_owned(),
        nats,
        identity,
        proxy,
        connections,
        signing,
    })
}

fn check_record_linger(proxy: &ProxySection) -> anyhow::Result<()> {
    let refresh = proxy.catalog_refresh;
    if refresh < Duration::from_secs(1) || refresh > Duration::from_secs(3600) {
        bail!(
            "proxy.catalog_refresh is {refresh:?}; it must be between 1s and 1h (how long a change of \
             the database's functions or views made outside this proxy may go unseen)"
        );
    }
    let within = |name: &str, d: Duration, min: Duration, max: Duration| {
        if d < min || d > max {
            bail!("proxy.{name} is {d:?}; it must be between {min:?} and {max:?}");
        }
        Ok(())
    };
    within(
        "impact_timeout",
        proxy.impact_timeout,
        Duration::from_millis(100),
        Duration::from_secs(30),
    )?;
    within(
        "dry_run_timeout",
        proxy.dry_run_timeout,
        Duration::from_millis(100),
        Duration::from_secs(300),
    )?;
    within(
        "dry_run_lock_timeout",
        proxy.dry_run_lock_timeout,
        Duration::from_millis(10),
        Duration::from_secs(60),
    )?;
    if proxy.record_linger > MAX_RECORD_LINGER {
        bail!(
            "proxy.record_linger is {:?}; at most {:?} (it is how far the log may trail an allowed \
             statement: a few milliseconds is what groups a busy session's statements)",
            proxy.record_linger,
            MAX_RECORD_LINGER
        );
    }
    Ok(())
}

/// Each connection by name, with its upstream settings and password.
fn connections(
    raw: Vec<ConnectionSection>,
    env: &dyn Fn(&str) -> Option<String>,
    place: &dyn Fn(&str) -> String,
) -> anyhow::Result<Vec<(String, UpstreamConfig)>> {
    if raw.is_empty() {
        bail!(
            "{}: no `connections:`: the proxy has nothing to connect agents to",
            place("")
        );
    }
    let mut connections = Vec::new();
    for c in raw {
        let upstream = upstream_config(&c, env)
            .with_context(|| format!("{}: connections: connection `{}`", place(&c.name), c.name))?;
        if connections.iter().any(|(n, _)| *n == c.name) {
            bail!("{}: connection `{}` is defined twice", place(&c.name), c.name);
        }
        connections.push((c.name, upstream));
    }
    Ok(connections)
}

fn upstream_config(
    c: &ConnectionSection,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<UpstreamConfig> {
    let url =
        url::Url::parse(&c.upstream).context("upstream is not a URL (postgres://user@host:port/database)")?;
    if url.scheme() != "postgres" && url.scheme() != "postgresql" {
        bail!("upstream must start with postgres://");
    }
    if url.password().is_some() {
        bail!("do not put the password in the upstream URL; use password_env or password_file");
    }
    let mut sslmode = "disable".to_owned();
    let mut root_cert = None;
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "sslmode" => sslmode = v.into_owned(),
            "sslrootcert" => root_cert = Some(PathBuf::from(v.as_ref())),
            other => bail!("upstream URL parameter `{other}` is not supported (sslmode and sslrootcert are)"),
        }
    }
    let tls = match (sslmode.as_str(), root_cert) {
        ("disable", _) => crate::upstream::UpstreamTls::Disable,
        ("require", _) => crate::upstream::UpstreamTls::Require,
        ("verify-full", Some(root_cert)) => crate::upstream::UpstreamTls::VerifyFull { root_cert },
        ("verify-full", None) => bail!("sslmode=verify-full needs sslrootcert=<CA file>"),
        (other, _) => bail!("sslmode={other} is not supported; use disable, require or verify-full"),
    };
    let user = url.username();
    if user.is_empty() {
        bail!("upstream URL has no user (postgres://user@host:port/database)");
    }
    let host = url.host_str().context("upstream URL has no host")?.to_owned();
    let database = url.path().trim_start_matches('/');
    if database.is_empty() {
        bail!("upstream URL has no database (postgres://user@host:port/database)");
    }
    let loopback = host_is_loopback(&host);
    if c.upstream_auth == UpstreamAuth::Entra
        && !loopback
        && !matches!(tls, crate::upstream::UpstreamTls::VerifyFull { .. })
    {
        // The token goes to the server in clear text inside TLS (Azure asks
        // for it so): unless the server's certificate is checked, whoever
        // answers in its place reads a token every Azure PostgreSQL server
        // mapping this identity accepts.
        bail!(
            "`upstream_auth: entra` sends the proxy's Entra token as the password: use \
             ?sslmode=verify-full&sslrootcert=<CA file> so it goes only to the real server"
        );
    }
    let entra_keys = c.token_scope.is_some()
        || c.token_endpoint.is_some()
        || c.client_id.is_some()
        || c.federated_token_file.is_some();
    let token = match c.upstream_auth {
        UpstreamAuth::Password if entra_keys => bail!(
            "token_scope, token_endpoint, client_id and federated_token_file are for `upstream_auth: entra`"
        ),
        UpstreamAuth::Password => None,
        UpstreamAuth::Entra => {
            if c.password_env.is_some() || c.password_file.is_some() {
                bail!(
                    "`upstream_auth: entra` uses the proxy's Entra token as the password: remove password_env and password_file"
                );
            }
            Some(std::sync::Arc::new(entra_token(c, env)?))
        }
    };
    let password = match (&c.password_env, &c.password_file) {
        (Some(_), Some(_)) => bail!("set password_env or password_file, not both"),
        (Some(var), None) => {
            Some(Secret::new(env(var).with_context(|| {
                format!("environment variable {var} (password_env) is not set")
            })?))
        }
        (None, Some(file)) => Some(Secret::new(
            std::fs::read_to_string(file)
                .with_context(|| format!("reading password_file {}", file.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        )),
        (None, None) => None,
    };
    Ok(UpstreamConfig {
        tls,
        host,
        port: url.port().unwrap_or(5432),
        user: user.to_owned(),
        database: database.to_owned(),
        password,
        token,
        connect_timeout: c.connect_timeout,
    })
}

/// A loopback address or `localhost` (bracketed IPv6 included).
fn host_is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The token source of an `upstream_auth: entra` connection.
fn entra_token(
    c: &ConnectionSection,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<airlock_identity::UpstreamToken> {
    use airlock_identity::{AZURE_POSTGRES_SCOPE, IMDS_TOKEN_ENDPOINT, UpstreamToken, WorkloadIdentity};
    let identity = match &c.federated_token_file {
        None => WorkloadIdentity::Managed {
            endpoint: c
                .token_endpoint
                .clone()
                .unwrap_or_else(|| IMDS_TOKEN_ENDPOINT.to_owned()),
            client_id: c.client_id.clone(),
        },
        Some(file) => {
            let client_id = c.client_id.clone().or_else(|| env("AZURE_CLIENT_ID")).context(
                "workload identity needs the application's client id: set client_id, or AZURE_CLIENT_ID",
            )?;
            let token_endpoint = match &c.token_endpoint {
                Some(endpoint) => endpoint.clone(),
                None => {
                    let tenant = env("AZURE_TENANT_ID").context(
                        "workload identity needs the tenant: set token_endpoint, or AZURE_TENANT_ID",
                    )?;
                    let authority = env("AZURE_AUTHORITY_HOST")
                        .unwrap_or_else(|| "https://login.microsoftonline.com/".to_owned());
                    format!("{}/{tenant}/oauth2/v2.0/token", authority.trim_end_matches('/'))
                }
            };
            WorkloadIdentity::Federated {
                token_endpoint,
                client_id,
                token_file: file.clone(),
            }
        }
    };
    let scope = c.token_scope.as_deref().unwrap_or(AZURE_POSTGRES_SCOPE);
    UpstreamToken::new(identity, scope).map_err(|e| anyhow::anyhow!("upstream_auth: entra: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
nats: { url: nats://127.0.0.1:4222 }
identity: { issuer: https://idp, audience: api://airlock }
proxy: { listen: 127.0.0.1:6432, control: http://127.0.0.1:7070 }
connections:
  - name: prod-maintenance
    upstream: postgres://maint@127.0.0.1:5432/shop
    password_env: PROD_MAINT_PASSWORD
policies: []
";

    fn env(name: &str) -> Option<String> {
        (name == "PROD_MAINT_PASSWORD").then(|| "s3cret".to_owned())
    }

    #[test]
    fn entra_upstream_auth_replaces_the_password() {
        let entra = GOOD.replace(
            "    password_env: PROD_MAINT_PASSWORD\n",
            "    upstream_auth: entra\n    token_endpoint: http://127.0.0.1:9/token\n",
        );
        let c = parse(&entra, Path::new("airlock.yaml"), &env).expect("valid");
        let up = &c.connections[0].1;
        assert!(up.password.is_none() && up.token.is_some());
        // Off loopback, only to a server whose certificate is checked.
        let remote = entra.replace(
            "127.0.0.1:5432/shop",
            "db.example:5432/shop?sslmode=verify-full&sslrootcert=/etc/ssl/certs/ca-certificates.crt",
        );
        parse(&remote, Path::new("airlock.yaml"), &env).expect("verify-full");
        // Managed identity by default: the metadata service.
        let imds = GOOD.replace(
            "    password_env: PROD_MAINT_PASSWORD\n",
            "    upstream_auth: entra\n",
        );
        parse(&imds, Path::new("airlock.yaml"), &env).expect("the metadata service's http is allowed");
        let workload = GOOD.replace(
            "    password_env: PROD_MAINT_PASSWORD\n",
            "    upstream_auth: entra\n    federated_token_file: /var/run/secrets/azure/tokens/azure-identity-token\n",
        );
        let azure = |name: &str| match name {
            "AZURE_CLIENT_ID" => Some("app-1".to_owned()),
            "AZURE_TENANT_ID" => Some("tenant-1".to_owned()),
            _ => None,
        };
        parse(&workload, Path::new("airlock.yaml"), &azure)
            .expect("workload identity from the webhook's variables");
        for (text, expected) in [
            (
                GOOD.replace(
                    "    password_env: PROD_MAINT_PASSWORD\n",
                    "    password_env: PROD_MAINT_PASSWORD\n    upstream_auth: entra\n",
                ),
                "remove password_env",
            ),
            (
                GOOD.replace(
                    "    password_env: PROD_MAINT_PASSWORD\n",
                    "    password_env: PROD_MAINT_PASSWORD\n    token_scope: x/.default\n",
                ),
                "are for `upstream_auth: entra`",
            ),
            (
                GOOD.replace(
                    "    password_env: PROD_MAINT_PASSWORD\n",
                    "    upstream_auth: entra\n    token_endpoint: http://tokens.example/t\n",
                ),
                "token_endpoint",
            ),
            (workload.clone(), "AZURE_CLIENT_ID"),
            (
                GOOD.replace("127.0.0.1:5432/shop", "db.example:5432/shop?sslmode=require")
                    .replace(
                        "    password_env: PROD_MAINT_PASSWORD\n",
                        "    upstream_auth: entra\n",
                    ),
                "sslmode=verify-full",
            ),
            (
                GOOD.replace("127.0.0.1:5432/shop", "db.example:5432/shop")
                    .replace(
                        "    password_env: PROD_MAINT_PASSWORD\n",
                        "    upstream_auth: entra\n",
                    ),
                "sslmode=verify-full",
            ),
            (
                GOOD.replace(
                    "    password_env: PROD_MAINT_PASSWORD\n",
                    "    upstream_auth: kerberos\n",
                ),
                "kerberos",
            ),
        ] {
            let err = format!(
                "{:#}",
                parse(&text, Path::new("airlock.yaml"), &env).expect_err(expected)
            );
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn reads_connections_with_their_secret() {
        let c = parse(GOOD, Path::new("airlock.yaml"), &env).expect("valid");
        let (name, up) = &c.connections[0];
        assert_eq!(name, "prod-maintenance");
        assert_eq!(
            (up.host.as_str(), up.port, up.user.as_str(), up.database.as_str()),
            ("127.0.0.1", 5432, "maint", "shop")
        );
        assert_eq!(up.password.as_ref().map(Secret::expose), Some("s3cret"));
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the password never shows in Debug"
        );
    }

    #[test]
    fn bad_connections_say_what_to_write() {
        let cases = [
            (
                GOOD.replace("maint@", "maint:pw@"),
                "do not put the password in the upstream URL",
            ),
            (
                GOOD.replace("PROD_MAINT_PASSWORD", "MISSING_VAR"),
                "MISSING_VAR (password_env) is not set",
            ),
            (
                GOOD.replace("/shop", "/shop?sslmode=prefer"),
                "sslmode=prefer is not supported",
            ),
            (
                GOOD.replace("/shop", "/shop?sslmode=verify-full"),
                "needs sslrootcert",
            ),
            (
                GOOD.replace("proxy:", "proxi:"),
                "unknown top-level section `proxi:`",
            ),
            (
                GOOD.replace("7070 }", "7070, record_linger: 5s }"),
                "proxy.record_linger is 5s; at most 1s",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text, Path::new("airlock.yaml"), &env).expect_err(want);
            assert!(format!("{err:#}").contains(want), "{err:#}");
        }
    }

    #[test]
    fn a_misspelt_key_is_reported_at_its_line() {
        let err = parse(
            &GOOD.replace("password_env:", "pasword_env:"),
            Path::new("airlock.yaml"),
            &env,
        )
        .expect_err("typo");
        assert!(
            format!("{err:#}").starts_with(
                "airlock.yaml:8:5: section `connections:`: connections[0]: unknown field `pasword_env`"
            ),
            "{err:#}"
        );
    }

    #[test]
    fn the_local_demo_config_is_accepted() {
        let state = tempfile::tempdir().expect("tempdir");
        std::fs::write(state.path().join("maint.password"), "demo\n").expect("password file");
        let text = airlock_config::example::local_demo(state.path());
        let c = parse(&text, Path::new("airlock.yaml"), &|_| None).expect("the demo's airlock.yaml");
        let (name, up) = &c.connections[0];
        assert_eq!(
            (name.as_str(), up.database.as_str()),
            ("prod-maintenance", "shop")
        );
        assert_eq!(up.password.as_ref().map(Secret::expose), Some("demo"));
        assert!(c.proxy.tls.is_some() && c.proxy.reviewer_url.is_some());
    }
}
