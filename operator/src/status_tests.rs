use super::*;
use crate::planner::{Observation, StepPolicy, StepSize, plan};
use std::time::Duration;

fn obs(desired: i32, at: i32) -> Observation {
    Observation {
        desired,
        deployment: DeploymentObservation {
            spec_replicas: at,
            generation: 1,
            observed_generation: 1,
            replicas: at,
            ready_replicas: at,
            updated_replicas: at,
            available_replicas: at,
            progress_deadline_exceeded: false,
            clock: Default::default(),
            spec_changing: false,
        },
        pods: Vec::new(),
        ready_endpoints: at,
        now: Timestamp::from_second(1_000).unwrap(),
        policy: StepPolicy {
            step_size: StepSize::Pods(1),
            min_interval: Duration::ZERO,
            step_timeout: Duration::from_secs(300),
        },
    }
}

#[test]
fn stable_status_has_all_conditions_and_selector() {
    let o = obs(3, 3);
    let d = plan(&o);
    let s = from_decision("web", Some(2), None, 3, &o.deployment, &d, o.now);
    assert_eq!(s.selector, "graceful.dev/service=web");
    assert_eq!(s.phase, Phase::Stable);
    let types: Vec<_> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, [AVAILABLE, PROGRESSING, SCALING_DOWN, DEGRADED]);
    assert!(
        s.conditions
            .iter()
            .all(|c| c.observed_generation == Some(2))
    );
}

#[test]
fn transition_time_kept_while_status_unchanged() {
    let o = obs(1, 5);
    let d = plan(&o);
    let first = from_decision("web", Some(1), None, 1, &o.deployment, &d, o.now);
    let later = o.now + k8s_openapi::jiff::SignedDuration::from_secs(60);
    let second = from_decision("web", Some(1), Some(&first), 1, &o.deployment, &d, later);
    let sd = |s: &GracefulServiceStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == SCALING_DOWN)
            .cloned()
            .unwrap()
    };
    assert_eq!(sd(&second).status, "True");
    assert_eq!(
        sd(&first).last_transition_time,
        sd(&second).last_transition_time
    );
    assert_eq!(second.step_target, Some(4));
}

#[test]
fn status_unchanged_by_a_later_reconcile_is_not_written() {
    let o = obs(1, 5);
    let d = plan(&o);
    let first = from_decision("web", Some(1), None, 1, &o.deployment, &d, o.now);
    assert!(needs_write(None, &first));
    // Read back from the API server: round-trip through JSON.
    let stored: GracefulServiceStatus =
        serde_json::from_value(serde_json::to_value(&first).unwrap()).unwrap();
    let later = o.now + k8s_openapi::jiff::SignedDuration::from_secs(60);
    let again = from_decision("web", Some(1), Some(&stored), 1, &o.deployment, &d, later);
    assert!(!needs_write(Some(&stored), &again));
    let regenerated = from_decision("web", Some(2), Some(&stored), 1, &o.deployment, &d, later);
    assert!(needs_write(Some(&stored), &regenerated));
}

#[test]
fn counts_are_written_when_stable_but_once_per_step_in_a_walk() {
    let stable = obs(5, 5);
    let d = plan(&stable);
    assert_eq!(d.phase, Phase::Stable);
    let first = from_decision("web", Some(1), None, 5, &stable.deployment, &d, stable.now);
    let mut fewer = stable.deployment.clone();
    fewer.ready_replicas -= 1;
    let changed = from_decision("web", Some(1), Some(&first), 5, &fewer, &d, stable.now);
    assert!(needs_write(Some(&first), &changed));

    // A step from 5 to 4: written; then its pod terminates and its endpoint leaves.
    let walk = obs(1, 5);
    let step = plan(&walk);
    assert_eq!((step.phase, step.replicas), (Phase::ScalingDown, 4));
    let at_step = from_decision(
        "web",
        Some(1),
        Some(&first),
        1,
        &walk.deployment,
        &step,
        walk.now,
    );
    assert!(needs_write(Some(&first), &at_step));
    let mut settling = walk.clone();
    settling.deployment.spec_replicas = 4;
    settling.deployment.replicas = 4;
    settling.deployment.ready_replicas = 4;
    settling.deployment.updated_replicas = 4;
    settling.deployment.available_replicas = 4;
    settling.deployment.clock = step.clock;
    settling.ready_endpoints = 5;
    let held = plan(&settling);
    assert_eq!(
        (held.phase, held.replicas, held.step),
        (Phase::ScalingDown, 4, None)
    );
    let during = from_decision(
        "web",
        Some(1),
        Some(&at_step),
        1,
        &settling.deployment,
        &held,
        walk.now,
    );
    assert_ne!(during, at_step, "the counts did change");
    assert!(
        !needs_write(Some(&at_step), &during),
        "not written within the step"
    );

    // The next step is written, with its counts.
    settling.ready_endpoints = 4;
    settling.now += k8s_openapi::jiff::SignedDuration::from_secs(1);
    let next = plan(&settling);
    assert_eq!(next.replicas, 3);
    let at_next = from_decision(
        "web",
        Some(1),
        Some(&at_step),
        1,
        &settling.deployment,
        &next,
        settling.now,
    );
    assert!(needs_write(Some(&at_step), &at_next));
    assert_eq!(at_next.ready_replicas, 4);
}

#[test]
fn invalid_spec_is_degraded() {
    let s = refused(
        "web",
        Some(3),
        None,
        Refusal::InvalidSpec,
        "bad env",
        Timestamp::UNIX_EPOCH,
    );
    assert_eq!(s.phase, Phase::Degraded);
    let deg = s.conditions.iter().find(|c| c.type_ == DEGRADED).unwrap();
    assert_eq!(deg.status, "True");
    assert_eq!(deg.reason, "InvalidSpec");
}
