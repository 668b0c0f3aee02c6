//! The decision step of a reconcile: what was read in, the whole plan of writes out. Pure, so the
//! reconcile's logic is tested without a cluster; [`crate::act`] performs the plan.
//!
//! In order: a spec the operator cannot act on is refused; a child name taken by an object the
//! GracefulService does not control is refused (nothing of it is changed); otherwise the
//! Deployment is held at its current step, [`planner::plan`] decides whether to step, and the
//! children, the step, the Events and the status follow from that one decision.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;

use crate::crd::{GracefulService, GracefulServiceStatus, ShutdownMode};
use crate::drift::{self, LastApplied, child_key};
use crate::error::Error;
use crate::manifests::{Owner, deployment, pdb, pod, service};
use crate::observe::{Observed, deployment_view, pod_view, ready_pods};
use crate::planner::{self, Observation, Step, StepKind, StepPolicy, StepSize};
use crate::status::{self, Refusal};
use crate::validation;

/// Requeue of an invalid spec: a change to it triggers a reconcile anyway.
pub const REFUSED_REQUEUE: Duration = Duration::from_secs(300);
/// Requeue of a child conflict: the object in the way is not watched (it lacks the operator's
/// labels), so its removal is noticed by this requeue.
pub const CONFLICT_REQUEUE: Duration = Duration::from_secs(30);

/// Every write one reconcile makes, in the order [`crate::act`] makes them.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Set when the operator refuses to act on the GracefulService (then nothing but status and
    /// Events is written).
    pub refusal: Option<Refusal>,
    /// Children to apply because they differ from what the operator wants.
    pub applies: Applies,
    /// The scale-down step to take.
    pub step: Option<StepWrite>,
    /// Events to publish.
    pub events: Vec<Note>,
    /// The status to write, when it changed.
    pub status: Option<GracefulServiceStatus>,
    /// When to reconcile again if no watch event comes first.
    pub requeue_after: Duration,
    /// Why no step is taken now, for the log.
    pub holding: Option<String>,
}

/// Children to apply (None: leave as is).
#[derive(Clone, Debug, Default)]
pub struct Applies {
    /// The Deployment, outside of a step.
    pub deployment: Option<Deployment>,
    /// The Service.
    pub service: Option<Service>,
    /// The PodDisruptionBudget.
    pub budget: Option<PodDisruptionBudget>,
}

/// A step: the idlest pods marked, then the Deployment applied with its lower replicas and the
/// step's time, on the condition that it is still the object that was read.
#[derive(Clone, Debug)]
pub struct StepWrite {
    /// The step.
    pub step: Step,
    /// The Deployment to apply (without the precondition).
    pub deployment: Deployment,
    /// `resourceVersion` of the Deployment the step was decided on: the apply's precondition, so
    /// a second writer (or a stale read) cannot take the same step twice.
    pub resource_version: Option<String>,
    /// Pods to mark as the idlest (0: only take back earlier marks).
    pub mark: usize,
    /// The admin port to scrape for requests in flight.
    pub admin_port: i32,
    /// The pods to choose from.
    pub pods: Vec<Pod>,
}

/// An Event about the GracefulService.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Warning rather than Normal.
    pub warning: bool,
    /// Reason (CamelCase).
    pub reason: String,
    /// Action (CamelCase); each step has its own so every step is its own Event.
    pub action: String,
    /// The text.
    pub note: String,
}

/// The plan for `gsvc`, given what was read and what this process last applied.
pub fn decide(
    gsvc: &GracefulService,
    observed: &Observed,
    memory: &LastApplied,
    now: Timestamp,
) -> Result<Plan, Error> {
    let owner = Owner::of(gsvc)?;
    let problems = validation::check(&gsvc.spec);
    if !problems.is_empty() {
        return Ok(refuse(
            gsvc,
            Refusal::InvalidSpec,
            &problems.join("; "),
            now,
        ));
    }
    let conflicts: Vec<String> = [
        conflict(&owner, observed.deployment.as_ref()),
        conflict(&owner, observed.service.as_ref()),
        conflict(&owner, observed.budget.as_ref()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !conflicts.is_empty() {
        return Ok(refuse(
            gsvc,
            Refusal::ChildConflict,
            &conflicts.join("; "),
            now,
        ));
    }

    let spec = &gsvc.spec;
    let live = observed.deployment.as_ref();
    let deployment_owner = owner.as_recorded_in(live.map(|d| &d.metadata));
    let hold =
        planner::replicas_to_hold(spec.replicas, live.and_then(|d| d.spec.as_ref()?.replicas));
    let mut view = live.map(deployment_view).unwrap_or_default();
    let token = pod::recorded_token(live).unwrap_or_else(|| observed.new_token.clone());
    let held = deployment::build(&deployment_owner, spec, hold, &view.clock, &token)?;
    view.spec_changing = drift::differs(&held.spec, live.map(|d| &d.spec));
    view.spec_replicas = hold;
    let observation = Observation {
        desired: spec.replicas,
        deployment: view,
        pods: observed.pods.iter().map(pod_view).collect(),
        ready_endpoints: ready_pods(&observed.slices),
        now,
        policy: StepPolicy {
            // validation::check refused any other value before this runs.
            step_size: StepSize::parse(&spec.scale_down.step_size).unwrap_or(StepSize::Pods(1)),
            min_interval: secs(spec.scale_down.min_step_interval_seconds),
            step_timeout: secs(spec.scale_down.step_timeout_seconds),
        },
    };
    let decision = planner::plan(&observation);
    let wanted = deployment::build(
        &deployment_owner,
        spec,
        decision.replicas,
        &decision.clock,
        &token,
    )?;

    let mut plan = Plan {
        requeue_after: decision.requeue_after,
        holding: decision.wait.as_ref().map(|w| w.message()),
        ..Plan::default()
    };
    match decision.step {
        Some(step) => {
            plan.step = Some(StepWrite {
                step,
                deployment: wanted,
                resource_version: live.and_then(|d| d.metadata.resource_version.clone()),
                // Only the app's admin contract or the drain proxy reports requests in flight.
                mark: match (
                    step.kind,
                    spec.scale_down.prefer_idle_pods,
                    spec.shutdown.mode,
                ) {
                    (StepKind::Drain, true, ShutdownMode::Admin | ShutdownMode::Sidecar) => {
                        usize::try_from(step.from - step.to).unwrap_or(0)
                    }
                    _ => 0,
                },
                admin_port: spec.ports.admin,
                pods: observed.pods.clone(),
            });
            plan.events.push(step_note(step, spec.replicas));
        }
        None => plan.applies.deployment = needed(memory, wanted, live),
    }
    let service = observed.service.as_ref();
    let service_owner = owner.as_recorded_in(service.map(|s| &s.metadata));
    plan.applies.service = needed(memory, service::build(&service_owner, spec), service);
    let budget = observed.budget.as_ref();
    let budget_owner = owner.as_recorded_in(budget.map(|b| &b.metadata));
    plan.applies.budget = needed(memory, pdb::build(&budget_owner), budget);

    let previous = gsvc.status.as_ref();
    if let Some((reason, message)) = &decision.degraded
        && degraded_message(previous) != Some(message.as_str())
    {
        plan.events.push(Note {
            warning: true,
            reason: (*reason).into(),
            action: "Reconcile".into(),
            note: message.clone(),
        });
    }
    let new_status = status::from_decision(
        &owner.name,
        gsvc.metadata.generation,
        previous,
        spec.replicas,
        &observation.deployment,
        &decision,
        now,
    );
    plan.status = status::needs_write(previous, &new_status).then_some(new_status);
    Ok(plan)
}

/// The plan for a GracefulService the operator will not act on: a Degraded status and, the first
/// time for this generation and text, a Warning Event. No child is touched.
pub fn refuse(gsvc: &GracefulService, refusal: Refusal, problems: &str, now: Timestamp) -> Plan {
    let previous = gsvc.status.as_ref();
    let already_reported = previous
        .is_some_and(|s| s.observed_generation == gsvc.metadata.generation)
        && degraded_message(previous) == Some(problems);
    let events = match already_reported {
        true => Vec::new(),
        false => vec![Note {
            warning: true,
            reason: refusal.reason().into(),
            action: "Reconcile".into(),
            note: problems.into(),
        }],
    };
    let name = gsvc.metadata.name.as_deref().unwrap_or_default();
    let new_status = status::refused(
        name,
        gsvc.metadata.generation,
        previous,
        refusal,
        problems,
        now,
    );
    Plan {
        refusal: Some(refusal),
        events,
        status: status::needs_write(previous, &new_status).then_some(new_status),
        requeue_after: match refusal {
            Refusal::InvalidSpec => REFUSED_REQUEUE,
            Refusal::ChildConflict => CONFLICT_REQUEUE,
        },
        ..Plan::default()
    }
}

/// Why `live` (the object holding a child's name) is not the owner's to change, or None when the
/// owner controls it (or it does not exist).
pub fn conflict<K: Resource<DynamicType = ()>>(owner: &Owner, live: Option<&K>) -> Option<String> {
    let meta = live?.meta();
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    if refs
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == owner.reference.uid)
    {
        return None;
    }
    let holder = match refs.iter().find(|r| r.controller == Some(true)) {
        Some(r) => format!("is controlled by {} {}", r.kind, r.name),
        None => {
            let managers: Vec<&str> = meta
                .managed_fields
                .iter()
                .flatten()
                .filter_map(|m| m.manager.as_deref())
                .collect();
            match managers.is_empty() {
                true => "has no controller".to_string(),
                false => format!("has no controller (managed by {})", managers.join(", ")),
            }
        }
    };
    Some(format!(
        "{} {}/{} already exists and {holder}; it is left unchanged",
        K::kind(&()),
        owner.namespace,
        owner.name
    ))
}

/// `desired` when it must be applied over `live`, per [`LastApplied::needs_apply`].
fn needed<K>(memory: &LastApplied, desired: K, live: Option<&K>) -> Option<K>
where
    K: Resource<DynamicType = ()> + serde::Serialize,
{
    memory
        .needs_apply(&child_key(&desired), &desired, live)
        .then_some(desired)
}

fn step_note(step: Step, target: i32) -> Note {
    let what = match step.kind {
        StepKind::Drain => String::new(),
        StepKind::Unready => format!(", removing {} unready pod(s)", step.from - step.to),
    };
    Note {
        warning: false,
        reason: "ScaleDownStep".into(),
        action: format!("ScaleDown{}To{}", step.from, step.to),
        note: format!(
            "Deployment replicas {} -> {} (target {target}){what}",
            step.from, step.to
        ),
    }
}

/// The message of a True Degraded condition in `status`.
fn degraded_message(status: Option<&GracefulServiceStatus>) -> Option<&str> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == status::DEGRADED && c.status == "True")
        .map(|c| c.message.as_str())
}

fn secs(seconds: i32) -> Duration {
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
