//! The extended query protocol, one handler per message.
//!
//! A statement is judged at Parse. An allowed or held one is parsed
//! upstream (parsing plans and runs nothing); a denied one is replaced by a
//! Parse that fails. Bind and Execute look up what PostgreSQL will really
//! use (see [`crate::names`]) and refuse names Airlock never judged. A held
//! statement waits at its Bind, where its parameters are known and before
//! PostgreSQL plans it: the reviewer sees the parameters and the approval
//! binds the exact Parse and Bind messages; the portal then runs under that
//! approval. A refusal there fails that Bind, as PostgreSQL would, and the
//! rest of the batch up to Sync is skipped.

use airlock_eventlog::proto::{self, statement_refused::Cause};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::hold::Step;
use super::inflight::queue;
use super::inflight::{InFlight, Running};
use super::refuse::Refused;
use super::to_upstream::{Batch, ToUpstream};
use super::{Ctx, Ending};
use crate::codec::Frame;
use crate::error_response;
use airlock_policy::Kind;

use crate::gate::{Action, Judgement};
use crate::metrics;
use crate::names::{Portal, Statement};

/// Why a statement judged under policies since reloaded is not run.
const POLICIES_CHANGED: &str = "the policies changed since this statement was prepared, bound or approved, and now \
     ask more of it; send it again (Parse and Bind) to have it judged under the policies in force";

impl ToUpstream {
    pub(super) async fn parse(
        &mut self,
        frame: &Frame,
        name: String,
        query: String,
        param_types: Vec<u32>,
    ) -> Result<(), Ending> {
        self.batch = self.batch.max(Batch::Prepares);
        let ctx = self.ctx.clone();
        let settled = self.settle_reading(&query).await?;
        let mut judgement = ctx.deps.gate.judge(&ctx.binding, &query);
        ctx.count_verdict(&judgement);
        let why = if !settled {
            Some(super::READING_UNSETTLED)
        } else if sql_prepared(&ctx, &name) {
            Some("this name is taken by a statement made with SQL PREPARE; use another name")
        } else if judgement.executes_prepared {
            // Judged now, run later: PostgreSQL looks the name up when the
            // portal runs, after a DEALLOCATE and PREPARE may have changed it.
            Some(
                "EXECUTE of a statement made with SQL PREPARE is not allowed over the extended query protocol through Airlock; send it as a simple query",
            )
        } else if judgement.has(Kind::Copy) {
            Some(
                "COPY to or from the client, a file or a program is not supported over the extended query protocol through Airlock; send it as a simple query (psql \\copy)",
            )
        } else {
            ctx.session_refusal(&query, &judgement)
        };
        if let Some(why) = why {
            judgement.action = Action::Deny { message: why.into() };
        }
        match judgement.action.clone() {
            // A held statement is parsed upstream (parsing runs nothing) and
            // held at its Bind, where the parameters are known and before
            // PostgreSQL plans it.
            Action::Allow | Action::Hold(_) => {
                let statement = Statement {
                    text: query,
                    judgement,
                    param_types,
                    parse: frame.to_bytes(),
                };
                ctx.names().parse(name, statement);
                frame.encode(&mut self.out);
            }
            // Fails at parse time: the Parse fails where the client expects
            // its answer.
            Action::Deny { message } => {
                self.context.note(&query, &judgement.verdict);
                let refused = Refused {
                    statement: proto::Statement {
                        text: query,
                        protocol: proto::statement::Protocol::Extended as i32,
                        sha256: super::hold::frame_sha256(frame),
                        prepared_name: name,
                        ..Default::default()
                    },
                    verdict: judgement.verdict,
                    cause: Cause::Policy,
                    counted: None,
                    diagnostic: error_response::denied(message),
                    request_id: String::new(),
                };
                self.refuse(refused, ctx.failing_parse());
            }
        }
        Ok(())
    }

    pub(super) async fn bind(
        &mut self,
        frame: &Frame,
        portal: String,
        statement: String,
        param_formats: Vec<i16>,
        params: Vec<Option<Bytes>>,
    ) -> Result<(), Ending> {
        let batch_before = self.batch;
        self.batch = Batch::Runs;
        let found = self
            .resolve(|n| n.statement(&statement).map(|s| s.clone()))
            .await?;
        // A statement Airlock never judged (say, one made with SQL-level
        // PREPARE): binding it is refused.
        let Some(mut stmt) = found else {
            let why = "binding a prepared statement Airlock has not judged is not allowed; prepare it through this connection with Parse";
            self.refuse_unjudged(why, self.ctx.no_statement());
            return Ok(());
        };
        // Prepared before the policies were reloaded: judged again under
        // the policies now in force (a rule may now deny it, or hold it
        // with other reviewers or step-up), never looser than at Parse.
        self.rejudge(&mut stmt.judgement, &stmt.text);
        let parameters = self.describe_parameters(&stmt, &param_formats, &params);
        self.context.note(&stmt.text, &stmt.judgement.verdict);
        if matches!(stmt.judgement.action, Action::Allow) {
            self.context.ran(&stmt.text);
        }
        // PostgreSQL plans a statement at Bind (and a plan may run
        // functions), so a statement that needs approval is held here, with
        // its parameters known, and its Bind goes upstream only once
        // approved. The approval binds the exact Parse and Bind messages.
        let mut bounded = None;
        let approved = match stmt.judgement.action.clone() {
            Action::Allow => None,
            Action::Hold(spec) => {
                let mut digest = Sha256::new();
                digest.update(&stmt.parse);
                digest.update(frame.to_bytes());
                let held = proto::Statement {
                    text: stmt.text.clone(),
                    protocol: proto::statement::Protocol::Extended as i32,
                    parameters: parameters.clone(),
                    prepared_name: statement.clone(),
                    portal_name: portal.clone(),
                    sha256: digest.finalize().to_vec(),
                };
                match self.hold(&held, &stmt.judgement, &spec).await? {
                    // Policies reloaded while it was held: the grant counts
                    // only if the policies now in force ask no more.
                    Step::Run { request_id, .. } if self.tightened(&stmt.judgement, &stmt.text) => {
                        let refused = Refused {
                            statement: held,
                            verdict: stmt.judgement.verdict.clone(),
                            cause: Cause::Policy,
                            counted: None,
                            diagnostic: error_response::denied(POLICIES_CHANGED),
                            request_id,
                        };
                        let stand_in = self.ctx.no_statement();
                        self.refuse(refused, stand_in);
                        return Ok(());
                    }
                    // Approved with row bounds: bound inside a transaction of
                    // the proxy's, run by its Execute (see `bounded`).
                    Step::Run {
                        request_id,
                        bounds: Some(bounds),
                    } => {
                        match self
                            .bind_bounded(&stmt.judgement, batch_before, &request_id)
                            .await?
                        {
                            Ok(opened) => {
                                bounded = opened.map(|o| (bounds, o));
                                Some(request_id)
                            }
                            Err(diagnostic) => {
                                let refused = Refused {
                                    statement: held,
                                    verdict: stmt.judgement.verdict.clone(),
                                    cause: Cause::BoundExceeded,
                                    counted: None,
                                    diagnostic,
                                    request_id,
                                };
                                let stand_in = self.ctx.no_statement();
                                self.refuse(refused, stand_in);
                                return Ok(());
                            }
                        }
                    }
                    Step::Run { request_id, .. } => Some(request_id),
                    // A Bind of a statement that does not exist fails where
                    // the held Bind would have; nothing was planned.
                    Step::Refuse {
                        diagnostic,
                        cause,
                        request_id,
                    } => {
                        let refused = Refused {
                            statement: held,
                            verdict: stmt.judgement.verdict.clone(),
                            cause,
                            counted: None,
                            diagnostic,
                            request_id,
                        };
                        let stand_in = self.ctx.no_statement();
                        self.refuse(refused, stand_in);
                        return Ok(());
                    }
                }
            }
            // Denied statements are never parsed upstream; never bound.
            Action::Deny { message } => {
                self.refuse_unjudged(&message, self.ctx.no_statement());
                return Ok(());
            }
        };
        let bound = Portal {
            statement_name: statement,
            statement: stmt,
            parameters,
            bind: frame.to_bytes(),
            approved,
            bounded: bounded.is_some(),
        };
        if let Some((bounds, opened)) = bounded {
            self.pending_bound = Some(super::bounded::PendingBound::new(portal.clone(), bounds, opened));
        }
        // A Sync of the proxy's own may have ended the batch before it; this
        // Bind opens the client's next one.
        self.batch = Batch::Runs;
        self.ctx.names().bind(portal, bound);
        frame.encode(&mut self.out);
        Ok(())
    }

    /// The bound values as the reviewer and the log see them: declared
    /// types first, the server's where the client left a type unspecified.
    fn describe_parameters(
        &self,
        stmt: &Statement,
        param_formats: &[i16],
        params: &[Option<Bytes>],
    ) -> Vec<proto::Parameter> {
        let reported = self
            .ctx
            .described()
            .types
            .get(&stmt.parse)
            .cloned()
            .unwrap_or_default();
        params
            .iter()
            .enumerate()
            .map(|(i, value)| {
                let type_oid = match stmt.param_types.get(i).copied() {
                    Some(t) if t != 0 => t,
                    _ => reported.get(i).copied().unwrap_or(0),
                };
                let format = match param_formats.len() {
                    0 => 0,
                    1 => param_formats[0],
                    _ => param_formats.get(i).copied().unwrap_or(0),
                };
                crate::params::describe(type_oid, format, value.as_deref())
            })
            .collect()
    }

    pub(super) async fn execute(
        &mut self,
        frame: &Frame,
        portal: String,
        row_limit: i32,
    ) -> Result<(), Ending> {
        self.batch = Batch::Runs;
        let ctx = self.ctx.clone();
        let found = self.resolve(|n| n.portal(&portal).map(|p| p.clone())).await?;
        let Some(bound) = found else {
            let why = "executing a portal Airlock has not judged is not allowed";
            self.refuse_unjudged(why, ctx.no_portal());
            return Ok(());
        };
        // Bound before the policies were reloaded: it runs only if the
        // policies now in force ask no more than it was bound under.
        if self.tightened(&bound.statement.judgement, &bound.statement.text) {
            self.refuse_unjudged(POLICIES_CHANGED, ctx.no_portal());
            return Ok(());
        }
        let judgement = &bound.statement.judgement;
        let statement = proto::Statement {
            text: bound.statement.text.clone(),
            protocol: proto::statement::Protocol::Extended as i32,
            parameters: bound.parameters.clone(),
            prepared_name: bound.statement_name.clone(),
            portal_name: portal,
            sha256: Vec::new(),
        };
        // A portal of a statement that needs approval exists only once
        // its Bind was approved (see `bind`); each Execute of it runs under
        // that approval. Anything else is never run.
        let request_id = match (&judgement.action, &bound.approved) {
            (Action::Allow, _) => String::new(),
            (Action::Hold(_), Some(request_id)) => request_id.clone(),
            (Action::Hold(_) | Action::Deny { .. }, _) => {
                self.refuse_unjudged(
                    "executing a portal Airlock has not approved is not allowed",
                    ctx.no_portal(),
                );
                return Ok(());
            }
        };
        if bound.bounded {
            // Its bounds apply to one run: the one its Bind opened.
            let pending = self
                .pending_bound
                .take()
                .filter(|p| p.portal == statement.portal_name);
            let Some(pending) = pending else {
                let why = error_response::cannot_bound(
                    &request_id,
                    "an approved statement runs once under its bounds; send it again to have it approved again",
                );
                self.refuse_unjudged(&why.message, ctx.no_portal());
                return Ok(());
            };
            let slot = match self.reserve_record(true).await {
                Ok(slot) => slot,
                Err(full) => {
                    self.pending_bound = Some(pending);
                    self.abandon_bound().await?;
                    let refused = Refused {
                        statement,
                        verdict: judgement.verdict.clone(),
                        cause: Cause::Unavailable,
                        counted: Some(metrics::Refusal::BufferFull),
                        diagnostic: error_response::log_unavailable(&full),
                        request_id,
                    };
                    let stand_in = ctx.no_portal();
                    self.refuse(refused, stand_in);
                    return Ok(());
                }
            };
            let running = Running::new(statement, judgement, request_id, slot);
            return self.run_bounded_portal(frame, running, pending, row_limit).await;
        }
        self.run_portal(frame, statement, judgement, request_id).await;
        Ok(())
    }

    /// Brings the judgement of a prepared statement to the policies in
    /// force now: untouched if no reload happened since (the common case:
    /// no work), else judged again and kept no looser than before (the
    /// catalog may have moved a name since PostgreSQL resolved it at Parse,
    /// so the new judgement alone could be about another table).
    fn rejudge(&self, judgement: &mut Judgement, text: &str) {
        let gate = &self.ctx.deps.gate;
        if judgement.policy_generation == gate.policy_generation() {
            return;
        }
        let old = judgement;
        let mut fresh = gate.judge(&self.ctx.binding, text);
        self.ctx.count_verdict(&fresh);
        if let Some(why) = self.ctx.session_refusal(text, &fresh) {
            fresh.action = Action::Deny { message: why.into() };
        }
        fresh.action = match (&old.action, &fresh.action) {
            // Kept as judged before, and recorded so.
            (Action::Deny { .. }, _) | (Action::Hold(_), Action::Allow) => {
                fresh.verdict = old.verdict.clone();
                old.action.clone()
            }
            (_, Action::Deny { .. }) => fresh.action.clone(),
            (Action::Hold(o), Action::Hold(n)) => {
                let mut spec = n.clone();
                spec.approvals = spec.approvals.max(o.approvals);
                spec.timeout = spec.timeout.min(o.timeout);
                for acr in &o.require_acrs {
                    if !spec.require_acrs.contains(acr) {
                        spec.require_acrs.push(acr.clone());
                    }
                }
                // Break-glass only if it was allowed when prepared too, and
                // no wider: the groups and clients both allow, the shorter
                // time; grants no longer than either allowed.
                spec.break_glass =
                    crate::grants::narrower_glass(o.break_glass.as_ref(), spec.break_glass.as_ref());
                spec.max_grant_ttl = match (o.max_grant_ttl, spec.max_grant_ttl) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                Action::Hold(spec)
            }
            (Action::Allow, _) => fresh.action.clone(),
        };
        *old = fresh;
    }

    /// Whether the policies reloaded since `bound` was judged ask more of
    /// it now: a denial, a hold of what ran allowed, or a hold with a
    /// larger quorum or more step-up than the one it was approved under.
    fn tightened(&self, bound: &Judgement, text: &str) -> bool {
        if bound.policy_generation == self.ctx.deps.gate.policy_generation() {
            return false;
        }
        let mut now = bound.clone();
        self.rejudge(&mut now, text);
        match (&bound.action, &now.action) {
            (_, Action::Deny { .. }) => true,
            (Action::Allow, Action::Hold(_)) => true,
            (Action::Hold(then), Action::Hold(now)) => {
                now.approvals > then.approvals
                    || now.require_acrs.iter().any(|a| !then.require_acrs.contains(a))
            }
            _ => false,
        }
    }

    /// Sends an allowed or approved Execute, with room for its record.
    async fn run_portal(
        &mut self,
        frame: &Frame,
        statement: proto::Statement,
        judgement: &Judgement,
        request_id: String,
    ) {
        let needed = self.ctx.binding.record || !request_id.is_empty();
        match self.reserve_record(needed).await {
            Ok(slot) => {
                // Opaque text (a DO block, unparsed text a record-only
                // policy allows) may redefine any name once it runs.
                if judgement.unseen {
                    self.ctx.names().unseen();
                }
                let running = Running::new(statement, judgement, request_id, slot);
                queue(&self.queue).push(InFlight::Extended(running));
                frame.encode(&mut self.out);
            }
            Err(full) => {
                let refused = Refused {
                    statement: proto::Statement {
                        text: statement.text,
                        ..Default::default()
                    },
                    verdict: judgement.verdict.clone(),
                    cause: Cause::Unavailable,
                    counted: Some(metrics::Refusal::BufferFull),
                    diagnostic: error_response::log_unavailable(&full),
                    request_id,
                };
                let stand_in = self.ctx.no_portal();
                self.refuse(refused, stand_in);
            }
        }
    }

    pub(super) fn sync(&mut self, frame: &Frame) {
        self.batch = Batch::Closed;
        self.ctx.names().boundary();
        queue(&self.queue).push(InFlight::Sync { own: false });
        frame.encode(&mut self.out);
    }

    /// Ends an open batch that ran nothing with a Sync of the proxy's own,
    /// so that the simple Query the client sent inside it is not skipped
    /// after an error and the queue stays in step with PostgreSQL. Its
    /// ReadyForQuery is not passed on to the client.
    pub(super) fn end_batch_for_query(&mut self) {
        self.batch = Batch::Closed;
        self.ctx.names().boundary();
        queue(&self.queue).push(InFlight::Sync { own: true });
        crate::codec::FeMessage::Sync.to_frame().encode(&mut self.out);
    }

    pub(super) fn close(&mut self, frame: &Frame, kind: u8, name: String) {
        self.batch = self.batch.max(Batch::Prepares);
        if kind == b'S' && sql_prepared(&self.ctx, &name) {
            let why = "this statement was made with SQL PREPARE; drop it with DEALLOCATE";
            self.refuse_unjudged(why, self.ctx.no_portal());
        } else {
            self.ctx.names().close(kind == b'S', name);
            frame.encode(&mut self.out);
        }
    }

    pub(super) fn describe(&mut self, frame: &Frame, kind: u8, name: String) {
        self.batch = self.batch.max(Batch::Prepares);
        if kind == b'S' {
            // The statement the name means when PostgreSQL reaches this
            // Describe; if that is not certain, its answer is not used.
            let statement = self.ctx.names().statement(&name).one().map(|s| s.parse.clone());
            self.ctx.described().waiting.push_back(statement);
        }
        frame.encode(&mut self.out);
    }
}

/// Whether `name` is a statement made with SQL PREPARE on this session
/// (PostgreSQL shares one namespace between it and the protocol's Parse).
fn sql_prepared(ctx: &Ctx, name: &str) -> bool {
    !name.is_empty()
        && ctx
            .binding
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .prepared
            .get(name)
            .is_some()
}
