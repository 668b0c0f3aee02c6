//! How a pod shuts down: who carries out the drain, and its timing.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::defaults;

/// Who carries out the drain protocol inside the pod.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum ShutdownMode {
    /// The app implements the admin contract (docs/architecture.md): the preStop hook calls its
    /// admin listener, probes read its admin endpoints, the idlest pod is found from its metrics.
    #[default]
    Admin,
    /// For apps that drain on SIGTERM but have no admin listener: the preStop hook sleeps for the
    /// drain delay (the kubelet's own sleep action) and the probes check the main port over TCP.
    Sleep,
    /// For apps that know nothing of the protocol (they may exit at once on SIGTERM): a drain
    /// proxy runs as a native sidecar in front of the app's main port, the Service targets the
    /// proxy, and the app's preStop hook makes the proxy drain (readiness off, hold, wait for the
    /// requests in flight to the app) before the kubelet sends the app SIGTERM.
    Sidecar,
}

/// Timing of a pod's shutdown.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.terminationGracePeriodSeconds > self.drainDelaySeconds + self.maxRequestSeconds").message("shutdown.terminationGracePeriodSeconds must exceed drainDelaySeconds + maxRequestSeconds"))]
pub struct ShutdownSpec {
    /// Who carries out the drain: `Admin` (default, the app's admin listener), `Sleep` or
    /// `Sidecar`.
    #[serde(default)]
    pub mode: ShutdownMode,
    /// `Sidecar` mode: image of the drain proxy; the bundled app's image of this operator's
    /// version when absent (it carries `graceful-drain-proxy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub proxy_image: Option<String>,
    /// `Sidecar` mode: CPU and memory requests and limits of the drain proxy container. Set a CPU
    /// request: without one the proxy's cgroup weighs 2 against the app's request inside the pod,
    /// and a busy app starves the proxy that carries every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_resources: Option<ResourceRequirements>,
    /// How long the preStop hook holds after flipping readiness, so every proxy drops the endpoint first.
    #[serde(default = "defaults::drain_delay")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_delay_seconds: i32,
    /// Duration of the longest request the app serves; in-flight requests get this long to finish.
    #[serde(default = "defaults::max_request")]
    #[schemars(range(min = 1, max = 3600))]
    pub max_request_seconds: i32,
    /// The pod's termination grace period; covers the drain delay plus the longest request.
    #[serde(default = "defaults::grace")]
    #[schemars(range(min = 1, max = 7200))]
    pub termination_grace_period_seconds: i32,
}
