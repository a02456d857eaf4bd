//! Sessions and holds: which proxy session a tool call runs on, and what
//! happens to a statement the proxy holds for a reviewer.
//!
//! A [`Lane`] is one proxy session: the MCP session's (stdio, or an HTTP
//! session opened with `initialize`) or a single call's (HTTP without a
//! session). It runs one statement at a time, on a task of its own, so a
//! call that is cancelled or returns early never leaves the connection in
//! an unknown state: the statement goes on (a cancelled call asks the proxy
//! to cancel it), and the connection comes back to the lane when it ends.
//!
//! Every proxy session takes a seat: at most [`MAX_SESSIONS_PER_OWNER`] per
//! identity and [`MAX_SESSIONS`] in all, taken before connecting and given
//! back when the connection closes, so one token cannot fill the proxy's
//! connections or the reviewers' queue through this server.
//!
//! A held statement is registered in [`Holds`] under its request id and its
//! owner (the identity whose token logged the session in). `query` returns
//! as soon as the proxy says it holds the statement; `wait_for_decision`
//! waits on the registered hold and returns the statement's real end: the
//! outcome always comes from the proxy, never from this process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::wire::{Answer, Caps, Conn, Hold, Target, WireError};

/// Proxy sessions one identity may have open through this server at once
/// (running, held, or idle in an MCP session).
pub const MAX_SESSIONS_PER_OWNER: usize = 16;
/// Proxy sessions this server keeps open at once.
pub const MAX_SESSIONS: usize = 512;
/// How long an ended hold's outcome can still be fetched.
const KEEP_ENDED: Duration = Duration::from_secs(600);

/// Who a lane or hold belongs to: issuer, tenant, subject and client
/// application of the token that logged it in (an unambiguous encoding).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner(pub String);

impl Owner {
    pub fn of(issuer: &str, tenant: &str, subject: &str, client: &str) -> Owner {
        Owner(serde_json::json!([issuer, tenant, subject, client]).to_string())
    }
}

/// How a statement ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// It ran (or PostgreSQL or the proxy refused it): the answer.
    Ended(Box<Answer>),
    /// The connection broke first.
    Broken(String),
}

/// What `query` gets back.
#[derive(Debug)]
pub enum Started {
    Ended(Outcome),
    Held(Hold),
}

/// A refusal before any statement was sent.
#[derive(Debug, thiserror::Error)]
pub enum Busy {
    #[error(
        "this session is waiting for a decision on request {0}; call wait_for_decision with that request_id, \
         or start another MCP session"
    )]
    Held(String),
    #[error("another statement is running on this session; wait for it to end")]
    Running,
    #[error(
        "{MAX_SESSIONS_PER_OWNER} database sessions of yours are open through this server (running, waiting \
         for reviewers, or idle in MCP sessions); wait for some to end, or close MCP sessions you no longer use"
    )]
    TooManySessions,
    #[error("this server has {MAX_SESSIONS} database sessions open; try again shortly")]
    Full,
    #[error("this MCP session belongs to another identity than the token of this call")]
    NotYours,
    #[error("the call was cancelled; the proxy was asked to cancel the statement")]
    Cancelled,
    #[error("{0}")]
    Connect(Box<WireError>),
}

struct HoldEntry {
    owner: Owner,
    hold: Hold,
    ended: watch::Sender<Option<Outcome>>,
    ended_at: Mutex<Option<Instant>>,
}

/// Every held statement of this process, by request id, and the seats.
#[derive(Default)]
pub struct Holds {
    entries: Mutex<HashMap<String, Arc<HoldEntry>>>,
    seats: Mutex<(HashMap<Owner, usize>, usize)>,
}

impl std::fmt::Debug for Holds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holds").finish_non_exhaustive()
    }
}

/// A proxy session's place in the limits; given back when dropped.
struct Seat {
    holds: Arc<Holds>,
    owner: Owner,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut seats = self.holds.seats.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = seats.0.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                seats.0.remove(&self.owner);
            }
        }
        seats.1 = seats.1.saturating_sub(1);
    }
}

/// What `wait_for_decision` found.
#[derive(Debug)]
pub enum Waited {
    Ended(Box<(Hold, Outcome)>),
    StillHeld(Hold),
    /// No such request held here for this owner (or not any more).
    Unknown,
}

impl Holds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<HoldEntry>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn seat(self: &Arc<Self>, owner: &Owner) -> Result<Seat, Busy> {
        let mut seats = self.seats.lock().unwrap_or_else(|p| p.into_inner());
        if seats.1 >= MAX_SESSIONS {
            return Err(Busy::Full);
        }
        let mine = seats.0.entry(owner.clone()).or_default();
        if *mine >= MAX_SESSIONS_PER_OWNER {
            return Err(Busy::TooManySessions);
        }
        *mine += 1;
        seats.1 += 1;
        Ok(Seat {
            holds: self.clone(),
            owner: owner.clone(),
        })
    }

    fn register(&self, owner: Owner, hold: Hold) -> Arc<HoldEntry> {
        let (ended, _) = watch::channel(None);
        let entry = Arc::new(HoldEntry {
            owner,
            hold: hold.clone(),
            ended,
            ended_at: Mutex::new(None),
        });
        let mut map = self.lock();
        map.retain(|_, e| {
            e.ended_at
                .lock()
                .map(|t| t.is_none_or(|t| t.elapsed() < KEEP_ENDED))
                .unwrap_or(true)
        });
        // A request id is the control plane's and unique; one seen again
        // replaces nothing of another's.
        map.entry(hold.request_id).or_insert_with(|| entry.clone());
        entry
    }

    /// Waits up to `timeout` for `request_id`, held for `owner`.
    pub async fn wait(&self, owner: &Owner, request_id: &str, timeout: Duration) -> Waited {
        let entry = match self.lock().get(request_id) {
            Some(e) if &e.owner == owner => e.clone(),
            _ => return Waited::Unknown,
        };
        let mut rx = entry.ended.subscribe();
        let ended = tokio::time::timeout(timeout, rx.wait_for(|o| o.is_some())).await;
        match ended {
            Ok(Ok(outcome)) => match outcome.clone() {
                Some(o) => Waited::Ended(Box::new((entry.hold.clone(), o))),
                None => Waited::StillHeld(entry.hold.clone()),
            },
            // The sender lives in the entry, which this holds.
            Ok(Err(_)) | Err(_) => Waited::StillHeld(entry.hold.clone()),
        }
    }
}

/// A connection with its seat.
struct Pooled {
    conn: Conn,
    _seat: Seat,
}

enum Slot {
    Idle(Option<Pooled>),
    Running,
    Held(String),
}

/// One proxy session.
pub struct Lane {
    slot: Mutex<Slot>,
    owner: Mutex<Option<Owner>>,
    /// The transaction state the last statement left (`I`, `T`, `E`).
    last_transaction: AtomicU8,
    /// The connection broke inside a transaction: said at the next call.
    lost_transaction: AtomicBool,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane").finish_non_exhaustive()
    }
}

impl Default for Lane {
    fn default() -> Self {
        Lane {
            slot: Mutex::new(Slot::Idle(None)),
            owner: Mutex::new(None),
            last_transaction: AtomicU8::new(b'I'),
            lost_transaction: AtomicBool::new(false),
        }
    }
}

/// Where a session logs in, and with what.
#[derive(Clone)]
pub struct Login {
    pub target: Target,
    /// The connection's name (`dbname`).
    pub database: String,
    pub application_name: String,
    pub token: String,
    pub owner: Owner,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("database", &self.database)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// Puts a lane back to idle (without a connection) if the call starting
/// a statement is dropped before the statement's task owns the slot.
struct Reset<'a>(&'a Lane, bool);

impl Drop for Reset<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.set(Slot::Idle(None));
        }
    }
}

impl Lane {
    /// Binds the lane to `owner` on first use; refuses any other after.
    pub fn claim(&self, owner: &Owner) -> Result<(), Busy> {
        let mut o = self.owner.lock().unwrap_or_else(|p| p.into_inner());
        match &*o {
            Some(mine) if mine != owner => Err(Busy::NotYours),
            Some(_) => Ok(()),
            None => {
                *o = Some(owner.clone());
                Ok(())
            }
        }
    }

    /// Runs `sql` on this lane's session (logging in first when it has
    /// none). Returns when it ended, when the proxy said it holds it, or
    /// when `cancelled` fires first (the proxy is then asked to cancel it).
    pub async fn start(
        self: &Arc<Self>,
        holds: &Arc<Holds>,
        login: &Login,
        sql: String,
        params: Vec<Option<String>>,
        caps: Caps,
        cancelled: impl std::future::Future<Output = ()>,
    ) -> Result<Started, Busy> {
        self.claim(&login.owner)?;
        let pooled = {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            match &mut *slot {
                Slot::Held(id) => return Err(Busy::Held(id.clone())),
                Slot::Running => return Err(Busy::Running),
                Slot::Idle(pooled) => {
                    let pooled = pooled.take();
                    *slot = Slot::Running;
                    pooled
                }
            }
        };
        let mut reset = Reset(self, true);
        let mut lost_note = None;
        let mut pooled = match pooled {
            Some(p) => p,
            None => {
                let seat = holds.seat(&login.owner)?;
                let conn = Conn::connect(
                    &login.target,
                    &login.database,
                    &login.application_name,
                    &login.token,
                )
                .await
                .map_err(|e| Busy::Connect(Box::new(e)))?;
                if self.lost_transaction.swap(false, Ordering::AcqRel) {
                    lost_note = Some(
                        "this MCP session's previous database session ended inside a transaction, which was \
                         rolled back; this statement runs in a new database session"
                            .to_owned(),
                    );
                }
                Pooled { conn, _seat: seat }
            }
        };
        let key = pooled.conn.key();

        let (held_tx, held_rx) = oneshot::channel::<Hold>();
        let (done_tx, done_rx) = oneshot::channel::<Outcome>();
        let lane = Arc::downgrade(self);
        let holds = holds.clone();
        let owner = login.owner.clone();
        reset.1 = false;
        tokio::spawn(async move {
            let mut entry: Option<Arc<HoldEntry>> = None;
            let mut held_tx = Some(held_tx);
            let ran = pooled
                .conn
                .run(&sql, &params, caps, |hold| {
                    if let Some(l) = lane.upgrade() {
                        l.set(Slot::Held(hold.request_id.clone()));
                    }
                    entry = Some(holds.register(owner.clone(), hold.clone()));
                    if let Some(tx) = held_tx.take() {
                        let _ = tx.send(hold);
                    }
                })
                .await;
            let (outcome, pooled) = match ran {
                Ok(mut answer) => {
                    if let Some(note) = lost_note {
                        answer.notices.insert(0, note);
                    }
                    if let Some(l) = lane.upgrade() {
                        l.last_transaction.store(answer.transaction, Ordering::Release);
                    }
                    (Outcome::Ended(Box::new(answer)), Some(pooled))
                }
                Err(e) => {
                    if let Some(l) = lane.upgrade()
                        && l.last_transaction.load(Ordering::Acquire) != b'I'
                    {
                        l.lost_transaction.store(true, Ordering::Release);
                        l.last_transaction.store(b'I', Ordering::Release);
                    }
                    (Outcome::Broken(e.to_string()), None)
                }
            };
            if let Some(e) = &entry {
                *e.ended_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                e.ended.send_replace(Some(outcome.clone()));
            }
            // Back to the lane, when it still exists (a call's own lane is
            // gone, and the session closes with its seat).
            if let Some(l) = lane.upgrade() {
                l.set(Slot::Idle(pooled));
            }
            let _ = done_tx.send(outcome);
        });

        tokio::select! {
            biased;
            done = done_rx => Ok(Started::Ended(done.unwrap_or_else(|_| Outcome::Broken("the statement's task ended".into())))),
            Ok(hold) = held_rx => Ok(Started::Held(hold)),
            () = cancelled => {
                if let Some(key) = key
                    && let Err(e) = Conn::cancel(&login.target, key).await
                {
                    tracing::warn!(error = %e, "cancelling a statement whose call was cancelled");
                }
                Err(Busy::Cancelled)
            }
        }
    }

    fn set(&self, to: Slot) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(id: &str) -> Hold {
        Hold {
            request_id: id.into(),
            notice: format!("held {id}"),
            review_url: None,
        }
    }

    #[tokio::test]
    async fn a_hold_is_found_only_by_its_owner_and_ends_with_the_statements_outcome() {
        let holds = Holds::default();
        let me = Owner("me".into());
        let other = Owner("other".into());
        let entry = holds.register(me.clone(), hold("r1"));
        assert!(matches!(
            holds.wait(&other, "r1", Duration::from_millis(10)).await,
            Waited::Unknown
        ));
        assert!(matches!(
            holds.wait(&me, "r2", Duration::from_millis(10)).await,
            Waited::Unknown
        ));
        assert!(matches!(
            holds.wait(&me, "r1", Duration::from_millis(10)).await,
            Waited::StillHeld(_)
        ));
        entry.ended.send_replace(Some(Outcome::Broken("gone".into())));
        *entry.ended_at.lock().unwrap() = Some(Instant::now());
        match holds.wait(&me, "r1", Duration::from_millis(10)).await {
            Waited::Ended(e) => match *e {
                (h, Outcome::Broken(why)) => {
                    assert_eq!((h.request_id.as_str(), why.as_str()), ("r1", "gone"))
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_second_notice_with_the_same_id_does_not_take_over_the_first_hold() {
        let holds = Holds::default();
        let me = Owner("me".into());
        let _first = holds.register(me.clone(), hold("r1"));
        let _forged = holds.register(Owner("other".into()), hold("r1"));
        assert!(matches!(
            holds.wait(&me, "r1", Duration::from_millis(10)).await,
            Waited::StillHeld(_)
        ));
        assert!(matches!(
            holds
                .wait(&Owner("other".into()), "r1", Duration::from_millis(10))
                .await,
            Waited::Unknown
        ));
    }

    #[test]
    fn seats_are_limited_per_owner_and_given_back() {
        let holds = Arc::new(Holds::default());
        let me = Owner::of("iss", "t", "me", "app");
        let seats: Vec<Seat> = (0..MAX_SESSIONS_PER_OWNER)
            .map(|_| holds.seat(&me).unwrap())
            .collect();
        assert!(matches!(holds.seat(&me), Err(Busy::TooManySessions)));
        let other = holds
            .seat(&Owner::of("iss", "t", "other", "app"))
            .expect("another identity has its own");
        drop(seats);
        drop(other);
        assert!(holds.seat(&me).is_ok());
        assert_eq!(holds.seats.lock().unwrap().1, 0, "every seat given back");
    }

    #[test]
    fn owners_cannot_collide_through_separators() {
        assert_ne!(Owner::of("i", "t", "a|b", "c"), Owner::of("i", "t", "a", "b|c"));
    }

    #[test]
    fn a_lane_serves_one_owner() {
        let lane = Lane::default();
        lane.claim(&Owner("a".into())).unwrap();
        lane.claim(&Owner("a".into())).unwrap();
        assert!(matches!(lane.claim(&Owner("b".into())), Err(Busy::NotYours)));
    }
}
