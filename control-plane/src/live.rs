//! The projection kept current: a task tails the log and folds every event,
//! publishing each one to subscribers (Attach streams, Watch streams) after
//! it is folded. If the log goes away the tailer retries from the next
//! sequence it needs; nothing is skipped or folded twice. A second task asks
//! the log for its last sequence every second, so the replica knows whether
//! the log is reachable and how far the fold is behind it.
//!
//! Once caught up, folding an event of a request's lifecycle that carries a
//! trace context is a span of that trace (replaying history at start-up
//! adds nothing to old traces).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use airlock_eventlog::proto::event::Body;
use airlock_eventlog::signing::{Role, Trust, Vouched};
use airlock_eventlog::subjects::{SubjectKind, classify};
use airlock_eventlog::{EventLog, ReadFilter, StoredEvent};
use futures::StreamExt;
use tokio::sync::{broadcast, watch};

use crate::metrics::Metrics;
use crate::projection::Projection;

/// How often the log is asked for its last sequence, and how long an
/// answer may take before the log counts as unreachable.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared, live state of one replica.
#[derive(Debug)]
pub struct Live {
    state: RwLock<Projection>,
    folded: watch::Sender<u64>,
    changes: broadcast::Sender<Arc<StoredEvent>>,
    ready: AtomicBool,
    /// Whether the log answered the last probe, and the last sequence it
    /// reported then.
    log_reachable: AtomicBool,
    log_sequence: AtomicU64,
    metrics: Metrics,
    /// The chain index of the last event folded on each subject, so that a
    /// signed event published again is not folded twice.
    chain_index: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl Live {
    /// The chain index of the last event folded on `subject` (0: none). A
    /// writer continues from at least this, whatever the last message on
    /// the subject says: a stored copy of an older signed event carries an
    /// older index, and an event linked after it would be refused as a
    /// replay.
    pub fn chain_index(&self, subject: &str) -> u64 {
        self.chain_index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(subject)
            .copied()
            .unwrap_or(0)
    }

    /// Starts folding `log` from `start` (a loaded snapshot, or empty).
    /// Ready once it has folded everything stored when it started.
    pub async fn spawn(log: EventLog, start: Projection) -> Arc<Live> {
        let last = log.last_sequence().await;
        let (folded, _) = watch::channel(start.sequence);
        let (changes, _) = broadcast::channel(4096);
        let live = Arc::new(Live {
            state: RwLock::new(start),
            folded,
            changes,
            ready: AtomicBool::new(false),
            log_reachable: AtomicBool::new(last.is_ok()),
            log_sequence: AtomicU64::new(*last.as_ref().unwrap_or(&0)),
            metrics: Metrics::new(),
            chain_index: Default::default(),
        });
        let target = last.unwrap_or(0);
        if live.sequence() >= target {
            live.ready.store(true, Ordering::Release);
        }
        tokio::spawn(tail(live.clone(), log.clone(), target));
        tokio::spawn(probe(live.clone(), log));
        live
    }

    /// This replica's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the log answered the last probe (within a second or two).
    pub fn log_reachable(&self) -> bool {
        self.log_reachable.load(Ordering::Acquire)
    }

    /// Events in the log not yet folded, as of the last probe.
    pub fn lag(&self) -> u64 {
        self.log_sequence
            .load(Ordering::Acquire)
            .saturating_sub(self.sequence())
    }

    /// Records a probe's answer: the log's last sequence, or none.
    fn probed(&self, last: Option<u64>) {
        if let Some(sequence) = last {
            self.log_sequence.store(sequence, Ordering::Release);
        }
        let was = self.log_reachable.swap(last.is_some(), Ordering::AcqRel);
        match (was, last.is_some()) {
            (true, false) => tracing::warn!("the event log does not answer"),
            (false, true) => tracing::info!("the event log answers"),
            (true, true) | (false, false) => {}
        }
    }

    /// Runs `f` on the current state. Keep it short: the tailer waits.
    pub fn read<R>(&self, f: impl FnOnce(&Projection) -> R) -> R {
        let guard = self.state.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    pub fn sequence(&self) -> u64 {
        *self.folded.borrow()
    }

    /// True once the replica has caught up with the log as it was at start.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Every event folded from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.changes.subscribe()
    }

    /// Waits until the fold has reached `sequence`; false on timeout.
    pub async fn wait_for(&self, sequence: u64, timeout: Duration) -> bool {
        let mut rx = self.folded.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s >= sequence))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until the replica is ready; false on timeout.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn fold(&self, event: StoredEvent, target: u64, trust: Option<&Trust>) {
        let span = self.fold_span(&event);
        let _in = span.enter();
        let sequence = event.sequence;
        let refused = match trust.map(|t| t.check(&event)) {
            None => None,
            Some(Err(why)) => Some((why.label(), why.to_string())),
            Some(Ok(vouched)) => self.out_of_place(&event, &vouched),
        };
        if let Some((label, why)) = refused {
            // Not folded and not published: an event no trusted writer
            // signed changes nothing and reaches no proxy or integrator.
            tracing::warn!(
                sequence,
                subject = %event.subject,
                event_id = %event.event.id,
                reason = %why,
                "event refused: its writer is not trusted for it"
            );
            // Counted as they arrive: refusals met again while catching up
            // at start are logged only, so a restart raises no alert.
            if sequence > target {
                self.metrics.rejected(label);
            }
            self.advance(sequence, target);
            return;
        }
        {
            let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
            guard.apply(&event);
        }
        if let Some(airlock_eventlog::proto::event::Body::Checkpoint(_)) = &event.event.body {
            self.metrics.checkpoint_folded(sequence, event.stored_at.into());
        }
        self.advance(sequence, target);
        // No subscriber is fine.
        let _ = self.changes.send(Arc::new(event));
    }

    /// Marks `sequence` folded without folding anything: a stored message
    /// that is not an event.
    fn pass_over(&self, sequence: u64, target: u64) {
        if sequence > target {
            self.metrics.rejected("undecodable");
        }
        self.advance(sequence, target);
    }

    /// `sequence` is folded (or passed over); ready once at `target`.
    fn advance(&self, sequence: u64, target: u64) {
        self.folded.send_replace(sequence);
        if sequence >= target {
            self.ready.store(true, Ordering::Release);
        }
    }

    /// Why a signed event still has no place in the fold, if it has none:
    /// an older event of its chain published again (a replay: its index is
    /// not past the last one folded), or a proxy writing into a session,
    /// request or proxy subject that another proxy owns (a stolen proxy key
    /// is one proxy's, not the fleet's), or on a request's decision subject
    /// (only the control plane writes there).
    fn out_of_place(&self, stored: &StoredEvent, vouched: &Vouched) -> Option<(&'static str, String)> {
        let e = &stored.event;
        let mut indexes = self.chain_index.lock().unwrap_or_else(|p| p.into_inner());
        let last = indexes.get(&stored.subject).copied().unwrap_or(0);
        if e.chain_index <= last {
            return Some((
                "replayed",
                format!(
                    "its chain index {} is not past {last}, the last folded on {}: an older event published again",
                    e.chain_index, stored.subject
                ),
            ));
        }
        if let Vouched::Signed {
            role: Role::Proxy, ..
        } = vouched
        {
            let writer = e.source.as_ref().map(|s| s.id.as_str()).unwrap_or("");
            let kind = classify(&stored.subject);
            if let SubjectKind::Decision(_) = kind {
                return Some((
                    "wrong_subject",
                    format!(
                        "proxy {writer:?} wrote on {}, where only the control plane writes",
                        stored.subject
                    ),
                ));
            }
            let owner: Option<String> = match (&kind, &e.body) {
                (SubjectKind::Proxy(id), _) => Some(id.clone()),
                (_, Some(Body::SessionOpened(o))) => Some(o.proxy_id.clone()),
                (_, Some(Body::ApprovalRequested(r))) => Some(r.proxy_id.clone()),
                (SubjectKind::Session(id), _) => {
                    self.read(|s| s.sessions.get(id).map(|x| x.summary.proxy_id.clone()))
                }
                (SubjectKind::Request(id), _) => {
                    self.read(|s| s.request(id).map(|r| r.requested().proxy_id.clone()))
                }
                // Any proxy may use a grant: its subject has no owner.
                (
                    SubjectKind::Decision(_)
                    | SubjectKind::Grant(_)
                    | SubjectKind::SlackLink(..)
                    | SubjectKind::Checkpoint
                    | SubjectKind::Other,
                    _,
                ) => None,
            };
            if let Some(owner) = owner
                && owner != writer
            {
                return Some((
                    "wrong_proxy",
                    format!(
                        "proxy {writer:?} wrote on {}, which belongs to proxy {owner:?}",
                        stored.subject
                    ),
                ));
            }
        }
        indexes.insert(stored.subject.clone(), e.chain_index);
        None
    }

    /// The span folding `stored` runs in: disabled unless the event is part
    /// of a request's lifecycle, carries a trace context, and this replica
    /// is live rather than catching up.
    fn fold_span(&self, stored: &StoredEvent) -> tracing::Span {
        let Some(trace) = &stored.event.trace else {
            return tracing::Span::none();
        };
        let (SubjectKind::Request(request) | SubjectKind::Decision(request)) = classify(&stored.subject)
        else {
            return tracing::Span::none();
        };
        if !self.is_ready() {
            return tracing::Span::none();
        }
        let kind = stored
            .event
            .body
            .as_ref()
            .map(airlock_eventlog::body_kind)
            .unwrap_or("none");
        let span = tracing::info_span!("control.fold", request, kind, sequence = stored.sequence);
        airlock_telemetry::continue_trace(&span, &airlock_eventlog::trace::context(Some(trace)));
        span
    }
}

/// Asks the log for its last sequence every [`PROBE_EVERY`], forever.
async fn probe(live: Arc<Live>, log: EventLog) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let last = tokio::time::timeout(PROBE_TIMEOUT, log.last_sequence()).await;
        live.probed(last.ok().and_then(Result::ok));
    }
}

async fn tail(live: Arc<Live>, log: EventLog, target: u64) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let from = live.sequence() + 1;
        match log.tail(from, ReadFilter::all()).await {
            Ok(stream) => {
                futures::pin_mut!(stream);
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(event) => {
                            backoff = Duration::from_millis(100);
                            live.fold(event, target, log.trust());
                        }
                        // A stored message that is not an event: passed over
                        // (resuming would meet it again, forever).
                        Err(airlock_eventlog::Error::Corrupt {
                            sequence,
                            subject,
                            detail,
                        }) => {
                            tracing::warn!(sequence, %subject, %detail, "a message in the log is not an event; passing over it");
                            live.pass_over(sequence, target);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "tailing the log failed; resuming");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, from, "cannot tail the log; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
