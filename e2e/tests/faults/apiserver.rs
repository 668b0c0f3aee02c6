//! kube-apiserver restarted (same port, certificates and etcd; gone for several seconds) during
//! a rollout and during a scale-down: the operator reconnects and finishes, with a bounded number
//! of error lines in its log (no error storm), and without an extra or a skipped step.

use std::time::Duration;

use anyhow::{Result, ensure};
use graceful_operator::GracefulService;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};

use super::common::{
    API_RESTART, LogCount, alive, count_log, quick_spec, rounds, scale, setup, watch,
};
use super::support::{Operator, create_gsvc, eventually, wait_stable};

/// Log lines at WARN/ERROR level one restart may cost: each failed reconcile is one line and
/// retries back off (1 s, 2 s, 4 s ...), so a restart of about ten seconds costs a handful; a
/// hot loop would write hundreds per second.
const MAX_WARN_OR_ERROR: usize = 40;
/// Lines of any level that mention an error (the controller's debug line per failed watch or
/// reconcile included).
const MAX_MENTIONING_ERROR: usize = 150;

fn check_log(what: &str, before: LogCount, after: LogCount) -> Result<()> {
    let warn = after.warn_or_error - before.warn_or_error;
    let errors = after.mentioning_error - before.mentioning_error;
    eprintln!(
        "{what}: {warn} WARN/ERROR lines, {errors} lines mentioning an error, {} lines in all",
        after.lines - before.lines
    );
    ensure!(
        warn <= MAX_WARN_OR_ERROR && errors <= MAX_MENTIONING_ERROR,
        "{what}: error storm in the operator log ({warn} WARN/ERROR, {errors} mentioning errors)"
    );
    Ok(())
}

fn image_of(p: &Pod) -> Option<&str> {
    p.spec.as_ref()?.containers.first()?.image.as_deref()
}

#[tokio::test]
async fn apiserver_restart_during_a_rollout() -> Result<()> {
    testbed::skip_without_cluster!();
    let _exclusive = API_RESTART.write().await;
    let s = setup("fault-api-rollout").await?;
    let operator = Operator::start(s.tb, &s.ns)?;
    create_gsvc(&s.client, &s.ns, "web", quick_spec(4)).await?;
    wait_stable(&s.client, &s.ns, "web", 4).await?;
    let gsvcs: Api<GracefulService> = Api::namespaced(s.client.clone(), &s.ns);
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    let selector = ListParams::default().labels("graceful.dev/service=web");
    for round in 1..=rounds() {
        let image = format!("ghcr.io/graceful-dev/graceful-app:fault-{round}");
        s.tb.tag_image(
            "ghcr.io/graceful-dev/graceful-app",
            &format!("fault-{round}"),
        )?;
        let before = count_log(&operator.log)?;
        let patch = serde_json::json!({"spec": {"image": image}});
        gsvcs
            .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        // Restart once the rollout has begun (the first pod of the new template exists).
        eventually(Duration::from_secs(60), "rollout begun", || async {
            let list = pods.list(&selector).await?;
            Ok(list
                .items
                .iter()
                .any(|p| image_of(p) == Some(image.as_str()))
                .then_some(()))
        })
        .await?;
        let gone = s.tb.restart_apiserver().await?;
        wait_stable(&s.client, &s.ns, "web", 4).await?;
        // The rollout finished: 4 pods, all of the new template, the Deployment complete.
        eventually(Duration::from_secs(60), "4 new pods only", || async {
            let list = pods.list(&selector).await?;
            let new = list
                .items
                .iter()
                .filter(|p| image_of(p) == Some(image.as_str()))
                .count();
            Ok((list.items.len() == 4 && new == 4).then_some(()))
        })
        .await?;
        let d = deployments.get("web").await?;
        let st = d.status.clone().unwrap_or_default();
        ensure!(
            st.observed_generation == d.metadata.generation
                && st.updated_replicas == Some(4)
                && st.ready_replicas == Some(4)
                && st.available_replicas == Some(4),
            "Deployment not complete: {st:?}"
        );
        ensure!(alive(operator.pid()), "operator exited");
        eprintln!(
            "rollout round {round}: kube-apiserver gone {:.1} s mid-rollout, rollout finished",
            gone.as_secs_f64()
        );
        check_log(
            &format!("rollout round {round}"),
            before,
            count_log(&operator.log)?,
        )?;
    }
    Ok(())
}

#[tokio::test]
async fn apiserver_restart_during_a_scale_down() -> Result<()> {
    testbed::skip_without_cluster!();
    const FROM: i32 = 10;
    let _exclusive = API_RESTART.write().await;
    let s = setup("fault-api-scale").await?;
    let operator = Operator::start(s.tb, &s.ns)?;
    create_gsvc(&s.client, &s.ns, "web", quick_spec(FROM)).await?;
    wait_stable(&s.client, &s.ns, "web", FROM).await?;
    for round in 1..=rounds() {
        let (seen, tasks) = watch(&s.client, &s.ns, "web");
        let before = count_log(&operator.log)?;
        let steps_before = operator
            .metric("graceful_operator_scale_down_steps_total")
            .await?;
        scale(&s.client, &s.ns, "web", 1).await?;
        eventually(Duration::from_secs(60), "replicas down to 7", || async {
            let at = seen.lock().unwrap().replicas.last().map(|r| r.2);
            Ok(at.filter(|r| *r <= 7))
        })
        .await?;
        let gone = s.tb.restart_apiserver().await?;
        wait_stable(&s.client, &s.ns, "web", 1).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        tasks.iter().for_each(|t| t.abort());
        let values = seen.lock().unwrap().replica_values();
        let steps = operator
            .metric("graceful_operator_scale_down_steps_total")
            .await?
            - steps_before;
        eprintln!(
            "scale-down round {round}: kube-apiserver gone {:.1} s, replicas seen {values:?}, {steps} steps",
            gone.as_secs_f64()
        );
        ensure!(alive(operator.pid()), "operator exited");
        // Exactly one step per replica (none repeated or skipped by the operator), and the
        // Deployment never went back up (the watch may miss a value while the API is gone).
        ensure!(
            steps == f64::from(FROM - 1),
            "{steps} steps for {FROM} -> 1"
        );
        ensure!(
            values.first() == Some(&FROM) && values.last() == Some(&1),
            "walk {values:?}"
        );
        ensure!(
            values.windows(2).all(|w| w[1] < w[0]),
            "replicas went back up: {values:?}"
        );
        check_log(
            &format!("scale-down round {round}"),
            before,
            count_log(&operator.log)?,
        )?;
        if round < rounds() {
            scale(&s.client, &s.ns, "web", FROM).await?;
            wait_stable(&s.client, &s.ns, "web", FROM).await?;
        }
    }
    Ok(())
}
