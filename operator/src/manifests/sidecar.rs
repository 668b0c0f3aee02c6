//! `Sidecar` mode: the drain proxy, a native sidecar (an init container with `restartPolicy:
//! Always`) in front of an app that knows nothing of the protocol.
//!
//! The Service targets the proxy's `http` port; the proxy forwards to the app's main port over
//! the pod's loopback. The app container's preStop hook calls the proxy's preStop path, which
//! turns readiness off, holds the drain delay and waits for the requests in flight to the app,
//! so the kubelet's SIGTERM finds the app idle. Native sidecars stop after the main containers,
//! so the proxy outlives the app. The proxy is the bundled app's image with another entrypoint.

use k8s_openapi::api::core::v1::Container;

use super::pod::{
    ADMIN_PORT_NAME, MAIN_PORT_NAME, admin_probe, contract_env, liveness, ms, port, readiness,
    restricted, startup,
};
use crate::crd::{AppProtocol, DEFAULT_IMAGE, GracefulServiceSpec};

/// Name of the drain proxy's container.
pub const PROXY_CONTAINER: &str = "drain-proxy";
/// The proxy's program inside its image.
pub const PROXY_COMMAND: &str = "/usr/local/bin/graceful-drain-proxy";

/// The drain proxy container for `spec`, carrying the preStop `token`.
pub fn container(spec: &GracefulServiceSpec, token: &str) -> Container {
    let image = spec
        .shutdown
        .proxy_image
        .clone()
        .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
    let extra = [
        (
            "GRACEFUL_PROXY_UPSTREAM",
            format!("127.0.0.1:{}", spec.ports.main),
        ),
        (
            "GRACEFUL_PROXY_UPSTREAM_PROTOCOL",
            match spec.ports.app_protocol {
                AppProtocol::Http => "http1",
                AppProtocol::H2c => "h2c",
            }
            .to_string(),
        ),
        (
            "GRACEFUL_MAX_REQUEST_MS",
            ms(spec.shutdown.max_request_seconds),
        ),
    ];
    Container {
        name: PROXY_CONTAINER.to_string(),
        image: Some(image),
        command: Some(vec![PROXY_COMMAND.to_string()]),
        restart_policy: Some("Always".to_string()),
        env: Some(contract_env(spec, token, spec.ports.proxy, extra).collect()),
        ports: Some(vec![
            port(MAIN_PORT_NAME, spec.ports.proxy),
            port(ADMIN_PORT_NAME, spec.ports.admin),
        ]),
        readiness_probe: Some(readiness(spec, &admin_probe(&spec.paths.readiness))),
        liveness_probe: Some(liveness(spec, &admin_probe(&spec.paths.liveness))),
        startup_probe: startup(spec, &admin_probe(&spec.paths.liveness)),
        security_context: Some(restricted(true)),
        resources: spec.shutdown.proxy_resources.clone(),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shutdown: serde_json::Value) -> GracefulServiceSpec {
        serde_json::from_value(serde_json::json!({ "shutdown": shutdown })).unwrap()
    }

    #[test]
    fn the_proxy_gets_the_resources_of_shutdown_proxy_resources_and_none_by_default() {
        let none = container(&spec(serde_json::json!({ "mode": "Sidecar" })), "t");
        assert_eq!(none.resources, None);
        let set = container(
            &spec(serde_json::json!({
                "mode": "Sidecar",
                "proxyResources": { "requests": { "cpu": "100m", "memory": "32Mi" } },
            })),
            "t",
        );
        let requests = set.resources.and_then(|r| r.requests).unwrap_or_default();
        assert_eq!(requests["cpu"].0, "100m");
        assert_eq!(requests["memory"].0, "32Mi");
    }
}
