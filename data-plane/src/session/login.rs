//! The login after startup: the token (the password) checked by the gate,
//! the connection (`dbname`) and the policy binding the agent to it, and
//! the upstream login with the connection's own credential. The client is
//! told it is authenticated only once all of that worked and the session's
//! opening is in the log (the caller sends [`LoggedIn::welcome`] then).

use airlock_eventlog::proto;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::codec::{BeMessage, TxStatus};
use crate::conn::Login;
use crate::gate::{Agent, Binding, Gate, Refusal};
use crate::upstream::Upstream;

/// A logged-in session, ready for statements.
pub(super) struct LoggedIn {
    pub agent: Agent,
    pub binding: Binding,
    pub upstream: Upstream,
    /// The cancel key the client was given (the proxy's, never the
    /// upstream's).
    pub key: (i32, i32),
    /// AuthenticationOk, the server's parameters, the key and
    /// ReadyForQuery: what tells the client it is in. Not sent yet.
    pub welcome: BytesMut,
}

/// Password (token) exchange, policy binding and upstream login.
pub(super) async fn authenticate(login: &mut Login, gate: &dyn Gate) -> Result<LoggedIn, Refusal> {
    let mut out = BytesMut::new();
    BeMessage::AuthenticationCleartextPassword.encode(&mut out);
    write(login, &out).await?;
    let read = tokio::time::timeout_at(login.deadline, login.io.read_frame()).await;
    let frame = match read {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => return Err(Refusal::connection_failure("client left during login")),
        Ok(Err(e)) => return Err(Refusal::protocol(e.to_string())),
        Err(_) => {
            return Err(Refusal::connection_failure(
                "no access token sent in time (proxy.startup_timeout)",
            ));
        }
    };
    if frame.tag != b'p' {
        return Err(Refusal::protocol(
            "expected a password message carrying the access token",
        ));
    }
    // The token: NUL-terminated. Never log it.
    let raw = frame.body.strip_suffix(b"\0").unwrap_or(&frame.body);
    let token =
        std::str::from_utf8(raw).map_err(|_| Refusal::bad_token("the password is not a valid token"))?;
    let agent = gate.authenticate(token).await?;

    let param = |k: &str| login.params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let database = param("database")
        .or_else(|| param("user"))
        .ok_or_else(|| Refusal::unknown_connection("no database (connection name) given"))?;
    let binding = gate.bind(&agent, &database)?;
    // The token is good and bound: no longer a stranger's connection. A slow
    // upstream login from here on counts against max_connections only.
    drop(login.unauthenticated.take());
    // A proxy that has just started judges its first statements against
    // the catalog once it is read (at most the upstream's connect timeout).
    let catalog = binding
        .session
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .catalog
        .clone();
    if let Some(c) = catalog {
        c.watch().first_read(binding.upstream.connect_timeout).await;
        // The path the upstream session is about to start with, as the
        // facts know it (`None` when they could not be read: unknown).
        let start = c.facts().search_path().map(<[String]>::to_vec);
        binding
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .start_path = start;
    }

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
            Refusal::connection_failure(format!(
                "connection \"{}\" is unavailable right now (the proxy could not log in upstream)",
                binding.connection
            ))
        })?;

    let mut out = BytesMut::new();
    BeMessage::AuthenticationOk.encode(&mut out);
    for (name, value) in &upstream.parameters {
        BeMessage::ParameterStatus { name, value }.encode(&mut out);
    }
    // The client gets the backend's process id (what pg_backend_pid() and
    // notifications name) with the proxy's own secret, never the upstream's.
    let (process_id, secret_key) = session_key(upstream.process_id);
    BeMessage::BackendKeyData {
        process_id,
        secret_key,
    }
    .encode(&mut out);
    BeMessage::ReadyForQuery(TxStatus::Idle).encode(&mut out);
    Ok(LoggedIn {
        agent,
        binding,
        upstream,
        key: (process_id, secret_key),
        welcome: out,
    })
}

fn session_key(process_id: i32) -> (i32, i32) {
    (process_id, ulid::Ulid::new().0 as i32)
}

pub(super) async fn write(login: &mut Login, bytes: &[u8]) -> Result<(), Refusal> {
    let w = login.io.get_mut();
    let written = async {
        w.write_all(bytes).await?;
        w.flush().await
    };
    written
        .await
        .map_err(|e| Refusal::connection_failure(format!("writing to client: {e}")))
}

/// Whether the token a session was opened with has expired by now.
pub(super) fn token_expired(identity: &proto::Identity) -> bool {
    let Some(exp) = identity.token_expires_at else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    exp.seconds <= now
}
