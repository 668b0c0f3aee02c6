//! The experiment, short: a rolling update and a scale-down under load through the service
//! proxy, each once through a GracefulService and once as a naive Deployment. The graceful runs
//! must lose no request; the naive twins must lose some, which shows the graceful assertion can
//! fail. Sizes are small (a few replicas, tens of clients, 200 ms handler) and every load is
//! bounded in count and time. Figures of the full-length run come from the `experiment` command.

use std::path::Path;
use std::time::Duration;

use experiment::cluster::Cluster;
use experiment::report::RunReport;
use experiment::scenario::{self, Params, Scenario, Setup};
use experiment::timeline::EventKind;

/// The operator is installed once per test binary by the chart, as a user installs it.
static INSTALLED: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);

async fn cluster() -> anyhow::Result<Cluster> {
    let tb = testbed::shared()?;
    let cluster = Cluster::connect(tb.kubeconfig().to_path_buf()).await?;
    let mut installed = INSTALLED.lock().await;
    if !*installed {
        cluster.prepare_app_tags(&scenario::APP_TAGS)?;
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/graceful-operator");
        cluster.install_chart(None, &chart, None).await?;
        *installed = true;
    }
    Ok(cluster)
}

fn params(cluster: &Cluster) -> Params {
    Params {
        node_address: cluster.node_address(std::net::Ipv4Addr::LOCALHOST.into()),
        rollout_replicas: 3,
        scale_from: 4,
        scale_to: 1,
        work_ms: 200,
        clients: 30,
        duration: Duration::from_secs(12),
        warmup: Duration::ZERO,
        ramp: Duration::from_millis(300),
        min_tail: Duration::from_secs(3),
        change_timeout: Duration::from_secs(180),
        max_requests: 100_000,
        prefer_idle_pods: true,
    }
}

fn describe(r: &RunReport) -> String {
    format!(
        "{}/{}: {} requests, {} errors {:?}",
        r.scenario, r.setup, r.whole_run.requests, r.whole_run.errors, r.whole_run.error_kinds
    )
}

fn deletions(r: &RunReport) -> usize {
    r.events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::PodDeletionStarted { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_loses_no_request_with_graceful_service_or_sidecar_and_some_without()
-> anyhow::Result<()> {
    testbed::skip_without_cluster!();
    let cluster = cluster().await?;
    let p = params(&cluster);
    let graceful = scenario::run(&cluster.client, Scenario::Rollout, Setup::Graceful, &p).await?;
    eprintln!("{}", describe(&graceful));
    let sidecar = scenario::run(&cluster.client, Scenario::Rollout, Setup::Sidecar, &p).await?;
    eprintln!("{}", describe(&sidecar));
    let naive = scenario::run(&cluster.client, Scenario::Rollout, Setup::Naive, &p).await?;
    eprintln!("{}", describe(&naive));

    // The rollout really replaced every pod under load.
    assert!(
        deletions(&graceful) >= p.rollout_replicas as usize,
        "{:?}",
        graceful.events
    );
    assert!(
        graceful.whole_run.requests >= 200,
        "{}",
        describe(&graceful)
    );
    assert_eq!(graceful.whole_run.errors, 0, "{}", describe(&graceful));
    // The app that exits at once on SIGTERM, behind the drain proxy.
    assert!(sidecar.whole_run.requests >= 200, "{}", describe(&sidecar));
    assert_eq!(sidecar.whole_run.errors, 0, "{}", describe(&sidecar));
    assert!(
        naive.whole_run.errors >= 1,
        "the naive twin lost nothing: {}",
        describe(&naive)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_loses_no_request_with_graceful_service_or_sidecar_and_some_without()
-> anyhow::Result<()> {
    testbed::skip_without_cluster!();
    let cluster = cluster().await?;
    let p = params(&cluster);
    let graceful = scenario::run(&cluster.client, Scenario::Scaledown, Setup::Graceful, &p).await?;
    eprintln!("{}", describe(&graceful));
    let sidecar = scenario::run(&cluster.client, Scenario::Scaledown, Setup::Sidecar, &p).await?;
    eprintln!("{}", describe(&sidecar));
    let naive = scenario::run(&cluster.client, Scenario::Scaledown, Setup::Naive, &p).await?;
    eprintln!("{}", describe(&naive));

    let removed = (p.scale_from - p.scale_to) as usize;
    assert_eq!(deletions(&graceful), removed, "{:?}", graceful.events);
    // The operator walked down one step at a time: 4, 3, 2, 1.
    let steps: Vec<i32> = graceful
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::DeploymentReplicas { replicas } => Some(replicas),
            _ => None,
        })
        .collect();
    assert_eq!(steps, (p.scale_to..p.scale_from).rev().collect::<Vec<_>>());
    assert!(
        graceful.whole_run.requests >= 200,
        "{}",
        describe(&graceful)
    );
    assert_eq!(graceful.whole_run.errors, 0, "{}", describe(&graceful));
    // The app that exits at once on SIGTERM, behind the drain proxy.
    assert!(sidecar.whole_run.requests >= 200, "{}", describe(&sidecar));
    assert_eq!(sidecar.whole_run.errors, 0, "{}", describe(&sidecar));
    assert!(
        naive.whole_run.errors >= 1,
        "the naive twin lost nothing: {}",
        describe(&naive)
    );
    Ok(())
}
