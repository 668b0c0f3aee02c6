//! The Deployment running the app, wired to the app's contract (docs/architecture.md).

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::{Owner, overlay, pod};
use crate::crd::{GracefulServiceSpec, common_labels, selector_labels};
use crate::planner::StepClock;

/// Annotation on the Deployment: when the walk in progress began (RFC 3339).
pub const WALK_STARTED: &str = "graceful.dev/walk-started";
/// Annotation on the Deployment: when the walk's last step was applied (RFC 3339). Written by
/// the same apply that lowers `spec.replicas`, so the step and its time are one write.
pub const LAST_STEP: &str = "graceful.dev/last-step";

/// The Deployment for `spec` at `replicas` (the current step, not necessarily `spec.replicas`),
/// carrying the walk's `clock` and the GracefulService's preStop `token`.
pub fn build(
    owner: &Owner,
    spec: &GracefulServiceSpec,
    replicas: i32,
    clock: &StepClock,
    token: &str,
) -> Result<Deployment, serde_json::Error> {
    let mut pod_labels = common_labels(&owner.name);
    pod_labels.extend(selector_labels(&owner.name));
    let mut metadata = owner.child_meta();
    let stamps: std::collections::BTreeMap<String, String> = [
        (WALK_STARTED, clock.walk_started),
        (LAST_STEP, clock.last_step),
    ]
    .into_iter()
    .filter_map(|(key, at)| Some((key.to_string(), at?.to_string())))
    .collect();
    metadata.annotations = (!stamps.is_empty()).then_some(stamps);
    let generated = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            ..ObjectMeta::default()
        }),
        spec: Some(pod::spec(spec, token)),
    };
    let template = overlay::apply(generated, spec.template.as_ref())?;
    Ok(Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&owner.name)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(spec.rollout.max_surge.clone()),
                    max_unavailable: Some(spec.rollout.max_unavailable.clone()),
                }),
            }),
            // Left out at 0: the API server omits a zero minReadySeconds, so the drift check
            // (`crate::drift`) would otherwise see a difference on every reconcile.
            min_ready_seconds: (spec.rollout.min_ready_seconds != 0)
                .then_some(spec.rollout.min_ready_seconds),
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
#[path = "deployment_tests.rs"]
mod tests;
