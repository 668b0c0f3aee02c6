//! The operator against the testbed's real control plane, node agent and app processes.
//!
//! Every test makes its own namespace and runs its own operator process scoped to it
//! (`--namespace`), so tests run in parallel without sharing a controller.

#[path = "operator/invalid.rs"]
mod invalid;
#[path = "operator/support.rs"]
mod support;

use std::time::Duration;

use anyhow::{Context, Result};
use graceful_operator::crd::{Phase, ServiceType};
use graceful_operator::{GracefulService, GracefulServiceSpec};
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

/// Short shutdown timings keep scale-downs quick: 1 s drain, 1 s longest request, 4 s grace.
fn quick_spec(replicas: i32) -> GracefulServiceSpec {
    let mut spec = GracefulServiceSpec {
        replicas,
        ..GracefulServiceSpec::default()
    };
    spec.shutdown.drain_delay_seconds = 1;
    spec.shutdown.max_request_seconds = 1;
    spec.shutdown.termination_grace_period_seconds = 4;
    spec
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
async fn twenty_to_one_walks_every_step_after_the_previous_settled() -> Result<()> {
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
    let s = setup("op-rollout").await?;
    let _operator = Operator::start(s.tb, &s.ns)?;
    create_gsvc(&s.client, &s.ns, "web", quick_spec(6)).await?;
    wait_stable(&s.client, &s.ns, "web", 6).await?;
    let (rec, tasks) = record(&s.client, &s.ns, "web").await?;
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

#[tokio::test]
async fn drift_on_the_deployment_is_undone() -> Result<()> {
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

#[tokio::test]
async fn two_replicas_with_leader_election_fail_over() -> Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    let s = setup("op-leader").await?;
    let args = ["--leader-election", "on", "--lease-namespace", &s.ns];
    let mut operators = vec![Operator::start_with(s.tb, &s.ns, &args)?];
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &s.ns);
    let holder = || async {
        let lease = leases.get_opt("graceful-operator").await?;
        Ok(lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    };
    let first_holder = eventually(Duration::from_secs(30), "lease held", holder).await?;
    operators.push(Operator::start_with(s.tb, &s.ns, &args)?);
    create_gsvc(&s.client, &s.ns, "web", quick_spec(1)).await?;
    wait_stable(&s.client, &s.ns, "web", 1).await?;
    let leader = operators
        .iter()
        .position(|o| first_holder.ends_with(&format!("-{}", o.pid())))
        .context("lease holder is neither operator")?;
    assert_eq!(leader, 0, "the first operator holds the lease");
    // The standby replica has reconciled nothing so far.
    assert_eq!(
        operators[1]
            .metric("graceful_operator_reconciles_total")
            .await?,
        0.0
    );
    let gsvcs: Api<GracefulService> = Api::namespaced(s.client.clone(), &s.ns);
    let holds = |holder: String, op: &Operator| holder.ends_with(&format!("-{}", op.pid()));

    // SIGTERM: the leader exits cleanly (code 0) and releases the lease (holder cleared). The
    // standby (kube-lease-manager) checks again when the lease it last saw would expire, so it
    // takes over within one lease duration (15 s).
    assert_eq!(operators[0].terminate()?, Some(0));
    assert_eq!(holder().await?, None, "lease not released on SIGTERM");
    let second = &operators[1];
    eventually(
        Duration::from_secs(25),
        "standby takes the released lease",
        || async { Ok(holder().await?.filter(|h| holds(h.clone(), second))) },
    )
    .await?;
    let patch = serde_json::json!({"spec": {"replicas": 2}});
    gsvcs
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_stable(&s.client, &s.ns, "web", 2).await?;

    // SIGKILL: no release; a new standby takes over once the lease expires.
    operators.push(Operator::start_with(s.tb, &s.ns, &args)?);
    tokio::time::sleep(Duration::from_secs(2)).await;
    operators[1].kill();
    let third = &operators[2];
    eventually(
        Duration::from_secs(40),
        "standby takes the expired lease",
        || async { Ok(holder().await?.filter(|h| holds(h.clone(), third))) },
    )
    .await?;
    let patch = serde_json::json!({"spec": {"replicas": 3}});
    gsvcs
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_stable(&s.client, &s.ns, "web", 3).await
}

/// The operator runs with nothing but operator/rbac.yaml (the list the Helm chart grants).
#[tokio::test]
async fn operator_needs_only_the_documented_rbac() -> Result<()> {
    let s = setup("op-rbac").await?;
    let user = format!("graceful-operator-{}", s.ns);
    let kubeconfig = restricted_kubeconfig(s.tb, &s.client, &user).await?;
    let args = ["--leader-election", "on", "--lease-namespace", &s.ns];
    let operator = Operator::start_as(s.tb, &s.ns, &args, &kubeconfig)?;
    let mut spec = quick_spec(3);
    spec.service.type_ = ServiceType::NodePort;
    create_gsvc(&s.client, &s.ns, "web", spec).await?;
    wait_stable(&s.client, &s.ns, "web", 3).await?;
    let gsvcs: Api<GracefulService> = Api::namespaced(s.client.clone(), &s.ns);
    let patch = serde_json::json!({"spec": {"replicas": 1}});
    gsvcs
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_stable(&s.client, &s.ns, "web", 1).await?;
    let mut events = s.tb.kubectl();
    events.args([
        "get",
        "events",
        "-n",
        &s.ns,
        "--field-selector",
        "reason=ScaleDownStep",
        "-o",
        "name",
    ]);
    assert_eq!(
        run(events)?.lines().count(),
        2,
        "one Event per step (3->2, 2->1)"
    );
    let log = std::fs::read_to_string(&operator.log)?;
    assert!(
        !log.contains("forbidden"),
        "operator hit a forbidden call:\n{log}"
    );
    Ok(())
}

#[tokio::test]
async fn invalid_specs_are_refused_by_the_api_server() -> Result<()> {
    let s = setup("op-invalid").await?;
    invalid::refused_by_schema(&s.client, &s.ns).await
}

#[tokio::test]
async fn spec_the_schema_cannot_check_is_reported_without_hot_loop() -> Result<()> {
    let s = setup("op-semantic").await?;
    let operator = Operator::start(s.tb, &s.ns)?;
    let mut spec = quick_spec(1);
    spec.env = vec![k8s_openapi::api::core::v1::EnvVar {
        name: "GRACEFUL_PORT".into(),
        value: Some("1".into()),
        value_from: None,
    }];
    create_gsvc(&s.client, &s.ns, "web", spec).await?;
    let gsvcs: Api<GracefulService> = Api::namespaced(s.client.clone(), &s.ns);
    let message = eventually(Duration::from_secs(60), "Degraded InvalidSpec", || async {
        let g = gsvcs.get("web").await?;
        Ok(g.status.and_then(|st| {
            (st.phase == Phase::Degraded).then_some(())?;
            st.conditions
                .into_iter()
                .find(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == "InvalidSpec")
                .map(|c| c.message)
        }))
    })
    .await?;
    assert!(message.contains("GRACEFUL_PORT"), "{message}");
    // Nothing was created for the refused spec.
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    assert!(deployments.get_opt("web").await?.is_none());
    // A Warning Event says why.
    let mut events = s.tb.kubectl();
    events.args([
        "get",
        "events",
        "-n",
        &s.ns,
        "--field-selector",
        "reason=InvalidSpec",
        "-o",
        "name",
    ]);
    assert!(!run(events)?.trim().is_empty(), "no InvalidSpec event");
    // No hot loop: over 5 s the refused spec is not reconciled again and again.
    let before = operator
        .metric("graceful_operator_reconciles_total")
        .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = operator
        .metric("graceful_operator_reconciles_total")
        .await?;
    assert!(
        after - before <= 2.0,
        "{before} -> {after} reconciles in 5 s"
    );
    // Fixing the spec recovers.
    let fix = serde_json::json!({"spec": {"env": []}});
    gsvcs
        .patch("web", &PatchParams::default(), &Patch::Merge(&fix))
        .await?;
    wait_stable(&s.client, &s.ns, "web", 1).await
}

/// The walk checker itself must reject a skipped step and a step taken before the previous pod
/// was gone; otherwise the walk tests above could not fail.
#[test]
fn walk_checker_rejects_skips_and_early_steps() {
    let good = Recording {
        replicas: vec![(10, 3), (11, 2), (14, 1)],
        terminating: vec![(12, "a".into()), (15, "b".into())],
        deleted: vec![(13, "a".into()), (16, "b".into())],
        status_at_change: Vec::new(),
        timeline: Vec::new(),
    };
    assert!(check_walk(&good, 3, 1).is_ok());
    let mut early = good.clone();
    early.replicas[2].0 = 12; // step 2 -> 1 before pod a was deleted (rev 13)
    early.terminating[1].0 = 12;
    assert!(check_walk(&early, 3, 1).is_err());
    let mut skipped = good.clone();
    skipped.replicas = vec![(10, 3), (11, 1)];
    assert!(check_walk(&skipped, 3, 1).is_err());
    let mut repeated = good;
    repeated.replicas = vec![(10, 3), (11, 2), (12, 3), (14, 2), (15, 1)];
    assert!(check_walk(&repeated, 3, 1).is_err());
}
