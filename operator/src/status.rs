//! Builds the GracefulService status (phase and standard conditions) from a planner decision.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{GracefulServiceStatus, Phase, SELECTOR_KEY};
use crate::planner::{Decision, DeploymentObservation};

/// Condition types, in the order they are written.
pub const AVAILABLE: &str = "Available";
/// The resource is moving towards its desired state.
pub const PROGRESSING: &str = "Progressing";
/// Something needs attention.
pub const DEGRADED: &str = "Degraded";
/// A stepped scale-down is in progress.
pub const SCALING_DOWN: &str = "ScalingDown";

/// Label selector string of the pods (for the scale subresource and HPAs).
pub fn selector(name: &str) -> String {
    format!("{SELECTOR_KEY}={name}")
}

/// One condition as computed now, before transition times are merged.
struct Fresh {
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
}

/// Status after a reconcile that applied the children and ran the planner.
pub fn from_decision(
    name: &str,
    generation: Option<i64>,
    previous: Option<&GracefulServiceStatus>,
    desired: i32,
    deployment: &DeploymentObservation,
    decision: &Decision,
    now: Timestamp,
) -> GracefulServiceStatus {
    let scaling_down = decision.replicas > desired || decision.clock.waiting_since().is_some();
    let wait = decision
        .wait
        .as_ref()
        .map(|w| w.message())
        .unwrap_or_default();
    let fresh = vec![
        Fresh {
            type_: AVAILABLE,
            status: deployment.available_replicas >= deployment.spec_replicas,
            reason: if deployment.available_replicas >= deployment.spec_replicas {
                "AllReplicasAvailable"
            } else {
                "ReplicasUnavailable"
            },
            message: format!(
                "{} of {} replicas available",
                deployment.available_replicas, deployment.spec_replicas
            ),
        },
        Fresh {
            type_: PROGRESSING,
            status: decision.phase != Phase::Stable,
            reason: match decision.phase {
                Phase::Stable => "Settled",
                Phase::RollingOut => "RollingOut",
                Phase::ScalingDown => "ScalingDown",
                Phase::Degraded => "NotSettling",
            },
            message: if decision.phase == Phase::Stable {
                format!("settled at {desired} replicas")
            } else {
                wait.clone()
            },
        },
        Fresh {
            type_: SCALING_DOWN,
            status: scaling_down,
            // One reason for the whole walk: a reason that changed between a step and its
            // settling would cost a status write of its own per step.
            reason: if scaling_down { "Stepping" } else { "AtTarget" },
            message: if scaling_down {
                format!("step target {} towards {desired}", decision.replicas)
            } else {
                String::new()
            },
        },
        Fresh {
            type_: DEGRADED,
            status: decision.degraded.is_some(),
            reason: decision
                .degraded
                .as_ref()
                .map_or("AsExpected", |(reason, _)| reason),
            message: decision
                .degraded
                .as_ref()
                .map(|(_, message)| message.clone())
                .unwrap_or_default(),
        },
    ];
    GracefulServiceStatus {
        observed_generation: generation,
        replicas: deployment.replicas,
        ready_replicas: deployment.ready_replicas,
        step_target: Some(decision.replicas),
        selector: selector(name),
        phase: decision.phase,
        conditions: merge(previous, fresh, generation, now),
        last_step_time: decision.clock.last_step.map(Time),
    }
}

/// Why the operator refuses to act on a GracefulService.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The spec fails a check the schema cannot make, or the API server refused a child (422).
    InvalidSpec,
    /// A child's name is taken by an object the GracefulService does not control.
    ChildConflict,
}

impl Refusal {
    /// The condition reason (also the Event reason).
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::InvalidSpec => "InvalidSpec",
            Refusal::ChildConflict => "ChildConflict",
        }
    }

    fn progressing(self) -> &'static str {
        match self {
            Refusal::InvalidSpec => "spec refused; fix it to continue",
            Refusal::ChildConflict => {
                "waiting for the conflicting object to be removed or renamed; nothing of it is changed"
            }
        }
    }
}

/// Status for a GracefulService the operator refuses to act on: Degraded with the problems,
/// nothing else changed, so the last known counts stay visible.
pub fn refused(
    name: &str,
    generation: Option<i64>,
    previous: Option<&GracefulServiceStatus>,
    refusal: Refusal,
    problems: &str,
    now: Timestamp,
) -> GracefulServiceStatus {
    let mut status = previous.cloned().unwrap_or_default();
    let fresh = vec![
        Fresh {
            type_: PROGRESSING,
            status: false,
            reason: refusal.reason(),
            message: refusal.progressing().to_string(),
        },
        Fresh {
            type_: DEGRADED,
            status: true,
            reason: refusal.reason(),
            message: problems.to_string(),
        },
    ];
    status.conditions = merge(previous, fresh, generation, now);
    status.observed_generation = generation;
    status.selector = selector(name);
    status.phase = Phase::Degraded;
    status
}

/// Whether `computed` must be written: it differs from the status the object has now. Compared
/// as JSON, the form it is stored in, so a time read back at second precision equals itself.
/// Unchanged conditions keep their `lastTransitionTime` ([`merge`]) and no field holds the time of
/// the reconcile, so a reconcile that changes nothing writes nothing.
///
/// Within one step of a walk (phase ScalingDown before and after, same step target) the pod
/// counts and the messages of `Available` and `Progressing` are left as the step wrote them: a
/// step brings several reconciles (the pod terminating, its endpoint leaving, the Deployment's
/// status), and writing each of their counts tripled the status writes of a walk. So a walk
/// writes status once per step, with the counts seen at that step, and once when it ends; any
/// change of phase, target, or a condition's status or reason is still written at once.
pub fn needs_write(
    current: Option<&GracefulServiceStatus>,
    computed: &GracefulServiceStatus,
) -> bool {
    let Some(current) = current else { return true };
    let same_step = current.phase == Phase::ScalingDown
        && computed.phase == Phase::ScalingDown
        && current.step_target == computed.step_target;
    let view = |status: &GracefulServiceStatus| {
        let mut status = status.clone();
        if same_step {
            status.replicas = 0;
            status.ready_replicas = 0;
            for condition in &mut status.conditions {
                if condition.type_ == AVAILABLE || condition.type_ == PROGRESSING {
                    condition.message.clear();
                }
            }
        }
        serde_json::to_value(status)
    };
    match (view(current), view(computed)) {
        (Ok(current), Ok(computed)) => current != computed,
        _ => true,
    }
}

/// Keeps `lastTransitionTime` of conditions whose status did not change, and keeps previous
/// conditions not recomputed now.
fn merge(
    previous: Option<&GracefulServiceStatus>,
    fresh: Vec<Fresh>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let old: &[Condition] = previous.map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    let mut out: Vec<Condition> = old
        .iter()
        .filter(|c| !fresh.iter().any(|f| f.type_ == c.type_))
        .cloned()
        .collect();
    for f in fresh {
        let status = if f.status { "True" } else { "False" }.to_string();
        let transition = old
            .iter()
            .find(|c| c.type_ == f.type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        out.push(Condition {
            type_: f.type_.to_string(),
            status,
            reason: f.reason.to_string(),
            message: f.message,
            observed_generation: generation,
            last_transition_time: transition,
        });
    }
    out.sort_by_key(|c| {
        [AVAILABLE, PROGRESSING, SCALING_DOWN, DEGRADED]
            .iter()
            .position(|t| *t == c.type_)
            .unwrap_or(usize::MAX)
    });
    out
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
