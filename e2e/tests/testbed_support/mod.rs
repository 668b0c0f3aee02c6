//! Helpers of the testbed proofs: app Deployments and NodePort Services, polling, a one-shot
//! HTTP client, the processes of a pod, and a rollout under load.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const APP_IMAGE: &str = "ghcr.io/graceful-dev/graceful-app";
pub const MANAGER: &str = "e2e-testbed";

/// Deletes the test namespace when the test ends, also on panic (the testbed itself goes away
/// with the test binary; this keeps a shared testbed tidy).
pub struct NamespaceGuard {
    pub name: String,
}

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let Ok(tb) = testbed::shared() else {
            return;
        };
        let _ = tb
            .kubectl()
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

pub async fn namespace(client: &kube::Client, prefix: &str) -> Result<NamespaceGuard> {
    let tb = testbed::shared()?;
    let name = tb.create_namespace(client, prefix).await?;
    Ok(NamespaceGuard { name })
}

/// How a test wants its app pods.
#[derive(Clone)]
pub struct AppPods {
    pub replicas: i32,
    pub tag: &'static str,
    pub readiness: bool,
    pub prestop: bool,
    pub grace_seconds: i64,
    /// Pod-level `runAsUser` with `runAsNonRoot: true`.
    pub run_as_user: Option<i64>,
    pub env: Vec<(&'static str, &'static str)>,
}

impl Default for AppPods {
    fn default() -> Self {
        AppPods {
            replicas: 2,
            tag: "v1",
            readiness: true,
            prestop: false,
            grace_seconds: 30,
            run_as_user: None,
            env: vec![],
        }
    }
}

pub fn pod_spec(app: &str, opts: &AppPods) -> Value {
    let mut env: Vec<Value> = vec![
        json!({"name": "GRACEFUL_PORT", "value": "8080"}),
        json!({"name": "GRACEFUL_ADMIN_PORT", "value": "9090"}),
    ];
    env.extend(opts.env.iter().map(|(k, v)| json!({"name": k, "value": v})));
    let mut container = json!({
        "name": "app",
        "image": format!("{APP_IMAGE}:{}", opts.tag),
        "env": env,
        "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "admin", "containerPort": 9090}
        ]
    });
    if opts.readiness {
        container["readinessProbe"] = json!({
            "httpGet": {"path": "/readyz", "port": "admin"},
            "periodSeconds": 1, "failureThreshold": 1
        });
    }
    if opts.prestop {
        container["lifecycle"] =
            json!({"preStop": {"httpGet": {"path": "/prestop", "port": "admin"}}});
    }
    let security = match opts.run_as_user {
        Some(uid) => json!({"runAsNonRoot": true, "runAsUser": uid, "runAsGroup": uid}),
        None => json!({}),
    };
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {
            "terminationGracePeriodSeconds": opts.grace_seconds,
            "securityContext": security,
            "containers": [container]
        }
    })
}

pub async fn apply<K>(api: &Api<K>, name: &str, object: Value) -> Result<K>
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    let pp = PatchParams::apply(MANAGER).force();
    Ok(api.patch(name, &pp, &Patch::Apply(object)).await?)
}

pub async fn apply_deployment(
    client: &kube::Client,
    ns: &str,
    name: &str,
    opts: &AppPods,
) -> Result<()> {
    testbed::shared()?.tag_image(APP_IMAGE, opts.tag)?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let object = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": opts.replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": pod_spec(name, opts)
        }
    });
    apply(&deployments, name, object).await?;
    Ok(())
}

/// A NodePort Service for the app; returns the node port the API allocated.
pub async fn apply_node_port_service(client: &kube::Client, ns: &str, name: &str) -> Result<u16> {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let object = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "type": "NodePort",
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]
        }
    });
    let svc = apply(&services, name, object).await?;
    let port = svc
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p.first().and_then(|p| p.node_port))
        .context("no node port allocated")?;
    Ok(u16::try_from(port)?)
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until exactly `count` pods with label app=<name> exist, none terminating, all Ready.
pub async fn ready_pods(
    client: &kube::Client,
    ns: &str,
    name: &str,
    count: usize,
) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("app={name}"));
    eventually(
        Duration::from_secs(60),
        &format!("{count} ready pods of {name}"),
        || {
            let pods = pods.clone();
            let lp = lp.clone();
            async move {
                let list = pods.list(&lp).await?.items;
                let done = list.len() == count
                    && list
                        .iter()
                        .all(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none());
                Ok(done.then_some(list))
            }
        },
    )
    .await
}

/// One GET on a fresh connection; returns status and body.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status line")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    })
    .await
    .context("GET timed out")?
}

/// The node port on node 0 of the shared testbed.
pub fn node_port(port: u16) -> SocketAddr {
    testbed::shared()
        .map(|tb| tb.node_port_addr(port))
        .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

pub fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

pub fn pod_ip(pod: &Pod) -> Result<Ipv4Addr> {
    Ok(pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .context("pod has no IP")?
        .parse()?)
}

/// The pids of the processes of a pod's containers on this machine (pause included).
pub fn pod_processes(pod: &Pod) -> Vec<i32> {
    pod.metadata
        .uid
        .as_deref()
        .map(testbed::node::host::pod_processes)
        .unwrap_or_default()
}

/// The user id a process runs as (the real uid of `/proc/<pid>/status`).
pub fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[allow(unused_imports)]
pub use testbed::node::host::cmdline_of;

pub async fn scale(client: &kube::Client, ns: &str, name: &str, replicas: i32) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
    deployments
        .patch(name, &PatchParams::default(), &patch)
        .await?;
    Ok(())
}

/// Rolls the Deployment from v1 to v2 under new-connection load through the node port; returns
/// the load report once the rollout completed.
pub async fn rollout_under_load(ns: &str, name: &str, pods: &AppPods) -> Result<loadgen::Report> {
    let client = testbed::shared()?.client().await?;
    apply_deployment(&client, ns, name, pods).await?;
    let port = apply_node_port_service(&client, ns, name).await?;
    ready_pods(&client, ns, name, pods.replicas as usize).await?;
    eventually(
        Duration::from_secs(20),
        "the node port to answer",
        || async { Ok((get(node_port(port), "/").await?.0 == 200).then_some(())) },
    )
    .await?;

    let spec = loadgen::LoadSpec::new(node_port(port), "/?work_ms=20")
        .concurrency(8)
        .max_requests(200_000)
        .duration(Duration::from_secs(60))
        .mode(loadgen::ConnectionMode::Close)
        .request_timeout(Duration::from_secs(5));
    let control = loadgen::Control::new();
    let load = tokio::spawn(loadgen::run(spec, control.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v2 = AppPods {
        tag: "v2",
        ..pods.clone()
    };
    testbed::shared()?.tag_image(APP_IMAGE, v2.tag)?;
    apply_deployment(&client, ns, name, &v2).await?;

    // The rollout completes: all replicas ready on the new tag, the old ones gone.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let want = pods.replicas;
    eventually(Duration::from_secs(120), "the rollout to complete", || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get(name).await?;
            let s = d.status.unwrap_or_default();
            let done = s.updated_replicas == Some(want)
                && s.available_replicas == Some(want)
                && s.replicas == Some(want)
                && s.observed_generation == d.metadata.generation;
            Ok(done.then_some(()))
        }
    })
    .await?;
    ready_pods(&client, ns, name, want as usize).await?;
    // A little more load on the new pods, then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    control.stop();
    let report = load.await??;
    ensure!(
        report.count() > 100,
        "too little load to judge: {} requests",
        report.count()
    );
    Ok(report)
}

pub use e2e::eventually;
