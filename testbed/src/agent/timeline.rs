//! The kubelet's termination timeline, as pure arithmetic.
//!
//! terminationGracePeriodSeconds counts from the deletion and includes the preStop hook. When
//! the hook has used up (nearly) all of it, the kubelet still grants a minimum of 2 seconds
//! between SIGTERM and SIGKILL.

use std::time::Duration;

/// The kubelet's minimum grace after SIGTERM when preStop consumed the period.
pub const MIN_GRACE_AFTER_PRESTOP: Duration = Duration::from_secs(2);

/// The grace period of a pod being deleted: the deletion's own value (`deletionGracePeriodSeconds`,
/// which `kubectl delete --grace-period` sets) wins over the spec; the Kubernetes default is 30 s.
pub fn grace_period(deletion_grace: Option<i64>, spec_grace: Option<i64>) -> Duration {
    Duration::from_secs(deletion_grace.or(spec_grace).unwrap_or(30).max(0) as u64)
}

/// How long the preStop hook may run: the whole grace period.
pub fn prestop_budget(grace: Duration) -> Duration {
    grace
}

/// How long to wait between SIGTERM and SIGKILL, given the time already spent since the deletion
/// (mostly the preStop hook). With a grace period of zero, SIGKILL follows at once (force delete).
pub fn sigkill_after(grace: Duration, spent: Duration, had_prestop: bool) -> Duration {
    if grace.is_zero() {
        return Duration::ZERO;
    }
    let left = grace.saturating_sub(spent);
    if had_prestop && left < MIN_GRACE_AFTER_PRESTOP {
        MIN_GRACE_AFTER_PRESTOP
    } else {
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn deletion_grace_wins_and_default_is_30() {
        assert_eq!(grace_period(Some(5), Some(60)), S(5));
        assert_eq!(grace_period(None, Some(60)), S(60));
        assert_eq!(grace_period(None, None), S(30));
    }

    #[test]
    fn prestop_time_counts_against_the_period() {
        assert_eq!(sigkill_after(S(30), S(10), true), S(20));
        assert_eq!(sigkill_after(S(30), S(0), false), S(30));
    }

    #[test]
    fn prestop_eating_the_period_still_leaves_two_seconds() {
        assert_eq!(sigkill_after(S(10), S(10), true), S(2));
        assert_eq!(sigkill_after(S(10), S(12), true), S(2));
        assert_eq!(
            sigkill_after(S(10), Duration::from_millis(9500), true),
            S(2)
        );
    }

    #[test]
    fn zero_grace_kills_at_once() {
        assert_eq!(sigkill_after(S(0), S(0), true), S(0));
    }
}
