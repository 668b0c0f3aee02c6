//! The operator against the testbed's real control plane and nodes, with the app's pods.
//!
//! Every test makes its own namespace and runs its own operator process scoped to it
//! (`--namespace`), so tests run in parallel without sharing a controller.

#[path = "operator/idlest.rs"]
mod idlest;
#[path = "operator/invalid.rs"]
mod invalid;
#[path = "operator/ownership.rs"]
mod ownership;
#[path = "operator/pod_security.rs"]
mod pod_security;
#[path = "operator/race.rs"]
mod race;
#[path = "operator/readiness.rs"]
mod readiness;
#[path = "operator/recording.rs"]
mod recording;
#[path = "operator/resilience.rs"]
mod resilience;
#[path = "operator/scale_down.rs"]
mod scale_down;
#[path = "operator/support.rs"]
mod support;

use std::time::Duration;

use anyhow::{Context, Result};
use graceful_operator::GracefulService;
use graceful_operator::crd::ServiceType;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use support::*;

struct Setup {
    tb: &'static testbed::Testbed,
    client: kube::Client,
    ns: String,
}

async fn setup(prefix: &str) -> Result<Setup> {
    let tb = testbed::shared()?;
    let client = tb.client().await?;
    install_crd(tb)?;
    ensure_schedulable(tb, &client).await?;
    let ns = tb.create_namespace(&client, prefix).await?;
    Ok(Setup { tb, client, ns })
}

fn env_of(d: &Deployment) -> Vec<(String, String)> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| {
            p.containers[0]
                .env
                .iter()
                .flatten()
                .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn crd_installs_with_names_scale_and_status() -> Result<()> {
    testbed::skip_without_cluster!();
    let s = setup("op-crd").await?;
    let mut get = s.tb.kubectl();
    get.args(["api-resources", "--api-group=graceful.dev", "-o", "wide"]);
    let out = run(get)?;
    assert!(out.contains("gsvc"), "{out}");
    assert!(out.contains("graceful"), "category missing: {out}");
    let mut get = s.tb.kubectl();
    get.args(["get", "graceful", "-n", &s.ns]);
    run(get)?;
    let mut crd = s.tb.kubectl();
    crd.args([
        "get",
        "crd",
        "gracefulservices.graceful.dev",
        "-o",
        "jsonpath={.spec.versions[0].subresources.scale.labelSelectorPath}",
    ]);
    assert_eq!(run(crd)?, ".status.selector");
    Ok(())
}

#[tokio::test]
async fn gsvc_creates_deployment_service_and_pdb() -> Result<()> {
    testbed::skip_without_cluster!();
    let s = setup("op-create").await?;
    let _operator = Operator::start(s.tb, &s.ns)?;
    let mut spec = quick_spec(2);
    spec.service.type_ = ServiceType::NodePort;
    spec.rollout.max_surge = IntOrString::Int(1);
    spec.rollout.min_ready_seconds = 1;
    spec.shutdown.termination_grace_period_seconds = 7;
    spec.ports.main = 8081;
    spec.ports.admin = 9091;
    let gsvc = create_gsvc(&s.client, &s.ns, "web", spec).await?;
    wait_stable(&s.client, &s.ns, "web", 2).await?;

    let d: Deployment = Api::namespaced(s.client.clone(), &s.ns).get("web").await?;
    let owner = &d.metadata.owner_references.as_ref().context("owner")?[0];
    assert_eq!(owner.uid, gsvc.metadata.uid.clone().unwrap_or_default());
    assert_eq!(owner.controller, Some(true));
    let labels = d.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "graceful-operator");
    assert_eq!(labels["app.kubernetes.io/name"], "web");
    let dspec = d.spec.as_ref().context("spec")?;
    assert_eq!(dspec.replicas, Some(2));
    assert_eq!(dspec.min_ready_seconds, Some(1));
    let ru = dspec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.clone())
        .context("ru")?;
    assert_eq!(ru.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
    let pod = dspec.template.spec.as_ref().context("pod")?;
    assert_eq!(pod.termination_grace_period_seconds, Some(7));
    let c = &pod.containers[0];
    let pre_stop = c
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|p| p.http_get.as_ref())
        .context("preStop")?;
    assert_eq!(pre_stop.path.as_deref(), Some("/prestop"));
    assert_eq!(pre_stop.port, IntOrString::String("admin".into()));
    let ready = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .context("readiness")?;
    assert_eq!(ready.path.as_deref(), Some("/readyz"));
    assert_eq!(ready.port, IntOrString::String("admin".into()));
    let ports: Vec<(Option<String>, i32)> = c
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [(Some("http".into()), 8081), (Some("admin".into()), 9091)]
    );
    let env = env_of(&d);
    for (k, v) in [
        ("GRACEFUL_PORT", "8081"),
        ("GRACEFUL_ADMIN_PORT", "9091"),
        ("GRACEFUL_DRAIN_DELAY_MS", "1000"),
        ("GRACEFUL_SHUTDOWN_TIMEOUT_MS", "5000"), // 7 s grace - 1 s drain - 1 s margin
    ] {
        assert!(
            env.contains(&(k.to_string(), v.to_string())),
            "{k}={v} missing in {env:?}"
        );
    }

    let svc: Service = Api::namespaced(s.client.clone(), &s.ns).get("web").await?;
    let sspec = svc.spec.context("svc spec")?;
    assert_eq!(sspec.type_.as_deref(), Some("NodePort"));
    let sports = sspec.ports.context("ports")?;
    assert_eq!(sports.len(), 1, "only the main port: {sports:?}");
    assert_eq!(sports[0].port, 8081);
    assert!(sports[0].node_port.is_some());
    assert_eq!(
        sspec.selector.context("selector")?["graceful.dev/service"],
        "web"
    );

    let pdb: PodDisruptionBudget = Api::namespaced(s.client.clone(), &s.ns).get("web").await?;
    assert_eq!(
        pdb.spec.context("pdb spec")?.max_unavailable,
        Some(IntOrString::Int(1))
    );

    // The pods really run the app and pass the readiness probe.
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let running = pods
        .list(&kube::api::ListParams::default().labels("graceful.dev/service=web"))
        .await?;
    assert_eq!(running.items.len(), 2);
    assert!(
        running
            .items
            .iter()
            .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    );

    // Deleting the GracefulService garbage-collects all three.
    let gsvcs: Api<GracefulService> = Api::namespaced(s.client.clone(), &s.ns);
    gsvcs.delete("web", &DeleteParams::foreground()).await?;
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    let services: Api<Service> = Api::namespaced(s.client.clone(), &s.ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(s.client.clone(), &s.ns);
    eventually(
        Duration::from_secs(90),
        "children garbage-collected",
        || async {
            let gone = deployments.get_opt("web").await?.is_none()
                && services.get_opt("web").await?.is_none()
                && pdbs.get_opt("web").await?.is_none();
            Ok(gone.then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn kubectl_scale_moves_the_deployment() -> Result<()> {
    testbed::skip_without_cluster!();
    let s = setup("op-scale").await?;
    let _operator = Operator::start(s.tb, &s.ns)?;
    create_gsvc(&s.client, &s.ns, "web", quick_spec(1)).await?;
    wait_stable(&s.client, &s.ns, "web", 1).await?;
    let mut scale = s.tb.kubectl();
    scale.args(["scale", "gsvc/web", "--replicas=4", "-n", &s.ns]);
    run(scale)?;
    wait_stable(&s.client, &s.ns, "web", 4).await?;
    let d: Deployment = Api::namespaced(s.client.clone(), &s.ns).get("web").await?;
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(4));
    // The scale subresource reports status.replicas and the selector, as an HPA reads them.
    let mut get = s.tb.kubectl();
    get.args([
        "get",
        "gsvc",
        "web",
        "-n",
        &s.ns,
        "--subresource=scale",
        "-o",
        "jsonpath={.status.replicas} {.status.selector}",
    ]);
    assert_eq!(run(get)?, "4 graceful.dev/service=web");
    let mut scale = s.tb.kubectl();
    scale.args(["scale", "gsvc/web", "--replicas=2", "-n", &s.ns]);
    run(scale)?;
    wait_stable(&s.client, &s.ns, "web", 2).await
}

#[tokio::test]
async fn drift_on_the_deployment_is_undone() -> Result<()> {
    testbed::skip_without_cluster!();
    let s = setup("op-drift").await?;
    let _operator = Operator::start(s.tb, &s.ns)?;
    create_gsvc(&s.client, &s.ns, "web", quick_spec(2)).await?;
    wait_stable(&s.client, &s.ns, "web", 2).await?;
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    // Someone edits the Deployment by hand: grace period, an env value and the replicas.
    let drift = serde_json::json!({"spec": {"replicas": 1, "template": {"spec": {
        "terminationGracePeriodSeconds": 99,
        "containers": [{"name": "app", "env": [{"name": "GRACEFUL_DRAIN_DELAY_MS", "value": "0"}]}]
    }}}});
    deployments
        .patch("web", &PatchParams::default(), &Patch::Strategic(&drift))
        .await?;
    eventually(Duration::from_secs(60), "drift reverted", || async {
        let d = deployments.get("web").await?;
        let spec = d.spec.as_ref().context("spec")?;
        let grace = spec
            .template
            .spec
            .as_ref()
            .and_then(|p| p.termination_grace_period_seconds);
        let drain = env_of(&d)
            .into_iter()
            .find(|(k, _)| k == "GRACEFUL_DRAIN_DELAY_MS")
            .map(|(_, v)| v);
        Ok(
            (spec.replicas == Some(2) && grace == Some(4) && drain.as_deref() == Some("1000"))
                .then_some(()),
        )
    })
    .await?;
    wait_stable(&s.client, &s.ns, "web", 2).await
}
