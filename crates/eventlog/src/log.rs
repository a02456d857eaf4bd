//! The JetStream client: ensure the stream, append (dedup by event id,
//! optimistic concurrency per subject, chained), read from a sequence, tail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, context, stream};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use prost::Message as _;
use tracing::Instrument as _;

use airlock_proto::v1::Event;

use crate::chain::{ChainHead, hash};
use crate::error::Error;
use crate::nats::{Denials, NatsSettings};
use crate::signing::{Signer, Trust};
use crate::subjects;

/// Header carrying the W3C trace context of the operation that wrote an event.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// Header naming the event's body kind, so tools can filter without decoding.
pub const EVENT_KIND: &str = "Airlock-Event";

/// The largest event accepted (protobuf bytes). Statements are capped well
/// below this by the proxy; the rest is headroom for parameters.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// What an append expects of its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Append regardless of what is on the subject.
    Anything,
    /// The subject's last event must be at this stream sequence (0: the
    /// subject must have no events). Sent as
    /// `Nats-Expected-Last-Subject-Sequence`.
    LastSequence(u64),
}

/// An acknowledged append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Stream sequence of the stored event.
    pub sequence: u64,
    /// True when JetStream had already stored this event id: nothing new was
    /// written and `sequence` is the original's.
    pub duplicate: bool,
    /// The new head of the subject's chain.
    pub head: ChainHead,
}

/// One event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Stream sequence.
    pub sequence: u64,
    pub subject: String,
    /// When JetStream stored it.
    pub stored_at: time::OffsetDateTime,
    /// The exact stored bytes (what the hash chain covers).
    pub raw: Bytes,
    pub event: Event,
}

impl StoredEvent {
    /// An event's stored bytes as read elsewhere (a GrantNotice carries
    /// them), to check its signature: the store time is not known.
    pub fn from_raw(sequence: u64, subject: &str, raw: Bytes) -> Result<Self, Error> {
        Self::decode(sequence, subject, time::OffsetDateTime::UNIX_EPOCH, raw)
    }

    /// An event as read from the stream, with its store time.
    pub fn decode(
        sequence: u64,
        subject: &str,
        stored_at: time::OffsetDateTime,
        raw: Bytes,
    ) -> Result<Self, Error> {
        let event = Event::decode(raw.clone()).map_err(|e| Error::Corrupt {
            sequence,
            subject: subject.to_owned(),
            detail: e.to_string(),
        })?;
        Ok(StoredEvent {
            sequence,
            subject: subject.to_owned(),
            stored_at,
            raw,
            event,
        })
    }
}

/// Which events a read delivers.
#[derive(Debug, Clone, Default)]
pub struct ReadFilter {
    /// Subjects (wildcards allowed); empty means the whole stream.
    pub subjects: Vec<String>,
}

impl ReadFilter {
    pub fn all() -> ReadFilter {
        ReadFilter::default()
    }

    pub fn subject(subject: impl Into<String>) -> ReadFilter {
        ReadFilter {
            subjects: vec![subject.into()],
        }
    }

    pub fn subjects(subjects: Vec<String>) -> ReadFilter {
        ReadFilter { subjects }
    }
}

/// A handle on the event log. Cheap to clone; share one per process.
#[derive(Clone, Debug)]
pub struct EventLog {
    client: async_nats::Client,
    js: jetstream::Context,
    settings: NatsSettings,
    /// Signs every event this handle appends ([`crate::signing`]).
    signer: Option<Arc<Signer>>,
    /// The writers readers through this handle trust.
    trust: Option<Arc<Trust>>,
    /// Publishes the server refused this client (its user's permissions).
    denials: Denials,
    connects: crate::nats::Connects,
}

/// How long a tail tries to start its new consumer after a reconnect
/// before it tells its reader.
const TAIL_RESUME: Duration = Duration::from_secs(30);

/// Whether `e` is the cluster being briefly unable to serve (electing a
/// leader, catching a node up), not a refusal that retrying cannot change.
/// A timeout is not: a request the server refuses for the user's
/// permissions goes unanswered, and looks like one.
fn transient(e: &Error) -> bool {
    let text = e.to_string().to_lowercase();
    text.contains("temporarily unavailable") || text.contains("no responders")
}

/// How long a bounded read waits for the log to serve it again.
const READ_RESUME: Duration = Duration::from_secs(30);

/// An ordered consumer's events, each with how many are left after it.
type OrderedEvents = std::pin::Pin<Box<dyn Stream<Item = Result<(StoredEvent, u64), Error>> + Send>>;

/// A live tail's state: where it is, and what would make it start again.
struct Tail {
    log: EventLog,
    filter: ReadFilter,
    /// The sequence after the last event read.
    next: u64,
    messages: OrderedEvents,
    reconnects: tokio::sync::watch::Receiver<u64>,
}

impl EventLog {
    /// Connects to NATS. Does not touch the stream: call
    /// [`EventLog::ensure_stream`] (writers) or rely on it existing (readers).
    pub async fn connect(settings: NatsSettings) -> Result<EventLog, Error> {
        let (client, denials, connects) = settings.connect().await?;
        let js = context::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client.clone());
        Ok(EventLog {
            client,
            js,
            settings,
            signer: None,
            trust: None,
            denials,
            connects,
        })
    }

    /// Signs every event appended through this handle with `signer`.
    pub fn with_signer(mut self, signer: Arc<Signer>) -> EventLog {
        self.signer = Some(signer);
        self
    }

    /// The writers this process trusts: readers that act on events check
    /// them against it ([`Trust::check`]).
    pub fn with_trust(mut self, trust: Arc<Trust>) -> EventLog {
        self.trust = Some(trust);
        self
    }

    /// The key events are signed with, if any.
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_deref()
    }

    /// The writers this process trusts; `None` only where no configuration
    /// was given (library use and tests): every binary sets one.
    pub fn trust(&self) -> Option<&Trust> {
        self.trust.as_deref()
    }

    pub fn settings(&self) -> &NatsSettings {
        &self.settings
    }

    /// Counts this handle's connections to NATS: it moves on every
    /// reconnect, so a reader of core NATS subjects knows it may have
    /// missed messages meanwhile.
    pub fn connects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.connects.subscribe()
    }

    /// Counts the times one of this client's core NATS subscriptions fell
    /// behind and messages for it were dropped: a reader of such a subject
    /// knows it missed some.
    pub fn slow_consumers(&self) -> tokio::sync::watch::Receiver<u64> {
        self.connects.subscribe_slow()
    }

    /// Whether the client is connected to a NATS server right now.
    pub fn connected(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub(crate) fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.settings.stream.clone(),
            description: Some("Airlock event log: append-only, source of truth".to_owned()),
            subjects: vec![subjects::ALL.to_owned()],
            storage: stream::StorageType::File,
            num_replicas: self.settings.replicas,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            duplicate_window: self.settings.duplicate_window,
            deny_delete: true,
            deny_purge: true,
            allow_rollup: false,
            allow_direct: true,
            max_message_size: (MAX_EVENT_BYTES + 4096) as i32,
            ..Default::default()
        }
    }

    /// Creates the stream if it does not exist; checks it if it does. Never
    /// loosens an existing stream: one that could lose, rewrite or hide
    /// events is an error for an operator to fix ([`EventLog::check_stream`]).
    pub async fn ensure_stream(&self) -> Result<(), Error> {
        let name = &self.settings.stream;
        self.js
            .get_or_create_stream(self.stream_config())
            .await
            .map_err(|e| Error::Stream {
                stream: name.clone(),
                detail: e.to_string(),
            })?;
        self.check_stream().await
    }

    /// Checks the existing stream without creating it (what a proxy does:
    /// its NATS user may not create streams). Refuses a stream that allows
    /// deletes, purges or roll-ups, takes other subjects, is not on file,
    /// drops events by any limit (total, per subject, age, per-message
    /// TTL), rewrites or copies them elsewhere (subject transforms,
    /// republish), does not acknowledge appends, is sealed, or mirrors or
    /// sources another stream.
    pub async fn check_stream(&self) -> Result<(), Error> {
        let name = &self.settings.stream;
        let wanted = self.stream_config();
        let mut existing = self.js.get_stream(name).await.map_err(|e| Error::Stream {
            stream: name.clone(),
            detail: e.to_string(),
        })?;
        let info = existing.info().await.map_err(|e| Error::Stream {
            stream: name.clone(),
            detail: e.to_string(),
        })?;
        let have = &info.config;
        let mut problems = Vec::new();
        if !have.deny_delete {
            problems.push("deletes are allowed (deny_delete is false)");
        }
        if !have.deny_purge {
            problems.push("purges are allowed (deny_purge is false)");
        }
        if have.allow_rollup {
            problems.push("roll-ups are allowed");
        }
        if have.subjects != wanted.subjects {
            problems.push("its subjects are not exactly airlock.v1.>");
        }
        if have.storage != stream::StorageType::File {
            problems.push("it is not file-backed");
        }
        if have.max_messages > 0 || have.max_bytes > 0 || have.max_age > Duration::ZERO {
            problems.push("it has limits that would drop old events (max_msgs, max_bytes or max_age)");
        }
        if have.max_messages_per_subject > 0 {
            problems.push("it keeps only some events per subject (max_msgs_per_subject)");
        }
        if have.allow_message_ttl || have.subject_delete_marker_ttl.is_some() {
            problems.push("events may expire (allow_msg_ttl or subject delete markers)");
        }
        if have.subject_transform.is_some() || have.republish.is_some() {
            problems.push("events are rewritten or copied elsewhere (subject_transform or republish)");
        }
        if have.no_ack {
            problems.push("appends are not acknowledged (no_ack)");
        }
        if have.sealed || have.mirror.is_some() || have.sources.as_ref().is_some_and(|s| !s.is_empty()) {
            problems.push("it is sealed, a mirror, or sourced from other streams");
        }
        if have.allow_message_counter {
            problems.push("it is a counter stream (allow_msg_counter): events cannot be appended");
        }
        if matches!(have.persist_mode, Some(stream::PersistenceMode::Async)) {
            problems.push("acknowledged events may be lost in a crash (persist_mode: async)");
        }
        if have.retention != stream::RetentionPolicy::Limits {
            problems.push("its retention is not limits (work-queue or interest retention drops events)");
        }
        if !problems.is_empty() {
            return Err(Error::StreamMisconfigured {
                stream: name.clone(),
                detail: format!(
                    "{}; Airlock will not write to a log that can lose events. Fix the stream \
                     (nats stream edit {name}) or point nats.stream at a new one",
                    problems.join(", ")
                ),
            });
        }
        if have.num_replicas != wanted.num_replicas {
            tracing::warn!(
                stream = %name,
                have = have.num_replicas,
                want = wanted.num_replicas,
                "stream replica count differs from nats.replicas; leaving it as it is"
            );
        }
        Ok(())
    }

    pub(crate) async fn stream(&self) -> Result<stream::Stream<()>, Error> {
        self.js
            .get_stream_no_info(&self.settings.stream)
            .await
            .map_err(|e| Error::Stream {
                stream: self.settings.stream.clone(),
                detail: e.to_string(),
            })
    }

    /// Appends `event`, exactly as given, to `subject`.
    ///
    /// Returns only after JetStream acknowledged the write. Timeouts and lost
    /// connections are retried with the same bytes and the same
    /// `Nats-Msg-Id` (the event id) until `append_timeout`, so the event is
    /// stored at most once. A stale `expect` is [`Error::Conflict`].
    ///
    /// Cancel safety: if this future is dropped, the event may or may not
    /// have been stored; appending the same event again is safe.
    ///
    /// Runs in a `log.append` span when traced; the event's own trace
    /// context is the caller's to set ([`crate::trace::stamp`]).
    pub async fn append(&self, subject: &str, event: &Event, expect: Expect) -> Result<Appended, Error> {
        let span = crate::trace::append_span_as_is(subject, event);
        self.append_as_is(subject, event, expect).instrument(span).await
    }

    async fn append_as_is(&self, subject: &str, event: &Event, expect: Expect) -> Result<Appended, Error> {
        if event.id.is_empty() {
            return Err(Error::InvalidEvent("the event has no id".to_owned()));
        }
        if event.body.is_none() {
            return Err(Error::InvalidEvent(format!("event {} has no body", event.id)));
        }
        let raw = Bytes::from(match &self.signer {
            Some(signer) => crate::signing::seal(subject, event, signer),
            None => event.encode_to_vec(),
        });
        if raw.len() > MAX_EVENT_BYTES {
            return Err(Error::InvalidEvent(format!(
                "event {} is {} bytes, over the {MAX_EVENT_BYTES}-byte limit",
                event.id,
                raw.len()
            )));
        }
        let headers = headers_for(event, expect);
        let started = Instant::now();
        let deadline = started + self.settings.append_timeout;
        let mut attempts = 0u32;
        let mut backoff = Duration::from_millis(50);
        loop {
            attempts += 1;
            let last = match self.publish_once(subject, headers.clone(), raw.clone()).await {
                Ok(ack) => {
                    // A duplicate is ours only if the stored message is these
                    // very bytes on this subject: anyone can publish with an
                    // event's id to make its real append a silent no-op.
                    if ack.duplicate && !self.stored_is(ack.sequence, subject, &raw).await {
                        return Err(Error::Rejected {
                            subject: subject.to_owned(),
                            detail: format!(
                                "event id {} is already taken in the log by another message (seq {}): \
                                 this event was not stored",
                                event.id, ack.sequence
                            ),
                        });
                    }
                    return Ok(Appended {
                        sequence: ack.sequence,
                        duplicate: ack.duplicate,
                        head: ChainHead {
                            sequence: ack.sequence,
                            hash: hash(&raw).to_vec(),
                            index: event.chain_index,
                        },
                    });
                }
                Err(e) => match e.kind() {
                    context::PublishErrorKind::WrongLastSequence => {
                        // JetStream checks the expected sequence before the
                        // duplicate window, so a retry of an append that was
                        // stored (ack lost) lands here. If the first event
                        // after the expected sequence is this one, it is ours.
                        if let Expect::LastSequence(expected) = expect
                            && let Some(stored) = self.stored_after(subject, expected, &event.id).await
                            && self.stored_is(stored, subject, &raw).await
                        {
                            return Ok(Appended {
                                sequence: stored,
                                duplicate: true,
                                head: ChainHead {
                                    sequence: stored,
                                    hash: hash(&raw).to_vec(),
                                    index: event.chain_index,
                                },
                            });
                        }
                        return Err(Error::Conflict {
                            subject: subject.to_owned(),
                            expected: match expect {
                                Expect::LastSequence(s) => s,
                                Expect::Anything => 0,
                            },
                            detail: e.to_string(),
                        });
                    }
                    context::PublishErrorKind::MaxPayloadExceeded
                    | context::PublishErrorKind::WrongLastMessageId => {
                        return Err(Error::Rejected {
                            subject: subject.to_owned(),
                            detail: e.to_string(),
                        });
                    }
                    context::PublishErrorKind::Other if is_permanent(&e) => {
                        return Err(Error::Rejected {
                            subject: subject.to_owned(),
                            detail: error_chain(&e),
                        });
                    }
                    // Timed out, broken pipe, no responders (JetStream not
                    // ready, or mid-reconnect), too many in flight: retry.
                    context::PublishErrorKind::TimedOut
                    | context::PublishErrorKind::BrokenPipe
                    | context::PublishErrorKind::StreamNotFound
                    | context::PublishErrorKind::MaxAckPending
                    | context::PublishErrorKind::Other => error_chain(&e),
                },
            };
            // The server says this client may not write there: retrying
            // will not change that.
            if let Some(refusal) = self.denials.publish_to(subject) {
                return Err(Error::Rejected {
                    subject: subject.to_owned(),
                    detail: format!("NATS refused it ({refusal}): this client's user may not write there"),
                });
            }
            let now = Instant::now();
            if now + backoff >= deadline {
                return Err(Error::Unavailable {
                    subject: subject.to_owned(),
                    attempts,
                    elapsed: now - started,
                    last,
                });
            }
            tracing::debug!(subject, event_id = %event.id, attempts, error = %last, "append not acknowledged; retrying with the same id");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// The sequence of `event_id` if it is the first event on `subject` after
    /// sequence `after`.
    async fn stored_after(&self, subject: &str, after: u64, event_id: &str) -> Option<u64> {
        let stream = self.stream().await.ok()?;
        let m = stream
            .get_first_raw_message_by_subject(subject, after + 1)
            .await
            .ok()?;
        let id = m.headers.get(async_nats::header::NATS_MESSAGE_ID)?;
        (id.as_str() == event_id).then_some(m.sequence)
    }

    /// Whether the message at `sequence` is exactly `raw` on `subject`.
    async fn stored_is(&self, sequence: u64, subject: &str, raw: &[u8]) -> bool {
        let Ok(stream) = self.stream().await else {
            return false;
        };
        match stream.get_raw_message(sequence).await {
            Ok(m) => m.subject.as_str() == subject && m.payload.as_ref() == raw,
            Err(_) => false,
        }
    }

    async fn publish_once(
        &self,
        subject: &str,
        headers: HeaderMap,
        raw: Bytes,
    ) -> Result<jetstream::publish::PublishAck, context::PublishError> {
        let ack = self
            .js
            .send_publish(
                subject.to_owned(),
                jetstream::message::PublishMessage::build()
                    .payload(raw)
                    .headers(headers),
            )
            .await?;
        // Await the acknowledgement here: a dropped ack future would hide a
        // failure (async-nats hands it to a background acker and moves on).
        ack.await
    }

    /// Appends `event` as the next link of `subject`'s chain: reads the chain
    /// head, sets `prev_hash` and `chain_index`, and appends expecting that
    /// head, so two writers can never fork a chain. On [`Error::Conflict`]
    /// the caller re-reads and decides again (that is the point for
    /// decisions; fact writers use [`ChainWriter`], which retries).
    ///
    /// Puts the trace context of its `log.append` span on the event (see
    /// [`crate::trace`]) unless the event carries one.
    pub async fn append_next(&self, subject: &str, event: Event) -> Result<(Appended, Event), Error> {
        self.append_next_from(subject, event, 0).await
    }

    /// [`EventLog::append_next`], continuing the chain index from at least
    /// `floor` (the last index the caller folded or wrote on `subject`): a
    /// stored copy of an older signed event, last on the subject, must not
    /// make this event's index look like a replay to the fold.
    pub async fn append_next_from(
        &self,
        subject: &str,
        mut event: Event,
        floor: u64,
    ) -> Result<(Appended, Event), Error> {
        let span = crate::trace::append_span(subject, &mut event);
        async {
            let mut head = self.head(subject).await?;
            head.index = head.index.max(floor);
            link(&mut event, &head);
            let appended = self
                .append_as_is(subject, &event, Expect::LastSequence(head.sequence))
                .await?;
            Ok((appended, event))
        }
        .instrument(span)
        .await
    }

    /// The last event of `subject`, if any.
    pub async fn last(&self, subject: &str) -> Result<Option<StoredEvent>, Error> {
        let stream = self.stream().await?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => StoredEvent::decode(m.sequence, m.subject.as_str(), m.time, m.payload).map(Some),
            Err(e) => match e.kind() {
                stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
                stream::LastRawMessageErrorKind::InvalidSubject
                | stream::LastRawMessageErrorKind::JetStream(_)
                | stream::LastRawMessageErrorKind::Other => {
                    Err(Error::Read(format!("last event on {subject}: {e}")))
                }
            },
        }
    }

    /// The first event of `subject`, if any (a session's opening, say).
    pub async fn first(&self, subject: &str) -> Result<Option<StoredEvent>, Error> {
        let stream = self.stream().await?;
        match stream.get_first_raw_message_by_subject(subject, 1).await {
            Ok(m) => StoredEvent::decode(m.sequence, m.subject.as_str(), m.time, m.payload).map(Some),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(Error::Read(format!("first event on {subject}: {e}"))),
        }
    }

    /// The head of `subject`'s chain (empty when the subject has no events).
    ///
    /// When the last message stored on the subject is not an event (anyone
    /// able to publish can store one), the next event links to its bytes
    /// and continues the index of the last real event, so writers are not
    /// stopped by it.
    pub async fn head(&self, subject: &str) -> Result<ChainHead, Error> {
        match self.last(subject).await {
            Ok(None) => Ok(ChainHead::empty()),
            Ok(Some(last)) if self.vouched(&last) => Ok(ChainHead::of(&last)),
            // An event no trusted writer signed (anyone able to publish, or
            // to name a stream subject as a reply, can store one): link to
            // it, but continue the index of the trusted events, so a forged
            // index cannot make the next genuine events look like replays.
            Ok(Some(last)) => Ok(ChainHead {
                sequence: last.sequence,
                hash: hash(&last.raw).to_vec(),
                index: self.trusted_index(subject).await?,
            }),
            Err(Error::Corrupt { sequence, .. }) => {
                let stream = self.stream().await?;
                let raw = stream
                    .get_raw_message(sequence)
                    .await
                    .map_err(|e| Error::Read(format!("message {sequence}: {e}")))?;
                Ok(ChainHead {
                    sequence,
                    hash: hash(&raw.payload).to_vec(),
                    index: self.trusted_index(subject).await?,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Whether a trusted writer signed `event` (every event counts when this
    /// handle has no list of trusted writers: library use and tests).
    fn vouched(&self, event: &StoredEvent) -> bool {
        self.trust.as_ref().is_none_or(|t| t.check(event).is_ok())
    }

    /// The highest chain index among `subject`'s events a trusted writer
    /// signed.
    async fn trusted_index(&self, subject: &str) -> Result<u64, Error> {
        Ok(self
            .read_subject_events(subject)
            .await?
            .iter()
            .filter(|e| self.vouched(e))
            .map(|e| e.event.chain_index)
            .max()
            .unwrap_or(0))
    }

    /// One event by stream sequence.
    pub async fn get(&self, sequence: u64) -> Result<StoredEvent, Error> {
        let stream = self.stream().await?;
        let m = stream
            .get_raw_message(sequence)
            .await
            .map_err(|e| Error::Read(format!("event {sequence}: {e}")))?;
        StoredEvent::decode(m.sequence, m.subject.as_str(), m.time, m.payload)
    }

    /// The stream's last sequence (0 when empty).
    pub async fn last_sequence(&self) -> Result<u64, Error> {
        let stream = self.stream().await?;
        let info = stream.get_info().await.map_err(|e| Error::Stream {
            stream: self.settings.stream.clone(),
            detail: e.to_string(),
        })?;
        Ok(info.state.last_sequence)
    }

    /// Every event matching `filter` from stream sequence `from` (0 or 1: the
    /// beginning), in order, then live ones as they are stored, without end.
    /// Uses an ordered consumer, which re-creates itself on gaps, so no event
    /// is skipped or repeated.
    pub async fn tail(
        &self,
        from: u64,
        filter: ReadFilter,
    ) -> Result<impl Stream<Item = Result<StoredEvent, Error>> + Send + 'static + use<>, Error> {
        // Subscribed before the consumer starts: a reconnect in between is
        // not missed.
        let reconnects = self.connects.subscribe();
        let (messages, _) = self.ordered(from, &filter).await?;
        // After a reconnect the consumer may be gone with the server that
        // held it, and the client would find out only many seconds later:
        // on every reconnect a new consumer starts after the last event
        // read (ordered consumers neither skip nor repeat).
        let messages: OrderedEvents = Box::pin(messages);
        let state = Tail {
            log: self.clone(),
            filter,
            next: from.max(1),
            messages,
            reconnects,
        };
        Ok(futures::stream::unfold(state, |mut t| async move {
            loop {
                tokio::select! {
                    item = t.messages.next() => {
                        let item = item?;
                        match &item {
                            Ok((event, _)) => t.next = event.sequence + 1,
                            // Passed over by the reader: not to be met again.
                            Err(Error::Corrupt { sequence, .. }) => t.next = t.next.max(sequence + 1),
                            Err(_) => {}
                        }
                        return Some((item.map(|(event, _)| event), t));
                    }
                    changed = t.reconnects.changed() => {
                        changed.ok()?;
                        // JetStream may not answer at the first moment after a
                        // reconnect (a cluster electing leaders): try again
                        // for a while before telling the reader.
                        let mut backoff = Duration::from_millis(100);
                        let started = Instant::now();
                        loop {
                            match t.log.ordered(t.next, &t.filter).await {
                                Ok((messages, _)) => {
                                    t.messages = Box::pin(messages);
                                    break;
                                }
                                Err(e) if started.elapsed() > TAIL_RESUME => return Some((Err(e), t)),
                                Err(_) => {
                                    tokio::time::sleep(backoff).await;
                                    backoff = (backoff * 2).min(Duration::from_secs(2));
                                }
                            }
                        }
                    }
                }
            }
        }))
    }

    /// Every event matching `filter` from `from` up to the last one stored
    /// when the call was made; then the stream ends. For replay and verify.
    /// A cluster that is electing a leader or catching a node up answers
    /// "temporarily unavailable" for a few seconds: reading waits and
    /// resumes after the last event read, for up to [`READ_RESUME`], before
    /// it gives up.
    pub async fn read(
        &self,
        from: u64,
        filter: ReadFilter,
    ) -> Result<impl Stream<Item = Result<StoredEvent, Error>> + Send + 'static + use<>, Error> {
        let started = tokio::time::Instant::now();
        let end = loop {
            match self.last_sequence().await {
                Ok(end) => break end,
                Err(e) if transient(&e) && started.elapsed() < READ_RESUME => {
                    tracing::debug!(error = %e, "reading the log: retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let (messages, pending) = self.ordered_resuming(from, &filter).await?;
        // The whole stream: read up to `end`, whatever a consumer reports
        // as pending (a consumer made as a cluster regains its quorum has
        // been seen to report none left long before the end).
        let whole = filter.subjects.is_empty();
        let nothing_to_read = end < from.max(1) || (pending == 0 && !whole);
        // End after the message at `end`, or when the consumer says no more
        // messages matching the filter are stored. (Decided before polling
        // again: the consumer would wait forever for a next message.)
        let log = self.clone();
        let state = (Box::pin(messages) as OrderedEvents, nothing_to_read, from.max(1));
        let stream = futures::stream::unfold(state, move |(mut messages, done, mut next)| {
            let log = log.clone();
            let filter = filter.clone();
            async move {
                if done {
                    return None;
                }
                // A consumer that stops early is resumed, never taken for
                // the end of the log.
                let mut item = match messages.next().await {
                    Some(item) => item,
                    None => Err(Error::Stream {
                        stream: log.settings.stream.clone(),
                        detail: format!("the read stopped before event #{end}"),
                    }),
                };
                if let Err(e) = &item
                    && !matches!(e, Error::Corrupt { .. })
                {
                    // Resume after the last event read, on a new consumer.
                    match log.ordered_resuming(next, &filter).await {
                        Ok((resumed, _)) => {
                            messages = Box::pin(resumed);
                            item = match messages.next().await {
                                Some(item) => item,
                                None => Err(Error::Stream {
                                    stream: log.settings.stream.clone(),
                                    detail: format!("the read stopped before event #{end}, twice"),
                                }),
                            };
                        }
                        Err(e) => return Some((Err(e), (messages, true, next))),
                    }
                }
                let finished = match &item {
                    Ok((event, left)) => event.sequence >= end || (*left == 0 && !whole),
                    // A message that is not an event (anyone able to publish
                    // can store one) is reported, and reading goes on past it.
                    Err(Error::Corrupt { sequence, .. }) => *sequence >= end,
                    Err(_) => true,
                };
                match &item {
                    Ok((event, _)) => next = event.sequence + 1,
                    Err(Error::Corrupt { sequence, .. }) => next = sequence + 1,
                    Err(_) => {}
                }
                Some((item.map(|(event, _)| event), (messages, finished, next)))
            }
        });
        Ok(stream)
    }

    /// [`EventLog::ordered`], tried again for up to [`READ_RESUME`] while
    /// the server cannot serve it.
    async fn ordered_resuming(&self, from: u64, filter: &ReadFilter) -> Result<(OrderedEvents, u64), Error> {
        let started = tokio::time::Instant::now();
        loop {
            match self.ordered(from, filter).await {
                Ok((events, pending)) => return Ok((Box::pin(events), pending)),
                Err(e) if transient(&e) && started.elapsed() < READ_RESUME => {
                    tracing::debug!(error = %e, "reading the log: retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// All events of one subject, in order (for chain checks and records).
    pub async fn read_subject(&self, subject: &str) -> Result<Vec<StoredEvent>, Error> {
        self.read_all(ReadFilter::subject(subject)).await
    }

    /// All events matching `filter`, in stream order, up to the last stored
    /// when the call was made.
    pub async fn read_all(&self, filter: ReadFilter) -> Result<Vec<StoredEvent>, Error> {
        let mut out = Vec::new();
        let stream = self.read(0, filter).await?;
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            out.push(item?);
        }
        Ok(out)
    }

    /// The events of one subject, in order, passing over stored messages
    /// that are not events (for readers that judge each event's writer).
    pub async fn read_subject_events(&self, subject: &str) -> Result<Vec<StoredEvent>, Error> {
        self.read_events(ReadFilter::subject(subject)).await
    }

    /// As [`EventLog::read_subject_events`], for every subject `filter` names.
    pub async fn read_events(&self, filter: ReadFilter) -> Result<Vec<StoredEvent>, Error> {
        let mut out = Vec::new();
        let stream = self.read(0, filter).await?;
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(e) => out.push(e),
                Err(Error::Corrupt { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn ordered(
        &self,
        from: u64,
        filter: &ReadFilter,
    ) -> Result<
        (
            impl Stream<Item = Result<(StoredEvent, u64), Error>> + Send + 'static + use<>,
            u64,
        ),
        Error,
    > {
        let stream = self.stream().await?;
        let deliver_policy = if from <= 1 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence { start_sequence: from }
        };
        let config = consumer::pull::OrderedConfig {
            deliver_policy,
            filter_subjects: filter.subjects.clone(),
            ..Default::default()
        };
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| Error::Read(format!("creating an ordered consumer: {e}")))?;
        let pending = consumer.cached_info().num_pending;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| Error::Read(format!("starting the ordered consumer: {e}")))?;
        let events = messages.map(|m| {
            let m = m.map_err(|e| Error::Read(e.to_string()))?;
            let info = m
                .info()
                .map_err(|e| Error::Read(format!("message metadata: {e}")))?;
            let (sequence, published, left) = (info.stream_sequence, info.published, info.pending);
            StoredEvent::decode(sequence, m.subject.as_str(), published, m.payload.clone()).map(|e| (e, left))
        });
        Ok((events, pending))
    }
}

/// Sets `event`'s link to `head`.
pub fn link(event: &mut Event, head: &ChainHead) {
    event.prev_hash = head.hash.clone();
    event.chain_index = head.index.saturating_add(1);
}

fn headers_for(event: &Event, expect: Expect) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, event.id.as_str());
    if let Expect::LastSequence(seq) = expect {
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            seq.to_string().as_str(),
        );
    }
    if let Some(trace) = &event.trace {
        if !trace.traceparent.is_empty() {
            headers.insert(TRACEPARENT, trace.traceparent.as_str());
        }
        if !trace.tracestate.is_empty() {
            headers.insert(TRACESTATE, trace.tracestate.as_str());
        }
    }
    if let Some(body) = &event.body {
        headers.insert(EVENT_KIND, crate::body_kind(body));
    }
    headers
}

/// JetStream API errors that retrying cannot fix (the stream refused the
/// message), as opposed to transport trouble.
fn is_permanent(e: &context::PublishError) -> bool {
    use std::error::Error as _;
    e.source()
        .is_some_and(|s| s.downcast_ref::<jetstream::Error>().is_some())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Appends the events of a chain that only facts are written to (a proxy's
/// session), keeping the head in memory so an append costs one round trip.
/// If someone else appended to the subject meanwhile (a kill request filed by
/// the control plane), the head is re-read and the append retried: facts do
/// not need re-judging.
#[derive(Debug)]
pub struct ChainWriter {
    subject: String,
    head: Option<ChainHead>,
    /// The highest chain index this writer has stored: a head re-read
    /// after a conflict continues from at least it (the message last on
    /// the subject may be a stored copy of an older event).
    floor: u64,
}

impl ChainWriter {
    pub fn new(subject: impl Into<String>) -> ChainWriter {
        ChainWriter {
            subject: subject.into(),
            head: None,
            floor: 0,
        }
    }

    /// A writer for a subject known to have no events yet (a new session).
    pub fn new_chain(subject: impl Into<String>) -> ChainWriter {
        ChainWriter {
            subject: subject.into(),
            head: Some(ChainHead::empty()),
            floor: 0,
        }
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Links `event` to the chain and appends it. Returns the stored event,
    /// which carries the trace context of the append's `log.append` span
    /// (see [`crate::trace`]) unless it carried one already.
    pub async fn append(&mut self, log: &EventLog, mut event: Event) -> Result<(Appended, Event), Error> {
        let span = crate::trace::append_span(&self.subject, &mut event);
        self.append_linked(log, event).instrument(span).await
    }

    async fn append_linked(&mut self, log: &EventLog, mut event: Event) -> Result<(Appended, Event), Error> {
        for _ in 0..5 {
            let mut head = match &self.head {
                Some(h) => h.clone(),
                None => {
                    // After an append of unknown outcome: if that very event
                    // (by a trusted writer, same id, same body) is now last
                    // on the subject, it was stored and only its
                    // acknowledgement was lost. Linking it again after
                    // itself would make other bytes under the same id,
                    // which the log refuses for good.
                    if let Ok(Some(last)) = log.last(&self.subject).await
                        && last.event.id == event.id
                        && last.event.body == event.body
                        && log.vouched(&last)
                    {
                        let head = ChainHead::of(&last);
                        self.head = Some(head.clone());
                        self.floor = self.floor.max(last.event.chain_index);
                        let appended = Appended {
                            sequence: last.sequence,
                            duplicate: true,
                            head,
                        };
                        return Ok((appended, last.event));
                    }
                    log.head(&self.subject).await?
                }
            };
            head.index = head.index.max(self.floor);
            link(&mut event, &head);
            match log
                .append_as_is(&self.subject, &event, Expect::LastSequence(head.sequence))
                .await
            {
                Ok(appended) => {
                    // A duplicate means an earlier try of this event id was
                    // stored, perhaps with another link: re-read next time.
                    self.head = (!appended.duplicate).then(|| appended.head.clone());
                    self.floor = self.floor.max(event.chain_index);
                    return Ok((appended, event));
                }
                Err(Error::Conflict { .. }) => {
                    // Someone else wrote to the subject: re-read the head.
                    self.head = None;
                }
                Err(e) => {
                    // Unknown outcome: the next append must re-read the head.
                    self.head = None;
                    return Err(e);
                }
            }
        }
        Err(Error::Conflict {
            subject: self.subject.clone(),
            expected: 0,
            detail: "the subject kept moving after 5 re-reads".to_owned(),
        })
    }
}
