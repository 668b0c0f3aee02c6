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
/// Port name of the app's own port in `Sidecar` mode, where `http` is the drain proxy's.
pub const APP_PORT_NAME: &str = "app";
/// Header of the preStop call that carries the pod's token; the app refuses a preStop call
/// without it, so no workload that merely reaches the pod can take it out of service.
pub const TOKEN_HEADER: &str = "X-Graceful-Prestop-Token";
/// Environment variable giving the app the token [`TOKEN_HEADER`] must carry.
pub const TOKEN_ENV: &str = "GRACEFUL_PRESTOP_TOKEN";
/// Environment variables the operator sets; a spec may not set them itself.
pub const RESERVED_ENV: [&str; 13] = [
    "GRACEFUL_PORT",
    "GRACEFUL_ADMIN_PORT",
    "GRACEFUL_DRAIN_DELAY_MS",
    "GRACEFUL_SHUTDOWN_TIMEOUT_MS",
    "GRACEFUL_MAX_WORK_MS",
    "GRACEFUL_PRESTOP_PATH",
    "GRACEFUL_READINESS_PATH",
    "GRACEFUL_LIVENESS_PATH",
    "GRACEFUL_PRESTOP_REVERT_MS",
    "GRACEFUL_PROXY_UPSTREAM",
    "GRACEFUL_PROXY_UPSTREAM_PROTOCOL",
    "GRACEFUL_MAX_REQUEST_MS",
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
        init_containers: (spec.shutdown.mode == ShutdownMode::Sidecar)
            .then(|| vec![super::sidecar::container(spec, token)]),
        containers: vec![container(spec, token)],
        ..PodSpec::default()
    }
}

/// The preStop token recorded in the live Deployment's app container, if any: the operator
/// keeps it, since a new token would roll every pod.
/// Whichever container holds it (the app's in `Admin` mode, the drain proxy's in `Sidecar` mode).
pub fn recorded_token(live: Option<&Deployment>) -> Option<String> {
    let pod = live?.spec.as_ref()?.template.spec.as_ref()?;
    let containers = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    containers
        .flat_map(|c| c.env.iter().flatten())
        .find(|v| v.name == TOKEN_ENV)
        .and_then(|v| v.value.clone())
        .filter(|value| !value.is_empty())
}

fn container(spec: &GracefulServiceSpec, token: &str) -> Container {
    let ports = match spec.shutdown.mode {
        ShutdownMode::Admin => vec![
            port(MAIN_PORT_NAME, spec.ports.main),
            port(ADMIN_PORT_NAME, spec.ports.admin),
        ],
        ShutdownMode::Sleep => vec![port(MAIN_PORT_NAME, spec.ports.main)],
        // The names `http` and `admin` are the drain proxy's: the Service targets `http`.
        ShutdownMode::Sidecar => vec![port(APP_PORT_NAME, spec.ports.main)],
    };
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
        readiness_probe: Some(readiness(spec, &app_target(spec, &spec.paths.readiness))),
        liveness_probe: Some(liveness(spec, &app_target(spec, &spec.paths.liveness))),
        startup_probe: startup(spec, &app_target(spec, &spec.paths.liveness)),
        security_context: Some(restricted(is_bundled_app(&spec.image))),
        ..Container::default()
    }
}

/// A container security context that passes Pod Security `restricted` (with the pod's
/// `runAsNonRoot` and seccomp profile); a read-only root filesystem where the image is known
/// not to need a writable one.
pub(super) fn restricted(read_only_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        read_only_root_filesystem: read_only_root.then_some(true),
        ..SecurityContext::default()
    }
}

pub(super) fn port(name: &str, number: i32) -> ContainerPort {
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
    let call = |port: IntOrString| LifecycleHandler {
        http_get: Some(HTTPGetAction {
            http_headers: Some(vec![HTTPHeader {
                name: TOKEN_HEADER.to_string(),
                value: token.to_string(),
            }]),
            path: Some(spec.paths.pre_stop.clone()),
            port,
            ..HTTPGetAction::default()
        }),
        ..LifecycleHandler::default()
    };
    match spec.shutdown.mode {
        ShutdownMode::Admin => call(IntOrString::String(ADMIN_PORT_NAME.to_string())),
        // The proxy's admin port, by number: a hook resolves port names among its own
        // container's ports only.
        ShutdownMode::Sidecar => call(IntOrString::Int(spec.ports.admin)),
        ShutdownMode::Sleep => LifecycleHandler {
            sleep: Some(SleepAction {
                seconds: i64::from(spec.shutdown.drain_delay_seconds),
            }),
            ..LifecycleHandler::default()
        },
    }
}

/// A probe of the admin endpoint at `path`.
pub(super) fn admin_probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(ADMIN_PORT_NAME.to_string()),
            ..HTTPGetAction::default()
        }),
        ..Probe::default()
    }
}

/// Where the app container's probes look: its admin endpoint at `path`, or, for an app without
/// the admin contract, whether its main port accepts connections.
fn app_target(spec: &GracefulServiceSpec, path: &str) -> Probe {
    let tcp = |name: &str| Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String(name.to_string()),
            host: None,
        }),
        ..Probe::default()
    };
    match spec.shutdown.mode {
        ShutdownMode::Admin => admin_probe(path),
        ShutdownMode::Sleep => tcp(MAIN_PORT_NAME),
        ShutdownMode::Sidecar => tcp(APP_PORT_NAME),
    }
}

/// Readiness is polled every second by default so a pod joins (and, on failure, leaves) the
/// endpoints fast; draining does not depend on it because a terminating endpoint is never ready.
pub(super) fn readiness(spec: &GracefulServiceSpec, target: &Probe) -> Probe {
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
        ..target.clone()
    }
}

pub(super) fn liveness(spec: &GracefulServiceSpec, target: &Probe) -> Probe {
    let timing = spec.probes.as_ref().and_then(|p| p.liveness.clone());
    timed(target.clone(), &timing.unwrap_or_default(), (10, 2, 3))
}

pub(super) fn startup(spec: &GracefulServiceSpec, target: &Probe) -> Option<Probe> {
    let timing = spec.probes.as_ref()?.startup.as_ref()?;
    Some(timed(target.clone(), timing, (1, 1, 300)))
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
/// and `Sidecar` mode the app knows no contract, so only the user's variables are set.
fn env(spec: &GracefulServiceSpec, token: &str) -> Vec<EnvVar> {
    let user = spec
        .env
        .iter()
        .filter(|var| !RESERVED_ENV.contains(&var.name.as_str()))
        .cloned();
    if spec.shutdown.mode != ShutdownMode::Admin {
        return user.collect();
    }
    let max_work = (
        "GRACEFUL_MAX_WORK_MS",
        ms(spec.shutdown.max_request_seconds),
    );
    user.chain(contract_env(spec, token, spec.ports.main, [max_work]))
        .collect()
}

pub(super) fn ms(seconds: i32) -> String {
    (i64::from(seconds) * 1000).to_string()
}

/// The variables of the protocol every drain-capable process reads (docs/architecture.md):
/// listening on `port`, plus `extra`.
pub(super) fn contract_env<const N: usize>(
    spec: &GracefulServiceSpec,
    token: &str,
    port: i32,
    extra: [(&str, String); N],
) -> impl Iterator<Item = EnvVar> {
    let shutdown = &spec.shutdown;
    let contract = [
        ("GRACEFUL_PORT", port.to_string()),
        ("GRACEFUL_ADMIN_PORT", spec.ports.admin.to_string()),
        ("GRACEFUL_DRAIN_DELAY_MS", ms(shutdown.drain_delay_seconds)),
        (
            "GRACEFUL_SHUTDOWN_TIMEOUT_MS",
            shutdown.app_shutdown_timeout_ms().to_string(),
        ),
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
    contract
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .chain(extra.map(|(name, value)| (name.to_string(), value)))
        .map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            value_from: None,
        })
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
