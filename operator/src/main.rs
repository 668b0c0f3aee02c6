//! graceful-operator: runs the GracefulService controller with metrics, health endpoints and
//! optional leader election.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use futures::FutureExt;
use graceful_operator::controller::{self, Context};
use graceful_operator::http;
use graceful_operator::leader::{self, LeaseConfig};
use graceful_operator::metrics::Metrics;
use graceful_operator::telemetry::{self, LogFormat};
use prometheus_client::registry::Registry;

/// Kubernetes operator: GracefulService into Deployment, Service and PodDisruptionBudget, with
/// scale-downs walked one settled step at a time.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address serving /metrics (Prometheus text format).
    #[arg(
        long,
        env = "GRACEFUL_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    metrics_addr: SocketAddr,
    /// Address serving /healthz and /readyz.
    #[arg(
        long,
        env = "GRACEFUL_OPERATOR_HEALTH_ADDR",
        default_value = "0.0.0.0:8081"
    )]
    health_addr: SocketAddr,
    /// Log format.
    #[arg(
        long,
        env = "GRACEFUL_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Leader election through a Lease, so several replicas can run with one active.
    #[arg(
        long,
        env = "GRACEFUL_OPERATOR_LEADER_ELECTION",
        value_enum,
        default_value = "off"
    )]
    leader_election: Switch,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "graceful-operator")]
    lease_name: String,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "GRACEFUL_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init(args.log_format);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "graceful-operator stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let state = Arc::new(http::State {
        registry,
        ready: AtomicBool::new(false),
    });
    let metrics_at = http::serve(args.metrics_addr, state.clone()).await?;
    let health_at = http::serve(args.health_addr, state.clone()).await?;
    tracing::info!(
        %metrics_at,
        %health_at,
        namespace = args.namespace.as_deref().unwrap_or("<all>"),
        "serving metrics and health"
    );

    let client = kube::Client::try_default().await?;
    let (ctx, writers) = Context::new(client.clone(), metrics);
    let ctx = Arc::new(ctx);
    let mut stop = Box::pin(shutdown_signal());

    if args.leader_election == Switch::Off {
        state.ready.store(true, Ordering::Relaxed);
        controller::run(ctx, writers, args.namespace, stop).await;
        return Ok(());
    }
    let lease = LeaseConfig {
        name: args.lease_name,
        namespace: args.lease_namespace,
        identity: leader::default_identity(),
    };
    // Ready while waiting: a standby replica is healthy, it just does not reconcile.
    state.ready.store(true, Ordering::Relaxed);
    let leadership = tokio::select! {
        held = leader::acquire(client, &lease) => held?,
        () = &mut stop => return Ok(()),
    };
    tracing::info!(lease = %lease.name, identity = %lease.identity, "leadership acquired");
    let lost = leadership.lost().boxed().shared();
    let end = {
        let lost = lost.clone();
        async move {
            tokio::select! {
                () = stop => {}
                () = lost => {}
            }
        }
    };
    // After a loss the controller gets STOP_GRACE to finish, then the process ends anyway: its
    // writes must stop before the lease can expire for the standby (leader.rs).
    let stopped_in_time = tokio::select! {
        () = controller::run(ctx, writers, args.namespace, end) => true,
        () = async {
            lost.clone().await;
            tokio::time::sleep(leader::STOP_GRACE).await;
        } => false,
    };
    if lost.peek().is_none() {
        leadership.release().await;
        return Ok(());
    }
    leadership.abandon();
    if !stopped_in_time {
        tracing::error!(grace = ?leader::STOP_GRACE, "controller still busy after the lease was lost; exiting without waiting");
    }
    // Exit non-zero so the pod restarts and campaigns again from a clean state.
    Err("leadership lost".into())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}
