//! The controller: its watches, the shared [`Context`], and one reconcile as a straight pipeline,
//! [`observe`](crate::observe) (read) -> [`decide`](crate::decide) (pure) ->
//! [`act`](crate::act) (write).
//!
//! Owner references make deletion a garbage-collection matter; a reconcile of a GracefulService
//! being deleted writes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::FIELD_MANAGER;
use crate::act::act;
use crate::cache_sync::{self, Listed, Listing};
use crate::crd::{GracefulService, GracefulServiceStatus, MANAGED_SELECTOR, NAME_KEY};
use crate::decide::{self, decide};
use crate::drift::LastApplied;
use crate::error::Error;
use crate::manifests::Owner;
use crate::metrics::Metrics;
use crate::observe::{SERVICE_NAME_LABEL, observe};
use crate::status::Refusal;
use crate::watch_backoff::WatchBackoff;

/// Shared by all reconciles.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Publishes events.k8s.io Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    /// What this process last applied to each child.
    pub applied: LastApplied,
    /// Consecutive failed reconciles per object (namespace/name), for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The GracefulServices as their watch last saw them (filled by [`run`]).
    gsvcs: Store<GracefulService>,
    /// The managed Services as their watch last saw them (filled by [`run`]).
    services: Store<Service>,
    /// The managed PodDisruptionBudgets as their watch last saw them (filled by [`run`]).
    budgets: Store<PodDisruptionBudget>,
    /// The status this process last wrote, per GracefulService uid. The reconcile that a step's
    /// own changes trigger often runs before the watch cache shows the status the step wrote;
    /// compared with the older one there, the same status would be written again.
    written: Mutex<HashMap<String, GracefulServiceStatus>>,
    /// Whether each of the three caches has been listed ([`Context::synced`]).
    listed: [Listed; 3],
}

/// The write halves of [`Context`]'s caches, consumed by [`run`]'s watches.
pub struct CacheWriters {
    gsvcs: reflector::store::Writer<GracefulService>,
    pub(crate) services: reflector::store::Writer<Service>,
    pub(crate) budgets: reflector::store::Writer<PodDisruptionBudget>,
    /// The caches' list signals, in the order gsvcs, services, budgets.
    listing: [Listing; 3],
}

impl Context {
    /// A context with a recorder reporting as `graceful-operator`, and the writers that [`run`]
    /// needs to fill its caches.
    pub fn new(client: Client, metrics: Metrics) -> (Self, CacheWriters) {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let (gsvcs, gsvcs_writer) = reflector::store();
        let (services, services_writer) = reflector::store();
        let (budgets, budgets_writer) = reflector::store();
        let [(gl, gd), (sl, sd), (bl, bd)] = [(); 3].map(|()| cache_sync::pair());
        let ctx = Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            applied: LastApplied::default(),
            failures: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            gsvcs,
            services,
            budgets,
            listed: [gd, sd, bd],
        };
        let writers = CacheWriters {
            gsvcs: gsvcs_writer,
            services: services_writer,
            budgets: budgets_writer,
            listing: [gl, sl, bl],
        };
        (ctx, writers)
    }

    /// Resolves once every cache of [`run`] has listed its objects: the GracefulService list
    /// answered (so the CRD is installed and readable) and so did the children's. Never resolves
    /// while a list keeps failing (the errors are logged and counted by [`run`]).
    pub async fn synced(&self) {
        let all = futures::future::join_all(self.listed.iter().map(Listed::wait)).await;
        if all.contains(&false) {
            // A watch ended before its list: run ended before syncing. Stay unready.
            std::future::pending::<()>().await;
        }
    }
}

/// Runs the controller until `shutdown` resolves, watching `namespace` or all namespaces.
///
/// The GracefulServices, Services and budgets are watched as whole objects into the context's
/// caches and the same streams trigger the reconciles, so a reconcile triggered by an edit sees
/// the edit in the cache.
pub async fn run(
    ctx: Arc<Context>,
    writers: CacheWriters,
    namespace: Option<String>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let managed = watcher::Config::default().labels(MANAGED_SELECTOR);
    let [gsvcs_listing, services_listing, budgets_listing] = writers.listing;
    let gsvcs = watcher(
        scoped::<GracefulService>(&client, &namespace),
        watcher::Config::default(),
    )
    .modify(slim)
    .reflect(writers.gsvcs)
    .inspect(move |event| gsvcs_listing.observe(event))
    .applied_objects();
    let metrics = ctx.metrics.clone();
    // Deployments, pods and EndpointSlices only trigger reconciles (which read them fresh), so
    // their watches carry metadata only: a tenth of a pod's bytes, for 1000 pods at a time.
    Controller::for_stream(gsvcs, ctx.gsvcs.clone())
        .owns_stream(
            watcher(
                scoped::<PartialObjectMeta<Deployment>>(&client, &namespace),
                managed.clone(),
            )
            .touched_objects(),
        )
        .owns_stream(
            watcher(scoped::<Service>(&client, &namespace), managed.clone())
                .modify(slim)
                .reflect(writers.services)
                .inspect(move |event| services_listing.observe(event))
                .touched_objects(),
        )
        .owns_stream(
            watcher(
                scoped::<PodDisruptionBudget>(&client, &namespace),
                managed.clone(),
            )
            .modify(slim)
            .reflect(writers.budgets)
            .inspect(move |event| budgets_listing.observe(event))
            .touched_objects(),
        )
        .watches_stream(
            watcher(
                scoped::<PartialObjectMeta<Pod>>(&client, &namespace),
                managed.clone(),
            )
            .touched_objects(),
            |pod| owner_by_label(&pod, NAME_KEY),
        )
        .watches_stream(
            watcher(
                scoped::<PartialObjectMeta<EndpointSlice>>(&client, &namespace),
                managed,
            )
            .touched_objects(),
            |slice| owner_by_label(&slice, SERVICE_NAME_LABEL),
        )
        .trigger_backoff(WatchBackoff::default())
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            let metrics = metrics.clone();
            async move {
                match result {
                    Ok((object, _)) => tracing::debug!(object = %object, "reconciled"),
                    // error_policy already logged it, with the object.
                    Err(controller::Error::ReconcilerFailed(..)) => {}
                    Err(controller::Error::ObjectNotFound(object)) => {
                        tracing::debug!(%object, "reconcile of an object already gone")
                    }
                    Err(controller::Error::QueueError(error)) => {
                        metrics.watch_errors.inc();
                        tracing::warn!(%error, "watch failed; retrying with backoff");
                    }
                    Err(error) => tracing::warn!(%error, "controller error"),
                }
            }
        })
        .await;
}

fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Drops from a cached object what no reconcile reads and what weighs most in it: the field
/// sets of `managedFields`. The managers' names stay (a conflict message names them).
fn slim<K: Resource>(obj: &mut K) {
    for entry in obj.meta_mut().managed_fields.iter_mut().flatten() {
        entry.fields_v1 = None;
    }
}

/// Maps a pod or EndpointSlice to the GracefulService named by one of its labels.
fn owner_by_label<K: Resource>(obj: &K, key: &str) -> Option<ObjectRef<GracefulService>> {
    let name = obj.meta().labels.as_ref()?.get(key)?;
    let namespace = obj.meta().namespace.as_deref()?;
    Some(ObjectRef::new(name).within(namespace))
}

/// One reconcile of one GracefulService: read, decide, write.
pub async fn reconcile(gsvc: Arc<GracefulService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start_reconcile();
    if gsvc.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the children; re-applying them now would race it.
        if let Some(uid) = &gsvc.metadata.uid {
            ctx.applied.forget(&format!("{uid}/"));
            if let Ok(mut map) = ctx.written.lock() {
                map.remove(uid);
            }
        }
        return Ok(Action::await_change());
    }
    let gsvc = ctx.with_written_status(gsvc);
    let owner = Owner::of(&gsvc)?;
    let observed = observe(&ctx.client, &owner, &ctx.services, &ctx.budgets).await?;
    let plan = decide(&gsvc, &observed, &ctx.applied, Timestamp::now())?;
    match &plan.refusal {
        Some(Refusal::InvalidSpec) => ctx.metrics.invalid_specs.inc(),
        Some(Refusal::ChildConflict) => ctx.metrics.child_conflicts.inc(),
        None => 0,
    };
    if let Some(reason) = &plan.holding {
        tracing::debug!(ns = %owner.namespace, gsvc = %owner.name, %reason, "holding");
    }
    if let (Some(refusal), false) = (plan.refusal, plan.events.is_empty()) {
        let note = plan
            .events
            .iter()
            .map(|n| n.note.as_str())
            .collect::<Vec<_>>();
        tracing::warn!(ns = %owner.namespace, gsvc = %owner.name, ?refusal, problems = ?note, "refused");
    }
    let result = match act(&gsvc, plan, &ctx).await {
        // The API server refused a child as invalid: report it rather than retry the same spec.
        Err(error) if error.is_invalid() => {
            ctx.metrics.invalid_specs.inc();
            let plan = decide::refuse(
                &gsvc,
                Refusal::InvalidSpec,
                &error.to_string(),
                Timestamp::now(),
            );
            act(&gsvc, plan, &ctx).await
        }
        other => other,
    };
    if result.is_ok() {
        ctx.record_success(&key(&gsvc));
    }
    result
}

/// Retries failed reconciles with a backoff that doubles with each consecutive failure of the
/// object (1 s, 2 s, 4 s ... capped at 5 minutes); a successful reconcile resets it.
pub(crate) fn error_policy(gsvc: Arc<GracefulService>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(error);
    let failures = ctx.record_failure(&key(&gsvc));
    let delay = backoff(failures);
    tracing::warn!(
        ns = %gsvc.namespace().unwrap_or_default(),
        gsvc = %gsvc.name_any(),
        %error,
        failures,
        retry_in_s = delay.as_secs(),
        "reconcile error"
    );
    Action::requeue(delay)
}

/// Delay before retry number `failures` (1-based).
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(9);
    Duration::from_secs((1u64 << exponent).min(300))
}

fn key(gsvc: &GracefulService) -> String {
    format!(
        "{}/{}",
        gsvc.namespace().unwrap_or_default(),
        gsvc.name_any()
    )
}

impl Context {
    fn record_failure(&self, key: &str) -> u32 {
        match self.failures.lock() {
            Ok(mut map) => {
                let n = map.entry(key.to_string()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        }
    }

    /// Records the status just written for `gsvc`.
    pub(crate) fn wrote_status(&self, gsvc: &GracefulService, status: &GracefulServiceStatus) {
        if let (Some(uid), Ok(mut map)) = (&gsvc.metadata.uid, self.written.lock()) {
            map.insert(uid.clone(), status.clone());
        }
    }

    /// `gsvc` with the status this process last wrote for it, when the cache does not show it
    /// yet. Once the cache shows it, the entry goes: the map holds only writes the cache has not
    /// caught up with, so a GracefulService deleted later leaves nothing behind.
    fn with_written_status(&self, gsvc: Arc<GracefulService>) -> Arc<GracefulService> {
        let written = match (&gsvc.metadata.uid, self.written.lock()) {
            (Some(uid), Ok(mut map)) => match map.get(uid) {
                Some(status) if gsvc.status.as_ref() == Some(status) => {
                    map.remove(uid);
                    None
                }
                other => other.cloned(),
            },
            _ => None,
        };
        match written {
            Some(status) => {
                let mut newer = (*gsvc).clone();
                newer.status = Some(status);
                Arc::new(newer)
            }
            None => gsvc,
        }
    }

    fn record_success(&self, key: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let delays: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }
}
