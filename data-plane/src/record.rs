//! Recording session events without making the allowed path wait on the
//! log. Events go into a bounded buffer; each session's events are appended
//! in order (one hash chain per session), every append acknowledged, and
//! retried with the same event id until it is. A full buffer is reported to
//! the caller, which then refuses the statement rather than run it
//! unrecorded.
//!
//! Each session with events to write has its own writer task, so a session
//! waits only on its own appends: one slow session never holds up the
//! others, and many sessions' appends are in flight at once (up to a
//! limit). An append needs the acknowledgement of the one before it (it
//! names the chain's last sequence), so a session's own appends cannot
//! overlap; sessions' appends can, and that is where the throughput is.
//!
//! A busy session's allowed statements are grouped: the writer takes every
//! `StatementExecuted` queued behind the first (waiting at most `linger` for
//! more) and appends them as one `StatementsExecuted` event. An append costs
//! the log, the proxy and every reader about the same whether it carries one
//! statement or fifty, so on a session running thousands of statements a
//! second this is what keeps recording from costing more than the statements
//! themselves. Anything else (a session opening or closing, a refusal, an
//! approval, a statement that ran after an approval, an event a caller waits
//! for) ends a group and is appended on its own, in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{ChainWriter, EventId, EventLog, MAX_EVENT_BYTES, SessionId, subjects};
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Why [`Recorder::record_and_wait`] could not confirm an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRecorded {
    /// No room in the buffer: the event was not queued and never will be.
    NoRoom,
    /// Queued, but not in the log in time: it may still get there.
    Late,
}

/// The buffer is full: the log is slow or away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event log is not keeping up (recording buffer full)")]
pub struct RecorderFull;

#[derive(Debug)]
struct Job {
    event: proto::Event,
    /// Told once this job (and so every earlier one of the session) is in
    /// the log.
    done: Option<tokio::sync::oneshot::Sender<()>>,
    /// This job's room in the buffer, given back when a writer takes it.
    room: OwnedSemaphorePermit,
}

/// Counters for metrics and tests (shared with the metrics registry).
#[derive(Debug)]
pub struct RecorderStats {
    pub appended: prometheus_client::metrics::counter::Counter,
    pub retries: prometheus_client::metrics::counter::Counter,
    /// Each append's time until the log answered (acknowledged or failed).
    pub append_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for RecorderStats {
    fn default() -> RecorderStats {
        RecorderStats {
            appended: Default::default(),
            retries: Default::default(),
            // 100 us to about 26 s: an acknowledged append is a round trip
            // to the stream's leader and its replicas.
            append_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 4.0, 10),
            ),
        }
    }
}

#[derive(Debug)]
struct Shared {
    log: EventLog,
    /// One permit per buffered event: the buffer's bound.
    room: Arc<Semaphore>,
    capacity: usize,
    /// Appends in flight at once, over all sessions.
    lanes: Arc<Semaphore>,
    /// The writer of each session with events queued or being appended.
    writers: Mutex<HashMap<SessionId, mpsc::UnboundedSender<Job>>>,
    stats: Arc<RecorderStats>,
    /// How long a writer waits for more statements to group with one.
    linger: Duration,
}

/// A record larger than this has its statement texts cut (see [`fit`]).
const FIT_BYTES: usize = MAX_EVENT_BYTES - 64 * 1024;
/// How much of a cut statement's text a record keeps.
const KEPT_TEXT_BYTES: usize = 64 * 1024;
/// How many bound parameters a cut record keeps.
const KEPT_PARAMETERS: usize = 256;
/// How much of each parameter's value (and of its rendering) a record keeps
/// when cutting texts and parameter counts was not enough.
const KEPT_PARAMETER_BYTES: usize = 1024;

/// At most this many statements in one group.
const MAX_GROUP: usize = 256;
/// And at most this many bytes of them, well under the log's event limit.
const MAX_GROUP_BYTES: usize = MAX_EVENT_BYTES / 4;

/// Handle to the recording writers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
    pub stats: Arc<RecorderStats>,
}

impl Recorder {
    /// A recorder buffering up to `capacity` events, with up to `workers`
    /// appends (each of a different session) in flight at once, grouping a
    /// session's statements for up to `linger` (zero: only those already
    /// queued). Must be called inside a Tokio runtime (writers are spawned
    /// on demand).
    pub fn spawn(log: EventLog, workers: usize, capacity: usize, linger: Duration) -> Recorder {
        let stats = Arc::new(RecorderStats::default());
        let capacity = capacity.max(1);
        Recorder {
            shared: Arc::new(Shared {
                log,
                room: Arc::new(Semaphore::new(capacity)),
                capacity,
                lanes: Arc::new(Semaphore::new(workers.max(1))),
                writers: Mutex::default(),
                stats: stats.clone(),
                linger,
            }),
            stats,
        }
    }

    /// Queues a session event. Never waits.
    pub fn record(&self, session: &SessionId, event: proto::Event) -> Result<(), RecorderFull> {
        let room = self.room()?;
        self.shared.queue(
            session,
            Job {
                event,
                done: None,
                room,
            },
        );
        Ok(())
    }

    /// Queues a session event and waits until it, and every earlier event
    /// of the session, is in the log (or `timeout` passes: false).
    pub async fn record_and_wait(
        &self,
        session: &SessionId,
        event: proto::Event,
        timeout: Duration,
    ) -> Result<(), NotRecorded> {
        let Ok(room) = self.room() else {
            return Err(NotRecorded::NoRoom);
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.queue(
            session,
            Job {
                event,
                done: Some(tx),
                room,
            },
        );
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(NotRecorded::Late),
        }
    }

    fn room(&self) -> Result<OwnedSemaphorePermit, RecorderFull> {
        self.shared
            .room
            .clone()
            .try_acquire_owned()
            .map_err(|_| RecorderFull)
    }

    /// Events buffered and not yet in the log (of the event or group a
    /// writer is appending right now, the first statement is not counted).
    pub fn buffered(&self) -> usize {
        self.shared.capacity - self.shared.room.available_permits()
    }

    /// How many events the buffer holds at most (`proxy.record_buffer`).
    pub fn capacity(&self) -> usize {
        self.shared.capacity
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
        Ok(Slot {
            room: self.room()?,
            session: session.clone(),
            shared: self.shared.clone(),
        })
    }

    /// [`Recorder::reserve`], waiting up to `wait` for room when the buffer
    /// is full: a burst the log absorbs a moment later slows the statement
    /// down instead of refusing it. Still refused after `wait`.
    pub async fn reserve_within(&self, session: &SessionId, wait: Duration) -> Result<Slot, RecorderFull> {
        if let Ok(slot) = self.reserve(session) {
            return Ok(slot);
        }
        let room = tokio::time::timeout(wait, self.shared.room.clone().acquire_owned())
            .await
            .map_err(|_| RecorderFull)?
            .map_err(|_| RecorderFull)?;
        Ok(Slot {
            room,
            session: session.clone(),
            shared: self.shared.clone(),
        })
    }
}

/// Room for one event, reserved in advance.
#[derive(Debug)]
pub struct Slot {
    room: OwnedSemaphorePermit,
    session: SessionId,
    shared: Arc<Shared>,
}

impl Slot {
    pub fn send(self, event: proto::Event) {
        let Slot {
            room,
            session,
            shared,
        } = self;
        shared.queue(
            &session,
            Job {
                event,
                done: None,
                room,
            },
        );
    }
}

impl Shared {
    /// Hands a job to its session's writer, starting one if the session has
    /// none. Never waits: room was taken before.
    fn queue(self: &Arc<Self>, session: &SessionId, job: Job) {
        let mut writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
        let job = match writers.get(session) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                // The writer ended (it only does so with the map locked and
                // nothing queued, so this is not expected): start another.
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(job);
        writers.insert(session.clone(), tx);
        tokio::spawn(writer(
            Writer {
                log: self.log.clone(),
                lanes: self.lanes.clone(),
                stats: self.stats.clone(),
                shared: Arc::downgrade(self),
                linger: self.linger,
            },
            session.clone(),
            rx,
        ));
    }
}

/// What a session's writer needs. It holds the recorder only weakly, so
/// writers end once every handle to the recorder is gone.
struct Writer {
    log: EventLog,
    lanes: Arc<Semaphore>,
    stats: Arc<RecorderStats>,
    shared: std::sync::Weak<Shared>,
    linger: Duration,
}

/// Appends one session's events in order, until its queue is empty after
/// SessionClosed (or the recorder is gone).
async fn writer(w: Writer, session: SessionId, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut chain = ChainWriter::new(subjects::session(&session));
    // A job taken from the queue while gathering a group that could not
    // join it: the next to append. Boxed, like the futures below: this task
    // lives as long as its session, idle sessions included, and its size is
    // that of its largest state.
    let mut next: Option<Box<Job>> = None;
    loop {
        let job = match next.take() {
            Some(job) => *job,
            None => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let Job { event, done, room } = job;
        drop(room);
        // The room of the statements that joined a group is given back once
        // the group is in the log: the buffer's bound stays the bound on
        // what the recorder holds.
        let (event, joined) = if groupable(&event, done.as_ref()) {
            let (event, joined, left) = Box::pin(gather(event, &mut jobs, w.linger)).await;
            next = left.map(Box::new);
            (event, joined)
        } else {
            (event, Vec::new())
        };
        let mut event = event;
        fit(&mut event);
        let closing = matches!(event.body, Some(Body::SessionClosed(_)));
        let mut backoff = Duration::from_millis(100);
        // Until acknowledged: an event handed to the recorder is never
        // dropped. Retries keep the event id, so it is stored once.
        loop {
            let lane = w.lanes.acquire().await;
            let started = std::time::Instant::now();
            let appended = Box::pin(chain.append(&w.log, event.clone())).await;
            w.stats.append_seconds.observe(started.elapsed().as_secs_f64());
            drop(lane);
            match appended {
                Ok(_) => {
                    w.stats.appended.inc();
                    break;
                }
                Err(e) => {
                    w.stats.retries.inc();
                    tracing::warn!(%session, event = %event.id, error = %e, "recording failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        drop(joined);
        if let Some(done) = done {
            let _ = done.send(());
        }
        if closing {
            // The session's last event: end, unless more was queued
            // meanwhile (checked with the map locked, so nothing is lost).
            let Some(recorder) = w.shared.upgrade() else {
                return;
            };
            let mut writers = recorder.writers.lock().unwrap_or_else(|p| p.into_inner());
            if next.is_none() && jobs.is_empty() {
                writers.remove(&session);
                return;
            }
        }
    }
}

/// Whether a job may join a group: an allowed statement's record that no
/// one waits for and that did not run after an approval (those stay single
/// events, next to their request in the log).
fn groupable(event: &proto::Event, done: Option<&tokio::sync::oneshot::Sender<()>>) -> bool {
    done.is_none()
        && matches!(&event.body, Some(Body::StatementExecuted(s)) if s.request_id.is_empty() && s.grant_id.is_empty())
}

/// Gathers the statements queued behind `first` (waiting up to `linger` for
/// more) into one event. Returns it (`first` itself when nothing joined),
/// the buffer room of the statements that joined, and the job that stopped
/// the group, if one was taken from the queue.
async fn gather(
    first: proto::Event,
    jobs: &mut mpsc::UnboundedReceiver<Job>,
    linger: Duration,
) -> (proto::Event, Vec<OwnedSemaphorePermit>, Option<Job>) {
    let until = tokio::time::Instant::now() + linger;
    let mut group = vec![first];
    let mut rooms = Vec::new();
    let mut bytes = group[0].encoded_len();
    let mut left = None;
    while group.len() < MAX_GROUP {
        let job = match jobs.try_recv() {
            Ok(job) => job,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                let now = tokio::time::Instant::now();
                if now >= until {
                    break;
                }
                match tokio::time::timeout(until - now, jobs.recv()).await {
                    Ok(Some(job)) => job,
                    Ok(None) | Err(_) => break,
                }
            }
        };
        let size = job.event.encoded_len();
        if !groupable(&job.event, job.done.as_ref()) || bytes + size > MAX_GROUP_BYTES {
            left = Some(job);
            break;
        }
        bytes += size;
        rooms.push(job.room);
        group.push(job.event);
    }
    if group.len() == 1 {
        let first = group.pop().unwrap_or_default();
        return (first, rooms, left);
    }
    (group_event(group), rooms, left)
}

/// One `StatementsExecuted` event for `group` (two or more single
/// `StatementExecuted` events of one session), each statement keeping its
/// own id and time.
fn group_event(group: Vec<proto::Event>) -> proto::Event {
    let first = &group[0];
    let mut event = proto::Event {
        id: EventId::generate().to_string(),
        time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        source: first.source.clone(),
        session_id: first.session_id.clone(),
        trace: first.trace.clone(),
        ..Default::default()
    };
    let statements = group
        .into_iter()
        .filter_map(|e| match e.body {
            Some(Body::StatementExecuted(statement)) => Some(proto::RecordedStatement {
                id: e.id,
                time: e.time,
                statement: Some(statement),
            }),
            _ => None,
        })
        .collect();
    event.body = Some(Body::StatementsExecuted(proto::StatementsExecuted { statements }));
    event
}

/// Cuts the statements of a record that would not fit in one event of the
/// log: each keeps the start of its text, with how long it was, and at most
/// [`KEPT_PARAMETERS`] parameters; if that is not enough (large bound
/// values), each parameter keeps the first [`KEPT_PARAMETER_BYTES`] of its
/// value and of its rendering. The digest, which covers the exact bytes,
/// stays. A statement near or over the log's event limit (a large allowed
/// INSERT, a 10 MiB query refused by policy, a bound value of a few MiB) is
/// recorded this way rather than not at all, and its session's writer does
/// not retry an append the log can never take: after both cuts a record
/// holds at most 64 KiB of text and 256 parameters of 2 KiB each.
fn fit(event: &mut proto::Event) {
    if event.encoded_len() <= FIT_BYTES {
        return;
    }
    for s in statements_mut(event) {
        if s.text.len() > KEPT_TEXT_BYTES {
            let total = s.text.len();
            s.text.truncate(char_boundary(&s.text, KEPT_TEXT_BYTES));
            s.text
                .push_str(&format!(" … [cut by the recorder: {total} bytes in all]"));
        }
        if s.parameters.len() > KEPT_PARAMETERS {
            let total = s.parameters.len();
            s.parameters.truncate(KEPT_PARAMETERS);
            s.text.push_str(&format!(
                " [the recorder kept {KEPT_PARAMETERS} of {total} parameters]"
            ));
        }
    }
    if event.encoded_len() <= FIT_BYTES {
        return;
    }
    for s in statements_mut(event) {
        let mut cut = false;
        for p in &mut s.parameters {
            if p.value.len() > KEPT_PARAMETER_BYTES {
                p.value.truncate(KEPT_PARAMETER_BYTES);
                cut = true;
            }
            if p.display.len() > KEPT_PARAMETER_BYTES {
                let total = p.display.len();
                p.display
                    .truncate(char_boundary(&p.display, KEPT_PARAMETER_BYTES));
                p.display.push_str(&format!(" … [{total} bytes]"));
                cut = true;
            }
        }
        if cut {
            s.text.push_str(&format!(
                " [the recorder kept the first {KEPT_PARAMETER_BYTES} bytes of each parameter]"
            ));
        }
    }
}

/// The largest char boundary of `text` at or below `at`.
fn char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The statements a record carries.
fn statements_mut(event: &mut proto::Event) -> Vec<&mut proto::Statement> {
    match &mut event.body {
        Some(Body::StatementExecuted(x)) => x.statement.iter_mut().collect(),
        Some(Body::StatementRefused(x)) => x.statement.iter_mut().collect(),
        Some(Body::StatementsExecuted(g)) => g
            .statements
            .iter_mut()
            .filter_map(|r| r.statement.as_mut())
            .flat_map(|x| x.statement.iter_mut())
            .collect(),
        _ => Vec::new(),
    }
}
