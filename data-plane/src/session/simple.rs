//! The simple query protocol: Query (and the FunctionCall message, which is
//! always refused). A Query string is judged as a whole (every statement in
//! it, the strictest verdict wins), then run, held or refused.

use airlock_eventlog::proto::{self, statement_refused::Cause};

use super::Ending;
use super::hold::Step;
use super::inflight::queue;
use super::inflight::{InFlight, Running};
use super::refuse::Refused;
use super::to_upstream::ToUpstream;
use crate::codec::Frame;
use crate::error_response;
use airlock_policy::Kind;

use crate::gate::Action;
use crate::metrics;

impl ToUpstream {
    pub(super) async fn query(&mut self, frame: &Frame, sql: String) -> Result<(), Ending> {
        let ctx = self.ctx.clone();
        let settled = self.settle_reading(&sql).await?;
        let mut judgement = ctx.deps.gate.judge(&ctx.binding, &sql);
        ctx.count_verdict(&judgement);
        if !settled {
            judgement.action = Action::Deny {
                message: super::READING_UNSETTLED.into(),
            };
        } else if let Some(why) = ctx.session_refusal(&sql, &judgement) {
            judgement.action = Action::Deny { message: why.into() };
        } else if judgement.sql_names.iter().any(|n| n.starts_with("airlock:")) {
            judgement.action = Action::Deny {
                message: "statement names starting with \"airlock:\" are reserved".into(),
            };
        } else if judgement.sql_names.iter().any(|n| ctx.names().has_statement(n)) {
            judgement.action = Action::Deny {
                message: "this name belongs to a statement prepared through the extended protocol; use another name".into(),
            };
        }
        // A COPY FROM STDIN puts PostgreSQL in copy mode.
        let has = |kind| judgement.has(kind);
        let copies_in = has(Kind::Copy) && has(Kind::Insert) && !has(Kind::ServerFile) && !has(Kind::Program);
        let statement = proto::Statement {
            text: sql,
            protocol: proto::statement::Protocol::Simple as i32,
            sha256: super::hold::frame_sha256(frame),
            ..Default::default()
        };
        let step = match judgement.action.clone() {
            Action::Allow => Step::Run {
                request_id: String::new(),
                bounds: None,
            },
            Action::Deny { message } => Step::Refuse {
                diagnostic: error_response::denied(message),
                cause: Cause::Policy,
                request_id: String::new(),
            },
            Action::Hold(spec) => {
                self.context.note(&statement.text, &judgement.verdict);
                self.hold(&statement, &judgement, &spec).await?
            }
        };
        if !matches!(judgement.action, Action::Hold(_)) {
            self.context.note(&statement.text, &judgement.verdict);
        }
        if matches!(step, Step::Run { .. }) {
            self.context.ran(&statement.text);
        }
        {
            let mut names = ctx.names();
            if matches!(step, Step::Run { .. }) && judgement.unseen {
                names.unseen();
            }
            names.boundary();
        }
        let refused = |diagnostic, cause, counted, request_id| Refused {
            statement: statement.clone(),
            verdict: judgement.verdict.clone(),
            cause,
            counted,
            diagnostic,
            request_id,
        };
        match step {
            Step::Run { request_id, bounds } => {
                let needed = ctx.binding.record || !request_id.is_empty();
                let slot = match self.reserve_record(needed).await {
                    Ok(slot) => slot,
                    Err(full) => {
                        let r = refused(
                            error_response::log_unavailable(&full),
                            Cause::Unavailable,
                            Some(metrics::Refusal::BufferFull),
                            request_id,
                        );
                        self.refuse(r, ctx.failing_query());
                        return Ok(());
                    }
                };
                let mut running = Running::new(statement, &judgement, request_id, slot);
                if let Some(bounds) = bounds {
                    // COPY is refused there: no copy mode to enter.
                    return self.run_bounded(frame, running, bounds, &judgement).await;
                }
                if copies_in {
                    ctx.copy_in.store(true, std::sync::atomic::Ordering::Release);
                }
                running.copies_in = copies_in;
                queue(&self.queue).push(InFlight::Simple(running));
                frame.encode(&mut self.out);
            }
            Step::Refuse {
                diagnostic,
                cause,
                request_id,
            } => {
                let r = refused(diagnostic, cause, None, request_id);
                self.refuse(r, ctx.failing_query());
            }
        }
        Ok(())
    }

    /// The function-call protocol message runs a function by OID, around
    /// any judgement of SQL: always refused, as a failed simple query.
    pub(super) fn function_call(&mut self) {
        self.ctx.names().boundary();
        let refused = Refused {
            statement: proto::Statement {
                protocol: proto::statement::Protocol::Simple as i32,
                ..Default::default()
            },
            verdict: proto::Verdict {
                action: proto::verdict::Action::Deny as i32,
                ..Default::default()
            },
            cause: Cause::Policy,
            counted: None,
            diagnostic: error_response::denied(
                "the function-call protocol message is not allowed through Airlock",
            ),
            request_id: String::new(),
        };
        let stand_in = self.ctx.failing_query();
        self.refuse(refused, stand_in);
    }
}
