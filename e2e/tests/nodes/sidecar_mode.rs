//! `shutdown.mode: Sidecar`: an app that knows nothing of the protocol and exits at once on
//! SIGTERM (the bundled app with `--shutdown-mode immediate`, its admin listener unused) loses
//! no request through a rolling update and a stepped scale-down under keep-alive load, because
//! the drain proxy in front of it drains first. The twin runs the same app with the same drain
//! delay in `Sleep` mode: the delay alone does not save the keep-alive connections and the
//! requests in flight that the app drops on SIGTERM.

use std::time::Duration;

use anyhow::{Result, ensure};
use graceful_operator::GracefulService;
use graceful_operator::crd::ShutdownMode;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};

use super::common::setup;
use super::support::{Operator, create_gsvc, eventually, wait_stable};
use super::{NODES, node_port, spec};

const KEEP_ALIVE: loadgen::ConnectionMode = loadgen::ConnectionMode::KeepAlive;

/// Load of 100 ms requests through node 0, over long-lived connections (`KeepAlive` or h2c),
/// started once the service answers there.
async fn long_lived_load(
    port: u16,
    mode: loadgen::ConnectionMode,
) -> Result<(
    loadgen::Control,
    tokio::task::JoinHandle<Result<loadgen::Report>>,
)> {
    let addr = super::node_addr(port);
    super::until_served(addr).await?;
    let spec = loadgen::LoadSpec::new(addr, "/?work_ms=100")
        .concurrency(16)
        .max_requests(200_000)
        .duration(Duration::from_secs(240))
        .mode(mode)
        .request_timeout(Duration::from_secs(5));
    let control = loadgen::Control::new();
    let task = tokio::spawn({
        let control = control.clone();
        async move { loadgen::run(spec, control).await }
    });
    Ok((control, task))
}

/// The bundled app made naive: it exits at once on SIGTERM, and its admin listener sits on a
/// port that nothing calls.
pub(super) const NAIVE_APP: [&str; 4] = ["--shutdown-mode", "immediate", "--admin-port", "9091"];

/// A rolling update (a pod annotation changed) and a walk 4 -> 1 of the app run with
/// `app_args` in `mode`, under `load` over long-lived connections; returns the load.
pub(super) async fn rollout_and_walk(
    prefix: &str,
    mode: ShutdownMode,
    app_args: &[&str],
    load: loadgen::ConnectionMode,
) -> Result<loadgen::Report> {
    let s = setup(prefix).await?;
    let _operator = Operator::start(s.tb, &s.ns)?;
    let mut spec = spec(4);
    spec.shutdown.mode = mode;
    spec.args = app_args.iter().map(|arg| arg.to_string()).collect();
    create_gsvc(&s.client, &s.ns, "web", spec).await?;
    wait_stable(&s.client, &s.ns, "web", 4).await?;
    let port = node_port(&s.client, &s.ns, "web").await?;
    let (control, load) = long_lived_load(port, load).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let gsvcs: Api<GracefulService> = Api::namespaced(s.client.clone(), &s.ns);
    let rollout = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {"example.com/rev": "2"}}}}});
    gsvcs
        .patch("web", &PatchParams::default(), &Patch::Merge(&rollout))
        .await?;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    eventually(Duration::from_secs(180), "every pod replaced", || async {
        let list = pods.list(&ListParams::default()).await?.items;
        let done = list.len() == 4
            && list.iter().all(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key("example.com/rev"))
            });
        Ok(done.then_some(()))
    })
    .await?;
    wait_stable(&s.client, &s.ns, "web", 4).await?;

    let walk = serde_json::json!({"spec": {"replicas": 1}});
    gsvcs
        .patch("web", &PatchParams::default(), &Patch::Merge(&walk))
        .await?;
    wait_stable(&s.client, &s.ns, "web", 1).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    control.stop();
    let report = load.await??;
    ensure!(report.count() > 100, "too little load to judge: {report}");
    Ok(report)
}

#[tokio::test]
async fn sidecar_mode_keeps_an_app_that_exits_at_once_lossless() -> Result<()> {
    testbed::skip_without_cluster!();
    let _turn = NODES.lock().await;
    let report = rollout_and_walk("sidecar", ShutdownMode::Sidecar, &NAIVE_APP, KEEP_ALIVE).await?;
    eprintln!("Sidecar mode, app exits at once, rollout of 4 + walk 4 -> 1: {report}");
    super::assert_lossless(&report);
    Ok(())
}

/// The twin: the same app with the same drain delay, but no proxy.
#[tokio::test]
async fn without_the_sidecar_an_app_that_exits_at_once_loses_requests() -> Result<()> {
    testbed::skip_without_cluster!();
    let _turn = NODES.lock().await;
    let report =
        rollout_and_walk("no-sidecar", ShutdownMode::Sleep, &NAIVE_APP, KEEP_ALIVE).await?;
    eprintln!("Sleep mode, app exits at once, rollout of 4 + walk 4 -> 1: {report}");
    assert!(
        report.errors() > 0,
        "no error without the sidecar: {report}"
    );
    Ok(())
}
