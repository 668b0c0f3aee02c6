//! When a deploy or a change is complete: the namespace holds exactly the wanted pods, all running
//! the wanted image, all Ready, none terminating, and the Deployment agrees.
//!
//! Before the load starts this is checked on lists. While the load runs it is checked on the
//! watchers' caches ([`crate::observe::Watched`]), so the measuring tool sends no list to the API
//! server during the measurement: its polls, a pod list and a Deployment list every 250 ms,
//! competed for the same two cores as the rollout they measured.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};

use crate::observe::Watched;
use crate::workloads::AppSpec;

/// True once `pods` and `deployments` show `app` settled (see the module's doc).
pub fn settled<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    deployments: impl IntoIterator<Item = &'a Deployment>,
    app: &AppSpec,
) -> bool {
    let image = app.image();
    let pods: Vec<&Pod> = pods.into_iter().collect();
    let settled_pods = pods.len() == app.replicas as usize
        && pods.iter().all(|pod| {
            pod.metadata.deletion_timestamp.is_none()
                && pod.spec.as_ref().is_some_and(|s| {
                    s.containers
                        .iter()
                        .all(|c| c.image.as_deref() == Some(&image))
                })
                && pod_ready(pod)
        });
    let deployments: Vec<&Deployment> = deployments.into_iter().collect();
    let settled_deployment = deployments.len() == 1
        && deployments.iter().all(|d| {
            let spec_replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let st = d.status.clone().unwrap_or_default();
            spec_replicas == app.replicas
                && st.observed_generation >= d.metadata.generation
                && st.replicas.unwrap_or(0) == app.replicas
                && st.updated_replicas.unwrap_or(0) == app.replicas
                && st.ready_replicas.unwrap_or(0) == app.replicas
        });
    settled_pods && settled_deployment
}

/// Waits until `app` is settled, listing the namespace's pods and Deployments at each check.
pub async fn wait_listed(
    client: &Client,
    ns: &str,
    app: &AppSpec,
    timeout: Duration,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    crate::wait::until(timeout, || async {
        let pods = pods.list(&ListParams::default()).await?;
        let deployments = deployments.list(&ListParams::default()).await?;
        Ok(settled(&pods.items, &deployments.items, app))
    })
    .await
}

/// Waits until `app` is settled as the watchers' caches show it: no request to the API server.
pub async fn wait_watched(
    watched: &Watched,
    app: &AppSpec,
    timeout: Duration,
) -> anyhow::Result<()> {
    crate::wait::until(timeout, || async {
        let pods = watched.pods.state();
        let deployments = watched.deployments.state();
        Ok(settled(
            pods.iter().map(|p| p.as_ref()),
            deployments.iter().map(|d| d.as_ref()),
            app,
        ))
    })
    .await
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn app() -> AppSpec {
        AppSpec {
            replicas: 2,
            tag: "v2".into(),
            work_ms: 1000,
            prefer_idle_pods: true,
        }
    }

    fn pod(name: &str, tag: &str, ready: bool, terminating: bool) -> Pod {
        let mut meta = json!({ "name": name });
        if terminating {
            meta["deletionTimestamp"] = json!("2026-12-07T00:00:00Z");
        }
        let image = AppSpec {
            tag: tag.into(),
            ..app()
        }
        .image();
        serde_json::from_value(json!({
            "metadata": meta,
            "spec": { "containers": [{ "name": "app", "image": image }] },
            "status": { "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }] },
        }))
        .unwrap()
    }

    fn deployment(updated: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": { "name": "web", "generation": 2 },
            "spec": { "replicas": 2, "selector": {}, "template": {} },
            "status": { "observedGeneration": 2, "replicas": 2, "updatedReplicas": updated, "readyReplicas": 2 },
        }))
        .unwrap()
    }

    #[test]
    fn settled_only_when_every_pod_is_new_ready_and_not_terminating() {
        let (a, b) = (pod("a", "v2", true, false), pod("b", "v2", true, false));
        assert!(settled([&a, &b], [&deployment(2)], &app()));
        assert!(
            !settled([&a, &b], [&deployment(1)], &app()),
            "deployment not updated"
        );
        assert!(!settled([&a], [&deployment(2)], &app()), "one pod missing");
        let old = pod("c", "v1", true, false);
        assert!(!settled([&a, &old], [&deployment(2)], &app()), "old image");
        let unready = pod("c", "v2", false, false);
        assert!(
            !settled([&a, &unready], [&deployment(2)], &app()),
            "unready"
        );
        let leaving = pod("c", "v2", true, true);
        assert!(
            !settled([&a, &b, &leaving], [&deployment(2)], &app()),
            "terminating"
        );
        assert!(!settled([&a, &b], [], &app()), "no deployment");
    }
}
