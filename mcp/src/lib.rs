//! `airlock-mcp`: a Model Context Protocol server for agents, as a
//! PostgreSQL client of `airlock-proxy`. Every tool call is a statement on
//! a proxy session logged in with the agent's own Entra token, so it meets
//! the same gate, policy, hold and log as psql; this process never holds a
//! database credential and never decides anything itself.
//!
//! Rooms: `wire` (the PostgreSQL client), `session` (which proxy session a
//! call runs on, held statements), `tools` (what a model sees, pure),
//! `server` (the MCP handler), `http` (streamable HTTP behind bearer
//! tokens). stdio is served from here.

pub mod http;
pub mod server;
pub mod session;
pub mod tools;
pub mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use airlock_config::ConfigFile;
use airlock_identity::{IdentityConfig, Verifier};
use anyhow::{Context, bail};
use clap::Parser;
use rmcp::ServiceExt;

use crate::server::{Handler, LocalToken, Shared};
use crate::session::Holds;
use crate::wire::Target;

/// The environment variable with the agent's token (stdio).
pub const TOKEN_ENV: &str = "AIRLOCK_TOKEN";

/// `airlock-mcp`'s flags.
#[derive(Debug, Parser)]
#[command(
    name = "airlock-mcp",
    version,
    about = "MCP server for agents: SQL tools through the Airlock proxy, under the agent's own token",
    long_about = "Speaks MCP on stdio (the agent's token from AIRLOCK_TOKEN or --token-file), or with --listen \
                  streamable HTTP at /mcp, where every request carries the agent's own bearer token. Every tool \
                  call is a statement through airlock-proxy: judged, held for review, refused and recorded as \
                  any other client's."
)]
pub struct Args {
    /// airlock.yaml: `proxy.listen` (where the proxy is) and `identity`
    /// (who may call over HTTP) are read from it.
    #[arg(long)]
    pub config: PathBuf,
    /// The connection (as under `connections:`) every session opens.
    #[arg(long)]
    pub connection: String,
    /// A file with the agent's token, read again at every login (stdio).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Serve streamable HTTP on this address instead of stdio.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// HTTPS certificate chain (PEM); needed for a --listen address other
    /// than loopback.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// HTTPS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A host name (or host:port) clients address this server by; repeat
    /// for more. Default: localhost, 127.0.0.1, ::1.
    #[arg(long = "allowed-host")]
    pub allowed_hosts: Vec<String>,
    /// This server's URL as clients reach it (for the OAuth
    /// protected-resource metadata); default: from the request's Host.
    #[arg(long)]
    pub public_url: Option<String>,
    /// The proxy, HOST:PORT (default: proxy.listen, loopback for an
    /// unspecified address).
    #[arg(long)]
    pub proxy: Option<String>,
    /// CA certificates (PEM) the proxy's certificate must chain to
    /// (default: the system's roots).
    #[arg(long)]
    pub proxy_ca: Option<PathBuf>,
    /// Send the token in plain text to a proxy on a loopback address that
    /// does not speak TLS (development only).
    #[arg(long)]
    pub allow_plaintext_loopback: bool,
    /// The longest statement a tool call may send, in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    pub max_statement_bytes: usize,
    /// The most result bytes (row data) a tool call returns; more is cut
    /// and marked truncated.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_result_bytes: usize,
}

/// Where the proxy is: `--proxy`, else `proxy.listen` (an unspecified
/// address means this host's loopback).
fn proxy_target(args: &Args, file: &ConfigFile, ca: Option<&[u8]>) -> anyhow::Result<Target> {
    let (host, port) = match &args.proxy {
        Some(p) => {
            let (host, port) = p.rsplit_once(':').context("--proxy must be HOST:PORT")?;
            (
                host.to_owned(),
                port.parse::<u16>().context("--proxy must be HOST:PORT")?,
            )
        }
        None => {
            let proxy: serde_json::Value = file
                .section("proxy")?
                .context("no --proxy given and no `proxy:` section in the config to find it")?;
            let listen: SocketAddr = proxy["listen"]
                .as_str()
                .context("proxy.listen is not set; give --proxy HOST:PORT")?
                .parse()
                .context("proxy.listen")?;
            let ip = match listen.ip() {
                IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            (ip.to_string(), listen.port())
        }
    };
    Target::new(&host, port, ca).map_err(anyhow::Error::msg)
}

/// The connection must be one the config names (the proxy would refuse
/// it at every call otherwise).
fn check_connection(file: &ConfigFile, name: &str) -> anyhow::Result<()> {
    let list: Vec<serde_json::Value> = file.section("connections")?.unwrap_or_default();
    let names: Vec<&str> = list.iter().filter_map(|c| c["name"].as_str()).collect();
    if !names.is_empty() && !names.contains(&name) {
        bail!(
            "--connection {name:?} is not among the config's connections ({})",
            names.join(", ")
        );
    }
    Ok(())
}

/// Runs the server until stdin closes (stdio) or the process is stopped.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let file = ConfigFile::load(&args.config)?;
    check_connection(&file, &args.connection)?;
    let ca = match &args.proxy_ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("--proxy-ca {}", p.display()))?),
        None => None,
    };
    let mut target = proxy_target(&args, &file, ca.as_deref())?;
    target.plaintext_ok = args.allow_plaintext_loopback && target.loopback;
    let identity: Option<IdentityConfig> = file.section("identity")?;
    let verifier = match identity {
        Some(config) => {
            config.validate().context("section `identity:`")?;
            Some(Verifier::new(config).context("identity")?)
        }
        None => None,
    };
    let holds = Arc::new(Holds::default());

    if let Some(listen) = args.listen {
        let Some(verifier) = verifier else {
            bail!(
                "--listen needs the config's `identity:` section: every HTTP request's token is verified with it"
            );
        };
        let tls = args.tls_cert.clone().zip(args.tls_key.clone());
        if tls.is_none() && !listen.ip().is_loopback() {
            bail!(
                "--listen {listen} is not a loopback address: give --tls-cert and --tls-key (bearer tokens are \
                 never taken in plain text from the network)"
            );
        }
        let shared = Arc::new(Shared {
            target,
            connection: args.connection.clone(),
            holds,
            max_statement_bytes: args.max_statement_bytes,
            max_result_bytes: args.max_result_bytes,
            local: None,
        });
        let allowed_hosts = if args.allowed_hosts.is_empty() {
            vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
        } else {
            args.allowed_hosts.clone()
        };
        let settings = http::HttpSettings {
            listen,
            allowed_hosts,
            public_url: args.public_url.clone(),
            tls,
        };
        return http::serve(shared, verifier, settings).await;
    }

    let local = match (&args.token_file, std::env::var(TOKEN_ENV)) {
        (Some(path), _) => LocalToken::File(path.clone()),
        (None, Ok(t)) if !t.trim().is_empty() => LocalToken::Fixed(t.trim().to_owned()),
        _ => bail!("no token: set {TOKEN_ENV} to the agent's Entra access token, or give --token-file"),
    };
    if let Some(v) = &verifier {
        let token = local.read().map_err(anyhow::Error::msg)?;
        let who = v
            .verify(&token)
            .await
            .map_err(|e| anyhow::anyhow!("the agent's token is not accepted: {e}"))?;
        tracing::info!(subject = %who.subject.0, "airlock-mcp serving MCP on stdio");
    }
    let shared = Arc::new(Shared {
        target,
        connection: args.connection.clone(),
        holds,
        max_statement_bytes: args.max_statement_bytes,
        max_result_bytes: args.max_result_bytes,
        local: Some(local),
    });
    let service = Handler::new(shared)
        .serve(rmcp::transport::stdio())
        .await
        .context("the MCP handshake on stdio")?;
    service.waiting().await.context("serving MCP on stdio")?;
    Ok(())
}

/// `airlock-mcp`'s `main`.
pub fn main() -> std::process::ExitCode {
    let args = Args::parse();
    airlock_telemetry::run_binary("airlock-mcp", run(args))
}
