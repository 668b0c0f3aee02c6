//! Real nodes: per node a network namespace on the run's bridge with its own containerd, kubelet
//! and kube-proxy, a cgroup root, and state and sockets under `<run>/nodes/<name>/`. The
//! supervisor starts them as children like the control plane; [`teardown`] undoes what they
//! leave outside their processes (containers, mounts, cgroups, host state).

pub mod config;
pub mod host;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::certs::{ClientCert, Pki};
use crate::kubeconfig;
use crate::network::{NetworkPlan, ip};
use crate::process::{Children, Launch};
use config::NodeFiles;
pub use config::ProxyMode;

/// The local pause image every sandbox runs (built from pause.c, never pulled).
pub const PAUSE_IMAGE: &str = "localhost/graceful-testbed/pause:3.10";

/// What tests need to know of a node, written to `testbed.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: String,
    /// `/run/netns/<name>`: `nsenter --net=<this>` runs a command on the node.
    pub netns: PathBuf,
    pub containerd_socket: PathBuf,
    /// The supervisor's names of its containerd, kubelet and kube-proxy.
    pub components: Vec<String>,
}

/// An OCI archive to import into every node, under `repository:<each tag in the archive>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageArchive {
    pub repository: String,
    pub archive: PathBuf,
}

/// Everything the nodes are started from.
pub struct NodesSetup<'a> {
    pub plan: &'a NetworkPlan,
    pub pki: &'a Pki,
    pub server: &'a str,
    pub run_dir: &'a Path,
    pub runtime: &'a Path,
    pub kubelet: &'a Path,
    pub kube_proxy: &'a Path,
    pub proxy_mode: ProxyMode,
    pub images: &'a [ImageArchive],
    pub count: u32,
}

const CONTAINERD_READY: Duration = Duration::from_secs(30);

/// PATH of the node components: the private runtime folder first (containerd finds its shim
/// there), then the system's (iptables, nft, conntrack).
fn node_path(runtime: &Path) -> String {
    format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        runtime.join("bin").display()
    )
}

pub fn node_name(index: u32) -> String {
    format!("node-{index}")
}

/// The cgroup root of a node: `/<netns prefix><node name>`, e.g. `/gtb3-node-0`.
pub fn cgroup_root(plan: &NetworkPlan, index: u32) -> String {
    format!("{}{}", plan.netns_prefix, node_name(index))
}

/// Starts `count` nodes, one after another; returns their descriptions. Each node's
/// containerd has imported every image before its kubelet starts, so no pod ever waits for one.
pub async fn start(setup: &NodesSetup<'_>, children: &Children) -> Result<Vec<NodeInfo>> {
    let plan = setup.plan;
    let resolv = setup.run_dir.join("resolv.conf");
    // No nameserver answers here: pods that resolve names fail at once, never ask the host's.
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions ndots:1 attempts:1 timeout:1\n",
    )?;
    let proxy_kubeconfig = kubeconfig::write_kubeconfig(
        &setup.run_dir.join("kube-proxy.kubeconfig"),
        setup.server,
        &setup.pki.ca_cert,
        &setup.pki.kube_proxy,
        "system:kube-proxy",
    )?;
    let mut nodes = Vec::new();
    for index in 0..setup.count {
        let name = node_name(index);
        let dir = setup.run_dir.join("nodes").join(&name);
        let cert: &ClientCert = setup
            .pki
            .nodes
            .get(index as usize)
            .context("no kubelet certificate for the node")?;
        let files = NodeFiles {
            name: name.clone(),
            ip: plan.node_ip(index),
            pod_cidr: plan.node_pod_cidr(index),
            cluster_cidr: plan.cluster_cidr.clone(),
            dir: dir.clone(),
            runtime: setup.runtime.to_path_buf(),
            network: plan.bridge.clone(),
            cgroup_root: format!("/{}", cgroup_root(plan, index)),
            ca_file: setup.pki.ca_cert.clone(),
            kubelet_kubeconfig: dir.join("kubelet.kubeconfig"),
            proxy_kubeconfig: proxy_kubeconfig.clone(),
            resolv_conf: resolv.clone(),
            pause_image: PAUSE_IMAGE.into(),
            proxy_mode: setup.proxy_mode,
        };
        let netns = create_network(plan, index, setup.count)?;
        host::create_cgroup_root(&cgroup_root(plan, index))?;
        write_files(&files, setup.server, cert)?;
        let components = start_components(setup, &files, &netns, children).await?;
        nodes.push(NodeInfo {
            name,
            ip: files.ip,
            pod_cidr: files.pod_cidr.clone(),
            netns,
            containerd_socket: files.containerd_socket(),
            components,
        });
    }
    Ok(nodes)
}

fn write_files(files: &NodeFiles, server: &str, cert: &ClientCert) -> Result<()> {
    for dir in [
        files.dir.join("containerd"),
        files.cni_conf_dir(),
        files.dir.join("kubelet"),
        files.kubelet_root(),
        files.pod_logs(),
        files.dir.join("kube-proxy"),
        files.dir.join("logs"),
    ] {
        std::fs::create_dir_all(&dir)?;
    }
    std::fs::write(files.containerd_config(), config::containerd_toml(files))?;
    std::fs::write(
        files.cni_conf_dir().join("10-testbed.conflist"),
        config::cni_conflist(files),
    )?;
    std::fs::write(files.kubelet_config(), config::kubelet_yaml(files))?;
    std::fs::write(files.proxy_config(), config::kube_proxy_yaml(files))?;
    kubeconfig::write_kubeconfig(
        &files.kubelet_kubeconfig,
        server,
        &files.ca_file,
        cert,
        &format!("system:node:{}", files.name),
    )?;
    Ok(())
}

async fn start_components(
    setup: &NodesSetup<'_>,
    files: &NodeFiles,
    netns: &Path,
    children: &Children,
) -> Result<Vec<String>> {
    let logs = setup.run_dir.join("logs");
    let path = node_path(setup.runtime);
    let launch = |program: PathBuf, args: Vec<String>| Launch {
        program,
        args,
        env: vec![("PATH".into(), path.clone())],
        netns: Some(netns.to_path_buf()),
    };
    let containerd = format!("containerd-{}", files.name);
    let containerd_log = logs.join(format!("{containerd}.log"));
    children.launch(
        &containerd,
        launch(
            setup.runtime.join("bin/containerd"),
            vec![format!("--config={}", files.containerd_config().display())],
        ),
        &containerd_log,
    )?;
    wait_for_containerd(
        setup.runtime,
        &files.containerd_socket(),
        children,
        &containerd_log,
    )
    .await?;
    for image in setup.images {
        import_image(setup.runtime, &files.containerd_socket(), image)?;
    }
    let kubelet = format!("kubelet-{}", files.name);
    children.launch(
        &kubelet,
        launch(setup.kubelet.to_path_buf(), config::kubelet_args(files)),
        &logs.join(format!("{kubelet}.log")),
    )?;
    let proxy = format!("kube-proxy-{}", files.name);
    children.launch(
        &proxy,
        launch(
            setup.kube_proxy.to_path_buf(),
            vec![format!("--config={}", files.proxy_config().display())],
        ),
        &logs.join(format!("{proxy}.log")),
    )?;
    Ok(vec![containerd, kubelet, proxy])
}

/// `ctr` against one node's containerd, in the CRI's `k8s.io` namespace.
pub fn ctr(runtime: &Path, socket: &Path) -> Command {
    let mut command = Command::new(runtime.join("bin/ctr"));
    command
        .arg(format!("--address={}", socket.display()))
        .args(["--namespace", "k8s.io"]);
    command
}

/// Imports every tag of `image`'s archive into the containerd at `socket`.
pub fn import_image(runtime: &Path, socket: &Path, image: &ImageArchive) -> Result<()> {
    let out = ctr(runtime, socket)
        .args(["images", "import", "--base-name", &image.repository])
        .arg(&image.archive)
        .output()
        .context("cannot run ctr")?;
    if !out.status.success() {
        bail!(
            "importing {} into {} failed: {}",
            image.archive.display(),
            socket.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn wait_for_containerd(
    runtime: &Path,
    socket: &Path,
    children: &Children,
    log: &Path,
) -> Result<()> {
    let deadline = Instant::now() + CONTAINERD_READY;
    loop {
        children.ensure_running()?;
        let answered = socket.exists()
            && ctr(runtime, socket)
                .arg("version")
                .output()
                .is_ok_and(|out| out.status.success());
        if answered {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "containerd not ready within {} s; read {}",
                CONTAINERD_READY.as_secs(),
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node's network namespace `<prefix>node-<i>` with `eth0` on the bridge, forwarding on
/// (inside the namespace only), routes to the other nodes' pods, and no default route: nothing
/// a node or pod sends can leave the machine. The host gets routes to the node's pods and (via
/// node 0) to the Service range, so that no packet for them heads for the host's default gateway.
fn create_network(plan: &NetworkPlan, index: u32, count: u32) -> Result<PathBuf> {
    let ns = format!("{}{}", plan.netns_prefix, node_name(index));
    let host_end = format!("{}n{index}", plan.bridge);
    let ip_addr = plan.node_ip(index);
    ip(&["netns", "add", &ns])?;
    ip(&[
        "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    ip(&["link", "set", &host_end, "master", &plan.bridge, "up"])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{ip_addr}/24"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    for other in (0..count).filter(|other| *other != index) {
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            &plan.node_pod_cidr(other),
            "via",
            &plan.node_ip(other).to_string(),
        ])?;
    }
    ip(&["-n", &ns, "route", "add", &plan.service_cidr, "dev", "eth0"])?;
    let netns = PathBuf::from("/run/netns").join(&ns);
    let status = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        .status()
        .context("cannot run nsenter")?;
    if !status.success() {
        bail!("cannot turn on forwarding in {ns}");
    }
    ip(&[
        "route",
        "add",
        &plan.node_pod_cidr(index),
        "via",
        &ip_addr.to_string(),
    ])?;
    if index == 0 {
        ip(&[
            "route",
            "add",
            &plan.service_cidr,
            "via",
            &ip_addr.to_string(),
        ])?;
    }
    Ok(netns)
}

/// Undoes what the nodes of the run in `plan` leave once their components are stopped (or
/// dead): containers and shims (killed through the node cgroups and namespaces), mounts under
/// the run folder, the cgroups. The network namespaces and the bridge go with `plan.destroy()`,
/// which the caller runs next. Idempotent.
pub fn teardown(plan: &NetworkPlan, run_dir: Option<&Path>) {
    for root in host::cgroup_roots_with_prefix(&plan.netns_prefix) {
        host::remove_cgroup_root(&root);
    }
    plan.kill_namespace_processes();
    if let Some(run_dir) = run_dir {
        host::unmount_under(run_dir);
        host::remove_run_traces(run_dir);
    }
    // Containers still being killed may have held a cgroup busy on the first pass.
    for root in host::cgroup_roots_with_prefix(&plan.netns_prefix) {
        host::remove_cgroup_root(&root);
    }
    host::remove_forward_guard(&plan.bridge);
}
