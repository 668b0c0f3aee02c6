//! metrics-server (`testbed up --metrics-server`): the resource-metrics API (`metrics.k8s.io`) that
//! HorizontalPodAutoscalers and `kubectl top` read, built from `go/metrics-server` by
//! `scripts/build-tool.sh metrics-server`. It runs on the host like the control plane, scrapes
//! every real kubelet's `/metrics/resource`, and is registered as an aggregated API: an
//! APIService pointing at a Service without selector whose EndpointSlice holds its address on
//! the bridge (the API server routes to that address, `--enable-aggregator-routing`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;

use crate::binaries::locate_tool;
use crate::certs::Pki;
use crate::controlplane::free_port;
use crate::process::Children;

/// The folder with the `metrics-server` binary.
#[derive(Debug, Clone)]
pub struct MetricsServer {
    pub dir: PathBuf,
}

impl MetricsServer {
    /// Uses `TESTBED_METRICS_SERVER_DIR` if set, else runs the build script (at once when built).
    pub async fn locate_or_build() -> Result<Self> {
        let dir = locate_tool(
            "TESTBED_METRICS_SERVER_DIR",
            "metrics-server",
            &["metrics-server"],
        )
        .await?;
        Ok(Self { dir })
    }
}

/// How often metrics-server scrapes the kubelets (its floor is 10 s; its default 60 s).
pub const RESOLUTION: &str = "10s";

/// Starts metrics-server as the child `metrics-server` on `gateway` and registers its API.
pub async fn start(
    server: &MetricsServer,
    kubeconfig: &Path,
    pki: &Pki,
    gateway: Ipv4Addr,
    children: &Children,
    run_dir: &Path,
) -> Result<()> {
    let port = free_port(gateway)?;
    let kubeconfig = kubeconfig.display().to_string();
    let args = vec![
        format!("--kubeconfig={kubeconfig}"),
        format!("--authentication-kubeconfig={kubeconfig}"),
        format!("--authorization-kubeconfig={kubeconfig}"),
        format!("--bind-address={gateway}"),
        format!("--secure-port={port}"),
        format!(
            "--cert-dir={}",
            run_dir.join("metrics-server-certs").display()
        ),
        // The kubelets' serving certificates are self-signed, as kubeadm's are by default.
        "--kubelet-insecure-tls".into(),
        format!(
            "--kubelet-client-certificate={}",
            pki.apiserver_kubelet_client.cert.display()
        ),
        format!(
            "--kubelet-client-key={}",
            pki.apiserver_kubelet_client.key.display()
        ),
        "--kubelet-preferred-address-types=InternalIP".into(),
        format!("--metric-resolution={RESOLUTION}"),
        // Below the resolution, as metrics-server requires (its default is 10 s).
        "--kubelet-request-timeout=5s".into(),
        // KWOK nodes have no kubelet to scrape.
        format!(
            "--node-selector={}!={}",
            crate::kwok::NODE_LABEL.0,
            crate::kwok::NODE_LABEL.1
        ),
    ];
    children.start(
        "metrics-server",
        &server.dir.join("metrics-server"),
        &args,
        &run_dir.join("logs/metrics-server.log"),
    )?;
    let client = crate::kubeconfig::client(Path::new(&kubeconfig)).await?;
    register(&client, gateway, port).await
}

/// The Service, its EndpointSlice (the host's address on the bridge) and the APIService.
async fn register(client: &kube::Client, gateway: Ipv4Addr, port: u16) -> Result<()> {
    let objects = [
        (
            ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
            serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "metrics-server", "namespace": "kube-system"},
                "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]},
            }),
        ),
        (
            ApiResource::erase::<k8s_openapi::api::discovery::v1::EndpointSlice>(&()),
            serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": "metrics-server", "namespace": "kube-system",
                    "labels": {"kubernetes.io/service-name": "metrics-server"},
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [gateway.to_string()], "conditions": {"ready": true}}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            }),
        ),
        (
            ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                "apiregistration.k8s.io",
                "v1",
                "APIService",
            )),
            serde_json::json!({
                "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                "metadata": {"name": "v1beta1.metrics.k8s.io"},
                "spec": {
                    "group": "metrics.k8s.io", "version": "v1beta1",
                    "service": {"namespace": "kube-system", "name": "metrics-server", "port": 443},
                    // Its certificate is self-signed (--cert-dir), as in the upstream manifest.
                    "insecureSkipTLSVerify": true,
                    "groupPriorityMinimum": 100, "versionPriority": 100,
                },
            }),
        ),
    ];
    let params = PatchParams::apply("graceful-testbed").force();
    for (resource, object) in objects {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        api.patch(&name, &params, &Patch::Apply(&object))
            .await
            .with_context(|| format!("cannot apply {} {name}", resource.kind))?;
    }
    tracing::info!(%gateway, port, "metrics-server registered as v1beta1.metrics.k8s.io");
    Ok(())
}
