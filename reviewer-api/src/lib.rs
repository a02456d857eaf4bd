//! `airlock-reviewer`: the human side of Airlock. REST (`api`, its JSON
//! shapes in `json`, its OpenAPI document derived from both in `openapi`,
//! who may see which request in `access`), server-sent events (`events`), a
//! server-rendered web UI (`ui`, `html`, `highlight`), browser sign-in with
//! OIDC authorization code + PKCE (`oidc`), webhook notifications
//! (`notify`), health and Prometheus metrics (`metrics`), and what replicas
//! share in NATS KV with `reviewer.state: nats` (`shared`).
//!
//! It decides nothing. Every read and every vote goes to the control plane
//! over gRPC (`control`) with the caller's own token, and the control plane
//! judges it (reviewer group, self-approval, app identity, quorum, expiry);
//! refusals come back as JSON errors with a stable code (`error`).

pub mod access;
pub mod api;
pub mod auth;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod error;
pub mod events;
pub mod highlight;
pub mod html;
pub mod json;
pub mod metrics;
pub mod notify;
pub mod oidc;
pub mod openapi;
pub mod shared;
pub mod slack;
pub mod tls;
pub mod ui;

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::routing::MethodRouter;

use crate::auth::{Authenticator, Sessions};
use crate::config::ReviewerConfig;
use crate::control::ControlClient;
use crate::metrics::Metrics;
use crate::shared::Shared;

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    pub config: ReviewerConfig,
    pub public_url: String,
    pub auth: Authenticator,
    pub control: ControlClient,
    pub metrics: Arc<Metrics>,
    pub oidc: Option<oidc::Oidc>,
    /// Slack approvals (`reviewer.slack`), when set up.
    pub slack: Option<slack::Slack>,
}

pub type State = Arc<App>;

impl App {
    /// The reviewer for `config`, its browser sessions and sign-ins kept in
    /// `shared` when given (`reviewer.state: nats`), else in memory.
    pub fn new(config: ReviewerConfig, shared: Option<Arc<Shared>>) -> anyhow::Result<App> {
        let verifier = airlock_identity::Verifier::new(config.identity.clone()).context("identity")?;
        verifier.ask_graph_about(&config.reviewer_groups);
        let public_url = config.public_url();
        let origin = url::Url::parse(&public_url)
            .context("reviewer.public_url")?
            .origin()
            .ascii_serialization();
        let control = ControlClient::new(&config.reviewer.control, config.reviewer.control_tls.as_ref())
            .context("reviewer.control")?;
        let oidc = config
            .reviewer
            .oidc
            .as_ref()
            .map(|o| oidc::Oidc::new(o, &config.identity, &public_url, shared.clone()))
            .transpose()?;
        let slack = config
            .reviewer
            .slack
            .clone()
            .map(|section| slack::Slack::new(section, shared.clone()))
            .transpose()?;
        if slack.is_some() && config.reviewer.notifications.is_none() {
            anyhow::bail!(
                "reviewer.slack needs reviewer.notifications: its token_file is the identity Slack votes are relayed with"
            );
        }
        Ok(App {
            auth: Authenticator {
                verifier,
                sessions: match &shared {
                    Some(shared) => Sessions::shared(shared.clone()),
                    None => Sessions::default(),
                },
                secure_cookies: config.secure_cookies(),
                origin,
            },
            public_url,
            control,
            metrics: Metrics::new(),
            oidc,
            slack,
            config,
        })
    }
}

/// One route: method, path (axum syntax) and handler. The REST routes are
/// listed in one place so the OpenAPI document can be checked against them.
pub type Route = (&'static str, &'static str, MethodRouter<State>);

/// Every route of the server.
pub fn routes() -> Vec<Route> {
    let mut all = api::routes();
    all.extend(openapi::routes());
    all.extend(ui::routes());
    all.extend(oidc::routes());
    all
}

/// The whole HTTP surface.
pub fn router(app: State) -> Router {
    let mut router = Router::new();
    for (_, path, handler) in routes() {
        router = router.route(path, handler);
    }
    router
        .fallback(ui::not_found)
        .layer(axum::middleware::from_fn(html::secure_pages))
        .layer(axum::middleware::from_fn_with_state(app.clone(), metrics::track))
        .with_state(app)
}

/// Serves until SIGTERM or Ctrl-C.
pub async fn run(config: ReviewerConfig) -> anyhow::Result<()> {
    airlock_telemetry::survive_hangup(
        "airlock-reviewer",
        "nothing to do: TLS files are re-read within a second of changing; the rest is read at start",
    );
    let listen = config.reviewer.listen;
    let shared = match &config.nats {
        Some(nats) => {
            let shared = Shared::open(nats, config.reviewer.session_ttl)
                .await
                .context("reviewer.state: nats")?;
            tracing::info!("browser sessions and the notifier lease are kept in NATS KV");
            Some(Arc::new(shared))
        }
        None => None,
    };
    let app = Arc::new(App::new(config, shared.clone())?);
    match app.auth.verifier.refresh_keys().await {
        Ok(n) => tracing::info!(keys = n, "identity provider keys loaded"),
        Err(e) => tracing::warn!(error = %e, "identity provider keys not loaded yet; retried on use"),
    }
    if let Some(n) = app.config.reviewer.notifications.clone() {
        notify::spawn(
            n,
            app.config.reviewer.slack.clone(),
            app.control.clone(),
            app.public_url.clone(),
            app.metrics.clone(),
            shared.clone(),
        )?;
    }
    let acceptor = match app.config.reviewer.tls.as_ref().map(tls::acceptor).transpose()? {
        Some((acceptor, certificate)) => {
            certificate.watch("reviewer.tls", app.metrics.reloads.clone());
            Some(acceptor)
        }
        None => None,
    };
    app.control.watch_tls(app.metrics.reloads.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, public_url = %app.public_url, tls = acceptor.is_some(), "airlock-reviewer serving");
    match acceptor {
        Some(acceptor) => axum::serve(tls::TlsListener::new(listener, acceptor)?, router(app))
            .with_graceful_shutdown(shutdown())
            .await
            .context("serving"),
        None => axum::serve(listener, router(app))
            .with_graceful_shutdown(shutdown())
            .await
            .context("serving"),
    }
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
