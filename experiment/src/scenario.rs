//! One scenario with one setup, start to finish: deploy, wait until it serves, start the load,
//! apply the change, watch it complete, keep the load going a while, stop, clean up.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::{Api, Client};
use serde::Serialize;

use crate::load::{self, LoadConfig, Summary};
use crate::report::RunReport;
use crate::settle;
use crate::timeline::{EventKind, Timeline};
use crate::workloads::{self, AppSpec, FIELD_MANAGER, WORKLOAD};
use loadgen::Control;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Rolling update: the image tag goes v1 -> v2.
    Rollout,
    /// Scale-down in one write (20 -> 1 by default).
    Scaledown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Setup {
    /// A GracefulService, reconciled by the operator.
    Graceful,
    /// A GracefulService in `Sidecar` mode whose app exits at once on SIGTERM: the drain proxy
    /// carries the protocol for it.
    Sidecar,
    /// A plain Deployment: no preStop, no readiness probe.
    Naive,
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scenario::Rollout => "rollout",
            Scenario::Scaledown => "scaledown",
        })
    }
}

impl std::fmt::Display for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Setup::Graceful => "graceful",
            Setup::Sidecar => "sidecar",
            Setup::Naive => "naive",
        })
    }
}

/// Sizes and bounds of a run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Replicas of the rolling update.
    pub rollout_replicas: i32,
    /// Scale-down from / to.
    pub scale_from: i32,
    pub scale_to: i32,
    /// Handler time of the app (`GRACEFUL_WORK_MS`).
    pub work_ms: u64,
    /// Concurrent keep-alive clients.
    pub clients: usize,
    /// Minimum load duration; the change is applied after a quarter of it.
    pub duration: Duration,
    /// Start of the load left out of the first table; the whole run is reported too.
    pub warmup: Duration,
    /// The clients' start, spread over this long (see [`loadgen::LoadSpec::ramp`]).
    pub ramp: Duration,
    /// Load kept after the change completed, at least.
    pub min_tail: Duration,
    /// Bound on the change's completion; past it the run fails.
    pub change_timeout: Duration,
    /// Bound on requests per run.
    pub max_requests: u64,
    /// `spec.scaleDown.preferIdlePods` of the graceful setup (the operator's default is true).
    pub prefer_idle_pods: bool,
    /// The address whose node port the load goes through (a node's).
    pub node_address: std::net::IpAddr,
}

/// The app image tags the scenarios run: v1, and v2 for the rolling update.
pub const APP_TAGS: [&str; 2] = ["v1", "v2"];

/// The GracefulService's API resource (used untyped: the experiment needs four fields of it).
pub fn gsvc_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("graceful.dev", "v1alpha1", "GracefulService"),
        "gracefulservices",
    )
}

/// Runs `scenario` with `setup` in its own namespace and reports it.
pub async fn run(
    client: &Client,
    scenario: Scenario,
    setup: Setup,
    p: &Params,
) -> anyhow::Result<RunReport> {
    let ns = format!("exp-{scenario}-{setup}");
    let (before, after) = match scenario {
        Scenario::Rollout => (p.rollout_replicas, p.rollout_replicas),
        Scenario::Scaledown => (p.scale_from, p.scale_to),
    };
    let v1 = AppSpec {
        replicas: before,
        tag: APP_TAGS[0].into(),
        work_ms: p.work_ms,
        prefer_idle_pods: p.prefer_idle_pods,
    };
    let changed = match scenario {
        Scenario::Rollout => AppSpec {
            tag: APP_TAGS[1].into(),
            ..v1.clone()
        },
        Scenario::Scaledown => AppSpec {
            replicas: after,
            ..v1.clone()
        },
    };
    eprintln!("==> {scenario}/{setup}: deploying {before} replicas in namespace {ns}");
    recreate_namespace(client, &ns).await?;
    let result = drive(client, &ns, scenario, setup, p, &v1, &changed).await;
    eprintln!("==> {scenario}/{setup}: deleting namespace {ns}");
    if let Err(e) = delete_namespace(client, &ns).await {
        eprintln!("warning: cleaning up namespace {ns}: {e:#}");
    }
    let (load, timeline) = result?;
    let events = timeline.events();
    let change = events
        .iter()
        .find(|e| matches!(e.kind, EventKind::ChangeApplied { .. }))
        .map(|e| e.at_ms);
    let complete = events
        .iter()
        .find(|e| e.kind == EventKind::RolloutComplete)
        .map(|e| e.at_ms);
    Ok(RunReport {
        scenario: scenario.to_string(),
        setup: setup.to_string(),
        replicas_before: before,
        replicas_after: after,
        work_ms: p.work_ms,
        clients: p.clients,
        summary: Summary::of(
            load.samples
                .iter()
                .filter(|s| s.start_ms >= p.warmup.as_secs_f64() * 1000.0),
        ),
        whole_run: Summary::of(load.samples.iter()),
        warmup_ms: p.warmup.as_secs_f64() * 1000.0,
        ramp_ms: p.ramp.as_secs_f64() * 1000.0,
        change_to_complete_ms: change.zip(complete).map(|(c, d)| d - c),
        events,
        load,
    })
}

async fn drive(
    client: &Client,
    ns: &str,
    scenario: Scenario,
    setup: Setup,
    p: &Params,
    v1: &AppSpec,
    changed: &AppSpec,
) -> anyhow::Result<(load::LoadResult, Timeline)> {
    apply(client, ns, setup, v1).await?;
    settle::wait_listed(client, ns, v1, Duration::from_secs(180))
        .await
        .with_context(|| {
            format!(
                "{scenario}/{setup}: the initial {} pods never settled",
                v1.replicas
            )
        })?;
    let node_port = node_port(client, ns).await?;
    let target = std::net::SocketAddr::new(p.node_address, node_port);
    wait_serving(target, Duration::from_secs(60)).await?;

    let origin = Instant::now();
    let timeline = Timeline::new(origin);
    timeline.record(EventKind::LoadStarted);
    let watched = crate::observe::spawn_watchers(client, ns, timeline.clone());
    let control = Control::new();
    let cfg = LoadConfig {
        target,
        path: "/".into(),
        clients: p.clients,
        max_requests: p.max_requests,
        max_duration: p.duration + p.change_timeout + p.min_tail,
        request_timeout: Duration::from_millis(p.work_ms) + Duration::from_secs(30),
        ramp: p.ramp,
    };
    eprintln!(
        "==> {scenario}/{setup}: load of {} keep-alive clients through {target}",
        p.clients
    );
    let load_task = tokio::spawn(load::run(cfg, origin, control.clone()));
    let progress = tokio::spawn(crate::observe::progress(
        format!("{scenario}/{setup}"),
        origin,
        control.clone(),
        watched.pods.clone(),
    ));

    let outcome = async {
        tokio::time::sleep(p.warmup).await;
        timeline.record(EventKind::WarmupEnded);
        // The change comes a quarter into the run, and at least 5 s after the warm-up.
        let change_at = (p.duration / 4).max(p.warmup + Duration::from_secs(5));
        tokio::time::sleep(change_at.saturating_sub(origin.elapsed())).await;
        let what = match scenario {
            Scenario::Rollout => format!("image -> {}", changed.image()),
            Scenario::Scaledown => format!("replicas {} -> {}", v1.replicas, changed.replicas),
        };
        apply(client, ns, setup, changed).await?;
        timeline.record(EventKind::ChangeApplied { what });
        settle::wait_watched(&watched, changed, p.change_timeout)
            .await
            .with_context(|| format!("{scenario}/{setup}: the change did not complete"))?;
        timeline.record(EventKind::RolloutComplete);
        let elapsed = origin.elapsed();
        let tail = p.min_tail.max(p.duration.saturating_sub(elapsed));
        tokio::time::sleep(tail).await;
        anyhow::Ok(())
    }
    .await;
    control.stop();
    let load = load_task.await.context("load task")??;
    timeline.record(EventKind::LoadStopped);
    progress.abort();
    drop(watched);
    eprintln!(
        "\n==> {scenario}/{setup}: {} requests, {} errors",
        control.finished(),
        control.failed()
    );
    outcome?;
    Ok((load, timeline))
}

/// Writes the setup's objects for `app` (server-side apply, our own field manager).
async fn apply(client: &Client, ns: &str, setup: Setup, app: &AppSpec) -> anyhow::Result<()> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    match setup {
        Setup::Graceful | Setup::Sidecar => {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), ns, &gsvc_resource());
            let obj = match setup {
                Setup::Sidecar => workloads::sidecar_service(ns, app),
                _ => workloads::graceful_service(ns, app),
            };
            api.patch(WORKLOAD, &pp, &Patch::Apply(&obj)).await?;
        }
        Setup::Naive => {
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
            deployments
                .patch(
                    WORKLOAD,
                    &pp,
                    &Patch::Apply(&workloads::naive_deployment(ns, app)),
                )
                .await?;
            let services: Api<Service> = Api::namespaced(client.clone(), ns);
            services
                .patch(WORKLOAD, &pp, &Patch::Apply(&workloads::naive_service(ns)))
                .await?;
        }
    }
    Ok(())
}

/// The node port of the namespace's NodePort Service (the operator's, or the naive one).
async fn node_port(client: &Client, ns: &str) -> anyhow::Result<u16> {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    let port = loop {
        let list = services.list(&ListParams::default()).await?;
        let found = list.items.iter().find_map(|s| {
            let spec = s.spec.as_ref()?;
            if spec.type_.as_deref() != Some("NodePort") {
                return None;
            }
            spec.ports.as_ref()?.first()?.node_port
        });
        if let Some(port) = found {
            break port;
        }
        if Instant::now() > deadline {
            bail!("no NodePort Service appeared in namespace {ns}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    Ok(u16::try_from(port)?)
}

/// Waits until the proxy serves the Service: 20 successes in a row, then the proxy's propagation
/// lag again so that every endpoint is in its view before the load starts.
async fn wait_serving(target: std::net::SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut streak = 0;
    while streak < 20 {
        if Instant::now() > deadline {
            bail!("the service at {target} did not start serving within {timeout:?}");
        }
        let probe = LoadConfig {
            target,
            path: "/?work_ms=0".into(),
            clients: 1,
            max_requests: 1,
            max_duration: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            ramp: Duration::ZERO,
        };
        let r = load::run(probe, Instant::now(), Control::new()).await?;
        if r.samples.iter().all(|s| s.error.is_none()) && !r.samples.is_empty() {
            streak += 1;
        } else {
            streak = 0;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

async fn recreate_namespace(client: &Client, ns: &str) -> anyhow::Result<()> {
    delete_namespace(client, ns).await?;
    let api: Api<Namespace> = Api::all(client.clone());
    let obj: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns }
    }))?;
    api.create(&PostParams::default(), &obj).await?;
    Ok(())
}

/// Deletes the namespace and waits until it is gone (its pods stopped), so the next run has the
/// machine to itself.
async fn delete_namespace(client: &Client, ns: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(ns).await?.is_none() {
        return Ok(());
    }
    let _ = api.delete(ns, &DeleteParams::default()).await;
    crate::wait::until(Duration::from_secs(180), || async {
        Ok(api.get_opt(ns).await?.is_none())
    })
    .await
    .with_context(|| format!("namespace {ns} still there"))
}
