//! The node agent: stands in for kubelet and container runtime. It registers Ready nodes, runs
//! the pods bound to them as local processes in their own network namespaces and keeps the
//! kubelet's contract (probes, status, preStop, SIGTERM, SIGKILL after the grace period).

pub mod context;
pub mod env;
pub mod image;
pub mod ipam;
pub mod journal;
pub mod kill;
pub mod launch;
pub mod netns;
pub mod node;
pub mod pods;
pub mod probes;
pub mod process;
pub mod restart;
pub mod security;
pub mod slot;
pub mod status;
pub mod termination;
pub mod timeline;
pub mod token;
pub mod worker;

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clap::Parser;
use kube::runtime::events::Recorder;

use context::AgentContext;
use ipam::{Cidr, Ipam};

/// Flags of `node-agent` (stable: the supervisor passes them).
#[derive(Debug, Parser)]
#[command(
    name = "node-agent",
    about = "Runs pods bound to its nodes as local processes (kubelet stand-in)"
)]
pub struct Args {
    /// Kubeconfig of an identity allowed to manage nodes, leases, pods, pod status, service-account
    /// tokens and events.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Number of Node objects to register (node-0 .. node-N-1).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub nodes: u16,
    /// Existing bridge the pods' veth pairs join.
    #[arg(long)]
    pub bridge: String,
    /// Pod address range, e.g. 10.88.0.0/24 (the gateway lies inside).
    #[arg(long)]
    pub pod_cidr: Cidr,
    /// The bridge's address: pods' default route, hostIP, and the API address pods dial.
    #[arg(long)]
    pub gateway: Ipv4Addr,
    /// Directory for pod logs (`pods/<ns>_<pod>/<container>.log`) and `agent-events.jsonl`.
    #[arg(long)]
    pub run_dir: PathBuf,
    /// Prefix of the network namespace names (`<prefix>-<n>`); unique per run.
    #[arg(long)]
    pub netns_prefix: String,
    /// Port of kube-apiserver on the gateway address (KUBERNETES_SERVICE_PORT of pods).
    #[arg(long)]
    pub apiserver_port: u16,
    /// CA certificate that signed the API server's serving certificate (ca.crt of pods).
    #[arg(long)]
    pub ca_file: PathBuf,
    /// Maps an image repository to a local binary: REPO=PATH, repeatable.
    #[arg(long = "image", value_parser = image::parse_mapping)]
    pub images: Vec<(String, PathBuf)>,
}

impl Args {
    /// Checks what clap cannot: how the flags fit together.
    pub fn validate(&self) -> Result<(), String> {
        if !self.pod_cidr.contains(self.gateway) {
            return Err(format!(
                "--gateway {} is not inside --pod-cidr",
                self.gateway
            ));
        }
        let prefix_ok = !self.netns_prefix.is_empty()
            && self.netns_prefix.len() <= 40
            && self
                .netns_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !prefix_ok {
            return Err(format!(
                "--netns-prefix {:?}: 1 to 40 letters, digits, '-' or '_'",
                self.netns_prefix
            ));
        }
        Ok(())
    }
}

async fn client(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

/// Runs the agent until SIGTERM or SIGINT, then kills every pod process and deletes the
/// namespaces it made.
pub async fn run(args: Args) -> anyhow::Result<()> {
    args.validate().map_err(anyhow::Error::msg)?;
    let client = client(&args.kubeconfig).await?;
    std::fs::create_dir_all(args.run_dir.join("pods"))?;
    process::prepare_mount_point().context("creating the service-account mount point")?;
    netns::delete_all_with_prefix(&args.netns_prefix).await;
    let names = node::node_names(usize::from(args.nodes));
    let since = node::register(&client, &names, args.gateway)
        .await
        .context("registering nodes")?;
    tracing::info!(nodes = ?names, "nodes registered");
    let ctx = Arc::new(AgentContext {
        recorder: Recorder::new(client.clone(), AgentContext::reporter(&names[0])),
        client: client.clone(),
        node_names: names.iter().cloned().collect(),
        images: args.images.iter().cloned().collect::<BTreeMap<_, _>>(),
        bridge: args.bridge.clone(),
        gateway: args.gateway,
        cidr: args.pod_cidr,
        netns_prefix: args.netns_prefix.clone(),
        run_dir: args.run_dir.clone(),
        api: env::ApiEndpoint {
            host: args.gateway.to_string(),
            port: args.apiserver_port,
        },
        ca_file: args.ca_file.clone(),
        ipam: Mutex::new(Ipam::new(args.pod_cidr, args.gateway)),
        journal: journal::Journal::open(&args.run_dir)?,
        pids: Mutex::new(HashSet::new()),
    });
    let heartbeat = tokio::spawn(node::heartbeat_loop(client, names, args.gateway, since));
    let pods = tokio::spawn(pods::watch_pods(ctx.clone()));
    shutdown_signal().await?;
    tracing::info!("shutting down: killing pod processes");
    heartbeat.abort();
    pods.abort();
    for pid in ctx.live_pids() {
        process::kill_group(pid);
    }
    netns::delete_all_with_prefix(&args.netns_prefix).await;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Logs to stderr, readable text or JSON lines; RUST_LOG filters (default info).
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
