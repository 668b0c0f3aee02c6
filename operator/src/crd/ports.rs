//! The ports of the pod's listeners and what the main one speaks.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::defaults;

/// Ports of the app's two listeners.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.main != self.admin").message("ports.main and ports.admin must differ"))]
#[x_kube(validation = Rule::new("self.proxy != self.main && self.proxy != self.admin").message("ports.proxy must differ from ports.main and ports.admin"))]
pub struct PortsSpec {
    /// Port of the main listener, the only one the Service exposes.
    #[serde(default = "defaults::main_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub main: i32,
    /// Port of the admin listener (preStop, probes, metrics); never exposed through the Service.
    /// In `Sidecar` mode it is the drain proxy's.
    #[serde(default = "defaults::admin_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub admin: i32,
    /// `Sidecar` mode only: the port the drain proxy listens on and the Service targets; the
    /// proxy forwards to the app's `main` port over the pod's loopback.
    #[serde(default = "defaults::proxy_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub proxy: i32,
    /// What the main port speaks. `H2c` (HTTP/2 over cleartext, gRPC's transport) marks the
    /// Service port with `appProtocol: kubernetes.io/h2c` and, in `Sidecar` mode, makes the drain
    /// proxy speak h2c to the app. The bundled app and the proxy accept both on any port.
    #[serde(default)]
    pub app_protocol: AppProtocol,
}

/// The protocol of the app's main port.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum AppProtocol {
    /// HTTP/1.1 (the proxy's clients may still use h2c; the proxy speaks HTTP/1.1 to the app).
    #[default]
    Http,
    /// HTTP/2 over cleartext with prior knowledge.
    H2c,
}
