//! The reconcile loop: Kubernetes I/O at the edges, decisions delegated to the pure modules.
//!
//! Each reconcile makes sure the Deployment (at the replicas the planner holds), the Service and
//! the PodDisruptionBudget hold what the operator sets, with server-side apply and the one field
//! manager, so any drift is overwritten; a child already holding it is not written again
//! ([`crate::drift`]: the Deployment compared with a GET, the Service and the budget with the caches of
//! their watches). Then it reads pods and EndpointSlices, asks [`planner::plan`] whether to take
//! a scale-down step, and writes status if it changed. Owner references make deletion a
//! garbage-collection matter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::cluster::{
    SERVICE_NAME_LABEL, apply, apply_if_needed, child_key, observe, pods_of, ready_endpoints,
    terminating_pods, write_status,
};
use crate::crd::{GracefulService, GracefulServiceStatus, MANAGED_SELECTOR, NAME_KEY};
use crate::drift::LastApplied;
use crate::error::Error;
use crate::manifests::{Owner, deployment, pdb, service};
use crate::marking;
use crate::metrics::Metrics;
use crate::planner::{self, Observation, StepPolicy};
use crate::{FIELD_MANAGER, status, validation};

/// Requeue of a refused spec: the spec changing triggers a reconcile anyway.
pub const INVALID_REQUEUE: Duration = Duration::from_secs(300);

/// Shared by all reconciles.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Publishes events.k8s.io Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    /// Consecutive failed reconciles per object (namespace/name), for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The managed Services as their watch last saw them (filled by [`run`]).
    services: Store<Service>,
    /// The managed PodDisruptionBudgets as their watch last saw them (filled by [`run`]).
    budgets: Store<PodDisruptionBudget>,
    /// What this process last applied to each child.
    applied: LastApplied,
}

/// The write halves of [`Context`]'s caches, consumed by [`run`]'s watches.
pub struct CacheWriters {
    services: reflector::store::Writer<Service>,
    budgets: reflector::store::Writer<PodDisruptionBudget>,
}

impl Context {
    /// A context with a recorder reporting as `graceful-operator`, and the writers that [`run`]
    /// needs to fill its caches.
    pub fn new(client: Client, metrics: Metrics) -> (Self, CacheWriters) {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let (services, services_writer) = reflector::store();
        let (budgets, budgets_writer) = reflector::store();
        let ctx = Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            failures: Mutex::new(HashMap::new()),
            services,
            budgets,
            applied: LastApplied::default(),
        };
        let writers = CacheWriters {
            services: services_writer,
            budgets: budgets_writer,
        };
        (ctx, writers)
    }
}

/// Runs the controller until `shutdown` resolves, watching `namespace` or all namespaces.
///
/// The Services and budgets are watched as whole objects into the context's caches and the same
/// streams trigger the reconciles, so a reconcile triggered by an edit sees the edit in the cache.
pub async fn run(
    ctx: Arc<Context>,
    writers: CacheWriters,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let managed = watcher::Config::default().labels(MANAGED_SELECTOR);
    Controller::new(
        scoped::<GracefulService>(&client, &namespace),
        watcher::Config::default(),
    )
    .owns(scoped::<Deployment>(&client, &namespace), managed.clone())
    .owns_stream(
        watcher(scoped::<Service>(&client, &namespace), managed.clone())
            .reflect(writers.services)
            .touched_objects(),
    )
    .owns_stream(
        watcher(
            scoped::<PodDisruptionBudget>(&client, &namespace),
            managed.clone(),
        )
        .reflect(writers.budgets)
        .touched_objects(),
    )
    .watches(
        scoped::<Pod>(&client, &namespace),
        managed.clone(),
        |pod: Pod| owner_by_label(&pod, NAME_KEY),
    )
    .watches(
        scoped::<EndpointSlice>(&client, &namespace),
        managed,
        |slice: EndpointSlice| owner_by_label(&slice, SERVICE_NAME_LABEL),
    )
    .trigger_backoff(crate::watch_backoff::WatchBackoff::default())
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((object, _)) => tracing::debug!(object = %object, "reconciled"),
            // error_policy already logged reconcile errors at warn level.
            Err(error) => tracing::debug!(%error, "reconcile failed"),
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

/// Maps a pod or EndpointSlice to the GracefulService named by one of its labels.
fn owner_by_label<K: Resource>(obj: &K, key: &str) -> Option<ObjectRef<GracefulService>> {
    let name = obj.meta().labels.as_ref()?.get(key)?;
    let namespace = obj.meta().namespace.as_deref()?;
    Some(ObjectRef::new(name).within(namespace))
}

/// Retries failed reconciles with a backoff that doubles with each consecutive failure of the
/// object (1 s, 2 s, 4 s ... capped at 5 minutes); a successful reconcile resets it.
fn error_policy(gsvc: Arc<GracefulService>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(error);
    let failures = ctx.record_failure(&key(&gsvc));
    let delay = backoff(failures);
    tracing::warn!(gsvc = %gsvc.name_any(), %error, failures, retry_in_s = delay.as_secs(), "reconcile error");
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

    fn record_success(&self, key: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(key);
        }
    }
}

/// One reconcile of one GracefulService.
pub async fn reconcile(gsvc: Arc<GracefulService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start_reconcile();
    if gsvc.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the children; re-applying them now would race it.
        if let Some(uid) = &gsvc.metadata.uid {
            ctx.applied.forget(&format!("{uid}/"));
        }
        return Ok(Action::await_change());
    }
    let owner = Owner::of(&gsvc)?;
    let problems = validation::check(&gsvc.spec);
    if !problems.is_empty() {
        let result = refuse(&gsvc, &owner, &ctx, &problems.join("; ")).await;
        if result.is_ok() {
            ctx.record_success(&key(&gsvc));
        }
        return result;
    }
    let result = match apply_and_step(&gsvc, &owner, &ctx).await {
        Err(error) if error.is_invalid() => refuse(&gsvc, &owner, &ctx, &error.to_string()).await,
        other => other,
    };
    if result.is_ok() {
        ctx.record_success(&key(&gsvc));
    }
    result
}

async fn apply_and_step(
    gsvc: &GracefulService,
    owner: &Owner,
    ctx: &Context,
) -> Result<Action, Error> {
    let client = &ctx.client;
    let ns = owner.namespace.as_str();
    let spec = &gsvc.spec;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);

    let live = deployments.get_opt(&owner.name).await?;
    let current = live
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas);
    let hold = planner::replicas_to_hold(spec.replicas, current);
    let desired = deployment::build(owner, spec, hold);
    let applied = apply_if_needed(
        &deployments,
        &owner.name,
        &desired,
        live.as_ref(),
        &ctx.applied,
    )
    .await?;
    // The object as it is now: the apply's answer, else the live one it matched.
    let Some(current_deployment) = applied.or(live) else {
        return Err(Error::MissingField("deployment"));
    };
    let live_service = ctx.services.get(&ObjectRef::new(&owner.name).within(ns));
    apply_if_needed(
        &Api::<Service>::namespaced(client.clone(), ns),
        &owner.name,
        &service::build(owner, spec),
        live_service.as_deref(),
        &ctx.applied,
    )
    .await?;
    let live_budget = ctx.budgets.get(&ObjectRef::new(&owner.name).within(ns));
    apply_if_needed(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
        &owner.name,
        &pdb::build(owner),
        live_budget.as_deref(),
        &ctx.applied,
    )
    .await?;

    let pods = pods_of(client, ns, &owner.name).await?;
    let now = Timestamp::now();
    let previous = gsvc.status.as_ref();
    let observation = Observation {
        desired: spec.replicas,
        deployment: observe(&current_deployment),
        terminating_pods: terminating_pods(&pods),
        ready_endpoints: ready_endpoints(client, ns, &owner.name).await?,
        now,
        last_step_time: previous
            .and_then(|s| s.last_step_time.as_ref())
            .map(|t| t.0),
        policy: StepPolicy {
            step_size: spec.scale_down.step_size,
            min_interval: secs(spec.scale_down.min_step_interval_seconds),
            step_timeout: secs(spec.scale_down.step_timeout_seconds),
        },
    };
    let decision = planner::plan(&observation);
    if let Some(wait) = &decision.wait {
        tracing::debug!(gsvc = %owner.name, replicas = decision.replicas, reason = %wait.message(), "holding");
    }
    if let Some(step) = decision.step {
        // Mark the idlest pods so the ReplicaSet controller removes them (with the feature off,
        // only marks of an earlier interrupted step are taken back).
        let count = match spec.scale_down.prefer_idle_pods {
            true => usize::try_from(step.from - step.to).unwrap_or(0),
            false => 0,
        };
        marking::mark_idlest(client, ns, &pods, spec.ports.admin, count).await;
        let stepped = deployment::build(owner, spec, step.to);
        apply(&deployments, &owner.name, &stepped).await?;
        ctx.applied.record(&child_key(&stepped), &stepped);
        ctx.metrics.steps.inc();
        tracing::info!(gsvc = %owner.name, from = step.from, to = step.to, desired = spec.replicas, "scale-down step");
        // The action names the step so every step is its own Event rather than a count on one.
        publish(
            ctx,
            gsvc,
            EventType::Normal,
            "ScaleDownStep",
            &format!("ScaleDown{}To{}", step.from, step.to),
            format!(
                "Deployment replicas {} -> {} (target {})",
                step.from, step.to, spec.replicas
            ),
        )
        .await;
    }
    let was_degraded = is_degraded(previous);
    if let Some(message) = &decision.degraded
        && !was_degraded
    {
        publish(
            ctx,
            gsvc,
            EventType::Warning,
            "Degraded",
            "Reconcile",
            message.clone(),
        )
        .await;
    }
    let new_status = status::from_decision(
        &owner.name,
        gsvc.metadata.generation,
        previous,
        spec.replicas,
        &observation.deployment,
        &decision,
        now,
    );
    if status::needs_write(previous, &new_status) {
        write_status(client, owner, &new_status).await?;
    }
    Ok(Action::requeue(decision.requeue_after))
}

/// Reports a spec the operator will not act on, without retrying hot.
async fn refuse(
    gsvc: &GracefulService,
    owner: &Owner,
    ctx: &Context,
    problems: &str,
) -> Result<Action, Error> {
    ctx.metrics.invalid_specs.inc();
    let previous = gsvc.status.as_ref();
    let already_reported = previous.is_some_and(|s| {
        s.observed_generation == gsvc.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == status::DEGRADED && c.message == problems)
    });
    if !already_reported {
        tracing::warn!(gsvc = %owner.name, %problems, "invalid spec");
        publish(
            ctx,
            gsvc,
            EventType::Warning,
            "InvalidSpec",
            "Reconcile",
            problems.to_string(),
        )
        .await;
    }
    let new_status = status::invalid_spec(
        &owner.name,
        gsvc.metadata.generation,
        previous,
        problems,
        Timestamp::now(),
    );
    if status::needs_write(previous, &new_status) {
        write_status(&ctx.client, owner, &new_status).await?;
    }
    Ok(Action::requeue(INVALID_REQUEUE))
}

fn is_degraded(status: Option<&GracefulServiceStatus>) -> bool {
    status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == status::DEGRADED && c.status == "True")
    })
}

fn secs(seconds: i32) -> Duration {
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

async fn publish(
    ctx: &Context,
    gsvc: &GracefulService,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    };
    // An event that cannot be written must not fail the reconcile: status carries the same facts.
    if let Err(error) = ctx.recorder.publish(&event, &gsvc.object_ref(&())).await {
        tracing::warn!(%error, reason, "could not publish event");
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
