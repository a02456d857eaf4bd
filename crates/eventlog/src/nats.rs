//! The `nats:` section of airlock.yaml, and connecting with it: where NATS
//! is, TLS (the server's certificate always verified; a client certificate
//! when the server asks for one), and one way to authenticate. Every binary
//! and tool that reads the log connects through here, so all of them speak
//! the same TLS and authentication.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;
use crate::subjects;

/// How often a client pings its server (see `connect`).
pub const PING_EVERY: Duration = Duration::from_secs(2);

/// The `nats:` section of airlock.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// `nats://host:port` or `tls://host:port`; for a cluster, several: a
    /// YAML list, or one string with commas. The client connects to any
    /// member that answers, so a binary starts while some are down.
    #[serde(deserialize_with = "one_or_more_urls")]
    pub url: String,
    /// Stream name.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Stream replicas: 1 locally, 3 in a cluster.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How long JetStream remembers event ids to drop duplicates. Must exceed
    /// the longest time an append is retried.
    #[serde(default = "default_duplicate_window", with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How long one append keeps retrying (same event id) before giving up.
    #[serde(default = "default_append_timeout", with = "humantime_serde")]
    pub append_timeout: Duration,
    /// TLS to NATS. When set, nothing is sent before the TLS handshake
    /// succeeds, whatever the URL's scheme says.
    #[serde(default)]
    pub tls: Option<NatsTls>,
    /// NATS credentials file (JWT + nkey seed), as `nsc` writes it.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// User name, with its password in the environment variable
    /// `password_env` or in the file `password_file` (a mounted secret; one
    /// trailing newline is ignored).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The environment variable holding an authentication token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// A file holding an NKey seed (`SU...`), for servers that list users
    /// by public NKey.
    #[serde(default)]
    pub nkey_seed: Option<PathBuf>,
    /// Name this client shows in the server's connection list.
    #[serde(default)]
    pub client_name: Option<String>,
    /// The prefix of the subjects the server answers this client on
    /// (default `_INBOX`). With one per role, and each role allowed to
    /// subscribe only to its own, no client can overhear another's answers
    /// (`deploy/nats/airlock-permissions.conf`).
    #[serde(default)]
    pub inbox_prefix: Option<String>,
}

/// `nats.tls:`: PEM files.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTls {
    /// The CA certificates that sign the server's certificate; without it
    /// the system's trust store is used.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate chain, for servers that verify clients.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

fn default_stream() -> String {
    subjects::DEFAULT_STREAM.to_owned()
}
/// `url:` as one string (commas allowed) or a list, kept as one string
/// with commas.
fn one_or_more_urls<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        One(String),
        Many(Vec<String>),
    }
    let joined = match Urls::deserialize(d)? {
        Urls::One(url) => url,
        Urls::Many(urls) => urls.join(","),
    };
    if joined.split(',').all(|u| u.trim().is_empty()) {
        return Err(serde::de::Error::custom("nats.url names no server"));
    }
    Ok(joined)
}

fn default_replicas() -> usize {
    1
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_append_timeout() -> Duration {
    Duration::from_secs(10)
}

/// How a client proves who it is to NATS.
#[derive(Clone, PartialEq, Eq)]
enum Auth {
    None,
    Credentials(PathBuf),
    UserPassword(String, String),
    Token(String),
    NkeySeed(String),
}

impl NatsSettings {
    pub fn new(url: impl Into<String>) -> NatsSettings {
        NatsSettings {
            url: url.into(),
            stream: default_stream(),
            replicas: default_replicas(),
            duplicate_window: default_duplicate_window(),
            append_timeout: default_append_timeout(),
            tls: None,
            credentials: None,
            user: None,
            password_env: None,
            password_file: None,
            token_env: None,
            nkey_seed: None,
            client_name: None,
            inbox_prefix: None,
        }
    }

    /// Every problem with the section that can be seen without connecting:
    /// more than one way to authenticate, a user without a password (or
    /// the reverse), a named environment variable that is not set, a file
    /// that cannot be read or is not what it should be. Empty when usable.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let auth = self.auth();
        if let Err(p) = &auth {
            problems.push(p.clone());
        }
        if let Err(p) = self.urls_fit(auth.as_ref().ok()) {
            problems.push(p);
        }
        if let Some(tls) = &self.tls {
            problems.extend(tls.problems());
        }
        problems
    }

    /// No credentials in `url` (they would be shown wherever the URL is),
    /// and none sent in clear: with authentication, TLS (`tls`, or `tls://`
    /// URLs) unless every server is on loopback. Without it, an on-path
    /// attacker who strips the server's TLS requirement from its first
    /// plain-text message would receive the password or token.
    fn urls_fit(&self, auth: Option<&Auth>) -> Result<(), String> {
        if self.servers().any(|(_, authority)| authority.contains('@')) {
            return Err(
                "nats.url carries credentials: remove them from the URL and use nats.user \
                        with nats.password_env (or another nats setting)"
                    .to_owned(),
            );
        }
        let authenticated = auth.is_some_and(|a| *a != Auth::None);
        let in_clear = self
            .servers()
            .any(|(tls, authority)| !tls && !is_loopback(authority));
        if authenticated && self.tls.is_none() && in_clear {
            return Err(
                "nats: credentials are sent only over TLS: set nats.tls (at least \
                        nats.tls.ca), or use tls:// URLs; plain text is allowed to a loopback \
                        server only"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// Every server of `url`, parsed.
    fn server_addrs(&self) -> Result<Vec<async_nats::ServerAddr>, Error> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                u.parse::<async_nats::ServerAddr>()
                    .map_err(|e| Error::Settings(format!("nats.url: {u:?} is not a server address: {e}")))
            })
            .collect()
    }

    /// Each server of `url`: whether its scheme (`tls://`) asks for TLS, and
    /// its authority (`host:port`, with any user info).
    fn servers(&self) -> impl Iterator<Item = (bool, &str)> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                let (scheme, rest) = u.split_once("://").unwrap_or(("nats", u));
                (
                    scheme.eq_ignore_ascii_case("tls"),
                    rest.split('/').next().unwrap_or(""),
                )
            })
    }

    fn auth(&self) -> Result<Auth, String> {
        let chosen: Vec<&str> = [
            self.credentials.as_ref().map(|_| "credentials"),
            (self.user.is_some() || self.password_env.is_some() || self.password_file.is_some())
                .then_some("user"),
            self.token_env.as_ref().map(|_| "token_env"),
            self.nkey_seed.as_ref().map(|_| "nkey_seed"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if chosen.len() > 1 {
            return Err(format!(
                "nats: choose one way to authenticate, not {}",
                chosen.join(" and ")
            ));
        }
        if let Some(path) = &self.credentials {
            readable(path, "nats.credentials")?;
            return Ok(Auth::Credentials(path.clone()));
        }
        match (&self.user, &self.password_env, &self.password_file) {
            (Some(user), Some(var), None) => {
                let password = from_env(var, "nats.password_env")?;
                return Ok(Auth::UserPassword(user.clone(), password));
            }
            (Some(user), None, Some(path)) => {
                let text = readable(path, "nats.password_file")?;
                let password = text.strip_suffix('\n').unwrap_or(&text);
                let password = password.strip_suffix('\r').unwrap_or(password);
                if password.is_empty() {
                    return Err(format!(
                        "nats.password_file {}: the file is empty",
                        path.display()
                    ));
                }
                return Ok(Auth::UserPassword(user.clone(), password.to_owned()));
            }
            (Some(_), Some(_), Some(_)) => {
                return Err("nats: set one of password_env and password_file, not both".to_owned());
            }
            (Some(_), None, None) => {
                return Err(
                    "nats.user is set without its password: set nats.password_env (an \
                            environment variable) or nats.password_file"
                        .to_owned(),
                );
            }
            (None, Some(_), _) | (None, _, Some(_)) => {
                return Err("nats: a password is set without nats.user".to_owned());
            }
            (None, None, None) => {}
        }
        if let Some(var) = &self.token_env {
            return Ok(Auth::Token(from_env(var, "nats.token_env")?));
        }
        if let Some(path) = &self.nkey_seed {
            let seed = readable(path, "nats.nkey_seed")?;
            let seed = seed.trim().to_owned();
            if !seed.starts_with('S') || seed.len() != 58 {
                return Err(format!(
                    "nats.nkey_seed {}: not an NKey seed (one line of 58 characters \
                     starting with S, as `nk -gen user` writes)",
                    path.display()
                ));
            }
            return Ok(Auth::NkeySeed(seed));
        }
        Ok(Auth::None)
    }

    /// The client's options, after [`NatsSettings::problems`] finds none.
    async fn options(&self) -> Result<async_nats::ConnectOptions, Error> {
        let settings_error = |detail: String| Error::Settings(detail);
        let auth = self.auth().map_err(settings_error)?;
        self.urls_fit(Some(&auth)).map_err(settings_error)?;
        let authenticated = auth != Auth::None;
        if let Some(prefix) = &self.inbox_prefix
            && (prefix.is_empty()
                || prefix
                    .split('.')
                    .any(|t| t.is_empty() || t.contains(['*', '>', ' '])))
        {
            return Err(settings_error(format!(
                "nats.inbox_prefix {prefix:?} is not a subject without wildcards"
            )));
        }
        // A PING every 2 s: a connection to a server cut off by a partition
        // (nothing closed, nothing answered) is given up after three
        // unanswered, about 6 s, and the client moves to another server.
        // The default (a minute) left the log unreachable for minutes.
        let mut options = async_nats::ConnectOptions::new()
            .name(self.client_name.clone().unwrap_or_else(|| "airlock".to_owned()))
            .connection_timeout(Duration::from_secs(5))
            .ping_interval(PING_EVERY);
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        options = match auth {
            Auth::None => options,
            Auth::Credentials(path) => options
                .credentials_file(&path)
                .await
                .map_err(|e| settings_error(format!("nats.credentials {}: {e}", path.display())))?,
            Auth::UserPassword(user, password) => options.user_and_password(user, password),
            Auth::Token(token) => options.token(token),
            Auth::NkeySeed(seed) => options.nkey(seed),
        };
        let tls_urls = self.servers().any(|(tls, _)| tls);
        if authenticated && self.tls.is_none() && !tls_urls {
            // Servers a cluster announces would be reached as nats:// and
            // upgraded only if their (strippable) first message asks for
            // TLS: with credentials in clear (loopback only, urls_fit), keep
            // to the servers configured.
            options = options.ignore_discovered_servers();
        }
        if tls_urls {
            options = options.require_tls(true);
        }
        if let Some(tls) = &self.tls {
            let problems = tls.problems();
            if !problems.is_empty() {
                return Err(settings_error(problems.join("; ")));
            }
            options = options.require_tls(true);
            if let Some(ca) = &tls.ca {
                options = options.add_root_certificates(ca.clone());
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
        }
        Ok(options)
    }

    /// Connects, with an error that names the likely cause. The server's
    /// refusals of this client's publishes are logged and kept in the
    /// returned [`Denials`].
    pub(crate) async fn connect(&self) -> Result<(async_nats::Client, Denials, Connects), Error> {
        let denials = Denials::default();
        let connects = Connects::default();
        let seen = denials.clone();
        let counted = connects.clone();
        let options = self.options().await?.event_callback(move |event| {
            let seen = seen.clone();
            let counted = counted.clone();
            async move {
                match &event {
                    async_nats::Event::Connected => counted.bump(),
                    async_nats::Event::SlowConsumer(_) => counted.bump_slow(),
                    _ => {}
                }
                if let async_nats::Event::ServerError(async_nats::ServerError::Other(message)) = event
                    && message.to_lowercase().starts_with("permissions violation")
                {
                    tracing::warn!(%message, "NATS refused this client (check its user's permissions)");
                    seen.record(message);
                }
            }
        });
        let servers = self.server_addrs()?;
        let client = options
            .connect(servers.as_slice())
            .await
            .map_err(|source| Error::Connect {
                url: self.url.clone(),
                hint: self.hint(&source),
                source,
            })?;
        Ok((client, denials, connects))
    }

    /// What to check, for a connection that failed with `e`.
    fn hint(&self, e: &async_nats::ConnectError) -> String {
        use async_nats::ConnectErrorKind as K;
        let authenticated = !matches!(self.auth(), Ok(Auth::None));
        let detail = e.to_string();
        let certificate = detail.contains("peer certificate") || detail.contains("UnknownIssuer");
        match e.kind() {
            _ if detail.contains("CertificateRequired") => {
                "the server verifies clients: set nats.tls.cert and nats.tls.key to a client \
                 certificate its CA signed"
                    .to_owned()
            }
            _ if self.tls.is_some()
                && (detail.contains("InvalidContentType") || detail.contains("corrupt message")) =>
            {
                "nats.tls asks for TLS and the server does not offer it: enable TLS on the \
                 server, or check nats.url"
                    .to_owned()
            }
            K::AuthorizationViolation if authenticated => {
                "the server refused these credentials: check nats.user and its password, \
                 nats.token_env, nats.nkey_seed or nats.credentials"
                    .to_owned()
            }
            K::AuthorizationViolation => {
                "the server requires authentication: set nats.user with nats.password_env or \
                 nats.password_file, nats.token_env, nats.nkey_seed or nats.credentials"
                    .to_owned()
            }
            _ if certificate && self.tls.is_none() => {
                "the server requires TLS and its certificate is not signed by a CA this machine \
                 trusts: set nats.tls.ca to the CA that signed it"
                    .to_owned()
            }
            _ if certificate => {
                if detail.contains("UnknownIssuer") || detail.contains("BadSignature") {
                    "the server's certificate is not signed by the CA in nats.tls.ca".to_owned()
                } else if detail.contains("NotValidForName") {
                    "the server's certificate does not name the host in nats.url".to_owned()
                } else if detail.contains("Expired") {
                    "the server's certificate has expired (or the clocks disagree)".to_owned()
                } else {
                    "the server's certificate was refused: check nats.tls.ca".to_owned()
                }
            }
            K::Tls => "the TLS handshake failed: check nats.tls (a server that verifies \
                       clients needs nats.tls.cert and nats.tls.key) and the server's TLS settings"
                .to_owned(),
            K::TimedOut | K::Io => "is NATS running there and reachable?".to_owned(),
            K::Dns => "the host in nats.url does not resolve".to_owned(),
            K::ServerParse => "check nats.url (nats://host:port)".to_owned(),
            K::Authentication => {
                "signing the server's challenge failed: check nats.nkey_seed or nats.credentials".to_owned()
            }
            K::MaxReconnects => "check nats.url and the server's log".to_owned(),
        }
    }
}

/// The permission violations the server reported for this client, most
/// recent last (a few are kept).
#[derive(Debug, Clone, Default)]
pub(crate) struct Denials(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>);

/// How many times the client has connected: a tail ends when it moves, so
/// its reader resumes at once instead of waiting for the consumer it had
/// on a restarted server to be found missing.
/// It also counts the times a subscription of this client fell behind and
/// the client dropped messages for it (a slow consumer).
#[derive(Debug, Clone)]
pub(crate) struct Connects {
    connects: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    slow: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for Connects {
    fn default() -> Connects {
        Connects {
            connects: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
            slow: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl Connects {
    fn bump(&self) {
        self.connects.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn bump_slow(&self) {
        self.slow.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes from now on.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.connects.subscribe()
    }

    /// Slow-consumer drops from now on.
    pub(crate) fn subscribe_slow(&self) -> tokio::sync::watch::Receiver<u64> {
        self.slow.subscribe()
    }
}

impl Denials {
    const KEPT: usize = 16;

    fn record(&self, message: String) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() == Self::KEPT {
            kept.pop_front();
        }
        kept.push_back(message);
    }

    /// The server's message refusing a publish to `subject`, if it sent one.
    pub(crate) fn publish_to(&self, subject: &str) -> Option<String> {
        let quoted = format!("\"{subject}\"");
        let kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter()
            .rev()
            .find(|m| m.to_lowercase().contains("for publish to") && m.contains(&quoted))
            .cloned()
    }
}

impl NatsTls {
    fn problems(&self) -> Vec<String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut problems = Vec::new();
        let certs = |path: &Path, what: &str| -> Result<(), String> {
            readable(path, what)?;
            match CertificateDer::pem_file_iter(path).map(|it| it.collect::<Result<Vec<_>, _>>()) {
                Ok(Ok(certs)) if !certs.is_empty() => Ok(()),
                Ok(Ok(_)) => Err(format!("{what} {}: no PEM certificate in it", path.display())),
                Ok(Err(e)) | Err(e) => Err(format!("{what} {}: {e}", path.display())),
            }
        };
        if let Some(ca) = &self.ca
            && let Err(p) = certs(ca, "nats.tls.ca")
        {
            problems.push(p);
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                if let Err(p) = certs(cert, "nats.tls.cert") {
                    problems.push(p);
                }
                match readable(key, "nats.tls.key") {
                    Err(p) => problems.push(p),
                    Ok(_) => {
                        if let Err(e) = PrivateKeyDer::from_pem_file(key) {
                            problems.push(format!(
                                "nats.tls.key {}: not a PEM private key ({e})",
                                key.display()
                            ));
                        }
                    }
                }
            }
            (Some(_), None) | (None, Some(_)) => {
                problems.push("nats.tls: set both cert and key, or neither".to_owned());
            }
            (None, None) => {}
        }
        problems
    }
}

/// Whether `authority` (`host:port`) names this machine.
fn is_loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The file's text, or a problem naming the setting and the path.
fn readable(path: &Path, what: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// The variable's value, or a problem naming it (never the value).
fn from_env(var: &str, what: &str) -> Result<String, String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Err(format!("{what}: the environment variable {var} is empty")),
        Err(_) => Err(format!("{what}: the environment variable {var} is not set")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> NatsSettings {
        serde_norway::from_str(yaml).expect("valid yaml")
    }

    #[test]
    fn one_way_to_authenticate() {
        let s = settings("url: nats://x\nuser: a\npassword_env: AIRLOCK_TEST_UNSET_1\ntoken_env: T\n");
        let p = s.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("choose one way"), "{p:?}");
        assert!(p[0].contains("not user and token_env"), "{p:?}");
    }

    #[test]
    fn user_and_password_go_together() {
        let p = settings("url: nats://x\nuser: a\n").problems();
        assert!(p[0].contains("without its password"), "{p:?}");
        let p = settings("url: nats://x\npassword_env: P\n").problems();
        assert!(p[0].contains("without nats.user"), "{p:?}");
        let p = settings("url: nats://x\nuser: a\npassword_env: P\npassword_file: f\n").problems();
        assert!(p[0].contains("not both"), "{p:?}");
    }

    #[test]
    fn a_missing_environment_variable_is_named_without_a_value() {
        let p = settings("url: nats://x\ntoken_env: AIRLOCK_TEST_SURELY_UNSET\n").problems();
        assert_eq!(
            p,
            ["nats.token_env: the environment variable AIRLOCK_TEST_SURELY_UNSET is not set"]
        );
    }

    #[test]
    fn tls_files_are_checked_before_connecting() {
        let dir = tempfile::tempdir().expect("temp dir");
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").expect("write");
        let yaml = format!(
            "url: tls://x\ntls:\n  ca: {}\n  cert: {}\n",
            not_pem.display(),
            dir.path().join("missing.pem").display()
        );
        let p = settings(&yaml).problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("nats.tls.ca ") && p[0].contains("no PEM certificate"),
            "{p:?}"
        );
        assert_eq!(p[1], "nats.tls: set both cert and key, or neither");
    }

    #[test]
    fn an_nkey_seed_file_must_hold_a_seed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let seed = dir.path().join("user.nk");
        std::fs::write(&seed, "UABC\n").expect("write");
        let p = settings(&format!("url: nats://x\nnkey_seed: {}\n", seed.display())).problems();
        assert!(p[0].contains("not an NKey seed"), "{p:?}");
    }

    /// Review finding: credentials without TLS could be sent in clear to a
    /// remote server (an on-path attacker strips its TLS requirement), and
    /// credentials in the URL were printed with every connection error.
    #[test]
    fn credentials_go_only_over_tls_and_never_in_the_url() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("password");
        std::fs::write(&file, "hunter2").expect("write");
        let with = |url: &str| {
            settings(&format!(
                "url: {url}\nuser: a\npassword_file: {}\n",
                file.display()
            ))
            .problems()
        };
        let p = with("nats://nats.example:4222");
        assert!(p[0].contains("only over TLS"), "{p:?}");
        assert!(with("nats://127.0.0.1:4222").is_empty(), "loopback is allowed");
        assert!(with("nats://localhost:4222, nats://[::1]:4223").is_empty());
        assert!(with("tls://nats.example:4222").is_empty());
        let p = with("nats://127.0.0.1:4222, nats://nats.example:4222");
        assert!(
            p[0].contains("only over TLS"),
            "one remote server is enough: {p:?}"
        );
        let p = settings("url: nats://a:sekrit@nats.example:4222\n").problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("carries credentials") && !p[0].contains("sekrit"),
            "{p:?}"
        );
        assert!(
            settings("url: nats://nats.example:4222\n").problems().is_empty(),
            "no credentials, no TLS needed"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e =
            serde_norway::from_str::<NatsSettings>("url: x\npassword: hunter2\n").expect_err("unknown key");
        assert!(e.to_string().contains("unknown field `password`"), "{e}");
    }
}
