//! Leader election, least-privilege RBAC, and specs the operator must refuse.

use std::time::Duration;

use anyhow::{Context, Result};
use graceful_operator::GracefulService;
use graceful_operator::crd::{Phase, ServiceType};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};

use super::support::*;
use super::{invalid, quick_spec, setup};

#[tokio::test]
async fn two_replicas_with_leader_election_fail_over() -> Result<()> {
    testbed::skip_without_cluster!();
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
    // standby takes a released lease at its next attempt (every 2 s).
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
    testbed::skip_without_cluster!();
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
    assert_eq!(
        event_messages(s.tb, &s.ns, "ScaleDownStep")?.len(),
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
    testbed::skip_without_cluster!();
    let s = setup("op-invalid").await?;
    invalid::refused_by_schema(&s.client, &s.ns).await
}

#[tokio::test]
async fn spec_the_schema_cannot_check_is_reported_without_hot_loop() -> Result<()> {
    testbed::skip_without_cluster!();
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
    assert!(
        !event_messages(s.tb, &s.ns, "InvalidSpec")?.is_empty(),
        "no InvalidSpec event"
    );
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
