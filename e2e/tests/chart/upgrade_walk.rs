//! `helm upgrade` in the middle of a 20 -> 1 scale-down. The upgrade rolls the operator's
//! Deployment, so for a while two operator pods run; leader election (always on in the chart)
//! must keep the new pod from writing until the old one has stopped. Evidence: the API server's
//! audit log, where every write of the operator's ServiceAccount carries the pod it came from,
//! shows one run of writes by the old pod, then one by the new pod, never interleaved or
//! overlapping; and the watched Deployment walks 20, 19, ..., 1 with every step exactly once,
//! each after the previous step's pod was gone (`recording::check_walk`).

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use graceful_operator::GracefulService;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};

use super::audit;
use super::common::{FULLNAME, ONE_RELEASE, RELEASE, chart, helm_install, ok, uninstall};
use super::recording::{check_walk, record};
use super::support::{create_gsvc, ensure_schedulable, eventually, quick_spec, wait_stable};

const FROM: i32 = 20;
/// The upgrade starts once the walk is at or below this step.
const UPGRADE_AT: i32 = 14;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_mid_scale_down_keeps_one_writer_and_every_step_once() -> anyhow::Result<()> {
    testbed::skip_without_cluster!();
    let _one = ONE_RELEASE.lock().await;
    let tb = testbed::shared()?;
    let client = tb.client().await?;
    let ns = testbed::fixture::unique_name("graceful-upgrade");
    let app_ns = format!("{ns}-app");
    let result = walk_through_upgrade(tb, &client, &ns, &app_ns).await;
    let cleanup = uninstall(tb, &client, &ns, std::slice::from_ref(&app_ns)).await;
    result?;
    cleanup
}

async fn operator_pods(client: &kube::Client, ns: &str) -> anyhow::Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect())
}

async fn walk_through_upgrade(
    tb: &testbed::Testbed,
    client: &kube::Client,
    ns: &str,
    app_ns: &str,
) -> anyhow::Result<()> {
    helm_install(tb, &chart(), ns, &[])?;
    ensure_schedulable(tb, client).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({ "metadata": { "name": app_ns } }))?,
        )
        .await?;
    let mut spec = quick_spec(FROM);
    spec.scale_down.prefer_idle_pods = false;
    create_gsvc(client, app_ns, "web", spec).await?;
    wait_stable(client, app_ns, "web", FROM).await?;

    let log = tb.run_dir().join(testbed::controlplane::AUDIT_LOG);
    let mark = audit::mark(&log);
    let (rec, tasks) = record(client, app_ns, "web").await?;
    let gsvcs: Api<GracefulService> = Api::namespaced(client.clone(), app_ns);
    gsvcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "replicas": 1 } })),
        )
        .await?;
    eventually(
        Duration::from_secs(90),
        "the walk reaching the upgrade step",
        || async {
            let at = rec.lock().unwrap().replicas.last().map(|r| r.1);
            Ok(at.filter(|r| *r <= UPGRADE_AT))
        },
    )
    .await?;
    let old_pods = operator_pods(client, ns).await?;
    let upgrade_at = rec.lock().unwrap().replicas.last().map(|r| r.1);
    let started = Instant::now();
    let mut upgrade = tb.helm();
    upgrade
        .args(["upgrade", RELEASE])
        .arg(chart())
        .args([
            "--namespace",
            ns,
            "--reuse-values",
            "--wait",
            "--timeout",
            "180s",
        ])
        .args(["--set-string", "podAnnotations.upgraded=yes"]);
    ok(upgrade)?;
    let upgrade_took = started.elapsed();
    let new_pods = operator_pods(client, ns).await?;
    wait_stable(client, app_ns, "web", 1).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    tasks.iter().for_each(|t| t.abort());
    let rec = rec.lock().unwrap().clone();

    let account = format!("system:serviceaccount:{ns}:{FULLNAME}");
    let writes: Vec<audit::Write> = audit::read_since(&log, mark)?
        .into_iter()
        .filter(|w| w.user == account)
        .collect();
    let runs = audit::one_writer_at_a_time(&writes);
    eprintln!(
        "helm upgrade at step {upgrade_at:?} took {:.1} s; operator pods {old_pods:?} -> {new_pods:?}; walk {:?}; audit runs {runs:?}",
        upgrade_took.as_secs_f64(),
        rec.replicas.iter().map(|r| r.1).collect::<Vec<_>>()
    );
    let runs = runs?;
    if let [old, new] = runs.as_slice() {
        eprintln!(
            "audit: {} writes by {}, then {} by {}; {:.3} s between the old pod's last answered write and the new pod's first",
            old.writes,
            old.writer,
            new.writes,
            new.writer,
            (new.first_received - old.last_completed) as f64 / 1e6
        );
    }
    ensure!(
        runs.len() == 2 && old_pods.contains(&runs[0].writer) && new_pods.contains(&runs[1].writer),
        "expected the old operator pod's writes, then the new pod's: {runs:?}"
    );
    check_walk(&rec, FROM, 1).context("the walk across the upgrade")
}
