//! The sections of airlock.yaml the proxy reads: `nats`, `identity`,
//! `proxy`, `connections`, and (through the policy crate) `approvals` and
//! `policies`. Top-level keys are checked against the whole file's
//! vocabulary, so a misspelt section is an error rather than ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_eventlog::NatsSettings;
use airlock_identity::IdentityConfig;
use anyhow::{Context, bail};
use serde::Deserialize;

use crate::upstream::{Secret, UpstreamConfig};

/// Every top-level section of airlock.yaml, whoever reads it.
pub const SECTIONS: &[&str] = &[
    "nats",
    "identity",
    "approvals",
    "control",
    "reviewer",
    "proxy",
    "connections",
    "policies",
];

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
    #[serde(default = "default_startup_timeout", with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// This proxy's id in events; default: host name and pid.
    #[serde(default)]
    pub proxy_id: Option<String>,
    /// Public URL of the reviewer UI, named in hold notices.
    #[serde(default)]
    pub reviewer_url: Option<String>,
    /// Where to serve Prometheus `/metrics` and `/healthz` (off when unset).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// On SIGTERM, how long sessions may go on before they are ended.
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
    /// TLS to the control plane (`https://` control URLs): the CA that
    /// signed its certificate, and this proxy's client certificate and key,
    /// which a control plane with `control.tls.client_ca` requires.
    #[serde(default)]
    pub control_tls: Option<ControlTlsSection>,
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
    Duration::from_secs(30)
}
fn default_record_buffer() -> usize {
    16_384
}
/// The longest `proxy.record_linger` accepted.
pub const MAX_RECORD_LINGER: Duration = Duration::from_secs(1);

fn default_record_linger() -> Duration {
    Duration::from_millis(2)
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
    /// Schema unqualified table names resolve to (read by the policy crate).
    #[serde(default)]
    pub default_schema: Option<String>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
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
}

fn section<T: serde::de::DeserializeOwned>(
    doc: &serde_norway::Mapping,
    name: &str,
) -> anyhow::Result<Option<T>> {
    match doc.get(name) {
        None => Ok(None),
        Some(v) => serde_norway::from_value(v.clone())
            .map(Some)
            .with_context(|| format!("section `{name}:`")),
    }
}

/// Reads airlock.yaml and resolves each connection's password.
pub fn load(path: &Path) -> anyhow::Result<ProxyConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, path, &|name| std::env::var(name).ok()).with_context(|| format!("in {}", path.display()))
}

/// Parses airlock.yaml text; `env` looks up environment variables.
pub fn parse(text: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ProxyConfig> {
    let doc: serde_norway::Mapping = serde_norway::from_str(text).context("not a YAML mapping")?;
    for key in doc.keys() {
        let k = key.as_str().unwrap_or("?");
        if !SECTIONS.contains(&k) {
            bail!(
                "unknown top-level section `{k}:`; the sections are {}",
                SECTIONS.join(", ")
            );
        }
    }
    let nats = section::<NatsSettings>(&doc, "nats")?.context("missing section `nats:`")?;
    let identity = section::<IdentityConfig>(&doc, "identity")?.context("missing section `identity:`")?;
    let proxy =
        section::<ProxySection>(&doc, "proxy")?.context("missing section `proxy:` (listen, control)")?;
    if proxy.record_linger > MAX_RECORD_LINGER {
        bail!(
            "proxy.record_linger is {:?}; at most {:?} (it is how far the log may trail an allowed \
             statement: a few milliseconds is what groups a busy session's statements)",
            proxy.record_linger,
            MAX_RECORD_LINGER
        );
    }
    let raw: Vec<ConnectionSection> = section(&doc, "connections")?.unwrap_or_default();
    if raw.is_empty() {
        bail!("no `connections:`: the proxy has nothing to connect agents to");
    }
    let mut connections = Vec::new();
    for c in raw {
        let upstream = upstream_config(&c, env).with_context(|| format!("connection `{}`", c.name))?;
        if connections.iter().any(|(n, _)| *n == c.name) {
            bail!("connection `{}` is defined twice", c.name);
        }
        connections.push((c.name, upstream));
    }
    Ok(ProxyConfig {
        path: path.to_path_buf(),
        text: text.to_owned(),
        nats,
        identity,
        proxy,
        connections,
    })
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
        connect_timeout: c.connect_timeout,
    })
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
}
