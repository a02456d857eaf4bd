//! The relay: two tasks per session, one per direction, and how their ends
//! become the session's end.

use std::sync::Arc;
use std::time::Duration;

use airlock_eventlog::proto::session_closed::Cause;
use tokio::sync::mpsc;

use super::inflight::{Queue, queue};
use super::signals::Signals;
use super::to_client::upstream_to_client;
use super::to_upstream::ToUpstream;
use super::{Ctx, Ending};
use crate::codec::FrameReader;
use crate::conn::Login;
use crate::upstream::Upstream;

pub(super) async fn relay(login: Login, upstream: Upstream, ctx: Arc<Ctx>, signals: Signals) -> Ending {
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
    let in_flight: Queue = Arc::default();
    let (inject_tx, inject_rx) = mpsc::channel(16);

    let reading = ToUpstream::new(
        ctx.clone(),
        client_reader,
        up_writer,
        in_flight.clone(),
        inject_tx,
        signals,
    );
    let mut to_upstream = tokio::spawn(reading.run());
    let mut to_client = tokio::spawn(upstream_to_client(
        up_reader,
        client_write,
        ctx.clone(),
        in_flight.clone(),
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
            Ok(Err(ending)) => {
                to_upstream.abort();
                ending
            }
            Err(e) => {
                to_upstream.abort();
                Ending::new(Cause::Error, format!("session task failed: {e}"))
            }
        },
    };
    // Ended by the proxy (protocol violation, expired token, error): a
    // statement still running upstream is cancelled, not left to finish
    // unobserved. (Kills and shutdown cancel on their own.)
    if matches!(
        ending.cause,
        Cause::ProtocolViolation | Cause::TokenExpired | Cause::Error
    ) {
        let (addr, key) = ctx.upstream_cancel.clone();
        crate::cancel::relay(&addr, key).await;
    }
    // Statements passed on and not answered when the session ended are
    // recorded as unfinished: the log shows every statement that may have
    // run, however the session ended.
    let left = queue(&in_flight).drain_running();
    for r in left {
        ctx.record(r, Some(&ending.detail));
    }
    ending
}

fn joined(r: Result<Ending, tokio::task::JoinError>) -> Ending {
    r.unwrap_or_else(|e| Ending::new(Cause::Error, format!("session task failed: {e}")))
}
