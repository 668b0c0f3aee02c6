//! A HorizontalPodAutoscaler drives a GracefulService through its scale subresource, on real
//! nodes with a real resource-metrics pipeline (metrics-server scraping the kubelets,
//! `testbed up --metrics-server`). Under CPU load the HPA scales the service up; when the load
//! ends it lowers `spec.replicas` to 1 at once (its `behavior.scaleDown` allows 4 pods per
//! 15 s), and the operator walks the pods down one step at a time. Asserted: the HPA scaled up
//! and back to 1, the Deployment went down by one replica per step, and neither load (the busy
//! one, then a light one that runs through the walk) lost a request.
//!
//!     cargo build --workspace --bins && cargo test -p e2e --test hpa -- --nocapture

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
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, Service};
use kube::api::{Api, ListParams, PostParams};
use recording::record;
use support::{Operator, create_gsvc, ensure_schedulable, eventually, install_crd, wait_stable};

const MAX: i32 = 4;

/// The HPA: CPU at 50 % of the request, 1 to [`MAX`] replicas. Up at once; down after 15 s of
/// lower readings, by up to 4 pods per 15 s: the HPA moves the target, the operator paces the
/// pods.
fn hpa(name: &str) -> Result<HorizontalPodAutoscaler> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "graceful.dev/v1alpha1", "kind": "GracefulService", "name": name},
            "minReplicas": 1,
            "maxReplicas": MAX,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}]},
                "scaleDown": {"stabilizationWindowSeconds": 15, "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}]},
            },
        },
    }))?)
}

/// Replicas the GracefulService asks for now (what the HPA wrote).
async fn spec_replicas(api: &Api<GracefulService>, name: &str) -> Result<i32> {
    Ok(api.get(name).await?.spec.replicas)
}

#[tokio::test]
async fn an_hpa_scales_a_graceful_service_up_under_load_and_down_in_steps() -> Result<()> {
    testbed::skip_without_cluster!();
    let tb = testbed::shared_with(&["--metrics-server"])?;
    anyhow::ensure!(
        tb.info().metrics_server,
        "this testbed has no metrics-server: start it with `testbed up --metrics-server`"
    );
    let client = tb.client().await?;
    install_crd(tb)?;
    ensure_schedulable(tb, &client).await?;
    let ns = tb.create_namespace(&client, "hpa").await?;
    let _operator = Operator::start(tb, &ns)?;
    let mut spec = support::quick_spec(1);
    spec.service.type_ = ServiceType::NodePort;
    spec.resources = Some(serde_json::from_value(
        serde_json::json!({"requests": {"cpu": "100m"}}),
    )?);
    create_gsvc(&client, &ns, "web", spec).await?;
    wait_stable(&client, &ns, "web", 1).await?;
    let port = Api::<Service>::namespaced(client.clone(), &ns)
        .get("web")
        .await?
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p.first().and_then(|p| p.node_port))
        .context("no node port")?;
    let addr = tb.node_port_addr(u16::try_from(port)?);

    // The pod's CPU is in the metrics API once metrics-server has scraped its kubelet twice.
    let pod_metrics =
        kube::api::Request::new(format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods"));
    eventually(Duration::from_secs(90), "pod metrics", || async {
        let request = pod_metrics.list(&ListParams::default())?;
        let list: serde_json::Value = client.request(request).await?;
        Ok(list["items"]
            .as_array()
            .is_some_and(|items| !items.is_empty())
            .then_some(()))
    })
    .await?;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    hpas.create(&PostParams::default(), &hpa("web")?).await?;
    let gsvcs: Api<GracefulService> = Api::namespaced(client.clone(), &ns);
    let (rec, tasks) = record(&client, &ns, "web").await?;

    // Busy: each request burns 5 ms of CPU in 25 ms (0.2 core per client, 4x the request).
    let busy = loadgen::LoadSpec::new(addr, "/?cpu_ms=5&work_ms=20")
        .concurrency(2)
        .max_requests(200_000)
        .duration(Duration::from_secs(180))
        .request_timeout(Duration::from_secs(5));
    let control = loadgen::Control::new();
    let busy_load = tokio::spawn(loadgen::run(busy, control.clone()));
    let started = Instant::now();
    let first = eventually(Duration::from_secs(150), "the HPA scaling up", || async {
        let replicas = spec_replicas(&gsvcs, "web").await?;
        Ok((replicas > 1).then_some(replicas))
    })
    .await?;
    eprintln!(
        "HPA scaled web to {first} after {:.0} s of load",
        started.elapsed().as_secs_f64()
    );
    // The load goes on while the new pods start and the HPA reads them (it may go higher).
    let peak = eventually(
        Duration::from_secs(120),
        "Stable after the scale-up",
        || async {
            let g = gsvcs.get("web").await?;
            let status = g.status.unwrap_or_default();
            let settled = status.phase == graceful_operator::crd::Phase::Stable
                && status.ready_replicas == g.spec.replicas
                && started.elapsed() > Duration::from_secs(45);
            Ok(settled.then_some(g.spec.replicas))
        },
    )
    .await?;
    control.stop();
    let busy_report = busy_load.await??;

    // Light: 5 requests a second without CPU work, a few millicores, so the HPA scales down
    // while these requests go on.
    let light = loadgen::LoadSpec::new(addr, "/?work_ms=200")
        .concurrency(1)
        .max_requests(200_000)
        .duration(Duration::from_secs(240))
        .request_timeout(Duration::from_secs(5));
    let control = loadgen::Control::new();
    let light_load = tokio::spawn(loadgen::run(light, control.clone()));
    let ended = Instant::now();
    eventually(
        Duration::from_secs(180),
        "the HPA scaling down to 1",
        || async { Ok((spec_replicas(&gsvcs, "web").await? == 1).then_some(())) },
    )
    .await?;
    eprintln!(
        "HPA set web to 1 {:.0} s after the busy load ended",
        ended.elapsed().as_secs_f64()
    );
    wait_stable(&client, &ns, "web", 1).await?;
    control.stop();
    let light_report = light_load.await??;
    tasks.iter().for_each(|t| t.abort());

    let steps: Vec<i32> = rec
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .replicas
        .iter()
        .map(|r| r.1)
        .collect();
    let events: Vec<String> = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().fields("involvedObject.kind=HorizontalPodAutoscaler"))
        .await?
        .items
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default()
            )
        })
        .collect();
    eprintln!("Deployment replicas: {steps:?}\nHPA events: {events:#?}");
    eprintln!("busy load: {busy_report}\nlight load: {light_report}");
    let top = steps.iter().copied().max().unwrap_or(0);
    anyhow::ensure!(
        top > 1 && top <= MAX,
        "went up to {top} (first {first}, then {peak})"
    );
    let down: Vec<i32> = steps.iter().copied().skip_while(|r| *r != top).collect();
    let expected: Vec<i32> = (1..=top).rev().collect();
    anyhow::ensure!(
        down == expected,
        "the scale-down went {down:?}, not one step at a time from {top}"
    );
    anyhow::ensure!(busy_report.errors() == 0, "busy load: {busy_report}");
    anyhow::ensure!(light_report.errors() == 0, "light load: {light_report}");
    Ok(())
}
