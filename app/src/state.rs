//! The lifecycle of the process as one phase, shared by both listeners.
//!
//! Readiness, `Connection: close`, GOAWAY and the end of the preStop hold are all read from
//! this one value, so they can never disagree. The phase moves forward, with one exception: a
//! drain that preStop started and no SIGTERM followed in time goes back to Serving (see
//! prestop.rs), so a stray or abandoned preStop call cannot keep a healthy pod out of its
//! Service forever. Terminating is final.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::watch;

/// Where the process is in its life. Phases only move forward, except Draining or Closing ->
/// Serving through [`Lifecycle::revert_drain`]; Terminating is never left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Listeners are not bound yet: not ready.
    Starting,
    /// Both listeners are bound and nothing asked to drain: ready.
    Serving,
    /// /prestop was called: not ready, every HTTP/1 response carries `Connection: close`, and
    /// HTTP/2 connections get GOAWAY once they have sent their first request.
    Draining,
    /// The preStop hold is over: the endpoint has left the proxies, so every connection closes
    /// once its requests are answered (idle ones at once), while preStop waits for the last
    /// request in flight. The listeners still accept: a late client gets one answer.
    Closing,
    /// SIGTERM/SIGINT arrived: listeners stop accepting, connections finish and close.
    Terminating,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Starting,
            1 => Phase::Serving,
            2 => Phase::Draining,
            3 => Phase::Closing,
            _ => Phase::Terminating,
        }
    }

    /// Whether /readyz answers 200.
    pub fn is_ready(self) -> bool {
        self == Phase::Serving
    }

    /// Whether responses must carry `Connection: close`.
    pub fn is_draining(self) -> bool {
        self >= Phase::Draining
    }
}

/// Shared handle on the phase.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    /// For waiting on a phase.
    phase: watch::Sender<Phase>,
    /// The same phase as a plain atomic: every response reads it, and an atomic load does not
    /// bounce a lock's cache line between cores the way a read lock would.
    current: Arc<AtomicU8>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub fn new() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Starting),
            current: Arc::new(AtomicU8::new(Phase::Starting as u8)),
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.current.load(Ordering::Acquire))
    }

    /// Moves forward to `next`; returns true when this call changed the phase. It never moves
    /// back, so a late "serving" cannot undo a drain.
    pub fn advance(&self, next: Phase) -> bool {
        self.phase.send_if_modified(|current| {
            if next > *current {
                *current = next;
                self.current.store(next as u8, Ordering::Release);
                true
            } else {
                false
            }
        })
    }

    /// The one step back: Draining or Closing -> Serving, only if the phase is one of them at
    /// this instant;
    /// returns true when it changed the phase. It runs under the same lock as
    /// [`Lifecycle::advance`], so it is a compare-and-swap against a concurrent SIGTERM: if
    /// Terminating came first nothing changes, and a Terminating that comes after wins as
    /// always.
    pub fn revert_drain(&self) -> bool {
        self.phase.send_if_modified(|current| {
            if matches!(*current, Phase::Draining | Phase::Closing) {
                *current = Phase::Serving;
                self.current.store(Phase::Serving as u8, Ordering::Release);
                true
            } else {
                false
            }
        })
    }

    /// Waits until the phase has reached at least `target`. Exact for Terminating, which is
    /// final. A wait for Draining or Closing could miss a drain reverted before the waiter
    /// looked; a revert comes a whole revert period (60 s by default) after the drain began,
    /// so a connection that misses it only closes at SIGTERM instead.
    pub async fn reached(&self, target: Phase) {
        let mut rx = self.phase.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we are borrowed.
        let _ = rx.wait_for(|phase| *phase >= target).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_only_move_forward() {
        let lifecycle = Lifecycle::new();
        assert!(!lifecycle.phase().is_ready());
        assert!(lifecycle.advance(Phase::Serving));
        assert!(lifecycle.phase().is_ready());
        assert!(lifecycle.advance(Phase::Terminating));
        assert!(!lifecycle.advance(Phase::Draining));
        assert!(!lifecycle.advance(Phase::Serving));
        assert_eq!(lifecycle.phase(), Phase::Terminating);
        assert!(lifecycle.phase().is_draining());
    }

    #[test]
    fn only_a_drain_reverts_and_terminating_is_final() {
        let lifecycle = Lifecycle::new();
        assert!(!lifecycle.revert_drain(), "Starting reverted");
        lifecycle.advance(Phase::Serving);
        assert!(!lifecycle.revert_drain(), "Serving 'reverted'");
        assert!(lifecycle.advance(Phase::Draining));
        assert!(lifecycle.revert_drain());
        assert_eq!(lifecycle.phase(), Phase::Serving);
        assert!(lifecycle.phase().is_ready() && !lifecycle.phase().is_draining());
        assert!(lifecycle.advance(Phase::Closing), "Serving -> Closing");
        assert!(lifecycle.revert_drain(), "Closing did not revert");
        assert_eq!(lifecycle.phase(), Phase::Serving);
        assert!(
            lifecycle.advance(Phase::Draining),
            "a second drain after a revert"
        );
        assert!(lifecycle.advance(Phase::Terminating));
        assert!(!lifecycle.revert_drain());
        assert_eq!(lifecycle.phase(), Phase::Terminating);
    }

    #[test]
    fn revert_racing_sigterm_never_undoes_terminating() {
        for _ in 0..200 {
            let lifecycle = Lifecycle::new();
            lifecycle.advance(Phase::Serving);
            lifecycle.advance(Phase::Draining);
            let reverter = {
                let lifecycle = lifecycle.clone();
                std::thread::spawn(move || lifecycle.revert_drain())
            };
            lifecycle.advance(Phase::Terminating);
            let _ = reverter.join();
            assert_eq!(lifecycle.phase(), Phase::Terminating);
            assert_eq!(*lifecycle.phase.borrow(), Phase::Terminating);
        }
    }

    #[test]
    fn readiness_and_draining_per_phase() {
        assert!(!Phase::Starting.is_ready() && !Phase::Starting.is_draining());
        assert!(Phase::Serving.is_ready() && !Phase::Serving.is_draining());
        assert!(!Phase::Draining.is_ready() && Phase::Draining.is_draining());
        assert!(!Phase::Closing.is_ready() && Phase::Closing.is_draining());
        assert!(!Phase::Terminating.is_ready() && Phase::Terminating.is_draining());
    }

    #[tokio::test]
    async fn reached_wakes_on_a_later_phase() {
        let lifecycle = Lifecycle::new();
        let waiter = {
            let lifecycle = lifecycle.clone();
            tokio::spawn(async move { lifecycle.reached(Phase::Draining).await })
        };
        lifecycle.advance(Phase::Terminating);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
