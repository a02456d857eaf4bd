//! Sessions and holds: which proxy session a tool call runs on, and what
//! happens to a statement the proxy holds for a reviewer.
//!
//! A [`Lane`] is one proxy session: the MCP session's (stdio, or a legacy
//! HTTP session) or a single call's (stateless HTTP). It runs one statement
//! at a time, on a task of its own, so a call that is cancelled or returns
//! early never leaves the connection in an unknown state: the statement
//! goes on, and the connection comes back to the lane when it ends.
//!
//! A held statement is registered in [`Holds`] under its request id and its
//! owner (the identity whose token logged the session in). `query` returns
//! as soon as the proxy says it holds the statement; `wait_for_decision`
//! waits on the registered hold and returns the statement's real end: the
//! outcome always comes from the proxy, never from this process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::wire::{Answer, Caps, Conn, Hold, Target, WireError};

/// Statements of one owner that may wait for a reviewer at once (each keeps
/// a proxy session open).
pub const MAX_HOLDS_PER_OWNER: usize = 16;
/// How long an ended hold's outcome can still be fetched.
const KEEP_ENDED: Duration = Duration::from_secs(600);

/// Who a lane or hold belongs to: issuer, tenant, subject and client
/// application of the token that logged it in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner(pub String);

/// How a statement ended, or that it is still held.
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
        "{MAX_HOLDS_PER_OWNER} of your statements already wait for reviewers; wait for their decisions first"
    )]
    TooManyHolds,
    #[error("this MCP session belongs to another identity than the token of this call")]
    NotYours,
    #[error("{0}")]
    Connect(WireError),
}

enum Slot {
    Idle(Option<Conn>),
    Running,
    Held(String),
}

/// One proxy session.
pub struct Lane {
    slot: Mutex<Slot>,
    owner: Mutex<Option<Owner>>,
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
        }
    }
}

/// Where a session logs in, and with what.
#[derive(Debug, Clone)]
pub struct Login {
    pub target: Target,
    /// The connection's name (`dbname`).
    pub database: String,
    pub application_name: String,
    pub token: String,
    pub owner: Owner,
}

struct HoldEntry {
    owner: Owner,
    hold: Hold,
    ended: watch::Sender<Option<Outcome>>,
    ended_at: Mutex<Option<Instant>>,
}

/// Every held statement of this process, by request id.
#[derive(Default)]
pub struct Holds {
    entries: Mutex<HashMap<String, Arc<HoldEntry>>>,
}

impl std::fmt::Debug for Holds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holds").finish_non_exhaustive()
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

    fn waiting(&self, owner: &Owner) -> usize {
        let mut map = self.lock();
        map.retain(|_, e| {
            e.ended_at
                .lock()
                .map(|t| t.is_none_or(|t| t.elapsed() < KEEP_ENDED))
                .unwrap_or(true)
        });
        map.values()
            .filter(|e| &e.owner == owner && e.ended.borrow().is_none())
            .count()
    }

    fn register(&self, owner: Owner, hold: Hold) -> Arc<HoldEntry> {
        let (ended, _) = watch::channel(None);
        let entry = Arc::new(HoldEntry {
            owner,
            hold: hold.clone(),
            ended,
            ended_at: Mutex::new(None),
        });
        // A request id is the control plane's and unique; one seen again
        // (a notice raised by a function) replaces nothing of another's.
        self.lock()
            .entry(hold.request_id)
            .or_insert_with(|| entry.clone());
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
    /// none). Returns when it ended or when the proxy said it holds it.
    pub async fn start(
        self: &Arc<Self>,
        holds: &Arc<Holds>,
        login: &Login,
        sql: String,
        params: Vec<Option<String>>,
        caps: Caps,
    ) -> Result<Started, Busy> {
        self.claim(&login.owner)?;
        let conn = {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            match &mut *slot {
                Slot::Held(id) => return Err(Busy::Held(id.clone())),
                Slot::Running => return Err(Busy::Running),
                Slot::Idle(conn) => {
                    let conn = conn.take();
                    *slot = Slot::Running;
                    conn
                }
            }
        };
        if holds.waiting(&login.owner) >= MAX_HOLDS_PER_OWNER {
            self.put_back(conn);
            return Err(Busy::TooManyHolds);
        }
        let mut conn = match conn {
            Some(c) => c,
            None => match Conn::connect(
                &login.target,
                &login.database,
                &login.application_name,
                &login.token,
            )
            .await
            {
                Ok(c) => c,
                Err(e) => {
                    self.put_back(None);
                    return Err(Busy::Connect(e));
                }
            },
        };

        let (held_tx, held_rx) = oneshot::channel::<Hold>();
        let (done_tx, done_rx) = oneshot::channel::<Outcome>();
        let lane = Arc::downgrade(self);
        let holds = holds.clone();
        let owner = login.owner.clone();
        tokio::spawn(async move {
            let mut entry: Option<Arc<HoldEntry>> = None;
            let mut held_tx = Some(held_tx);
            let ran = conn
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
            let (outcome, conn) = match ran {
                Ok(answer) => (Outcome::Ended(Box::new(answer)), Some(conn)),
                Err(e) => (Outcome::Broken(e.to_string()), None),
            };
            if let Some(e) = &entry {
                *e.ended_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                e.ended.send_replace(Some(outcome.clone()));
            }
            come_home(&lane, conn);
            let _ = done_tx.send(outcome);
        });

        tokio::select! {
            biased;
            done = done_rx => Ok(Started::Ended(done.unwrap_or_else(|_| Outcome::Broken("the statement's task ended".into())))),
            Ok(hold) = held_rx => Ok(Started::Held(hold)),
        }
    }

    fn set(&self, to: Slot) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }

    fn put_back(&self, conn: Option<Conn>) {
        self.set(Slot::Idle(conn));
    }
}

/// The connection goes back to its lane, when the lane still exists
/// (a stateless call's lane is gone, and the session closes).
fn come_home(lane: &Weak<Lane>, conn: Option<Conn>) {
    if let Some(l) = lane.upgrade() {
        l.put_back(conn);
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
        assert_eq!(holds.waiting(&me), 1);
        assert_eq!(holds.waiting(&other), 0);
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
        assert_eq!(holds.waiting(&me), 0);
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
    fn a_lane_serves_one_owner() {
        let lane = Lane::default();
        lane.claim(&Owner("a".into())).unwrap();
        lane.claim(&Owner("a".into())).unwrap();
        assert!(matches!(lane.claim(&Owner("b".into())), Err(Busy::NotYours)));
    }
}
