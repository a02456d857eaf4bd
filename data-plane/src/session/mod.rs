//! One client session, after startup: the agent's login, the upstream
//! connection, and the relay that judges, holds, refuses and records every
//! statement.
//!
//! The rooms, in the order a statement passes through them:
//! * [`login`]: the token exchange, the policy binding and the upstream
//!   login, ending in ReadyForQuery or a refusal;
//! * [`relay`]: starts the two tasks below and records how the session ended;
//! * [`to_upstream`]: reads the client's messages, checks what applies to
//!   every message, and dispatches each kind to its handler in [`simple`]
//!   (Query, FunctionCall) or [`extended`] (Parse, Bind, Execute, ...);
//! * [`hold`]: a statement needing approval waits for its decision;
//! * [`refuse`]: refused statements are replaced by stand-ins that fail
//!   upstream in their place (the module says why);
//! * [`inflight`]: what was sent upstream and not yet answered, matched to
//!   PostgreSQL's answers (pure);
//! * [`to_client`]: the single writer to the client, recording statements as
//!   their answers arrive;
//! * [`signals`]: shutdown, kill orders and cancel requests, in one place.
//!
//! All client output is written by one task (upstream -> client); the other
//! task (client -> upstream) forwards, substitutes, and injects notices and
//! fatal errors through a channel, so output stays in order.

mod bounded;
mod context;
mod extended;
mod hold;
mod inflight;
mod login;
mod refuse;
mod relay;
mod signals;
mod simple;
mod to_client;
mod to_upstream;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{EventLog, SessionId, new_event};

use crate::attach::Holds;
use crate::codec::Diagnostic;
use crate::conn::{Login, fatal};
use crate::error_response;
use crate::gate::{Agent, Binding, Gate};
use crate::metrics::{self, Metrics};
use crate::names::Names;
use crate::record::Recorder;
use inflight::Running;

/// Why a statement is refused when its text could be read differently
/// under settings a statement before it, in the same unsynchronised
/// extended batch, may have changed (see `ToUpstream::settle_reading`).
const READING_UNSETTLED: &str = "this statement has non-ASCII characters or backslashes and follows, in the same batch, a statement that may change how PostgreSQL reads text (client_encoding, standard_conforming_strings); send Sync before it";

/// What every session shares.
pub struct Deps {
    pub gate: Arc<dyn Gate>,
    pub log: EventLog,
    pub recorder: Recorder,
    pub holds: Arc<Holds>,
    pub source: proto::Source,
    /// Base URL of the reviewer UI, named in hold notices.
    pub reviewer_url: Option<String>,
    /// Extra time past a hold's deadline before the proxy refuses it on its
    /// own (the control plane's expiry normally arrives first).
    pub expiry_grace: Duration,
    /// Time limits of a held statement's impact estimate and dry run.
    pub impact: crate::impact::Limits,
    pub cancels: Arc<crate::cancel::Cancels>,
    pub metrics: Arc<Metrics>,
    /// Shutdown state: see [`Phase`].
    pub phase: tokio::sync::watch::Receiver<Phase>,
}

/// Where a proxy is in its life. Draining: no new connections, held
/// statements are refused (the proxy cannot wait for approvals it is about
/// to abandon), running sessions go on. Stopping: sessions end now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    Draining,
    Stopping,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Why a session ended, for `SessionClosed`.
#[derive(Debug, Clone)]
struct Ending {
    cause: proto::session_closed::Cause,
    detail: String,
}

impl Ending {
    fn new(cause: proto::session_closed::Cause, detail: impl Into<String>) -> Ending {
        Ending {
            cause,
            detail: detail.into(),
        }
    }
}

/// Runs a session to its end. Never panics on client input; every failure
/// ends in an error message to the client and a log line.
pub async fn run(mut login: Login, deps: Arc<Deps>) {
    let peer = login.peer;
    deps.metrics.connection_accepted();
    let decided = login::authenticate(&mut login, deps.gate.as_ref()).await;
    // Logged in or refused: no longer one of the connections logging in.
    drop(login.unauthenticated.take());
    let logged_in = match decided {
        Ok(x) => x,
        Err(refusal) => {
            deps.metrics.login_refused();
            tracing::info!(%peer, reason = %refusal.message, "login refused");
            fatal(
                &mut login.io,
                &error_response::login_refused(refusal.sqlstate, &refusal.message),
            )
            .await;
            return;
        }
    };
    let login::LoggedIn {
        agent,
        binding,
        upstream,
        key,
        welcome,
    } = logged_in;
    let ctx = Arc::new(Ctx::new(deps.clone(), &login, agent, binding, &upstream));
    let opened = ctx.event(Body::SessionOpened(proto::SessionOpened {
        identity: Some(ctx.agent.identity.clone()),
        connection: Some(ctx.binding.connection_info()),
        client: Some(ctx.client.clone()),
        proxy_id: deps.source.id.clone(),
        policies: ctx.binding.policies.clone(),
        record: ctx.binding.record,
        proxy_instance: deps.holds.instance().to_owned(),
    }));
    // Room for the session's last event is taken now, with its first: a
    // full buffer later cannot leave an opening in the log without a close.
    let Ok(close_slot) = deps.recorder.reserve(&ctx.session) else {
        deps.metrics.login_refused();
        fatal(&mut login.io, &error_response::cannot_record_sessions()).await;
        return;
    };
    let closed = |cause: proto::session_closed::Cause, detail: String| {
        let (executed, refused) = *ctx.counts.lock().unwrap_or_else(|p| p.into_inner());
        ctx.event(Body::SessionClosed(proto::SessionClosed {
            cause: cause as i32,
            detail,
            statements_executed: executed,
            statements_refused: refused,
            duration: prost_types::Duration::try_from(ctx.opened.elapsed()).ok(),
        }))
    };
    // The session's first event is in the log before the client is told it
    // is in, and before any of its statements runs or is held, so a record
    // never starts in the middle. If it cannot be recorded in time, the
    // login is refused; the opening may still reach the log later, so its
    // close follows it there.
    if let Err(why) = deps
        .recorder
        .record_and_wait(&ctx.session, opened, Duration::from_secs(5))
        .await
    {
        deps.metrics.login_refused();
        // A close only where an opening may follow into the log: one that
        // found no room was never queued, and neither is its close.
        if why == crate::record::NotRecorded::Late {
            close_slot.send(closed(
                proto::session_closed::Cause::Error,
                "login refused: the session's opening could not be recorded in time (the event log is unreachable or slow); the client was never told it was in".to_owned(),
            ));
        }
        fatal(&mut login.io, &error_response::cannot_record_sessions()).await;
        return;
    }
    if let Err(e) = login::write(&mut login, &welcome).await {
        tracing::info!(%peer, session = %ctx.session, reason = %e.message, "client left at login");
        close_slot.send(closed(
            proto::session_closed::Cause::ClientDisconnected,
            e.message,
        ));
        return;
    }
    tracing::info!(%peer, session = %ctx.session, agent = %ctx.agent.describe(), connection = %ctx.binding.connection, "session open");
    let kills = deps.holds.open_session(ctx.session.as_str());
    deps.metrics.session_opened();
    let (cancel_tx, cancel_rx) = tokio::sync::mpsc::channel(1);
    deps.cancels.register(
        key,
        crate::cancel::Cancellable {
            holding: ctx.holding.clone(),
            cancel_hold: cancel_tx,
            upstream_addr: upstream.addr.clone(),
            upstream_key: (upstream.process_id, upstream.secret_key),
        },
    );
    let signals = signals::Signals::new(deps.phase.clone(), kills, cancel_rx);
    let ending = relay::relay(login, upstream, ctx.clone(), signals).await;
    deps.cancels.unregister(key);
    // A hold the session's end cut short (PostgreSQL went away, an error)
    // was neither decided nor cancelled: its request ends here, with the
    // cause, so no reviewer is left approving a statement nobody waits on.
    for abandoned in deps.holds.close_session(ctx.session.as_str()) {
        if let Ok(id) = airlock_eventlog::RequestId::parse(&abandoned.request_id) {
            hold::cancel(
                &ctx,
                &id,
                proto::approval_cancelled::Cause::SessionEnded,
                &format!("the session holding it ended: {}", ending.detail),
            )
            .await;
        }
    }
    deps.metrics.session_closed();
    if ending.cause == proto::session_closed::Cause::TokenExpired {
        deps.metrics.refused(metrics::Refusal::TokenExpired);
    }
    // Into the room taken at login: never dropped for a full buffer. It
    // counts every refusal, and says how many had no event of their own.
    let mut detail = ending.detail;
    let unrecorded = ctx.unrecorded_refusals.load(std::sync::atomic::Ordering::Relaxed);
    if unrecorded > 0 {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&format!(
            "{unrecorded} refused statement(s) could not be recorded one by one (the event log was not keeping up); statements_refused counts them"
        ));
    }
    close_slot.send(closed(ending.cause, detail));
}

/// Per-session context shared by the two relay tasks.
struct Ctx {
    deps: Arc<Deps>,
    session: SessionId,
    agent: Agent,
    binding: Binding,
    client: proto::ClientInfo,
    opened: Instant,
    /// (executed, refused)
    counts: Mutex<(u64, u64)>,
    /// Refusals whose event found no room in the record buffer: the
    /// session's close (whose room is reserved) says how many.
    unrecorded_refusals: std::sync::atomic::AtomicU64,
    /// Parameter types the server reported (ParameterDescription) for
    /// statements the client described, to show bound values readably.
    described: Mutex<Described>,
    /// True while a statement of this session is held (a cancel then
    /// cancels the hold instead of going upstream).
    holding: Arc<std::sync::atomic::AtomicBool>,
    /// Prepared statements and portals as PostgreSQL has them.
    names: Mutex<Names>,
    /// Where and with which key to cancel the upstream's running query.
    upstream_cancel: (String, (i32, i32)),
    /// Names the proxy's stand-ins: see [`refuse`].
    marker: String,
    /// A COPY FROM STDIN may be in progress: only COPY data may follow.
    copy_in: std::sync::atomic::AtomicBool,
    /// Woken whenever PostgreSQL's answers settle pending names (a
    /// completion, an error, a ReadyForQuery): see `ToUpstream::settle`.
    names_settled: tokio::sync::Notify,
    /// PostgreSQL reported a setting under which it reads statements
    /// differently from the proxy: nothing more may be sent.
    reading_broken: std::sync::atomic::AtomicBool,
}

/// Parameter types PostgreSQL reported, bound to the exact statement they
/// describe (its Parse message), never to a name: a name can be closed and
/// parsed again before the answer arrives, and a type shown for the wrong
/// statement would show the reviewer a value PostgreSQL does not read.
#[derive(Default)]
struct Described {
    /// The statement each Describe('S') awaiting its answer describes;
    /// `None` when the proxy could not tell which (the answer is ignored).
    waiting: VecDeque<Option<bytes::Bytes>>,
    types: HashMap<bytes::Bytes, Vec<u32>>,
}

impl Ctx {
    fn new(
        deps: Arc<Deps>,
        login: &Login,
        agent: Agent,
        binding: Binding,
        upstream: &crate::upstream::Upstream,
    ) -> Ctx {
        let param = |k: &str| login.params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let client = proto::ClientInfo {
            address: login.peer.to_string(),
            user: param("user").unwrap_or_default(),
            database: param("database").unwrap_or_default(),
            application_name: param("application_name").unwrap_or_default(),
            tls: login.tls,
            tls_version: String::new(),
        };
        Ctx {
            deps,
            session: SessionId::generate(),
            agent,
            binding,
            client,
            opened: Instant::now(),
            counts: Mutex::new((0, 0)),
            unrecorded_refusals: Default::default(),
            described: Mutex::default(),
            holding: Arc::default(),
            names: Mutex::default(),
            upstream_cancel: (upstream.addr.clone(), (upstream.process_id, upstream.secret_key)),
            marker: refuse::new_marker(),
            copy_in: std::sync::atomic::AtomicBool::new(false),
            names_settled: tokio::sync::Notify::new(),
            reading_broken: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn names(&self) -> std::sync::MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn described(&self) -> std::sync::MutexGuard<'_, Described> {
        self.described.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(&self, body: Body) -> proto::Event {
        let mut e = new_event(&self.deps.source, body);
        e.session_id = self.session.to_string();
        e
    }

    fn count(&self, executed: bool) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if executed {
            c.0 += 1;
        } else {
            c.1 += 1;
        }
    }

    fn count_verdict(&self, j: &crate::gate::Judgement) {
        use crate::gate::Action;
        self.deps.metrics.judged(match j.action {
            Action::Allow => metrics::Verdict::Allow,
            Action::Deny { .. } => metrics::Verdict::Deny,
            Action::Hold(_) => metrics::Verdict::RequireApproval,
        });
    }

    /// Records a refusal; the message the client gets. A full buffer is
    /// logged: the statement is refused either way, so nothing ran
    /// unrecorded.
    fn refused(
        &self,
        r: refuse::Refused,
        counted: metrics::Refusal,
        bound: Option<proto::BoundCheck>,
    ) -> Diagnostic {
        self.count(false);
        self.deps.metrics.refused(counted);
        let d = r.diagnostic;
        let (request_id, grant_id) = hold::approval_ids(r.request_id);
        let e = self.event(Body::StatementRefused(proto::StatementRefused {
            statement: Some(r.statement),
            verdict: Some(r.verdict),
            cause: r.cause as i32,
            request_id,
            grant_id,
            message: d.message.clone(),
            sqlstate: d.code.to_owned(),
            bound,
        }));
        if self.deps.recorder.record(&self.session, e).is_err() {
            self.unrecorded_refusals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(session = %self.session, "a refusal could not be recorded: buffer full");
        }
        d
    }

    /// A statement PostgreSQL has answered: applies what it changed (SQL
    /// PREPARE, DEALLOCATE ALL), and records it.
    fn finish(&self, r: Running) {
        self.count(true);
        self.deps.metrics.answered(r.started.elapsed().as_secs_f64());
        if let Some(finished) = &r.on_finish {
            finished(r.error.is_none());
        }
        if r.error.is_none() && r.drops_all {
            self.names().drop_all();
        }
        self.record(r, None);
    }

    /// Writes a statement's `StatementExecuted` into the room reserved for
    /// it (if recording applies to it); `ended` when the session ended
    /// before PostgreSQL finished answering it, with why.
    fn record(&self, r: Running, ended: Option<&str>) {
        let Some(slot) = r.slot else { return };
        let rows = r
            .tags
            .iter()
            .filter_map(|t| t.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()))
            .sum();
        let (error_sqlstate, mut error_message) = r.error.unwrap_or_default();
        if let Some(why) = ended {
            if !error_message.is_empty() {
                error_message.push_str("; ");
            }
            error_message.push_str("the session ended before PostgreSQL finished answering: ");
            error_message.push_str(why);
        }
        let (request_id, grant_id) = hold::approval_ids(r.request_id);
        let e = self.event(Body::StatementExecuted(proto::StatementExecuted {
            statement: Some(r.statement),
            verdict: Some(r.verdict),
            request_id,
            grant_id,
            duration: prost_types::Duration::try_from(r.started.elapsed()).ok(),
            command_tag: r.tags.join("; "),
            rows,
            error_sqlstate,
            error_message,
            unfinished: ended.is_some(),
            bound: r.bound,
        }));
        slot.send(e);
    }
}
