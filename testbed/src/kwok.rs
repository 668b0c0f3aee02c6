//! KWOK mode (`testbed up --kwok-nodes N`): N simulated nodes next to the real ones, for scale
//! tests of the operator with more pods than this machine could run. KWOK (sigs.k8s.io/kwok,
//! built from `go/kwok` by `scripts/build-tool.sh kwok`) is the standard tool for this: it plays the
//! kubelet's part in the API for the nodes it manages (status, leases) and their pods, driven by
//! its own "fast" stages: a pod goes Ready as soon as it is bound, and a deleted pod is removed
//! at once. Nothing runs for such a pod; its address is taken from [`NetworkPlan::kwok_pod_cidr`],
//! which the host routes onto the run's bridge so that a connection to it fails on this machine.
//!
//! The nodes carry the label and taint KWOK's documentation uses, so only pods that ask for them
//! land there: `nodeSelector: {type: kwok}` and a toleration of [`TAINT_KEY`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};

use crate::binaries::locate_tool;
use crate::network::{NetworkPlan, ip};
use crate::process::Children;

/// Annotation by which KWOK finds the nodes it manages; also the taint's key.
pub const TAINT_KEY: &str = "kwok.x-k8s.io/node";
/// Label of every KWOK node (`type=kwok`), for a `nodeSelector`.
pub const NODE_LABEL: (&str, &str) = ("type", "kwok");
/// Lease of a KWOK node: as the real kubelet's, so the node-lifecycle controller keeps them Ready.
const LEASE_SECONDS: u32 = 40;

/// The folder with the `kwok` binary and `stages.yaml`.
#[derive(Debug, Clone)]
pub struct Kwok {
    pub dir: PathBuf,
}

impl Kwok {
    /// Uses `TESTBED_KWOK_DIR` if set, else runs the build script (at once when built).
    pub async fn locate_or_build() -> Result<Self> {
        let dir = locate_tool("TESTBED_KWOK_DIR", "kwok", &["kwok", "stages.yaml"]).await?;
        Ok(Self { dir })
    }
}

/// The name of KWOK node `index`.
pub fn node_name(index: u32) -> String {
    format!("kwok-node-{index}")
}

/// A KWOK node as it is created: KWOK fills in its status (Ready, addresses, a capacity of a
/// million pods) once it sees the annotation.
fn node_object(index: u32) -> Result<Node> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name(index),
            "annotations": {TAINT_KEY: "fake"},
            "labels": {
                NODE_LABEL.0: NODE_LABEL.1,
                "kubernetes.io/hostname": node_name(index),
                "kubernetes.io/os": "linux",
            },
        },
        "spec": {"taints": [{"key": TAINT_KEY, "value": "fake", "effect": "NoSchedule"}]},
    }))?)
}

/// Routes the KWOK pods' addresses onto the bridge (the route goes with the bridge), creates
/// `count` nodes and starts KWOK as the child `kwok`.
pub async fn start(
    kwok: &Kwok,
    kubeconfig: &Path,
    plan: &NetworkPlan,
    count: u32,
    children: &Children,
    logs: &Path,
) -> Result<()> {
    let cidr = plan.kwok_pod_cidr();
    ip(&["route", "add", &cidr, "dev", &plan.bridge])?;
    let nodes: Api<Node> = Api::all(crate::kubeconfig::client(kubeconfig).await?);
    for index in 0..count {
        nodes
            .create(&PostParams::default(), &node_object(index)?)
            .await
            .with_context(|| format!("cannot create node {}", node_name(index)))?;
    }
    let args = vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--config={}", kwok.dir.join("stages.yaml").display()),
        format!("--manage-nodes-with-annotation-selector={TAINT_KEY}=fake"),
        format!("--cidr={cidr}"),
        format!("--node-ip={}", plan.kwok_node_ip()),
        format!("--node-lease-duration-seconds={LEASE_SECONDS}"),
    ];
    children.start(
        "kwok",
        &kwok.dir.join("kwok"),
        &args,
        &logs.join("kwok.log"),
    )?;
    tracing::info!(count, %cidr, "kwok nodes created");
    Ok(())
}
