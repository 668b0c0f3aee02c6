//! A child's name taken by an object the GracefulService does not control: the operator refuses
//! (Degraded/ChildConflict and a Warning Event naming the object) and changes nothing of it; once
//! the object is gone, it creates its own. Before this, the forced apply took the object over: the
//! "unchanged" assertions below are the ones that failed then.

use std::time::Duration;

use anyhow::{Context, Result};
use graceful_operator::GracefulService;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

use super::support::*;
use super::{quick_spec, setup};

#[tokio::test]
async fn a_service_of_someone_else_survives_a_gracefulservice_of_its_name() -> Result<()> {
    testbed::skip_without_cluster!();
    let s = setup("op-owner").await?;
    let services: Api<Service> = Api::namespaced(s.client.clone(), &s.ns);
    let theirs: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "labels": {"team": "theirs"}},
        "spec": {"selector": {"app": "theirs"}, "ports": [{"name": "web", "port": 80}]},
    }))?;
    let before = services
        .patch(
            "web",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&theirs),
        )
        .await?;
    let _operator = Operator::start(s.tb, &s.ns)?;
    create_gsvc(&s.client, &s.ns, "web", quick_spec(1)).await?;
    let gsvcs: Api<GracefulService> = Api::namespaced(s.client.clone(), &s.ns);
    let message = eventually(
        Duration::from_secs(60),
        "Degraded ChildConflict",
        || async {
            let g = gsvcs.get("web").await?;
            Ok(g.status.and_then(|st| {
                st.conditions
                    .into_iter()
                    .find(|c| {
                        c.type_ == "Degraded" && c.status == "True" && c.reason == "ChildConflict"
                    })
                    .map(|c| c.message)
            }))
        },
    )
    .await?;
    eprintln!("Degraded: {message}");
    assert!(
        message.contains(&format!("Service {}/web already exists", s.ns))
            && message.contains("someone-else"),
        "{message}"
    );
    // A few more reconciles' worth of time: still nothing of theirs changed, nothing created.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = services.get("web").await?;
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "their Service was written"
    );
    assert_eq!(after.spec, before.spec);
    assert_eq!(after.metadata.owner_references, None);
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    assert!(deployments.get_opt("web").await?.is_none());
    let notes = event_messages(s.tb, &s.ns, "ChildConflict")?.join("\n");
    assert!(
        notes.contains("someone-else"),
        "no ChildConflict event: {notes}"
    );

    // Their Service removed: the GracefulService gets its own (the refusal requeues in 30 s).
    services.delete("web", &DeleteParams::default()).await?;
    wait_stable(&s.client, &s.ns, "web", 1).await?;
    let ours = services.get("web").await?;
    let owner = ours
        .metadata
        .owner_references
        .context("our Service has no owner")?;
    assert_eq!(owner[0].kind, "GracefulService");
    Ok(())
}
