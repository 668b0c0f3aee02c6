//! What guards the preStop path: who may start a drain (the token), and how a drain that no
//! SIGTERM follows ends (the revert timer).
//!
//! The preStop path takes the pod out of its Service. Left open, any client that reaches the
//! admin port can do that to every replica; and a drain that the kubelet never completes with
//! SIGTERM (a stray call, a hook whose kill was abandoned) would otherwise leave the pod
//! unready for the rest of its life.

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::HeaderMap;
use http::header::HeaderName;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::warn;

use crate::metrics::Metrics;
use crate::state::{Lifecycle, Phase};

/// The request header that carries the preStop token.
pub const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-graceful-prestop-token");

/// The shared secret of the preStop path. Its `Debug` never shows the value, so neither a log
/// line nor a panic message can leak it.
#[derive(Clone)]
pub struct PrestopToken(String);

impl From<String> for PrestopToken {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for PrestopToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrestopToken(<redacted>)")
    }
}

impl PrestopToken {
    /// A token must be something a client can send as a header value unchanged: non-empty
    /// visible ASCII. A token read from a Secret with a trailing newline would otherwise never
    /// match, and every drain would be refused. The message never quotes the token.
    pub fn validate(&self) -> Result<(), String> {
        if self.0.is_empty() {
            return Err(
                "--prestop-token must not be empty (unset it to leave preStop open)".to_owned(),
            );
        }
        if !self.0.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(
                "--prestop-token must be visible ASCII only: no whitespace, newline, \
                        control or non-ASCII characters"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// Whether the request carries this token. The comparison takes the same time whatever
    /// the content, so the token cannot be guessed byte by byte from response times; only
    /// whether the lengths are equal can show.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        headers
            .get(TOKEN_HEADER)
            .is_some_and(|given| bool::from(self.0.as_bytes().ct_eq(given.as_bytes())))
    }
}

/// Starts drains for the preStop path and reverts those that no SIGTERM follows in time.
///
/// The deadline and the phase change are made under one lock, both by a preStop call and by
/// the timer, so a call that arrives as the timer fires is never undone by it: either the call
/// comes first and moves the deadline, or the revert comes first and the call drains again.
pub struct DrainRevert {
    lifecycle: Lifecycle,
    metrics: Metrics,
    /// Zero: never revert.
    after: Duration,
    /// When the drain reverts; `None` while no preStop call awaits its revert.
    deadline: Mutex<Option<Instant>>,
    /// Wakes the timer task when a call moved the deadline.
    moved: Notify,
}

impl DrainRevert {
    pub fn new(lifecycle: Lifecycle, metrics: Metrics, after: Duration) -> Self {
        Self {
            lifecycle,
            metrics,
            after,
            deadline: Mutex::new(None),
            moved: Notify::new(),
        }
    }

    /// Called for each accepted preStop call: drains, and (re)starts the revert timer, because
    /// a restarted kubelet runs the hook again and its SIGTERM comes that much later. Returns
    /// true when this call started the drain.
    pub fn begin(&self) -> bool {
        let mut deadline = self.lock();
        if !self.after.is_zero() {
            *deadline = Some(Instant::now() + self.after);
        }
        let started = self.lifecycle.advance(Phase::Draining);
        drop(deadline);
        self.moved.notify_one();
        started
    }

    /// The timer: runs until the process terminates (a drain after SIGTERM is never undone).
    pub async fn run(&self) {
        if self.after.is_zero() {
            return;
        }
        loop {
            let deadline = *self.lock();
            tokio::select! {
                biased;
                () = self.lifecycle.reached(Phase::Terminating) => return,
                () = self.moved.notified() => {}
                () = sleep_until(deadline) => self.fire(),
            }
        }
    }

    /// Reverts if the deadline has passed and was not moved meanwhile.
    fn fire(&self) {
        let mut deadline = self.lock();
        let Some(at) = *deadline else { return };
        if at > Instant::now() {
            return;
        }
        *deadline = None;
        // Only Draining -> Serving: a SIGTERM that came first keeps the process Terminating.
        if self.lifecycle.revert_drain() {
            self.metrics.prestop_reverted();
            warn!(
                revert_ms = self.after.as_millis() as u64,
                "no SIGTERM followed the last preStop call: ready again, draining cancelled"
            );
        }
    }

    /// The lock guards plain data that a panic cannot leave half-written, so a poisoned lock
    /// is still good to use.
    fn lock(&self) -> MutexGuard<'_, Option<Instant>> {
        self.deadline.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(token: Option<&'static str>) -> HeaderMap {
        let mut map = HeaderMap::new();
        if let Some(token) = token {
            map.insert(TOKEN_HEADER, HeaderValue::from_static(token));
        }
        map
    }

    #[test]
    fn only_the_exact_token_admits() {
        let token = PrestopToken::from("s3cret".to_owned());
        assert!(token.admits(&headers(Some("s3cret"))));
        for wrong in [
            None,
            Some(""),
            Some("s3cre"),
            Some("s3cretx"),
            Some("S3cret"),
        ] {
            assert!(!token.admits(&headers(wrong)), "{wrong:?} admitted");
        }
    }

    fn draining_revert(after_ms: u64) -> (Lifecycle, Metrics, DrainRevert) {
        let lifecycle = Lifecycle::new();
        lifecycle.advance(Phase::Serving);
        let metrics = Metrics::new();
        let revert = DrainRevert::new(
            lifecycle.clone(),
            metrics.clone(),
            Duration::from_millis(after_ms),
        );
        (lifecycle, metrics, revert)
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_call_restarts_the_timer_and_sigterm_stops_it() {
        let (lifecycle, metrics, revert) = draining_revert(1_000);
        let revert = std::sync::Arc::new(revert);
        let timer = tokio::spawn({
            let revert = revert.clone();
            async move { revert.run().await }
        });
        assert!(revert.begin());
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!revert.begin(), "already draining");
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            lifecycle.phase(),
            Phase::Draining,
            "reverted before the second bound"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(lifecycle.phase(), Phase::Serving);
        assert!(
            metrics
                .render()
                .unwrap()
                .contains("graceful_prestop_reverted_total 1")
        );

        assert!(revert.begin());
        lifecycle.advance(Phase::Terminating);
        tokio::time::sleep(Duration::from_millis(5_000)).await;
        assert_eq!(lifecycle.phase(), Phase::Terminating);
        assert!(
            timer.is_finished(),
            "timer outlived the process's termination"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_never_reverts() {
        let (lifecycle, _metrics, revert) = draining_revert(0);
        revert.begin();
        revert.run().await; // returns at once
        tokio::time::sleep(Duration::from_secs(3_600)).await;
        assert_eq!(lifecycle.phase(), Phase::Draining);
    }
}
