//! What can interrupt a session from outside its client: the proxy's
//! shutdown, a reviewer's kill order, the client's cancel request. One type
//! holds the three receivers, so every loop that must notice them selects
//! on one method instead of repeating the same arms.

use airlock_eventlog::proto;
use futures::FutureExt;
use tokio::sync::{mpsc, watch};

use super::Phase;

pub(super) struct Signals {
    phase: watch::Receiver<Phase>,
    kills: mpsc::Receiver<proto::KillOrder>,
    cancels: mpsc::Receiver<()>,
}

/// What ends a session whatever it is doing.
pub(super) enum Interrupt {
    /// The proxy is stopping now.
    Stopping,
    Killed(Box<proto::KillOrder>),
}

/// What ends a hold early.
pub(super) enum HoldInterrupt {
    /// The proxy is draining or stopping: it will not wait for approvals.
    ShuttingDown,
    /// The client sent a CancelRequest for this session.
    Cancelled,
    Killed(Box<proto::KillOrder>),
}

impl Signals {
    pub(super) fn new(
        phase: watch::Receiver<Phase>,
        kills: mpsc::Receiver<proto::KillOrder>,
        cancels: mpsc::Receiver<()>,
    ) -> Signals {
        Signals {
            phase,
            kills,
            cancels,
        }
    }

    /// Waits for the proxy to stop or a kill order. Never returns if
    /// neither can come any more (their senders are gone). Cancel safe.
    pub(super) async fn interrupted(&mut self) -> Interrupt {
        tokio::select! {
            Ok(()) = self.phase.wait_for(|p| *p == Phase::Stopping).map(|r| r.map(|_| ())) => Interrupt::Stopping,
            Some(order) = self.kills.recv() => Interrupt::Killed(Box::new(order)),
            else => std::future::pending().await,
        }
    }

    /// While a statement is held: draining counts too, and so does a
    /// cancel request. Cancel safe.
    pub(super) async fn while_held(&mut self) -> HoldInterrupt {
        tokio::select! {
            Ok(()) = self.phase.wait_for(|p| *p != Phase::Running).map(|r| r.map(|_| ())) => HoldInterrupt::ShuttingDown,
            Some(()) = self.cancels.recv() => HoldInterrupt::Cancelled,
            Some(order) = self.kills.recv() => HoldInterrupt::Killed(Box::new(order)),
            else => std::future::pending().await,
        }
    }

    /// Drops cancel requests that arrived before a hold began: they were
    /// for an earlier statement. Call before the hold is announced as
    /// cancellable.
    pub(super) fn forget_cancels(&mut self) {
        while self.cancels.try_recv().is_ok() {}
    }

    /// Whether the proxy still accepts new holds.
    pub(super) fn running(&self) -> bool {
        *self.phase.borrow() == Phase::Running
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn signals() -> (
        Signals,
        watch::Sender<Phase>,
        mpsc::Sender<proto::KillOrder>,
        mpsc::Sender<()>,
    ) {
        let (p, pr) = watch::channel(Phase::Running);
        let (k, kr) = mpsc::channel(1);
        let (c, cr) = mpsc::channel(1);
        (Signals::new(pr, kr, cr), p, k, c)
    }

    #[tokio::test]
    async fn draining_ends_a_hold_but_not_a_session() {
        let (mut s, phase, _k, _c) = signals();
        phase.send(Phase::Draining).unwrap();
        assert!(matches!(s.while_held().await, HoldInterrupt::ShuttingDown));
        let waited = tokio::time::timeout(Duration::from_millis(50), s.interrupted()).await;
        assert!(waited.is_err(), "draining must not end a running session");
        phase.send(Phase::Stopping).unwrap();
        assert!(matches!(s.interrupted().await, Interrupt::Stopping));
    }

    #[tokio::test]
    async fn a_cancel_sent_before_the_hold_is_forgotten() {
        let (mut s, _p, _k, cancel) = signals();
        cancel.send(()).await.unwrap();
        s.forget_cancels();
        let waited = tokio::time::timeout(Duration::from_millis(50), s.while_held()).await;
        assert!(waited.is_err(), "an old cancel must not end a new hold");
        cancel.send(()).await.unwrap();
        assert!(matches!(s.while_held().await, HoldInterrupt::Cancelled));
    }

    #[tokio::test]
    async fn closed_senders_never_interrupt() {
        let (mut s, phase, kill, cancel) = signals();
        drop((phase, kill, cancel));
        let waited = tokio::time::timeout(Duration::from_millis(50), s.interrupted()).await;
        assert!(waited.is_err());
        let waited = tokio::time::timeout(Duration::from_millis(50), s.while_held()).await;
        assert!(waited.is_err());
    }

    #[tokio::test]
    async fn a_kill_interrupts_anything() {
        let (mut s, _p, kill, _c) = signals();
        kill.send(proto::KillOrder::default()).await.unwrap();
        assert!(matches!(s.interrupted().await, Interrupt::Killed(_)));
        kill.send(proto::KillOrder::default()).await.unwrap();
        assert!(matches!(s.while_held().await, HoldInterrupt::Killed(_)));
    }
}
