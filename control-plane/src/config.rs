//! The sections of airlock.yaml the control plane reads: `nats`,
//! `identity`, `control` and `approvals`. Reading the file and refusing
//! unknown top-level sections is airlock-config's; sections other binaries
//! own are not read here.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use airlock_config::ConfigFile;
use airlock_eventlog::NatsSettings;
use airlock_eventlog::signing::SigningSection;
use airlock_identity::IdentityConfig;
use serde::Deserialize;

/// `control:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Id of this replica in events (`source.id`); default: host name and pid.
    #[serde(default)]
    pub replica_id: Option<String>,
    /// Where to serve `/healthz` over HTTP (200 once the replica has caught
    /// up with the log, 503 before); off when unset.
    #[serde(default)]
    pub health_listen: Option<SocketAddr>,
    /// Where to serve `GET /metrics` (OpenMetrics text) over HTTP; off when
    /// unset. May be the same address as `health_listen`.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// How often due outcomes (expiry) are checked.
    #[serde(default = "default_reconcile", with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// How long a proxy process may go without an `Attach` stream to any
    /// replica before it counts as gone: its open sessions are then closed
    /// in the log (`SessionClosed`, cause `PROXY_LOST`) and its pending
    /// requests cancelled. Longer than a control-plane restart takes.
    /// `0s`: never (for a rolling upgrade from replicas that do not
    /// announce their proxies); else 20 s to a day.
    #[serde(default = "default_proxy_lost_after", with = "humantime_serde")]
    pub proxy_lost_after: Duration,
    /// How often to consider storing a snapshot of the folded state (`0s`:
    /// never), and how many events must have been folded since the stored
    /// one. Start-up loads the latest snapshot and folds only the rest.
    #[serde(default = "default_snapshot_interval", with = "humantime_serde")]
    pub snapshot_interval: Duration,
    #[serde(default = "default_snapshot_min_events")]
    pub snapshot_min_events: u64,
    /// This replica's Ed25519 private key (PKCS#8 PEM, `airlock-control
    /// signing-key`): every event it appends is signed with it, and its
    /// public half is listed in `signing.trust` as `role: control`.
    /// Required by `serve`.
    #[serde(default)]
    pub signing_key: Option<std::path::PathBuf>,
    /// Signed checkpoints over the log; off when unset.
    #[serde(default)]
    pub checkpoints: Option<CheckpointsSection>,
    /// Votes cast with Slack buttons; refused when unset.
    #[serde(default)]
    pub slack: Option<SlackSection>,
    /// TLS for the gRPC listener; plain text when unset (loopback and
    /// development only: reviewer tokens cross this link).
    #[serde(default)]
    pub tls: Option<GrpcTls>,
    /// Development only: without `tls.client_ca`, serve `Attach` to clients
    /// connecting from a loopback address, trusting the proxy id they
    /// announce. Off by default: then `Attach` needs a client certificate,
    /// and a control plane without `tls.client_ca` serves it to nobody.
    #[serde(default)]
    pub allow_insecure_attach_loopback: bool,
    /// Auditors: groups (names from `identity.group_names`, or object ids)
    /// whose members may read every request, session and event of the log,
    /// and decide nothing (no votes, no kills).
    #[serde(default)]
    pub auditors: Vec<String>,
}

/// `control.tls:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTls {
    /// Server certificate chain and private key (PEM).
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// CA (PEM) that signs proxies' client certificates. When set, `Attach`
    /// (decisions and kill orders) is served only to a client presenting a
    /// certificate it signed whose common name or a DNS subject alternative
    /// name is the proxy id it announces; reviewer and audit calls still
    /// authenticate with the caller's token.
    #[serde(default)]
    pub client_ca: Option<std::path::PathBuf>,
}

/// `control.checkpoints:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointsSection {
    /// Ed25519 private key, PKCS#8 PEM (`airlock-control checkpoint-key`).
    pub signing_key: std::path::PathBuf,
    /// How often a checkpoint is appended over the events since the last.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub interval: Duration,
}

fn default_proxy_lost_after() -> Duration {
    Duration::from_secs(30)
}

fn default_reconcile() -> Duration {
    Duration::from_secs(1)
}

fn default_snapshot_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_snapshot_min_events() -> u64 {
    // About 7 MB of snapshot per 100,000 events folded: store it no more
    // often than that much new work would cost to fold again (~0.5 s).
    100_000
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(60)
}

/// `control.slack:`: who may relay votes cast in Slack, and how long a
/// Slack user's link to an identity stands.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSection {
    /// Client application ids (`azp`/`appid`) of the reviewer service's
    /// own identity: only a caller with one of them may relay a Slack vote.
    pub relays: Vec<String>,
    /// Client application ids whose (person's) tokens may ask for a link
    /// ticket: the reviewer UI's own. A person's token for any other client
    /// (a CLI, a tool an agent runs) cannot make a Slack user vote as them.
    pub ticket_clients: Vec<String>,
    /// A link older than this is refused until linked again: the
    /// person's groups are the link's until then (they are not asked of
    /// Entra again), so keep it short. Default 12 hours, at most 7 days.
    #[serde(default = "default_link_ttl", with = "humantime_serde")]
    pub link_ttl: Duration,
}

fn default_link_ttl() -> Duration {
    Duration::from_secs(12 * 3600)
}

/// The longest `control.slack.link_ttl`.
pub const MAX_SLACK_LINK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// `approvals:` (defaults for require-approval rules).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsSection {
    /// Groups (names from `identity.group_names`, or object ids) whose
    /// members may use the reviewer service; each request's own groups
    /// then say who may see it and vote, and a session's requests who may
    /// see and kill it.
    #[serde(default)]
    pub reviewers: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Step-up for approvals (read by the policy crate into each hold;
    /// the control plane enforces what each request carries).
    #[serde(default)]
    pub require_acrs: Vec<String>,
}

/// What `airlock-control serve` needs.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub nats: NatsSettings,
    pub identity: IdentityConfig,
    pub control: ControlSection,
    pub approvals: ApprovalsSection,
    /// `signing:`: the writers this replica trusts. Required by `serve`;
    /// `verify` checks signatures against it when present.
    pub signing: Option<SigningSection>,
    /// Groups the file's policies name (their own and their reviewers),
    /// when it has policies: Graph is asked about them for reviewers with
    /// group overage. Empty when the file has none or they do not load
    /// (the proxies report that).
    pub policy_groups: Vec<String>,
}

/// Reads and checks airlock.yaml.
pub fn load(path: &Path) -> anyhow::Result<ControlConfig> {
    from_file(&ConfigFile::load(path)?)
}

/// Parses airlock.yaml text.
pub fn parse(text: &str) -> anyhow::Result<ControlConfig> {
    from_file(&ConfigFile::parse(text, "airlock.yaml")?)
}

pub(crate) fn from_file(file: &ConfigFile) -> anyhow::Result<ControlConfig> {
    let nats = file.required::<NatsSettings>("nats", "url of the NATS server")?;
    let identity = file.required::<IdentityConfig>("identity", "issuer and audience")?;
    let control = file.required::<ControlSection>("control", "listen: host:port")?;
    if control.allow_insecure_attach_loopback && control.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
        anyhow::bail!(
            "{}: section `control:`: allow_insecure_attach_loopback is for development without \
             tls.client_ca; with client certificates configured, remove it",
            file.path().display()
        );
    }
    if let Some(slack) = &control.slack {
        if slack.link_ttl.is_zero() || slack.link_ttl > MAX_SLACK_LINK_TTL {
            anyhow::bail!(
                "{}: control.slack.link_ttl must be more than 0 and at most 7d (a link keeps the groups it was made with)",
                file.path().display()
            );
        }
        if slack.ticket_clients.is_empty() || slack.ticket_clients.iter().any(|c| c.trim().is_empty()) {
            anyhow::bail!(
                "{}: control.slack.ticket_clients must name the reviewer UI's client id (reviewer.oidc.client_id)",
                file.path().display()
            );
        }
        if slack.relays.is_empty() || slack.relays.iter().any(|r| r.trim().is_empty()) {
            anyhow::bail!(
                "{}: control.slack.relays must name the client id of the reviewer service's own identity",
                file.path().display()
            );
        }
    }
    let approvals = file
        .section::<ApprovalsSection>("approvals")?
        .unwrap_or(ApprovalsSection {
            reviewers: Vec::new(),
            timeout: None,
            require_acrs: Vec::new(),
        });
    let signing = file.section::<SigningSection>("signing")?;
    let path = file.path().display().to_string();
    let policy_groups = [
        airlock_policy::PolicySet::from_config_yaml(file.text(), &path),
        airlock_policy::PolicySet::shadow_from_config_yaml(file.text(), &path),
    ]
    .into_iter()
    .flatten()
    .flat_map(|set| set.named_groups())
    .collect();
    Ok(ControlConfig {
        nats,
        identity,
        control,
        approvals,
        signing,
        policy_groups,
    })
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
  group_names:
    db-reviewers: 0b7e2f4c-8a5d-4c1e-9f3a-7d2c6b1e4a90
approvals:
  reviewers: [db-reviewers]
  timeout: 15m
control:
  listen: 127.0.0.1:7070
proxy:
  listen: 127.0.0.1:6432
  control: http://127.0.0.1:7070
policies: []
"#;

    #[test]
    fn reads_its_sections_and_ignores_others() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.control.listen.port(), 7070);
        assert_eq!(c.approvals.reviewers, vec!["db-reviewers"]);
        assert_eq!(c.approvals.timeout, Some(Duration::from_secs(900)));
        assert_eq!(c.nats.stream, "AIRLOCK");
        assert_eq!(c.control.metrics_listen, None);
        assert!(!c.control.allow_insecure_attach_loopback, "off unless asked for");
        assert!(c.control.auditors.is_empty());
    }

    #[test]
    fn auditors_and_loopback_attach_are_control_keys() {
        let with = GOOD.replace(
            "listen: 127.0.0.1:7070\n",
            "listen: 127.0.0.1:7070\n  auditors: [db-auditors]\n  allow_insecure_attach_loopback: true\n",
        );
        let c = parse(&with).expect("valid");
        assert_eq!(c.control.auditors, vec!["db-auditors"]);
        assert!(c.control.allow_insecure_attach_loopback);
        // Not both ways of admitting proxies at once.
        let both = with.replace(
            "  auditors:",
            "  tls: { cert: c.crt, key: c.key, client_ca: ca.crt }\n  auditors:",
        );
        let err = parse(&both).expect_err("contradictory");
        assert!(
            format!("{err:#}")
                .contains("allow_insecure_attach_loopback is for development without tls.client_ca"),
            "{err:#}"
        );
    }

    #[test]
    fn metrics_listen_is_an_address() {
        let with = GOOD.replace(
            "listen: 127.0.0.1:7070\n",
            "listen: 127.0.0.1:7070\n  metrics_listen: 127.0.0.1:9464\n",
        );
        let c = parse(&with).expect("valid");
        assert_eq!(
            c.control.metrics_listen,
            Some("127.0.0.1:9464".parse().expect("addr"))
        );
        let err = parse(&with.replace("127.0.0.1:9464", "not-an-address")).expect_err("bad");
        assert!(format!("{err:#}").contains("section `control:`"), "{err:#}");
    }

    #[test]
    fn misspelt_sections_and_keys_are_errors() {
        let err = parse(&GOOD.replace("approvals:", "aprovals:")).expect_err("typo");
        assert!(
            format!("{err:#}").contains("unknown top-level section `aprovals:`"),
            "{err:#}"
        );
        let err = parse(&GOOD.replace("listen: 127.0.0.1:7070", "listne: 127.0.0.1:7070")).expect_err("typo");
        assert!(format!("{err:#}").contains("section `control:`"), "{err:#}");
        let err = parse(&GOOD.replace("control:\n  listen: 127.0.0.1:7070\n", "")).expect_err("missing");
        assert!(
            format!("{err:#}").contains("missing section `control:`"),
            "{err:#}"
        );
    }

    #[test]
    fn a_misspelt_key_is_reported_at_its_line() {
        let err = parse(&GOOD.replace("timeout: 15m", "timout: 15m")).expect_err("typo");
        assert!(
            format!("{err:#}").starts_with("airlock.yaml:11:3: section `approvals:`: unknown field `timout`"),
            "{err:#}"
        );
    }

    #[test]
    fn the_local_demo_config_is_accepted() {
        let text = airlock_config::example::local_demo(Path::new("/demo"));
        let c = parse(&text).expect("the demo's airlock.yaml");
        assert_eq!(c.approvals.reviewers, vec!["db-reviewers"]);
        let checkpoints = c.control.checkpoints.expect("the demo signs checkpoints");
        assert_eq!(checkpoints.signing_key, Path::new("/demo/checkpoint.key"));
        assert_eq!(checkpoints.interval, Duration::from_secs(30));
        // The demo's proxy attaches over loopback without a certificate.
        assert!(c.control.allow_insecure_attach_loopback && c.control.tls.is_none());
        assert!(c.control.listen.ip().is_loopback());
    }
}
