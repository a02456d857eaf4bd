//! The single writer to the client: PostgreSQL's answers, in order, with the
//! reading side's notices and fatal errors put in their place. Each answer
//! is matched to the statement it ends ([`super::inflight`]); finished
//! statements are recorded, and a stand-in's error is rewritten into the
//! refusal it stands for.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use super::inflight::{HeldBack, Queue, Ready, Running, queue};
use super::{Ctx, Ending};
use crate::codec::{BeMessage, Diagnostic, Frame, FrameReader, parse_diagnostic_fields};
use crate::conn::ClientStream;
use crate::error_response;
use airlock_eventlog::proto::session_closed::Cause;

/// Messages for the client from the reading side, written in order with the
/// upstream's output by the single writer.
#[derive(Debug)]
pub(super) enum Inject {
    Notice(Diagnostic),
    /// Write, then end the session.
    Fatal(Diagnostic),
    /// Messages as they are: an answer held back for a bound check, and
    /// what ends it.
    Frames(BytesMut),
}

pub(super) async fn upstream_to_client(
    mut upstream: FrameReader<ReadHalf<Box<dyn ClientStream>>>,
    mut client: WriteHalf<Box<dyn ClientStream>>,
    ctx: Arc<Ctx>,
    queue: Queue,
    mut inject: mpsc::Receiver<Inject>,
) -> Result<(), Ending> {
    let lost = |e: String| Ending::new(Cause::UpstreamClosed, e);
    // Grows on first use: an idle session holds no write buffer.
    let mut out = BytesMut::new();
    // The answer of a statement run under bounds, until it is counted; an
    // Execute's, until the proxy's own Sync after it is answered.
    let mut held = Held::default();
    let mut stash: Option<Running> = None;
    // Once the client is gone, keep reading PostgreSQL's answers (to record
    // what ran) and write nothing.
    let mut client_gone = false;
    loop {
        // Both branches are cancel safe: FrameReader keeps partial frames.
        // What the session injects goes first: it was sent before whatever
        // the session forwarded to PostgreSQL next, so it must reach the
        // client before that answer does (a bounded statement's held-back
        // answer before the ReadyForQuery of the client's Sync after it; a
        // fair choice let the ReadyForQuery overtake it now and then, and
        // drivers failed on a CommandComplete after ReadyForQuery).
        let read = tokio::select! {
            biased;
            Some(msg) = inject.recv() => {
                match msg {
                    Inject::Notice(d) => {
                        BeMessage::NoticeResponse(&d).encode(&mut out);
                        client.write_all(&out).await.map_err(|e| lost(format!("client write: {e}")))?;
                        client.flush().await.map_err(|e| lost(format!("client flush: {e}")))?;
                        out.clear();
                        continue;
                    }
                    Inject::Frames(frames) => {
                        // After anything of PostgreSQL's not yet written.
                        out.extend_from_slice(&frames);
                        if !client_gone && (client.write_all(&out).await.is_err() || client.flush().await.is_err()) {
                            client_gone = true;
                        }
                        out.clear();
                        continue;
                    }
                    Inject::Fatal(d) => {
                        BeMessage::ErrorResponse(&d).encode(&mut out);
                        client.write_all(&out).await.map_err(|e| lost(format!("client write: {e}")))?;
                        let _ = client.flush().await;
                        let _ = client.shutdown().await;
                        return Ok(());
                    }
                }
            }
            r = upstream.read_frame() => r,
        };
        let frame = match read {
            Ok(Some(f)) => f,
            Ok(None) => {
                client.write_all(&out).await.ok();
                return Err(lost("upstream closed the connection".into()));
            }
            Err(e) => return Err(lost(format!("upstream: {e}"))),
        };
        if let Err(refusal) = observe(&ctx, &queue, &frame, &mut out, &mut held, &mut stash) {
            // Fail closed: what PostgreSQL answered so far goes out, then
            // the FATAL; the session ends and its running statement is
            // cancelled.
            BeMessage::ErrorResponse(&refusal).encode(&mut out);
            let _ = client.write_all(&out).await;
            let _ = client.flush().await;
            let _ = client.shutdown().await;
            return Err(Ending::new(Cause::Error, refusal.message));
        }
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
/// `Err`: the session must end with this FATAL.
fn observe(
    ctx: &Ctx,
    queue_: &Queue,
    frame: &Frame,
    out: &mut BytesMut,
    held: &mut Held,
    stash: &mut Option<Running>,
) -> Result<(), Diagnostic> {
    // The proxy's own Query: its answer is the proxy's (a setting that
    // changed is still checked and passed on).
    if frame.tag != b'S' && own(ctx, queue_, frame) {
        return Ok(());
    }
    // An Execute run under bounds, answered: the ReadyForQuery of the
    // proxy's Sync after it hands its answer back.
    if frame.tag == b'Z'
        && let Some(mut running) = stash.take()
    {
        let status = frame.body.first().copied().unwrap_or(b'E');
        ctx.names().ready(status == b'I');
        ctx.names_settled.notify_waiters();
        // The proxy's Sync: the client never sees its ReadyForQuery.
        let _ = queue(queue_).ready();
        let reply = running.held_back.take();
        let answer = HeldBack {
            frames: std::mem::take(&mut held.buf),
            overflowed: std::mem::take(&mut held.overflowed),
            status,
            running,
        };
        if let Some(tx) = reply
            && let Err(back) = tx.send(answer)
        {
            ctx.finish(back.running);
        }
        return Ok(());
    }
    // A statement run under bounds: its answer waits for the count.
    let out = if queue(queue_).held_back_front() {
        if held.buf.len() > MAX_HELD {
            // Too large to hold back: the count decides nothing now, the
            // statement will be rolled back and refused; keep reading.
            held.buf.clear();
            held.overflowed = true;
        }
        &mut held.buf
    } else {
        out
    };
    match frame.tag {
        // ParameterStatus: a setting changed. Those that change how
        // PostgreSQL reads text must stay as the proxy reads it.
        b'S' => {
            let mut fields = frame.body.split(|b| *b == 0);
            let name = String::from_utf8_lossy(fields.next().unwrap_or_default());
            let value = String::from_utf8_lossy(fields.next().unwrap_or_default());
            if !crate::upstream::reads_as_proxy(&name, &value) {
                ctx.reading_broken
                    .store(true, std::sync::atomic::Ordering::Release);
                ctx.names_settled.notify_waiters();
                tracing::error!(session = %ctx.session, %name, %value, "upstream reads statements differently now: ending the session");
                return Err(error_response::reading_changed(&name, &value));
            }
            frame.encode(out);
        }
        // CommandComplete, EmptyQueryResponse, PortalSuspended.
        b'C' | b'I' | b's' => {
            let tag = match frame.tag {
                b'C' => String::from_utf8_lossy(frame.body.strip_suffix(b"\0").unwrap_or(&frame.body))
                    .into_owned(),
                b'I' => "EMPTY".into(),
                _ => "SUSPENDED".into(),
            };
            let finished = queue(queue_).completed(tag);
            if let Some(r) = finished {
                finished_or_held(ctx, r, stash);
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
            if names_marker && let Some(d) = queue(queue_).stand_in_failed() {
                BeMessage::ErrorResponse(&d).encode(out);
                return Ok(());
            }
            let get = |c: u8| {
                fields
                    .iter()
                    .find(|(k, _)| *k == c)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let finished = queue(queue_).failed((get(b'C'), get(b'M')));
            if let Some(r) = finished {
                finished_or_held(ctx, r, stash);
            }
            frame.encode(out);
        }
        // ParameterDescription: the types of the statement described.
        b't' => {
            let mut d = ctx.described();
            if let Some(Some(statement)) = d.waiting.pop_front() {
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
                if d.types.len() >= crate::names::MAX_NAMES {
                    // Bounded: forgotten types only make values show raw.
                    d.types.clear();
                }
                d.types.insert(statement, types);
            }
            frame.encode(out);
        }
        b'1' | b'2' | b'3' => {
            // ParseComplete, BindComplete, CloseComplete.
            let in_step = ctx.names().confirmed();
            ctx.names_settled.notify_waiters();
            if !in_step {
                tracing::error!(session = %ctx.session, tag = %(frame.tag as char), "an answer from PostgreSQL does not fit what was sent: ending the session");
                return Err(error_response::out_of_step());
            }
            frame.encode(out);
        }
        b'Z' => {
            let idle = frame.body.first() == Some(&b'I');
            ctx.names().ready(idle);
            ctx.names_settled.notify_waiters();
            // Describes of a batch are answered (or skipped) by now.
            ctx.described().waiting.clear();
            // The end of a Query or of a batch: settle everything up to it.
            let ended = queue(queue_).ready();
            // A bounded Execute skipped after an error: the reading side
            // waits for its answer, which is that it did not run.
            let skipped = queue(queue_).take_skipped_held();
            if let Some(mut running) = skipped
                && let Some(tx) = running.held_back.take()
            {
                let answer = HeldBack {
                    frames: BytesMut::new(),
                    overflowed: false,
                    status: frame.body.first().copied().unwrap_or(b'E'),
                    running,
                };
                if let Err(back) = tx.send(answer) {
                    ctx.finish(back.running);
                }
            }
            let own = matches!(ended, Ready::OwnSync);
            match ended {
                Ready::Query(r) if r.held_back.is_some() => {
                    // Handed to the reading side, which counts its rows and
                    // then sends the client what it may see.
                    let mut running = *r;
                    let reply = running.held_back.take();
                    let answer = HeldBack {
                        frames: std::mem::take(out),
                        overflowed: std::mem::take(&mut held.overflowed),
                        status: frame.body.first().copied().unwrap_or(b'E'),
                        running,
                    };
                    if let Some(tx) = reply
                        && let Err(back) = tx.send(answer)
                    {
                        ctx.finish(back.running);
                    }
                    return Ok(());
                }
                Ready::Query(r) => {
                    // COPY mode ends with the COPY's own answer (if it
                    // failed before starting, no CopyDone will come).
                    if r.copies_in {
                        ctx.copy_in.store(false, std::sync::atomic::Ordering::Release);
                    }
                    ctx.finish(*r);
                }
                Ready::Batch | Ready::OwnSync | Ready::Own(_) => {}
            }
            if idle {
                catalog_committed(ctx);
            }
            // The proxy's own Sync: the client never asked for this one.
            if own {
                return Ok(());
            }
            frame.encode(out);
        }
        _ => frame.encode(out),
    }
    Ok(())
}

/// Outside a transaction block: what this session changed in the catalog
/// is committed (after the statement's finish).
fn catalog_committed(ctx: &Ctx) {
    let catalog = ctx
        .binding
        .session
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .catalog
        .clone();
    if let Some(c) = catalog {
        c.idle();
    }
}

/// Takes `frame` into the answer of the proxy's own Query if that is what
/// PostgreSQL answers now; at its ReadyForQuery the answer goes to the
/// reading side. False when the frame is not for one.
fn own(ctx: &Ctx, queue_: &Queue, frame: &Frame) -> bool {
    let mut q = queue(queue_);
    let Some(own) = q.own_front() else { return false };
    match frame.tag {
        b'T' => own.answer.rows.clear(),
        b'D' => match crate::upstream::query::data_row(frame.body.clone()) {
            Some(row) => own.answer.rows.push(row),
            None => {
                own.answer
                    .error
                    .get_or_insert(("XX000".into(), "a malformed row from PostgreSQL".into()));
            }
        },
        b'E' => {
            let fields = parse_diagnostic_fields(&frame.body);
            let get = |c: u8| crate::codec::diagnostic_field(&fields, c);
            if own.answer.error.is_none() {
                own.answer.error = Some((get(b'C'), get(b'M')));
                own.answer.error_frame = Some(frame.to_bytes());
            }
        }
        b'Z' => {
            let status = frame.body.first().copied().unwrap_or(b'E');
            if let Ready::Own(mut own) = q.ready() {
                drop(q);
                if status == b'I' {
                    catalog_committed(ctx);
                }
                own.answer.status = status;
                let _ = own.reply.send(own.answer);
            }
        }
        // Completions, notices: the proxy's, not the client's.
        _ => {}
    }
    true
}

/// The most of a bounded statement's answer held back while its rows are
/// counted; past it the statement is rolled back and refused.
pub(super) const MAX_HELD: usize = 64 * 1024 * 1024;

/// A bounded statement's answer, held back.
#[derive(Default)]
pub(super) struct Held {
    buf: BytesMut,
    /// It outgrew [`MAX_HELD`]: what was held is gone.
    overflowed: bool,
}

/// An Execute answered: recorded, unless it ran under bounds (then kept
/// until the proxy's Sync after it is answered).
fn finished_or_held(ctx: &Ctx, r: Running, stash: &mut Option<Running>) {
    if r.held_back.is_some() {
        *stash = Some(r);
    } else {
        ctx.finish(r);
    }
}
