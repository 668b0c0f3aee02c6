//! Default values of the spec: what an empty `spec: {}` means. The serde defaults here are also
//! written into the CRD schema, so the API server applies them too.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    AppProtocol, DEFAULT_IMAGE, GracefulServiceSpec, PathsSpec, PortsSpec, RolloutSpec,
    ScaleDownSpec, ServiceSpec, ShutdownSpec,
};

pub(super) fn replicas() -> i32 {
    1
}
pub(super) fn image() -> String {
    DEFAULT_IMAGE.to_string()
}
pub(super) fn main_port() -> i32 {
    8080
}
pub(super) fn admin_port() -> i32 {
    9090
}
pub(super) fn proxy_port() -> i32 {
    15080
}
pub(super) fn prestop_path() -> String {
    "/prestop".to_string()
}
pub(super) fn readiness_path() -> String {
    "/readyz".to_string()
}
pub(super) fn liveness_path() -> String {
    "/livez".to_string()
}
pub(super) fn drain_delay() -> i32 {
    5
}
pub(super) fn max_request() -> i32 {
    10
}
pub(super) fn grace() -> i32 {
    30
}
pub(super) fn max_surge() -> IntOrString {
    IntOrString::String("25%".to_string())
}
pub(super) fn max_unavailable() -> IntOrString {
    IntOrString::Int(0)
}
pub(super) fn step_size() -> IntOrString {
    IntOrString::Int(1)
}
pub(super) fn step_timeout() -> i32 {
    300
}
pub(super) fn prefer_idle_pods() -> bool {
    true
}

impl Default for PortsSpec {
    fn default() -> Self {
        Self {
            main: main_port(),
            admin: admin_port(),
            proxy: proxy_port(),
            app_protocol: AppProtocol::default(),
        }
    }
}

impl Default for PathsSpec {
    fn default() -> Self {
        Self {
            pre_stop: prestop_path(),
            readiness: readiness_path(),
            liveness: liveness_path(),
        }
    }
}

impl Default for ShutdownSpec {
    fn default() -> Self {
        Self {
            mode: super::ShutdownMode::default(),
            proxy_image: None,
            proxy_resources: None,
            drain_delay_seconds: drain_delay(),
            max_request_seconds: max_request(),
            termination_grace_period_seconds: grace(),
        }
    }
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            max_surge: max_surge(),
            max_unavailable: max_unavailable(),
            min_ready_seconds: 0,
        }
    }
}

impl Default for ScaleDownSpec {
    fn default() -> Self {
        Self {
            step_size: step_size(),
            min_step_interval_seconds: 0,
            step_timeout_seconds: step_timeout(),
            prefer_idle_pods: prefer_idle_pods(),
        }
    }
}

impl Default for GracefulServiceSpec {
    fn default() -> Self {
        Self {
            replicas: replicas(),
            image: image(),
            args: Vec::new(),
            env: Vec::new(),
            resources: None,
            ports: PortsSpec::default(),
            paths: PathsSpec::default(),
            service: ServiceSpec::default(),
            shutdown: ShutdownSpec::default(),
            rollout: RolloutSpec::default(),
            scale_down: ScaleDownSpec::default(),
            probes: None,
            template: None,
        }
    }
}
