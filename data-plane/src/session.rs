//! One client session, after startup: the agent's login, the upstream
//! connection, and the relay that judges, holds, refuses and records every
//! statement.
//!
//! How refusals keep PostgreSQL's semantics. A refused statement is never
//! sent upstream. In its place the proxy sends a stand-in PostgreSQL rejects
//! (a query naming an unknown column, or a statement or portal that does not
//! exist), named with a per-session marker no client can know or use, and
//! rewrites that error into the refusal the client should see. So the
//! refusal arrives in its exact place among pipelined responses, an
//! extended-protocol batch is skipped up to its Sync, and an open transaction
//! is aborted, just as PostgreSQL does for a statement it rejects.
//!
//! Held statements (simple protocol). The proxy appends `ApprovalRequested`
//! (exact text, SHA-256 of the exact Query message), tells the client in a
//! NOTICE which request it waits on, and waits for the decision from the
//! control plane, a local deadline, a kill order or the client leaving. On a
//! grant whose digest matches, the held bytes are forwarded unchanged.
//! Over the extended protocol a held statement is parsed upstream (which
//! runs nothing) and held at its Execute, with its bound parameters shown to
//! the reviewer and the approval bound to the exact Parse, Bind and Execute
//! messages; a refusal there fails that Execute, as PostgreSQL would, and the
//! rest of the batch up to Sync is skipped.
//!
//! All client output is written by one task (upstream -> client); the other
//! task (client -> upstream) forwards, substitutes, and injects notices and
//! fatal errors through a channel, so output stays in order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{ChainWriter, EventLog, RequestId, SessionId, new_event, subjects};
use bytes::BytesMut;
use futures::FutureExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use crate::attach::Holds;
use crate::codec::{
    BeMessage, CodecError, Diagnostic, FeMessage, Frame, FrameReader, ReadError, Severity, TxStatus,
    parse_diagnostic_fields,
};
use crate::gate::{Action, Agent, Binding, Gate, HoldSpec, Judgement};
use crate::names::{Lookup, Names, Portal, Statement};
use crate::record::{Recorder, Slot};
use crate::server::{ClientStream, Login};
use crate::upstream::Upstream;

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
    pub cancels: Arc<crate::cancel::Cancels>,
    pub metrics: Arc<crate::metrics::Metrics>,
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

/// Runs a session to its end. Never panics on client input; every failure
/// ends in an error message to the client and a log line.
pub async fn run(mut login: Login, deps: Arc<Deps>) {
    use crate::metrics::Metrics;
    let peer = login.peer;
    Metrics::inc(&deps.metrics.connections_total);
    let (agent, binding, upstream, key) = match authenticate(&mut login, deps.gate.as_ref()).await {
        Ok(x) => x,
        Err(refusal) => {
            Metrics::inc(&deps.metrics.logins_refused);
            tracing::info!(%peer, reason = %refusal.1, "login refused");
            fatal(&mut login.io, refusal.0, &refusal.1).await;
            return;
        }
    };
    let session = SessionId::generate();
    let param = |k: &str| login.params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let client = proto::ClientInfo {
        address: peer.to_string(),
        user: param("user").unwrap_or_default(),
        database: param("database").unwrap_or_default(),
        application_name: param("application_name").unwrap_or_default(),
        tls: login.tls,
        tls_version: String::new(),
    };
    let ctx = Arc::new(Ctx {
        deps: deps.clone(),
        session: session.clone(),
        agent,
        binding,
        client,
        opened: Instant::now(),
        counts: Mutex::new((0, 0)),
        described: Mutex::default(),
        holding: Arc::default(),
        names: Mutex::default(),
        upstream_cancel: (upstream.addr.clone(), (upstream.process_id, upstream.secret_key)),
        marker: format!(
            "{REFUSAL_TEXT} {:032x}{:032x}",
            ulid::Ulid::new().random(),
            ulid::Ulid::new().random()
        ),
        copy_in: std::sync::atomic::AtomicBool::new(false),
        names_settled: tokio::sync::Notify::new(),
    });
    let opened = ctx.event(Body::SessionOpened(proto::SessionOpened {
        identity: Some(ctx.agent.identity.clone()),
        connection: Some(ctx.binding.connection_info()),
        client: Some(ctx.client.clone()),
        proxy_id: deps.source.id.clone(),
        policies: ctx.binding.policies.clone(),
        record: ctx.binding.record,
    }));
    // The session's first event is in the log before any of its statements
    // runs or is held, so a record never starts in the middle.
    if !deps
        .recorder
        .record_and_wait(&session, opened, Duration::from_secs(5))
        .await
    {
        fatal(
            &mut login.io,
            "57P03",
            "Airlock cannot record sessions right now (the event log is not keeping up); retry shortly",
        )
        .await;
        return;
    }
    tracing::info!(%peer, %session, agent = %ctx.agent.describe(), connection = %ctx.binding.connection, "session open");
    let kills = deps.holds.open_session(session.as_str());
    Metrics::inc(&deps.metrics.connections_open);
    let (cancel_tx, cancel_rx) = mpsc::channel(1);
    deps.cancels.register(
        key,
        crate::cancel::Cancellable {
            holding: ctx.holding.clone(),
            cancel_hold: cancel_tx,
            upstream_addr: upstream.addr.clone(),
            upstream_key: (upstream.process_id, upstream.secret_key),
        },
    );
    let cause = relay(login, upstream, ctx.clone(), kills, cancel_rx).await;
    deps.cancels.unregister(key);
    deps.holds.close_session(session.as_str());
    Metrics::dec(&deps.metrics.connections_open);
    let (executed, refused) = *ctx.counts.lock().unwrap_or_else(|p| p.into_inner());
    let closed = ctx.event(Body::SessionClosed(proto::SessionClosed {
        cause: cause.0 as i32,
        detail: cause.1,
        statements_executed: executed,
        statements_refused: refused,
        duration: prost_types::Duration::try_from(ctx.opened.elapsed()).ok(),
    }));
    if deps.recorder.record(&session, closed).is_err() {
        tracing::error!(%session, "SessionClosed could not be buffered: the event log is not keeping up");
    }
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
    /// Names the proxy's stand-ins: "airlock: statement refused <random>",
    /// longer than PostgreSQL's 63-byte identifiers so no SQL PREPARE can
    /// create it; client names with its prefix, and SQL text containing
    /// [`REFUSAL_TEXT`], are refused.
    marker: String,
    /// A COPY FROM STDIN may be in progress: only COPY data may follow.
    copy_in: std::sync::atomic::AtomicBool,
    /// Woken whenever PostgreSQL's answers settle pending names (a
    /// completion, an error, a ReadyForQuery): see [`settle`].
    names_settled: tokio::sync::Notify,
}

/// The text every refusal stand-in carries.
const REFUSAL_TEXT: &str = "airlock: statement refused";

#[derive(Default)]
struct Described {
    /// Statement names of Describe('S') messages awaiting their answer.
    waiting: VecDeque<String>,
    types: HashMap<String, Vec<u32>>,
}

impl Ctx {
    fn names(&self) -> std::sync::MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A query PostgreSQL rejects at parse time, naming the marker as a
    /// column. Kept within 63 bytes, so PostgreSQL neither truncates it nor
    /// says so in a NOTICE.
    fn refusal_sql(&self) -> String {
        format!("SELECT \"{}\"", self.sql_marker())
    }

    /// An Execute of a portal that cannot exist (its name is the marker).
    fn no_portal(&self) -> FeMessage {
        FeMessage::Execute {
            portal: self.marker.clone(),
            max_rows: 0,
        }
    }

    /// The part of the marker errors about the SQL stand-in name.
    fn sql_marker(&self) -> &str {
        &self.marker[..self.marker.len().min(REFUSAL_TEXT.len() + 33)]
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

    /// Records a refusal. A full buffer is logged: the statement is refused
    /// either way, so nothing ran unrecorded.
    fn refused(
        &self,
        statement: proto::Statement,
        verdict: proto::Verdict,
        cause: proto::statement_refused::Cause,
        d: &Diagnostic,
        request_id: &str,
    ) {
        self.count(false);
        let e = self.event(Body::StatementRefused(proto::StatementRefused {
            statement: Some(statement),
            verdict: Some(verdict),
            cause: cause as i32,
            request_id: request_id.to_owned(),
            message: d.message.clone(),
            sqlstate: d.code.to_owned(),
        }));
        if self.deps.recorder.record(&self.session, e).is_err() {
            tracing::error!(session = %self.session, "a refusal could not be recorded: buffer full");
        }
    }
}

/// Password (token) exchange, policy binding and upstream login.
async fn authenticate(
    login: &mut Login,
    gate: &dyn Gate,
) -> Result<(Agent, Binding, Upstream, (i32, i32)), (&'static str, String)> {
    let mut out = BytesMut::new();
    BeMessage::AuthenticationCleartextPassword.encode(&mut out);
    write(&mut login.io, &out)
        .await
        .map_err(|e| ("08006", format!("writing to client: {e}")))?;
    let frame = match login.io.read_frame().await {
        Ok(Some(f)) => f,
        Ok(None) => return Err(("08006", "client left during login".into())),
        Err(e) => return Err(("08P01", e.to_string())),
    };
    if frame.tag != b'p' {
        return Err((
            "08P01",
            "expected a password message carrying the access token".into(),
        ));
    }
    // The token: NUL-terminated. Never log it.
    let raw = frame.body.strip_suffix(b"\0").unwrap_or(&frame.body);
    let token =
        std::str::from_utf8(raw).map_err(|_| ("28000", "the password is not a valid token".to_owned()))?;
    let agent = gate
        .authenticate(token)
        .await
        .map_err(|r| (r.sqlstate, r.message))?;

    let param = |k: &str| login.params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let database = param("database")
        .or_else(|| param("user"))
        .ok_or(("28000", "no database (connection name) given".to_owned()))?;
    let binding = gate
        .bind(&agent, &database)
        .map_err(|r| (r.sqlstate, r.message))?;

    let forwarded: Vec<(String, String)> = login
        .params
        .iter()
        .filter(|(k, _)| k != "user" && k != "database")
        .cloned()
        .collect();
    let upstream = Upstream::connect(&binding.upstream, &forwarded)
        .await
        .map_err(|e| {
            tracing::warn!(connection = %binding.connection, error = %e, "upstream login failed");
            (
                "08006",
                format!(
                    "connection \"{}\" is unavailable right now (the proxy could not log in upstream)",
                    binding.connection
                ),
            )
        })?;

    let mut out = BytesMut::new();
    BeMessage::AuthenticationOk.encode(&mut out);
    for (name, value) in &upstream.parameters {
        BeMessage::ParameterStatus { name, value }.encode(&mut out);
    }
    // The client gets the proxy's own cancel key, never the upstream's.
    let (process_id, secret_key) = session_key();
    BeMessage::BackendKeyData {
        process_id,
        secret_key,
    }
    .encode(&mut out);
    BeMessage::ReadyForQuery(TxStatus::Idle).encode(&mut out);
    write(&mut login.io, &out)
        .await
        .map_err(|e| ("08006", format!("writing to client: {e}")))?;
    Ok((agent, binding, upstream, (process_id, secret_key)))
}

fn session_key() -> (i32, i32) {
    let id = ulid::Ulid::new().0;
    ((id >> 64) as i32 & 0x7fff_ffff, id as i32)
}

/// A statement sent upstream and not yet answered, in order.
enum InFlight {
    /// A simple-protocol Query: answered by one ReadyForQuery.
    Simple(Running),
    /// An extended-protocol Execute: answered by CommandComplete (or an
    /// error); skipped if an earlier message of its batch failed.
    Extended(Running),
    /// A Sync: its ReadyForQuery ends a batch.
    Sync,
    /// A refusal's stand-in; `boundary` for a simple Query.
    Substitute {
        diagnostic: Option<Diagnostic>,
        boundary: bool,
    },
}

struct Running {
    statement: proto::Statement,
    verdict: proto::Verdict,
    request_id: String,
    started: Instant,
    tags: Vec<String>,
    error: Option<(String, String)>,
    /// Room for the record, reserved before the statement was sent.
    slot: Option<Slot>,
    /// What the gate learns once the statement succeeded (SQL PREPARE).
    on_success: Option<crate::gate::OnSuccess>,
    /// DEALLOCATE ALL or DISCARD ALL: on success, forget every statement.
    drops_all: bool,
}

type Queue = Arc<Mutex<VecDeque<InFlight>>>;

/// Messages for the client from the reading side, written in order with the
/// upstream's output by the single writer.
#[derive(Debug)]
enum Inject {
    Notice(Diagnostic),
    /// Write, then end the session.
    Fatal(Diagnostic),
}

/// Why a session ended, for `SessionClosed`.
type Ending = (proto::session_closed::Cause, String);

async fn relay(
    login: Login,
    upstream: Upstream,
    ctx: Arc<Ctx>,
    kills: mpsc::Receiver<proto::KillOrder>,
    cancels: mpsc::Receiver<()>,
) -> Ending {
    use proto::session_closed::Cause;
    let Upstream {
        reader: up_reader,
        writer: up_writer,
        ..
    } = upstream;
    let (client_stream, leftover) = login.io.into_parts();
    let (client_read, client_write) = tokio::io::split(client_stream);
    let mut client_reader = FrameReader::new(client_read, Default::default());
    if !leftover.is_empty() {
        // Bytes pipelined right after login stay in order.
        client_reader.prepend(leftover);
    }
    let queue: Queue = Arc::default();
    let unanswered = queue.clone();
    let (inject_tx, inject_rx) = mpsc::channel(16);

    let mut to_upstream = tokio::spawn(client_to_upstream(
        client_reader,
        up_writer,
        ctx.clone(),
        queue.clone(),
        inject_tx,
        kills,
        cancels,
    ));
    let mut to_client = tokio::spawn(upstream_to_client(
        up_reader,
        client_write,
        ctx.clone(),
        queue,
        inject_rx,
    ));
    // Either side ending ends the session; the other is stopped. A FATAL
    // from the reading side is written before the writer stops.
    let ending = tokio::select! {
        r = &mut to_upstream => {
            let ending = joined(r);
            // The writer finishes: after a FATAL it stops at once; after the
            // client left, it reads PostgreSQL's answers to what was already
            // sent (the proxy sent Terminate), so statements that ran are
            // recorded, then PostgreSQL closes.
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut to_client).await;
            to_client.abort();
            ending
        }
        r = &mut to_client => match r {
            // The writer stops by itself only after writing a FATAL the
            // reading side sent; the reason is the reading side's.
            Ok(Ok(())) => joined((&mut to_upstream).await),
            Ok(Err(e)) => {
                to_upstream.abort();
                (Cause::UpstreamClosed, e)
            }
            Err(e) => {
                to_upstream.abort();
                (Cause::Error, format!("session task failed: {e}"))
            }
        },
    };
    // Ended by the proxy (protocol violation, expired token, error): a
    // statement still running upstream is cancelled, not left to finish
    // unobserved. (Kills and shutdown cancel on their own.)
    if matches!(
        ending.0,
        Cause::ProtocolViolation | Cause::TokenExpired | Cause::Error
    ) {
        let (addr, key) = ctx.upstream_cancel.clone();
        crate::cancel::relay(&addr, key).await;
    }
    // Statements passed on and not answered when the session ended are
    // recorded as unfinished: the log shows every statement that may have
    // run, however the session ended.
    let left: Vec<InFlight> = unanswered
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
        .collect();
    for item in left {
        if let InFlight::Simple(r) | InFlight::Extended(r) = item {
            record(&ctx, r, Some(&ending.1));
        }
    }
    ending
}

fn joined(r: Result<Ending, tokio::task::JoinError>) -> Ending {
    r.unwrap_or_else(|e| {
        (
            proto::session_closed::Cause::Error,
            format!("session task failed: {e}"),
        )
    })
}

fn refusal(code: &'static str, message: String, hint: Option<String>) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        code,
        message,
        detail: None,
        hint,
    }
}

/// SHA-256 of a frame's exact wire bytes (tag, length, body), without
/// copying it: computed for every Query, so kept off the allocator.
fn frame_sha256(frame: &Frame) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update([frame.tag]);
    h.update(((frame.body.len() + 4) as i32).to_be_bytes());
    h.update(&frame.body);
    h.finalize().to_vec()
}

/// PostgreSQL's longest name (NAMEDATALEN - 1).
const MAX_NAME_BYTES: usize = 63;

/// Names reserved for the proxy's stand-ins; a client may not use them.
const RESERVED_PREFIX: &str = "airlock:";

fn reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

async fn client_to_upstream(
    mut client: FrameReader<ReadHalf<Box<dyn ClientStream>>>,
    mut upstream: WriteHalf<Box<dyn ClientStream>>,
    ctx: Arc<Ctx>,
    queue: Queue,
    inject: mpsc::Sender<Inject>,
    mut kills: mpsc::Receiver<proto::KillOrder>,
    mut cancels: mpsc::Receiver<()>,
) -> Ending {
    use proto::session_closed::Cause;
    let mut out = BytesMut::new();
    // An extended-protocol batch is open from its first message to its Sync.
    let mut batch_open = false;
    loop {
        let mut phase = ctx.deps.phase.clone();
        let read = tokio::select! {
            r = client.read_frame() => r,
            Ok(()) = phase.wait_for(|p| *p == Phase::Stopping).map(|r| r.map(|_| ())) => {
                return shutting_down(&ctx, &mut upstream, &inject).await;
            }
            Some(order) = kills.recv() => {
                return kill_now(&ctx, &mut upstream, &inject, &order).await;
            }
        };
        let frame = match read {
            Ok(Some(f)) => f,
            Ok(None) => {
                // Let PostgreSQL finish what it was sent, then end cleanly.
                out.extend_from_slice(&FeMessage::Terminate.to_frame().to_bytes());
                let _ = upstream.write_all(&out).await;
                return (Cause::ClientDisconnected, "client closed the connection".into());
            }
            Err(ReadError::Codec(e)) => return violation(&inject, &e).await,
            Err(e) => {
                out.extend_from_slice(&FeMessage::Terminate.to_frame().to_bytes());
                let _ = upstream.write_all(&out).await;
                return (Cause::ClientDisconnected, e.to_string());
            }
        };
        let msg = match FeMessage::parse(&frame) {
            Ok(m) => m,
            Err(e) => return violation(&inject, &e).await,
        };
        let names_used: Vec<&str> = match &msg {
            FeMessage::Parse { name, .. } => vec![name.as_str()],
            FeMessage::Bind {
                portal, statement, ..
            } => vec![portal.as_str(), statement.as_str()],
            FeMessage::Execute { portal, .. } => vec![portal.as_str()],
            FeMessage::Describe { name, .. } | FeMessage::Close { name, .. } => vec![name.as_str()],
            FeMessage::Query { .. }
            | FeMessage::Sync
            | FeMessage::Flush
            | FeMessage::Terminate
            | FeMessage::CopyData(_)
            | FeMessage::CopyDone
            | FeMessage::CopyFail { .. }
            | FeMessage::Password(_)
            | FeMessage::FunctionCall(_) => vec![],
        };
        if names_used.iter().any(|n| n.len() > MAX_NAME_BYTES) {
            // PostgreSQL compares only the first 63 bytes: longer names
            // could alias each other there and not here.
            return violation(
                &inject,
                &CodecError::Malformed {
                    tag: frame.tag as char,
                    what: "statement and portal names longer than 63 bytes are refused",
                },
            )
            .await;
        }
        if names_used.iter().any(|n| reserved(n)) {
            return violation(
                &inject,
                &CodecError::Malformed {
                    tag: frame.tag as char,
                    what: "statement and portal names starting with \"airlock:\" are reserved",
                },
            )
            .await;
        }
        // A session does not outlive the token it was opened with: the next
        // statement after expiry ends it, and the agent reconnects with a
        // fresh token (nothing runs on an expired identity).
        if matches!(
            msg,
            FeMessage::Query { .. } | FeMessage::Parse { .. } | FeMessage::Execute { .. }
        ) && token_expired(&ctx.agent.identity)
        {
            let _ = inject
                .send(Inject::Fatal(Diagnostic {
                    severity: Severity::Fatal,
                    code: "28000",
                    message: "the access token this session was opened with has expired; reconnect with a fresh token".into(),
                    detail: None,
                    hint: None,
                }))
                .await;
            return (Cause::TokenExpired, "access token expired".into());
        }
        // During COPY FROM STDIN only COPY data may come; PostgreSQL ignores
        // Sync and Flush then (so they are not counted, nor sent).
        if ctx.copy_in.load(std::sync::atomic::Ordering::Acquire) {
            match msg {
                FeMessage::CopyData(_) => {}
                FeMessage::CopyDone | FeMessage::CopyFail { .. } => {
                    ctx.copy_in.store(false, std::sync::atomic::Ordering::Release);
                }
                FeMessage::Sync | FeMessage::Flush => continue,
                FeMessage::Query { .. }
                | FeMessage::Parse { .. }
                | FeMessage::Bind { .. }
                | FeMessage::Describe { .. }
                | FeMessage::Execute { .. }
                | FeMessage::Close { .. }
                | FeMessage::Terminate
                | FeMessage::Password(_)
                | FeMessage::FunctionCall(_) => {
                    return violation(
                        &inject,
                        &CodecError::Malformed {
                            tag: frame.tag as char,
                            what: "only COPY data may be sent during COPY FROM STDIN",
                        },
                    )
                    .await;
                }
            }
            frame.encode(&mut out);
            if let Err(e) = flush_if_idle_result(&client, &mut upstream, &mut out).await {
                return (Cause::UpstreamClosed, e);
            }
            continue;
        }
        if batch_open && matches!(msg, FeMessage::Query { .. } | FeMessage::FunctionCall(_)) {
            // PostgreSQL may be skipping this batch after an error; a Query
            // here would be skipped too and the record would drift.
            return violation(
                &inject,
                &CodecError::Malformed {
                    tag: frame.tag as char,
                    what: "a simple Query inside an unfinished extended-protocol batch (send Sync first)",
                },
            )
            .await;
        }
        match msg {
            FeMessage::Query { sql } => {
                let mut judgement = ctx.deps.gate.judge(&ctx.binding, &sql);
                count_verdict(&ctx, &judgement);
                if let Some(why) = session_refusal(&ctx, &sql, &judgement.verdict) {
                    judgement.action = Action::Deny { message: why.into() };
                } else if judgement.sql_names.iter().any(|n| ctx.names().has_statement(n)) {
                    judgement.action = Action::Deny {
                        message: "this name belongs to a statement prepared through the extended protocol; use another name".into(),
                    };
                }
                // A COPY FROM STDIN puts PostgreSQL in copy mode.
                let copies_in = judgement.verdict.effects.iter().any(|e| e.kind == "COPY")
                    && judgement.verdict.effects.iter().any(|e| e.kind == "INSERT")
                    && !judgement
                        .verdict
                        .effects
                        .iter()
                        .any(|e| e.kind == "SERVER FILE" || e.kind == "PROGRAM");
                let statement = proto::Statement {
                    text: sql.clone(),
                    protocol: proto::statement::Protocol::Simple as i32,
                    sha256: frame_sha256(&frame),
                    ..Default::default()
                };
                let step = match judgement.action.clone() {
                    Action::Allow => Step::Run {
                        request_id: String::new(),
                    },
                    Action::Deny { message } => Step::Refuse(
                        refusal("42501", message, None),
                        proto::statement_refused::Cause::Policy,
                        String::new(),
                    ),
                    Action::Hold(spec) => {
                        // Everything pipelined so far goes first.
                        if !out.is_empty() {
                            if let Err(e) = upstream.write_all(&out).await {
                                return (Cause::UpstreamClosed, e.to_string());
                            }
                            out.clear();
                        }
                        match hold(
                            &ctx,
                            &statement,
                            &judgement,
                            &spec,
                            &mut client,
                            &inject,
                            &mut kills,
                            &mut cancels,
                        )
                        .await
                        {
                            Held::Decided(step) => step,
                            Held::End(ending) => {
                                let _ = upstream
                                    .write_all(&FeMessage::Terminate.to_frame().to_bytes())
                                    .await;
                                return ending;
                            }
                        }
                    }
                };
                ctx.names().boundary();
                match step {
                    Step::Run { request_id } => {
                        let slot = if ctx.binding.record || !request_id.is_empty() {
                            match reserve_record(&ctx, &mut upstream, &mut out).await {
                                Ok(s) => Some(s),
                                Err(full) => {
                                    substitute_query(
                                        &ctx,
                                        &queue,
                                        &mut out,
                                        statement,
                                        judgement.verdict,
                                        full_refusal(full),
                                        proto::statement_refused::Cause::Unavailable,
                                        &request_id,
                                    );
                                    flush_if_idle(&client, &mut upstream, &mut out).await;
                                    continue;
                                }
                            }
                        } else {
                            None
                        };
                        if copies_in {
                            ctx.copy_in.store(true, std::sync::atomic::Ordering::Release);
                        }
                        push(
                            &queue,
                            InFlight::Simple(Running {
                                statement,
                                verdict: judgement.verdict,
                                request_id,
                                started: Instant::now(),
                                tags: Vec::new(),
                                error: None,
                                slot,
                                on_success: judgement.on_success,
                                drops_all: judgement.drops_all,
                            }),
                        );
                        frame.encode(&mut out);
                    }
                    Step::Refuse(d, cause, request_id) => {
                        substitute_query(
                            &ctx,
                            &queue,
                            &mut out,
                            statement,
                            judgement.verdict,
                            d,
                            cause,
                            &request_id,
                        );
                    }
                }
            }
            FeMessage::Parse {
                name,
                query,
                param_types,
            } => {
                batch_open = true;
                ctx.described
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .types
                    .remove(&name);
                let mut judgement = ctx.deps.gate.judge(&ctx.binding, &query);
                count_verdict(&ctx, &judgement);
                let sql_prepared = !name.is_empty()
                    && ctx
                        .binding
                        .session
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .prepared
                        .get(&name)
                        .is_some();
                let why = if sql_prepared {
                    Some("this name is taken by a statement made with SQL PREPARE; use another name")
                } else if judgement.verdict.effects.iter().any(|e| e.kind == "COPY") {
                    Some(
                        "COPY to or from the client, a file or a program is not supported over the extended query protocol through Airlock; send it as a simple query (psql \\copy)",
                    )
                } else {
                    session_refusal(&ctx, &query, &judgement.verdict)
                };
                if let Some(why) = why {
                    judgement.action = Action::Deny { message: why.into() };
                }
                match judgement.action.clone() {
                    // A held statement is parsed upstream (parsing runs
                    // nothing) and held at its Execute, where the parameters
                    // are known.
                    Action::Allow | Action::Hold(_) => {
                        ctx.names().parse(
                            name,
                            Statement {
                                text: query,
                                judgement,
                                param_types,
                                parse: frame.to_bytes(),
                            },
                        );
                        frame.encode(&mut out);
                    }
                    Action::Deny { message } => {
                        let d = refusal("42501", message, None);
                        let statement = proto::Statement {
                            text: query,
                            protocol: proto::statement::Protocol::Extended as i32,
                            sha256: frame_sha256(&frame),
                            prepared_name: name.clone(),
                            ..Default::default()
                        };
                        ctx.refused(
                            statement,
                            judgement.verdict,
                            proto::statement_refused::Cause::Policy,
                            &d,
                            "",
                        );
                        push(
                            &queue,
                            InFlight::Substitute {
                                diagnostic: Some(d),
                                boundary: false,
                            },
                        );
                        // Fails at parse time: the Parse fails where the
                        // client expects its answer.
                        FeMessage::Parse {
                            name: ctx.marker.clone(),
                            query: ctx.refusal_sql(),
                            param_types: Vec::new(),
                        }
                        .to_frame()
                        .encode(&mut out);
                    }
                }
            }
            FeMessage::Bind {
                portal,
                statement,
                param_formats,
                params,
                ..
            } => {
                batch_open = true;
                let mut known = ctx.names().statement(&statement).map(|s| s.clone());
                if matches!(known, Lookup::Ambiguous) {
                    match settle(&ctx, &mut upstream, &mut out, &mut kills, &inject, |n| {
                        n.statement(&statement).map(|s| s.clone())
                    })
                    .await
                    {
                        Ok(settled) => known = settled,
                        Err(ending) => return ending,
                    }
                }
                let stmt = match known {
                    Lookup::One(s) => Ok(s),
                    // A statement Airlock never judged (say, one made with
                    // SQL-level PREPARE): binding it is refused.
                    Lookup::Missing => Err(
                        "binding a prepared statement Airlock has not judged is not allowed; prepare it through this connection with Parse",
                    ),
                    Lookup::Ambiguous => Err(
                        "this statement name was redefined in a batch PostgreSQL has not answered yet; wait for the answers (Sync) before binding it",
                    ),
                };
                let Ok(stmt) = stmt else {
                    let why = stmt.err().unwrap_or_default();
                    refuse_extended(
                        &ctx,
                        &queue,
                        &mut out,
                        why.into(),
                        FeMessage::Bind {
                            portal: ctx.marker.clone(),
                            statement: ctx.marker.clone(),
                            param_formats: Vec::new(),
                            params: Vec::new(),
                            result_formats: Vec::new(),
                        },
                    );
                    flush_if_idle(&client, &mut upstream, &mut out).await;
                    continue;
                };
                let reported = ctx
                    .described
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .types
                    .get(&statement)
                    .cloned()
                    .unwrap_or_default();
                // Declared types first; the server's where the client left
                // a type unspecified (0).
                let types: Vec<u32> = (0..params.len())
                    .map(|i| match stmt.param_types.get(i).copied() {
                        Some(t) if t != 0 => t,
                        _ => reported.get(i).copied().unwrap_or(0),
                    })
                    .collect();
                let parameters = params
                    .iter()
                    .enumerate()
                    .map(|(i, value)| {
                        let format = match param_formats.len() {
                            0 => 0,
                            1 => param_formats[0],
                            _ => param_formats.get(i).copied().unwrap_or(0),
                        };
                        crate::params::describe(types.get(i).copied().unwrap_or(0), format, value.as_deref())
                    })
                    .collect();
                ctx.names().bind(
                    portal,
                    Portal {
                        statement_name: statement,
                        statement: stmt,
                        parameters,
                        bind: frame.to_bytes(),
                    },
                );
                frame.encode(&mut out);
            }
            FeMessage::Execute { portal, .. } => {
                batch_open = true;
                let mut lookup = ctx.names().portal(&portal).map(|p| p.clone());
                if matches!(lookup, Lookup::Ambiguous) {
                    match settle(&ctx, &mut upstream, &mut out, &mut kills, &inject, |n| {
                        n.portal(&portal).map(|p| p.clone())
                    })
                    .await
                    {
                        Ok(settled) => lookup = settled,
                        Err(ending) => return ending,
                    }
                }
                let bound = match lookup {
                    Lookup::One(p) => Ok(p),
                    Lookup::Missing => Err("executing a portal Airlock has not judged is not allowed"),
                    Lookup::Ambiguous => Err(
                        "this portal was rebound in a batch PostgreSQL has not answered yet; wait for the answers (Sync) before executing it",
                    ),
                };
                let Ok(bound) = bound else {
                    let why = bound.err().unwrap_or_default();
                    refuse_extended(&ctx, &queue, &mut out, why.into(), ctx.no_portal());
                    flush_if_idle(&client, &mut upstream, &mut out).await;
                    continue;
                };
                let stmt = &bound.statement;
                let mut request_id = String::new();
                if let Action::Hold(spec) = &stmt.judgement.action {
                    // What the reviewer approves: the exact Parse, Bind and
                    // Execute messages of this statement.
                    let mut digest = Sha256::new();
                    digest.update(&stmt.parse);
                    digest.update(&bound.bind);
                    digest.update(frame.to_bytes());
                    let statement = proto::Statement {
                        text: stmt.text.clone(),
                        protocol: proto::statement::Protocol::Extended as i32,
                        parameters: bound.parameters.clone(),
                        sha256: digest.finalize().to_vec(),
                        prepared_name: bound.statement_name.clone(),
                        portal_name: portal.clone(),
                    };
                    // Everything before the Execute goes first.
                    if !out.is_empty() {
                        if let Err(e) = upstream.write_all(&out).await {
                            return (Cause::UpstreamClosed, e.to_string());
                        }
                        out.clear();
                    }
                    let step = match hold(
                        &ctx,
                        &statement,
                        &stmt.judgement,
                        spec,
                        &mut client,
                        &inject,
                        &mut kills,
                        &mut cancels,
                    )
                    .await
                    {
                        Held::Decided(step) => step,
                        Held::End(ending) => {
                            let _ = upstream
                                .write_all(&FeMessage::Terminate.to_frame().to_bytes())
                                .await;
                            return ending;
                        }
                    };
                    match step {
                        Step::Run { request_id: rid } => request_id = rid,
                        Step::Refuse(d, cause, rid) => {
                            // Executing a portal that does not exist fails
                            // at the Execute, as the held statement would
                            // have; the held portal never runs.
                            let verdict = stmt.judgement.verdict.clone();
                            refuse_with(
                                &ctx,
                                &queue,
                                &mut out,
                                statement,
                                verdict,
                                cause,
                                d,
                                &rid,
                                ctx.no_portal(),
                            );
                            flush_if_idle(&client, &mut upstream, &mut out).await;
                            continue;
                        }
                    }
                }
                let slot = if ctx.binding.record || !request_id.is_empty() {
                    match reserve_record(&ctx, &mut upstream, &mut out).await {
                        Ok(s) => Some(s),
                        Err(full) => {
                            let statement = proto::Statement {
                                text: stmt.text.clone(),
                                ..Default::default()
                            };
                            refuse_with(
                                &ctx,
                                &queue,
                                &mut out,
                                statement,
                                stmt.judgement.verdict.clone(),
                                proto::statement_refused::Cause::Unavailable,
                                full_refusal(full),
                                &request_id,
                                ctx.no_portal(),
                            );
                            flush_if_idle(&client, &mut upstream, &mut out).await;
                            continue;
                        }
                    }
                } else {
                    None
                };
                push(
                    &queue,
                    InFlight::Extended(Running {
                        statement: proto::Statement {
                            text: stmt.text.clone(),
                            protocol: proto::statement::Protocol::Extended as i32,
                            portal_name: portal.clone(),
                            prepared_name: bound.statement_name.clone(),
                            parameters: bound.parameters.clone(),
                            ..Default::default()
                        },
                        verdict: stmt.judgement.verdict.clone(),
                        request_id,
                        started: Instant::now(),
                        tags: Vec::new(),
                        error: None,
                        slot,
                        on_success: stmt.judgement.on_success.clone(),
                        drops_all: stmt.judgement.drops_all,
                    }),
                );
                frame.encode(&mut out);
            }
            FeMessage::Sync => {
                batch_open = false;
                ctx.names().boundary();
                push(&queue, InFlight::Sync);
                frame.encode(&mut out);
            }
            FeMessage::Close { kind, name } => {
                batch_open = true;
                let sql_prepared = kind == b'S'
                    && !name.is_empty()
                    && ctx
                        .binding
                        .session
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .prepared
                        .get(&name)
                        .is_some();
                if sql_prepared {
                    refuse_extended(
                        &ctx,
                        &queue,
                        &mut out,
                        "this statement was made with SQL PREPARE; drop it with DEALLOCATE".into(),
                        ctx.no_portal(),
                    );
                } else {
                    ctx.names().close(kind == b'S', name);
                    frame.encode(&mut out);
                }
            }
            FeMessage::Terminate => {
                frame.encode(&mut out);
                let _ = upstream.write_all(&out).await;
                return (Cause::ClientTerminated, "client sent Terminate".into());
            }
            FeMessage::FunctionCall(_) => {
                let d = refusal(
                    "42501",
                    "the function-call protocol message is not allowed through Airlock".into(),
                    None,
                );
                ctx.names().boundary();
                push(
                    &queue,
                    InFlight::Substitute {
                        diagnostic: Some(d),
                        boundary: true,
                    },
                );
                FeMessage::Query {
                    sql: ctx.refusal_sql(),
                }
                .to_frame()
                .encode(&mut out);
            }
            FeMessage::Describe { kind, name } => {
                batch_open = true;
                if kind == b'S' {
                    ctx.described
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .waiting
                        .push_back(name);
                }
                frame.encode(&mut out);
            }
            FeMessage::Flush => {
                batch_open = true;
                frame.encode(&mut out);
            }
            FeMessage::CopyData(_) | FeMessage::CopyDone | FeMessage::CopyFail { .. } => {
                frame.encode(&mut out)
            }
            FeMessage::Password(_) => {
                return violation(
                    &inject,
                    &CodecError::Malformed {
                        tag: 'p',
                        what: "password message after login",
                    },
                )
                .await;
            }
        }
        if ctx.names().over_limit() {
            return violation(
                &inject,
                &CodecError::Malformed {
                    tag: frame.tag as char,
                    what: "too many prepared statements or portals",
                },
            )
            .await;
        }
        if let Err(e) = flush_if_idle_result(&client, &mut upstream, &mut out).await {
            return (Cause::UpstreamClosed, e);
        }
    }
}

/// Refuses an extended-protocol message that refers to something Airlock
/// did not judge: `substitute` fails upstream in its place (its names are
/// reserved, so they never exist) and its error is rewritten.
fn refuse_extended(ctx: &Ctx, queue: &Queue, out: &mut BytesMut, message: String, substitute: FeMessage) {
    // After a refusal earlier in this batch PostgreSQL skips this message
    // anyway: do not record a second refusal that nobody will see.
    let already = queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .rev()
        .take_while(|i| {
            !matches!(
                i,
                InFlight::Sync | InFlight::Simple(_) | InFlight::Substitute { boundary: true, .. }
            )
        })
        .any(|i| {
            matches!(
                i,
                InFlight::Substitute {
                    diagnostic: Some(_),
                    ..
                }
            )
        });
    if already {
        push(
            queue,
            InFlight::Substitute {
                diagnostic: None,
                boundary: false,
            },
        );
        substitute.to_frame().encode(out);
        return;
    }
    let d = refusal("42501", message, None);
    ctx.refused(
        proto::Statement::default(),
        proto::Verdict {
            action: proto::verdict::Action::Deny as i32,
            ..Default::default()
        },
        proto::statement_refused::Cause::Policy,
        &d,
        "",
    );
    push(
        queue,
        InFlight::Substitute {
            diagnostic: Some(d),
            boundary: false,
        },
    );
    substitute.to_frame().encode(out);
}

/// Refusals that depend on the session, not on the policy: SQL naming the
/// proxy's stand-ins, and cursor commands while a portal holds a statement
/// that is not simply allowed (FETCH would run it unapproved).
fn session_refusal(ctx: &Ctx, sql: &str, verdict: &proto::Verdict) -> Option<&'static str> {
    if sql.contains(REFUSAL_TEXT) {
        return Some("this text is reserved by Airlock");
    }
    if verdict.effects.iter().any(|e| e.kind == "CURSOR") && ctx.names().has_gated_portal() {
        return Some(
            "FETCH, MOVE and CLOSE are refused while this session has a portal bound to a statement that needs approval; Execute it instead",
        );
    }
    None
}

fn count_verdict(ctx: &Ctx, j: &Judgement) {
    let m = &ctx.deps.metrics;
    crate::metrics::Metrics::inc(match j.action {
        Action::Allow => &m.statements_allowed,
        Action::Deny { .. } => &m.statements_denied,
        Action::Hold(_) => &m.statements_held,
    });
}

fn token_expired(identity: &proto::Identity) -> bool {
    let Some(exp) = identity.token_expires_at else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    exp.seconds <= now
}

enum Step {
    Run { request_id: String },
    Refuse(Diagnostic, proto::statement_refused::Cause, String),
}

enum Held {
    Decided(Step),
    End(Ending),
}

fn full_refusal(full: crate::record::RecorderFull) -> Diagnostic {
    refusal(
        "57P03",
        format!("statement not run: {full}; nothing was executed, retry shortly"),
        None,
    )
}

fn push(queue: &Queue, item: InFlight) {
    queue.lock().unwrap_or_else(|p| p.into_inner()).push_back(item);
}

/// Records a refusal and sends `stand_in` upstream in the statement's place;
/// the stand-in's error is rewritten into `d`.
#[allow(clippy::too_many_arguments)]
fn refuse_with(
    ctx: &Ctx,
    queue: &Queue,
    out: &mut BytesMut,
    statement: proto::Statement,
    verdict: proto::Verdict,
    cause: proto::statement_refused::Cause,
    d: Diagnostic,
    request_id: &str,
    stand_in: FeMessage,
) {
    ctx.refused(statement, verdict, cause, &d, request_id);
    let boundary = matches!(stand_in, FeMessage::Query { .. });
    push(
        queue,
        InFlight::Substitute {
            diagnostic: Some(d),
            boundary,
        },
    );
    stand_in.to_frame().encode(out);
}

#[allow(clippy::too_many_arguments)]
fn substitute_query(
    ctx: &Ctx,
    queue: &Queue,
    out: &mut BytesMut,
    statement: proto::Statement,
    verdict: proto::Verdict,
    d: Diagnostic,
    cause: proto::statement_refused::Cause,
    request_id: &str,
) {
    let stand_in = FeMessage::Query {
        sql: ctx.refusal_sql(),
    };
    refuse_with(
        ctx, queue, out, statement, verdict, cause, d, request_id, stand_in,
    );
}

/// Writes what is batched unless the client has more pipelined.
async fn flush_if_idle_result(
    client: &FrameReader<ReadHalf<Box<dyn ClientStream>>>,
    upstream: &mut WriteHalf<Box<dyn ClientStream>>,
    out: &mut BytesMut,
) -> Result<(), String> {
    if !client.has_buffered_frame() && !out.is_empty() {
        upstream
            .write_all(out)
            .await
            .map_err(|e| format!("upstream write: {e}"))?;
        out.clear();
    }
    Ok(())
}

async fn flush_if_idle(
    client: &FrameReader<ReadHalf<Box<dyn ClientStream>>>,
    upstream: &mut WriteHalf<Box<dyn ClientStream>>,
    out: &mut BytesMut,
) {
    let _ = flush_if_idle_result(client, upstream, out).await;
}

/// How long a statement waits for room in a full recording buffer before
/// it is refused (the log is not keeping up; nothing runs unrecorded).
const RECORD_WAIT: Duration = Duration::from_secs(2);

/// Room for a statement's record. When the buffer is full, what is already
/// buffered for PostgreSQL goes out first, then the statement waits up to
/// [`RECORD_WAIT`].
async fn reserve_record(
    ctx: &Ctx,
    upstream: &mut WriteHalf<Box<dyn ClientStream>>,
    out: &mut BytesMut,
) -> Result<crate::record::Slot, crate::record::RecorderFull> {
    if let Ok(slot) = ctx.deps.recorder.reserve(&ctx.session) {
        return Ok(slot);
    }
    if !out.is_empty() && upstream.write_all(out).await.is_ok() {
        out.clear();
    }
    ctx.deps.recorder.reserve_within(&ctx.session, RECORD_WAIT).await
}

/// The proxy is shutting down: cancel what runs upstream, end the session.
async fn shutting_down(
    ctx: &Ctx,
    upstream: &mut WriteHalf<Box<dyn ClientStream>>,
    inject: &mpsc::Sender<Inject>,
) -> Ending {
    let (addr, key) = ctx.upstream_cancel.clone();
    crate::cancel::relay(&addr, key).await;
    let _ = upstream
        .write_all(&FeMessage::Terminate.to_frame().to_bytes())
        .await;
    let _ = inject
        .send(Inject::Fatal(Diagnostic {
            severity: Severity::Fatal,
            code: "57P01",
            message: "this Airlock proxy is shutting down; reconnect to continue".into(),
            detail: None,
            hint: None,
        }))
        .await;
    (
        proto::session_closed::Cause::ProxyShutdown,
        "proxy shutting down".into(),
    )
}

/// A reviewer killed the session: a statement may be running upstream, so
/// cancel it, then end.
async fn kill_now(
    ctx: &Ctx,
    upstream: &mut WriteHalf<Box<dyn ClientStream>>,
    inject: &mpsc::Sender<Inject>,
    order: &proto::KillOrder,
) -> Ending {
    let (addr, key) = ctx.upstream_cancel.clone();
    crate::cancel::relay(&addr, key).await;
    let _ = upstream
        .write_all(&FeMessage::Terminate.to_frame().to_bytes())
        .await;
    killed(inject, order).await
}

/// A name's meaning depends on answers PostgreSQL has not sent yet (an
/// earlier batch redefined it, and may yet fail): send what is buffered and
/// wait for those answers before judging, instead of guessing. Only
/// operations before a Sync the proxy has already forwarded make a name
/// ambiguous, so PostgreSQL answers them and the wait ends; meanwhile the
/// client's next messages wait (as PostgreSQL itself would make them), and
/// a kill or shutdown still ends the session at once.
async fn settle<T>(
    ctx: &Ctx,
    upstream: &mut WriteHalf<Box<dyn ClientStream>>,
    out: &mut BytesMut,
    kills: &mut mpsc::Receiver<proto::KillOrder>,
    inject: &mpsc::Sender<Inject>,
    lookup: impl Fn(&Names) -> Lookup<T>,
) -> Result<Lookup<T>, Ending> {
    if !out.is_empty() {
        if upstream.write_all(out).await.is_err() {
            return Err((
                proto::session_closed::Cause::UpstreamClosed,
                "PostgreSQL closed the connection".into(),
            ));
        }
        out.clear();
    }
    let mut phase = ctx.deps.phase.clone();
    loop {
        // Registered before looking, so no answer slips in between.
        let settled = ctx.names_settled.notified();
        tokio::pin!(settled);
        settled.as_mut().enable();
        let now = lookup(&ctx.names());
        if !matches!(now, Lookup::Ambiguous) {
            return Ok(now);
        }
        tokio::select! {
            () = &mut settled => {}
            Ok(()) = phase.wait_for(|p| *p == Phase::Stopping).map(|r| r.map(|_| ())) => {
                return Err(shutting_down(ctx, upstream, inject).await);
            }
            Some(order) = kills.recv() => return Err(kill_now(ctx, upstream, inject, &order).await),
        }
    }
}

async fn violation(inject: &mpsc::Sender<Inject>, e: &CodecError) -> Ending {
    let _ = inject
        .send(Inject::Fatal(Diagnostic {
            severity: Severity::Fatal,
            code: "08P01",
            message: format!("protocol violation: {e}"),
            detail: None,
            hint: None,
        }))
        .await;
    (proto::session_closed::Cause::ProtocolViolation, e.to_string())
}

fn describe(identity: Option<&proto::Identity>) -> String {
    match identity {
        Some(i) if !i.display_name.is_empty() => i.display_name.clone(),
        Some(i) => i.subject.clone(),
        None => "a reviewer".into(),
    }
}

async fn killed(inject: &mpsc::Sender<Inject>, order: &proto::KillOrder) -> Ending {
    let who = describe(order.requested_by.as_ref());
    let _ = inject
        .send(Inject::Fatal(Diagnostic {
            severity: Severity::Fatal,
            code: "57P01",
            message: format!("session terminated by {who} through Airlock: {}", order.reason),
            detail: None,
            hint: None,
        }))
        .await;
    (
        proto::session_closed::Cause::Killed,
        format!("killed by {who}: {}", order.reason),
    )
}

/// Holds a simple-protocol statement until it is decided.
#[allow(clippy::too_many_arguments)]
async fn hold(
    ctx: &Ctx,
    statement: &proto::Statement,
    judgement: &Judgement,
    spec: &HoldSpec,
    client: &mut FrameReader<ReadHalf<Box<dyn ClientStream>>>,
    inject: &mpsc::Sender<Inject>,
    kills: &mut mpsc::Receiver<proto::KillOrder>,
    cancels: &mut mpsc::Receiver<()>,
) -> Held {
    use proto::statement_refused::Cause;
    let deps = &ctx.deps;
    let unavailable = |why: &str| {
        Held::Decided(Step::Refuse(
            refusal(
                "42501",
                format!("this statement needs a reviewer's approval, but {why}; nothing was run"),
                Some("retry when Airlock's control plane and event log are reachable".into()),
            ),
            Cause::Unavailable,
            String::new(),
        ))
    };
    if *deps.phase.borrow() != Phase::Running {
        return unavailable("this proxy is shutting down (reconnect and run it again)");
    }
    if !deps.holds.is_attached() {
        return unavailable("the control plane is unreachable");
    }
    let request_id = RequestId::generate();
    let deadline = SystemTime::now() + spec.timeout;
    let mut requested = ctx.event(Body::ApprovalRequested(proto::ApprovalRequested {
        identity: Some(ctx.agent.identity.clone()),
        connection: Some(ctx.binding.connection_info()),
        client: Some(ctx.client.clone()),
        statement: Some(statement.clone()),
        verdict: Some(judgement.verdict.clone()),
        approvals_required: spec.approvals.max(1),
        reviewer_groups: spec.reviewers.clone(),
        deadline: Some(deadline.into()),
        proxy_id: deps.source.id.clone(),
    }));
    requested.request_id = request_id.to_string();
    let subject = subjects::request(&request_id);
    // Register before appending, so a decision cannot outrun us.
    let decision = deps
        .holds
        .hold(request_id.as_str(), ctx.session.as_str(), &statement.sha256);
    if let Err(e) = ChainWriter::new_chain(&subject)
        .append(&deps.log, requested)
        .await
    {
        deps.holds.release(request_id.as_str());
        tracing::warn!(session = %ctx.session, error = %e, "approval request not recorded");
        if let airlock_eventlog::Error::InvalidEvent(_) = e {
            // Too large for one event: a reviewer could not be shown it.
            return Held::Decided(Step::Refuse(
                refusal(
                    "54000",
                    format!(
                        "this statement needs a reviewer's approval, but at {} bytes it is too large to \
                         put before a reviewer (the event log takes at most {} bytes per event); nothing was run",
                        statement.text.len(),
                        airlock_eventlog::MAX_EVENT_BYTES
                    ),
                    Some("split it into smaller statements".into()),
                ),
                Cause::Unavailable,
                String::new(),
            ));
        }
        return unavailable("the event log is unavailable");
    }
    let where_ = deps
        .reviewer_url
        .as_ref()
        .map(|u| format!(" Review it at {}/requests/{request_id}.", u.trim_end_matches('/')))
        .unwrap_or_default();
    let _ = inject
        .send(Inject::Notice(Diagnostic {
            severity: Severity::Notice,
            code: "00000",
            message: format!(
                "Airlock is holding this statement for approval: request {request_id} ({}). Waiting up to {}s for a reviewer.{where_}",
                why(&judgement.verdict),
                spec.timeout.as_secs()
            ),
            detail: None,
            hint: None,
        }))
        .await;
    tracing::info!(session = %ctx.session, request = %request_id, "statement held");

    let mut phase = deps.phase.clone();
    let mut flooded = false;
    let local_deadline = tokio::time::Instant::now() + spec.timeout + deps.expiry_grace;
    let mut decision = decision;
    // A cancel that arrived before the hold began is for an earlier statement.
    while cancels.try_recv().is_ok() {}
    ctx.holding.store(true, std::sync::atomic::Ordering::Release);
    let _held = HeldGauge::new(&ctx.deps.metrics);
    let outcome = loop {
        tokio::select! {
            d = &mut decision => break d.ok(),
            Ok(()) = phase.wait_for(|p| *p != Phase::Running).map(|r| r.map(|_| ())) => {
                ctx.holding.store(false, std::sync::atomic::Ordering::Release);
                cancel(ctx, &request_id, proto::approval_cancelled::Cause::ProxyShutdown, "the proxy holding it shut down").await;
                return Held::Decided(Step::Refuse(
                    refusal(
                        "57P01",
                        format!("this Airlock proxy is shutting down; request {request_id} was cancelled and nothing was run; reconnect and run it again"),
                        None,
                    ),
                    Cause::Cancelled,
                    request_id.to_string(),
                ));
            }
            Some(()) = cancels.recv() => {
                ctx.holding.store(false, std::sync::atomic::Ordering::Release);
                cancel(ctx, &request_id, proto::approval_cancelled::Cause::ClientCancelled, "the client cancelled the statement").await;
                return Held::Decided(Step::Refuse(
                    refusal("57014", format!("canceling statement due to user request (request {request_id} cancelled)"), None),
                    Cause::Cancelled,
                    request_id.to_string(),
                ));
            }
            _ = tokio::time::sleep_until(local_deadline) => break None,
            Some(order) = kills.recv() => {
                cancel(ctx, &request_id, proto::approval_cancelled::Cause::SessionKilled, "the session was killed").await;
                return Held::End(killed(inject, &order).await);
            }
            more = client.fill_more(), if !flooded => {
                if !matches!(more, Ok(true)) {
                    cancel(ctx, &request_id, proto::approval_cancelled::Cause::ClientDisconnected, "the client went away while waiting").await;
                    return Held::End((proto::session_closed::Cause::ClientDisconnected, "client left while a statement was held".into()));
                }
                if client.buffered() > 1024 * 1024 {
                    // A client flooding while held: stop reading; the
                    // deadline, kills, cancels and shutdown still apply.
                    flooded = true;
                }
            }
        }
    };
    ctx.holding.store(false, std::sync::atomic::Ordering::Release);
    deps.holds.release(request_id.as_str());
    use proto::decision_notice::Outcome;
    let rid = request_id.to_string();
    let step = match outcome {
        Some(n) if n.outcome == Outcome::Granted as i32 => {
            if n.statement_sha256 != statement.sha256 {
                Step::Refuse(
                    refusal(
                        "42501",
                        format!("request {rid} was granted for different bytes than the ones held; refused"),
                        None,
                    ),
                    Cause::DigestMismatch,
                    rid,
                )
            } else if !grant_in_log(ctx, &request_id, &statement.sha256).await {
                // The grant must be in the log, not only on the wire from the
                // control plane: a forged Attach message runs nothing.
                Step::Refuse(
                    refusal(
                        "42501",
                        format!(
                            "request {rid}: the grant could not be confirmed in the event log; nothing was run"
                        ),
                        None,
                    ),
                    Cause::Unavailable,
                    rid,
                )
            } else {
                Step::Run { request_id: rid }
            }
        }
        Some(n) if n.outcome == Outcome::Denied as i32 => Step::Refuse(
            refusal(
                "42501",
                format!(
                    "request {rid} was denied by {}: {}",
                    describe(n.decided_by.as_ref()),
                    n.reason
                ),
                None,
            ),
            Cause::Denied,
            rid,
        ),
        Some(n) if n.outcome == Outcome::Cancelled as i32 => Step::Refuse(
            refusal(
                "57014",
                format!("request {rid} was cancelled: {}", n.reason),
                None,
            ),
            Cause::Cancelled,
            rid,
        ),
        Some(_) | None => Step::Refuse(
            refusal(
                "42501",
                format!(
                    "request {rid} expired: no reviewer decided within {}s",
                    spec.timeout.as_secs()
                ),
                None,
            ),
            Cause::Expired,
            rid,
        ),
    };
    Held::Decided(step)
}

/// "policy P, rule: R; reason" without saying the same thing twice.
pub fn why(v: &proto::Verdict) -> String {
    let mut out = format!("policy {}, {}", v.policy, v.rule);
    if !v.reason.is_empty() && !v.rule.contains(&v.reason) && !v.reason.contains(&v.rule) {
        out.push_str(": ");
        out.push_str(&v.reason);
    } else if v.reason.contains(&v.rule) && v.reason != v.rule {
        out = format!("policy {}, {}", v.policy, v.reason);
    }
    out
}

/// Counts a hold while it lasts, however the wait ends.
struct HeldGauge<'a> {
    metrics: &'a crate::metrics::Metrics,
    since: Instant,
}

impl<'a> HeldGauge<'a> {
    fn new(metrics: &'a crate::metrics::Metrics) -> Self {
        crate::metrics::Metrics::inc(&metrics.held_now);
        HeldGauge {
            metrics,
            since: Instant::now(),
        }
    }
}

impl Drop for HeldGauge<'_> {
    fn drop(&mut self) {
        use crate::metrics::Metrics;
        Metrics::dec(&self.metrics.held_now);
        Metrics::inc(&self.metrics.holds_ended);
        Metrics::add(
            &self.metrics.hold_micros_sum,
            self.since.elapsed().as_micros() as u64,
        );
    }
}

/// Whether the log holds an ApprovalGranted for `request_id`, for exactly
/// `sha256`, as the last event of the request's chain.
async fn grant_in_log(ctx: &Ctx, request_id: &RequestId, sha256: &[u8]) -> bool {
    let subject = subjects::request(request_id);
    match ctx.deps.log.last(&subject).await {
        Ok(Some(e)) => matches!(
            &e.event.body,
            Some(Body::ApprovalGranted(g)) if g.statement_sha256 == sha256 && e.event.request_id == request_id.as_str()
        ),
        Ok(None) => false,
        Err(err) => {
            tracing::warn!(request = %request_id, error = %err, "cannot confirm a grant in the log");
            false
        }
    }
}

/// Files ApprovalCancelled for a request this session holds.
async fn cancel(ctx: &Ctx, request_id: &RequestId, cause: proto::approval_cancelled::Cause, detail: &str) {
    ctx.deps.holds.release(request_id.as_str());
    let mut e = ctx.event(Body::ApprovalCancelled(proto::ApprovalCancelled {
        cause: cause as i32,
        detail: detail.to_owned(),
    }));
    e.request_id = request_id.to_string();
    let subject = subjects::request(request_id);
    for _ in 0..5 {
        match ctx.deps.log.append_next(&subject, e.clone()).await {
            Ok(_) => return,
            Err(airlock_eventlog::Error::Conflict { .. }) => continue,
            Err(err) => {
                tracing::warn!(request = %request_id, error = %err, "could not record the cancellation");
                return;
            }
        }
    }
}

async fn upstream_to_client(
    mut upstream: FrameReader<ReadHalf<Box<dyn ClientStream>>>,
    mut client: WriteHalf<Box<dyn ClientStream>>,
    ctx: Arc<Ctx>,
    queue: Queue,
    mut inject: mpsc::Receiver<Inject>,
) -> Result<(), String> {
    // Grows on first use: an idle session holds no write buffer.
    let mut out = BytesMut::new();
    // Once the client is gone, keep reading PostgreSQL's answers (to record
    // what ran) and write nothing.
    let mut client_gone = false;
    loop {
        // Both branches are cancel safe: FrameReader keeps partial frames.
        let read = tokio::select! {
            r = upstream.read_frame() => r,
            Some(msg) = inject.recv() => {
                match msg {
                    Inject::Notice(d) => {
                        BeMessage::NoticeResponse(&d).encode(&mut out);
                        client.write_all(&out).await.map_err(|e| format!("client write: {e}"))?;
                        client.flush().await.map_err(|e| format!("client flush: {e}"))?;
                        out.clear();
                        continue;
                    }
                    Inject::Fatal(d) => {
                        BeMessage::ErrorResponse(&d).encode(&mut out);
                        client.write_all(&out).await.map_err(|e| format!("client write: {e}"))?;
                        let _ = client.flush().await;
                        let _ = client.shutdown().await;
                        return Ok(());
                    }
                }
            }
        };
        let frame = match read {
            Ok(Some(f)) => f,
            Ok(None) => {
                client.write_all(&out).await.ok();
                return Err("upstream closed the connection".into());
            }
            Err(e) => return Err(format!("upstream: {e}")),
        };
        observe(&ctx, &queue, &frame, &mut out);
        // Flush when nothing more is buffered, or the batch is large.
        if client_gone {
            out.clear();
        } else if !upstream.has_buffered_frame() || out.len() > 64 * 1024 {
            if client.write_all(&out).await.is_err() || client.flush().await.is_err() {
                client_gone = true;
            }
            out.clear();
        }
    }
}

/// Matches one upstream frame to the statement it answers, records
/// completed statements, rewrites refusals, and encodes it for the client.
fn observe(ctx: &Ctx, queue: &Queue, frame: &Frame, out: &mut BytesMut) {
    let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
    match frame.tag {
        b'C' | b'I' | b's' => {
            let tag = match frame.tag {
                b'C' => String::from_utf8_lossy(frame.body.strip_suffix(b"\0").unwrap_or(&frame.body))
                    .into_owned(),
                b'I' => "EMPTY".into(),
                _ => "SUSPENDED".into(),
            };
            match q.front_mut() {
                Some(InFlight::Extended(_)) => {
                    if let Some(InFlight::Extended(mut r)) = q.pop_front() {
                        r.tags.push(tag);
                        finish(ctx, r);
                    }
                }
                Some(InFlight::Simple(r)) => r.tags.push(tag),
                Some(InFlight::Sync) | Some(InFlight::Substitute { .. }) | None => {}
            }
            frame.encode(out);
        }
        b'E' => {
            let fields = parse_diagnostic_fields(&frame.body);
            // PostgreSQL now skips the rest of the batch.
            ctx.names().failed();
            ctx.names_settled.notify_waiters();
            // Ours only if it names this session's marker and a stand-in is
            // what PostgreSQL answers now.
            let names_marker = fields
                .iter()
                .any(|(c, v)| *c == b'M' && v.contains(ctx.sql_marker()));
            if names_marker
                && let Some(InFlight::Substitute { diagnostic, .. }) = q.front_mut()
                && let Some(d) = diagnostic.take()
            {
                BeMessage::ErrorResponse(&d).encode(out);
                return;
            }
            let get = |c: u8| {
                fields
                    .iter()
                    .find(|(k, _)| *k == c)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let error = Some((get(b'C'), get(b'M')));
            match q.front_mut() {
                Some(InFlight::Extended(_)) => {
                    if let Some(InFlight::Extended(mut r)) = q.pop_front() {
                        r.error = error;
                        finish(ctx, r);
                    }
                }
                Some(InFlight::Simple(r)) => r.error = error,
                Some(InFlight::Sync) | Some(InFlight::Substitute { .. }) | None => {}
            }
            frame.encode(out);
        }
        b't' => {
            let mut d = ctx.described.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(name) = d.waiting.pop_front() {
                let body = &frame.body;
                let n = body
                    .get(..2)
                    .map(|b| i16::from_be_bytes([b[0], b[1]]))
                    .unwrap_or(0)
                    .max(0) as usize;
                let types = (0..n)
                    .filter_map(|i| body.get(2 + i * 4..6 + i * 4))
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                d.types.insert(name, types);
            }
            frame.encode(out);
        }
        b'1' | b'2' | b'3' => {
            // ParseComplete, BindComplete, CloseComplete.
            ctx.names().confirmed();
            ctx.names_settled.notify_waiters();
            frame.encode(out);
        }
        b'Z' => {
            ctx.copy_in.store(false, std::sync::atomic::Ordering::Release);
            let idle = frame.body.first() == Some(&b'I');
            ctx.names().ready(idle);
            ctx.names_settled.notify_waiters();
            // Describes of a batch are answered (or skipped) by now.
            ctx.described
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .waiting
                .clear();
            // The end of a Query or of a batch: settle everything up to it.
            while let Some(item) = q.pop_front() {
                match item {
                    InFlight::Simple(r) => {
                        finish(ctx, r);
                        break;
                    }
                    InFlight::Sync | InFlight::Substitute { boundary: true, .. } => break,
                    // Skipped after an earlier error in its batch.
                    InFlight::Extended(_) | InFlight::Substitute { boundary: false, .. } => {}
                }
            }
            frame.encode(out);
        }
        _ => frame.encode(out),
    }
}

/// Records a statement that ran (if recording applies to it).
fn finish(ctx: &Ctx, r: Running) {
    ctx.count(true);
    let m = &ctx.deps.metrics;
    crate::metrics::Metrics::inc(&m.upstream_statements);
    crate::metrics::Metrics::add(&m.upstream_micros_sum, r.started.elapsed().as_micros() as u64);
    if r.error.is_none()
        && let Some(apply) = &r.on_success
    {
        apply();
    }
    if r.error.is_none() && r.drops_all {
        ctx.names().drop_all();
    }
    record(ctx, r, None);
}

/// Writes a statement's `StatementExecuted` into the room reserved for it
/// (if recording applies to it); `ended` when the session ended before
/// PostgreSQL finished answering it, with why.
fn record(ctx: &Ctx, r: Running, ended: Option<&str>) {
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
    let e = ctx.event(Body::StatementExecuted(proto::StatementExecuted {
        statement: Some(r.statement),
        verdict: Some(r.verdict),
        request_id: r.request_id,
        duration: prost_types::Duration::try_from(r.started.elapsed()).ok(),
        command_tag: r.tags.join("; "),
        rows,
        error_sqlstate,
        error_message,
        unfinished: ended.is_some(),
    }));
    slot.send(e);
}

async fn write(io: &mut FrameReader<Box<dyn ClientStream>>, bytes: &[u8]) -> std::io::Result<()> {
    let w = io.get_mut();
    w.write_all(bytes).await?;
    w.flush().await
}

async fn fatal(io: &mut FrameReader<Box<dyn ClientStream>>, code: &'static str, message: &str) {
    crate::server::fatal(io, code, message).await;
}
