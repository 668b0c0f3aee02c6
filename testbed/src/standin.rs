//! The stand-ins for the node side, `node-agent` (kubelet + runtime) and `svc-proxy`
//! (kube-proxy), started by `testbed up --stand-in-nodes`. Kept only while proofs move to real
//! nodes; see `node` for those.

use std::path::Path;

use anyhow::Result;

use crate::controlplane::ControlPlane;
use crate::network::NetworkPlan;
use crate::process::Children;
use crate::supervisor::{UpArgs, sibling};

/// Starts the node agent if it is built; returns whether it was started.
pub fn start_agent(
    args: &UpArgs,
    run_dir: &Path,
    plan: &NetworkPlan,
    cp: &ControlPlane,
    ca_file: &Path,
    children: &Children,
) -> Result<bool> {
    let Some(agent) = sibling("node-agent") else {
        tracing::warn!("node-agent is not built next to testbed: no nodes, pods will not run");
        return Ok(false);
    };
    let agent_dir = run_dir.join("agent");
    std::fs::create_dir_all(&agent_dir)?;
    let mut agent_args = vec![
        format!("--kubeconfig={}", cp.kubeconfig.display()),
        format!("--nodes={}", args.nodes),
        format!("--bridge={}", plan.bridge),
        format!("--pod-cidr={}", plan.pod_cidr),
        format!("--gateway={}", plan.gateway),
        format!("--run-dir={}", agent_dir.display()),
        format!("--apiserver-port={}", cp.apiserver_port),
        format!("--ca-file={}", ca_file.display()),
        format!("--netns-prefix={}", plan.netns_prefix.trim_end_matches('-')),
    ];
    for (repo, binary) in [
        ("ghcr.io/graceful-dev/graceful-app", "graceful-app"),
        (
            "ghcr.io/graceful-dev/graceful-operator",
            "graceful-operator",
        ),
    ] {
        match sibling(binary) {
            Some(path) => agent_args.push(format!("--image={repo}={}", path.display())),
            None => tracing::warn!(binary, "not built: pods of {repo} will fail to pull"),
        }
    }
    let log = run_dir.join("logs/node-agent.log");
    children.start("node-agent", &agent, &agent_args, &log)?;
    Ok(true)
}

pub fn start_proxy(
    args: &UpArgs,
    run_dir: &Path,
    cp: &ControlPlane,
    children: &Children,
) -> Result<()> {
    let Some(proxy) = sibling("svc-proxy") else {
        tracing::warn!("svc-proxy is not built next to testbed: node ports are not served");
        return Ok(());
    };
    let proxy_args = vec![
        format!("--kubeconfig={}", cp.kubeconfig.display()),
        format!("--propagation-delay-ms={}", args.propagation_delay_ms),
    ];
    children.start(
        "svc-proxy",
        &proxy,
        &proxy_args,
        &run_dir.join("logs/svc-proxy.log"),
    )?;
    Ok(())
}
