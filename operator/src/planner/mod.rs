//! The scale-down step planner: pure, so every rule is tested without a cluster.
//!
//! The cluster holds all state, on the Deployment itself: `spec.replicas` is the current step, and
//! two annotations ([`StepClock`]) say when the walk began and when its last step was taken. A
//! step lowers the replicas and stamps its time in the same apply, so the two can never disagree,
//! and the planner reads them from a fresh GET rather than from a watch cache: a reconcile that
//! runs right after a step sees that step. A restarted operator continues from what it reads,
//! never skipping or repeating a step.
//!
//! A walk never stalls silently: the clock starts when the walk starts (not at its first step),
//! surplus pods that have been unready for [`UNREADY_GRACE`] are removed at once (they serve no
//! traffic, and the ReplicaSet controller deletes unready pods first), a pod stuck terminating
//! past its deletion time (its node is gone) does not hold the walk, and whatever else holds it
//! longer than the step timeout is reported, naming the pods and why.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::crd::Phase;

mod inputs;
pub use inputs::{
    DeploymentObservation, Observation, PodView, STEP_SIZE_RULE, StepClock, StepPolicy, StepSize,
};

/// How long a surplus pod must have been unready by its own state before a walk removes it
/// without waiting. Pods that only the node-lifecycle controller marked not ready never count
/// ([`PodView::unready_by_itself`]): after a kube-apiserver restart of 8 s it marked a node's pods
/// not ready until their kubelet set them ready again, up to tens of seconds later, and a walk
/// counting them removed four healthy pods in one step (`e2e/tests/faults`).
pub const UNREADY_GRACE: Duration = Duration::from_secs(30);
/// How long past its deletion time a terminating pod may linger before it stops holding a walk:
/// the kubelet kills it at that time, so a pod still listed later is on a node that is gone.
pub const OVERDUE_GRACE: Duration = Duration::from_secs(5);

/// Why the planner is not taking a step now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The Deployment controller has not yet seen the latest spec.
    NotObserved,
    /// New pods are being rolled out; a rollout holds the scale-down.
    RolloutInProgress { updated: i32, wanted: i32 },
    /// Pods of the previous step are still shutting down (their names).
    PodsTerminating(Vec<String>),
    /// Deployment counts disagree with the step; the pods not ready, with why.
    NotReady {
        ready: i32,
        available: i32,
        wanted: i32,
        unready: Vec<String>,
    },
    /// The EndpointSlices do not yet list exactly the step's pods as ready.
    EndpointsLag { ready_endpoints: i32, wanted: i32 },
    /// The previous step settled, but the minimum interval has not passed.
    Interval { remaining: Duration },
}

impl Wait {
    /// Human-readable reason for status and logs.
    pub fn message(&self) -> String {
        match self {
            Wait::NotObserved => "waiting for the Deployment controller to observe the spec".into(),
            Wait::RolloutInProgress { updated, wanted } => {
                format!("rollout in progress: {updated} of {wanted} pods updated")
            }
            Wait::PodsTerminating(pods) => {
                format!(
                    "{} pod(s) still terminating: {}",
                    pods.len(),
                    pods.join(", ")
                )
            }
            Wait::NotReady {
                ready,
                available,
                wanted,
                unready,
            } => {
                let mut text = format!("{ready} ready, {available} available of {wanted}");
                if !unready.is_empty() {
                    text.push_str(&format!("; not ready: {}", unready.join(", ")));
                }
                text
            }
            Wait::EndpointsLag {
                ready_endpoints,
                wanted,
            } => format!("EndpointSlices list {ready_endpoints} ready pods, want {wanted}"),
            Wait::Interval { remaining } => {
                format!("minimum step interval: {}s left", remaining.as_secs())
            }
        }
    }
}

/// What a step removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// Serving pods, `stepSize` of them, after the previous step settled.
    Drain,
    /// Surplus pods that serve nothing (unready for [`UNREADY_GRACE`]), all at once.
    Unready,
}

/// One scale-down step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Replicas before the step.
    pub from: i32,
    /// Replicas after the step.
    pub to: i32,
    /// What it removes.
    pub kind: StepKind,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Replicas to set on the Deployment now.
    pub replicas: i32,
    /// Phase to report.
    pub phase: Phase,
    /// The step taken now, if any.
    pub step: Option<Step>,
    /// Why no step was taken (when the Deployment is not settled or the interval holds).
    pub wait: Option<Wait>,
    /// Set when something needs a human: `(reason, message)`.
    pub degraded: Option<(&'static str, String)>,
    /// The clock to keep on the Deployment.
    pub clock: StepClock,
    /// When to look again if no watch event comes first.
    pub requeue_after: Duration,
}

/// Requeue while waiting for something to settle; watches usually trigger sooner.
pub const SETTLE_REQUEUE: Duration = Duration::from_secs(10);
/// Requeue of a settled resource, to catch anything the watches missed.
pub const IDLE_REQUEUE: Duration = Duration::from_secs(300);

/// Replicas to keep on the Deployment before looking at its status: scale-up goes straight to
/// `desired`, a pending scale-down holds the current step until [`plan`] allows the next one.
pub fn replicas_to_hold(desired: i32, current: Option<i32>) -> i32 {
    match current {
        Some(current) if current > desired => current,
        _ => desired,
    }
}

fn elapsed_since(now: Timestamp, then: Timestamp) -> Duration {
    let d: SignedDuration = now.duration_since(then);
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

/// A terminating pod past its deletion time by [`OVERDUE_GRACE`]: its kubelet is not acting.
pub fn overdue(pod: &PodView, now: Timestamp) -> bool {
    pod.deleting_at
        .is_some_and(|at| now > at && elapsed_since(now, at) >= OVERDUE_GRACE)
}

/// A pod that is not terminating and has been unready, by its own state, for at least
/// [`UNREADY_GRACE`].
fn dead(pod: &PodView, now: Timestamp) -> bool {
    pod.deleting_at.is_none()
        && !pod.ready
        && pod.unready_by_itself
        && pod
            .unready_since
            .is_some_and(|since| elapsed_since(now, since) >= UNREADY_GRACE)
}

fn describe(pod: &PodView) -> String {
    match &pod.node {
        Some(node) => format!("{} ({}, on {node})", pod.name, pod.why),
        None => format!("{} ({})", pod.name, pod.why),
    }
}

/// Whether the Deployment has settled at its current `spec.replicas`.
pub fn settled(obs: &Observation) -> Result<(), Wait> {
    let d = &obs.deployment;
    let wanted = d.spec_replicas;
    if d.spec_changing || d.observed_generation < d.generation {
        return Err(Wait::NotObserved);
    }
    if d.updated_replicas < wanted {
        return Err(Wait::RolloutInProgress {
            updated: d.updated_replicas,
            wanted,
        });
    }
    // A terminating pod holds the step until its containers have stopped: once the app has
    // exited, nothing of it can serve or be in flight, and what the kubelet still does for it
    // (sandbox, volumes, cgroup: its housekeeping runs every 2 s) is no reason to wait.
    let terminating: Vec<String> = obs
        .pods
        .iter()
        .filter(|p| p.deleting_at.is_some() && !p.stopped && !overdue(p, obs.now))
        .map(|p| p.name.clone())
        .collect();
    if !terminating.is_empty() {
        return Err(Wait::PodsTerminating(terminating));
    }
    let counts = [
        d.replicas,
        d.ready_replicas,
        d.updated_replicas,
        d.available_replicas,
    ];
    if counts.iter().any(|&n| n != wanted) {
        return Err(Wait::NotReady {
            ready: d.ready_replicas,
            available: d.available_replicas,
            wanted,
            unready: obs
                .pods
                .iter()
                .filter(|p| p.deleting_at.is_none() && !p.ready)
                .map(describe)
                .collect(),
        });
    }
    if obs.ready_endpoints != wanted {
        return Err(Wait::EndpointsLag {
            ready_endpoints: obs.ready_endpoints,
            wanted,
        });
    }
    Ok(())
}

/// Decides the replicas and the clock to apply now, given a Deployment already held by
/// [`replicas_to_hold`].
pub fn plan(obs: &Observation) -> Decision {
    let current = obs.deployment.spec_replicas;
    let walking = current > obs.desired;
    let mut clock = obs.deployment.clock;
    if walking && clock.walk_started.is_none() {
        clock.walk_started = Some(obs.now);
    }
    if current < obs.desired {
        // A scale-up ends any walk.
        clock = StepClock::default();
    }
    let settle = settled(obs);
    let mut decision = Decision {
        replicas: current,
        phase: Phase::Stable,
        step: None,
        wait: settle.clone().err(),
        degraded: None,
        clock,
        requeue_after: SETTLE_REQUEUE,
    };
    let dead_surplus = obs.pods.iter().filter(|p| dead(p, obs.now)).count();
    let rollout_quiet = !matches!(
        decision.wait,
        Some(Wait::NotObserved | Wait::RolloutInProgress { .. })
    );
    if walking && dead_surplus > 0 && rollout_quiet {
        let dead = i32::try_from(dead_surplus).unwrap_or(i32::MAX);
        take_step(&mut decision, obs, dead, StepKind::Unready);
        return with_health(decision, obs);
    }
    match settle {
        Err(wait) => {
            decision.phase = match wait {
                Wait::RolloutInProgress { .. } => Phase::RollingOut,
                _ if decision.clock.waiting_since().is_some() => Phase::ScalingDown,
                _ => Phase::RollingOut,
            };
        }
        Ok(()) if !walking => {
            // Settled at the target: the scale-down (if any) is over.
            decision.clock = StepClock::default();
            decision.requeue_after = IDLE_REQUEUE;
        }
        Ok(()) => {
            decision.phase = Phase::ScalingDown;
            let since_last = clock.last_step.map(|t| elapsed_since(obs.now, t));
            match since_last {
                Some(since) if since < obs.policy.min_interval => {
                    let remaining = obs.policy.min_interval - since;
                    decision.wait = Some(Wait::Interval { remaining });
                    decision.requeue_after = remaining.max(Duration::from_secs(1));
                }
                _ => {
                    let pods = obs.policy.step_size.pods_at(obs.deployment.spec_replicas);
                    take_step(&mut decision, obs, pods, StepKind::Drain);
                }
            }
        }
    }
    with_health(decision, obs)
}

/// Lowers the replicas by `pods` (at least 1, never below the target) and stamps the step.
fn take_step(decision: &mut Decision, obs: &Observation, pods: i32, kind: StepKind) {
    let from = obs.deployment.spec_replicas;
    let to = from.saturating_sub(pods.max(1)).max(obs.desired);
    decision.replicas = to;
    decision.step = Some(Step { from, to, kind });
    decision.clock.last_step = Some(obs.now);
    decision.phase = Phase::ScalingDown;
}

/// Adds `degraded` (and the Degraded phase) when the walk has been held past the step timeout or
/// the Deployment exceeded its progress deadline; shortens the requeue so the timeout is reported
/// when it passes even if no watch event comes.
fn with_health(mut decision: Decision, obs: &Observation) -> Decision {
    let timeout = obs.policy.step_timeout;
    let held_for = match (
        &decision.step,
        &decision.wait,
        decision.clock.waiting_since(),
    ) {
        (None, Some(wait), Some(since)) if !matches!(wait, Wait::Interval { .. }) => {
            Some((elapsed_since(obs.now, since), wait))
        }
        _ => None,
    };
    let stuck: Vec<String> = obs
        .pods
        .iter()
        .filter(|p| overdue(p, obs.now))
        .map(|p| format!("{} on {}", p.name, p.node.as_deref().unwrap_or("no node")))
        .collect();
    if obs.deployment.progress_deadline_exceeded {
        decision.degraded = Some((
            "ProgressDeadlineExceeded",
            "the Deployment exceeded its progress deadline".to_string(),
        ));
    } else if let Some((held, wait)) = held_for {
        if held > timeout {
            // No elapsed time in the text: it would change the status on every reconcile.
            decision.degraded = Some((
                "StepTimeout",
                format!(
                    "scale-down held at {} longer than the step timeout ({}s): {}",
                    decision.replicas,
                    timeout.as_secs(),
                    wait.message()
                ),
            ));
        } else {
            let left = timeout - held + Duration::from_secs(1);
            decision.requeue_after = decision.requeue_after.min(left);
        }
    }
    if decision.degraded.is_none() && !stuck.is_empty() {
        // They no longer hold a walk, but a human should know: their node is gone.
        decision.degraded = Some((
            "PodsLeftBehind",
            format!(
                "pod(s) past their deletion time, their node not acting: {}",
                stuck.join(", ")
            ),
        ));
    }
    if decision.degraded.is_some() {
        decision.phase = Phase::Degraded;
    }
    decision
}

#[cfg(test)]
mod tests;
