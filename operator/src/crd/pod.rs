//! The parts of the spec that shape the pod beyond the protocol: the pod template a user merges
//! over the generated one, and the probes' timing.
//!
//! The protocol owns a few fields (the preStop hook, the probes' targets, the grace period, the
//! selector labels, the app container's image, args, env and ports). A template that sets one of
//! them is refused by the schema with a message naming the spec field to use instead, so nothing
//! a user writes is silently overwritten.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, LocalObjectReference, PodSecurityContext, Toleration,
    TopologySpreadConstraint, Volume,
};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Name of the app container, also the name a template entry uses to add to it.
pub const APP_CONTAINER: &str = "app";

/// Most containers (or init containers) a template may add: bounds the cost of the schema's
/// rules, and no pod needs more.
const MAX_CONTAINERS: usize = 16;

/// A partial pod template, merged over the one the operator generates: maps are merged key by
/// key, lists of named items (containers, init containers, volumes, volume mounts, image pull
/// secrets) item by item on `name`, other fields replaced. An entry of `spec.containers` named
/// `app` adds to the app container; other entries are extra containers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverlay {
    /// Labels and annotations added to every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// Pod spec fields merged over the generated pod spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PodSpecOverlay>,
}

/// Labels and annotations of the pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Labels added to every pod. The operator's own (`graceful.dev/service`,
    /// `app.kubernetes.io/name`, `app.kubernetes.io/managed-by`) are owned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!('graceful.dev/service' in self) && !('app.kubernetes.io/name' in self) && !('app.kubernetes.io/managed-by' in self)").message("template.metadata.labels must not set graceful.dev/service, app.kubernetes.io/name or app.kubernetes.io/managed-by: the operator selects and tracks its pods by them"))]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations added to every pod. `controller.kubernetes.io/pod-deletion-cost` is owned:
    /// the operator marks the idlest pod with it before each scale-down step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!('controller.kubernetes.io/pod-deletion-cost' in self)").message("template.metadata.annotations must not set controller.kubernetes.io/pod-deletion-cost: the operator sets it on the idlest pod before each scale-down step"))]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Pod spec fields a GracefulService may set; the rest of the pod spec is generated.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecOverlay {
    /// Service account the pods run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Whether the service account's token is mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
    /// Secrets to pull the images with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// Pod security context, merged field by field over the generated one (non-root, seccomp
    /// RuntimeDefault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// Node labels the pods must run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Node and pod affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// How the pods spread over zones and nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// Priority class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Runtime class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
    /// Volumes of the pod, for the containers' volume mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,
    /// Init containers, native sidecars (`restartPolicy: Always`) included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_CONTAINERS))]
    pub init_containers: Option<Vec<Container>>,
    /// Extra containers, and additions to the app container under the name `app`
    /// (securityContext, volumeMounts, envFrom, resources, command ...). The app container's
    /// image, args, env, ports, lifecycle and probes are owned: set them through spec.image,
    /// spec.args, spec.env, spec.ports, spec.shutdown and spec.probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_CONTAINERS))]
    #[x_kube(
        validation = Rule::new("self.all(c, c.name != 'app' || (!has(c.image) && !has(c.args) && !has(c.env) && !has(c.ports)))").message("template container 'app' must not set image, args, env or ports: use spec.image, spec.args, spec.env and spec.ports"),
        validation = Rule::new("self.all(c, c.name != 'app' || (!has(c.lifecycle) && !has(c.readinessProbe) && !has(c.livenessProbe) && !has(c.startupProbe)))").message("template container 'app' must not set lifecycle or probes: the operator owns the preStop hook and the probes (tune them in spec.probes and spec.shutdown)"),
        validation = Rule::new("self.all(c, c.name == 'app' || has(c.image))").message("template containers other than 'app' need an image"),
    )]
    pub containers: Option<Vec<Container>>,
    /// Owned: the grace period follows spec.shutdown. Present in the schema only so that setting
    /// it is refused with a message instead of being dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("false").message("template.spec.terminationGracePeriodSeconds is owned: set spec.shutdown.terminationGracePeriodSeconds"))]
    pub termination_grace_period_seconds: Option<i64>,
}

/// Timing of the readiness probe. Unset fields keep the defaults (every second, one failure
/// takes the pod out, one success puts it back, 1 s timeout).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessProbeSpec {
    /// Seconds between probes (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub period_seconds: Option<i32>,
    /// Seconds a probe may take (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: Option<i32>,
    /// Failures in a row that make the pod unready (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: Option<i32>,
    /// Successes in a row that make it ready again (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: Option<i32>,
}

/// Timing of the liveness or startup probe. Unset fields keep the defaults.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProbeTiming {
    /// Seconds between probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub period_seconds: Option<i32>,
    /// Seconds a probe may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: Option<i32>,
    /// Failures in a row that restart the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: Option<i32>,
}

/// The probes' timing; their targets follow spec.paths and spec.shutdown.mode.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProbesSpec {
    /// Readiness: decides when a new pod joins the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ReadinessProbeSpec>,
    /// Liveness (default every 10 s, 2 s timeout, restart after 3 failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbeTiming>,
    /// Startup probe on the liveness target, for apps slow to start; absent by default. Liveness
    /// waits until it succeeds (defaults: every 1 s, up to 300 failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<ProbeTiming>,
}
