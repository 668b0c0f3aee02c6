//! Unit tests of leader.rs: the verdicts and the specs written.

use super::*;
use k8s_openapi::jiff::Timestamp;

fn spec(holder: Option<&str>, transitions: Option<i32>) -> LeaseSpec {
    LeaseSpec {
        holder_identity: holder.map(str::to_string),
        renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
        lease_duration_seconds: Some(15),
        lease_transitions: transitions,
        ..LeaseSpec::default()
    }
}

// Each case that must keep a standby away would fail if the verdict said Free.
#[test]
fn another_holder_keeps_the_lease_until_unchanged_for_its_duration() {
    let s = spec(Some("other"), None);
    assert_eq!(
        verdict(Some(&s), "me", Duration::from_millis(14_999)),
        Verdict::HeldBy("other".to_string())
    );
    assert_eq!(
        verdict(Some(&s), "me", Duration::from_secs(15)),
        Verdict::Free
    );
    // renewTime is another process's clock: a lease renewed "in 1970" is still held.
    assert_eq!(
        verdict(Some(&s), "me", Duration::ZERO),
        Verdict::HeldBy("other".to_string())
    );
}

#[test]
fn no_holder_is_free_and_our_own_holding_is_ours() {
    assert_eq!(verdict(None, "me", Duration::ZERO), Verdict::Free);
    assert_eq!(
        verdict(Some(&spec(Some(""), None)), "me", Duration::ZERO),
        Verdict::Free
    );
    assert_eq!(
        verdict(Some(&spec(None, None)), "me", Duration::ZERO),
        Verdict::Free
    );
    assert_eq!(
        verdict(Some(&spec(Some("me"), None)), "me", Duration::from_secs(60)),
        Verdict::Ours
    );
}

#[test]
fn renewing_moves_only_the_renew_time() {
    let now = MicroTime(Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH));
    let mut held = spec(Some("me"), Some(3));
    held.acquire_time = Some(MicroTime(Timestamp::UNIX_EPOCH));
    let renewed = claimed(Some(&held), "me", now.clone());
    assert_eq!(renewed.renew_time, Some(now));
    assert_eq!(renewed.acquire_time, held.acquire_time);
    assert_eq!(renewed.lease_transitions, Some(3));
    assert_eq!(renewed.holder_identity.as_deref(), Some("me"));
}

#[test]
fn taking_over_counts_a_transition_and_a_first_claim_does_not() {
    let now = MicroTime(Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH));
    let taken = claimed(Some(&spec(Some("other"), Some(3))), "me", now.clone());
    assert_eq!(taken.holder_identity.as_deref(), Some("me"));
    assert_eq!(taken.acquire_time, Some(now.clone()));
    assert_eq!(taken.lease_transitions, Some(4));
    assert_eq!(taken.lease_duration_seconds, Some(LEASE_DURATION_SECONDS));
    let first = claimed(None, "me", now.clone());
    assert_eq!(first.lease_transitions, None);
    let after_release = claimed(Some(&released(Some(&taken))), "me", now);
    assert_eq!(after_release.lease_transitions, Some(4));
}

#[test]
fn a_released_lease_is_free_for_anyone_at_once() {
    let gone = released(Some(&spec(Some("me"), Some(2))));
    assert_eq!(verdict(Some(&gone), "other", Duration::ZERO), Verdict::Free);
    assert_eq!(gone.lease_transitions, Some(2));
}

#[test]
fn the_leader_stops_before_any_standby_may_take_over() {
    // Measured from the send of its last successful renewal, which every standby saw land
    // after it was sent, so on any standby's clock at least this long remains.
    const { assert!(RENEW_DEADLINE.as_secs() + STOP_GRACE.as_secs() < LEASE_DURATION_SECONDS as u64) };
    const { assert!(ATTEMPT_TIMEOUT.as_secs() <= RETRY_PERIOD.as_secs()) };
}
