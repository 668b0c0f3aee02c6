use super::*;
use proptest::prelude::*;

fn policy(step_size: i32) -> StepPolicy {
    StepPolicy {
        step_size,
        min_interval: Duration::ZERO,
        step_timeout: Duration::from_secs(300),
    }
}

fn settled_at(n: i32) -> DeploymentObservation {
    DeploymentObservation {
        spec_replicas: n,
        generation: 4,
        observed_generation: 4,
        replicas: n,
        ready_replicas: n,
        updated_replicas: n,
        available_replicas: n,
        progress_deadline_exceeded: false,
    }
}

fn observation(desired: i32, at: i32) -> Observation {
    Observation {
        desired,
        deployment: settled_at(at),
        terminating_pods: 0,
        ready_endpoints: at,
        now: Timestamp::from_second(1_000_000).unwrap(),
        last_step_time: None,
        policy: policy(1),
    }
}

#[test]
fn scale_up_goes_straight_to_target() {
    assert_eq!(replicas_to_hold(20, Some(3)), 20);
    assert_eq!(replicas_to_hold(5, None), 5);
    assert_eq!(replicas_to_hold(1, Some(20)), 20);
}

#[test]
fn settled_scale_down_takes_one_step() {
    let d = plan(&observation(1, 20));
    assert_eq!(d.step, Some(Step { from: 20, to: 19 }));
    assert_eq!(d.replicas, 19);
    assert_eq!(d.phase, Phase::ScalingDown);
    assert!(d.last_step_time.is_some());
}

#[test]
fn each_unsettled_signal_holds_the_step() {
    type Case = (Observation, fn(&Wait) -> bool);
    let mut cases: Vec<Case> = Vec::new();
    let mut o = observation(1, 20);
    o.deployment.observed_generation = 3;
    cases.push((o, |w| matches!(w, Wait::NotObserved)));
    let mut o = observation(1, 20);
    o.deployment.updated_replicas = 10;
    cases.push((o, |w| matches!(w, Wait::RolloutInProgress { .. })));
    let mut o = observation(1, 20);
    o.terminating_pods = 1;
    cases.push((o, |w| matches!(w, Wait::PodsTerminating(1))));
    let mut o = observation(1, 20);
    o.deployment.ready_replicas = 19;
    cases.push((o, |w| matches!(w, Wait::NotReady { .. })));
    let mut o = observation(1, 20);
    o.deployment.replicas = 21;
    cases.push((o, |w| matches!(w, Wait::NotReady { .. })));
    let mut o = observation(1, 20);
    o.ready_endpoints = 21;
    cases.push((o, |w| matches!(w, Wait::EndpointsLag { .. })));
    for (o, is_expected) in cases {
        let d = plan(&o);
        assert_eq!(d.step, None, "{o:?}");
        assert_eq!(d.replicas, 20);
        assert!(is_expected(d.wait.as_ref().unwrap()), "{:?}", d.wait);
    }
}

#[test]
fn rollout_holds_scale_down_and_reports_rolling_out() {
    let mut o = observation(1, 20);
    o.deployment.updated_replicas = 5;
    let d = plan(&o);
    assert_eq!(d.replicas, 20);
    assert_eq!(d.phase, Phase::RollingOut);
}

#[test]
fn min_interval_delays_the_next_step() {
    let mut o = observation(1, 10);
    o.policy.min_interval = Duration::from_secs(30);
    o.last_step_time = Some(o.now - SignedDuration::from_secs(10));
    let d = plan(&o);
    assert_eq!(d.step, None);
    assert_eq!(
        d.wait,
        Some(Wait::Interval {
            remaining: Duration::from_secs(20)
        })
    );
    assert_eq!(d.requeue_after, Duration::from_secs(20));
    o.last_step_time = Some(o.now - SignedDuration::from_secs(30));
    assert_eq!(plan(&o).step, Some(Step { from: 10, to: 9 }));
}

#[test]
fn overdue_step_reports_degraded_and_keeps_holding() {
    let mut o = observation(1, 10);
    o.terminating_pods = 1;
    o.last_step_time = Some(o.now - SignedDuration::from_secs(301));
    let d = plan(&o);
    assert_eq!(d.phase, Phase::Degraded);
    assert!(d.degraded.is_some());
    assert_eq!(d.replicas, 10);
}

#[test]
fn settling_at_target_clears_the_step_clock() {
    let mut o = observation(3, 3);
    o.last_step_time = Some(o.now);
    let d = plan(&o);
    assert_eq!(d.phase, Phase::Stable);
    assert_eq!(d.last_step_time, None);
    assert_eq!(d.requeue_after, IDLE_REQUEUE);
}

/// A toy cluster that settles every step, to walk whole scale-downs through the planner.
fn walk(start: i32, desired: i32, step_size: i32, unsettled_rounds: usize) -> Vec<i32> {
    let mut at = start;
    let mut seen = vec![at];
    let mut last = None;
    let mut now = Timestamp::from_second(1_000_000).unwrap();
    for _ in 0..10_000 {
        // While a step settles the planner is asked repeatedly and must hold.
        for round in 0..unsettled_rounds {
            let mut o = observation(desired, at);
            o.policy = policy(step_size);
            o.last_step_time = last;
            o.now = now;
            o.terminating_pods = (round % 2) as i32 + 1;
            let d = plan(&o);
            assert_eq!(d.replicas, at, "stepped while pods terminate");
        }
        let mut o = observation(desired, at);
        o.policy = policy(step_size);
        o.last_step_time = last;
        o.now = now;
        let hold = replicas_to_hold(desired, Some(at));
        assert_eq!(hold, at.max(desired));
        o.deployment = settled_at(hold);
        o.ready_endpoints = hold;
        let d = plan(&o);
        last = d.last_step_time;
        now += SignedDuration::from_secs(1);
        if d.replicas == at && hold == at {
            break;
        }
        at = d.replicas;
        seen.push(at);
    }
    seen
}

#[test]
fn twenty_to_one_walks_every_step() {
    assert_eq!(walk(20, 1, 1, 2), (1..=20).rev().collect::<Vec<_>>());
}

proptest! {
    #[test]
    fn walks_down_in_bounded_steps_and_never_overshoots(
        start in 0i32..60, desired in 0i32..60, step_size in 1i32..7, unsettled in 0usize..3,
    ) {
        let seen = walk(start, desired, step_size, unsettled);
        prop_assert_eq!(*seen.last().unwrap(), desired);
        for pair in seen.windows(2) {
            if start > desired {
                prop_assert!(pair[1] < pair[0]);
                prop_assert!(pair[0] - pair[1] <= step_size);
                prop_assert!(pair[1] >= desired);
            }
        }
        if start > desired {
            let expected_steps = (start - desired + step_size - 1) / step_size;
            prop_assert_eq!(seen.len() as i32 - 1, expected_steps);
        }
    }

    #[test]
    fn never_steps_unless_settled(
        desired in 0i32..30, at in 0i32..30, terminating in 0i32..3, lag in -2i32..3,
        unobserved: bool, ready_gap in 0i32..3,
    ) {
        let mut o = observation(desired, at);
        o.terminating_pods = terminating;
        o.ready_endpoints = at + lag;
        if unobserved { o.deployment.observed_generation -= 1; }
        o.deployment.ready_replicas = at - ready_gap;
        let d = plan(&o);
        let is_settled = terminating == 0 && lag == 0 && !unobserved && ready_gap == 0;
        if !is_settled {
            prop_assert_eq!(d.replicas, at);
            prop_assert!(d.step.is_none());
        }
        prop_assert!(d.replicas >= desired.min(at));
    }
}
