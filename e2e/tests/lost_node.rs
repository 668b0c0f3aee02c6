//! A node lost in the middle of a scale-down: its kubelet stopped for good, on a testbed of this
//! binary's own (the node does not come back). What the operator does is recorded and printed
//! (the walk, the GracefulService's phase and conditions, the node's and the pods' state, the
//! load's errors). Asserted: the walk ends at 1 within the bound although pods stay behind on
//! the lost node: its pods are marked not ready by the node-lifecycle controller (which the walk
//! waits for: they may come back), evicted by taint eviction 30 s later (the testbed's
//! toleration), and a pod past its deletion time no longer holds a walk; the GracefulService
//! reports the pods left behind by name, and the load loses nothing. Before, the walk held at 5
//! for as long as the node was gone.
//!
//!     cargo build --workspace --bins && cargo test -p e2e --test lost_node -- --nocapture

#[allow(dead_code)]
#[path = "operator/recording.rs"]
mod recording;
#[allow(dead_code)]
#[path = "operator/support.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use graceful_operator::GracefulService;
use graceful_operator::crd::ServiceType;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use recording::record;
use support::{Operator, create_gsvc, ensure_schedulable, eventually, install_crd, wait_stable};

const LOST: &str = "node-2";
const BOUND: Duration = Duration::from_secs(150);

fn node_ready(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map_or_else(|| "?".into(), |c| c.status.clone())
}

#[tokio::test]
async fn a_node_lost_mid_scale_down_is_passed_and_its_pods_reported() -> Result<()> {
    testbed::skip_without_cluster!();
    let tb = testbed::shared()?;
    let client = tb.client().await?;
    install_crd(tb)?;
    ensure_schedulable(tb, &client).await?;
    let ns = tb.create_namespace(&client, "lost-node").await?;
    let mut operator = Operator::start(tb, &ns)?;
    let mut spec = support::quick_spec(6);
    spec.shutdown.drain_delay_seconds = 3;
    spec.shutdown.termination_grace_period_seconds = 10;
    spec.scale_down.step_timeout_seconds = 30;
    spec.service.type_ = ServiceType::NodePort;
    create_gsvc(&client, &ns, "web", spec).await?;
    wait_stable(&client, &ns, "web", 6).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let on_lost: Vec<String> = pods
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(LOST))
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let port = services
        .get("web")
        .await?
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p.first().and_then(|p| p.node_port))
        .context("no node port")?;
    let load_spec = loadgen::LoadSpec::new(tb.node_port_addr(u16::try_from(port)?), "/?work_ms=20")
        .concurrency(8)
        .max_requests(400_000)
        .duration(BOUND + Duration::from_secs(60))
        .mode(loadgen::ConnectionMode::Close)
        .request_timeout(Duration::from_secs(5));
    let control = loadgen::Control::new();
    let load = tokio::spawn(loadgen::run(load_spec, control.clone()));

    let (rec, tasks) = record(&client, &ns, "web").await?;
    let gsvcs: Api<GracefulService> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"spec": {"replicas": 1}});
    gsvcs
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    eventually(Duration::from_secs(60), "the first step", || async {
        let at = rec
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .replicas
            .last()
            .map(|r| r.1);
        Ok(at.filter(|r| *r == 5).map(|_| ()))
    })
    .await?;
    tb.stop_component(&format!("kubelet-{LOST}")).await?;
    let lost_at = Instant::now();
    eprintln!("stopped kubelet-{LOST} at step 5; its pods: {on_lost:?}");

    let nodes: Api<Node> = Api::all(client.clone());
    let mut outcome = None;
    let mut last = String::new();
    let mut reports = std::collections::BTreeSet::new();
    while lost_at.elapsed() < BOUND {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let g = gsvcs.get("web").await?;
        let status = g.status.clone().unwrap_or_default();
        let conditions: Vec<String> = status
            .conditions
            .iter()
            .map(|c| format!("{}={} ({}: {})", c.type_, c.status, c.reason, c.message))
            .collect();
        let line = format!(
            "phase {:?}, replicas {}, ready {}, target {:?}, node {LOST} Ready={}, conditions {conditions:?}",
            status.phase,
            status.replicas,
            status.ready_replicas,
            status.step_target,
            node_ready(&nodes.get(LOST).await?)
        );
        if line != last {
            eprintln!(
                "{:>5.1} s after the loss: {line}",
                lost_at.elapsed().as_secs_f64()
            );
            last = line;
        }
        if let Some(c) = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True")
        {
            reports.insert(c.message.clone());
        }
        if status.step_target == Some(1) && status.ready_replicas == 1 {
            outcome = Some(format!(
                "walk ended at 1 after {:.0} s, phase {:?}",
                lost_at.elapsed().as_secs_f64(),
                status.phase
            ));
            break;
        }
        anyhow::ensure!(!operator.has_exited()?, "the operator exited");
    }
    control.stop();
    let report = load.await??;
    tasks.iter().for_each(|t| t.abort());
    let steps: Vec<i32> = rec
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .replicas
        .iter()
        .map(|r| r.1)
        .collect();
    let left: Vec<String> = pods
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|p| {
            format!(
                "{} on {} {}",
                p.metadata.name.clone().unwrap_or_default(),
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
                if p.metadata.deletion_timestamp.is_some() {
                    "terminating"
                } else {
                    ""
                }
            )
        })
        .collect();
    eprintln!("lost node: steps {steps:?}; pods left {left:?}; load {report}");
    let outcome = outcome.with_context(|| {
        format!("the walk did not end within {BOUND:?} of losing {LOST}: steps {steps:?}, last status: {last}")
    })?;
    eprintln!("lost node outcome: {outcome}; Degraded reports: {reports:?}");
    // When the failures started, on the clock of the status lines above (seconds after the loss).
    let failures: Vec<String> = report
        .records
        .iter()
        .filter(|r| !r.is_ok())
        .take(20)
        .map(|r| {
            let at = match r.start.checked_duration_since(lost_at) {
                Some(after) => after.as_secs_f64(),
                None => -lost_at.duration_since(r.start).as_secs_f64(),
            };
            format!("{at:.2} s {:?}", r.error.map(|e| e.to_string()))
        })
        .collect();
    let named = reports
        .iter()
        .any(|r| r.contains("their node not acting") && r.contains(&format!("on {LOST}")));
    anyhow::ensure!(
        named,
        "the pods left on {LOST} were never reported: {reports:?}"
    );
    anyhow::ensure!(
        report.errors() == 0,
        "{report}\nfailed at (s after the loss): {failures:?}"
    );
    Ok(())
}
