//! `experiment`: rolls out and scales down the app under load, graceful vs naive, on the testbed,
//! and writes the table, the plot and the raw numbers to a results folder.
//!
//!   cargo run --release -p experiment -- --scenario all --duration 120 --clients 1000 --out results/

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use experiment::cluster::Cluster;
use experiment::report::{self, RunReport};
use experiment::scenario::{self, Params, Scenario, Setup};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    Rollout,
    Scaledown,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OperatorInstall {
    /// `helm install` of charts/graceful-operator; a kubelet runs the operator's pod from its image.
    Chart,
    /// The operator binary as a host process with the admin kubeconfig (fallback).
    Host,
    /// Already installed on the cluster: do nothing.
    Installed,
}

/// Graceful vs naive rollouts and scale-downs under load, measured through a node port (kube-proxy).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Which scenario to run; each runs once per setup.
    #[arg(long, value_enum, default_value_t = Which::All)]
    scenario: Which,
    /// The setups to run, in order (comma-separated): graceful, sidecar, naive.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Setup::Graceful, Setup::Sidecar, Setup::Naive])]
    setups: Vec<Setup>,
    /// Run only the graceful setup (the same as `--setups graceful`).
    #[arg(long)]
    graceful_only: bool,
    /// Minimum load time per run, in seconds; the change is applied after a quarter of it.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(4..=3600))]
    duration: u64,
    /// Seconds at the start of each run left out of the first table (none by default); the
    /// whole run is reported as well.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=600))]
    warmup: u64,
    /// The clients start spread evenly over this many milliseconds, each first request timed
    /// from its client's start (0: all in the same instant, when the generator's own connect
    /// storm delays the first requests).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    ramp_ms: u64,
    /// Load kept after the change completed, at least, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600))]
    min_tail: u64,
    /// Bound on the change's completion, in seconds.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(10..=7200))]
    change_timeout: u64,
    /// Concurrent keep-alive clients.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=20000))]
    clients: u64,
    /// Bound on requests per run.
    #[arg(long, default_value_t = 5_000_000)]
    max_requests: u64,
    /// `spec.scaleDown.preferIdlePods` of the GracefulService: the idlest pods go first.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    prefer_idle_pods: bool,
    /// Handler time of the app, in milliseconds (GRACEFUL_WORK_MS).
    #[arg(long, default_value_t = 1000)]
    work_ms: u64,
    /// Replicas of the rolling update.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(1..=100))]
    replicas: i32,
    /// Replicas before the scale-down.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i32).range(2..=100))]
    scale_from: i32,
    /// Replicas after the scale-down.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=99))]
    scale_to: i32,
    /// Results folder.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Use this cluster instead of starting a testbed.
    #[arg(long, env = "TESTBED_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The testbed supervisor binary (default: `testbed` next to this binary).
    #[arg(long)]
    testbed_bin: Option<PathBuf>,
    /// kube-proxy's mode on the testbed this command starts (iptables or nftables).
    #[arg(long, default_value = "iptables", value_parser = ["iptables", "nftables"])]
    proxy_mode: String,
    /// How the operator gets onto the cluster.
    #[arg(long, value_enum, default_value_t = OperatorInstall::Chart)]
    operator: OperatorInstall,
    /// The helm binary (default: the testbed's, else helm on PATH).
    #[arg(long)]
    helm: Option<PathBuf>,
    /// The operator chart.
    #[arg(long, default_value = "charts/graceful-operator")]
    chart: PathBuf,
    /// Image tag of the operator the chart installs (default: the chart's appVersion).
    #[arg(long)]
    operator_tag: Option<String>,
    /// Where node ports answer when the cluster is not a testbed with real nodes (a testbed's
    /// node 0 is used otherwise).
    #[arg(long, default_value = "127.0.0.1")]
    node_address: std::net::IpAddr,
    /// The operator binary for `--operator host` (default: next to this binary).
    #[arg(long)]
    operator_bin: Option<PathBuf>,
    /// The CRD for `--operator host`.
    #[arg(long, default_value = "crds/gracefulservice.yaml")]
    crd: PathBuf,
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.scale_to >= args.scale_from {
        eprintln!("error: --scale-to must be below --scale-from");
        std::process::exit(2);
    }
    let nofile = experiment::raise_nofile_limit()?;
    if nofile < args.clients * 2 + 256 {
        eprintln!(
            "warning: open-file limit {nofile} is low for {} clients; raise the hard limit (ulimit -Hn)",
            args.clients
        );
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");

    let mut cluster = match &args.kubeconfig {
        Some(kc) => Cluster::connect(kc.clone()).await?,
        None => {
            let bin = args
                .testbed_bin
                .clone()
                .unwrap_or_else(|| sibling("testbed"));
            Cluster::start_testbed(&bin, &args.proxy_mode, Duration::from_secs(300)).await?
        }
    };
    let result = run(&args, &mut cluster, &command).await;
    cluster.shutdown().await;
    let runs = result?;
    println!("{}", report::markdown_table(&runs));
    eprintln!("results in {}", args.out.display());
    Ok(())
}

async fn run(args: &Args, cluster: &mut Cluster, command: &str) -> anyhow::Result<Vec<RunReport>> {
    match args.operator {
        OperatorInstall::Chart => {
            cluster
                .install_chart(
                    args.helm.as_deref(),
                    &args.chart,
                    args.operator_tag.as_deref(),
                )
                .await
                .context("installing the operator chart (try --operator host as a fallback)")?;
        }
        OperatorInstall::Host => {
            let bin = args
                .operator_bin
                .clone()
                .unwrap_or_else(|| sibling("graceful-operator"));
            cluster.run_operator_on_host(&bin, &args.crd).await?;
        }
        OperatorInstall::Installed => {}
    }
    let params = Params {
        rollout_replicas: args.replicas,
        scale_from: args.scale_from,
        scale_to: args.scale_to,
        work_ms: args.work_ms,
        clients: args.clients as usize,
        duration: Duration::from_secs(args.duration),
        warmup: Duration::from_secs(args.warmup),
        ramp: Duration::from_millis(args.ramp_ms),
        min_tail: Duration::from_secs(args.min_tail),
        change_timeout: Duration::from_secs(args.change_timeout),
        max_requests: args.max_requests,
        prefer_idle_pods: args.prefer_idle_pods,
        node_address: cluster.node_address(args.node_address),
    };
    cluster.prepare_app_tags(&scenario::APP_TAGS)?;
    let scenarios: &[Scenario] = match args.scenario {
        Which::Rollout => &[Scenario::Rollout],
        Which::Scaledown => &[Scenario::Scaledown],
        Which::All => &[Scenario::Rollout, Scenario::Scaledown],
    };
    let setups: &[Setup] = if args.graceful_only {
        &[Setup::Graceful]
    } else {
        &args.setups
    };
    let mut runs = Vec::new();
    for &sc in scenarios {
        let mut these = Vec::new();
        for &setup in setups {
            let r = scenario::run(&cluster.client, sc, setup, &params).await?;
            eprintln!("{}", report::markdown_table(std::slice::from_ref(&r)));
            these.push(r);
        }
        let title = format!(
            "{sc}: latency over time ({} clients, {} ms handler)",
            args.clients, args.work_ms
        );
        let svg = experiment::plot::scenario_svg(&title, &these.iter().collect::<Vec<_>>());
        std::fs::create_dir_all(&args.out)?;
        std::fs::write(args.out.join(format!("{sc}.svg")), svg)?;
        runs.extend(these);
        report::write_all(&args.out, command, &runs)?;
    }
    Ok(runs)
}
