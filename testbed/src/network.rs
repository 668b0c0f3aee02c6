//! The run's network in the host namespace: one Linux bridge with the gateway address, onto which
//! each node's network namespace is plugged, and the address plan of the run (nodes, pods,
//! Services, node ports). No NAT, no route to the outside: nodes reach each other over the bridge
//! and the API server through the gateway address.
//!
//! Everything is done with the `ip` command, so that a person can reproduce and inspect each step.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Names and addresses of one run's network, all derived from its slot number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    /// Bridge interface name (at most 15 bytes, as Linux requires).
    pub bridge: String,
    /// Prefix of every network namespace the run creates; teardown deletes all that match.
    pub netns_prefix: String,
    pub gateway: Ipv4Addr,
    /// The bridge's subnet, `10.213.<slot>.0/24`: the gateway and the nodes' addresses.
    pub bridge_cidr: String,
    /// The real nodes' pods: a /20 of the slot's own (see [`slot_block`]), a /24 per node.
    pub cluster_cidr: String,
    /// The Services' cluster IPs: a /20 of the slot's own, so that the host routes of
    /// concurrent runs never overlap.
    pub service_cidr: String,
    /// The first address of `service_cidr`, the `kubernetes` Service's cluster IP.
    pub service_ip: Ipv4Addr,
    /// The API server's `--service-node-port-range` (first, last), see [`node_port_range`].
    pub node_ports: (u16, u16),
}

/// Node ports per run: each run's API server hands out ports from a block of its own, so that
/// two runs' services never share a port number (easier to tell apart in logs and captures).
pub const NODE_PORTS_PER_RUN: u16 = 100;

/// The block of node ports of `slot`: `30000 + (slot mod 27) * 100` to that plus 99. All blocks
/// lie within Kubernetes' default range 30000-32767 (which the CRD's `service.nodePort` schema
/// also enforces); 27 consecutive slots get disjoint blocks (slot 27 gets 30000-30099, slots
/// 1-26 get 30100-32699), and more runs than that at once do not happen on one machine.
pub fn node_port_range(slot: u8) -> (u16, u16) {
    let first = 30000 + (u16::from(slot) % 27) * NODE_PORTS_PER_RUN;
    (first, first + NODE_PORTS_PER_RUN - 1)
}

/// Real nodes per run: each takes a /24 of the lower half of the run's /20 of pod addresses; the
/// upper half is KWOK's ([`NetworkPlan::kwok_pod_cidr`]).
pub const MAX_NODES: u32 = 8;

/// Pods of all runs live in 10.128.0.0/12, Services in 10.96.0.0/12; each run takes a /20 of
/// each (slot 1..=254 fits: 256 /20s in a /12).
const PODS_SPACE: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 0);
const SERVICES_SPACE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 0);

/// The slot's /20 within a /12 `space`.
fn slot_block(space: Ipv4Addr, slot: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(space) + (u32::from(slot) << 12))
}

fn next(addr: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr) + 1)
}

/// Prefix shared by all runs' bridges and namespaces, so a person can list them.
pub const NAME_PREFIX: &str = "gtb";

impl NetworkPlan {
    pub fn for_slot(slot: u8) -> Self {
        Self {
            bridge: format!("{NAME_PREFIX}{slot}"),
            netns_prefix: format!("{NAME_PREFIX}{slot}-"),
            gateway: Ipv4Addr::new(10, 213, slot, 1),
            bridge_cidr: format!("10.213.{slot}.0/24"),
            cluster_cidr: format!("{}/20", slot_block(PODS_SPACE, slot)),
            service_cidr: format!("{}/20", slot_block(SERVICES_SPACE, slot)),
            service_ip: next(slot_block(SERVICES_SPACE, slot)),
            node_ports: node_port_range(slot),
        }
    }

    /// Node `index`'s address on the bridge: `10.213.<slot>.<10 + index>`.
    pub fn node_ip(&self, index: u32) -> Ipv4Addr {
        let [a, b, c, _] = self.gateway.octets();
        Ipv4Addr::new(a, b, c, 10 + index as u8)
    }

    /// Node `index`'s pod subnet, the `index`-th /24 of `cluster_cidr`.
    pub fn node_pod_cidr(&self, index: u32) -> String {
        let base = u32::from(slot_block(PODS_SPACE, self.slot()));
        format!("{}/24", Ipv4Addr::from(base + (index << 8)))
    }

    /// The KWOK pods' addresses: the upper /21 of `cluster_cidr` (2046 pods), which no real
    /// node uses.
    pub fn kwok_pod_cidr(&self) -> String {
        let base = u32::from(slot_block(PODS_SPACE, self.slot()));
        format!("{}/21", Ipv4Addr::from(base + (MAX_NODES << 8)))
    }

    /// The address every KWOK node reports: one on the bridge's subnet that nothing holds.
    pub fn kwok_node_ip(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.gateway.octets();
        Ipv4Addr::new(a, b, c, 250)
    }

    fn slot(&self) -> u8 {
        self.gateway.octets()[2]
    }

    /// Creates the bridge with the gateway address and brings it up.
    pub fn create(&self) -> Result<()> {
        ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.gateway),
            "dev",
            &self.bridge,
        ])?;
        ip(&["link", "set", &self.bridge, "up"])?;
        tracing::info!(bridge = %self.bridge, gateway = %self.gateway, "bridge created");
        Ok(())
    }

    /// Kills what still runs in the run's network namespaces (a real node's containerd shims
    /// outlive containerd).
    pub fn kill_namespace_processes(&self) {
        for ns in netns_with_prefix(&self.netns_prefix) {
            kill_netns_processes(&ns);
        }
    }

    /// Kills what still runs in the run's namespaces, deletes them, then the bridge. Idempotent.
    pub fn destroy(&self) {
        for ns in netns_with_prefix(&self.netns_prefix) {
            kill_netns_processes(&ns);
            match ip(&["netns", "delete", &ns]) {
                Ok(()) => tracing::info!(netns = %ns, "network namespace deleted"),
                Err(error) => tracing::warn!(netns = %ns, %error, "cannot delete namespace"),
            }
        }
        if link_exists(&self.bridge) {
            match ip(&["link", "delete", &self.bridge]) {
                Ok(()) => tracing::info!(bridge = %self.bridge, "bridge deleted"),
                Err(error) => tracing::warn!(bridge = %self.bridge, %error, "cannot delete bridge"),
            }
        }
    }

    /// Whether the slot's subnet or bridge name is already used on this machine.
    pub fn conflicts(&self) -> bool {
        if link_exists(&self.bridge) {
            return true;
        }
        let routes = output(&["-4", "route", "show", "table", "all"]).unwrap_or_default();
        let ours = [
            (Ipv4Addr::new(10, 213, self.slot(), 0), 24),
            (slot_block(PODS_SPACE, self.slot()), 20),
            (slot_block(SERVICES_SPACE, self.slot()), 20),
        ];
        routes
            .lines()
            .filter_map(|line| line.split_whitespace().take(2).find_map(parse_cidr))
            .any(|route| ours.iter().any(|own| overlaps(route, *own)))
    }
}

/// Runs `ip <args>`; an error carries its stderr.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn output(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Names of network namespaces starting with `prefix` (`ip netns list` prints `name (id: N)`).
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    output(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Names of all bridges whose name starts with [`NAME_PREFIX`] followed by a slot number.
pub fn testbed_bridges() -> Vec<String> {
    output(&["-o", "link", "show", "type", "bridge"])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .filter_map(|name| slot_of_bridge(name).map(|_| name.to_string()))
        .collect()
}

/// The slot number in a bridge name such as `gtb7`.
pub fn slot_of_bridge(name: &str) -> Option<u8> {
    name.strip_prefix(NAME_PREFIX)?.parse().ok()
}

fn kill_netns_processes(ns: &str) {
    for pid in output(&["netns", "pids", ns]).unwrap_or_default().lines() {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            tracing::warn!(netns = %ns, pid, "killed a process left in the namespace");
        }
    }
}

fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, len.parse().ok()?),
        None => (text, 32),
    };
    Some((addr.parse().ok()?, len))
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1).min(32);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (u32::from(a.0) & mask) == (u32::from(b.0) & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_port_blocks_are_disjoint_and_within_the_default_range() {
        let blocks: Vec<(u16, u16)> = (1..=27).map(node_port_range).collect();
        for (k, (first, last)) in blocks.iter().enumerate() {
            assert!(*first >= 30000 && *last <= 32767, "{first}-{last}");
            assert_eq!(last - first + 1, NODE_PORTS_PER_RUN);
            for (other_first, other_last) in &blocks[k + 1..] {
                assert!(last < other_first || other_last < first, "blocks overlap");
            }
        }
        assert_eq!(node_port_range(1), (30100, 30199));
        assert_eq!(node_port_range(254), node_port_range(254 - 27));
    }

    #[test]
    fn plan_names_fit_linux_limits() {
        let plan = NetworkPlan::for_slot(254);
        assert!(plan.bridge.len() <= 15);
        assert_eq!(plan.gateway, Ipv4Addr::new(10, 213, 254, 1));
        assert_eq!(plan.bridge_cidr, "10.213.254.0/24");
        assert_eq!(slot_of_bridge(&plan.bridge), Some(254));
        assert_eq!(slot_of_bridge("gtbx"), None);
    }

    #[test]
    fn slots_get_disjoint_pod_and_service_blocks() {
        let one = NetworkPlan::for_slot(1);
        assert_eq!(one.cluster_cidr, "10.128.16.0/20");
        assert_eq!(one.service_cidr, "10.96.16.0/20");
        assert_eq!(one.service_ip, Ipv4Addr::new(10, 96, 16, 1));
        assert_eq!(one.node_ip(2), Ipv4Addr::new(10, 213, 1, 12));
        assert_eq!(one.node_pod_cidr(0), "10.128.16.0/24");
        assert_eq!(one.node_pod_cidr(MAX_NODES - 1), "10.128.23.0/24");
        assert_eq!(one.kwok_pod_cidr(), "10.128.24.0/21");
        assert_eq!(one.kwok_node_ip(), Ipv4Addr::new(10, 213, 1, 250));
        let last = NetworkPlan::for_slot(254);
        assert_eq!(last.cluster_cidr, "10.143.224.0/20");
        assert_eq!(last.service_cidr, "10.111.224.0/20");
        let blocks: Vec<_> = (1..=254u8).map(|n| slot_block(PODS_SPACE, n)).collect();
        for pair in blocks.windows(2) {
            assert_eq!(u32::from(pair[1]) - u32::from(pair[0]), 1 << 12);
        }
    }

    #[test]
    fn overlap_of_routes() {
        let slot = (Ipv4Addr::new(10, 213, 7, 0), 24);
        assert!(overlaps(parse_cidr("10.0.0.0/8").unwrap(), slot));
        assert!(overlaps(parse_cidr("10.213.7.5").unwrap(), slot));
        assert!(!overlaps(parse_cidr("10.213.8.0/24").unwrap(), slot));
        assert!(!overlaps(parse_cidr("192.0.2.0/24").unwrap(), slot));
        assert_eq!(parse_cidr("default"), None);
    }
}
