//! One client session, after startup: the agent's login, the upstream
//! connection, and the relay that judges every statement.
//!
//! How refusals keep PostgreSQL's semantics. A refused statement is never
//! sent upstream. In its place the proxy sends a fixed statement that makes
//! PostgreSQL raise an error ([`REFUSAL_SQL`]; it carries no client text),
//! and rewrites that error into the refusal the client should see. So the
//! refusal arrives in its exact place among pipelined responses, and a
//! transaction open at the time is aborted just as PostgreSQL would abort it
//! for a failing statement; the session goes on.
//!
//! All client output is written by one task (upstream -> client); the other
//! task (client -> upstream) only forwards or substitutes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::codec::{
    BeMessage, CodecError, Diagnostic, FeMessage, Frame, FrameReader, ReadError, Severity, TxStatus,
    parse_diagnostic_fields,
};
use crate::gate::{Binding, Gate, Judgement};
use crate::server::{ClientStream, Login, ServerSettings};
use crate::upstream::{Upstream, ready_status};

/// What the proxy sends upstream in place of a refused statement. Fixed
/// text: nothing the client sent reaches the upstream.
pub const REFUSAL_SQL: &str = "DO $airlock$ BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'airlock: statement refused'; END $airlock$";
const REFUSAL_MARKER: &str = "airlock: statement refused";

/// Runs a session to its end. Never panics on client input; every failure
/// ends in an error message to the client and a log line.
pub async fn run(mut login: Login, _settings: &ServerSettings, gate: Arc<dyn Gate>) {
    let peer = login.peer;
    let (binding, upstream) = match authenticate(&mut login, gate.as_ref()).await {
        Ok(x) => x,
        Err(refusal) => {
            tracing::info!(%peer, reason = %refusal.1, "login refused");
            fatal(&mut login.io, refusal.0, &refusal.1).await;
            return;
        }
    };
    tracing::info!(%peer, connection = %binding.connection, policy = %binding.policy, "session open");
    relay(login, binding, upstream, gate).await;
}

/// Password (token) exchange, policy binding and upstream login.
async fn authenticate(
    login: &mut Login,
    gate: &dyn Gate,
) -> Result<(Binding, Upstream), (&'static str, String)> {
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
    Ok((binding, upstream))
}

fn session_key() -> (i32, i32) {
    let id = ulid::Ulid::new().0;
    ((id >> 64) as i32 & 0x7fff_ffff, id as i32)
}

/// Refusals waiting for their substitute's error, in order.
type Pending = Arc<Mutex<VecDeque<Diagnostic>>>;

async fn relay(login: Login, binding: Binding, upstream: Upstream, gate: Arc<dyn Gate>) {
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
    let pending: Pending = Arc::default();
    let (inject_tx, inject_rx) = tokio::sync::mpsc::channel(16);

    let mut to_upstream = tokio::spawn(client_to_upstream(
        client_reader,
        up_writer,
        binding,
        gate,
        pending.clone(),
        inject_tx,
    ));
    let mut to_client = tokio::spawn(upstream_to_client(up_reader, client_write, pending, inject_rx));
    // Either side ending ends the session; the other is stopped. After a
    // protocol violation the writer first sends the client its FATAL.
    tokio::select! {
        r = &mut to_upstream => {
            if matches!(r, Ok(Err(ref e)) if e.starts_with(PROTOCOL_VIOLATION)) {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), &mut to_client).await;
            }
            to_client.abort();
            log_end("client", r);
        }
        r = &mut to_client => { to_upstream.abort(); log_end("upstream", r); }
    }
}

const PROTOCOL_VIOLATION: &str = "protocol violation";

/// Messages for the client from the client -> upstream side, written in
/// order with the upstream's output by the single writer.
#[derive(Debug)]
enum Inject {
    /// Write, then end the session.
    Fatal(Diagnostic),
}

fn log_end(side: &str, r: Result<Result<(), String>, tokio::task::JoinError>) {
    match r {
        Ok(Ok(())) => tracing::info!(side, "session closed"),
        Ok(Err(e)) => tracing::info!(side, error = %e, "session ended"),
        Err(e) => tracing::error!(side, error = %e, "session task failed"),
    }
}

async fn client_to_upstream(
    mut client: FrameReader<ReadHalf<Box<dyn ClientStream>>>,
    mut upstream: WriteHalf<TcpStream>,
    binding: Binding,
    gate: Arc<dyn Gate>,
    pending: Pending,
    inject: tokio::sync::mpsc::Sender<Inject>,
) -> Result<(), String> {
    let mut out = BytesMut::new();
    loop {
        let routed = match client.read_frame().await {
            Ok(Some(frame)) => route(&frame, &binding, gate.as_ref()).map(|r| (frame, r)),
            Ok(None) => return Ok(()),
            Err(ReadError::Codec(e)) => Err(e),
            Err(e) => return Err(e.to_string()),
        };
        let (frame, route) = match routed {
            Ok(x) => x,
            Err(e) => {
                // Out of step with the client: say why, then end the session.
                let _ = inject
                    .send(Inject::Fatal(Diagnostic {
                        severity: Severity::Fatal,
                        code: "08P01",
                        message: format!("protocol violation: {e}"),
                        detail: None,
                        hint: None,
                    }))
                    .await;
                return Err(format!("{PROTOCOL_VIOLATION}: {e}"));
            }
        };
        match route {
            Route::Forward => frame.encode(&mut out),
            Route::Terminate => {
                frame.encode(&mut out);
                let _ = upstream.write_all(&out).await;
                return Ok(());
            }
            Route::Refuse {
                substitute,
                diagnostic,
            } => {
                pending.lock().map_err(|_| "poisoned")?.push_back(diagnostic);
                substitute.encode(&mut out);
            }
        }
        // Batch what the client pipelined into one write.
        if !client.has_buffered_frame() {
            upstream
                .write_all(&out)
                .await
                .map_err(|e| format!("upstream write: {e}"))?;
            out.clear();
        }
    }
}

enum Route {
    Forward,
    Terminate,
    Refuse {
        substitute: Frame,
        diagnostic: Diagnostic,
    },
}

fn route(frame: &Frame, binding: &Binding, gate: &dyn Gate) -> Result<Route, CodecError> {
    match frame.tag {
        b'Q' | b'P' => {
            let (sql, name) = match FeMessage::parse(frame)? {
                FeMessage::Query { sql } => (sql, None),
                FeMessage::Parse { name, query, .. } => (query, Some(name)),
                _ => {
                    return Err(CodecError::UnknownTag {
                        tag: frame.tag as char,
                    });
                }
            };
            let diagnostic = match gate.judge(binding, &sql) {
                Judgement::Allow => return Ok(Route::Forward),
                Judgement::Deny { message } => refused(message, None),
                Judgement::Hold { rule, reason } => refused(
                    format!(
                        "statement needs a reviewer's approval ({rule}: {reason}), and approvals are not available on this proxy yet: refused"
                    ),
                    Some("run it through a path with approvals, or ask an operator".into()),
                ),
            };
            let substitute = match name {
                None => FeMessage::Query {
                    sql: REFUSAL_SQL.into(),
                }
                .to_frame(),
                Some(name) => FeMessage::Parse {
                    name,
                    query: REFUSAL_SQL.into(),
                    param_types: Vec::new(),
                }
                .to_frame(),
            };
            Ok(Route::Refuse {
                substitute,
                diagnostic,
            })
        }
        b'F' => Ok(Route::Refuse {
            substitute: FeMessage::Query {
                sql: REFUSAL_SQL.into(),
            }
            .to_frame(),
            diagnostic: refused(
                "the function-call protocol message is not allowed through Airlock".into(),
                None,
            ),
        }),
        b'X' => Ok(Route::Terminate),
        // Bind, Describe, Execute, Sync, Flush, Close, Copy*: judged where the
        // statement was (Query or Parse). Their bodies are checked here so a
        // malformed one never reaches the upstream.
        _ => FeMessage::parse(frame).map(|_| Route::Forward),
    }
}

fn refused(message: String, hint: Option<String>) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        code: "42501",
        message,
        detail: None,
        hint,
    }
}

async fn upstream_to_client(
    mut upstream: FrameReader<ReadHalf<TcpStream>>,
    mut client: WriteHalf<Box<dyn ClientStream>>,
    pending: Pending,
    mut inject: tokio::sync::mpsc::Receiver<Inject>,
) -> Result<(), String> {
    let mut out = BytesMut::with_capacity(16 * 1024);
    loop {
        // Both branches are cancel safe: FrameReader keeps partial frames.
        let read = tokio::select! {
            r = upstream.read_frame() => r,
            Some(msg) = inject.recv() => {
                match msg {
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
        match frame.tag {
            b'E' if is_refusal(&frame.body) => {
                let ours = pending.lock().map_err(|_| "poisoned")?.pop_front();
                match ours {
                    Some(d) => BeMessage::ErrorResponse(&d).encode(&mut out),
                    None => frame.encode(&mut out),
                }
            }
            _ => {
                if let Some(status) = ready_status(&frame) {
                    tracing::trace!(?status, "ready");
                }
                frame.encode(&mut out);
            }
        }
        // Flush when nothing more is buffered, or the batch is large.
        if !upstream.has_buffered_frame() || out.len() > 64 * 1024 {
            client
                .write_all(&out)
                .await
                .map_err(|e| format!("client write: {e}"))?;
            client.flush().await.map_err(|e| format!("client flush: {e}"))?;
            out.clear();
        }
    }
}

fn is_refusal(body: &Bytes) -> bool {
    parse_diagnostic_fields(body)
        .iter()
        .any(|(code, value)| *code == b'M' && value == REFUSAL_MARKER)
}

async fn write(io: &mut FrameReader<Box<dyn ClientStream>>, bytes: &[u8]) -> std::io::Result<()> {
    let w = io.get_mut();
    w.write_all(bytes).await?;
    w.flush().await
}

async fn fatal(io: &mut FrameReader<Box<dyn ClientStream>>, code: &'static str, message: &str) {
    crate::server::fatal(io, code, message).await;
}
