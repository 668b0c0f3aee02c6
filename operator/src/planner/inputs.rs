//! What the planner reads: the Deployment, the pods, the endpoints and the pace settings, as
//! plain values gathered by [`crate::observe`].

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

/// What the Deployment reports, from a GET at the start of the reconcile.
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
    /// The walk's clock, from the Deployment's annotations.
    pub clock: StepClock,
    /// This reconcile changes the Deployment's spec (template, strategy or held count), so its
    /// status still describes the old one.
    pub spec_changing: bool,
}

/// When the walk in progress began and when its last step was taken; both None outside a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StepClock {
    /// When the operator first saw the Deployment above the desired count.
    pub walk_started: Option<Timestamp>,
    /// When the last step was applied.
    pub last_step: Option<Timestamp>,
}

impl StepClock {
    /// Since when the walk has been waiting for its current step: the last step, else the start.
    pub fn waiting_since(&self) -> Option<Timestamp> {
        self.last_step.or(self.walk_started)
    }
}

/// One pod of the service, as the planner needs it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// Node it is bound to, if any.
    pub node: Option<String>,
    /// `metadata.deletionTimestamp`: the end of its grace period, once deletion began.
    pub deleting_at: Option<Timestamp>,
    /// The pod's Ready condition is True.
    pub ready: bool,
    /// Since when it has not been ready (the Ready condition's last transition, else creation).
    pub unready_since: Option<Timestamp>,
    /// Its unreadiness comes from its own state: not scheduled or started yet, or its kubelet
    /// reports its containers not ready. False when only the node-lifecycle controller marked it
    /// not ready (its node stopped reporting): such a pod may be serving as before and comes
    /// back when the node does; Kubernetes' taint eviction decides when it is given up.
    pub unready_by_itself: bool,
    /// Why it is not ready, in words (phase, scheduling or container state).
    pub why: String,
    /// Every container of the pod has terminated (its kubelet reported it): the app is gone,
    /// though the kubelet may take seconds more to tear down the sandbox, unmount volumes and
    /// remove the cgroup before the pod object goes.
    pub stopped: bool,
}

/// Pace settings of a scale-down (from `spec.scaleDown`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepPolicy {
    /// Pods removed per step.
    pub step_size: StepSize,
    /// Minimum time between two steps.
    pub min_interval: Duration,
    /// A walk held this long reports Degraded.
    pub step_timeout: Duration,
}

/// Everything the planner needs, gathered from the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// `spec.replicas` of the GracefulService.
    pub desired: i32,
    /// The Deployment as it stands (its `spec_replicas` already held by [`replicas_to_hold`]).
    pub deployment: DeploymentObservation,
    /// The service's pods, terminating ones included.
    pub pods: Vec<PodView>,
    /// Distinct pods listed as ready over the Service's EndpointSlices.
    pub ready_endpoints: i32,
    /// The current time.
    pub now: Timestamp,
    /// Pace settings.
    pub policy: StepPolicy,
}

/// `spec.scaleDown.stepSize`: a count of pods, or a percentage of the replicas a step starts
/// from, so that one setting fits a service of 10 replicas and one of 1000.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepSize {
    /// This many pods per step (at least 1).
    Pods(i32),
    /// This percentage (1 to 100) of the replicas at the step's start, rounded up.
    Percent(i32),
}

impl StepSize {
    /// Reads the field as the CRD's schema admits it: an integer of at least 1, or `"N%"` with N
    /// from 1 to 100. The error is the sentence a user sees in the Degraded condition.
    pub fn parse(value: &IntOrString) -> Result<Self, String> {
        match value {
            IntOrString::Int(pods) if *pods >= 1 => Ok(Self::Pods(*pods)),
            IntOrString::String(text) => text
                .strip_suffix('%')
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|n| (1..=100).contains(n))
                .map(Self::Percent)
                .ok_or_else(|| STEP_SIZE_RULE.to_string()),
            IntOrString::Int(_) => Err(STEP_SIZE_RULE.to_string()),
        }
    }

    /// Pods a step removes when it starts from `current` replicas: at least 1. A percentage is
    /// rounded up, as the HorizontalPodAutoscaler's `Percent` policy and a Deployment's
    /// `maxSurge` are.
    pub fn pods_at(self, current: i32) -> i32 {
        match self {
            Self::Pods(pods) => pods.max(1),
            Self::Percent(percent) => {
                let pods = (i64::from(current.max(0)) * i64::from(percent) + 99) / 100;
                i32::try_from(pods).unwrap_or(i32::MAX).max(1)
            }
        }
    }
}

/// What `spec.scaleDown.stepSize` must be; the CRD's CEL rule says the same.
pub const STEP_SIZE_RULE: &str =
    "scaleDown.stepSize must be a count of at least 1 or a percentage from 1% to 100%";
