//! A pod's network: a named network namespace joined to the bridge by a veth pair, like a CNI
//! bridge plugin would do (eth0 with the pod address, default route via the bridge's gateway).

use std::net::Ipv4Addr;

use anyhow::{Context, bail};
use tokio::process::Command;

/// Names and addresses of one pod network.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    pub netns: String,
    pub host_veth: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub bridge: String,
}

impl PodNetwork {
    /// The path a process opens to join the namespace.
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }
}

/// A short, stable tag for a netns prefix: interface names are limited to 15 bytes, so the
/// host-side veth is `v<tag><n>` rather than the full prefix.
pub fn veth_name(prefix: &str, n: u32) -> String {
    // FNV-1a: stable across runs and Rust versions.
    let mut hash: u32 = 0x811c9dc5;
    for b in prefix.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x01000193);
    }
    format!("v{:06x}{n}", hash & 0xff_ffff)
}

async fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .await
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Creates the namespace and wires it to the bridge; on failure removes what it made.
pub async fn create(net: &PodNetwork) -> anyhow::Result<()> {
    let result = wire(net).await;
    if result.is_err() {
        delete(net).await;
    }
    result
}

async fn wire(net: &PodNetwork) -> anyhow::Result<()> {
    let ns = net.netns.as_str();
    let addr = format!("{}/{}", net.ip, net.prefix);
    let gw = net.gateway.to_string();
    ip(&["netns", "add", ns]).await?;
    ip(&[
        "link",
        "add",
        &net.host_veth,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns,
    ])
    .await?;
    ip(&["link", "set", &net.host_veth, "master", &net.bridge, "up"]).await?;
    ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
    ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"]).await?;
    ip(&["-n", ns, "link", "set", "eth0", "up"]).await?;
    ip(&["-n", ns, "route", "add", "default", "via", &gw]).await?;
    Ok(())
}

/// Deletes the namespace (which destroys both veth ends); errors are logged, not returned.
pub async fn delete(net: &PodNetwork) {
    if let Err(e) = ip(&["netns", "delete", &net.netns]).await {
        tracing::debug!(error = %e, netns = %net.netns, "netns delete");
    }
    let _ = ip(&["link", "delete", &net.host_veth]).await;
}

/// Deletes every namespace whose name starts with `<prefix>-` (left over by a crashed agent, or
/// at shutdown).
pub async fn delete_all_with_prefix(prefix: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output().await else {
        return;
    };
    let wanted = format!("{prefix}-");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if !name.starts_with(&wanted) {
            continue;
        }
        if let Err(e) = ip(&["netns", "delete", name]).await {
            tracing::warn!(error = %e, netns = name, "cannot delete netns");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_linux_limit_and_differ_per_prefix() {
        let a = veth_name("tb-12345-abcdef", 65534);
        assert!(a.len() <= 15, "{a}");
        assert_ne!(veth_name("tb-1", 3), veth_name("tb-2", 3));
        assert_eq!(veth_name("tb-1", 3), veth_name("tb-1", 3));
    }
}
