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
