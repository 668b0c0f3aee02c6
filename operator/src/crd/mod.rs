//! The `GracefulService` custom resource: spec, status and the schema rules the API server enforces.
//!
//! Everything the API server can check on its own (ranges, enums, cross-field CEL rules) lives here as
//! schema; what it cannot check lives in [`crate::validation`].

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

mod defaults;
mod pod;
mod ports;
mod shutdown;

pub use pod::{
    APP_CONTAINER, PodSpecOverlay, PodTemplateOverlay, ProbeTiming, ProbesSpec, ReadinessProbeSpec,
    TemplateMetadata,
};
pub use ports::{AppProtocol, PortsSpec};
pub use shutdown::{ShutdownMode, ShutdownSpec};

/// API group of the resource.
pub const GROUP: &str = "graceful.dev";
/// Image of the bundled app, used when the spec names none.
pub const DEFAULT_IMAGE: &str = "ghcr.io/graceful-dev/graceful-app:0.1.0";

/// Desired state of a GracefulService: an HTTP service that loses no request on rollout or scale-down.
// The repeated `printcolumn(type_ = ...)` keys are separate columns, not duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "graceful.dev",
    version = "v1alpha1",
    // The storage version, said explicitly: a second version (v1beta1) will be added with
    // storage = false first (docs/api-versions.md).
    storage = true,
    served = true,
    kind = "GracefulService",
    plural = "gracefulservices",
    shortname = "gsvc",
    category = "graceful",
    namespaced,
    status = "GracefulServiceStatus",
    derive = "PartialEq",
    doc = "A GracefulService runs an HTTP app as a Deployment, Service and PodDisruptionBudget, and scales it down one settled step at a time.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Replicas asked for"
    ),
    printcolumn(
        name = "Step Target",
        type_ = "integer",
        json_path = ".status.stepTarget",
        description = "Replicas of the current scale-down step"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready pods"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Stable, RollingOut, ScalingDown or Degraded"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.resources) || !has(self.template) || !has(self.template.spec) || !has(self.template.spec.containers) || !self.template.spec.containers.exists(c, c.name == 'app' && has(c.resources))").message("set the app container's resources in spec.resources or in template container 'app', not both"))]
pub struct GracefulServiceSpec {
    /// Number of pods wanted. Scale-up goes straight there; scale-down walks there in settled steps.
    #[serde(default = "defaults::replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Container image; its repository decides which program runs.
    #[serde(default = "defaults::image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Arguments passed to the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment variables; the GRACEFUL_* variables the operator sets are reserved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// CPU and memory requests and limits of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Ports the app listens on.
    #[serde(default)]
    pub ports: PortsSpec,
    /// HTTP paths on the admin port.
    #[serde(default)]
    pub paths: PathsSpec,
    /// How the Service exposes the main port.
    #[serde(default)]
    pub service: ServiceSpec,
    /// Timing of a pod's shutdown.
    #[serde(default)]
    pub shutdown: ShutdownSpec,
    /// Rolling-update settings of the Deployment.
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// How scale-down proceeds.
    #[serde(default)]
    pub scale_down: ScaleDownSpec,
    /// Timing of the readiness, liveness and startup probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<ProbesSpec>,
    /// A partial pod template merged over the generated one: service account, security
    /// context, scheduling, volumes, extra containers, pod labels and annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplateOverlay>,
}

/// Admin endpoints of the app.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PathsSpec {
    /// Path the preStop hook calls; it flips readiness and holds for the drain delay.
    #[serde(default = "defaults::prestop_path")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("paths.preStop must start with '/'"))]
    pub pre_stop: String,
    /// Path of the readiness probe.
    #[serde(default = "defaults::readiness_path")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("paths.readiness must start with '/'"))]
    pub readiness: String,
    /// Path of the liveness probe.
    #[serde(default = "defaults::liveness_path")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("paths.liveness must start with '/'"))]
    pub liveness: String,
}

/// Kind of Service in front of the pods.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also reachable on a port of every node.
    NodePort,
}

/// The Service's shape.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'NodePort' || !has(self.nodePort)").message("service.nodePort is only allowed with service.type NodePort"))]
pub struct ServiceSpec {
    /// ClusterIP (default) or NodePort.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Fixed node port (30000-32767) for type NodePort; picked by the API server when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub node_port: Option<i32>,
}

/// Rolling-update settings of the Deployment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!((type(self.maxSurge) == string ? self.maxSurge == '0%' : self.maxSurge == 0) && (type(self.maxUnavailable) == string ? self.maxUnavailable == '0%' : self.maxUnavailable == 0))").message("rollout.maxSurge and rollout.maxUnavailable must not both be 0"))]
pub struct RolloutSpec {
    /// Pods created above the desired count during a rollout (number or percentage).
    #[serde(default = "defaults::max_surge")]
    pub max_surge: IntOrString,
    /// Pods allowed to be unavailable during a rollout (number or percentage).
    #[serde(default = "defaults::max_unavailable")]
    pub max_unavailable: IntOrString,
    /// Seconds a new pod must be ready before it counts as available.
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub min_ready_seconds: i32,
}

/// How scale-down proceeds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDownSpec {
    /// Pods removed per step: a count (`3`) or a percentage of the replicas the step starts
    /// from (`"10%"`: 100 pods at 1000 replicas, 10 at 100; rounded up, at least 1 pod).
    #[serde(default = "defaults::step_size")]
    #[x_kube(validation = Rule::new("type(self) == int ? self >= 1 : self.matches('^([1-9][0-9]?|100)%$')").message(crate::planner::STEP_SIZE_RULE))]
    pub step_size: IntOrString,
    /// Minimum seconds between two steps, on top of waiting for the previous step to settle.
    #[serde(default)]
    #[schemars(range(min = 0, max = 86400))]
    pub min_step_interval_seconds: i32,
    /// A step not settled after this many seconds marks the resource Degraded.
    #[serde(default = "defaults::step_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub step_timeout_seconds: i32,
    /// Before each step, read every pod's requests in flight from the app's /metrics and give the
    /// idlest pods the lowest `controller.kubernetes.io/pod-deletion-cost`, so the ReplicaSet
    /// controller removes them. Best effort: a pod whose metrics cannot be read counts as busy.
    #[serde(default = "defaults::prefer_idle_pods")]
    pub prefer_idle_pods: bool,
}

/// Phase shown in `kubectl get gsvc`.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum Phase {
    /// Deployment settled at the desired replicas.
    #[default]
    Stable,
    /// Pods are being created or replaced.
    RollingOut,
    /// Replicas are being removed step by step.
    ScalingDown,
    /// Something needs a human: invalid spec, a step or rollout that does not settle.
    Degraded,
}

/// Observed state, written by the operator only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GracefulServiceStatus {
    /// metadata.generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods of the Deployment (not terminating).
    #[serde(default)]
    pub replicas: i32,
    /// Ready pods of the Deployment.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Replicas the Deployment is set to now: the current step of a scale-down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_target: Option<i32>,
    /// Label selector of the pods, as a string, for the scale subresource and HorizontalPodAutoscalers.
    #[serde(default)]
    pub selector: String,
    /// Summary of the state.
    #[serde(default)]
    pub phase: Phase,
    /// Available, Progressing, Degraded and ScalingDown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the last scale-down step was applied; the minimum interval and step timeout count from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_step_time: Option<Time>,
}

impl ShutdownSpec {
    /// Bound the app gets for its drain after SIGTERM: what is left of the grace period after the
    /// preStop hold, minus one second of margin so the kubelet's SIGKILL never cuts a response.
    pub fn app_shutdown_timeout_ms(&self) -> i64 {
        let seconds = i64::from(self.termination_grace_period_seconds)
            - i64::from(self.drain_delay_seconds)
            - 1;
        seconds.max(0) * 1000
    }
}

/// Labels shared by every object the operator creates for `name`.
pub fn common_labels(name: &str) -> std::collections::BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name".to_string(), name.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            crate::FIELD_MANAGER.to_string(),
        ),
    ]
    .into_iter()
    .collect()
}

/// The pod selector for `name`.
pub fn selector_labels(name: &str) -> std::collections::BTreeMap<String, String> {
    [(SELECTOR_KEY.to_string(), name.to_string())]
        .into_iter()
        .collect()
}

/// Label key of the pod selector.
pub const SELECTOR_KEY: &str = "graceful.dev/service";
/// Label key naming the owning GracefulService on everything the operator creates.
pub const NAME_KEY: &str = "app.kubernetes.io/name";
/// Label selector matching everything the operator manages.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=graceful-operator";

/// Largest CRD, as compact JSON, that client-side `kubectl apply` can apply: it stores the whole
/// object in the `kubectl.kubernetes.io/last-applied-configuration` annotation, which the API
/// server caps at 256 KiB for all annotations together.
pub const MAX_CRD_JSON_BYTES: usize = 256 * 1024;

/// The CustomResourceDefinition as published (crds/ and the chart). The embedded Kubernetes types
/// under `spec.template` (containers, volumes, affinity ...) carry their upstream descriptions
/// only at the first level: their nested descriptions alone would take the CRD past
/// [`MAX_CRD_JSON_BYTES`], the trim controller-gen users know as `maxDescLen=0`. `kubectl explain`
/// still documents every field of this resource's own types.
pub fn definition() -> Result<
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    serde_json::Error,
> {
    use kube::CustomResourceExt;
    let mut crd = serde_json::to_value(GracefulService::crd())?;
    if let Some(versions) = crd
        .pointer_mut("/spec/versions")
        .and_then(|v| v.as_array_mut())
    {
        for version in versions {
            let fields = version.pointer_mut(
                "/schema/openAPIV3Schema/properties/spec/properties/template/properties/spec/properties",
            );
            for field in fields.and_then(|f| f.as_object_mut()).into_iter().flatten() {
                for (key, child) in field.1.as_object_mut().into_iter().flatten() {
                    if key != "description" {
                        drop_descriptions(child);
                    }
                }
            }
        }
    }
    serde_json::from_value(crd)
}

/// Removes every schema `description` below `schema`. Only a `description` whose value is a
/// string is a schema's own: a property *named* description (an object) stays.
fn drop_descriptions(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(map) => {
            if map.get("description").is_some_and(|d| d.is_string()) {
                map.remove("description");
            }
            map.values_mut().for_each(drop_descriptions);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_descriptions),
        _ => {}
    }
}
