use super::*;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

fn policy(step_size: i32) -> StepPolicy {
    StepPolicy {
        step_size: StepSize::Pods(step_size),
        min_interval: Duration::ZERO,
        step_timeout: Duration::from_secs(300),
    }
}

fn t0() -> Timestamp {
    Timestamp::from_second(1_000_000).unwrap()
}

fn secs(n: i64) -> SignedDuration {
    SignedDuration::from_secs(n)
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
        clock: StepClock::default(),
        spec_changing: false,
    }
}

fn ready_pod(i: i32) -> PodView {
    PodView {
        name: format!("web-{i}"),
        node: Some("node-0".into()),
        ready: true,
        ..PodView::default()
    }
}

fn observation(desired: i32, at: i32) -> Observation {
    Observation {
        desired,
        deployment: settled_at(at),
        pods: (0..at).map(ready_pod).collect(),
        ready_endpoints: at,
        now: t0(),
        policy: policy(1),
    }
}

/// `o` with pod `i` unready since `ago` seconds (and the Deployment's counts saying so).
fn with_unready(mut o: Observation, i: usize, ago: i64, why: &str) -> Observation {
    o.pods[i].ready = false;
    o.pods[i].unready_since = Some(o.now - secs(ago));
    o.pods[i].unready_by_itself = true;
    o.pods[i].why = why.into();
    o.deployment.ready_replicas -= 1;
    o.deployment.available_replicas -= 1;
    o.ready_endpoints -= 1;
    o
}

fn terminating(o: &mut Observation, name: &str, deleting_in: i64) {
    let mut pod = ready_pod(99);
    pod.name = name.into();
    pod.ready = false;
    pod.deleting_at = Some(o.now + secs(deleting_in));
    o.pods.push(pod);
}

#[test]
fn a_terminating_pod_whose_containers_stopped_no_longer_holds_the_step() {
    let mut o = observation(1, 4);
    terminating(&mut o, "old", 20);
    assert_eq!(plan(&o).replicas, 4, "held while the app may still run");
    o.pods.last_mut().unwrap().stopped = true;
    assert_eq!(
        plan(&o).replicas,
        3,
        "its app has exited: the next step goes"
    );
}

#[test]
fn scale_up_goes_straight_to_target() {
    assert_eq!(replicas_to_hold(20, Some(3)), 20);
    assert_eq!(replicas_to_hold(5, None), 5);
    assert_eq!(replicas_to_hold(1, Some(20)), 20);
}

#[test]
fn settled_scale_down_takes_one_step_and_stamps_the_clock() {
    let d = plan(&observation(1, 20));
    assert_eq!(
        d.step,
        Some(Step {
            from: 20,
            to: 19,
            kind: StepKind::Drain
        })
    );
    assert_eq!(d.replicas, 19);
    assert_eq!(d.phase, Phase::ScalingDown);
    assert_eq!(d.clock.last_step, Some(t0()));
    assert_eq!(d.clock.walk_started, Some(t0()));
}

#[test]
fn each_unsettled_signal_holds_the_step() {
    type Case = (Observation, fn(&Wait) -> bool);
    let mut cases: Vec<Case> = Vec::new();
    let mut o = observation(1, 20);
    o.deployment.observed_generation = 3;
    cases.push((o, |w| matches!(w, Wait::NotObserved)));
    let mut o = observation(1, 20);
    o.deployment.spec_changing = true;
    cases.push((o, |w| matches!(w, Wait::NotObserved)));
    let mut o = observation(1, 20);
    o.deployment.updated_replicas = 10;
    cases.push((o, |w| matches!(w, Wait::RolloutInProgress { .. })));
    let mut o = observation(1, 20);
    terminating(&mut o, "web-old", 20);
    cases.push((
        o,
        |w| matches!(w, Wait::PodsTerminating(p) if p == &["web-old"]),
    ));
    // Unready for less than the grace: a blip, waited for rather than removed.
    let o = with_unready(observation(1, 20), 3, 2, "Running, not ready");
    cases.push((
        o,
        |w| matches!(w, Wait::NotReady { unready, .. } if unready.len() == 1),
    ));
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
fn min_interval_delays_the_next_step_but_not_the_first() {
    let mut o = observation(1, 10);
    o.policy.min_interval = Duration::from_secs(30);
    o.deployment.clock.walk_started = Some(o.now - secs(1));
    assert!(plan(&o).step.is_some(), "the first step has no interval");
    o.deployment.clock.last_step = Some(o.now - secs(10));
    let d = plan(&o);
    assert_eq!(d.step, None);
    assert_eq!(
        d.wait,
        Some(Wait::Interval {
            remaining: Duration::from_secs(20)
        })
    );
    assert_eq!(d.requeue_after, Duration::from_secs(20));
    o.deployment.clock.last_step = Some(o.now - secs(30));
    assert_eq!(plan(&o).step.map(|s| s.to), Some(9));
}

#[test]
fn the_clock_starts_with_the_walk_not_its_first_step() {
    // A Pending pod that is not surplus-removable (the walk is at 3 -> 2 with 2 of 3 ready)
    // and a walk that began long ago: reported even though no step was ever taken.
    let mut o = with_unready(observation(2, 3), 0, 5, "Pending (Unschedulable)");
    o.deployment.clock.walk_started = Some(o.now - secs(301));
    let d = plan(&o);
    assert_eq!(d.step, None);
    assert_eq!(d.phase, Phase::Degraded);
    let (reason, message) = d.degraded.unwrap();
    assert_eq!(reason, "StepTimeout");
    assert!(
        message.contains("web-0 (Pending (Unschedulable), on node-0)"),
        "{message}"
    );
    assert!(
        message.contains("held at 3 longer than the step timeout (300s)"),
        "{message}"
    );
    // Without a clock yet, the walk's first reconcile starts it.
    let o = with_unready(observation(2, 3), 0, 5, "Pending");
    assert_eq!(plan(&o).clock.walk_started, Some(t0()));
}

#[test]
fn held_walk_requeues_when_the_timeout_would_pass() {
    let mut o = observation(1, 10);
    terminating(&mut o, "web-old", 20);
    o.deployment.clock.last_step = Some(o.now - secs(295));
    let d = plan(&o);
    assert_eq!(d.degraded, None);
    assert_eq!(d.requeue_after, Duration::from_secs(6));
}

#[test]
fn overdue_step_reports_degraded_and_keeps_holding() {
    let mut o = observation(1, 10);
    terminating(&mut o, "web-old", 20);
    o.deployment.clock.last_step = Some(o.now - secs(301));
    let d = plan(&o);
    assert_eq!(d.phase, Phase::Degraded);
    assert!(d.degraded.unwrap().1.contains("web-old"));
    assert_eq!(d.replicas, 10);
}

#[test]
fn unready_surplus_is_removed_at_once() {
    let o = with_unready(observation(1, 10), 4, 31, "CrashLoopBackOff");
    let o = with_unready(o, 7, 60, "Pending (Unschedulable)");
    let d = plan(&o);
    assert_eq!(
        d.step,
        Some(Step {
            from: 10,
            to: 8,
            kind: StepKind::Unready
        })
    );
    assert_eq!(d.clock.last_step, Some(t0()));
    // Never below the target, whatever is unready.
    let o = with_unready(observation(9, 10), 4, 31, "CrashLoopBackOff");
    let o = with_unready(o, 7, 60, "CrashLoopBackOff");
    assert_eq!(plan(&o).step.map(|s| s.to), Some(9));
    // Not during a rollout, and not at the target.
    let mut o = with_unready(observation(1, 10), 4, 31, "CrashLoopBackOff");
    o.deployment.updated_replicas = 5;
    assert_eq!(plan(&o).step, None);
    let o = with_unready(observation(10, 10), 4, 31, "CrashLoopBackOff");
    assert_eq!(plan(&o).step, None);
}

#[test]
fn a_pod_only_the_node_controller_marked_unready_is_waited_for_not_removed() {
    let mut o = with_unready(observation(1, 10), 4, 300, "Running, not ready");
    o.pods[4].unready_by_itself = false;
    let d = plan(&o);
    assert_eq!(d.step, None);
    assert!(
        matches!(d.wait, Some(Wait::NotReady { .. })),
        "{:?}",
        d.wait
    );
}

#[test]
fn a_pod_stuck_terminating_on_a_lost_node_does_not_hold_the_walk() {
    let mut o = observation(1, 5);
    terminating(&mut o, "web-lost", -6);
    let d = plan(&o);
    assert_eq!(d.step.map(|s| s.to), Some(4));
    let (reason, message) = d.degraded.unwrap();
    assert_eq!(reason, "PodsLeftBehind");
    assert!(message.contains("web-lost on node-0"), "{message}");
    // Within its grace period (and a little beyond) it still holds.
    let mut o = observation(1, 5);
    terminating(&mut o, "web-slow", -4);
    assert_eq!(plan(&o).step, None);
}

#[test]
fn settling_at_target_clears_the_step_clock() {
    let mut o = observation(3, 3);
    o.deployment.clock = StepClock {
        walk_started: Some(o.now - secs(100)),
        last_step: Some(o.now),
    };
    let d = plan(&o);
    assert_eq!(d.phase, Phase::Stable);
    assert_eq!(d.clock, StepClock::default());
    assert_eq!(d.requeue_after, IDLE_REQUEUE);
}

#[test]
fn scale_up_mid_walk_ends_the_walk() {
    let mut o = observation(8, 5);
    o.deployment.clock.last_step = Some(o.now);
    o.deployment.ready_replicas = 5;
    let d = plan(&o);
    assert_eq!(d.clock, StepClock::default());
}

/// A toy cluster that settles every step, to walk whole scale-downs through the planner.
fn walk(start: i32, desired: i32, step_size: StepSize, unsettled_rounds: usize) -> Vec<i32> {
    let mut at = start;
    let mut seen = vec![at];
    let mut clock = StepClock::default();
    let mut now = t0();
    for _ in 0..10_000 {
        // While a step settles the planner is asked repeatedly and must hold.
        for round in 0..unsettled_rounds {
            let mut o = observation(desired, at);
            o.policy.step_size = step_size;
            o.deployment.clock = clock;
            o.now = now;
            for i in 0..=round % 2 {
                terminating(&mut o, &format!("old-{i}"), 10);
            }
            let d = plan(&o);
            assert_eq!(d.replicas, at, "stepped while pods terminate");
        }
        let hold = replicas_to_hold(desired, Some(at));
        assert_eq!(hold, at.max(desired));
        let mut o = observation(desired, hold);
        o.policy.step_size = step_size;
        o.deployment.clock = clock;
        o.now = now;
        let d = plan(&o);
        clock = d.clock;
        now += secs(1);
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
    assert_eq!(
        walk(20, 1, StepSize::Pods(1), 2),
        (1..=20).rev().collect::<Vec<_>>()
    );
}

#[test]
fn step_size_reads_counts_and_percentages() {
    let parse = |v: IntOrString| StepSize::parse(&v);
    assert_eq!(parse(IntOrString::Int(3)), Ok(StepSize::Pods(3)));
    assert_eq!(
        parse(IntOrString::String("10%".into())),
        Ok(StepSize::Percent(10))
    );
    assert_eq!(
        parse(IntOrString::String("100%".into())),
        Ok(StepSize::Percent(100))
    );
    for bad in ["0%", "101%", "10", "ten%", "-5%", "%", "5.5%", ""] {
        assert_eq!(
            parse(IntOrString::String(bad.into())),
            Err(STEP_SIZE_RULE.to_string()),
            "{bad:?}"
        );
    }
    assert!(parse(IntOrString::Int(0)).is_err());
    assert!(parse(IntOrString::Int(-2)).is_err());
}

#[test]
fn a_percentage_is_of_the_replicas_the_step_starts_from_rounded_up() {
    let ten = StepSize::Percent(10);
    assert_eq!(ten.pods_at(1000), 100);
    assert_eq!(ten.pods_at(901), 91);
    assert_eq!(ten.pods_at(5), 1);
    assert_eq!(ten.pods_at(0), 1);
    assert_eq!(StepSize::Percent(33).pods_at(10), 4);
    assert_eq!(StepSize::Percent(100).pods_at(7), 7);
    assert_eq!(StepSize::Percent(100).pods_at(i32::MAX), i32::MAX);
    assert_eq!(StepSize::Pods(3).pods_at(1000), 3);
}

#[test]
fn a_thousand_to_one_by_ten_percent_takes_steps_that_shrink_with_the_service() {
    let seen = walk(1000, 1, StepSize::Percent(10), 1);
    assert_eq!(seen.last(), Some(&1));
    assert_eq!(&seen[..4], &[1000, 900, 810, 729]);
    for pair in seen.windows(2) {
        assert_eq!(pair[0] - pair[1], ((pair[0] + 9) / 10).min(pair[0] - 1));
    }
    // 49 steps of 10% (rounded up), where steps of 1 pod take 999; the last 9 remove 1 each.
    assert_eq!(seen.len() - 1, 49);
}

proptest! {
    #[test]
    fn percentage_walks_end_at_the_target_in_steps_of_at_most_their_share(
        start in 0i32..2000, desired in 0i32..2000, percent in 1i32..=100,
    ) {
        let seen = walk(start, desired, StepSize::Percent(percent), 0);
        prop_assert_eq!(*seen.last().unwrap(), desired);
        for pair in seen.windows(2) {
            if start > desired {
                let share = (i64::from(pair[0]) * i64::from(percent) + 99) / 100;
                prop_assert!(pair[1] < pair[0]);
                prop_assert!(i64::from(pair[0] - pair[1]) <= share.max(1));
                prop_assert!(pair[1] >= desired);
            }
        }
    }

    #[test]
    fn walks_down_in_bounded_steps_and_never_overshoots(
        start in 0i32..60, desired in 0i32..60, step_size in 1i32..7, unsettled in 0usize..3,
    ) {
        let seen = walk(start, desired, StepSize::Pods(step_size), unsettled);
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
        desired in 0i32..30, at in 1i32..30, terminating_for in proptest::option::of(-4i64..30),
        lag in -2i32..3, unobserved: bool, unready_for in proptest::option::of(0i64..29),
    ) {
        let mut o = observation(desired, at);
        if let Some(left) = terminating_for {
            terminating(&mut o, "old", left);
        }
        o.ready_endpoints = at + lag;
        if unobserved { o.deployment.observed_generation -= 1; }
        if let Some(ago) = unready_for {
            o = with_unready(o, 0, ago, "Running");
            o.ready_endpoints += 1;
        }
        let d = plan(&o);
        let is_settled = terminating_for.is_none() && lag == 0 && !unobserved
            && unready_for.is_none();
        if !is_settled {
            prop_assert_eq!(d.replicas, at);
            prop_assert!(d.step.is_none());
        }
        prop_assert!(d.replicas >= desired.min(at));
    }

    #[test]
    fn never_removes_more_than_the_dead_pods_unless_settled(
        desired in 0i32..10, at in 1i32..20, dead in 1usize..5, ago in 30i64..100,
    ) {
        let mut o = observation(desired, at);
        let dead = dead.min(o.pods.len());
        for i in 0..dead {
            o = with_unready(o, i, ago, "CrashLoopBackOff");
        }
        let d = plan(&o);
        if at > desired {
            prop_assert_eq!(d.replicas, (at - dead as i32).max(desired));
        } else {
            prop_assert!(d.step.is_none());
        }
    }
}
