//! Health for orchestrators, on `proxy.metrics_listen`:
//!
//! * `/livez`: the process answers (its runtime turns). A liveness probe
//!   restarts the proxy only when this fails, never because NATS or the
//!   control plane is away (restarting would not bring them back).
//! * `/readyz`: the proxy can do its job: not draining, an Attach stream to
//!   the control plane is up (else every gated statement is refused), and
//!   NATS is connected (else every recorded statement is refused). 503 with
//!   the reasons otherwise, from the first moment of a drain, so a load
//!   balancer stops sending new agents while the open sessions finish.
//!   A connection whose catalog facts cannot be read is reported as
//!   `ready, degraded: ...` (200): the proxy serves, holding calls it
//!   cannot tell from built-ins.
//! * `/healthz`: as `/livez` (kept for probes written before the split).
//!
//! Policies are loaded before the listener opens: a proxy without them
//! does not start.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use tokio::sync::watch;

use crate::attach::Holds;
use crate::session::Phase;

/// What `/readyz` looks at.
#[derive(Clone)]
pub struct Readiness {
    pub holds: Arc<Holds>,
    pub nats: async_nats::Client,
    pub phase: watch::Receiver<Phase>,
    pub gate: Arc<crate::policy_gate::PolicyGate>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness").finish_non_exhaustive()
    }
}

impl Readiness {
    /// Why the proxy is not ready; empty when it is.
    pub fn not_ready(&self) -> Vec<&'static str> {
        let mut why = Vec::new();
        if *self.phase.borrow() != Phase::Running {
            why.push("draining");
        }
        if !self.holds.is_attached() {
            why.push("no Attach stream to the control plane");
        }
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            why.push("NATS is not connected");
        }
        why
    }
}

/// `/livez`, `/readyz` and `/healthz`.
pub fn router(readiness: Readiness) -> axum::Router {
    let live = || async { "alive\n" };
    axum::Router::new()
        .route("/livez", get(live))
        .route("/healthz", get(live))
        .route(
            "/readyz",
            get(move || {
                let why = readiness.not_ready();
                let mut degraded = readiness.gate.degraded_catalogs();
                degraded.extend(readiness.gate.degraded_upstreams());
                async move {
                    if why.is_empty() && degraded.is_empty() {
                        (StatusCode::OK, "ready\n".to_owned())
                    } else if why.is_empty() {
                        // Serving, failing closed: an orchestrator keeps
                        // it, an operator sees why calls are being held.
                        (
                            StatusCode::OK,
                            format!("ready, degraded: {}\n", degraded.join("; ")),
                        )
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {}\n", why.join("; ")),
                        )
                    }
                }
            }),
        )
}
