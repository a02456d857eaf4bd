//! Every error and notice the proxy itself sends a client, by name.
//!
//! One place decides what a client sees: the SQLSTATE (PostgreSQL's own
//! code wherever PostgreSQL has one, so drivers retry or give up as they
//! would against PostgreSQL), the message, and the hint. The session and the
//! front door only choose which of these to send. Messages never hold a
//! token, a password or an upstream credential. The table in
//! `docs/errors.md` lists them all; keep the two in step.
//!
//! Errors PostgreSQL itself sends are forwarded unchanged and are not here.

use airlock_eventlog::proto;

use crate::codec::{Diagnostic, Severity};

/// The SQLSTATEs the proxy uses (PostgreSQL's names, Appendix A of its
/// documentation).
pub mod sqlstate {
    /// A NOTICE.
    pub const SUCCESSFUL_COMPLETION: &str = "00000";
    /// Lost or failed connection (client or upstream).
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// Login refused for a reason other than the token itself.
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    /// The token (the password) was refused, as for a wrong password.
    pub const INVALID_PASSWORD: &str = "28P01";
    /// No connection of that name (`dbname`).
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    /// Refused by policy or by a reviewer.
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    /// Cancelled or timed out: the client may try again.
    pub const QUERY_CANCELED: &str = "57014";
    /// The session was ended by an operator or the proxy's shutdown.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// The event log or control plane is unavailable: retry shortly.
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// Airlock's own class `ZA` (implementation-defined, unused by
    /// PostgreSQL): an approved statement changed more rows than its
    /// bound, and was rolled back.
    pub const BOUND_EXCEEDED: &str = "ZA001";
    /// An approved statement's bound could not be checked: nothing kept.
    pub const BOUND_UNCHECKED: &str = "ZA002";
}

use sqlstate::*;

fn error(code: &'static str, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        code,
        message,
        detail: None,
        hint: None,
    }
}

fn fatal(code: &'static str, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Fatal,
        ..error(code, message)
    }
}

fn with_hint(mut d: Diagnostic, hint: &str) -> Diagnostic {
    d.hint = Some(hint.to_owned());
    d
}

// ---- Before and during login (FATAL: the connection ends) ----

/// Plain text from a non-loopback client, or loopback not allowed.
pub fn tls_required() -> Diagnostic {
    fatal(
        INVALID_AUTHORIZATION_SPECIFICATION,
        "Airlock requires TLS: connect with sslmode=require".into(),
    )
}

/// A startup parameter the proxy does not allow (`why` names it).
pub fn startup_parameter_refused(why: String) -> Diagnostic {
    fatal(INVALID_AUTHORIZATION_SPECIFICATION, why)
}

pub fn encryption_requested_twice() -> Diagnostic {
    fatal(PROTOCOL_VIOLATION, "encryption requested twice".into())
}

/// Over `proxy.max_connections`: PostgreSQL's own answer.
pub fn too_many_connections() -> Diagnostic {
    fatal(
        TOO_MANY_CONNECTIONS,
        "too many connections to this Airlock proxy; retry later".into(),
    )
}

/// Over `proxy.max_unauthenticated`: too many connections still logging in.
pub fn too_many_logging_in() -> Diagnostic {
    fatal(
        TOO_MANY_CONNECTIONS,
        "too many connections to this Airlock proxy are still logging in; retry later".into(),
    )
}

/// A refused login, as the gate or the login exchange explained it
/// (`gate::Refusal` carries the code and message).
pub fn login_refused(sqlstate: &'static str, message: &str) -> Diagnostic {
    fatal(sqlstate, message.to_owned())
}

/// The session's opening could not be put in the log: nothing may run
/// unrecorded, so the login is refused.
pub fn cannot_record_sessions() -> Diagnostic {
    fatal(
        CANNOT_CONNECT_NOW,
        "Airlock cannot record sessions right now (the event log is not keeping up); retry shortly".into(),
    )
}

// ---- Ending a running session (FATAL) ----

pub fn protocol_violation(what: &dyn std::fmt::Display) -> Diagnostic {
    fatal(PROTOCOL_VIOLATION, format!("protocol violation: {what}"))
}

/// The token the session was opened with has expired.
pub fn token_expired() -> Diagnostic {
    fatal(
        INVALID_AUTHORIZATION_SPECIFICATION,
        "the access token this session was opened with has expired; reconnect with a fresh token".into(),
    )
}

pub fn shutting_down() -> Diagnostic {
    fatal(
        ADMIN_SHUTDOWN,
        "this Airlock proxy is shutting down; reconnect to continue".into(),
    )
}

/// PostgreSQL reported a setting under which it reads statements
/// differently from the proxy (it should never get there: such changes are
/// refused): the session ends rather than run anything misjudged.
pub fn reading_changed(name: &str, value: &str) -> Diagnostic {
    fatal(
        FEATURE_NOT_SUPPORTED,
        format!(
            "PostgreSQL now reads statements with {name}={value}, which Airlock cannot judge; \
             the session was ended so that nothing runs misjudged (reconnect)"
        ),
    )
}

/// PostgreSQL answered something the proxy did not send (its model of the
/// session's prepared statements no longer fits): the session ends rather
/// than judge anything by a wrong model.
pub fn out_of_step() -> Diagnostic {
    fatal(
        PROTOCOL_VIOLATION,
        "PostgreSQL's answers no longer match what Airlock sent; the session was ended so that \
         nothing runs misjudged (reconnect)"
            .to_owned(),
    )
}

/// A reviewer ended the session.
pub fn killed_by(who: Option<&proto::Identity>, reason: &str) -> Diagnostic {
    fatal(
        ADMIN_SHUTDOWN,
        format!("session terminated by {} through Airlock: {reason}", person(who)),
    )
}

/// A reviewer's name as agents are told it.
pub fn person(identity: Option<&proto::Identity>) -> String {
    match identity {
        Some(i) if !i.display_name.is_empty() => i.display_name.clone(),
        Some(i) => i.subject.clone(),
        None => "a reviewer".into(),
    }
}

// ---- Refusing one statement (ERROR: the session goes on) ----

/// Refused by policy (or by a rule of the session); `message` names the
/// rule or the reason.
pub fn denied(message: impl Into<String>) -> Diagnostic {
    error(INSUFFICIENT_PRIVILEGE, message.into())
}

/// The recording buffer stayed full: the statement did not run.
pub fn log_unavailable(full: &dyn std::fmt::Display) -> Diagnostic {
    error(
        CANNOT_CONNECT_NOW,
        format!("statement not run: {full}; nothing was executed, retry shortly"),
    )
}

/// A statement needs approval but cannot be put before a reviewer now.
pub fn hold_unavailable(why: &str) -> Diagnostic {
    with_hint(
        error(
            CANNOT_CONNECT_NOW,
            format!("this statement needs a reviewer's approval, but {why}; nothing was run"),
        ),
        "retry when Airlock's control plane and event log are reachable",
    )
}

/// A statement needing approval too large for one event of the log.
pub fn too_large_to_review(bytes: usize, max: usize) -> Diagnostic {
    with_hint(
        error(
            PROGRAM_LIMIT_EXCEEDED,
            format!(
                "this statement needs a reviewer's approval, but at {bytes} bytes it is too large to \
                 put before a reviewer (the event log takes at most {max} bytes per event); nothing was run"
            ),
        ),
        "split it into smaller statements",
    )
}

/// The NOTICE that tells the client its statement is held.
pub fn held(request_id: &str, why: &str, wait_secs: u64, reviewer_url: Option<&str>) -> Diagnostic {
    let at = reviewer_url
        .map(|u| format!(" Review it at {}/requests/{request_id}.", u.trim_end_matches('/')))
        .unwrap_or_default();
    Diagnostic {
        severity: Severity::Notice,
        ..error(
            SUCCESSFUL_COMPLETION,
            format!(
                "Airlock is holding this statement for approval: request {request_id} ({why}). \
                 Waiting up to {wait_secs}s for a reviewer.{at}"
            ),
        )
    }
}

/// The proxy began shutting down while the statement was held.
pub fn hold_ended_by_shutdown(request_id: &str) -> Diagnostic {
    error(
        ADMIN_SHUTDOWN,
        format!(
            "this Airlock proxy is shutting down; request {request_id} was cancelled and nothing was run; \
             reconnect and run it again"
        ),
    )
}

/// The client cancelled its held statement (a CancelRequest).
pub fn hold_cancelled_by_client(request_id: &str) -> Diagnostic {
    error(
        QUERY_CANCELED,
        format!("canceling statement due to user request (request {request_id} cancelled)"),
    )
}

/// Granted, but for other bytes than the ones held.
pub fn digest_mismatch(request_id: &str) -> Diagnostic {
    denied(format!(
        "request {request_id} was granted for different bytes than the ones held; refused"
    ))
}

/// An approved statement changed more rows of a table than its approval
/// allows: rolled back.
pub fn bound_exceeded(request_id: &str, check: &proto::BoundCheck) -> Diagnostic {
    let over = check.bounds.iter().find_map(|b| {
        check
            .rows
            .iter()
            .find(|r| r.table == b.table && r.rows > b.max_rows)
            .map(|r| (b, r.rows))
    });
    let message = match over {
        Some((b, rows)) => format!(
            "request {request_id} was approved for at most {} {} of {}; it would have changed {rows}; nothing was changed",
            b.max_rows,
            if b.max_rows == 1 { "row" } else { "rows" },
            b.table
        ),
        None => {
            format!("request {request_id} changed more rows than it was approved for; nothing was changed")
        }
    };
    with_hint(
        error(BOUND_EXCEEDED, message),
        "the rows matching it changed since it was approved: ask again, and a reviewer can approve it with a higher bound",
    )
}

/// An approved statement whose bounds cannot be checked: refused.
pub fn cannot_bound(request_id: &str, why: &str) -> Diagnostic {
    error(
        BOUND_UNCHECKED,
        format!(
            "request {request_id} was approved with row bounds that cannot be checked: {why}; nothing was changed"
        ),
    )
}

/// A grant announced on Attach that the log does not hold.
pub fn grant_unconfirmed(request_id: &str) -> Diagnostic {
    denied(format!(
        "request {request_id}: the grant could not be confirmed in the event log; nothing was run"
    ))
}

/// Approved, but the token the session was opened with expired while the
/// statement waited: nothing runs on an expired identity.
pub fn granted_after_token_expired(request_id: &str) -> Diagnostic {
    with_hint(
        error(
            INVALID_AUTHORIZATION_SPECIFICATION,
            format!(
                "request {request_id} was approved, but the access token this session was opened with \
                 expired while it waited; nothing was run"
            ),
        ),
        "reconnect with a fresh token and run it again (it will need a new approval)",
    )
}

/// A reviewer denied the request.
pub fn denied_by(request_id: &str, who: Option<&proto::Identity>, reason: &str) -> Diagnostic {
    denied(format!(
        "request {request_id} was denied by {}: {reason}",
        person(who)
    ))
}

/// The control plane cancelled the request.
pub fn request_cancelled(request_id: &str, reason: &str) -> Diagnostic {
    error(
        QUERY_CANCELED,
        format!("request {request_id} was cancelled: {reason}"),
    )
}

/// Nobody decided in time: a timeout, which the agent may retry.
pub fn hold_expired(request_id: &str, timeout_secs: u64) -> Diagnostic {
    error(
        QUERY_CANCELED,
        format!("request {request_id} expired: no reviewer decided within {timeout_secs}s"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_errors_end_the_session_and_refusals_do_not() {
        assert_eq!(shutting_down().severity, Severity::Fatal);
        assert_eq!(killed_by(None, "runaway").severity, Severity::Fatal);
        assert_eq!(denied("no").severity, Severity::Error);
        assert_eq!(hold_expired("r", 3).severity, Severity::Error);
        assert_eq!(held("r", "policy p", 3, None).severity, Severity::Notice);
    }

    #[test]
    fn codes_are_postgresqls_where_postgresql_has_one() {
        assert_eq!(hold_expired("r", 3).code, "57014");
        assert_eq!(hold_unavailable("the control plane is unreachable").code, "57P03");
        assert_eq!(denied_by("r", None, "no").code, "42501");
        assert_eq!(too_many_connections().code, "53300");
        assert_eq!(token_expired().code, "28000");
    }

    #[test]
    fn the_held_notice_names_where_to_review() {
        let d = held("01J", "policy p, rule 2", 900, Some("https://review.example/"));
        assert!(
            d.message
                .ends_with("Review it at https://review.example/requests/01J."),
            "{}",
            d.message
        );
        assert!(!held("01J", "x", 1, None).message.contains("Review it"));
    }
}
