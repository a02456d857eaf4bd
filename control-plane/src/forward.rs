//! `airlock-control forward --to <sink>`: streams the log to a SIEM. A
//! separate reader of the log (a durable JetStream consumer, see the
//! eventlog crate's `durable`): it never touches the gate, so a sink that is
//! slow or down slows nothing but itself.
//!
//! Delivery is at least once and in order: a batch is acknowledged on the
//! log only after the sink took all of it, so a forwarder that stops
//! (killed, restarted, moved) sends again what it had not confirmed, and
//! every record carries its event id (`metadata.uid` in OCSF, `event.id`
//! natively) for the receiver to drop repeats. A sink that fails is tried
//! again with backoff (capped), for as long as it takes: nothing is lost.
//! A sink that refuses records (HTTP 400, 413, 422: too large, malformed
//! for it) is not retried forever: the batch is split, and each record it
//! still refuses alone is parked (written to the park file with why),
//! counted and logged, and the rest go on.
//!
//! Sinks: `https://...` (a batch as one JSON array), `splunk+https://host:port`
//! (Splunk HTTP Event Collector, `/services/collector/event`), and
//! `syslog+tls://host:port` (RFC 5424 with octet counting, RFC 5425). Plain
//! `http://`, `splunk+http://` and `syslog+tcp://` only to a loopback
//! address: the records hold statements and identities.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use airlock_eventlog::EventLog;
use airlock_eventlog::durable::Delivered;
use anyhow::{Context, bail};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::export::{Exporter, know_session};
use crate::ocsf::Sessions;

/// `forward`'s flags.
#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    #[arg(long, default_value = "airlock.yaml")]
    pub config: PathBuf,
    /// Where to: https://HOST/PATH, splunk+https://HOST:PORT or
    /// syslog+tls://HOST:PORT (plain http, splunk+http, syslog+tcp to a
    /// loopback address only).
    #[arg(long)]
    pub to: String,
    /// `ocsf` (OCSF 1.3.0 records) or `native` (the export's lines).
    #[arg(long, default_value = "ocsf", value_parser = clap::builder::PossibleValuesParser::new(["ocsf", "native"]))]
    pub format: String,
    /// The durable reader's name: its position is kept by the log under
    /// it, and a forwarder started again with the same name resumes.
    #[arg(long, default_value = "airlock-forward")]
    pub name: String,
    /// Where a new reader starts (stream sequence; 1: the beginning).
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// Most events per delivery.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// CA certificates (PEM) the sink's certificate must chain to (default:
    /// the system's roots).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// An HTTP header whose value is in an environment variable, as
    /// NAME=ENV (`Authorization=SIEM_AUTH`); repeatable. For Splunk, the
    /// HEC token goes in --token-env.
    #[arg(long = "header-env")]
    pub header_env: Vec<String>,
    /// The environment variable holding Splunk's HEC token.
    #[arg(long, default_value = "SPLUNK_HEC_TOKEN")]
    pub token_env: String,
    /// Records the sink refused are appended here, one JSON object a line.
    #[arg(long, default_value = "airlock-forward-parked.jsonl")]
    pub park: PathBuf,
    /// The longest wait between two tries of a failing sink.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub max_backoff: Duration,
}

/// One record to send.
#[derive(Debug, Clone)]
pub struct Record {
    /// The event id (a grouped statement's own), for dedupe.
    pub id: String,
    pub time: OffsetDateTime,
    pub kind: String,
    /// Syslog severity (RFC 5424): 6 informational, 5 notice, 4 warning.
    pub severity: u8,
    pub value: Value,
}

/// Why a sink did not take a batch.
#[derive(Debug)]
pub enum SinkError {
    /// Try again later (down, overloaded, a network error, a credential
    /// being fixed): nothing was taken.
    Transient(String),
    /// The sink will not take this content (malformed or too large for it).
    Rejected(String),
}

fn loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A parsed `--to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Http { url: String },
    Splunk { url: String },
    Syslog { host: String, port: u16, tls: bool },
}

impl Target {
    pub fn parse(to: &str) -> anyhow::Result<Target> {
        let (scheme, rest) = to
            .split_once("://")
            .context("--to must be a URL (https://, splunk+https://, syslog+tls://)")?;
        let authority = rest.split('/').next().unwrap_or("");
        let host = match authority.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.is_empty() => h,
            _ => authority,
        };
        if host.is_empty() {
            bail!("--to {to}: no host");
        }
        let plain_ok = || {
            if loopback(host) {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "--to {to}: plain text only to a loopback address (the records hold statements and identities); use TLS"
                ))
            }
        };
        match scheme {
            "https" => Ok(Target::Http { url: to.to_owned() }),
            "http" => plain_ok().map(|()| Target::Http { url: to.to_owned() }),
            "splunk+https" | "splunk+http" => {
                if scheme == "splunk+http" {
                    plain_ok()?;
                }
                let base = format!("{}://{authority}", scheme.trim_start_matches("splunk+"));
                let path = rest
                    .strip_prefix(authority)
                    .filter(|p| !p.is_empty() && *p != "/");
                let url = format!("{base}{}", path.unwrap_or("/services/collector/event"));
                Ok(Target::Splunk { url })
            }
            "syslog+tls" | "syslog+tcp" => {
                let tls = scheme == "syslog+tls";
                if !tls {
                    plain_ok()?;
                }
                let (h, p) = authority.rsplit_once(':').context("--to syslog+...: HOST:PORT")?;
                let port = p.parse().context("--to syslog+...: a port number")?;
                Ok(Target::Syslog {
                    host: h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                    port,
                    tls,
                })
            }
            other => bail!("--to {to}: unknown scheme {other:?} (https, splunk+https, syslog+tls)"),
        }
    }
}

/// An HTTP sink: a generic JSON endpoint, or Splunk's event collector.
struct HttpSink {
    client: reqwest::Client,
    url: String,
    headers: Vec<(String, reqwest::header::HeaderValue)>,
    splunk: bool,
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink")
            .field("host", &host_of(&self.url))
            .finish_non_exhaustive()
    }
}

/// Where a URL points, without its path, query or user info (which may
/// hold a secret): what logs say.
fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .map(|u| {
            format!(
                "{}://{}{}",
                u.scheme(),
                u.host_str().unwrap_or("?"),
                u.port().map(|p| format!(":{p}")).unwrap_or_default()
            )
        })
        .unwrap_or_else(|| "?".into())
}

fn classify(status: reqwest::StatusCode, body: &str) -> SinkError {
    let what = format!("HTTP {status}: {}", body.chars().take(300).collect::<String>());
    match status.as_u16() {
        400 | 413 | 422 => SinkError::Rejected(what),
        // Credentials, a wrong path, overload: fixed on the other side,
        // not by dropping records.
        _ => SinkError::Transient(what),
    }
}

impl HttpSink {
    async fn send(&self, batch: &[Record]) -> Result<(), SinkError> {
        let body = if self.splunk {
            // One event object after another (HEC's batch form).
            let mut b = String::new();
            for r in batch {
                let t = r.time.unix_timestamp_nanos() as f64 / 1e9;
                b.push_str(
                    &json!({"time": t, "source": "airlock", "sourcetype": "airlock:event", "event": r.value})
                        .to_string(),
                );
                b.push('\n');
            }
            b
        } else {
            Value::Array(batch.iter().map(|r| r.value.clone()).collect()).to_string()
        };
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (k, v) in &self.headers {
            request = request.header(k.as_str(), v.clone());
        }
        let response = request.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "unreachable"
            } else {
                "failed"
            };
            SinkError::Transient(format!("{}: {why}", host_of(&self.url)))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(classify(status, &text))
    }
}

/// RFC 5424 over TCP or TLS, octet-counted (RFC 5425 / 6587).
struct SyslogSink {
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
    conn: Option<Box<dyn SyslogIo>>,
    /// When the connection last carried a batch: an idle one is opened
    /// again, since a receiver that closed it would make the next write
    /// vanish (syslog has no acknowledgement).
    used: Instant,
    hostname: String,
}

/// Connecting, the handshake and a batch's write each get this long.
const SYSLOG_TIMEOUT: Duration = Duration::from_secs(15);
/// A connection idle this long is opened again before use.
const SYSLOG_IDLE: Duration = Duration::from_secs(20);

impl std::fmt::Debug for SyslogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogSink")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

trait SyslogIo: tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncWrite + Unpin + Send> SyslogIo for T {}

/// Printable ASCII without spaces, at most `max` characters (RFC 5424's
/// header fields).
fn header_field(s: &str, max: usize) -> String {
    let f: String = s.chars().filter(|c| ('!'..='~').contains(c)).take(max).collect();
    if f.is_empty() { "-".into() } else { f }
}

/// One syslog message, framed: `LEN <PRI>1 TIME HOST APP - MSGID SD MSG`.
pub fn syslog_frame(r: &Record, hostname: &str) -> String {
    // Facility 10: security/authorization (authpriv).
    let pri = 10 * 8 + u32::from(r.severity);
    // RFC 5424: at most six digits of fractional seconds, UTC.
    let micros = r
        .time
        .replace_nanosecond(r.time.nanosecond() / 1000 * 1000)
        .unwrap_or(r.time);
    let time = micros
        .to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "-".into());
    // JSON keeps these raw inside strings; line-based tools split on them.
    let body = r
        .value
        .to_string()
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
        .replace('\u{85}', "\\u0085");
    let message = format!(
        "<{pri}>1 {time} {} airlock - {} [origin software=\"Airlock\" swVersion=\"{}\"] \u{feff}{body}",
        header_field(hostname, 255),
        header_field(&r.kind, 32),
        env!("CARGO_PKG_VERSION"),
    );
    format!("{} {message}", message.len())
}

impl SyslogSink {
    async fn connect(&mut self) -> Result<(), SinkError> {
        tokio::time::timeout(SYSLOG_TIMEOUT, self.open())
            .await
            .map_err(|_| {
                SinkError::Transient(format!(
                    "syslog {}:{}: connecting timed out",
                    self.host, self.port
                ))
            })?
    }

    async fn open(&mut self) -> Result<(), SinkError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| SinkError::Transient(format!("syslog {}:{}: {e}", self.host, self.port)))?;
        let _ = tcp.set_nodelay(true);
        self.conn = Some(match &self.tls {
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| SinkError::Transient(format!("syslog host name: {e}")))?;
                Box::new(
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| SinkError::Transient(format!("syslog TLS: {e}")))?,
                )
            }
            None => Box::new(tcp),
        });
        Ok(())
    }

    async fn send(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        if self.used.elapsed() > SYSLOG_IDLE {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.connect().await?;
        }
        let mut out = String::new();
        for r in batch {
            out.push_str(&syslog_frame(r, &self.hostname));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let written = tokio::time::timeout(SYSLOG_TIMEOUT, async {
            conn.write_all(out.as_bytes()).await?;
            conn.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {
                self.used = Instant::now();
                Ok(())
            }
            Ok(Err(e)) => {
                self.conn = None;
                Err(SinkError::Transient(format!(
                    "syslog {}:{}: {e}",
                    self.host, self.port
                )))
            }
            Err(_) => {
                self.conn = None;
                Err(SinkError::Transient(format!(
                    "syslog {}:{}: writing timed out",
                    self.host, self.port
                )))
            }
        }
    }
}

#[derive(Debug)]
enum Sink {
    Http(HttpSink),
    Syslog(SyslogSink),
}

impl Sink {
    async fn send(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        match self {
            Sink::Http(h) => h.send(batch).await,
            Sink::Syslog(s) => s.send(batch).await,
        }
    }
}

fn roots(ca: Option<&PathBuf>) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("--ca {}", path.display()))?;
            let mut reader = std::io::BufReader::new(pem.as_slice());
            for c in rustls::pki_types::pem::PemObject::pem_reader_iter(&mut reader) {
                roots.add(c.with_context(|| format!("--ca {}", path.display()))?)?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    Ok(roots)
}

fn sink(args: &ForwardArgs, target: &Target) -> anyhow::Result<Sink> {
    let mut headers = Vec::new();
    for h in &args.header_env {
        let (name, env) = h.split_once('=').context("--header-env NAME=ENV")?;
        let value = std::env::var(env).with_context(|| format!("--header-env {name}: ${env} is not set"))?;
        headers.push((name.to_owned(), value));
    }
    let http = |url: &str, splunk: bool, mut headers: Vec<(String, String)>| -> anyhow::Result<Sink> {
        // No redirects (a 302 to a login page answered 200 is no delivery,
        // and a 307 must not carry records or headers elsewhere), no
        // HTTP proxy from the environment.
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if let Some(ca) = &args.ca {
            let pem = std::fs::read(ca).with_context(|| format!("--ca {}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).context("--ca")? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if splunk {
            let token = std::env::var(&args.token_env)
                .with_context(|| format!("Splunk needs its HEC token in ${}", args.token_env))?;
            headers.push(("Authorization".into(), format!("Splunk {token}")));
        }
        let headers = headers
            .into_iter()
            .map(|(k, v)| {
                let mut value = reqwest::header::HeaderValue::from_str(&v)
                    .map_err(|_| anyhow::anyhow!("the value of header {k} is not a valid header value"))?;
                value.set_sensitive(true);
                Ok((k, value))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Sink::Http(HttpSink {
            client: builder.build()?,
            url: url.to_owned(),
            headers,
            splunk,
        }))
    };
    match target {
        Target::Http { url } => http(url, false, headers),
        Target::Splunk { url } => http(url, true, headers),
        Target::Syslog { host, port, tls } => {
            let tls = if *tls {
                let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots(args.ca.as_ref())?)
                .with_no_client_auth();
                Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
            } else {
                None
            };
            let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "-".into());
            Ok(Sink::Syslog(SyslogSink {
                host: host.clone(),
                port: *port,
                tls,
                conn: None,
                used: Instant::now(),
                hostname,
            }))
        }
    }
}

/// Records the sink refused, kept with why.
#[derive(Debug)]
struct Park {
    path: PathBuf,
    parked: AtomicU64,
}

impl Park {
    fn put(&self, record: &Record, why: &str) -> anyhow::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&self.path)
            .with_context(|| format!("the park file {}", self.path.display()))?;
        let parked_at = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        writeln!(
            file,
            "{}",
            json!({"parked_at": parked_at, "id": record.id, "reason": why, "record": record.value})
        )?;
        file.sync_data()?;
        let n = self.parked.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(id = %record.id, kind = %record.kind, reason = why, parked_total = n, park = %self.path.display(),
            "the sink refused a record: parked");
        Ok(())
    }
}

/// Sends `batch` until the sink takes it or refuses it; keeps the log's
/// hold on the batch (`last`) alive meanwhile.
async fn send_retrying(
    sink: &mut Sink,
    batch: &[Record],
    last: &Delivered,
    max_backoff: Duration,
) -> Result<(), String> {
    let mut backoff = Duration::from_millis(200);
    let mut told = Instant::now();
    loop {
        match sink.send(batch).await {
            Ok(()) => return Ok(()),
            Err(SinkError::Rejected(why)) => return Err(why),
            Err(SinkError::Transient(why)) => {
                tracing::warn!(error = %why, retry_in_ms = backoff.as_millis() as u64, records = batch.len(),
                    "the sink did not take the batch; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
                if told.elapsed() > airlock_eventlog::durable::ACK_WAIT / 3 {
                    if let Err(e) = last.working().await {
                        tracing::warn!(error = %e, "telling the log the batch is still being sent");
                    }
                    told = Instant::now();
                }
            }
        }
    }
}

/// The records of one event. An event whose writer the log's trust does
/// not vouch for is still sent, marked (`untrusted`, and in OCSF High).
fn to_records(line: &Value, ocsf: bool, sessions: &mut Sessions, untrusted: Option<&str>) -> Vec<Record> {
    let time = |v: &Value| {
        v.as_str()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    };
    let kind = line["kind"].as_str().unwrap_or("event").to_owned();
    let severity = match kind.as_str() {
        _ if untrusted.is_some() => 4,
        "statement_refused" | "approval_denied" | "session_kill_requested" | "grant_revoked" => 5,
        _ => 6,
    };
    if !ocsf {
        let mut value = line.clone();
        if let Some(why) = untrusted {
            value["untrusted"] = json!(why);
        }
        return vec![Record {
            id: line["event"]["id"].as_str().unwrap_or("").to_owned(),
            time: time(&line["event"]["time"]),
            kind,
            severity,
            value,
        }];
    }
    crate::ocsf::records(line, sessions, untrusted.is_none())
        .into_iter()
        .map(|mut r| {
            if let Some(why) = untrusted {
                r["severity_id"] = json!(4);
                r["severity"] = json!("High");
                r["unmapped"]["untrusted"] = json!(why);
            }
            let severity = if r["severity_id"].as_u64() == Some(4) {
                4
            } else {
                severity
            };
            let t = r["time"]
                .as_i64()
                .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            Record {
                id: r["metadata"]["uid"].as_str().unwrap_or("").to_owned(),
                time: t,
                kind: kind.clone(),
                severity,
                value: r,
            }
        })
        .collect()
}

/// One event of the log to send, by sequence: what the durable reader
/// delivered, or what was read by sequence to fill a gap.
enum Item {
    Event(Box<airlock_eventlog::StoredEvent>),
    NotAnEvent(String),
}

/// Reads event `sequence` from the stream, trying again while the log
/// cannot answer (a gap must be filled before anything after it is
/// acknowledged).
async fn read_at(log: &EventLog, sequence: u64) -> Item {
    let mut backoff = Duration::from_millis(200);
    loop {
        match log.get(sequence).await {
            Ok(e) => return Item::Event(Box::new(e)),
            Err(airlock_eventlog::Error::Corrupt { detail, .. }) => return Item::NotAnEvent(detail),
            // Nothing stored there (a limit removed it): nothing to send.
            Err(e) if e.to_string().to_lowercase().contains("no message found") => {
                return Item::NotAnEvent(format!("no message at sequence {sequence}"));
            }
            Err(e) => {
                tracing::warn!(sequence, error = %e, "reading a missed event; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Sends `records`, splitting and parking what the sink refuses; when the
/// sink refuses every record of a batch alone it is not the records but
/// the sink (its configuration): that is retried, nothing parked.
async fn deliver(
    sink: &mut Sink,
    records: &[Record],
    last: &Delivered,
    args: &ForwardArgs,
    park: &Park,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(500);
    loop {
        let Err(why) = send_retrying(sink, records, last, args.max_backoff).await else {
            return Ok(());
        };
        if records.len() == 1 {
            park.put(&records[0], &why)?;
            return Ok(());
        }
        tracing::info!(records = records.len(), reason = %why, "the sink refused a batch: sending its records one by one");
        let mut refused = Vec::new();
        for r in records {
            if let Err(why) = send_retrying(sink, std::slice::from_ref(r), last, args.max_backoff).await {
                refused.push((r, why));
            }
        }
        if refused.len() < records.len() {
            for (r, why) in refused {
                park.put(r, &why)?;
            }
            return Ok(());
        }
        tracing::error!(records = records.len(), reason = %why,
            "the sink refused every record of the batch, each alone: taken for the sink's configuration, not the records; trying again");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(args.max_backoff);
    }
}

/// Runs the forwarder until stopped.
pub async fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.to)?;
    let mut sink = sink(&args, &target)?;
    let config = crate::config::load(&args.config)?;
    let mut log = EventLog::connect(config.nats).await?;
    match &config.signing {
        Some(signing) => log = log.with_trust(Arc::new(signing.load().context("signing.trust")?)),
        None => tracing::warn!(
            "no `signing:` section: events are forwarded without checking their writers; list the writers' \
             keys to mark what no trusted writer signed"
        ),
    }
    let mut durable = log.durable(&args.name, args.from).await?;
    // Where this reader is: after the last event the log says was taken.
    // Anything delivered below it is a redelivery (skipped); a gap above
    // it (events given to another puller, or lost to a broken fetch) is
    // read by sequence before anything after it is acknowledged.
    let floor = durable.ack_floor().await?;
    let mut next = if floor > 0 { floor + 1 } else { args.from.max(1) };
    let exporter = Exporter::new()?;
    let ocsf = args.format == "ocsf";
    let mut sessions = Sessions::default();
    let park = Park {
        path: args.park.clone(),
        parked: AtomicU64::new(0),
    };
    let batch_size = args.batch.clamp(1, 10_000);
    let mut delivered = 0u64;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tracing::info!(to = %host_of(&args.to), format = %args.format, reader = durable.name(), from = next, "forwarding the log");
    loop {
        let batch = tokio::select! {
            b = durable.fetch(batch_size, Duration::from_secs(2)) => b,
            _ = tokio::signal::ctrl_c() => return stopping(delivered),
            _ = terminate.recv() => return stopping(delivered),
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "reading the log; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(last) = batch.iter().max_by_key(|d| d.sequence) else {
            continue;
        };
        if last.sequence < next {
            // Only redeliveries of what was sent: acknowledged again.
            if let Err(e) = last.ack().await {
                tracing::warn!(error = %e, "acknowledging redelivered events");
            }
            continue;
        }
        let mut items: Vec<(u64, Item)> = Vec::new();
        let mut by_sequence: std::collections::BTreeMap<u64, &Delivered> = batch
            .iter()
            .filter(|d| d.sequence >= next)
            .map(|d| (d.sequence, d))
            .collect();
        for sequence in next..=last.sequence {
            let item = match by_sequence.remove(&sequence) {
                Some(d) => match &d.event {
                    Ok(e) => Item::Event(Box::new(e.clone())),
                    Err(e) => Item::NotAnEvent(e.to_string()),
                },
                None => read_at(&log, sequence).await,
            };
            items.push((sequence, item));
        }
        let mut records = Vec::new();
        for (sequence, item) in &items {
            let stored = match item {
                Item::Event(e) if !e.event.id.is_empty() => e,
                Item::Event(_) => {
                    tracing::warn!(
                        sequence,
                        "a stored message without an event id: not an event, passed over"
                    );
                    continue;
                }
                Item::NotAnEvent(why) => {
                    tracing::warn!(sequence, error = %why, "not an event: passed over");
                    continue;
                }
            };
            let line = match exporter.value(stored) {
                Ok(l) => l,
                Err(e) => {
                    let raw = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &stored.raw);
                    let record = Record {
                        id: stored.event.id.clone(),
                        time: OffsetDateTime::UNIX_EPOCH,
                        kind: "undecodable".into(),
                        severity: 4,
                        value: json!({"sequence": sequence, "subject": stored.subject, "raw_base64": raw}),
                    };
                    park.put(&record, &format!("the event has no JSON form: {e:#}"))?;
                    continue;
                }
            };
            let untrusted = log
                .trust()
                .and_then(|t| t.check(stored).err())
                .map(|u| u.to_string());
            if ocsf {
                // The session's opening, for its identity: read until read.
                let mut backoff = Duration::from_millis(200);
                while let Err(e) = know_session(&log, &mut sessions, &line).await {
                    tracing::warn!(error = %e, "reading a session's opening for its records; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
            records.extend(to_records(&line, ocsf, &mut sessions, untrusted.as_deref()));
        }
        if !records.is_empty() {
            deliver(&mut sink, &records, last, &args, &park).await?;
        }
        next = last.sequence + 1;
        if let Err(e) = last.ack().await {
            // Sent: at worst sent again after a restart.
            tracing::warn!(error = %e, "acknowledging a delivered batch");
        }
        delivered += records.len() as u64;
        tracing::info!(
            through = last.sequence,
            records = records.len(),
            delivered,
            parked = park.parked.load(Ordering::Relaxed),
            "delivered"
        );
    }
}

fn stopping(delivered: u64) -> anyhow::Result<()> {
    tracing::info!(
        delivered,
        "stopping: what was not confirmed is sent again at the next start"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_need_tls_off_loopback() {
        assert_eq!(
            Target::parse("https://siem.example/ingest").unwrap(),
            Target::Http {
                url: "https://siem.example/ingest".into()
            }
        );
        assert!(Target::parse("http://siem.example/ingest").is_err());
        assert!(Target::parse("http://127.0.0.1:9000/x").is_ok());
        assert_eq!(
            Target::parse("splunk+https://splunk.example:8088").unwrap(),
            Target::Splunk {
                url: "https://splunk.example:8088/services/collector/event".into()
            }
        );
        assert!(Target::parse("splunk+http://splunk.example:8088").is_err());
        assert_eq!(
            Target::parse("syslog+tls://logs.example:6514").unwrap(),
            Target::Syslog {
                host: "logs.example".into(),
                port: 6514,
                tls: true
            }
        );
        assert!(Target::parse("syslog+tcp://logs.example:514").is_err());
        assert!(Target::parse("syslog+tcp://127.0.0.1:514").is_ok());
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("nonsense").is_err());
    }

    #[test]
    fn a_syslog_frame_is_octet_counted_rfc_5424() {
        let r = Record {
            id: "01E".into(),
            time: OffsetDateTime::from_unix_timestamp(1_764_583_200).unwrap(),
            kind: "statement_refused".into(),
            severity: 5,
            value: json!({"a": "é"}),
        };
        let frame = syslog_frame(&r, "host one");
        let (len, msg) = frame.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len(), "the count is of bytes");
        assert!(
            msg.starts_with("<85>1 2025-12-01T10:00:00Z hostone airlock - statement_refused [origin"),
            "{msg}"
        );
        assert!(msg.ends_with("\u{feff}{\"a\":\"é\"}"), "a BOM, then the record");

        let mut r = r;
        r.time = OffsetDateTime::from_unix_timestamp_nanos(1_764_583_200_123_456_789).unwrap();
        r.value = json!({"sql": "a\u{2028}b\u{85}c"});
        let frame = syslog_frame(&r, "h");
        assert!(
            frame.contains(" 2025-12-01T10:00:00.123456Z "),
            "six digits at most: {frame}"
        );
        assert!(
            !frame.contains('\u{2028}') && !frame.contains('\u{85}'),
            "{frame}"
        );
        assert!(frame.contains("a\\u2028b\\u0085c"), "{frame}");
    }

    #[test]
    fn client_errors_about_content_are_refusals_the_rest_are_retried() {
        assert!(matches!(
            classify(reqwest::StatusCode::PAYLOAD_TOO_LARGE, ""),
            SinkError::Rejected(_)
        ));
        assert!(matches!(
            classify(reqwest::StatusCode::BAD_REQUEST, ""),
            SinkError::Rejected(_)
        ));
        for s in [301, 302, 307, 401, 403, 404, 408, 429, 500, 503] {
            let status = reqwest::StatusCode::from_u16(s).unwrap();
            assert!(matches!(classify(status, ""), SinkError::Transient(_)), "{s}");
        }
    }
}
