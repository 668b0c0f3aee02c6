//! The pod the operator generates: the app container wired to the protocol, probes, and security
//! defaults that pass Pod Security `restricted`. The user's template is merged over it afterwards
//! ([`super::overlay`]).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, HTTPHeader, Lifecycle,
    LifecycleHandler, PodSecurityContext, PodSpec, Probe, SeccompProfile, SecurityContext,
    SleepAction, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::{
    APP_CONTAINER, GracefulServiceSpec, ProbeTiming, ReadinessProbeSpec, ShutdownMode,
};

/// Port name of the main listener.
pub const MAIN_PORT_NAME: &str = "http";
/// Port name of the admin listener.
pub const ADMIN_PORT_NAME: &str = "admin";
/// Header of the preStop call that carries the pod's token; the app refuses a preStop call
/// without it, so no workload that merely reaches the pod can take it out of service.
pub const TOKEN_HEADER: &str = "X-Graceful-Prestop-Token";
/// Environment variable giving the app the token [`TOKEN_HEADER`] must carry.
pub const TOKEN_ENV: &str = "GRACEFUL_PRESTOP_TOKEN";
/// Environment variables the operator sets; a spec may not set them itself.
pub const RESERVED_ENV: [&str; 10] = [
    "GRACEFUL_PORT",
    "GRACEFUL_ADMIN_PORT",
    "GRACEFUL_DRAIN_DELAY_MS",
    "GRACEFUL_SHUTDOWN_TIMEOUT_MS",
    "GRACEFUL_MAX_WORK_MS",
    "GRACEFUL_PRESTOP_PATH",
    "GRACEFUL_READINESS_PATH",
    "GRACEFUL_LIVENESS_PATH",
    "GRACEFUL_PRESTOP_REVERT_MS",
    TOKEN_ENV,
];
/// Repository of the bundled app's image: the one image known to need no writable root
/// filesystem.
pub const BUNDLED_APP_REPOSITORY: &str = "ghcr.io/graceful-dev/graceful-app";

/// The pod spec for `spec`, before the user's template. `token` is the preStop token of the
/// GracefulService (only used in `Admin` mode).
pub fn spec(spec: &GracefulServiceSpec, token: &str) -> PodSpec {
    PodSpec {
        termination_grace_period_seconds: Some(i64::from(
            spec.shutdown.termination_grace_period_seconds,
        )),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        containers: vec![container(spec, token)],
        ..PodSpec::default()
    }
}

/// The preStop token recorded in the live Deployment's app container, if any: the operator
/// keeps it, since a new token would roll every pod.
pub fn recorded_token(live: Option<&Deployment>) -> Option<String> {
    let pod = live?.spec.as_ref()?.template.spec.as_ref()?;
    let app = pod.containers.iter().find(|c| c.name == APP_CONTAINER)?;
    let var = app.env.as_ref()?.iter().find(|v| v.name == TOKEN_ENV)?;
    var.value.clone().filter(|value| !value.is_empty())
}

fn container(spec: &GracefulServiceSpec, token: &str) -> Container {
    let admin_mode = spec.shutdown.mode == ShutdownMode::Admin;
    let mut ports = vec![port(MAIN_PORT_NAME, spec.ports.main)];
    if admin_mode {
        ports.push(port(ADMIN_PORT_NAME, spec.ports.admin));
    }
    Container {
        name: APP_CONTAINER.to_string(),
        image: Some(spec.image.clone()),
        args: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: Some(env(spec, token)).filter(|vars| !vars.is_empty()),
        resources: spec.resources.clone(),
        ports: Some(ports),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(pre_stop(spec, token)),
            ..Lifecycle::default()
        }),
        readiness_probe: Some(readiness(spec)),
        liveness_probe: Some(liveness(spec)),
        startup_probe: startup(spec),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: None,
            }),
            read_only_root_filesystem: is_bundled_app(&spec.image).then_some(true),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: number,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

/// Whether `image` is the bundled app (any tag or digest of its repository).
pub fn is_bundled_app(image: &str) -> bool {
    image
        .strip_prefix(BUNDLED_APP_REPOSITORY)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '@']))
}

fn pre_stop(spec: &GracefulServiceSpec, token: &str) -> LifecycleHandler {
    match spec.shutdown.mode {
        ShutdownMode::Admin => LifecycleHandler {
            http_get: Some(HTTPGetAction {
                http_headers: Some(vec![HTTPHeader {
                    name: TOKEN_HEADER.to_string(),
                    value: token.to_string(),
                }]),
                ..admin_get(&spec.paths.pre_stop)
            }),
            ..LifecycleHandler::default()
        },
        ShutdownMode::Sleep => LifecycleHandler {
            sleep: Some(SleepAction {
                seconds: i64::from(spec.shutdown.drain_delay_seconds),
            }),
            ..LifecycleHandler::default()
        },
    }
}

fn admin_get(path: &str) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(path.to_string()),
        port: IntOrString::String(ADMIN_PORT_NAME.to_string()),
        ..HTTPGetAction::default()
    }
}

/// Where a probe looks: the admin endpoint at `path`, or in `Sleep` mode (no admin listener)
/// whether the main port accepts connections.
fn target(spec: &GracefulServiceSpec, path: &str) -> Probe {
    match spec.shutdown.mode {
        ShutdownMode::Admin => Probe {
            http_get: Some(admin_get(path)),
            ..Probe::default()
        },
        ShutdownMode::Sleep => Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String(MAIN_PORT_NAME.to_string()),
                host: None,
            }),
            ..Probe::default()
        },
    }
}

/// Readiness is polled every second by default so a pod joins (and, on failure, leaves) the
/// endpoints fast; draining does not depend on it because a terminating endpoint is never ready.
fn readiness(spec: &GracefulServiceSpec) -> Probe {
    let timing = spec
        .probes
        .as_ref()
        .and_then(|p| p.readiness.clone())
        .unwrap_or_default();
    let ReadinessProbeSpec {
        period_seconds,
        timeout_seconds,
        failure_threshold,
        success_threshold,
    } = timing;
    Probe {
        period_seconds: Some(period_seconds.unwrap_or(1)),
        timeout_seconds: Some(timeout_seconds.unwrap_or(1)),
        failure_threshold: Some(failure_threshold.unwrap_or(1)),
        success_threshold: Some(success_threshold.unwrap_or(1)),
        ..target(spec, &spec.paths.readiness)
    }
}

fn liveness(spec: &GracefulServiceSpec) -> Probe {
    let timing = spec.probes.as_ref().and_then(|p| p.liveness.clone());
    timed(
        target(spec, &spec.paths.liveness),
        &timing.unwrap_or_default(),
        (10, 2, 3),
    )
}

fn startup(spec: &GracefulServiceSpec) -> Option<Probe> {
    let timing = spec.probes.as_ref()?.startup.as_ref()?;
    Some(timed(
        target(spec, &spec.paths.liveness),
        timing,
        (1, 1, 300),
    ))
}

/// `probe` with `timing`, unset fields taken from `(period, timeout, failures)`.
fn timed(probe: Probe, timing: &ProbeTiming, defaults: (i32, i32, i32)) -> Probe {
    Probe {
        period_seconds: Some(timing.period_seconds.unwrap_or(defaults.0)),
        timeout_seconds: Some(timing.timeout_seconds.unwrap_or(defaults.1)),
        failure_threshold: Some(timing.failure_threshold.unwrap_or(defaults.2)),
        ..probe
    }
}

/// The user's variables first, then the contract variables, which therefore win. In `Sleep`
/// mode the app knows no contract, so only the user's variables are set.
fn env(spec: &GracefulServiceSpec, token: &str) -> Vec<EnvVar> {
    let user = spec
        .env
        .iter()
        .filter(|var| !RESERVED_ENV.contains(&var.name.as_str()))
        .cloned();
    if spec.shutdown.mode != ShutdownMode::Admin {
        return user.collect();
    }
    let ms = |seconds: i32| (i64::from(seconds) * 1000).to_string();
    let shutdown = &spec.shutdown;
    let contract = [
        ("GRACEFUL_PORT", spec.ports.main.to_string()),
        ("GRACEFUL_ADMIN_PORT", spec.ports.admin.to_string()),
        ("GRACEFUL_DRAIN_DELAY_MS", ms(shutdown.drain_delay_seconds)),
        (
            "GRACEFUL_SHUTDOWN_TIMEOUT_MS",
            shutdown.app_shutdown_timeout_ms().to_string(),
        ),
        ("GRACEFUL_MAX_WORK_MS", ms(shutdown.max_request_seconds)),
        ("GRACEFUL_PRESTOP_PATH", spec.paths.pre_stop.clone()),
        ("GRACEFUL_READINESS_PATH", spec.paths.readiness.clone()),
        ("GRACEFUL_LIVENESS_PATH", spec.paths.liveness.clone()),
        // A drain no SIGTERM follows within the grace period was not the kubelet's: by then it
        // would have killed the pod. The app then turns ready again.
        (
            "GRACEFUL_PRESTOP_REVERT_MS",
            ms(shutdown.termination_grace_period_seconds),
        ),
        (TOKEN_ENV, token.to_string()),
    ];
    user.chain(contract.into_iter().map(|(name, value)| EnvVar {
        name: name.to_string(),
        value: Some(value),
        value_from: None,
    }))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_app_is_known_by_its_repository() {
        assert!(is_bundled_app("ghcr.io/graceful-dev/graceful-app"));
        assert!(is_bundled_app("ghcr.io/graceful-dev/graceful-app:0.1.0"));
        assert!(is_bundled_app(
            "ghcr.io/graceful-dev/graceful-app@sha256:ab"
        ));
        assert!(!is_bundled_app("ghcr.io/graceful-dev/graceful-app-fork:1"));
        assert!(!is_bundled_app("nginx:1.27"));
    }
}
