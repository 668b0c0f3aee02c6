//! `testbed up`: one run of the testbed, from network and certificates to a ready API with nodes,
//! and back to nothing. It runs until SIGINT/SIGTERM/SIGHUP, until the process named by
//! `--watch-parent` is gone, or until one of its children dies; in every case it tears down all it
//! made: children in reverse start order, the run's network namespaces, the bridge, the run dir.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use serde::{Deserialize, Serialize};

use crate::binaries::{Binaries, NodeRuntime};
use crate::controlplane;
use crate::network::NetworkPlan;
use crate::node::{self, NodeInfo, NodesSetup, ProxyMode};
use crate::process::{self, Children};
use crate::slot::Slot;
use crate::{certs, control, images, kubeconfig};

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Tear down when this process exits (the test binary that started the supervisor).
    #[arg(long, value_name = "PID")]
    pub watch_parent: Option<i32>,
    /// Folder for certificates, kubeconfigs, logs and etcd data; must be absent or empty.
    /// Default: a new folder under the temp dir.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Nodes to start, each with its own containerd, kubelet and kube-proxy.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::network::MAX_NODES)))]
    pub nodes: u32,
    /// kube-proxy's mode on every node.
    #[arg(long, value_enum, default_value_t = ProxyMode::Iptables)]
    pub proxy_mode: ProxyMode,
    /// Simulated nodes to add, run by KWOK (see `kwok.rs`): for scale tests with more pods than
    /// the real nodes hold. Pods land there only with `nodeSelector: {type: kwok}` and a
    /// toleration of the taint `kwok.x-k8s.io/node`.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub kwok_nodes: u32,
    /// Start metrics-server and register `metrics.k8s.io` (see `metrics.rs`), for
    /// HorizontalPodAutoscalers on CPU and `kubectl top`.
    #[arg(long)]
    pub metrics_server: bool,
    /// Keep the run dir (logs, etcd data) after teardown.
    #[arg(long)]
    pub keep: bool,
}

/// What a run offers, written to `<run dir>/testbed.json` next to the kubeconfig, so that a
/// fixture given only `TESTBED_KUBECONFIG` finds the rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub kubeconfig: PathBuf,
    pub run_dir: PathBuf,
    pub server: String,
    pub gateway: std::net::Ipv4Addr,
    pub apiserver_port: u16,
    pub ca_file: PathBuf,
    pub bridge: String,
    /// The bridge's subnet (gateway and nodes).
    pub bridge_cidr: String,
    /// All pods' addresses, a /24 per node.
    pub cluster_cidr: String,
    pub netns_prefix: String,
    pub controlplane_dir: PathBuf,
    pub supervisor_pid: u32,
    /// The API server's `--service-node-port-range` (first, last).
    pub node_ports: (u16, u16),
    /// The nodes; node ports answer on each node's `ip`.
    pub nodes: Vec<NodeInfo>,
    /// containerd, runc, CNI plugins and umoci of the nodes.
    pub node_runtime_dir: PathBuf,
    /// The images every node imported (app, operator, pause).
    pub images: Vec<node::ImageArchive>,
    /// The Services' cluster IP range (the host routes it to node 0).
    pub service_cidr: String,
    pub proxy_mode: ProxyMode,
    /// The KWOK nodes (`--kwok-nodes`), if any.
    #[serde(default)]
    pub kwok_nodes: Vec<String>,
    /// Whether metrics-server runs (`--metrics-server`).
    #[serde(default)]
    pub metrics_server: bool,
}

pub const RUN_INFO_FILE: &str = "testbed.json";

const NODES_READY: Duration = Duration::from_secs(60);

/// Grace between SIGTERM and SIGKILL per child at teardown: the agent stops its pods first.
fn stop_grace(name: &str) -> Duration {
    match name {
        "etcd" | "kube-apiserver" => Duration::from_secs(5),
        // Pods are not drained at teardown: their cgroups are killed right after.
        _ => Duration::from_secs(3),
    }
}

pub async fn up(args: UpArgs) -> Result<()> {
    let started = Instant::now();
    let run_dir = prepare_run_dir(args.run_dir.as_deref())?;
    let slot = Arc::new(Slot::claim(&run_dir, args.keep)?);
    let plan = slot.plan();
    let recorder = Arc::clone(&slot);
    let children = Children::new(move |pid, name| recorder.record_child(pid, name));

    let outcome = tokio::select! {
        result = start_and_watch(&args, &run_dir, &plan, &children, started) => result,
        reason = shutdown_requested(args.watch_parent) => {
            tracing::info!(%reason, "shutting down");
            Ok(())
        }
    };
    if let Err(error) = &outcome {
        tracing::error!("{error:#}");
    }
    children.stop_all(stop_grace);
    node::teardown(&plan, Some(&run_dir));
    plan.destroy();
    slot.undo_host_changes_if_last();
    if args.keep {
        tracing::info!(run_dir = %run_dir.display(), "run dir kept");
    } else if outcome.is_err() {
        // The error names a log file: keep the logs, drop the rest (etcd data, keys).
        remove_all_but_logs(&run_dir);
        eprintln!("testbed: logs kept in {}", run_dir.join("logs").display());
    } else if let Err(error) = std::fs::remove_dir_all(&run_dir) {
        tracing::warn!(%error, run_dir = %run_dir.display(), "cannot remove run dir");
    }
    drop(children); // holds the other reference to the slot
    if let Ok(slot) = Arc::try_unwrap(slot) {
        slot.release();
    }
    tracing::info!("teardown complete");
    outcome
}

/// Creates the run dir: teardown deletes it, so it must be new or empty.
fn prepare_run_dir(requested: Option<&Path>) -> Result<PathBuf> {
    let dir = match requested {
        Some(dir) => {
            let dir = std::path::absolute(dir)?;
            if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
                bail!("--run-dir {} is not empty", dir.display());
            }
            dir
        }
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .subsec_nanos();
            std::env::temp_dir().join(format!("graceful-testbed-{}-{nanos}", std::process::id()))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn remove_all_but_logs(run_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name() == "logs" {
            continue;
        }
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(error) = removed {
            tracing::warn!(%error, path = %path.display(), "cannot remove");
        }
    }
}

/// Starts everything, announces the kubeconfig, then watches the children; returns only on error.
async fn start_and_watch(
    args: &UpArgs,
    run_dir: &Path,
    plan: &NetworkPlan,
    children: &Children,
    started: Instant,
) -> Result<()> {
    eprintln!("testbed: locating or building the control plane binaries");
    let bins = Binaries::locate_or_build().await?;
    eprintln!("testbed: locating or installing the node runtime");
    let runtime = NodeRuntime::locate_or_install().await?;
    plan.create()?;
    let node_names: Vec<String> = (0..args.nodes).map(node::node_name).collect();
    let pki = certs::generate(
        &run_dir.join("pki"),
        plan.gateway,
        plan.service_ip,
        &node_names,
    )?;
    eprintln!(
        "testbed: starting the control plane (logs in {}/logs)",
        run_dir.display()
    );
    let cp = controlplane::start(&bins, &pki, run_dir, plan, children).await?;
    node::host::record_sysctls(&crate::slot::registry_dir())?;
    node::host::add_forward_guard(&plan.bridge)?;
    let images = images::project_images(&bins, &runtime.dir, &run_dir.join("images"))?;
    eprintln!("testbed: starting {} nodes", args.nodes);
    let setup = NodesSetup {
        plan,
        pki: &pki,
        server: &cp.server,
        run_dir,
        runtime: &runtime.dir,
        kubelet: &bins.path("kubelet"),
        kube_proxy: &bins.path("kube-proxy"),
        proxy_mode: args.proxy_mode,
        images: &images,
        count: args.nodes,
    };
    let nodes = node::start(&setup, children).await?;
    wait_for_ready_nodes(&cp.kubeconfig, args.nodes, children, &run_dir.join("logs")).await?;
    if args.kwok_nodes > 0 {
        eprintln!("testbed: starting {} KWOK nodes", args.kwok_nodes);
        let kwok = crate::kwok::Kwok::locate_or_build().await?;
        let logs = run_dir.join("logs");
        crate::kwok::start(
            &kwok,
            &cp.kubeconfig,
            plan,
            args.kwok_nodes,
            children,
            &logs,
        )
        .await?;
        let all = args.nodes + args.kwok_nodes;
        wait_for_ready_nodes(&cp.kubeconfig, all, children, &logs).await?;
    }
    if args.metrics_server {
        eprintln!("testbed: starting metrics-server");
        let server = crate::metrics::MetricsServer::locate_or_build().await?;
        crate::metrics::start(
            &server,
            &cp.kubeconfig,
            &pki,
            plan.gateway,
            children,
            run_dir,
        )
        .await?;
    }
    let info = RunInfo {
        kubeconfig: cp.kubeconfig.clone(),
        run_dir: run_dir.to_path_buf(),
        server: cp.server.clone(),
        gateway: plan.gateway,
        apiserver_port: cp.apiserver_port,
        ca_file: pki.ca_cert.clone(),
        bridge: plan.bridge.clone(),
        bridge_cidr: plan.bridge_cidr.clone(),
        cluster_cidr: plan.cluster_cidr.clone(),
        netns_prefix: plan.netns_prefix.clone(),
        controlplane_dir: bins.dir.clone(),
        supervisor_pid: std::process::id(),
        node_ports: plan.node_ports,
        nodes,
        node_runtime_dir: runtime.dir,
        images,
        service_cidr: plan.service_cidr.clone(),
        proxy_mode: args.proxy_mode,
        kwok_nodes: (0..args.kwok_nodes).map(crate::kwok::node_name).collect(),
        metrics_server: args.metrics_server,
    };
    std::fs::write(
        run_dir.join(RUN_INFO_FILE),
        serde_json::to_vec_pretty(&info)?,
    )?;
    tracing::info!(seconds = started.elapsed().as_secs_f32(), "testbed ready");
    eprintln!(
        "testbed: ready in {:.1} s. Try: KUBECONFIG={} kubectl get nodes   (Ctrl-C tears down)",
        started.elapsed().as_secs_f32(),
        cp.kubeconfig.display()
    );
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "KUBECONFIG={}", cp.kubeconfig.display())?;
    stdout.flush()?;
    drop(stdout);
    // SIGUSR1: restart or stop a component on request (see `control`).
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    let mut handled = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => children.ensure_running()?,
            Some(()) = usr1.recv() => {
                handled = control::serve(run_dir, &cp.kubeconfig, children, handled).await?;
            }
        }
    }
}

/// Waits until `wanted` Nodes are Ready; `logs` is named in the error.
async fn wait_for_ready_nodes(
    kubeconfig: &Path,
    wanted: u32,
    children: &Children,
    logs: &Path,
) -> Result<()> {
    let nodes: kube::Api<Node> = kube::Api::all(kubeconfig::client(kubeconfig).await?);
    let deadline = Instant::now() + NODES_READY;
    loop {
        children.ensure_running()?;
        let ready = nodes
            .list(&Default::default())
            .await
            .map(|list| list.items.iter().filter(|node| is_ready(node)).count())
            .unwrap_or(0);
        if ready >= wanted as usize {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{ready} of {wanted} nodes Ready after {} s; read {}",
                NODES_READY.as_secs(),
                logs.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Resolves with the reason once the run should end.
async fn shutdown_requested(watch_parent: Option<i32>) -> String {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return "cannot install signal handlers".into();
    };
    let parent_start = watch_parent.and_then(process::start_time);
    let parent_gone = async {
        let Some(pid) = watch_parent else {
            return std::future::pending::<String>().await;
        };
        loop {
            if !process::is_alive(pid) || process::start_time(pid) != parent_start {
                return format!("watched parent {pid} is gone");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::select! {
        _ = int.recv() => "SIGINT".into(),
        _ = term.recv() => "SIGTERM".into(),
        _ = hup.recv() => "SIGHUP".into(),
        reason = parent_gone => reason,
    }
}
