//! The read step of a reconcile: everything the decision needs, read once, before anything is
//! written; and the pure views the planner takes of those objects.
//!
//! The Deployment is read with a GET (a quorum read), never from a cache: it carries the current
//! step and the walk's clock, and a reconcile right after a step must see that step. The Service
//! and the budget come from their watch caches, with a GET only when the cache has none of that
//! name (the name may be taken by an object that is not ours, which the managed-label watch
//! cannot see). Pods and EndpointSlices are listed by label.
//!
//! The Deployment comes first, so the pods and slices are read after it and are at least as new
//! as the step it shows; the other four reads go out together (one round trip to the API server
//! instead of four, which is most of a reconcile's time when the API server is busy).

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};

use crate::error::Error;
use crate::manifests::deployment::{LAST_STEP, WALK_STARTED};
use crate::manifests::{Owner, pod};
use crate::planner::{DeploymentObservation, PodView, StepClock};
use crate::status;

/// Label the EndpointSlice controller puts on the slices of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the cluster holds for one GracefulService, as read at the start of a reconcile.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The Deployment of that name, whoever owns it.
    pub deployment: Option<Deployment>,
    /// The Service of that name, whoever owns it.
    pub service: Option<Service>,
    /// The PodDisruptionBudget of that name, whoever owns it.
    pub budget: Option<PodDisruptionBudget>,
    /// The service's pods, terminating ones included.
    pub pods: Vec<Pod>,
    /// The Service's EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// A fresh random preStop token, drawn only when the Deployment records none (a new token
    /// would roll every pod); empty otherwise.
    pub new_token: String,
}

/// Pods per page when listing a service's pods.
pub const POD_PAGE: u32 = 250;

/// Lists the pods `params` select, a page at a time, each pod kept [`slim`]: a walk of 1000
/// replicas lists them at every reconcile, and whole pages of whole pods (their containers'
/// env, volumes, managed fields) made the operator's memory grow with the service.
async fn list_pods(api: &Api<Pod>, params: ListParams) -> Result<Vec<Pod>, kube::Error> {
    let mut params = params.limit(POD_PAGE);
    let mut pods = Vec::new();
    loop {
        let page = api.list(&params).await?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        pods.extend(page.items.into_iter().map(slim));
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(pods),
        }
    }
}

/// A pod with only what the planner and the idle-pod marking read: its metadata without
/// managed fields, its node, and its status.
fn slim(mut pod: Pod) -> Pod {
    pod.metadata.managed_fields = None;
    pod.spec = pod.spec.map(|spec| k8s_openapi::api::core::v1::PodSpec {
        node_name: spec.node_name,
        ..Default::default()
    });
    pod
}

/// Reads what [`Observed`] holds for `owner`.
pub async fn observe(
    client: &Client,
    owner: &Owner,
    services: &Store<Service>,
    budgets: &Store<PodDisruptionBudget>,
) -> Result<Observed, Error> {
    let ns = owner.namespace.as_str();
    let name = owner.name.as_str();
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns);
    let by_service = ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name}"));
    let (service, budget, pods, slices) = tokio::try_join!(
        cached_or_get(client, services, owner),
        cached_or_get(client, budgets, owner),
        async {
            Ok::<_, Error>(
                list_pods(&pods, ListParams::default().labels(&status::selector(name))).await?,
            )
        },
        async { Ok::<_, Error>(slices.list(&by_service).await?.items) },
    )?;
    let new_token = match pod::recorded_token(deployment.as_ref()) {
        Some(_) => String::new(),
        None => random_token()?,
    };
    Ok(Observed {
        deployment,
        service,
        budget,
        pods,
        slices,
        new_token,
    })
}

/// 128 random bits from the operating system, as hex.
fn random_token() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Error::Entropy(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

async fn cached_or_get<K>(
    client: &Client,
    cache: &Store<K>,
    owner: &Owner,
) -> Result<Option<K>, Error>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let key = ObjectRef::new(&owner.name).within(&owner.namespace);
    if let Some(found) = cache.get(&key) {
        return Ok(Some(Arc::unwrap_or_clone(found)));
    }
    Ok(Api::<K>::namespaced(client.clone(), &owner.namespace)
        .get_opt(&owner.name)
        .await?)
}

/// The planner's view of a Deployment (`spec_changing` is for the caller to set).
pub fn deployment_view(d: &Deployment) -> DeploymentObservation {
    let status = d.status.clone().unwrap_or_default();
    let stamp = |key: &str| -> Option<Timestamp> {
        d.metadata.annotations.as_ref()?.get(key)?.parse().ok()
    };
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
        clock: StepClock {
            walk_started: stamp(WALK_STARTED),
            last_step: stamp(LAST_STEP),
        },
        spec_changing: false,
    }
}

/// The planner's view of a pod: readiness, since when it is not ready, and why.
pub fn pod_view(pod: &Pod) -> PodView {
    let status = pod.status.as_ref();
    let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
    let condition = |type_: &str| conditions.iter().find(|c| c.type_ == type_);
    let ready = condition("Ready").is_some_and(|c| c.status == "True");
    let unready_since = match condition("Ready") {
        Some(c) => c.last_transition_time.as_ref().map(|t| t.0),
        None => pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
    };
    // The kubelet gives a Ready=False condition a reason (ContainersNotReady, PodCompleted); the
    // node-lifecycle controller flips a Ready=True condition to False and leaves its reason, which
    // the kubelet never sets for True, empty.
    let unready_by_itself = match condition("Ready") {
        None => true,
        Some(c) => c.reason.as_deref().is_some_and(|r| !r.is_empty()),
    };
    PodView {
        name: pod.metadata.name.clone().unwrap_or_default(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        deleting_at: pod.metadata.deletion_timestamp.as_ref().map(|t| t.0),
        ready,
        unready_since: (!ready).then_some(unready_since).flatten(),
        unready_by_itself: !ready && unready_by_itself,
        why: if ready {
            String::new()
        } else {
            why_not_ready(pod)
        },
        stopped: stopped(pod),
    }
}

/// Whether the kubelet reports every container of `pod` terminated (app, sidecars and init
/// containers alike), or the pod finished.
fn stopped(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return true;
    }
    let containers = status.container_statuses.as_deref().unwrap_or_default();
    let init = status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default();
    !containers.is_empty()
        && containers
            .iter()
            .chain(init)
            .all(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()))
}

/// Why a pod is not ready, in a few words: a waiting container's reason (CrashLoopBackOff,
/// ImagePullBackOff ...), an unscheduled pod's reason, else its phase.
fn why_not_ready(pod: &Pod) -> String {
    let Some(status) = pod.status.as_ref() else {
        return "no status".into();
    };
    let phase = status.phase.clone().unwrap_or_else(|| "Unknown".into());
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| c.reason.clone().unwrap_or_else(|| "not scheduled".into()));
    match (waiting, unscheduled) {
        (Some(reason), _) => reason,
        (None, Some(reason)) => format!("{phase}: {reason}"),
        (None, None) => format!("{phase}, not ready"),
    }
}

/// Distinct pods listed as ready over `slices` (an endpoint that sits in two slices while the
/// controller moves it counts once). A missing `ready` counts as ready, as the API documents.
pub fn ready_pods(slices: &[EndpointSlice]) -> i32 {
    let pods: BTreeSet<String> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| match &e.target_ref {
            Some(target) => target.name.clone(),
            None => e.addresses.first().cloned(),
        })
        .collect();
    i32::try_from(pods.len()).unwrap_or(i32::MAX)
}

#[cfg(test)]
#[path = "observe_tests.rs"]
mod tests;
