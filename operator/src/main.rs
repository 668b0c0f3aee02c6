//! graceful-operator: runs the GracefulService controller with metrics, health endpoints and
//! optional leader election; one controller per watched namespace (or one for all), so that a
//! namespaced install needs Roles in those namespaces only.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
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
    /// Watch only these namespaces, comma-separated or the flag repeated (default: all
    /// namespaces). One controller runs per namespace.
    #[arg(
        long = "namespace",
        env = "GRACEFUL_OPERATOR_NAMESPACE",
        value_delimiter = ',',
        value_parser = namespace_name
    )]
    namespaces: Vec<String>,
    /// Reconciles that run at once, per watched scope. Bounded so that a burst (1000
    /// GracefulServices created at once) queues in the operator instead of piling requests onto
    /// the API server, where each would wait behind all the others.
    #[arg(
        long,
        env = "GRACEFUL_OPERATOR_MAX_CONCURRENT_RECONCILES",
        default_value_t = 16,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    max_concurrent_reconciles: u16,
}

/// A namespace name as Kubernetes accepts it (an RFC 1123 label): refused here with a clear
/// message rather than by the API server at the first watch.
fn namespace_name(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if valid {
        Ok(value.to_string())
    } else {
        Err(format!(
            "`{value}` is not a namespace name: 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit"
        ))
    }
}

/// The namespaces to run a controller for: `None` is all of them. A namespace named twice is
/// refused, as it would run two controllers on the same objects.
fn scopes(namespaces: Vec<String>) -> Result<Vec<Option<String>>, String> {
    let mut seen = std::collections::BTreeSet::new();
    for ns in &namespaces {
        if !seen.insert(ns) {
            return Err(format!("namespace `{ns}` is given twice"));
        }
    }
    if namespaces.is_empty() {
        return Ok(vec![None]);
    }
    Ok(namespaces.into_iter().map(Some).collect())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let scopes = match scopes(args.namespaces.clone()) {
        Ok(scopes) => scopes,
        Err(message) => {
            use clap::CommandFactory;
            Args::command()
                .error(clap::error::ErrorKind::ValueValidation, message)
                .exit()
        }
    };
    telemetry::init(args.log_format);
    match run(args, scopes).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "graceful-operator stopped");
            ExitCode::FAILURE
        }
    }
}

/// Runs one controller per scope, each with its own context, until `shutdown` resolves; marks
/// `state` ready once every controller's caches have synced (so the CRD answers and the lists
/// are allowed in every scope).
async fn run_controllers(
    client: &kube::Client,
    metrics: &Metrics,
    scopes: Vec<Option<String>>,
    concurrency: u16,
    shutdown: Shared<BoxFuture<'static, ()>>,
    state: &Arc<http::State>,
) {
    let contexts: Vec<_> = scopes
        .into_iter()
        .map(|scope| {
            let (ctx, writers) = Context::new(client.clone(), metrics.clone());
            (Arc::new(ctx), writers, scope)
        })
        .collect();
    let synced: Vec<Arc<Context>> = contexts.iter().map(|(ctx, _, _)| ctx.clone()).collect();
    let readiness = state.clone();
    let ready = tokio::spawn(async move {
        futures::future::join_all(synced.iter().map(|ctx| ctx.synced())).await;
        readiness.ready.store(true, Ordering::Relaxed);
        tracing::info!("caches synced; ready");
    });
    let controllers = contexts.into_iter().map(|(ctx, writers, scope)| {
        controller::run(ctx, writers, scope, concurrency, shutdown.clone())
    });
    futures::future::join_all(controllers).await;
    ready.abort();
}

/// Returns once GracefulServices can be listed in every scope (the CRD is installed and
/// readable), retrying every 5 s with a warning.
async fn crd_answers(client: &kube::Client, scopes: &[Option<String>]) {
    for scope in scopes {
        let api: kube::Api<graceful_operator::GracefulService> = match scope {
            Some(ns) => kube::Api::namespaced(client.clone(), ns),
            None => kube::Api::all(client.clone()),
        };
        while let Err(error) = api.list(&kube::api::ListParams::default().limit(1)).await {
            tracing::warn!(%error, scope = scope.as_deref().unwrap_or("<all>"), "cannot list GracefulServices (is the CRD installed?); not ready");
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    }
}

async fn run(args: Args, scopes: Vec<Option<String>>) -> Result<(), Box<dyn std::error::Error>> {
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
        namespaces = %if args.namespaces.is_empty() { "<all>".to_string() } else { args.namespaces.join(",") },
        "serving metrics and health"
    );

    let client = kube::Client::try_default().await?;
    let concurrency = args.max_concurrent_reconciles;
    let mut stop = Box::pin(shutdown_signal());

    if args.leader_election == Switch::Off {
        let stop = stop.boxed().shared();
        run_controllers(&client, &metrics, scopes, concurrency, stop, &state).await;
        return Ok(());
    }
    let lease = LeaseConfig {
        name: args.lease_name,
        namespace: args.lease_namespace,
        identity: leader::default_identity(),
    };
    // Ready while waiting once the CRD answers: a standby replica is healthy, it just does not
    // reconcile (its caches sync when it leads).
    tokio::select! {
        () = crd_answers(&client, &scopes) => {}
        () = &mut stop => return Ok(()),
    }
    state.ready.store(true, Ordering::Relaxed);
    let leadership = tokio::select! {
        held = leader::acquire(client.clone(), &lease) => held,
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
        .boxed()
        .shared()
    };
    // After a loss the controller gets STOP_GRACE to finish, then the process ends anyway: its
    // writes must stop before the lease can expire for the standby (leader.rs).
    let stopped_in_time = tokio::select! {
        () = run_controllers(&client, &metrics, scopes, concurrency, end, &state) => true,
        () = async {
            lost.clone().await;
            tokio::time::sleep(leader::STOP_GRACE).await;
        } => false,
    };
    let was_lost = lost.peek().is_some();
    drop(lost);
    if !was_lost {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_comma_separated_or_repeated() {
        let args = Args::try_parse_from(["op", "--namespace", "a,b", "--namespace", "c"]).unwrap();
        assert_eq!(args.namespaces, ["a", "b", "c"]);
        let scopes = scopes(args.namespaces).unwrap();
        assert_eq!(
            scopes,
            [Some("a".into()), Some("b".into()), Some("c".into())]
        );
        let all = Args::try_parse_from(["op"]).unwrap();
        assert_eq!(scopes_of(all), [None]);
    }

    fn scopes_of(args: Args) -> Vec<Option<String>> {
        scopes(args.namespaces).unwrap()
    }

    // Bad input is refused with a message naming it.
    #[test]
    fn a_bad_or_repeated_namespace_is_refused() {
        for bad in ["A", "a_b", "-a", "a-", "", &"x".repeat(64)] {
            let flag = format!("--namespace={bad}");
            let error = Args::try_parse_from(["op", flag.as_str()]).unwrap_err();
            assert!(
                error.to_string().contains("not a namespace name"),
                "{bad}: {error}"
            );
        }
        let twice = Args::try_parse_from(["op", "--namespace", "a,a"]).unwrap();
        assert_eq!(
            scopes(twice.namespaces).unwrap_err(),
            "namespace `a` is given twice"
        );
    }
}
