//! Waiting for what happens on its own time: an event reaching the log, a
//! row going away, a port opening. One way to poll, so that every timeout
//! says what was awaited, where, for how long, and what was seen last.
//!
//! A probe answers with a [`Probe`]: `true`, `Some(value)` or `Ok(value)`
//! when the condition holds, and `false`, `None` or `Err(seen)` while it does
//! not; [`satisfies`] turns a reading and a predicate into that shape.

use std::fmt::Debug;
use std::future::Future;
use std::panic::Location;
use std::time::{Duration, Instant};

/// How long between two looks at a condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// One look at a condition: the value to hand back once it holds, or what
/// was seen instead (shown when the wait times out).
pub trait Probe {
    type Value;
    type Seen: Debug;
    fn check(self) -> Result<Self::Value, Self::Seen>;
}

impl Probe for bool {
    type Value = ();
    type Seen = bool;
    fn check(self) -> Result<(), bool> {
        if self { Ok(()) } else { Err(false) }
    }
}

impl<T> Probe for Option<T> {
    type Value = T;
    type Seen = Option<()>;
    fn check(self) -> Result<T, Option<()>> {
        self.ok_or(None)
    }
}

impl<T, E: Debug> Probe for Result<T, E> {
    type Value = T;
    type Seen = E;
    fn check(self) -> Result<T, E> {
        self
    }
}

/// `Ok(value)` if `holds(&value)`, else `Err(value)`: a reading that is
/// both the answer and, on timeout, the last thing seen.
pub fn satisfies<T>(value: T, holds: impl FnOnce(&T) -> bool) -> Result<T, T> {
    if holds(&value) { Ok(value) } else { Err(value) }
}

/// Polls `probe` every [`POLL_INTERVAL`] until it holds, and returns its
/// value; after `within`, panics naming `awaited`, the caller's line and
/// the last thing the probe saw.
///
/// Time is the runtime's clock (`tokio::time`), so a paused clock advances
/// through the wait instead of stalling it.
#[track_caller]
pub fn eventually<F, Fut, P>(awaited: &str, within: Duration, mut probe: F) -> impl Future<Output = P::Value>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = P>,
    P: Probe,
{
    let caller = Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let seen = match probe().await.check() {
                Ok(value) => return value,
                Err(seen) => seen,
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                timed_out(awaited, within, caller, &seen);
            }
            tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
        }
    }
}

/// [`eventually`] for code outside a runtime: the probe blocks, and so does
/// the wait.
#[track_caller]
pub fn eventually_blocking<P: Probe>(awaited: &str, within: Duration, probe: impl FnMut() -> P) -> P::Value {
    let caller = Location::caller();
    poll_blocking(within, probe).unwrap_or_else(|seen| timed_out(awaited, within, caller, &seen))
}

/// Polls until `probe` holds or `within` has passed; what was seen last on
/// timeout. For the harness, where a timeout is retried or reported with a
/// server's log rather than a panic.
pub(crate) fn poll_blocking<P: Probe>(
    within: Duration,
    mut probe: impl FnMut() -> P,
) -> Result<P::Value, P::Seen> {
    let deadline = Instant::now() + within;
    loop {
        let seen = match probe().check() {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(seen);
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

fn timed_out(awaited: &str, within: Duration, caller: &Location<'_>, seen: &dyn Debug) -> ! {
    panic!("timed out after {within:?} waiting for {awaited} (at {caller}); last seen: {seen:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hands_back_the_value_once_the_condition_holds() {
        let mut looks = 0;
        let got = eventually("the third look", Duration::from_secs(5), || {
            looks += 1;
            let n = looks;
            async move { satisfies(n, |n| *n == 3) }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for the answer (at crates/testkit/src/wait.rs:")]
    async fn a_timeout_names_what_was_awaited_and_where() {
        eventually("the answer", Duration::from_millis(120), || async { false }).await;
    }

    #[test]
    #[should_panic(expected = "last seen: \"still 41\"")]
    fn a_timeout_shows_the_last_thing_seen() {
        eventually_blocking("the answer", Duration::from_millis(120), || {
            Err::<(), _>("still 41")
        });
    }

    #[test]
    fn looks_at_least_once_even_with_no_time_to_wait() {
        assert_eq!(poll_blocking(Duration::ZERO, || Some(7)), Ok(7));
    }
}
