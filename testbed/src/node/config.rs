//! The configuration files of one real node, as pure functions of its plan: containerd's
//! `config.toml`, the CNI network, the KubeletConfiguration and the KubeProxyConfiguration.
//!
//! Every setting that keeps a node inside its run folder, or keeps it from touching the host, is
//! here and says why; `../shared/notes/real-node.md` is where they were first found.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// kube-proxy's two modes that this testbed runs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    Iptables,
    Nftables,
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Iptables => "iptables",
            ProxyMode::Nftables => "nftables",
        }
    }
}

/// Everything a node's files are made from.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    pub name: String,
    pub ip: Ipv4Addr,
    /// This node's pods, a /24.
    pub pod_cidr: String,
    /// All nodes' pods (kube-proxy's `clusterCIDR`).
    pub cluster_cidr: String,
    /// `<run>/nodes/<name>`: state, sockets, logs of this node.
    pub dir: PathBuf,
    /// Folder of containerd, runc and the CNI plugins (`install-node-runtime.sh`).
    pub runtime: PathBuf,
    /// The CNI network name, unique per run (the plugins key their caches on it).
    pub network: String,
    /// The kubelet's cgroup root, e.g. `/gtb3-node-0`, the same in every hierarchy.
    pub cgroup_root: String,
    pub ca_file: PathBuf,
    pub kubelet_kubeconfig: PathBuf,
    pub proxy_kubeconfig: PathBuf,
    pub resolv_conf: PathBuf,
    pub pause_image: String,
    pub proxy_mode: ProxyMode,
}

impl NodeFiles {
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd/containerd.sock")
    }
    pub fn containerd_config(&self) -> PathBuf {
        self.dir.join("containerd/config.toml")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }
    pub fn kubelet_config(&self) -> PathBuf {
        self.dir.join("kubelet/config.yaml")
    }
    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet/root")
    }
    pub fn pod_logs(&self) -> PathBuf {
        self.dir.join("pod-logs")
    }
    pub fn proxy_config(&self) -> PathBuf {
        self.dir.join("kube-proxy/config.yaml")
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// containerd 1.6 (config version 2). Root, state, sockets, the opt plugin and runc's state all
/// under the node's folder; `restrict_oom_score_adj` because root here may not lower
/// oom_score_adj (every sandbox fails without it); pod network namespaces under the state dir
/// instead of the host's /run/netns; the pause image is local, never pulled.
pub fn containerd_toml(node: &NodeFiles) -> String {
    let c = node.dir.join("containerd");
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{runc_root}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"#,
        root = p(&c.join("root")),
        state = p(&c.join("state")),
        socket = p(&node.containerd_socket()),
        opt = p(&c.join("opt")),
        pause = node.pause_image,
        runc = p(&node.runtime.join("bin/runc")),
        runc_root = p(&c.join("runc")),
        cni_bin = p(&node.runtime.join("cni")),
        cni_conf = p(&node.cni_conf_dir()),
    )
}

/// A bridge (`cni0`, inside the node's namespace) with host-local addresses from the node's /24.
/// `ipMasq: false`: nothing is NATed towards the outside (there is no route out anyway), and the
/// IPAM state lives in the node's folder, not in /var/lib/cni.
pub fn cni_conflist(node: &NodeFiles) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": node.network,
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": node.pod_cidr }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": p(&node.dir.join("cni/ipam")),
            }
        }]
    })
    .to_string()
}

/// The kubelet. cgroupfs under a cgroup root of the node's own; cgroup v1 allowed (these
/// machines mount v1); swap allowed; the API server authenticates with the cluster CA and is
/// authorized by webhook; the read-only port off; a resolv.conf of the run's (pods never use the
/// host's resolver); images are never garbage-collected (they cannot be pulled again); eviction
/// thresholds loose, so a busy build machine does not evict the tests' pods.
pub fn kubelet_yaml(node: &NodeFiles) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://{socket}
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
failCgroupV1: false
failSwapOn: false
resolvConf: {resolv}
podLogsDir: {logs}
clusterDomain: cluster.local
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 1Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
serializeImagePulls: false
maxPods: 250
"#,
        ip = node.ip,
        ca = p(&node.ca_file),
        socket = p(&node.containerd_socket()),
        cgroup_root = node.cgroup_root,
        resolv = p(&node.resolv_conf),
        logs = p(&node.pod_logs()),
    )
}

/// The kubelet's flags beside its config file.
pub fn kubelet_args(node: &NodeFiles) -> Vec<String> {
    vec![
        format!("--config={}", p(&node.kubelet_config())),
        format!("--kubeconfig={}", p(&node.kubelet_kubeconfig)),
        format!("--hostname-override={}", node.name),
        format!("--node-ip={}", node.ip),
        format!("--root-dir={}", p(&node.kubelet_root())),
        format!("--cert-dir={}", p(&node.dir.join("kubelet/pki"))),
        "--v=1".into(),
    ]
}

/// kube-proxy. Node ports on the node's own address only; `localhostNodePorts: false` leaves
/// `route_localnet` alone, and zero conntrack settings leave the (host-wide) conntrack sysctls
/// alone; health and metrics on the namespace's loopback.
pub fn kube_proxy_yaml(node: &NodeFiles) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
mode: {mode}
clusterCIDR: {cluster}
hostnameOverride: {name}
bindAddress: {ip}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["{ip}/32"]
iptables:
  localhostNodePorts: false
  minSyncPeriod: 1s
  syncPeriod: 30s
nftables:
  minSyncPeriod: 1s
  syncPeriod: 30s
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
        kubeconfig = p(&node.proxy_kubeconfig),
        mode = node.proxy_mode.as_str(),
        cluster = node.cluster_cidr,
        name = node.name,
        ip = node.ip,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeFiles {
        NodeFiles {
            name: "node-1".into(),
            ip: Ipv4Addr::new(10, 213, 3, 11),
            pod_cidr: "10.128.49.0/24".into(),
            cluster_cidr: "10.128.48.0/20".into(),
            dir: PathBuf::from("/tmp/run/nodes/node-1"),
            runtime: PathBuf::from("/cache/node-runtime-x"),
            network: "gtb3".into(),
            cgroup_root: "/gtb3-node-1".into(),
            ca_file: PathBuf::from("/tmp/run/pki/ca.crt"),
            kubelet_kubeconfig: PathBuf::from("/tmp/run/nodes/node-1/kubelet.kubeconfig"),
            proxy_kubeconfig: PathBuf::from("/tmp/run/kube-proxy.kubeconfig"),
            resolv_conf: PathBuf::from("/tmp/run/resolv.conf"),
            pause_image: "localhost/graceful-testbed/pause:3.10".into(),
            proxy_mode: ProxyMode::Nftables,
        }
    }

    /// Every path a component is told to write lies in the run folder (or the read-only cache).
    #[test]
    fn configs_keep_state_in_the_run_folder() {
        let n = node();
        let texts = [containerd_toml(&n), kubelet_yaml(&n), kube_proxy_yaml(&n)];
        for text in &texts {
            for path in text
                .split(|c: char| c == '"' || c.is_whitespace())
                .filter(|w| w.starts_with('/') && !w.starts_with("/gtb"))
            {
                assert!(
                    path.starts_with("/tmp/run/") || path.starts_with("/cache/"),
                    "{path} is outside the run folder"
                );
            }
        }
        assert!(texts[0].contains("restrict_oom_score_adj = true"));
        assert!(texts[0].contains("netns_mounts_under_state_dir = true"));
        assert!(texts[1].contains("readOnlyPort: 0"));
        assert!(texts[1].contains("cgroupRoot: /gtb3-node-1"));
        assert!(texts[2].contains("mode: nftables"));
        assert!(texts[2].contains("localhostNodePorts: false"));
    }

    #[test]
    fn cni_network_is_the_nodes_own_and_never_masquerades() -> anyhow::Result<()> {
        let conf: serde_json::Value = serde_json::from_str(&cni_conflist(&node()))?;
        assert_eq!(conf["name"], "gtb3");
        let bridge = &conf["plugins"][0];
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.128.49.0/24");
        assert!(
            bridge["ipam"]["dataDir"]
                .as_str()
                .is_some_and(|d| d.starts_with("/tmp/run/"))
        );
        Ok(())
    }

    #[test]
    fn kubelet_flags_name_the_node() {
        let args = kubelet_args(&node());
        assert!(args.contains(&"--hostname-override=node-1".to_string()));
        assert!(args.contains(&"--node-ip=10.213.3.11".to_string()));
    }
}
