//! graceful-operator: runs the GracefulService controller with metrics, health endpoints and
//! optional leader election.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
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

    // Ready once the caches have synced: the CRD answers and the lists are allowed.
    let synced = ctx.clone();
    let readiness = state.clone();
    tokio::spawn(async move {
        synced.synced().await;
        readiness.ready.store(true, Ordering::Relaxed);
        tracing::info!("caches synced; ready");
    });
    if args.leader_election == Switch::Off {
        controller::run(ctx, writers, args.namespace, stop).await;
        return Ok(());
    }
    let lease = LeaseConfig {
        name: args.lease_name,
        namespace: args.lease_namespace,
        identity: leader::default_identity(),
    };
    // Ready while waiting once the CRD answers: a standby replica is healthy, it just does not
    // reconcile (its caches sync when it leads).
    crd_answers(&client, args.namespace.as_deref()).await;
    state.ready.store(true, Ordering::Relaxed);
    let leadership = tokio::select! {
        held = leader::acquire(client, &lease) => held?,
        () = &mut stop => return Ok(()),
    };
    tracing::info!(lease = %lease.name, identity = %lease.identity, "leadership acquired");
    let (lost_tx, mut lost_rx) = tokio::sync::oneshot::channel::<()>();
    let lost = leadership.lost();
    let end = async move {
        tokio::select! {
            () = stop => {}
            () = lost => { let _ = lost_tx.send(()); }
        }
    };
    controller::run(ctx, writers, args.namespace, end).await;
    let was_lost = lost_rx.try_recv().is_ok();
    leadership.release().await;
    if was_lost {
        // Exit non-zero so the pod restarts and campaigns again from a clean state.
        return Err("leadership lost".into());
    }
    Ok(())
}

/// Returns once GracefulServices can be listed (the CRD is installed and readable), retrying
/// every 5 s with a warning.
async fn crd_answers(client: &kube::Client, namespace: Option<&str>) {
    let api: kube::Api<graceful_operator::GracefulService> = match namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    };
    loop {
        match api.list(&kube::api::ListParams::default().limit(1)).await {
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(%error, "cannot list GracefulServices (is the CRD installed?); not ready")
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
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
