//! Bounded execution: an approved statement whose grant carries row
//! bounds runs inside a transaction the proxy controls, and is committed
//! only if it changed no more rows of each bounded table than its bound.
//!
//! Over the simple protocol, for a Query approved with bounds:
//!
//! 1. `SHOW track_counts` (the proxy's own Query, answered to the proxy
//!    alone) gives the session's transaction status, and whether
//!    PostgreSQL counts rows at all: without its counters a bound cannot be
//!    checked, and the statement is refused.
//! 2. `BEGIN` when the agent is outside a transaction, else a `SAVEPOINT`,
//!    and the per-table counters of the transaction so far
//!    (`pg_stat_xact_user_tables`, a partition counted as its partitioned
//!    table).
//! 3. The approved bytes, exactly; PostgreSQL's whole answer (rows,
//!    command tags, notices) is held back from the agent.
//! 4. The counters again: the difference is what the statement changed,
//!    foreign-key cascades and trigger writes included.
//! 5. Within its bounds: `COMMIT` (or `RELEASE SAVEPOINT`), then the agent
//!    gets exactly the answer it would have had. Past a bound, or counts
//!    that cannot be read: `ROLLBACK` (or `ROLLBACK TO SAVEPOINT`), and the
//!    agent gets the proxy's refusal as an error, its transaction (if it
//!    had one) failed as after any error. Nothing it did is kept.
//!
//! An agent already in a failed transaction runs nothing anyway: the
//! statement is sent as it is, and fails. A statement that controls
//! transactions itself, or COPY, cannot be run this way and is refused.

use airlock_eventlog::proto::{self, statement_refused::Cause};
use bytes::BytesMut;
use postgres_protocol::message::frontend;

use super::Ending;
use super::inflight::{HeldBack, InFlight, Own, OwnAnswer, Running, queue};
use super::refuse::Refused;
use super::to_client::Inject;
use super::to_upstream::ToUpstream;
use crate::codec::{BeMessage, Diagnostic, Frame, TxStatus};
use crate::error_response;
use crate::impact::{COUNTS, Counts, changed, parse_counts};

/// The savepoint the proxy sets inside an agent's transaction.
const SAVEPOINT: &str = "airlock_bound_check";
/// The statement and portal name of the proxy's own statements (names
/// starting with `airlock:` are refused to clients).
const OWN: &str = "airlock:own";

/// Why an approved statement with bounds is refused instead of run: only
/// reads and row writes (and the functions they reach) have every change
/// counted by PostgreSQL's per-transaction counters. TRUNCATE resets them,
/// DDL rewrites a table without counting rows, COPY and procedures are not
/// counted either, and transaction control would end the proxy's
/// transaction.
pub(super) fn unboundable(judgement: &crate::gate::Judgement) -> Option<String> {
    use airlock_policy::Kind;
    if !judgement.verdict.parsed {
        return Some("it could not be parsed".into());
    }
    let counted = |k: &Kind| {
        matches!(
            k,
            Kind::Select | Kind::Insert | Kind::Update | Kind::Delete | Kind::Merge | Kind::Function
        )
    };
    judgement.kinds.iter().find(|k| !counted(k)).map(|k| {
        format!(
            "the rows a {k} statement changes are not all counted (only SELECT, INSERT, UPDATE, DELETE and MERGE can run under bounds)"
        )
    })
}

impl ToUpstream {
    /// Runs statements of the proxy's own and waits for their answer (the
    /// client sees none of it): over the extended protocol, under a
    /// reserved name, so the client's unnamed statement (which a simple
    /// Query would destroy) survives; the first error stops the rest. A
    /// kill or the proxy stopping ends the session meanwhile.
    async fn own_query(&mut self, statements: &[&str]) -> Result<OwnAnswer, Ending> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        queue(&self.queue).push(InFlight::Own(Own {
            reply,
            answer: OwnAnswer::default(),
        }));
        let close = |out: &mut BytesMut| {
            // Closing what does not exist is no error; after an error
            // skipped the last close, the name is free again.
            let _ = frontend::close(b'P', OWN, out);
            let _ = frontend::close(b'S', OWN, out);
        };
        close(&mut self.out);
        for sql in statements {
            let parsed = frontend::parse(OWN, sql, std::iter::empty(), &mut self.out);
            let bound = frontend::bind(
                OWN,
                OWN,
                std::iter::empty::<i16>(),
                std::iter::empty::<()>(),
                |_, _| Ok(postgres_protocol::IsNull::Yes),
                [0i16],
                &mut self.out,
            );
            let executed = frontend::execute(OWN, 0, &mut self.out);
            if parsed.is_err() || bound.is_err() || executed.is_err() {
                return Err(Ending::new(
                    proto::session_closed::Cause::Error,
                    "a statement of the proxy's own could not be encoded",
                ));
            }
            close(&mut self.out);
        }
        frontend::sync(&mut self.out);
        self.flush().await?;
        self.answered(answer).await
    }

    /// Waits for what the writing side hands back, or an interrupt.
    async fn answered<T>(&mut self, answer: tokio::sync::oneshot::Receiver<T>) -> Result<T, Ending> {
        tokio::select! {
            a = answer => a.map_err(|_| Ending::new(
                proto::session_closed::Cause::UpstreamClosed,
                "PostgreSQL stopped answering during a bound check",
            )),
            i = self.signals.interrupted() => Err(self.interrupted(i).await),
        }
    }

    /// Asks whether rows can be counted and opens the proxy's transaction
    /// (or savepoint): `Ok(None)` when the session's transaction has
    /// failed (the statement then fails as it would anyway), `Err` with
    /// the refusal when rows cannot be counted (nothing opened).
    async fn open_bounded(&mut self, request_id: &str) -> Result<Result<Option<Opened>, Diagnostic>, Ending> {
        self.flush().await?;
        let probe = self.own_query(&["SHOW track_counts"]).await?;
        if probe.status == b'E' {
            return Ok(Ok(None));
        }
        let counting = probe.rows.first().and_then(|r| r.first()).cloned().flatten();
        if counting.as_deref() != Some("on") {
            let why = format!(
                "PostgreSQL does not count rows here (track_counts is {})",
                counting.as_deref().unwrap_or("unknown")
            );
            return Ok(Err(error_response::cannot_bound(request_id, &why)));
        }
        let inside = probe.status == b'T';
        let open = if inside {
            format!("SAVEPOINT {SAVEPOINT}")
        } else {
            "BEGIN".to_owned()
        };
        let opened = self.own_query(&[&open, COUNTS]).await?;
        match counts(&opened) {
            Ok(before) => Ok(Ok(Some(Opened { inside, before }))),
            Err(why) => {
                self.undo(inside).await?;
                Ok(Err(error_response::cannot_bound(request_id, &why)))
            }
        }
    }

    /// Runs the approved Query `frame` under `bounds` (see the module).
    pub(super) async fn run_bounded(
        &mut self,
        frame: &Frame,
        mut running: Running,
        bounds: Bounds,
        judgement: &crate::gate::Judgement,
    ) -> Result<(), Ending> {
        let request_id = running.request_id.clone();
        if let Some(why) = unboundable(judgement) {
            let refusal = error_response::cannot_bound(&request_id, &why);
            self.refuse_bounded(running, refusal, None, self.ctx.failing_query());
            return Ok(());
        }
        let opened = match self.open_bounded(&request_id).await? {
            Ok(Some(opened)) => opened,
            Ok(None) => {
                // A failed transaction runs nothing: PostgreSQL refuses it.
                queue(&self.queue).push(InFlight::Simple(running));
                frame.encode(&mut self.out);
                return Ok(());
            }
            Err(refusal) => {
                self.refuse_bounded(running, refusal, None, self.ctx.failing_query());
                return Ok(());
            }
        };
        // The approved bytes, their answer held back.
        let (tx, rx) = tokio::sync::oneshot::channel();
        running.held_back = Some(tx);
        queue(&self.queue).push(InFlight::Simple(running));
        frame.encode(&mut self.out);
        self.flush().await?;
        let held = self.answered(rx).await?;
        self.settle_bounded(held, &bounds, opened, Protocol::Simple).await
    }

    /// At the Bind of a statement approved with bounds: ends the batch
    /// (with a Sync of the proxy's own) and opens the proxy's transaction
    /// around the portal. `Ok(Ok(Some))`: bound it, and run its Execute
    /// with [`ToUpstream::run_bounded_portal`]; `Ok(Ok(None))`: bind it as
    /// it is (the session's transaction failed); `Ok(Err)`: refuse it.
    pub(super) async fn bind_bounded(
        &mut self,
        judgement: &crate::gate::Judgement,
        batch_before: super::to_upstream::Batch,
        request_id: &str,
    ) -> Result<Result<Option<Opened>, Diagnostic>, Ending> {
        if let Some(why) = unboundable(judgement) {
            return Ok(Err(error_response::cannot_bound(request_id, &why)));
        }
        if batch_before == super::to_upstream::Batch::Runs {
            return Ok(Err(error_response::cannot_bound(
                request_id,
                "something else already ran in its batch, and the check needs a transaction of its own; \
                 send Sync before the approved statement",
            )));
        }
        // Nothing ran in the batch: a Sync of the proxy's own ends it.
        self.end_batch_for_query();
        self.open_bounded(request_id).await
    }

    /// Runs the Execute of a portal bound under bounds: its answer held
    /// back, a Sync of the proxy's own after it, then the check.
    pub(super) async fn run_bounded_portal(
        &mut self,
        frame: &Frame,
        mut running: Running,
        pending: PendingBound,
        row_limit: i32,
    ) -> Result<(), Ending> {
        let opened = Opened {
            inside: pending.inside,
            before: pending.before,
        };
        if row_limit != 0 {
            self.end_batch_for_query();
            self.flush().await?;
            self.undo(opened.inside).await?;
            let refusal = error_response::cannot_bound(
                &running.request_id,
                "its rows are counted once it has run to the end: execute it without a row limit",
            );
            self.refuse_bounded(running, refusal, None, self.ctx.no_portal());
            return Ok(());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        running.held_back = Some(tx);
        queue(&self.queue).push(InFlight::Extended(running));
        frame.encode(&mut self.out);
        // Its ReadyForQuery hands the held answer back; inside the
        // proxy's transaction it commits nothing.
        self.end_batch_for_query();
        self.flush().await?;
        let held = self.answered(rx).await?;
        self.settle_bounded(held, &pending.bounds, opened, Protocol::Extended)
            .await
    }

    /// A portal bound under bounds was not executed before the client went
    /// on: the proxy's transaction is rolled back (the portal with it).
    pub(super) async fn abandon_bound(&mut self) -> Result<(), Ending> {
        let Some(pending) = self.pending_bound.take() else {
            return Ok(());
        };
        self.end_batch_for_query();
        self.flush().await?;
        self.undo(pending.inside).await
    }

    /// Counts what the statement changed and commits it, or rolls it back
    /// and refuses it; the agent then hears what it may.
    async fn settle_bounded(
        &mut self,
        held: HeldBack,
        bounds: &Bounds,
        opened: Opened,
        protocol: Protocol,
    ) -> Result<(), Ending> {
        let HeldBack {
            mut running,
            mut frames,
            status,
            overflowed,
        } = held;
        let inside = opened.inside;
        let stand_in = match protocol {
            Protocol::Simple => self.ctx.failing_query(),
            Protocol::Extended => self.ctx.no_portal(),
        };
        if overflowed {
            // (ROLLBACK, or ROLLBACK TO, works in a failed transaction too.)
            self.undo(inside).await?;
            let refusal = error_response::cannot_bound(
                &running.request_id,
                &format!(
                    "its answer is larger than the {} MiB the proxy holds back while it counts rows",
                    super::to_client::MAX_HELD >> 20
                ),
            );
            self.refuse_bounded(running, refusal, None, stand_in);
            return Ok(());
        }
        if running.error.is_some() {
            // It failed: nothing to count. Outside a transaction of its
            // own, the proxy's is ended as PostgreSQL would have ended it.
            let status = if inside {
                status
            } else {
                self.own_query(&["ROLLBACK"]).await?.status
            };
            self.release(running, frames, status, protocol, true).await;
            return Ok(());
        }
        // Deferred constraint triggers fire now, before the count, not at
        // a COMMIT after it.
        let after = self.own_query(&["SET CONSTRAINTS ALL IMMEDIATE", COUNTS]).await?;
        let check = counts(&after).and_then(|after| check(bounds, &opened.before, &after));
        match check {
            Ok(check) if !check.exceeded => {
                let end = if inside {
                    format!("RELEASE SAVEPOINT {SAVEPOINT}")
                } else {
                    "COMMIT".to_owned()
                };
                let ended = self.own_query(&[&end]).await?;
                let failed = ended.error.is_some();
                if let Some(error) = ended.error {
                    // Not committed after all (a deferred constraint, a
                    // serialization failure): the agent hears PostgreSQL.
                    if let Some(raw) = &ended.error_frame {
                        frames.extend_from_slice(raw);
                    }
                    running.error = Some(error);
                }
                running.bound = Some(check);
                self.release(running, frames, ended.status, protocol, failed)
                    .await;
            }
            Ok(check) => {
                self.undo(inside).await?;
                let refusal = error_response::bound_exceeded(&running.request_id, &check);
                self.refuse_bounded(running, refusal, Some(check), stand_in);
            }
            Err(why) => {
                self.undo(inside).await?;
                let refusal = error_response::cannot_bound(&running.request_id, &why);
                self.refuse_bounded(running, refusal, None, stand_in);
            }
        }
        Ok(())
    }

    /// Rolls back what the proxy opened: its transaction, or the agent's
    /// work since its savepoint.
    async fn undo(&mut self, inside: bool) -> Result<(), Ending> {
        let back = format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}");
        let release = format!("RELEASE SAVEPOINT {SAVEPOINT}");
        let statements: &[&str] = if inside { &[&back, &release] } else { &["ROLLBACK"] };
        let undone = self.own_query(statements).await?;
        if let Some((code, message)) = undone.error {
            // Fail closed: a transaction the proxy cannot roll back must
            // not be left for the agent to commit.
            tracing::error!(session = %self.ctx.session, %code, %message, "a bound check could not roll back; ending the session");
            return Err(Ending::new(
                proto::session_closed::Cause::Error,
                format!("a bound check could not roll back: {message}"),
            ));
        }
        Ok(())
    }

    /// The agent gets the answer it would have had: over the simple
    /// protocol with the ReadyForQuery of the transaction as it now
    /// stands; over the extended one without (the client's own Sync gets
    /// that), and after an error the client's messages up to its Sync are
    /// dropped, as PostgreSQL would skip them. The statement is recorded.
    async fn release(
        &mut self,
        running: Running,
        mut frames: BytesMut,
        status: u8,
        protocol: Protocol,
        failed: bool,
    ) {
        match protocol {
            Protocol::Simple => {
                let status = TxStatus::from_byte(status).unwrap_or(TxStatus::Failed);
                BeMessage::ReadyForQuery(status).encode(&mut frames);
            }
            Protocol::Extended => self.skip_to_sync = failed,
        }
        self.ctx.finish(running);
        let _ = self.inject.send(Inject::Frames(frames)).await;
    }

    /// Refuses the statement as a refusal is: `stand_in` fails where it
    /// would have run (failing the agent's transaction, if any, as any
    /// error does), its error rewritten into `refusal`.
    fn refuse_bounded(
        &mut self,
        running: Running,
        refusal: Diagnostic,
        check: Option<proto::BoundCheck>,
        stand_in: crate::codec::FeMessage,
    ) {
        let refused = Refused {
            statement: running.statement,
            verdict: running.verdict,
            cause: Cause::BoundExceeded,
            counted: None,
            diagnostic: refusal,
            request_id: running.request_id,
        };
        self.refuse_checked(refused, stand_in, check);
    }
}

/// Which protocol a bounded statement came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Simple,
    Extended,
}

/// The proxy's transaction (or savepoint) around a bounded statement, and
/// the counters when it was opened.
#[derive(Debug)]
pub(super) struct Opened {
    inside: bool,
    before: Counts,
}

/// A portal bound under bounds, waiting for its Execute.
#[derive(Debug)]
pub(super) struct PendingBound {
    pub portal: String,
    bounds: Bounds,
    inside: bool,
    before: Counts,
}

impl PendingBound {
    pub fn new(portal: String, bounds: Bounds, opened: Opened) -> PendingBound {
        PendingBound {
            portal,
            bounds,
            inside: opened.inside,
            before: opened.before,
        }
    }
}

fn counts(answer: &OwnAnswer) -> Result<Counts, String> {
    match &answer.error {
        Some((code, message)) => Err(format!("its rows could not be counted: {message} ({code})")),
        None => parse_counts(answer.rows.clone()).map_err(|e| format!("its rows could not be counted: {e}")),
    }
}

/// An approval's row bounds, from its grant in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Bounds {
    pub tables: Vec<proto::TableBound>,
    /// A table not in `tables` may change no row.
    pub every_table: bool,
}

impl Bounds {
    /// The bounds a confirmed grant sets, if it is bounded (a grant
    /// naming bounds is bounded whatever its flag says).
    pub fn of(grant: &proto::ApprovalGranted) -> Option<Bounds> {
        (grant.bounded || !grant.bounds.is_empty()).then(|| Bounds {
            tables: grant.bounds.clone(),
            every_table: grant.every_table,
        })
    }
}

/// Pure: what the statement changed against its bounds. A bounded table it
/// did not touch changed 0 rows; with `every_table`, a table it changed
/// that is not named is bounded at 0.
pub(super) fn check(bounds: &Bounds, before: &Counts, after: &Counts) -> Result<proto::BoundCheck, String> {
    // A table whose counters went back (TRUNCATE, or a table dropped and
    // made again, inside a function) had rows changed that no count shows.
    for (table, was) in before {
        let now = after.get(table).copied().unwrap_or_default();
        if now.iter().zip(was).any(|(n, w)| n < w) {
            return Err(format!(
                "PostgreSQL's counters of {table} were reset while it ran (a TRUNCATE or DROP), so its rows cannot be counted"
            ));
        }
    }
    let rows = changed(before, after);
    let mut effective = bounds.tables.clone();
    if bounds.every_table {
        for r in &rows {
            if !effective.iter().any(|b| b.table == r.table) {
                effective.push(proto::TableBound {
                    table: r.table.clone(),
                    max_rows: 0,
                });
            }
        }
    }
    let exceeded = effective.iter().any(|b| {
        rows.iter()
            .find(|r| r.table == b.table)
            .is_some_and(|r| r.rows > b.max_rows)
    });
    Ok(proto::BoundCheck {
        bounds: effective,
        rows,
        exceeded,
        every_table: bounds.every_table,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(rows: &[(&str, [u64; 3])]) -> Counts {
        rows.iter().map(|(t, c)| ((*t).to_owned(), *c)).collect()
    }

    fn bound(table: &str, max_rows: u64) -> Bounds {
        Bounds {
            tables: vec![proto::TableBound {
                table: table.into(),
                max_rows,
            }],
            every_table: false,
        }
    }

    #[test]
    fn a_bound_is_exceeded_only_by_more_rows_of_its_own_table() {
        let before = counts(&[("public.orders", [0, 0, 2])]);
        let after = counts(&[("public.orders", [0, 0, 5]), ("public.audit", [9, 0, 0])]);
        let c = check(&bound("public.orders", 3), &before, &after).expect("counted");
        assert!(!c.exceeded, "3 of 3: {c:?}");
        let c = check(&bound("public.orders", 2), &before, &after).expect("counted");
        assert!(c.exceeded);
        assert_eq!(c.rows.len(), 2, "every table changed is reported");
        // Inserts, updates and deletes all count.
        let after = counts(&[("public.orders", [1, 1, 3])]);
        assert!(
            check(&bound("public.orders", 2), &before, &after)
                .expect("counted")
                .exceeded
        );
        // A table it never touched, and a table with no bound.
        assert!(
            !check(&bound("public.other", 0), &before, &after)
                .expect("counted")
                .exceeded
        );
        // Review finding: with every table shown (a dry run), a table not
        // named may change no row.
        let strict = Bounds {
            every_table: true,
            ..bound("public.orders", 10)
        };
        let after = counts(&[("public.orders", [0, 0, 3]), ("public.audit", [1, 0, 0])]);
        let c = check(&strict, &before, &after).expect("counted");
        assert!(c.exceeded);
        assert!(
            c.bounds
                .iter()
                .any(|b| b.table == "public.audit" && b.max_rows == 0)
        );
        // Review finding: TRUNCATE inside a function resets a table's
        // counters; rows it changed before would vanish from the count.
        let reset = counts(&[("public.orders", [0, 0, 0])]);
        assert!(check(&bound("public.orders", 100), &before, &reset).is_err());
    }
}
