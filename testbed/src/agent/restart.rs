//! When an exited container comes back: restartPolicy and the kubelet's crash-loop back-off
//! (immediate first restart, then 10 s doubling up to 5 min, reset after 10 min of good running).

use std::time::Duration;

const INITIAL: Duration = Duration::from_secs(10);
const MAX: Duration = Duration::from_secs(300);
const RESET_AFTER_RUNNING: Duration = Duration::from_secs(600);

/// Whether a container that exited with `exit_code` restarts under `policy` (default Always).
pub fn should_restart(policy: Option<&str>, exit_code: i32) -> bool {
    match policy.unwrap_or("Always") {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// Per-container back-off between restarts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Backoff {
    current: Option<Duration>,
}

impl Backoff {
    /// The delay before the next start, given how long the container ran this time.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= RESET_AFTER_RUNNING {
            self.current = None;
        }
        let delay = match self.current {
            None => Duration::ZERO,
            Some(d) if d.is_zero() => INITIAL,
            Some(d) => (d * 2).min(MAX),
        };
        self.current = Some(delay);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        assert!(should_restart(None, 0));
        assert!(should_restart(Some("Always"), 0));
        assert!(!should_restart(Some("Never"), 1));
        assert!(should_restart(Some("OnFailure"), 1));
        assert!(!should_restart(Some("OnFailure"), 0));
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::default();
        let short = Duration::from_secs(1);
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay(short).as_secs()).collect();
        assert_eq!(delays, vec![0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.next_delay(Duration::from_secs(601)), Duration::ZERO);
    }
}
