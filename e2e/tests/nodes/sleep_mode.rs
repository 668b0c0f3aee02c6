//! `shutdown.mode: Sleep`, for apps that drain on SIGTERM but have no admin listener: the
//! kubelet's own preStop sleep holds the pod while its endpoint leaves every proxy, and the
//! probes check the main port. The app here is the bundled one with its admin contract unused
//! (the operator sets none of its variables). Its naive twin sleeps 0 s: SIGTERM comes while
//! the proxies still send new connections, and they are refused.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use graceful_operator::crd::ShutdownMode;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};

use super::common::setup;
use super::support::{Operator, create_gsvc, wait_stable};
use super::{NODES, node_port, spec, start_load, stop_load};

/// Scales a Sleep-mode service 4 -> 1 under connection-per-request load and returns the load.
async fn walk_in_sleep_mode(prefix: &str, drain_delay_seconds: i32) -> Result<loadgen::Report> {
    let s = setup(prefix).await?;
    let _operator = Operator::start(s.tb, &s.ns)?;
    let mut spec = spec(4);
    spec.shutdown.mode = ShutdownMode::Sleep;
    spec.shutdown.drain_delay_seconds = drain_delay_seconds;
    create_gsvc(&s.client, &s.ns, "web", spec).await?;
    wait_stable(&s.client, &s.ns, "web", 4).await?;

    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    let pod = deployments
        .get("web")
        .await?
        .spec
        .and_then(|d| d.template.spec)
        .context("no pod template")?;
    let app = &pod.containers[0];
    let hook = app
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .context("no preStop sleep")?;
    ensure!(hook.seconds == i64::from(drain_delay_seconds));
    ensure!(
        app.readiness_probe
            .as_ref()
            .and_then(|p| p.tcp_socket.as_ref())
            .is_some(),
        "readiness does not check the main port"
    );
    ensure!(app.env.is_none(), "contract variables set in Sleep mode");

    let port = node_port(&s.client, &s.ns, "web").await?;
    let (control, load) = start_load(port).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api: Api<graceful_operator::GracefulService> = Api::namespaced(s.client.clone(), &s.ns);
    let patch = serde_json::json!({"spec": {"replicas": 1}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_stable(&s.client, &s.ns, "web", 1).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_load(control, load).await
}

#[tokio::test]
async fn sleep_mode_walk_under_load_loses_nothing() -> Result<()> {
    testbed::skip_without_cluster!();
    let _turn = NODES.lock().await;
    let report = walk_in_sleep_mode("sleep-mode", 5).await?;
    eprintln!("Sleep mode, 5 s preStop sleep, 4 -> 1: {report}");
    super::assert_lossless(&report);
    Ok(())
}

/// The twin: no sleep, so each removed pod stops accepting while kube-proxy still sends it
/// connections.
#[tokio::test]
async fn sleep_mode_without_a_sleep_loses_requests() -> Result<()> {
    testbed::skip_without_cluster!();
    let _turn = NODES.lock().await;
    let report = walk_in_sleep_mode("sleep-zero", 0).await?;
    eprintln!("Sleep mode, 0 s preStop sleep, 4 -> 1: {report}");
    assert!(report.errors() > 0, "no error without the sleep: {report}");
    Ok(())
}
