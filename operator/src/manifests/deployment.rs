//! The Deployment running the app, wired to the app's contract (docs/architecture.md).

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, HTTPGetAction, Lifecycle, LifecycleHandler, PodSpec,
    PodTemplateSpec, Probe,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Owner;
use crate::crd::{GracefulServiceSpec, common_labels, selector_labels};
use crate::planner::StepClock;

/// Name of the app container.
pub const CONTAINER_NAME: &str = "app";
/// Port name of the main listener.
pub const MAIN_PORT_NAME: &str = "http";
/// Port name of the admin listener.
pub const ADMIN_PORT_NAME: &str = "admin";
/// Environment variables the operator sets; a spec may not set them itself.
pub const RESERVED_ENV: [&str; 4] = [
    "GRACEFUL_PORT",
    "GRACEFUL_ADMIN_PORT",
    "GRACEFUL_DRAIN_DELAY_MS",
    "GRACEFUL_SHUTDOWN_TIMEOUT_MS",
];

/// Annotation on the Deployment: when the walk in progress began (RFC 3339).
pub const WALK_STARTED: &str = "graceful.dev/walk-started";
/// Annotation on the Deployment: when the walk's last step was applied (RFC 3339). Written by
/// the same apply that lowers `spec.replicas`, so the step and its time are one write.
pub const LAST_STEP: &str = "graceful.dev/last-step";

/// The Deployment for `spec` at `replicas` (the current step, not necessarily `spec.replicas`),
/// carrying the walk's `clock`.
pub fn build(
    owner: &Owner,
    spec: &GracefulServiceSpec,
    replicas: i32,
    clock: &StepClock,
) -> Deployment {
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
    Deployment {
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
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    termination_grace_period_seconds: Some(i64::from(
                        spec.shutdown.termination_grace_period_seconds,
                    )),
                    containers: vec![container(spec)],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn container(spec: &GracefulServiceSpec) -> Container {
    let admin = IntOrString::String(ADMIN_PORT_NAME.to_string());
    let http_get = |path: &str| HTTPGetAction {
        path: Some(path.to_string()),
        port: admin.clone(),
        ..HTTPGetAction::default()
    };
    Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(spec.image.clone()),
        args: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: Some(env(spec)),
        resources: spec.resources.clone(),
        ports: Some(vec![
            ContainerPort {
                name: Some(MAIN_PORT_NAME.to_string()),
                container_port: spec.ports.main,
                protocol: Some("TCP".to_string()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(ADMIN_PORT_NAME.to_string()),
                container_port: spec.ports.admin,
                protocol: Some("TCP".to_string()),
                ..ContainerPort::default()
            },
        ]),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                http_get: Some(http_get(&spec.paths.pre_stop)),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        // Readiness is polled every second so a pod joins (and, on failure, leaves) the endpoints
        // fast; draining does not depend on it because a terminating endpoint is never ready.
        readiness_probe: Some(Probe {
            http_get: Some(http_get(&spec.paths.readiness)),
            period_seconds: Some(1),
            failure_threshold: Some(1),
            success_threshold: Some(1),
            timeout_seconds: Some(1),
            ..Probe::default()
        }),
        liveness_probe: Some(Probe {
            http_get: Some(http_get(&spec.paths.liveness)),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            timeout_seconds: Some(2),
            ..Probe::default()
        }),
        ..Container::default()
    }
}

/// The user's variables first, then the contract variables, which therefore win.
fn env(spec: &GracefulServiceSpec) -> Vec<EnvVar> {
    let contract = [
        ("GRACEFUL_PORT", spec.ports.main.to_string()),
        ("GRACEFUL_ADMIN_PORT", spec.ports.admin.to_string()),
        (
            "GRACEFUL_DRAIN_DELAY_MS",
            (i64::from(spec.shutdown.drain_delay_seconds) * 1000).to_string(),
        ),
        (
            "GRACEFUL_SHUTDOWN_TIMEOUT_MS",
            spec.shutdown.app_shutdown_timeout_ms().to_string(),
        ),
    ];
    spec.env
        .iter()
        .filter(|var| !RESERVED_ENV.contains(&var.name.as_str()))
        .cloned()
        .chain(contract.into_iter().map(|(name, value)| EnvVar {
            name: name.to_string(),
            value: Some(value),
            value_from: None,
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::test_owner;
    use proptest::prelude::*;

    fn env_value(d: &Deployment, name: &str) -> Option<String> {
        let c = &d.spec.as_ref()?.template.spec.as_ref()?.containers[0];
        c.env
            .as_ref()?
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.value.clone())
    }

    #[test]
    fn defaults_follow_the_app_contract() {
        let d = build(
            &test_owner("web"),
            &GracefulServiceSpec::default(),
            3,
            &StepClock::default(),
        );
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(
            spec.selector.match_labels.as_ref().unwrap()["graceful.dev/service"],
            "web"
        );
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(30));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some(crate::crd::DEFAULT_IMAGE));
        let pre_stop = c.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
        let get = pre_stop.http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some("/prestop"));
        assert_eq!(get.port, IntOrString::String("admin".into()));
        assert_eq!(env_value(&d, "GRACEFUL_PORT").as_deref(), Some("8080"));
        assert_eq!(
            env_value(&d, "GRACEFUL_ADMIN_PORT").as_deref(),
            Some("9090")
        );
        assert_eq!(
            env_value(&d, "GRACEFUL_DRAIN_DELAY_MS").as_deref(),
            Some("5000")
        );
        // 30 s grace - 5 s drain - 1 s margin
        assert_eq!(
            env_value(&d, "GRACEFUL_SHUTDOWN_TIMEOUT_MS").as_deref(),
            Some("24000")
        );
        let owners = d.metadata.owner_references.as_ref().unwrap();
        assert_eq!(owners[0].controller, Some(true));
        let labels = d.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "graceful-operator");
    }

    #[test]
    fn user_env_cannot_override_contract_variables() {
        let spec = GracefulServiceSpec {
            env: vec![
                EnvVar {
                    name: "GRACEFUL_PORT".into(),
                    value: Some("1".into()),
                    value_from: None,
                },
                EnvVar {
                    name: "EXTRA".into(),
                    value: Some("x".into()),
                    value_from: None,
                },
            ],
            ..GracefulServiceSpec::default()
        };
        let d = build(&test_owner("web"), &spec, 1, &StepClock::default());
        assert_eq!(env_value(&d, "GRACEFUL_PORT").as_deref(), Some("8080"));
        assert_eq!(env_value(&d, "EXTRA").as_deref(), Some("x"));
    }

    #[test]
    fn the_clock_rides_on_annotations() {
        let at: k8s_openapi::jiff::Timestamp = "2026-12-02T10:00:00.5Z".parse().unwrap();
        let clock = StepClock {
            walk_started: Some(at),
            last_step: None,
        };
        let d = build(
            &test_owner("web"),
            &GracefulServiceSpec::default(),
            3,
            &clock,
        );
        let notes = d.metadata.annotations.unwrap();
        assert_eq!(notes[WALK_STARTED], "2026-12-02T10:00:00.5Z");
        assert!(!notes.contains_key(LAST_STEP));
        let d = build(
            &test_owner("web"),
            &GracefulServiceSpec::default(),
            3,
            &StepClock::default(),
        );
        assert_eq!(d.metadata.annotations, None);
    }

    proptest! {
        #[test]
        fn shutdown_timeout_fits_inside_the_grace_period(
            drain in 0i32..100, max_request in 1i32..100, extra in 1i32..100, replicas in 0i32..500,
        ) {
            let mut spec = GracefulServiceSpec::default();
            spec.shutdown.drain_delay_seconds = drain;
            spec.shutdown.max_request_seconds = max_request;
            spec.shutdown.termination_grace_period_seconds = drain + max_request + extra;
            let d = build(&test_owner("p"), &spec, replicas, &StepClock::default());
            let timeout: i64 = env_value(&d, "GRACEFUL_SHUTDOWN_TIMEOUT_MS").unwrap().parse().unwrap();
            let drain_ms: i64 = env_value(&d, "GRACEFUL_DRAIN_DELAY_MS").unwrap().parse().unwrap();
            let grace_ms = i64::from(spec.shutdown.termination_grace_period_seconds) * 1000;
            // Drain plus app shutdown leave at least one second before SIGKILL...
            prop_assert!(drain_ms + timeout <= grace_ms - 1000);
            // ...and the longest request still fits in the app's shutdown bound.
            prop_assert!(timeout >= i64::from(max_request) * 1000);
            prop_assert_eq!(d.spec.unwrap().replicas, Some(replicas));
        }
    }
}
