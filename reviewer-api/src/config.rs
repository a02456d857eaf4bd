//! The sections of airlock.yaml the reviewer reads: `identity` and
//! `reviewer`. Reading the file and refusing unknown top-level sections is
//! airlock-config's; this module owns the reviewer's section types and the
//! checks on their values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_config::ConfigFile;
use airlock_eventlog::NatsSettings;
use airlock_identity::IdentityConfig;
use anyhow::{Context, bail};
use serde::Deserialize;
use url::Url;

/// `reviewer:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewerSection {
    /// HTTP listen address (REST, events, UI, health, metrics).
    pub listen: SocketAddr,
    /// The control plane's gRPC URL (`https://` with `control_tls`).
    pub control: String,
    /// TLS to the control plane: the CA that signed its certificate, and
    /// optionally this reviewer's client certificate and key (for a control
    /// plane that requires client certificates).
    #[serde(default)]
    pub control_tls: Option<ControlTlsSection>,
    /// The address reviewers reach this server at, e.g.
    /// `https://airlock.example`: the base of links in notifications and of
    /// the OIDC redirect URI. An `https` URL makes cookies `Secure`.
    /// Default: `http://<listen>`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Serve HTTPS with this certificate and key (else plain HTTP, for a
    /// TLS-terminating proxy in front). Cookies are `Secure` under TLS.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsFiles>,
    /// Browser sign-in (OIDC authorization code + PKCE). Off when unset:
    /// then only bearer tokens are accepted.
    #[serde(default)]
    pub oidc: Option<OidcSection>,
    /// Webhook notifications. Off when unset.
    #[serde(default)]
    pub notifications: Option<NotificationsSection>,
    /// Slack approvals with buttons, bound to Entra ID. Off when unset.
    #[serde(default)]
    pub slack: Option<crate::slack::SlackSection>,
    /// How long a browser session lasts at most (it also ends when the
    /// token it was made from expires).
    #[serde(default = "default_session_ttl", with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Where browser sessions, sign-ins in progress and the notifier lease
    /// live: `memory` (this process: one replica, a restart signs everyone
    /// out) or `nats` (NATS KV through the `nats:` section: any number of
    /// replicas with no sticky routing, sign-ins kept over restarts,
    /// notifications sent by one replica at a time).
    #[serde(default)]
    pub state: StateKind,
}

/// `reviewer.state`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateKind {
    #[default]
    Memory,
    Nats,
}

/// `reviewer.control_tls:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlTlsSection {
    pub ca: PathBuf,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// `reviewer.oidc:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSection {
    /// The application (client) id registered for the reviewer UI.
    pub client_id: String,
    /// Scopes to ask for; the access token must be for `identity.audience`.
    /// Default: `openid profile <audience>/access_as_user`.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Default: from `<identity.issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// A confidential client's secret, read from this environment variable
    /// (public clients, as with PKCE alone, have none).
    #[serde(default)]
    pub client_secret_env: Option<String>,
}

/// `reviewer.notifications:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsSection {
    /// A file holding the bearer token the notifier watches the control
    /// plane with (an identity in a reviewer group). Re-read at every
    /// reconnect, so whatever renews it only has to rewrite the file.
    pub token_file: PathBuf,
    #[serde(default)]
    pub webhooks: Vec<WebhookSection>,
    /// Deliveries waiting at most, per webhook; when full, the oldest is
    /// dropped (and counted), never the caller delayed.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Attempts per delivery, the first included.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// First retry delay; doubles each attempt.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    /// Per-attempt timeout.
    #[serde(default = "default_webhook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// One webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    pub kind: WebhookKind,
    pub url: String,
    /// Generic webhooks: the environment variable holding the HMAC key.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Which notifications: `requested`, `decided` (default both).
    #[serde(default = "default_on")]
    pub on: Vec<NotifyOn>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookKind {
    Slack,
    Teams,
    Generic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyOn {
    Requested,
    Decided,
}

fn default_session_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn default_queue() -> usize {
    1000
}
fn default_attempts() -> u32 {
    5
}
fn default_backoff() -> Duration {
    Duration::from_millis(500)
}
fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_on() -> Vec<NotifyOn> {
    vec![NotifyOn::Requested, NotifyOn::Decided]
}

/// What `airlock-reviewer` needs.
#[derive(Debug, Clone)]
pub struct ReviewerConfig {
    pub identity: IdentityConfig,
    pub reviewer: ReviewerSection,
    /// `nats:`, read only with `reviewer.state: nats`.
    pub nats: Option<NatsSettings>,
    /// `approvals.reviewers` and the groups the file's policies name: the
    /// groups Graph is asked about for reviewers whose tokens have group
    /// overage (with `identity.group_names`).
    pub reviewer_groups: Vec<String>,
}

/// The part of `approvals:` the reviewer reads (the control plane owns the rest).
#[derive(Debug, Default, serde::Deserialize)]
struct ApprovalsReviewers {
    #[serde(default)]
    reviewers: Vec<String>,
}

impl ReviewerConfig {
    /// `public_url` without a trailing slash.
    pub fn public_url(&self) -> String {
        self.reviewer
            .public_url
            .clone()
            .unwrap_or_else(|| {
                let scheme = if self.reviewer.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}", self.reviewer.listen)
            })
            .trim_end_matches('/')
            .to_owned()
    }

    /// Whether cookies get `Secure`: this server speaks TLS, or the public
    /// URL is https (TLS ends in front of it).
    pub fn secure_cookies(&self) -> bool {
        self.reviewer.tls.is_some() || self.public_url().starts_with("https://")
    }
}

/// Reads and checks airlock.yaml.
pub fn load(path: &Path) -> anyhow::Result<ReviewerConfig> {
    from_file(&ConfigFile::load(path)?)
}

/// Parses airlock.yaml text and checks what can be checked offline.
pub fn parse(text: &str) -> anyhow::Result<ReviewerConfig> {
    from_file(&ConfigFile::parse(text, "airlock.yaml")?)
}

pub(crate) fn from_file(file: &ConfigFile) -> anyhow::Result<ReviewerConfig> {
    let in_file = || format!("in {}", file.path().display());
    let identity = file.required::<IdentityConfig>("identity", "issuer and audience")?;
    identity
        .validate()
        .context("section `identity:`")
        .with_context(in_file)?;
    let reviewer = file.required::<ReviewerSection>("reviewer", "listen and control")?;
    let nats = match reviewer.state {
        StateKind::Memory => None,
        StateKind::Nats => Some(file.required::<NatsSettings>(
            "nats",
            "url of the NATS server (reviewer.state: nats keeps sign-ins there)",
        )?),
    };
    // Who may review: approvals.reviewers and, when the file has them, the
    // groups the policies name (rule reviewers written as object ids).
    let path = file.path().display().to_string();
    let mut reviewer_groups = file
        .section::<ApprovalsReviewers>("approvals")?
        .unwrap_or_default()
        .reviewers;
    for set in [
        airlock_policy::PolicySet::from_config_yaml(file.text(), &path),
        airlock_policy::PolicySet::shadow_from_config_yaml(file.text(), &path),
    ]
    .into_iter()
    .flatten()
    {
        reviewer_groups.extend(set.named_groups());
    }
    let config = ReviewerConfig {
        identity,
        reviewer,
        nats,
        reviewer_groups,
    };
    check(&config).with_context(in_file)?;
    Ok(config)
}

/// What can be checked offline beyond each field's type.
fn check(config: &ReviewerConfig) -> anyhow::Result<()> {
    let reviewer = &config.reviewer;
    let control = Url::parse(&reviewer.control).context("`reviewer.control` is not a URL")?;
    match (control.scheme(), &reviewer.control_tls) {
        ("https", Some(tls)) => {
            if tls.cert.is_some() != tls.key.is_some() {
                bail!("`reviewer.control_tls`: set both cert and key, or neither");
            }
        }
        ("https", None) => bail!(
            "`reviewer.control` is https: set `reviewer.control_tls.ca` to the CA that signed \
             the control plane's certificate"
        ),
        ("http", Some(_)) => {
            bail!("`reviewer.control_tls` is set but `reviewer.control` is http: use an https URL")
        }
        ("http", None) => {}
        _ => bail!("`reviewer.control` must be an http(s) URL of the control plane's gRPC listener"),
    }
    let public = Url::parse(&config.public_url()).context("`reviewer.public_url` is not a URL")?;
    if !matches!(public.scheme(), "http" | "https") || public.query().is_some() {
        bail!("`reviewer.public_url` must be an http(s) URL without a query");
    }
    if let Some(n) = &reviewer.notifications {
        if n.queue == 0 || n.attempts == 0 {
            bail!("`reviewer.notifications`: queue and attempts must be at least 1");
        }
        for w in &n.webhooks {
            let url = Url::parse(&w.url).with_context(|| format!("webhook URL {:?}", w.url))?;
            if !matches!(url.scheme(), "http" | "https") {
                bail!("webhook URL {:?} is not http(s)", w.url);
            }
            if w.kind == WebhookKind::Generic && w.secret_env.is_none() {
                bail!("a generic webhook needs `secret_env` (its payloads are signed)");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
nats:
  url: nats://127.0.0.1:4222
identity:
  issuer: https://login.microsoftonline.com/t/v2.0
  audience: api://airlock
reviewer:
  listen: 127.0.0.1:8080
  control: http://127.0.0.1:7070
  oidc:
    client_id: c1
  notifications:
    token_file: /run/airlock/notifier.token
    webhooks:
      - kind: slack
        url: https://hooks.example/x
      - kind: generic
        url: https://hooks.example/y
        secret_env: HOOK_SECRET
        on: [decided]
policies: []
"#;

    #[test]
    fn reads_its_sections() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.reviewer.listen.port(), 8080);
        assert_eq!(c.public_url(), "http://127.0.0.1:8080");
        assert!(!c.secure_cookies());
        let n = c.reviewer.notifications.expect("notifications");
        assert_eq!(n.webhooks.len(), 2);
        assert_eq!(n.webhooks[1].on, vec![NotifyOn::Decided]);
        assert_eq!(n.attempts, 5);
    }

    #[test]
    fn mistakes_are_named() {
        let err = parse(&GOOD.replace("reviewer:", "reviwer:")).expect_err("typo");
        assert!(
            format!("{err:#}").contains("unknown top-level section `reviwer:`"),
            "{err:#}"
        );
        let err = parse(&GOOD.replace("client_id: c1", "client: c1")).expect_err("typo");
        assert!(format!("{err:#}").contains("section `reviewer:`"), "{err:#}");
        let err = parse(&GOOD.replace("        secret_env: HOOK_SECRET\n", "")).expect_err("unsigned");
        assert!(format!("{err:#}").contains("secret_env"), "{err:#}");
        let err = parse(&GOOD.replace("http://127.0.0.1:7070", "127.0.0.1:7070")).expect_err("no scheme");
        assert!(format!("{err:#}").contains("reviewer.control"), "{err:#}");
        let https = GOOD.replace(
            "  control: http://127.0.0.1:7070\n",
            "  control: http://127.0.0.1:7070\n  public_url: https://airlock.example/\n",
        );
        let c = parse(&https).expect("valid");
        assert_eq!(c.public_url(), "https://airlock.example");
        assert!(c.secure_cookies());
        let tls = GOOD.replace(
            "  control: http://127.0.0.1:7070\n",
            "  control: http://127.0.0.1:7070\n  tls: { cert: r.crt, key: r.key }\n",
        );
        let c = parse(&tls).expect("valid");
        assert_eq!(c.public_url(), "https://127.0.0.1:8080");
        assert!(c.secure_cookies());
    }

    #[test]
    fn tls_to_the_control_plane_needs_an_https_url_and_a_ca() {
        let with = |control: &str| {
            GOOD.replace(
                "  control: http://127.0.0.1:7070\n",
                &format!("  control: {control}\n"),
            )
        };
        let err = parse(&with("https://control:7070")).expect_err("no CA");
        assert!(format!("{err:#}").contains("reviewer.control_tls.ca"), "{err:#}");
        let err = parse(&with("http://control:7070\n  control_tls: { ca: ca.crt }")).expect_err("http");
        assert!(format!("{err:#}").contains("use an https URL"), "{err:#}");
        let err = parse(&with(
            "https://control:7070\n  control_tls: { ca: ca.crt, cert: r.crt }",
        ))
        .expect_err("cert without key");
        assert!(format!("{err:#}").contains("both cert and key"), "{err:#}");
        let c = parse(&with(
            "https://control:7070\n  control_tls: { ca: ca.crt, cert: r.crt, key: r.key }",
        ))
        .expect("valid");
        assert!(c.reviewer.control_tls.is_some());
    }

    #[test]
    fn a_misspelt_key_is_reported_at_its_line() {
        let err = parse(&GOOD.replace("client_id: c1", "client: c1")).expect_err("typo");
        assert!(
            format!("{err:#}")
                .starts_with("airlock.yaml:11:5: section `reviewer:`: reviewer.oidc: unknown field `client`"),
            "{err:#}"
        );
    }

    #[test]
    fn the_local_demo_config_is_accepted() {
        let text = airlock_config::example::local_demo(Path::new("/demo"));
        let c = parse(&text).expect("the demo's airlock.yaml");
        assert_eq!(
            c.reviewer.oidc.as_ref().map(|o| o.client_id.as_str()),
            Some("airlock-reviewer-demo")
        );
        assert!(
            c.public_url().starts_with("http://127.0.0.1:"),
            "{}",
            c.public_url()
        );
    }
}
