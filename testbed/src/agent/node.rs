//! Node registration and heartbeats: N Ready nodes with generous capacity and no taints, whose
//! Ready condition and Lease are renewed every few seconds, as a kubelet does.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

pub const FIELD_MANAGER: &str = "testbed-node-agent";
const HEARTBEAT: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i32 = 40;

/// The node names an agent serving `count` nodes registers.
pub fn node_names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("node-{i}")).collect()
}

fn node_object(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
                "testbed.graceful.dev/node-agent": "true"
            }
        },
        "spec": {}
    })
}

/// The status a healthy kubelet reports; `now` refreshes the heartbeat fields.
fn node_status(name: &str, host_ip: Ipv4Addr, now: &str, since: &str) -> Value {
    let capacity =
        json!({"cpu": "64", "memory": "256Gi", "pods": "250", "ephemeral-storage": "500Gi"});
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": since})
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "testbed node agent"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "testbed node agent"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "testbed node agent"),
                condition("Ready", "True", "KubeletReady", "testbed node agent is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": host_ip.to_string()},
                {"type": "Hostname", "address": name}
            ],
            "nodeInfo": {
                "machineID": name, "systemUUID": name, "bootID": since,
                "kernelVersion": "testbed", "osImage": "testbed node agent",
                "containerRuntimeVersion": "testbed://0.1.0", "kubeletVersion": "v1.34.3",
                "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": std::env::consts::ARCH
            }
        }
    })
}

fn lease_object(name: &str, now: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now}
    })
}

fn micro(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn seconds(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Registers the nodes (server-side apply) and posts their first Ready status.
pub async fn register(
    client: &kube::Client,
    names: &[String],
    host_ip: Ipv4Addr,
) -> anyhow::Result<Timestamp> {
    let nodes: Api<Node> = Api::all(client.clone());
    let since = Timestamp::now();
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for name in names {
        nodes
            .patch(name, &pp, &Patch::Apply(node_object(name)))
            .await?;
    }
    heartbeat(client, names, host_ip, since).await?;
    Ok(since)
}

/// One heartbeat: node status and lease for every node.
pub async fn heartbeat(
    client: &kube::Client,
    names: &[String],
    host_ip: Ipv4Addr,
    since: Timestamp,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let now = Timestamp::now();
    for name in names {
        let status = node_status(name, host_ip, &seconds(now), &seconds(since));
        nodes.patch_status(name, &pp, &Patch::Apply(status)).await?;
        if let Err(e) = leases
            .patch(name, &pp, &Patch::Apply(lease_object(name, &micro(now))))
            .await
        {
            tracing::debug!(error = %e, node = %name, "lease not renewed");
        }
    }
    Ok(())
}

/// Renews the heartbeats until the task is dropped; errors are logged and retried.
pub async fn heartbeat_loop(
    client: kube::Client,
    names: Vec<String>,
    host_ip: Ipv4Addr,
    since: Timestamp,
) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        if let Err(e) = heartbeat(&client, &names, host_ip, since).await {
            tracing::warn!(error = %e, "node heartbeat failed");
        }
    }
}
