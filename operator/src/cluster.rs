//! The API reads and writes of a reconcile: server-side apply, status, and the observations the
//! planner needs (Deployment counts, terminating pods, ready endpoints), and the pods'
//! deletion-cost annotation.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::{GracefulService, GracefulServiceStatus};
use crate::drift::LastApplied;
use crate::error::Error;
use crate::manifests::Owner;
use crate::planner::DeploymentObservation;
use crate::victims::DELETION_COST;
use crate::{FIELD_MANAGER, status};

/// Label the EndpointSlice controller puts on the slices of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Server-side apply with the operator's field manager, forcing ownership (drift is reverted).
pub async fn apply<K>(api: &Api<K>, name: &str, object: &K) -> Result<K, Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(name, &params, &Patch::Apply(object)).await?)
}

/// [`apply`] only when [`LastApplied::needs_apply`] says so (the `live` object, from a GET or a
/// watch cache, lacks what `desired` sets, or `desired` changed since the last apply). Returns the
/// object as the API server answered the apply, or None when nothing was written.
pub async fn apply_if_needed<K>(
    api: &Api<K>,
    name: &str,
    desired: &K,
    live: Option<&K>,
    memory: &LastApplied,
) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let key = child_key::<K>(desired);
    if !memory.needs_apply(&key, desired, live) {
        return Ok(None);
    }
    let applied = apply(api, name, desired).await?;
    memory.record(&key, desired);
    Ok(Some(applied))
}

/// Key of a child in [`LastApplied`]: `<owner uid>/<kind>`, so [`LastApplied::forget`] with the
/// owner's uid drops all of its children, and a re-created owner of the same name starts afresh.
pub fn child_key<K: Resource<DynamicType = ()>>(child: &K) -> String {
    let owner = child
        .meta()
        .owner_references
        .as_ref()
        .and_then(|refs| refs.first())
        .map(|r| r.uid.as_str())
        .unwrap_or_default();
    format!("{owner}/{}", K::kind(&()))
}

pub async fn write_status(
    client: &Client,
    owner: &Owner,
    status: &GracefulServiceStatus,
) -> Result<(), Error> {
    let api: Api<GracefulService> = Api::namespaced(client.clone(), &owner.namespace);
    let body = serde_json::json!({
        "apiVersion": "graceful.dev/v1alpha1",
        "kind": "GracefulService",
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&owner.name, &params, &Patch::Apply(&body))
        .await?;
    Ok(())
}

/// The planner's view of a Deployment.
pub fn observe(d: &Deployment) -> DeploymentObservation {
    let status = d.status.clone().unwrap_or_default();
    DeploymentObservation {
        spec_replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        generation: d.metadata.generation.unwrap_or(0),
        observed_generation: status.observed_generation.unwrap_or(0),
        replicas: status.replicas.unwrap_or(0),
        ready_replicas: status.ready_replicas.unwrap_or(0),
        updated_replicas: status.updated_replicas.unwrap_or(0),
        available_replicas: status.available_replicas.unwrap_or(0),
        progress_deadline_exceeded: status.conditions.unwrap_or_default().iter().any(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        }),
    }
}

/// The pods of the service `name` (terminating ones included).
pub async fn pods_of(client: &Client, ns: &str, name: &str) -> Result<Vec<Pod>, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&status::selector(name)))
        .await?;
    Ok(list.items)
}

/// Pods with a deletion timestamp.
pub fn terminating_pods(pods: &[Pod]) -> i32 {
    let count = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .count();
    i32::try_from(count).unwrap_or(i32::MAX)
}

/// Sets (Some) or removes (None) a pod's `controller.kubernetes.io/pod-deletion-cost`. A JSON
/// merge patch rather than an apply: a pod that vanished meanwhile answers 404 (ignored here)
/// instead of an apply trying to create it. Only the annotation is sent.
pub async fn set_deletion_cost(
    client: &Client,
    ns: &str,
    pod: &str,
    cost: Option<&str>,
) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let body = serde_json::json!({"metadata": {"annotations": {DELETION_COST: cost}}});
    match pods
        .patch(pod, &PatchParams::default(), &Patch::Merge(&body))
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        other => other.map(|_| ()).map_err(Error::from),
    }
}

/// Ready endpoints over the Service's EndpointSlices (a missing `ready` counts as ready, as the
/// API documents; a terminating endpoint is never ready).
pub async fn ready_endpoints(client: &Client, ns: &str, name: &str) -> Result<i32, Error> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let list = slices
        .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name}")))
        .await?;
    let count = list
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .count();
    Ok(i32::try_from(count).unwrap_or(i32::MAX))
}
