//! What [`build`] makes of a spec: the app contract, the preStop token, the shutdown modes, the
//! probes, the security defaults and the user's template.

use super::*;
use crate::manifests::test_owner;
use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

const TOKEN: &str = "t0k3n";

fn make(spec: &GracefulServiceSpec, replicas: i32, clock: &StepClock) -> Deployment {
    build(&test_owner("web"), spec, replicas, clock, TOKEN).unwrap()
}

fn pod_of(d: &Deployment) -> &k8s_openapi::api::core::v1::PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

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
    let d = make(&GracefulServiceSpec::default(), 3, &StepClock::default());
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
    let d = make(&spec, 1, &StepClock::default());
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
    let d = make(&GracefulServiceSpec::default(), 3, &clock);
    let notes = d.metadata.annotations.unwrap();
    assert_eq!(notes[WALK_STARTED], "2026-12-02T10:00:00.5Z");
    assert!(!notes.contains_key(LAST_STEP));
    let d = make(&GracefulServiceSpec::default(), 3, &StepClock::default());
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
        let d = make(&spec, replicas, &StepClock::default());
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

fn spec_from(json: serde_json::Value) -> GracefulServiceSpec {
    serde_json::from_value(json).unwrap()
}

#[test]
fn the_prestop_hook_carries_the_token_the_app_checks() {
    let d = make(&GracefulServiceSpec::default(), 1, &StepClock::default());
    let app = &pod_of(&d).containers[0];
    let get = app.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
    let headers = get
        .http_get
        .as_ref()
        .unwrap()
        .http_headers
        .as_ref()
        .unwrap();
    assert_eq!(headers[0].name, pod::TOKEN_HEADER);
    assert_eq!(headers[0].value, TOKEN);
    assert_eq!(env_value(&d, pod::TOKEN_ENV).as_deref(), Some(TOKEN));
    assert_eq!(pod::recorded_token(Some(&d)).as_deref(), Some(TOKEN));
    assert_eq!(pod::recorded_token(None), None);
}

#[test]
fn paths_max_request_and_revert_reach_the_app() {
    let spec = spec_from(serde_json::json!({
        "paths": {"preStop": "/drain", "readiness": "/ready", "liveness": "/alive"},
        "shutdown": {"maxRequestSeconds": 45, "terminationGracePeriodSeconds": 60}
    }));
    let d = make(&spec, 1, &StepClock::default());
    for (name, value) in [
        ("GRACEFUL_PRESTOP_PATH", "/drain"),
        ("GRACEFUL_READINESS_PATH", "/ready"),
        ("GRACEFUL_LIVENESS_PATH", "/alive"),
        ("GRACEFUL_MAX_WORK_MS", "45000"),
        ("GRACEFUL_PRESTOP_REVERT_MS", "60000"),
    ] {
        assert_eq!(env_value(&d, name).as_deref(), Some(value), "{name}");
    }
    let app = &pod_of(&d).containers[0];
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone()
    };
    assert_eq!(path(&app.readiness_probe).as_deref(), Some("/ready"));
    assert_eq!(path(&app.liveness_probe).as_deref(), Some("/alive"));
}

#[test]
fn defaults_pass_pod_security_restricted() {
    let d = make(&GracefulServiceSpec::default(), 1, &StepClock::default());
    let pod = pod_of(&d);
    let security = pod.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(
        security.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    let app = pod.containers[0].security_context.as_ref().unwrap();
    assert_eq!(app.allow_privilege_escalation, Some(false));
    assert_eq!(
        app.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert_eq!(app.read_only_root_filesystem, Some(true));
    // An image of the user's may write to its root filesystem.
    let other = spec_from(serde_json::json!({"image": "nginx:1.27"}));
    let d = make(&other, 1, &StepClock::default());
    let app = pod_of(&d).containers[0].security_context.clone().unwrap();
    assert_eq!(app.read_only_root_filesystem, None);
}

#[test]
fn sleep_mode_has_no_admin_port_and_probes_the_main_port() {
    let spec = spec_from(serde_json::json!({
        "image": "nginx:1.27",
        "shutdown": {"mode": "Sleep", "drainDelaySeconds": 7},
        "env": [{"name": "A", "value": "1"}]
    }));
    let d = make(&spec, 1, &StepClock::default());
    let app = &pod_of(&d).containers[0];
    let hook = app.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
    assert_eq!(hook.sleep.as_ref().unwrap().seconds, 7);
    assert!(hook.http_get.is_none());
    let ports: Vec<_> = app
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, vec![8080]);
    let tcp = app
        .readiness_probe
        .as_ref()
        .unwrap()
        .tcp_socket
        .as_ref()
        .unwrap();
    assert_eq!(tcp.port, IntOrString::String("http".into()));
    let names: Vec<_> = app
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        names,
        vec!["A"],
        "no contract variables for an app that knows no contract"
    );
}

#[test]
fn probe_timing_is_configurable_and_defaults_stay_fast() {
    let d = make(&GracefulServiceSpec::default(), 1, &StepClock::default());
    let app = &pod_of(&d).containers[0];
    let ready = app.readiness_probe.as_ref().unwrap();
    assert_eq!(
        (ready.period_seconds, ready.failure_threshold),
        (Some(1), Some(1))
    );
    assert!(app.startup_probe.is_none());
    let spec = spec_from(serde_json::json!({"probes": {
        "readiness": {"periodSeconds": 5, "successThreshold": 2},
        "liveness": {"failureThreshold": 6},
        "startup": {"periodSeconds": 2}
    }}));
    let d = make(&spec, 1, &StepClock::default());
    let app = &pod_of(&d).containers[0];
    let ready = app.readiness_probe.as_ref().unwrap();
    assert_eq!(
        (
            ready.period_seconds,
            ready.success_threshold,
            ready.timeout_seconds
        ),
        (Some(5), Some(2), Some(1))
    );
    let live = app.liveness_probe.as_ref().unwrap();
    assert_eq!(
        (live.period_seconds, live.failure_threshold),
        (Some(10), Some(6))
    );
    let startup = app.startup_probe.as_ref().unwrap();
    assert_eq!(
        (startup.period_seconds, startup.failure_threshold),
        (Some(2), Some(300))
    );
    assert_eq!(
        startup.http_get.as_ref().unwrap().path.as_deref(),
        Some("/livez")
    );
}

#[test]
fn the_template_merges_over_the_generated_pod() {
    let spec = spec_from(serde_json::json!({"template": {
        "metadata": {"labels": {"team": "a"}, "annotations": {"x": "y"}},
        "spec": {
            "serviceAccountName": "web-sa",
            "nodeSelector": {"disk": "ssd"},
            "securityContext": {"runAsUser": 1000},
            "volumes": [{"name": "cache", "emptyDir": {}}],
            "containers": [
                {"name": "app", "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                 "envFrom": [{"configMapRef": {"name": "web"}}],
                 "securityContext": {"readOnlyRootFilesystem": false}},
                {"name": "log-shipper", "image": "busybox:1.36"}
            ]
        }
    }}));
    let d = make(&spec, 1, &StepClock::default());
    let template = &d.spec.as_ref().unwrap().template;
    let labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert_eq!(labels["team"], "a");
    assert_eq!(labels["graceful.dev/service"], "web");
    let pod = pod_of(&d);
    assert_eq!(pod.service_account_name.as_deref(), Some("web-sa"));
    assert_eq!(pod.node_selector.as_ref().unwrap()["disk"], "ssd");
    let security = pod.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_user, Some(1000));
    assert_eq!(security.run_as_non_root, Some(true), "merged, not replaced");
    assert_eq!(pod.containers.len(), 2);
    let app = &pod.containers[0];
    assert_eq!(app.name, "app");
    assert!(app.lifecycle.is_some(), "the protocol's hook stays");
    assert_eq!(app.volume_mounts.as_ref().unwrap()[0].mount_path, "/cache");
    let app_security = app.security_context.as_ref().unwrap();
    assert_eq!(app_security.read_only_root_filesystem, Some(false));
    assert_eq!(app_security.allow_privilege_escalation, Some(false));
    assert_eq!(pod.containers[1].name, "log-shipper");
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
}

#[test]
fn the_operator_labels_survive_any_template() {
    // The schema refuses these; the builder keeps the operator's labels regardless.
    let spec = spec_from(serde_json::json!({"template": {"metadata": {"labels": {
        "graceful.dev/service": "other", "app.kubernetes.io/managed-by": "me"
    }}}}));
    let d = make(&spec, 1, &StepClock::default());
    let labels = d.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    assert_eq!(labels["graceful.dev/service"], "web");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "graceful-operator");
}

#[test]
fn sidecar_mode_puts_the_drain_proxy_in_front_of_the_app() {
    let spec = spec_from(serde_json::json!({
        "image": "nginx:1.27",
        "ports": {"main": 80},
        "shutdown": {"mode": "Sidecar"},
        "env": [{"name": "A", "value": "1"}]
    }));
    let d = make(&spec, 1, &StepClock::default());
    let pod = pod_of(&d);
    let proxy = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(proxy.name, "drain-proxy");
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert_eq!(proxy.image.as_deref(), Some(crate::crd::DEFAULT_IMAGE));
    let ports: Vec<_> = proxy
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [("http".to_string(), 15080), ("admin".to_string(), 9090)]
    );
    let proxy_env = |name: &str| {
        proxy
            .env
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .and_then(|v| v.value.clone())
    };
    assert_eq!(proxy_env("GRACEFUL_PORT").as_deref(), Some("15080"));
    assert_eq!(
        proxy_env("GRACEFUL_PROXY_UPSTREAM").as_deref(),
        Some("127.0.0.1:80")
    );
    assert_eq!(
        proxy_env("GRACEFUL_MAX_REQUEST_MS").as_deref(),
        Some("10000")
    );
    assert_eq!(
        proxy_env("GRACEFUL_PROXY_UPSTREAM_PROTOCOL").as_deref(),
        Some("http1")
    );
    assert_eq!(proxy_env(pod::TOKEN_ENV).as_deref(), Some(TOKEN));
    assert_eq!(pod::recorded_token(Some(&d)).as_deref(), Some(TOKEN));
    let ready = proxy
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(ready.port, IntOrString::String("admin".into()));

    let app = &pod.containers[0];
    assert_eq!(app.image.as_deref(), Some("nginx:1.27"));
    let hook = app.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
    let get = hook.http_get.as_ref().unwrap();
    assert_eq!(get.port, IntOrString::Int(9090), "the proxy's admin port");
    assert_eq!(get.http_headers.as_ref().unwrap()[0].value, TOKEN);
    let app_ports: Vec<_> = app
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(app_ports, [("app".to_string(), 80)]);
    let tcp = app
        .readiness_probe
        .as_ref()
        .unwrap()
        .tcp_socket
        .as_ref()
        .unwrap();
    assert_eq!(tcp.port, IntOrString::String("app".into()));
    let names: Vec<_> = app.env.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["A"]);
}

#[test]
fn h2c_marks_the_service_port_and_makes_the_proxy_speak_h2c() {
    use crate::crd::{AppProtocol, ShutdownMode};
    let mut spec = GracefulServiceSpec::default();
    let service = crate::manifests::service::build(&test_owner("web"), &spec);
    let port = &service.spec.unwrap().ports.unwrap()[0];
    assert_eq!(port.app_protocol, None, "plain HTTP gets no appProtocol");

    spec.ports.app_protocol = AppProtocol::H2c;
    spec.shutdown.mode = ShutdownMode::Sidecar;
    let service = crate::manifests::service::build(&test_owner("web"), &spec);
    let port = &service.spec.unwrap().ports.unwrap()[0];
    assert_eq!(port.app_protocol.as_deref(), Some("kubernetes.io/h2c"));
    let d = make(&spec, 1, &StepClock::default());
    let proxy = &pod_of(&d).init_containers.as_ref().unwrap()[0];
    let protocol = proxy
        .env
        .iter()
        .flatten()
        .find(|v| v.name == "GRACEFUL_PROXY_UPSTREAM_PROTOCOL")
        .and_then(|v| v.value.clone());
    assert_eq!(protocol.as_deref(), Some("h2c"));
}
