//! The standard gRPC health service (`grpc.health.v1.Health`, as load
//! balancers and Kubernetes' gRPC probes ask it).
//!
//! SERVING while this replica can do its job: it has caught up with the log
//! as it was at start, and the log answers now. NOT_SERVING before that,
//! whenever the log stops answering, and for good once shutdown begins. The
//! whole server ("") and each Airlock service by name always share one
//! status: they all stand on the same projection.

use std::sync::Arc;
use std::time::Duration;

use airlock_eventlog::proto;
use tokio::sync::Mutex;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

use crate::live::Live;

/// The names the status is reported under: "" is the whole server.
pub const SERVICES: [&str; 4] = [
    "",
    proto::reviewer_service_server::SERVICE_NAME,
    proto::proxy_service_server::SERVICE_NAME,
    proto::audit_service_server::SERVICE_NAME,
];

/// How often the replica's state is looked at. The log itself is probed
/// once a second by [`Live`].
const EVERY: Duration = Duration::from_millis(250);

/// What the health service says of one replica; cheap to clone.
#[derive(Debug, Clone)]
pub struct Serving {
    live: Arc<Live>,
    reporter: HealthReporter,
    /// Held while judging and reporting, so a shutdown can never be
    /// overtaken by a SERVING judged just before it.
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    reported: bool,
    stopping: bool,
}

impl Serving {
    /// The health service for `live`'s replica, NOT_SERVING until
    /// [`Serving::refresh`] first finds the replica serving, and a task
    /// that refreshes it until shutdown.
    pub async fn start(live: Arc<Live>) -> (Serving, HealthServer<impl Health>) {
        let (reporter, server) = tonic_health::server::health_reporter();
        // The reporter starts the whole server as SERVING: correct that
        // before anyone can ask.
        set(&reporter, ServingStatus::NotServing).await;
        let serving = Serving {
            live,
            reporter,
            state: Arc::new(Mutex::new(State::default())),
        };
        tokio::spawn(serving.clone().refresh_forever());
        (serving, server)
    }

    /// Whether the replica can do its job now: caught up once, and the log
    /// answering. Says nothing of shutdown.
    pub fn can_serve(&self) -> bool {
        self.live.is_ready() && self.live.log_reachable()
    }

    /// Whether the replica serves now: it can, and shutdown has not begun
    /// (what `/readyz` answers; the gRPC status follows within [`EVERY`]).
    pub async fn is_serving(&self) -> bool {
        !self.state.lock().await.stopping && self.can_serve()
    }

    /// Whether shutdown has begun.
    pub async fn is_stopping(&self) -> bool {
        self.state.lock().await.stopping
    }

    /// Reports the replica's status if it changed.
    pub async fn refresh(&self) {
        let mut state = self.state.lock().await;
        let now = !state.stopping && self.can_serve();
        if now == state.reported {
            return;
        }
        tracing::info!(
            serving = now,
            ready = self.live.is_ready(),
            log_reachable = self.live.log_reachable(),
            "gRPC health changed"
        );
        set(&self.reporter, status(now)).await;
        state.reported = now;
    }

    /// Shutdown has begun: NOT_SERVING from now on, whatever the replica's
    /// state.
    pub async fn shutting_down(&self) {
        let mut state = self.state.lock().await;
        state.stopping = true;
        state.reported = false;
        set(&self.reporter, ServingStatus::NotServing).await;
        tracing::info!("shutting down: gRPC health is NOT_SERVING");
    }

    async fn refresh_forever(self) {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.refresh().await;
            if self.state.lock().await.stopping {
                return;
            }
        }
    }
}

fn status(serving: bool) -> ServingStatus {
    if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

async fn set(reporter: &HealthReporter, status: ServingStatus) {
    for name in SERVICES {
        reporter.set_service_status(name, status).await;
    }
}
