//! The scale-down step planner: pure, so every rule is tested without a cluster.
//!
//! The cluster holds all state: the Deployment's `spec.replicas` is the current step and the
//! GracefulService's `status.lastStepTime` marks when it was taken (cleared once the scale-down
//! has settled at the desired count). A restarted operator therefore continues from what it reads,
//! never skipping or repeating a step.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::crd::Phase;

/// What the Deployment reports, as read right after applying it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DeploymentObservation {
    /// `spec.replicas`: the step currently in force.
    pub spec_replicas: i32,
    /// `metadata.generation`.
    pub generation: i64,
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// `status.replicas`.
    pub replicas: i32,
    /// `status.readyReplicas`.
    pub ready_replicas: i32,
    /// `status.updatedReplicas`.
    pub updated_replicas: i32,
    /// `status.availableReplicas`.
    pub available_replicas: i32,
    /// The Deployment's Progressing condition says ProgressDeadlineExceeded.
    pub progress_deadline_exceeded: bool,
}

/// Pace settings of a scale-down (from `spec.scaleDown`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepPolicy {
    /// Pods removed per step (at least 1).
    pub step_size: i32,
    /// Minimum time between two steps.
    pub min_interval: Duration,
    /// A step not settled within this time reports Degraded.
    pub step_timeout: Duration,
}

/// Everything the planner needs, gathered from the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// `spec.replicas` of the GracefulService.
    pub desired: i32,
    /// The Deployment as it stands.
    pub deployment: DeploymentObservation,
    /// Pods of the service with a deletion timestamp.
    pub terminating_pods: i32,
    /// Ready endpoints over the Service's EndpointSlices.
    pub ready_endpoints: i32,
    /// The current time.
    pub now: Timestamp,
    /// When the step in flight was taken, if a scale-down is in progress.
    pub last_step_time: Option<Timestamp>,
    /// Pace settings.
    pub policy: StepPolicy,
}

/// Why the planner is not taking a step now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The Deployment controller has not yet seen the latest spec.
    NotObserved,
    /// New pods are being rolled out; a rollout holds the scale-down.
    RolloutInProgress { updated: i32, wanted: i32 },
    /// Pods of the previous step are still shutting down.
    PodsTerminating(i32),
    /// Deployment counts disagree with the step (replicas, ready, available).
    NotReady {
        ready: i32,
        available: i32,
        wanted: i32,
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
            Wait::PodsTerminating(n) => format!("{n} pod(s) still terminating"),
            Wait::NotReady {
                ready,
                available,
                wanted,
            } => format!("{ready} ready, {available} available of {wanted}"),
            Wait::EndpointsLag {
                ready_endpoints,
                wanted,
            } => format!("EndpointSlices list {ready_endpoints} ready endpoints, want {wanted}"),
            Wait::Interval { remaining } => {
                format!("minimum step interval: {}s left", remaining.as_secs())
            }
        }
    }
}

/// One scale-down step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Replicas before the step.
    pub from: i32,
    /// Replicas after the step.
    pub to: i32,
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
    /// Set when something does not settle in time.
    pub degraded: Option<String>,
    /// Value for `status.lastStepTime`.
    pub last_step_time: Option<Timestamp>,
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

/// Whether the Deployment has settled at its current `spec.replicas`.
pub fn settled(obs: &Observation) -> Result<(), Wait> {
    let d = &obs.deployment;
    let wanted = d.spec_replicas;
    if d.observed_generation < d.generation {
        return Err(Wait::NotObserved);
    }
    if d.updated_replicas < wanted {
        return Err(Wait::RolloutInProgress {
            updated: d.updated_replicas,
            wanted,
        });
    }
    if obs.terminating_pods > 0 {
        return Err(Wait::PodsTerminating(obs.terminating_pods));
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

fn elapsed_since(now: Timestamp, then: Timestamp) -> Duration {
    let d: SignedDuration = now.duration_since(then);
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

/// Decides the replicas to apply now, given a Deployment already held by [`replicas_to_hold`].
pub fn plan(obs: &Observation) -> Decision {
    let current = obs.deployment.spec_replicas;
    let settle = settled(obs);
    let step_overdue = obs
        .last_step_time
        .is_some_and(|t| settle.is_err() && elapsed_since(obs.now, t) > obs.policy.step_timeout);
    let degraded = if obs.deployment.progress_deadline_exceeded {
        Some("the Deployment exceeded its progress deadline".to_string())
    } else if step_overdue {
        Some(format!(
            "scale-down step to {current} not settled within {}s",
            obs.policy.step_timeout.as_secs()
        ))
    } else {
        None
    };
    let mut decision = Decision {
        replicas: current,
        phase: Phase::Stable,
        step: None,
        wait: settle.clone().err(),
        degraded: degraded.clone(),
        last_step_time: obs.last_step_time,
        requeue_after: SETTLE_REQUEUE,
    };
    match settle {
        Err(wait) => {
            decision.phase = match wait {
                Wait::RolloutInProgress { .. } => Phase::RollingOut,
                _ if obs.last_step_time.is_some() || current > obs.desired => Phase::ScalingDown,
                _ => Phase::RollingOut,
            };
        }
        Ok(()) if current <= obs.desired => {
            // Settled at the target: the scale-down (if any) is over.
            decision.last_step_time = None;
            decision.requeue_after = IDLE_REQUEUE;
        }
        Ok(()) => {
            decision.phase = Phase::ScalingDown;
            let since_last = obs.last_step_time.map(|t| elapsed_since(obs.now, t));
            match since_last {
                Some(since) if since < obs.policy.min_interval => {
                    let remaining = obs.policy.min_interval - since;
                    decision.wait = Some(Wait::Interval { remaining });
                    decision.requeue_after = remaining.max(Duration::from_secs(1));
                }
                _ => {
                    let to = (current - obs.policy.step_size.max(1)).max(obs.desired);
                    decision.replicas = to;
                    decision.step = Some(Step { from: current, to });
                    decision.last_step_time = Some(obs.now);
                }
            }
        }
    }
    if degraded.is_some() {
        decision.phase = Phase::Degraded;
    }
    decision
}

#[cfg(test)]
#[path = "planner_tests.rs"]
mod tests;
