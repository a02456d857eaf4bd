//! `airlock-proxy --config airlock.yaml`: wires the parts together and
//! serves until SIGINT or SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{EventLog, ProxyId, new_event, subjects};
use airlock_identity::Verifier;
use airlock_policy::PolicySet;
use anyhow::Context;

use crate::attach::{self, Holds};
use crate::config::ProxyConfig;
use crate::policy_gate::PolicyGate;
use crate::record::Recorder;
use crate::server::{Server, ServerSettings, TlsFiles};
use crate::session::Deps;

/// Loud at every load: a record-only policy lets everything through.
fn warn_record_only(policies: &PolicySet) {
    for p in policies.policies.iter().filter(|p| p.records_only()) {
        tracing::warn!(
            policy = %p.name,
            connection = %p.connection,
            "record-only policy: every statement of this group on this connection runs ungated (recorded, not judged)"
        );
    }
}

fn policy_loaded(source: &proto::Source, policies: &PolicySet) -> proto::Event {
    new_event(
        source,
        Body::PolicyLoaded(proto::PolicyLoaded {
            policies: policies
                .policies
                .iter()
                .map(|p| proto::policy_loaded::Loaded {
                    policy: p.name.clone(),
                    connection: p.connection.clone(),
                    digest: p.digest().to_owned(),
                    source: p.source.clone(),
                })
                .collect(),
        }),
    )
}

/// Re-reads the policies from airlock.yaml. A file that does not check
/// keeps the policies in force (the error says why); a good one is enforced
/// from the next statement of every session and recorded as PolicyLoaded
/// (through `record`, one append at a time). Connections, identity and
/// listen addresses are read only at start: a file that changes the group
/// names or the connections the policies bind to is refused (the verifier
/// would still map tokens with the old names). Runs when the file changes
/// on disk and on SIGHUP.
fn policy_reloader(
    path: std::path::PathBuf,
    gate: Arc<PolicyGate>,
    at_start: &PolicySet,
    source: proto::Source,
    record: tokio::sync::mpsc::UnboundedSender<proto::Event>,
) -> airlock_reload::Apply {
    let group_names = at_start.group_names.clone();
    let schemas = |p: &PolicySet| {
        p.connections
            .iter()
            .map(|(name, c)| (name.clone(), c.default_schema.clone()))
            .collect::<Vec<_>>()
    };
    let connections = schemas(at_start);
    Arc::new(move || {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{file}: {e}"))?;
        let policies = PolicySet::from_config_yaml(&text, &file).map_err(|e| e.to_string())?;
        if policies.group_names != group_names {
            return Err(format!(
                "{file}: identity.group_names changed; it is read at start only, so restart the proxy to change it"
            ));
        }
        if schemas(&policies) != connections {
            return Err(format!(
                "{file}: the connections (names or default_schema) changed; they are read at start only, so restart the proxy to change them"
            ));
        }
        warn_record_only(&policies);
        let event = policy_loaded(&source, &policies);
        gate.replace_policies(policies);
        // A broken shadow section never holds back the enforced policies.
        match PolicySet::shadow_from_config_yaml(&text, &file) {
            Ok(shadow) => gate.replace_shadow(shadow),
            Err(e) => {
                tracing::error!(error = %e, "shadow_policies not reloaded (the previous ones stay); the enforced policies were")
            }
        }
        let _ = record.send(event);
        Ok(())
    })
}

/// Appends this proxy's PolicyLoaded events in order, one at a time, each
/// chained after the last it stored (`floor`: whatever else is last on the
/// subject).
async fn record_policy_loads(
    log: EventLog,
    subject: String,
    mut floor: u64,
    mut events: tokio::sync::mpsc::UnboundedReceiver<proto::Event>,
) {
    while let Some(event) = events.recv().await {
        let mut stored = false;
        for _ in 0..5 {
            match log.append_next_from(&subject, event.clone(), floor).await {
                Ok((_, appended)) => {
                    floor = floor.max(appended.chain_index);
                    stored = true;
                    break;
                }
                Err(airlock_eventlog::Error::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "could not record PolicyLoaded after reload");
                    break;
                }
            }
        }
        if !stored {
            tracing::error!("PolicyLoaded after reload not recorded: the proxy's subject kept changing");
        }
    }
}

async fn reload_on_hangup(
    apply: airlock_reload::Apply,
    reloads: airlock_reload::Reloads,
    gate: Arc<PolicyGate>,
) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        airlock_reload::run("policies", &reloads, &apply);
        gate.reread_catalogs();
    }
}

fn default_proxy_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "proxy".to_owned());
    format!("{host}-{}", std::process::id())
}

pub async fn run(config: ProxyConfig) -> anyhow::Result<()> {
    let proxy_id = config.proxy.proxy_id.clone().unwrap_or_else(default_proxy_id);
    let proxy_id = ProxyId::parse(&proxy_id).context("proxy.proxy_id")?;
    let file = config.path.display().to_string();
    let policies = PolicySet::from_config_yaml(&config.text, &file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let shadow =
        PolicySet::shadow_from_config_yaml(&config.text, &file).map_err(|e| anyhow::anyhow!("{e}"))?;
    warn_record_only(&policies);
    let verifier = Verifier::new(config.identity.clone()).context("identity configuration")?;
    let (signer, trust) = crate::check::signing(&config)?;
    // The id may come from --proxy-id, which the file's check did not see.
    crate::check::own_key_trusted(&trust, &signer, Some(proxy_id.as_str()))?;
    let log = EventLog::connect(config.nats.clone())
        .await?
        .with_signer(signer)
        .with_trust(trust);
    wait_for_stream(&log).await?;

    let source = proto::Source {
        kind: proto::source::Kind::Proxy as i32,
        id: proxy_id.to_string(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        host: String::new(),
    };
    // Say which policies this proxy enforces.
    let (_, loaded) = log
        .append_next(&subjects::proxy(&proxy_id), policy_loaded(&source, &policies))
        .await
        .context("recording PolicyLoaded")?;
    let (record_loads, loads) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(record_policy_loads(
        log.clone(),
        subjects::proxy(&proxy_id),
        loaded.chain_index,
        loads,
    ));

    let cancels = match crate::check::cancel_key(&config)? {
        Some(key) => crate::cancel::Cancels::with_key(key),
        None => {
            tracing::info!(
                "proxy.cancel_key_env is not set: cancel requests reach only the sessions of \
                 the proxy they arrive at"
            );
            crate::cancel::Cancels::new()
        }
    };
    tokio::spawn(cancels.clone().listen(log.client().clone()));
    let holds = Holds::new();
    let control_tls = config
        .proxy
        .control_tls
        .as_ref()
        .map(attach::ControlTls::load)
        .transpose()?;
    tokio::spawn(attach::run_with_tls(
        config.proxy.control.values(),
        control_tls.clone(),
        proxy_id.to_string(),
        holds.clone(),
    ));
    let at_start = policies.clone();
    let gate = Arc::new(PolicyGate::new(
        verifier,
        policies,
        config.connections.clone(),
        config.identity.group_names.clone(),
        config.proxy.catalog_refresh,
    ));
    if !shadow.policies.is_empty() {
        tracing::info!(
            policies = shadow.policies.len(),
            "shadow policies judged beside the enforced ones (recorded, never enforced)"
        );
    }
    gate.replace_shadow(shadow);
    // Up to 128 sessions' appends in flight at once (each session's in order).
    let recorder = Recorder::spawn(
        log.clone(),
        128,
        config.proxy.record_buffer,
        config.proxy.record_linger,
    );
    let metrics = crate::metrics::Metrics::new(&recorder.stats);
    let reload = policy_reloader(
        config.path.clone(),
        gate.clone(),
        &at_start,
        source.clone(),
        record_loads,
    );
    // Changes are watched from the text loaded at start, not from what the
    // file holds by now: an edit made while the proxy started is applied.
    airlock_reload::watch_every(
        "policies",
        vec![config.path.clone()],
        metrics.reloads.clone(),
        reload.clone(),
        airlock_reload::POLL,
        airlock_reload::fingerprint_of(&[config.text.as_bytes()]),
    );
    tokio::spawn(reload_on_hangup(reload, metrics.reloads.clone(), gate.clone()));
    if let Some(tls) = &control_tls {
        tls.watch(metrics.reloads.clone());
    }
    let (phase_tx, phase) = tokio::sync::watch::channel(crate::session::Phase::Running);
    if let Some(addr) = config.proxy.metrics_listen {
        let m = metrics.clone();
        let health = crate::health::router(crate::health::Readiness {
            holds: holds.clone(),
            nats: log.client().clone(),
            phase: phase.clone(),
            gate: gate.clone(),
        });
        let sample = {
            let (holds, recorder) = (holds.clone(), recorder.clone());
            move |m: &crate::metrics::Metrics| {
                m.sample(holds.is_attached(), recorder.buffered(), recorder.capacity())
            }
        };
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, m, sample, health).await {
                tracing::error!(%addr, error = %e, "metrics endpoint failed");
            }
        });
    }
    let deps = Deps {
        gate: gate.clone(),
        log: log.clone(),
        recorder: recorder.clone(),
        holds,
        source,
        reviewer_url: config.proxy.reviewer_url.clone(),
        expiry_grace: Duration::from_secs(5),
        impact: config.proxy.impact_limits(),
        cancels,
        metrics: metrics.clone(),
        phase,
    };
    let mut settings = ServerSettings::new(config.proxy.listen);
    settings.tls = config.proxy.tls.as_ref().map(|t| TlsFiles {
        cert: t.cert.clone(),
        key: t.key.clone(),
    });
    settings.allow_plaintext_loopback = config.proxy.allow_plaintext_loopback;
    settings.max_connections = config.proxy.max_connections;
    settings.max_unauthenticated = config
        .proxy
        .max_unauthenticated
        .unwrap_or(config.proxy.max_connections / 4)
        .max(1);
    settings.startup_timeout = config.proxy.startup_timeout;
    if settings.tls.is_none() && !settings.allow_plaintext_loopback {
        anyhow::bail!("proxy.tls is not set and plain text is not allowed: no client could log in");
    }
    let server = Server::bind(settings).await?;
    if let Some(certificate) = server.certificate() {
        certificate.watch("proxy.tls", metrics.reloads.clone());
    }
    tracing::info!(listen = %config.proxy.listen, proxy = %proxy_id, "proxy serving");
    let serving = tokio::spawn(server.run(Arc::new(deps)));
    shutdown().await;
    // Drain: stop accepting, refuse held statements, let sessions finish up
    // to the deadline, then end the rest.
    let deadline = config.proxy.drain_timeout;
    tracing::info!(?deadline, "draining");
    let _ = phase_tx.send(crate::session::Phase::Draining);
    let _ = serving.await;
    let until = tokio::time::Instant::now() + deadline;
    while metrics.sessions_open() > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = phase_tx.send(crate::session::Phase::Stopping);
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while metrics.sessions_open() > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every recorded event reaches the log before the process ends.
    if !recorder.flush(Duration::from_secs(30)).await {
        tracing::error!(
            left = recorder.buffered(),
            "stopping with events not yet in the log"
        );
    }
    tracing::info!("proxy stopped");
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        let _ = ctrl_c.await;
        return;
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// Checks the event log's stream, waiting while it cannot be read: the
/// proxy never creates it (its NATS user may not; `airlock-control serve`
/// does). A stream that exists and could lose events is an error at once.
async fn wait_for_stream(log: &EventLog) -> anyhow::Result<()> {
    let mut attempts = 0u32;
    loop {
        match log.check_stream().await {
            Ok(()) => return Ok(()),
            Err(e @ airlock_eventlog::Error::StreamMisconfigured { .. }) => return Err(e.into()),
            Err(e) => {
                if attempts.is_multiple_of(30) {
                    tracing::warn!(
                        error = %e,
                        "the event log's stream cannot be read yet (airlock-control serve creates it); waiting"
                    );
                }
                attempts += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
