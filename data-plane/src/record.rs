//! Recording session events without making the allowed path wait on the
//! log. Events go into a bounded buffer; workers append them in order per
//! session (one hash chain each), every append acknowledged, and retried
//! with the same event id until it is. A full buffer is reported to the
//! caller, which then refuses the statement rather than run it unrecorded.
//!
//! Sessions are spread over workers by id, so one slow session never holds
//! up the others' order, and each session's events stay in order.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{ChainWriter, EventLog, SessionId, subjects};
use tokio::sync::mpsc;

/// The buffer is full: the log is slow or away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event log is not keeping up (recording buffer full)")]
pub struct RecorderFull;

#[derive(Debug)]
struct Job {
    session: SessionId,
    event: proto::Event,
    /// Told once this job (and so every earlier one of the session) is in
    /// the log.
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct RecorderStats {
    pub appended: AtomicU64,
    pub retries: AtomicU64,
}

/// Handle to the recording workers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Recorder {
    shards: Arc<Vec<mpsc::Sender<Job>>>,
    pub stats: Arc<RecorderStats>,
}

impl Recorder {
    /// Starts `workers` workers sharing a buffer of `capacity` events.
    pub fn spawn(log: EventLog, workers: usize, capacity: usize) -> Recorder {
        let workers = workers.max(1);
        let stats = Arc::new(RecorderStats::default());
        let mut shards = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::channel((capacity / workers).max(1));
            tokio::spawn(worker(log.clone(), rx, stats.clone()));
            shards.push(tx);
        }
        Recorder {
            shards: Arc::new(shards),
            stats,
        }
    }

    /// Queues a session event. Never waits.
    pub fn record(&self, session: &SessionId, event: proto::Event) -> Result<(), RecorderFull> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        session.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % self.shards.len()];
        shard
            .try_send(Job {
                session: session.clone(),
                event,
                done: None,
            })
            .map_err(|_| RecorderFull)
    }

    /// Queues a session event and waits until it, and every earlier event
    /// of the session, is in the log (or `timeout` passes: false).
    pub async fn record_and_wait(&self, session: &SessionId, event: proto::Event, timeout: Duration) -> bool {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        session.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % self.shards.len()];
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            session: session.clone(),
            event,
            done: Some(tx),
        };
        if shard.try_send(job).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())))
    }

    /// Events buffered and not yet handed to a worker's append (the event a
    /// worker is appending right now is not counted).
    pub fn buffered(&self) -> usize {
        self.shards.iter().map(|s| s.max_capacity() - s.capacity()).sum()
    }

    /// Waits until the buffer is empty, up to `timeout`; false if not.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        while self.buffered() > 0 {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the appends in progress finish.
        tokio::time::sleep(Duration::from_millis(200)).await;
        true
    }

    /// Reserves room for one event of `session`, to be filled when the
    /// statement completes: an allowed statement runs only if its record is
    /// certain to be buffered.
    pub fn reserve(&self, session: &SessionId) -> Result<Slot, RecorderFull> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        session.hash(&mut h);
        let shard = self.shards[(h.finish() as usize) % self.shards.len()].clone();
        let permit = shard.try_reserve_owned().map_err(|_| RecorderFull)?;
        Ok(Slot {
            permit,
            session: session.clone(),
        })
    }
}

/// Room for one event, reserved in advance.
#[derive(Debug)]
pub struct Slot {
    permit: mpsc::OwnedPermit<Job>,
    session: SessionId,
}

impl Slot {
    pub fn send(self, event: proto::Event) {
        let Slot { permit, session } = self;
        permit.send(Job {
            session,
            event,
            done: None,
        });
    }
}

async fn worker(log: EventLog, mut jobs: mpsc::Receiver<Job>, stats: Arc<RecorderStats>) {
    let mut chains: HashMap<SessionId, ChainWriter> = HashMap::new();
    while let Some(job) = jobs.recv().await {
        let closing = matches!(job.event.body, Some(Body::SessionClosed(_)));
        let writer = chains
            .entry(job.session.clone())
            .or_insert_with(|| ChainWriter::new(subjects::session(&job.session)));
        let mut backoff = Duration::from_millis(100);
        // Until acknowledged: an event handed to the recorder is never
        // dropped. Retries keep the event id, so it is stored once.
        loop {
            match writer.append(&log, job.event.clone()).await {
                Ok(_) => {
                    stats.appended.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(session = %job.session, event = %job.event.id, error = %e, "recording failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if let Some(done) = job.done {
            let _ = done.send(());
        }
        if closing {
            chains.remove(&job.session);
        }
    }
}
