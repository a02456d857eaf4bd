//! `airlock-control serve`: one control-plane replica. Connects to the log,
//! folds it, then serves gRPC (reviewer, proxy Attach, audit, health;
//! reflection on so grpcurl works) and appends due outcomes. Any number of
//! replicas may run against one log. `/healthz` and `/metrics` are served
//! over HTTP when their addresses are configured.

use std::net::SocketAddr;
use std::sync::Arc;

use airlock_eventlog::proto;
use airlock_eventlog::signing::{Role, Signer, Trust};
use airlock_eventlog::{EventLog, ProxyId};
use airlock_identity::Verifier;
use anyhow::Context;

use crate::config::{ControlConfig, ControlSection};
use crate::grpc::health::Serving;
use crate::grpc::{AttachAuth, BoxFuture, Control, ReviewerAuth};
use crate::live::Live;
use crate::projection::Projection;
use crate::tls::GrpcListener;

/// Reviewer tokens checked by the identity crate.
struct VerifierAuth(Verifier);

impl ReviewerAuth for VerifierAuth {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<proto::Identity, String>> {
        Box::pin(async move {
            self.0.verify(token).await.map(|i| i.to_proto()).map_err(|e| match e {
                // Graph's own words (its URL, the tenant's error text) are
                // for the operator's log, not for whoever holds the token.
                airlock_identity::VerifyError::GraphUnavailable(_) => {
                    tracing::warn!(error = %e, "a reviewer's group overage could not be resolved");
                    "the token lists too many groups, and Microsoft Graph cannot be asked about them right \
                     now; try again later"
                        .to_owned()
                }
                e => e.to_string(),
            })
        })
    }

    fn groups_now<'a>(
        &'a self,
        person: &'a proto::Identity,
    ) -> BoxFuture<'a, Option<Result<Vec<proto::Group>, String>>> {
        Box::pin(async move {
            let asked = self.0.groups_now(&person.tenant_id, &person.subject).await?;
            Some(
                asked
                    .map(|groups| {
                        groups
                            .into_iter()
                            .map(|g| proto::Group {
                                id: g.id.0,
                                name: g.name.unwrap_or_default(),
                            })
                            .collect()
                    })
                    .map_err(|e| {
                        tracing::warn!(error = %e, "a Slack voter's groups could not be asked of Graph");
                        "Microsoft Graph cannot be asked about the voter's groups right now; try again later"
                            .to_owned()
                    }),
            )
        })
    }
}

fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "control".to_owned());
    format!("{host}-{}", std::process::id())
}

/// This replica's signing key and the writers it trusts: both required, so
/// that every event it appends says who wrote it and it folds only events
/// whose writers it can name.
pub fn signing(config: &ControlConfig) -> anyhow::Result<(Arc<Signer>, Arc<Trust>)> {
    let Some(path) = &config.control.signing_key else {
        anyhow::bail!(
            "control.signing_key is not set: every event a replica appends must be signed. Create a key \
             pair with `airlock-control signing-key --private control.key --public control.pub`, set \
             control.signing_key to the private key and list the public key in signing.trust as role: control"
        );
    };
    let signer = Signer::load(path).context("control.signing_key")?;
    let Some(section) = &config.signing else {
        anyhow::bail!(
            "no `signing:` section: the control plane folds only events signed by a writer it trusts. \
             List each proxy's and each replica's public key: signing: {{ trust: [{{ role: control, key: \
             control.pub }}, {{ role: proxy, key: proxy.pub, id: proxy-1 }}] }}"
        );
    };
    let trust = section.load().context("signing.trust")?;
    if !trust
        .keys()
        .iter()
        .any(|k| k.role == Role::Control && k.key_id == signer.key_id())
    {
        anyhow::bail!(
            "signing.trust does not list this replica's own key ({}) as role: control: its decisions \
             would be refused by every proxy",
            signer.key_id()
        );
    }
    if !trust.has_role(Role::Proxy) {
        tracing::warn!("signing.trust lists no proxy key: every event a proxy writes will be refused");
    }
    if trust.unsigned_before() > 0 {
        tracing::info!(
            below = trust.unsigned_before(),
            "accepting unsigned events stored below this sequence as history"
        );
    }
    Ok((Arc::new(signer), Arc::new(trust)))
}

/// `signing.unsigned_before` may only name history: unsigned events below
/// it are accepted, so a cut beyond the end of the log would accept
/// unsigned events anyone can still append (votes, grants, kills).
pub async fn check_unsigned_cut(log: &EventLog) -> anyhow::Result<()> {
    let Some(cut) = log.trust().map(Trust::unsigned_before).filter(|c| *c > 0) else {
        return Ok(());
    };
    let last = log.last_sequence().await?;
    if cut > last + 1 {
        anyhow::bail!(
            "signing.unsigned_before is {cut}, but the log ends at sequence {last}: unsigned events \
             appended from now on would be accepted. Set it to at most {} (the first sequence written \
             with signing on)",
            last + 1
        );
    }
    Ok(())
}

/// Runs until SIGINT or SIGTERM.
pub async fn serve(config: ControlConfig) -> anyhow::Result<()> {
    airlock_telemetry::survive_hangup(
        "airlock-control",
        "nothing to do: TLS files are re-read within a second of changing; the rest is read at start",
    );
    let replica = config
        .control
        .replica_id
        .clone()
        .unwrap_or_else(default_replica_id);
    ProxyId::parse(&replica).with_context(|| "control.replica_id")?;
    let source = proto::Source {
        kind: proto::source::Kind::Control as i32,
        id: replica.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        host: String::new(),
    };
    let (signer, trust) = signing(&config)?;
    let log = EventLog::connect(config.nats.clone())
        .await?
        .with_signer(signer)
        .with_trust(trust);
    ensure_stream(&log).await?;
    check_unsigned_cut(&log).await?;
    let verifier = Verifier::new(config.identity.clone()).context("identity configuration")?;
    // Callers with group overage: Graph is asked about the groups that give
    // rights here (and those of identity.group_names).
    verifier.ask_graph_about(
        config
            .approvals
            .reviewers
            .iter()
            .chain(&config.control.auditors)
            .chain(&config.policy_groups),
    );
    let signer = match &config.control.checkpoints {
        Some(c) => Some((
            crate::checkpoint::CheckpointSigner::load(&c.signing_key)?,
            c.interval,
        )),
        None => {
            tracing::warn!("control.checkpoints is not set: no signed checkpoints will be appended");
            None
        }
    };
    let started = std::time::Instant::now();
    let (start, snapshot) = if config.control.snapshot_interval.is_zero() {
        (Projection::new(), Err("snapshots are off".to_owned()))
    } else {
        crate::snapshot::load(&log).await
    };
    if let Err(why) = &snapshot {
        tracing::info!(reason = %why, "starting without a snapshot: folding the whole log");
    }
    let live = Live::spawn(log.clone(), start).await;
    // The newest checkpoint in the log, for its metrics: a replica started
    // from a snapshot that covers it folds it no more.
    match log.last(airlock_eventlog::subjects::CHECKPOINT).await {
        Ok(Some(stored)) if log.trust().is_none_or(|t| t.check(&stored).is_ok()) => {
            live.metrics()
                .checkpoint_folded(stored.sequence, stored.stored_at.into());
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "reading the newest checkpoint for the metrics"),
    }
    {
        let live = live.clone();
        tokio::spawn(async move {
            if live.wait_ready(std::time::Duration::from_secs(24 * 3600)).await {
                tracing::info!(
                    sequence = live.sequence(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "caught up with the log"
                );
            }
        });
    }
    if !config.control.snapshot_interval.is_zero() {
        tokio::spawn(crate::snapshot::save_forever(
            live.clone(),
            log.clone(),
            config.control.snapshot_interval,
            config.control.snapshot_min_events,
        ));
    }
    if let Some((signer, interval)) = signer {
        live.metrics().checkpoints_expected();
        tracing::info!(
            key_id = signer.key_id(),
            ?interval,
            "appending signed checkpoints"
        );
        tokio::spawn(crate::checkpoint::checkpoint_forever(
            log.clone(),
            signer,
            source.clone(),
            interval,
        ));
    }

    let (tls, attach) = grpc_builder(&config)?;
    let presence = crate::presence::Presence::new(config.control.proxy_lost_after);
    let control = Control {
        live: live.clone(),
        log: log.clone(),
        auth: Arc::new(VerifierAuth(verifier)),
        source: source.clone(),
        kill_groups: by_name_and_id(&config, &config.approvals.reviewers),
        auditor_groups: by_name_and_id(&config, &config.control.auditors),
        attach,
        presence: presence.clone(),
        floor_acrs: config.approvals.require_acrs.clone(),
        slack: config
            .control
            .slack
            .clone()
            .map(|section| crate::slack::SlackLinks {
                section,
                groups: by_name_and_id(
                    &config,
                    &[config.approvals.reviewers.clone(), config.policy_groups.clone()].concat(),
                ),
            }),
    };
    tokio::spawn(crate::presence::run(
        presence.clone(),
        log.clone(),
        replica.clone(),
    ));
    tokio::spawn(crate::act::reconcile_forever(
        live.clone(),
        log.clone(),
        source,
        config.control.reconcile_interval,
        presence,
    ));

    let (serving, health) = Serving::start(live.clone()).await;
    spawn_http(&config.control, &live, &serving);

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(airlock_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("gRPC reflection")?;
    let listen = config.control.listen;
    tracing::info!(%listen, %replica, tls = config.control.tls.is_some(), ?attach, "control plane serving");
    // Pings find a peer that vanished without closing (its host lost):
    // its Attach stream ends, and its proxy counts as gone in time.
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
        .add_service(reflection)
        .add_service(health)
        .add_service(proto::reviewer_service_server::ReviewerServiceServer::new(
            control.clone(),
        ))
        .add_service(proto::proxy_service_server::ProxyServiceServer::new(
            control.clone(),
        ))
        .add_service(proto::audit_service_server::AuditServiceServer::new(control));
    let stop = async move {
        shutdown().await;
        // While connections are still open: health watchers hear it.
        serving.shutting_down().await;
    };
    match tls {
        Some(tls) => {
            tls.certificate
                .watch("control.tls", live.metrics().reloads.clone());
            router
                .serve_with_incoming_shutdown(tls.incoming(listen).await?, stop)
                .await
        }
        None => router.serve_with_shutdown(listen, stop).await,
    }
    .with_context(|| format!("serving gRPC on {listen}"))?;
    tracing::info!("control plane stopped");
    Ok(())
}

/// Groups named in `names` (names from `identity.group_names`, or object
/// ids), by name and by object id.
fn by_name_and_id(config: &ControlConfig, names: &[String]) -> Vec<String> {
    let mut groups = names.to_vec();
    for g in names {
        if let Some(id) = config.identity.group_names.get(g) {
            groups.push(id.clone());
        }
    }
    groups
}

/// The gRPC server with `control.tls` applied, and how Attach
/// authenticates proxies.
fn grpc_builder(config: &ControlConfig) -> anyhow::Result<(Option<GrpcListener>, AttachAuth)> {
    let listen = config.control.listen;
    let mut listener = None;
    let mut attach = if config.control.allow_insecure_attach_loopback {
        AttachAuth::InsecureLoopback
    } else {
        AttachAuth::Refused
    };
    match &config.control.tls {
        Some(tls) => {
            if tls.client_ca.is_some() {
                attach = AttachAuth::ClientCertificate;
            }
            listener = Some(GrpcListener::load(tls)?);
        }
        None if !listen.ip().is_loopback() => tracing::warn!(
            %listen,
            "control.tls is not set: gRPC is plain text on a non-loopback address, and reviewers' \
             tokens cross it in the clear"
        ),
        None => {}
    }
    match attach {
        AttachAuth::ClientCertificate => {}
        AttachAuth::InsecureLoopback => tracing::warn!(
            "control.allow_insecure_attach_loopback is set: any client on this host may attach as \
             a proxy and receive its decisions and kill orders (development only)"
        ),
        AttachAuth::Refused => tracing::warn!(
            "control.tls.client_ca is not set: Attach is refused to every proxy (set it, or for \
             development on one host control.allow_insecure_attach_loopback: true)"
        ),
    }
    Ok((listener, attach))
}

/// Serves `/livez`, `/readyz` and `/healthz` on `control.health_listen`
/// and `/metrics` on `control.metrics_listen`, on one listener when they
/// are the same address. A listener that fails is logged; the replica goes
/// on.
fn spawn_http(control: &ControlSection, live: &Arc<Live>, serving: &Serving) {
    let mut apps: Vec<(SocketAddr, axum::Router)> = Vec::new();
    let mut add = |addr: SocketAddr, app: axum::Router| match apps.iter_mut().find(|(a, _)| *a == addr) {
        Some((_, existing)) => *existing = std::mem::take(existing).merge(app),
        None => apps.push((addr, app)),
    };
    if let Some(addr) = control.health_listen {
        add(addr, health_routes(live.clone(), serving.clone()));
    }
    if let Some(addr) = control.metrics_listen {
        add(addr, crate::metrics::router(live.clone()));
    }
    for (addr, app) in apps {
        tokio::spawn(async move {
            let served = match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => axum::serve(listener, app).await,
                Err(e) => Err(e),
            };
            if let Err(e) = served {
                tracing::error!(%addr, error = %e, "HTTP endpoint (health, metrics) failed");
            }
        });
    }
}

/// `/livez`: the process answers (a liveness probe restarts a replica only
/// then, never for a log that is away). `/readyz`: 200 while the replica
/// can decide (caught up with the log, the log answering, not shutting
/// down), as the gRPC health service says; 503 otherwise. `/healthz`: 200
/// once caught up with the log (as before `/readyz` existed).
fn health_routes(live: Arc<Live>, serving: Serving) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    let caught_up = live.clone();
    axum::Router::new()
        .route("/livez", get(|| async { "alive\n" }))
        .route(
            "/readyz",
            get(move || {
                let serving = serving.clone();
                let live = live.clone();
                async move {
                    if serving.is_serving().await {
                        (
                            StatusCode::OK,
                            format!("ready: folded up to sequence {}\n", live.sequence()),
                        )
                    } else {
                        let why = if serving.is_stopping().await {
                            "shutting down"
                        } else if !live.is_ready() {
                            "catching up with the log"
                        } else {
                            "the log does not answer"
                        };
                        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"))
                    }
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let live = caught_up.clone();
                async move {
                    if live.is_ready() {
                        (
                            StatusCode::OK,
                            format!("ready: folded up to sequence {}\n", live.sequence()),
                        )
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "catching up with the log\n".to_owned(),
                        )
                    }
                }
            }),
        )
}

/// Creates or checks the log's stream, waiting while JetStream cannot
/// answer yet (a cluster starting with its replicas, still electing a
/// leader): a replica that exited instead would only be restarted. A stream
/// set up to weaken the log, or any other error, ends the start.
async fn ensure_stream(log: &EventLog) -> anyhow::Result<()> {
    let mut attempts = 0u32;
    loop {
        match log.ensure_stream().await {
            Ok(()) => return Ok(()),
            Err(e)
                if matches!(&e, airlock_eventlog::Error::Stream { detail, .. }
                    if not_yet_answering(detail)) =>
            {
                if attempts.is_multiple_of(15) {
                    tracing::warn!(
                        error = %e,
                        "the event log's stream cannot be created or read yet; retrying (a NATS user \
                         not allowed to use JetStream's API also times out)"
                    );
                }
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What JetStream answers while it cannot serve yet: a cluster electing
/// its leader, its peers not all joined, the server not answering on
/// JetStream's API. Anything else (limits, replicas beyond the cluster, an
/// unknown account) is a refusal.
fn not_yet_answering(detail: &str) -> bool {
    let detail = detail.to_lowercase();
    [
        "timed out",
        "temporarily unavailable",
        "jetstream unavailable",
        "no responders",
        "insufficient resources",
        "code 503",
    ]
    .iter()
    .any(|s| detail.contains(s))
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod stream_tests {
    use super::not_yet_answering;

    #[test]
    fn a_starting_cluster_is_waited_for_and_a_refusal_is_not() {
        // As async-nats words them.
        for waiting in [
            "jetstream request timed out",
            "jetstream error: JetStream system temporarily unavailable (code 503, error code 10008)",
            "jetstream error: insufficient resources (code 503, error code 10023)",
            "jetstream unavailable",
            "request error: no responders",
        ] {
            assert!(not_yet_answering(waiting), "{waiting}");
        }
        for refused in [
            "jetstream error: replicas > 1 not supported in non-clustered mode (code 500, error code 10074)",
            "jetstream error: maximum number of streams reached (code 400, error code 10027)",
            "jetstream error: subjects overlap with an existing stream (code 400, error code 10065)",
        ] {
            assert!(!not_yet_answering(refused), "{refused}");
        }
    }
}
