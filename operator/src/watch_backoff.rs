//! The backoff of the controller's watches after an error.
//!
//! kube-runtime applies one backoff to the merged stream of all the controller's watches (the
//! GracefulServices and the five kinds of children): while it sleeps, no watch is read. Its
//! default grows to 30 s (up to 60 s with jitter) and is only reset by an event that is not an
//! error. After a kube-apiserver restart each of the six watches fails in turn (connection
//! refused, then "too old resource version" once the new server's watch cache starts after the
//! watch's last version), so the default kept the operator deaf for minutes, long enough for the
//! sleeping watches' versions to expire again (measured in `e2e/tests/faults.rs`). This one
//! doubles from 250 ms to at most 2 s: a few retries per second at worst, never a long silence.

use std::time::Duration;

use kube::runtime::utils::Backoff;

const FIRST: Duration = Duration::from_millis(250);
const LONGEST: Duration = Duration::from_secs(2);

/// Doubling delays from 250 ms, capped at 2 s; reset by the first event that is not an error.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(LONGEST);
        Some(delay)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<u64> = backoff
            .by_ref()
            .take(6)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(FIRST));
    }
}
