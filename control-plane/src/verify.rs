//! `airlock-control verify`: the auditor's check of the log. Reads every
//! event, checks each subject's hash chain, and folds the whole log to
//! report events that do not fit (anomalies).

use std::collections::BTreeMap;

use airlock_eventlog::{EventLog, ReadFilter, StoredEvent, verify_chain};
use futures::StreamExt;
use serde::Serialize;

use crate::projection::Projection;

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub events: u64,
    pub chains: usize,
    pub last_sequence: u64,
    pub anomalies: u64,
    pub broken: Vec<String>,
    pub ok: bool,
}

pub async fn verify(log: &EventLog) -> anyhow::Result<VerifyReport> {
    let stream = log.read(0, ReadFilter::all()).await?;
    futures::pin_mut!(stream);
    let mut chains: BTreeMap<String, Vec<StoredEvent>> = BTreeMap::new();
    let mut fold = Projection::new();
    let mut events = 0u64;
    let mut broken = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(e) => {
                events += 1;
                fold.apply(&e);
                chains.entry(e.subject.clone()).or_default().push(e);
            }
            Err(e) => broken.push(e.to_string()),
        }
    }
    for chain in chains.values() {
        if let Err(e) = verify_chain(chain) {
            broken.push(e.to_string());
        }
    }
    Ok(VerifyReport {
        events,
        chains: chains.len(),
        last_sequence: fold.sequence,
        anomalies: fold.anomalies,
        ok: broken.is_empty(),
        broken,
    })
}

/// What `airlock-control replay` prints: the state the log folds to.
#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub events: u64,
    pub last_sequence: u64,
    pub requests: BTreeMap<String, usize>,
    pub sessions_open: usize,
    pub sessions_closed: usize,
    pub proxies: usize,
    pub anomalies: u64,
    pub seconds: f64,
    pub events_per_second: f64,
}

/// Folds the whole log from the start, as a fresh replica would.
pub async fn replay(log: &EventLog) -> anyhow::Result<ReplayReport> {
    let started = std::time::Instant::now();
    let stream = log.read(0, ReadFilter::all()).await?;
    futures::pin_mut!(stream);
    let mut fold = Projection::new();
    let mut events = 0u64;
    while let Some(item) = stream.next().await {
        fold.apply(&item?);
        events += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut requests: BTreeMap<String, usize> = BTreeMap::new();
    for r in fold.requests.values() {
        let state = r
            .state()
            .as_str_name()
            .trim_start_matches("REQUEST_STATE_")
            .to_lowercase();
        *requests.entry(state).or_default() += 1;
    }
    let open = fold
        .sessions
        .values()
        .filter(|s| s.summary.state == airlock_eventlog::proto::SessionState::Open as i32)
        .count();
    Ok(ReplayReport {
        events,
        last_sequence: fold.sequence,
        requests,
        sessions_open: open,
        sessions_closed: fold.sessions.len() - open,
        proxies: fold.proxies.len(),
        anomalies: fold.anomalies,
        seconds,
        events_per_second: if seconds > 0.0 {
            events as f64 / seconds
        } else {
            0.0
        },
    })
}
