//! The setups under test, as Kubernetes objects: the graceful one (a GracefulService the
//! operator turns into a Deployment, Service and PDB), the sidecar one (a GracefulService in
//! `Sidecar` mode running the same app made naive: it exits at once on SIGTERM) and the naive
//! twin (a plain Deployment of the same app with no preStop hook and no readiness probe, and a
//! NodePort Service).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, PodSpec, PodTemplateSpec, ResourceRequirements, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

/// The app's image repository; on a testbed each tag is a rebuilt image of the same binary, so
/// a new tag is a real rollout of the same program.
pub const APP_IMAGE_REPO: &str = "ghcr.io/graceful-dev/graceful-app";
/// Name of the workload in both setups (each setup runs in its own namespace).
pub const WORKLOAD: &str = "hello";
/// The app's main port (the architecture's default).
pub const APP_PORT: i32 = 8080;
/// Field manager of every write the experiment makes.
pub const FIELD_MANAGER: &str = "graceful-experiment";

/// What both setups run: same image, same handler time.
#[derive(Debug, Clone)]
pub struct AppSpec {
    pub replicas: i32,
    pub tag: String,
    /// The handler's artificial work time (`GRACEFUL_WORK_MS`).
    pub work_ms: u64,
    /// `spec.scaleDown.preferIdlePods` of the GracefulService (the naive setup ignores it).
    pub prefer_idle_pods: bool,
}

impl AppSpec {
    pub fn image(&self) -> String {
        format!("{APP_IMAGE_REPO}:{}", self.tag)
    }

    fn env(&self) -> Vec<EnvVar> {
        vec![EnvVar {
            name: "GRACEFUL_WORK_MS".into(),
            value: Some(self.work_ms.to_string()),
            ..EnvVar::default()
        }]
    }
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), WORKLOAD.to_string())])
}

/// Both setups' app container requests CPU, as a production service does. Without a request a pod
/// is BestEffort, and its cgroup weighs 2 against a Burstable sibling's 51 or more (the operator's
/// pod, on one node): whenever that node's other pods are busy, as in the first seconds of a
/// rollout, its best-effort app pods wait for the CPU and the requests they hold wait with them.
pub fn app_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_string(), Quantity("100m".into())),
                ("memory".to_string(), Quantity("32Mi".into())),
            ]
            .into(),
        ),
        ..ResourceRequirements::default()
    }
}

/// The naive Deployment: the post's starting point. No preStop hook, no readiness probe, the
/// default grace period: the pod is removed from the Service at the same moment it gets SIGTERM,
/// and a new pod counts as ready as soon as its process runs.
pub fn naive_deployment(namespace: &str, app: &AppSpec) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some(WORKLOAD.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels()),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(app.replicas),
            selector: LabelSelector {
                match_labels: Some(labels()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some(app.image()),
                        env: Some(app.env()),
                        ports: Some(vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: APP_PORT,
                            ..ContainerPort::default()
                        }]),
                        resources: Some(app_resources()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The naive setup's Service: NodePort, node port chosen by the API server.
pub fn naive_service(namespace: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(WORKLOAD.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("NodePort".into()),
            selector: Some(labels()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::Int(APP_PORT)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The graceful setup: a GracefulService with a NodePort Service; everything else (preStop hold,
/// readiness probe, grace period, stepped scale-down) is the operator's defaults, which is what a
/// user gets, except `preferIdlePods`, which the experiment can turn off to measure it.
pub fn graceful_service(namespace: &str, app: &AppSpec) -> serde_json::Value {
    json!({
        "apiVersion": "graceful.dev/v1alpha1",
        "kind": "GracefulService",
        "metadata": { "name": WORKLOAD, "namespace": namespace },
        "spec": {
            "replicas": app.replicas,
            "image": app.image(),
            "env": [{ "name": "GRACEFUL_WORK_MS", "value": app.work_ms.to_string() }],
            "resources": app_resources(),
            "service": { "type": "NodePort" },
            "scaleDown": { "preferIdlePods": app.prefer_idle_pods },
        }
    })
}

/// The sidecar setup: the same app turned into one that knows nothing of the protocol (it exits
/// at once on SIGTERM; its admin listener moved off the proxy's port and unused), behind the
/// drain proxy of `Sidecar` mode.
pub fn sidecar_service(namespace: &str, app: &AppSpec) -> serde_json::Value {
    let mut gsvc = graceful_service(namespace, app);
    gsvc["spec"]["shutdown"] = json!({ "mode": "Sidecar", "proxyResources": app_resources() });
    gsvc["spec"]["args"] = json!(["--shutdown-mode", "immediate", "--admin-port", "9091"]);
    gsvc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppSpec {
        AppSpec {
            replicas: 10,
            tag: "v1".into(),
            work_ms: 1000,
            prefer_idle_pods: true,
        }
    }

    #[test]
    fn naive_deployment_has_no_prestop_and_no_readiness_probe() {
        let d = naive_deployment("ns", &app());
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(10));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert!(c.lifecycle.is_none());
        assert!(c.readiness_probe.is_none());
        assert_eq!(
            c.image.as_deref(),
            Some("ghcr.io/graceful-dev/graceful-app:v1")
        );
        assert_eq!(c.env.as_ref().unwrap()[0].value.as_deref(), Some("1000"));
    }

    #[test]
    fn both_setups_run_the_same_image_and_handler() {
        let g = graceful_service("ns", &app());
        assert_eq!(g["spec"]["image"], "ghcr.io/graceful-dev/graceful-app:v1");
        assert_eq!(g["spec"]["env"][0]["value"], "1000");
        let s = sidecar_service("ns", &app());
        assert_eq!(s["spec"]["image"], g["spec"]["image"]);
        assert_eq!(s["spec"]["shutdown"]["mode"], "Sidecar");
        assert_eq!(s["spec"]["args"][1], "immediate");
        assert_eq!(
            naive_service("ns").spec.unwrap().type_.as_deref(),
            Some("NodePort")
        );
    }
}
