//! Steps and their times do not race: during a walk with a minimum interval, a storm of
//! unrelated updates (to the GracefulService, its pods and its Deployment, by another field
//! manager) triggers reconcile after reconcile, and still no two steps come closer than the
//! interval, none is repeated or skipped. The interval (10 s) is longer than a step takes to
//! settle here (about 5 s), so it is the interval that paces the walk. Checked twice: in the
//! watch (each step's own `graceful.dev/last-step` stamp) and in the API server's audit log (the
//! operator's successful Deployment writes: one per step, each right after its stamp, plus at
//! most the walk's start and its end).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use graceful_operator::GracefulService;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};

use super::recording::{check_walk, record};
use super::support::*;
use super::{quick_spec, setup};

const INTERVAL_S: i32 = 10;
const FROM: i32 = 6;
const TO: i32 = 3;

/// Successful PATCHes of deployments/web by `user` in the audit log after line `mark`, as the
/// times the API server received them.
fn operator_deployment_writes(
    path: &std::path::Path,
    mark: usize,
    user: &str,
    ns: &str,
) -> Result<Vec<Timestamp>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for line in text.lines().skip(mark) {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let o = &e["objectRef"];
        if e["impersonatedUser"]["username"] == user
            && e["verb"] == "patch"
            && o["resource"] == "deployments"
            && o["namespace"] == ns
            && o["name"] == "web"
            && o["subresource"].is_null()
            && e["responseStatus"]["code"] == 200
        {
            let at = e["requestReceivedTimestamp"]
                .as_str()
                .context("no timestamp")?;
            out.push(at.parse()?);
        }
    }
    Ok(out)
}

#[tokio::test]
async fn an_event_storm_mid_walk_keeps_the_minimum_interval_and_every_step_once() -> Result<()> {
    testbed::skip_without_cluster!();
    let s = setup("op-storm").await?;
    let user = format!("graceful-operator-{}", s.ns);
    let kubeconfig = restricted_kubeconfig(s.tb, &s.client, &user).await?;
    let _operator = Operator::start_as(s.tb, &s.ns, &[], &kubeconfig)?;
    let mut spec = quick_spec(FROM);
    spec.scale_down.min_step_interval_seconds = INTERVAL_S;
    create_gsvc(&s.client, &s.ns, "web", spec).await?;
    wait_stable(&s.client, &s.ns, "web", FROM).await?;
    let (rec, tasks) = record(&s.client, &s.ns, "web").await?;
    let audit = s.tb.run_dir().join(testbed::controlplane::AUDIT_LOG);
    let mark = std::fs::read_to_string(&audit).map_or(0, |t| t.lines().count());

    // The storm: bounded in count (at most 3,000 writes) and time (the walk).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storm = {
        let client = s.client.clone();
        let ns = s.ns.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let gsvcs: Api<GracefulService> = Api::namespaced(client.clone(), &ns);
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let params = PatchParams::default();
            let mut writes = 0u32;
            for n in 0..1000u32 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let note =
                    serde_json::json!({"metadata": {"annotations": {"e2e/storm": n.to_string()}}});
                writes += u32::from(
                    gsvcs
                        .patch("web", &params, &Patch::Merge(&note))
                        .await
                        .is_ok(),
                );
                writes += u32::from(
                    deployments
                        .patch("web", &params, &Patch::Merge(&note))
                        .await
                        .is_ok(),
                );
                let list = pods
                    .list(&ListParams::default().labels("graceful.dev/service=web"))
                    .await;
                if let Some(pod) = list.ok().and_then(|l| {
                    let live: Vec<Pod> = l
                        .items
                        .into_iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .collect();
                    live.get(n as usize % live.len().max(1)).cloned()
                }) && let Some(name) = pod.metadata.name
                {
                    writes += u32::from(
                        pods.patch(&name, &params, &Patch::Merge(&note))
                            .await
                            .is_ok(),
                    );
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            writes
        })
    };
    let gsvcs: Api<GracefulService> = Api::namespaced(s.client.clone(), &s.ns);
    let patch = serde_json::json!({"spec": {"replicas": TO}});
    gsvcs
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_stable(&s.client, &s.ns, "web", TO).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = storm.await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    tasks.iter().for_each(|t| t.abort());
    let rec = rec.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    eprintln!("storm writes while walking: {writes}");
    ensure!(writes > 100, "the storm did not blow: {writes} writes");
    check_walk(&rec, FROM, TO)?;

    let stamps: Vec<Timestamp> = rec
        .step_stamps
        .iter()
        .filter_map(|s| s.as_deref()?.parse().ok())
        .collect();
    eprintln!("step stamps: {stamps:?}");
    ensure!(
        stamps.len() == usize::try_from(FROM - TO)?,
        "a step without its stamp: {:?}",
        rec.step_stamps
    );
    let audited = operator_deployment_writes(&audit, mark, &user, &s.ns)?;
    eprintln!("operator's Deployment writes in the audit log: {audited:?}");
    ensure!(
        audited.len() <= stamps.len() + 2,
        "more Deployment writes than steps, the walk's start and its end: {}",
        audited.len()
    );
    // Each step's write: the first audited write at or after its stamp, within 2 s.
    let mut step_writes = Vec::new();
    for stamp in &stamps {
        let write = audited
            .iter()
            .find(|at| *at >= stamp && at.duration_since(*stamp).as_secs_f64() < 2.0)
            .with_context(|| format!("no audited write for the step stamped {stamp}"))?;
        step_writes.push(*write);
    }
    // The stamps are the operator's decisions, exact; a write lands after its stamp by the
    // marking scrape and the request itself, which vary by well under a second.
    for (what, times, slack) in [("stamps", &stamps, 0.001), ("audit", &step_writes, 1.0)] {
        for pair in times.windows(2) {
            let gap = pair[1].duration_since(pair[0]).as_secs_f64();
            eprintln!("{what}: {gap:.3} s between steps");
            ensure!(
                gap >= f64::from(INTERVAL_S) - slack,
                "{what}: steps {gap:.3} s apart, interval {INTERVAL_S} s"
            );
        }
    }
    Ok(())
}
