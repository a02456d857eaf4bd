//! The reading side: the client's messages, in order, to PostgreSQL.
//!
//! [`ToUpstream::run`] reads a message (or notices a shutdown or a kill),
//! applies what holds for every message (name limits, reserved names, an
//! expired token, COPY mode, a Query inside an open batch), and dispatches
//! it to one handler per kind: [`super::simple`] for Query and
//! FunctionCall, [`super::extended`] for the extended protocol. A handler
//! either forwards the message, holds it ([`super::hold`]) or refuses it
//! ([`super::refuse`]), and returns `Err` only when the session must end.
//! After every handler the loop checks the name limits and writes what is
//! batched unless the client has more pipelined.

use std::sync::Arc;

use airlock_eventlog::proto::session_closed::Cause;
use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use super::inflight::{Queue, queue};
use super::login::token_expired;
use super::signals::{Interrupt, Signals};
use super::to_client::Inject;
use super::{Ctx, Ending};
use crate::codec::{CodecError, FeMessage, Frame, FrameReader, ReadError};
use crate::conn::ClientStream;
use crate::error_response;
use crate::names::{Lookup, Names};
use crate::record::{RecorderFull, Slot};

pub(super) type ClientReader = FrameReader<ReadHalf<Box<dyn ClientStream>>>;
pub(super) type UpstreamWriter = WriteHalf<Box<dyn ClientStream>>;

/// How long a statement waits for room in a full recording buffer before
/// it is refused (the log is not keeping up; nothing runs unrecorded).
const RECORD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The reading side's state.
pub(super) struct ToUpstream {
    pub ctx: Arc<Ctx>,
    pub client: ClientReader,
    pub upstream: UpstreamWriter,
    /// Messages for PostgreSQL not yet written (pipelined ones go together).
    pub out: BytesMut,
    pub queue: Queue,
    pub inject: mpsc::Sender<Inject>,
    pub signals: Signals,
    /// The extended-protocol batch open from its first message to its Sync.
    pub batch: Batch,
    /// The agent's reason and recent statements, for reviewers.
    pub context: super::context::SessionContext,
    /// A portal bound under row bounds, in a transaction (or savepoint) of
    /// the proxy's, waiting for its Execute.
    pub pending_bound: Option<super::bounded::PendingBound>,
    /// After an error the proxy saw and PostgreSQL no longer does (a
    /// bounded run it ended with a Sync of its own): the client's messages
    /// are dropped up to its Sync, as PostgreSQL would skip them.
    pub skip_to_sync: bool,
}

/// What the open extended-protocol batch holds, as far as a simple Query
/// sent inside it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Batch {
    /// No batch is open.
    Closed,
    /// Only Parse, Describe, Close and Flush: nothing has run. A Query here
    /// is sent behind a Sync of the proxy's own (see [`ToUpstream::message`]).
    Prepares,
    /// A Bind or an Execute: something may have run in the batch's
    /// implicit transaction, which a Sync of the proxy's would commit
    /// early. A Query here ends the session.
    Runs,
}

impl ToUpstream {
    pub(super) fn new(
        ctx: Arc<Ctx>,
        client: ClientReader,
        upstream: UpstreamWriter,
        queue: Queue,
        inject: mpsc::Sender<Inject>,
        signals: Signals,
    ) -> ToUpstream {
        ToUpstream {
            ctx,
            client,
            upstream,
            out: BytesMut::new(),
            queue,
            inject,
            signals,
            batch: Batch::Closed,
            context: Default::default(),
            pending_bound: None,
            skip_to_sync: false,
        }
    }

    /// Runs until the session ends; returns why.
    pub(super) async fn run(mut self) -> Ending {
        loop {
            let read = tokio::select! {
                r = self.client.read_frame() => r,
                i = self.signals.interrupted() => return self.interrupted(i).await,
            };
            let frame = match read {
                Ok(Some(f)) => f,
                Ok(None) => {
                    // Let PostgreSQL finish what it was sent, then end cleanly.
                    self.terminate_upstream().await;
                    return Ending::new(Cause::ClientDisconnected, "client closed the connection");
                }
                Err(ReadError::Codec(e)) => return self.violation(&e).await,
                Err(e) => {
                    self.terminate_upstream().await;
                    return Ending::new(Cause::ClientDisconnected, e.to_string());
                }
            };
            let msg = match FeMessage::parse(&frame) {
                Ok(m) => m,
                Err(e) => return self.violation(&e).await,
            };
            if let Err(ending) = self.message(&frame, msg).await {
                return ending;
            }
            if self.ctx.names().over_limit() {
                return self
                    .violation(&malformed(&frame, "too many prepared statements or portals"))
                    .await;
            }
            if let Err(e) = self.flush_if_idle().await {
                return e;
            }
        }
    }

    /// One message: the checks every message passes, then its handler.
    async fn message(&mut self, frame: &Frame, msg: FeMessage) -> Result<(), Ending> {
        if let Some(what) = self.ctx.names_refused(&msg) {
            return Err(self.violation(&malformed(frame, what)).await);
        }
        // A session does not outlive the token it was opened with: the next
        // statement after expiry ends it, and the agent reconnects with a
        // fresh token (nothing runs on an expired identity).
        if matches!(
            msg,
            FeMessage::Query { .. } | FeMessage::Parse { .. } | FeMessage::Execute { .. }
        ) && token_expired(&self.ctx.agent.identity)
        {
            let _ = self
                .inject
                .send(Inject::Fatal(error_response::token_expired()))
                .await;
            return Err(Ending::new(Cause::TokenExpired, "access token expired"));
        }
        if self.ctx.copy_in.load(std::sync::atomic::Ordering::Acquire) {
            return self.copy_data(frame, msg).await;
        }
        if self.skip_to_sync && !matches!(msg, FeMessage::Sync | FeMessage::Terminate) {
            return Ok(());
        }
        self.skip_to_sync = false;
        // A portal bound under bounds runs with its own Execute; anything
        // else first ends the proxy's transaction around it.
        if let Some(pending) = &self.pending_bound {
            let its_own = match &msg {
                FeMessage::Execute { portal, .. } => *portal == pending.portal,
                FeMessage::Describe { kind, name } => *kind == b'P' && *name == pending.portal,
                FeMessage::Flush => true,
                _ => false,
            };
            if !its_own {
                self.abandon_bound().await?;
            }
        }
        if matches!(msg, FeMessage::Query { .. } | FeMessage::FunctionCall(_)) && self.batch != Batch::Closed
        {
            // PostgreSQL runs a Query inside a batch, unless an error earlier
            // in the batch has it skipping to the Sync; the proxy cannot know
            // which in time. Drivers do this after Parse, Describe and Flush
            // (asyncpg's prepare): there, nothing has run, so a Sync of the
            // proxy's own ends the batch first (its ReadyForQuery is not
            // passed on) and the Query is then answered as any other (even
            // where an error in the batch would have had PostgreSQL skip it:
            // see docs/proxy.md). After a Bind or an Execute, that Sync
            // would change what PostgreSQL commits: refused as before.
            if self.batch == Batch::Prepares {
                self.end_batch_for_query();
            } else {
                let what = "a simple Query after Bind or Execute in an unfinished extended-protocol batch \
                            (send Sync first)";
                return Err(self.violation(&malformed(frame, what)).await);
            }
        }
        match msg {
            FeMessage::Query { sql } => self.query(frame, sql).await,
            FeMessage::FunctionCall(_) => {
                self.function_call();
                Ok(())
            }
            FeMessage::Parse {
                name,
                query,
                param_types,
            } => self.parse(frame, name, query, param_types).await,
            FeMessage::Bind {
                portal,
                statement,
                param_formats,
                params,
                ..
            } => self.bind(frame, portal, statement, param_formats, params).await,
            FeMessage::Execute { portal, max_rows } => self.execute(frame, portal, max_rows).await,
            FeMessage::Describe { kind, name } => {
                self.describe(frame, kind, name);
                Ok(())
            }
            FeMessage::Close { kind, name } => {
                self.close(frame, kind, name);
                Ok(())
            }
            FeMessage::Sync => {
                self.sync(frame);
                Ok(())
            }
            FeMessage::Flush => {
                self.batch = self.batch.max(Batch::Prepares);
                frame.encode(&mut self.out);
                Ok(())
            }
            FeMessage::Terminate => {
                frame.encode(&mut self.out);
                let _ = self.upstream.write_all(&self.out).await;
                Err(Ending::new(Cause::ClientTerminated, "client sent Terminate"))
            }
            // Outside COPY, PostgreSQL answers stray COPY messages itself.
            FeMessage::CopyData(_) | FeMessage::CopyDone | FeMessage::CopyFail { .. } => {
                frame.encode(&mut self.out);
                Ok(())
            }
            FeMessage::Password(_) => Err(self
                .violation(&CodecError::Malformed {
                    tag: 'p',
                    what: "password message after login",
                })
                .await),
        }
    }

    /// During COPY FROM STDIN only COPY data may come; PostgreSQL ignores
    /// Sync and Flush then (so they are not counted, nor sent). COPY mode
    /// lasts until the COPY query's own ReadyForQuery: after a CopyDone,
    /// PostgreSQL may start the next COPY of the same query string, so a
    /// message sent before that answer could be swallowed as COPY input
    /// and the proxy's model of the session would slip. Such a message ends
    /// the session; a client that waits for the answer never sees this.
    async fn copy_data(&mut self, frame: &Frame, msg: FeMessage) -> Result<(), Ending> {
        match msg {
            FeMessage::CopyData(_) | FeMessage::CopyDone | FeMessage::CopyFail { .. } => {}
            FeMessage::Sync | FeMessage::Flush => return Ok(()),
            FeMessage::Query { .. }
            | FeMessage::Parse { .. }
            | FeMessage::Bind { .. }
            | FeMessage::Describe { .. }
            | FeMessage::Execute { .. }
            | FeMessage::Close { .. }
            | FeMessage::Terminate
            | FeMessage::Password(_)
            | FeMessage::FunctionCall(_) => {
                let what = "only COPY data may be sent during COPY FROM STDIN (after CopyDone, wait for \
                            the COPY's ReadyForQuery)";
                return Err(self.violation(&malformed(frame, what)).await);
            }
        }
        frame.encode(&mut self.out);
        Ok(())
    }

    /// Writes what is batched unless the client has more pipelined.
    pub(super) async fn flush_if_idle(&mut self) -> Result<(), Ending> {
        if !self.client.has_buffered_frame() && !self.out.is_empty() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes what is batched now (before a hold or a wait, everything
    /// pipelined so far goes first).
    pub(super) async fn flush(&mut self) -> Result<(), Ending> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.upstream
            .write_all(&self.out)
            .await
            .map_err(|e| Ending::new(Cause::UpstreamClosed, format!("upstream write: {e}")))?;
        self.out.clear();
        Ok(())
    }

    /// Asks PostgreSQL to end once it has answered what it was sent.
    pub(super) async fn terminate_upstream(&mut self) {
        self.out
            .extend_from_slice(&FeMessage::Terminate.to_frame().to_bytes());
        let _ = self.upstream.write_all(&self.out).await;
        self.out.clear();
    }

    /// Room for a statement's record, when it is recorded (`needed`). When
    /// the buffer is full, what is already batched for PostgreSQL goes out
    /// first, then the statement waits up to [`RECORD_WAIT`].
    pub(super) async fn reserve_record(&mut self, needed: bool) -> Result<Option<Slot>, RecorderFull> {
        if !needed {
            return Ok(None);
        }
        let recorder = &self.ctx.deps.recorder;
        if let Ok(slot) = recorder.reserve(&self.ctx.session) {
            return Ok(Some(slot));
        }
        if !self.out.is_empty() && self.upstream.write_all(&self.out).await.is_ok() {
            self.out.clear();
        }
        recorder
            .reserve_within(&self.ctx.session, RECORD_WAIT)
            .await
            .map(Some)
    }

    /// What a name refers to, waiting for PostgreSQL's answers when an
    /// earlier batch made it ambiguous, instead of guessing. Only operations
    /// before a Sync already forwarded make a name ambiguous, so PostgreSQL
    /// answers them and the wait ends; meanwhile the client's next messages
    /// wait (as PostgreSQL itself would make them), and a kill or shutdown
    /// still ends the session at once.
    /// `None`: the name is not one Airlock judged.
    pub(super) async fn resolve<T>(
        &mut self,
        lookup: impl Fn(&Names) -> Lookup<T>,
    ) -> Result<Option<T>, Ending> {
        let now = lookup(&self.ctx.names());
        if !matches!(now, Lookup::Ambiguous) {
            return Ok(now.one());
        }
        self.flush().await?;
        let ctx = self.ctx.clone();
        loop {
            // Registered before looking, so no answer slips in between.
            let settled = ctx.names_settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let now = lookup(&ctx.names());
            if !matches!(now, Lookup::Ambiguous) {
                return Ok(now.one());
            }
            tokio::select! {
                () = &mut settled => {}
                i = self.signals.interrupted() => return Err(self.interrupted(i).await),
            }
        }
    }

    /// Before `text` goes upstream: if PostgreSQL could read it differently
    /// under settings an unanswered statement may have changed (a function
    /// calling `set_config('client_encoding', ...)`), waits for PostgreSQL's
    /// answer to that statement, whose ParameterStatus the proxy checks
    /// (and ends the session on). Text that reads the same under every
    /// setting, the common case, never waits. `Ok(false)`: it cannot be
    /// waited for (the statement is in the open extended batch, before any
    /// Sync), so `text` must be refused.
    pub(super) async fn settle_reading(&mut self, text: &str) -> Result<bool, Ending> {
        use super::inflight::{ReadingWait, reads_the_same_everywhere};
        use std::sync::atomic::Ordering;
        let broken = |ctx: &Ctx| ctx.reading_broken.load(Ordering::Acquire);
        let ended = || {
            Ending::new(
                Cause::Error,
                "PostgreSQL reads statements differently from the proxy now",
            )
        };
        if broken(&self.ctx) {
            return Err(ended());
        }
        if reads_the_same_everywhere(text) {
            return Ok(true);
        }
        let ctx = self.ctx.clone();
        loop {
            let settled = ctx.names_settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if broken(&ctx) {
                return Err(ended());
            }
            match queue(&self.queue).reading_wait() {
                ReadingWait::Clear => return Ok(true),
                ReadingWait::OpenBatch => return Ok(false),
                ReadingWait::Ready => {}
            }
            self.flush().await?;
            tokio::select! {
                () = &mut settled => {}
                i = self.signals.interrupted() => return Err(self.interrupted(i).await),
            }
        }
    }

    /// The proxy stops, or a reviewer killed the session: a statement may
    /// be running upstream, so cancel it, then end.
    pub(super) async fn interrupted(&mut self, i: Interrupt) -> Ending {
        // The client hears why first: the cancel's own error from
        // PostgreSQL (57014) must not arrive ahead of the FATAL.
        let ending = match i {
            Interrupt::Stopping => {
                let _ = self
                    .inject
                    .send(Inject::Fatal(error_response::shutting_down()))
                    .await;
                Ending::new(Cause::ProxyShutdown, "proxy shutting down")
            }
            Interrupt::Killed(order) => self.killed(&order).await,
        };
        let (addr, key) = self.ctx.upstream_cancel.clone();
        crate::cancel::relay(&addr, key).await;
        let _ = self
            .upstream
            .write_all(&FeMessage::Terminate.to_frame().to_bytes())
            .await;
        ending
    }

    /// Tells the client who ended its session and why.
    pub(super) async fn killed(&mut self, order: &airlock_eventlog::proto::KillOrder) -> Ending {
        let who = order.requested_by.as_ref();
        let _ = self
            .inject
            .send(Inject::Fatal(error_response::killed_by(who, &order.reason)))
            .await;
        let who = error_response::person(who);
        Ending::new(Cause::Killed, format!("killed by {who}: {}", order.reason))
    }

    pub(super) async fn violation(&mut self, e: &CodecError) -> Ending {
        let _ = self
            .inject
            .send(Inject::Fatal(error_response::protocol_violation(e)))
            .await;
        Ending::new(Cause::ProtocolViolation, e.to_string())
    }
}

fn malformed(frame: &Frame, what: &'static str) -> CodecError {
    CodecError::Malformed {
        tag: frame.tag as char,
        what,
    }
}
