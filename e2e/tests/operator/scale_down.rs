//! Scale-down walks: every step in order and only after the previous one settled, also across
//! an operator SIGKILL and while a rollout runs.

use std::time::Duration;

use anyhow::Result;
use graceful_operator::GracefulService;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};

use super::recording::{Recording, check_walk, record};
use super::support::*;
use super::{quick_spec, setup};

#[tokio::test]
async fn twenty_to_one_walks_every_step_after_the_previous_settled() -> Result<()> {
    testbed::skip_without_cluster!();
    let s = setup("op-walk").await?;
    let operator = Operator::start(s.tb, &s.ns)?;
    create_gsvc(&s.client, &s.ns, "web", quick_spec(20)).await?;
    wait_stable(&s.client, &s.ns, "web", 20).await?;
    let (rec, tasks) = record(&s.client, &s.ns, "web").await?;
    let gsvcs: Api<GracefulService> = Api::namespaced(s.client.clone(), &s.ns);
    let patch = serde_json::json!({"spec": {"replicas": 1}});
    gsvcs
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_stable(&s.client, &s.ns, "web", 1).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    tasks.iter().for_each(|t| t.abort());
    let rec = rec.lock().unwrap().clone();
    let sequence: Vec<i32> = rec.replicas.iter().map(|r| r.1).collect();
    eprintln!("recorded Deployment replicas: {sequence:?}");
    for (at, what) in &rec.timeline {
        eprintln!("  {at:7.2}s  {what}");
    }
    check_walk(&rec, 20, 1)?;
    assert_eq!(
        operator
            .metric("graceful_operator_scale_down_steps_total")
            .await?,
        19.0
    );
    Ok(())
}

/// An image change and a scale-down at once: the rollout runs at the old size first, and the
/// scale-down steps only start once every pod runs the new template.
#[tokio::test]
async fn rollout_in_progress_holds_the_scale_down() -> Result<()> {
    testbed::skip_without_cluster!();
    let s = setup("op-rollout").await?;
    let _operator = Operator::start(s.tb, &s.ns)?;
    create_gsvc(&s.client, &s.ns, "web", quick_spec(6)).await?;
    wait_stable(&s.client, &s.ns, "web", 6).await?;
    let (rec, tasks) = record(&s.client, &s.ns, "web").await?;
    s.tb.tag_image("ghcr.io/graceful-dev/graceful-app", "0.1.1-e2e")?;
    let gsvcs: Api<GracefulService> = Api::namespaced(s.client.clone(), &s.ns);
    let patch = serde_json::json!({"spec": {
        "replicas": 3,
        "image": "ghcr.io/graceful-dev/graceful-app:0.1.1-e2e",
    }});
    gsvcs
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_stable(&s.client, &s.ns, "web", 3).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    tasks.iter().for_each(|t| t.abort());
    let rec = rec.lock().unwrap().clone();
    let sequence: Vec<i32> = rec.replicas.iter().map(|r| r.1).collect();
    eprintln!(
        "rollout + scale-down: replicas {sequence:?}, status at each change (replicas, updated, ready, available) {:?}",
        rec.status_at_change
    );
    assert_eq!(sequence, [6, 5, 4, 3]);
    // The first step was taken with all 6 pods updated, ready and available (rollout complete).
    assert_eq!(rec.status_at_change[1], (6, 6, 6, 6));
    let d: Deployment = Api::namespaced(s.client.clone(), &s.ns).get("web").await?;
    let image = d
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers[0].image.clone());
    assert_eq!(
        image.as_deref(),
        Some("ghcr.io/graceful-dev/graceful-app:0.1.1-e2e")
    );
    Ok(())
}

#[tokio::test]
async fn operator_killed_halfway_resumes_without_skip_or_repeat() -> Result<()> {
    testbed::skip_without_cluster!();
    let s = setup("op-kill").await?;
    let mut operator = Operator::start(s.tb, &s.ns)?;
    create_gsvc(&s.client, &s.ns, "web", quick_spec(10)).await?;
    wait_stable(&s.client, &s.ns, "web", 10).await?;
    let (rec, tasks) = record(&s.client, &s.ns, "web").await?;
    let gsvcs: Api<GracefulService> = Api::namespaced(s.client.clone(), &s.ns);
    let patch = serde_json::json!({"spec": {"replicas": 1}});
    gsvcs
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    eventually(Duration::from_secs(60), "replicas down to 6", || async {
        Ok(rec
            .lock()
            .unwrap()
            .replicas
            .last()
            .is_some_and(|r| r.1 <= 6)
            .then_some(()))
    })
    .await?;
    operator.kill();
    let at_kill = rec.lock().unwrap().replicas.last().map(|r| r.1);
    // While no operator runs, the cluster stays at the step it was left at.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after_pause = rec.lock().unwrap().replicas.last().map(|r| r.1);
    assert_eq!(
        at_kill, after_pause,
        "replicas changed with no operator running"
    );
    eprintln!("operator SIGKILLed at step {at_kill:?}");
    let _restarted = Operator::start(s.tb, &s.ns)?;
    wait_stable(&s.client, &s.ns, "web", 1).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    tasks.iter().for_each(|t| t.abort());
    let rec = rec.lock().unwrap().clone();
    let sequence: Vec<i32> = rec.replicas.iter().map(|r| r.1).collect();
    eprintln!("recorded Deployment replicas across the restart: {sequence:?}");
    check_walk(&rec, 10, 1)
}

/// The walk checker itself must reject a skipped step and a step taken before the previous pod
/// was gone; otherwise the walk tests above could not fail.
#[test]
fn walk_checker_rejects_skips_and_early_steps() {
    let good = Recording {
        replicas: vec![(10, 3), (11, 2), (14, 1)],
        terminating: vec![(12, "a".into()), (15, "b".into())],
        deleted: vec![(13, "a".into()), (16, "b".into())],
        stopped: vec![(13, "a".into()), (16, "b".into())],
        status_at_change: Vec::new(),
        step_stamps: Vec::new(),
        timeline: Vec::new(),
    };
    assert!(check_walk(&good, 3, 1).is_ok());
    let mut early = good.clone();
    early.replicas[2].0 = 12; // step 2 -> 1 before pod a had stopped (rev 13)
    early.terminating[1].0 = 12;
    assert!(check_walk(&early, 3, 1).is_err());
    let mut skipped = good.clone();
    skipped.replicas = vec![(10, 3), (11, 1)];
    assert!(check_walk(&skipped, 3, 1).is_err());
    let mut repeated = good;
    repeated.replicas = vec![(10, 3), (11, 2), (12, 3), (14, 2), (15, 1)];
    assert!(check_walk(&repeated, 3, 1).is_err());
}
