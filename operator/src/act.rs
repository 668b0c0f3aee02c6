//! The write step of a reconcile: performs a [`Plan`] and nothing else.
//!
//! Every write is a server-side apply with the one field manager, forced, so drift is reverted;
//! a child is only ever written after [`crate::decide`] found that the GracefulService controls
//! it (or that it does not exist). The step's apply carries the `resourceVersion` it was decided
//! on: if the Deployment changed since it was read (its controller wrote status, another writer
//! stepped), the API server answers 409 and the reconcile reads again at once instead of writing
//! what it decided on stale facts.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::FIELD_MANAGER;
use crate::controller::Context;
use crate::crd::{GracefulService, GracefulServiceStatus};
use crate::decide::{Note, Plan};
use crate::drift::child_key;
use crate::error::Error;
use crate::marking;

/// Delay before reading again after the step's precondition failed.
pub const CONFLICT_REQUEUE: Duration = Duration::from_millis(200);

/// Performs `plan` for `gsvc`: children, then the step, then Events, then status.
pub async fn act(gsvc: &GracefulService, plan: Plan, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let ns = gsvc.metadata.namespace.as_deref().unwrap_or_default();
    let name = gsvc.metadata.name.as_deref().unwrap_or_default();
    // The Deployment first: when the API server refuses it (an invalid template), nothing else
    // of a broken spec is created. The Service and the budget then go out together.
    apply_if(ctx, ns, plan.applies.deployment.as_ref()).await?;
    tokio::try_join!(
        apply_if(ctx, ns, plan.applies.service.as_ref()),
        apply_if::<PodDisruptionBudget>(ctx, ns, plan.applies.budget.as_ref()),
    )?;
    if let Some(write) = &plan.step {
        marking::mark_idlest(client, ns, &write.pods, write.admin_port, write.mark).await;
        let mut stepped = write.deployment.clone();
        stepped.metadata.resource_version = write.resource_version.clone();
        let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
        match apply(&deployments, &stepped).await {
            Err(Error::Kube(kube::Error::Api(status))) if status.code == 409 => {
                tracing::info!(
                    ns,
                    gsvc = name,
                    "the Deployment changed since it was read; reading again before stepping"
                );
                ctx.metrics.step_conflicts.inc();
                return Ok(Action::requeue(CONFLICT_REQUEUE));
            }
            other => other?,
        };
        ctx.applied
            .record(&child_key(&write.deployment), &write.deployment);
        ctx.metrics.steps.inc();
        tracing::info!(ns, gsvc = name, from = write.step.from, to = write.step.to, kind = ?write.step.kind, "scale-down step");
    }
    for note in &plan.events {
        publish(ctx, gsvc, note).await;
    }
    if let Some(status) = &plan.status {
        write_status(client, ns, name, status).await?;
        ctx.wrote_status(gsvc, status);
    }
    Ok(Action::requeue(plan.requeue_after))
}

/// Server-side apply with the operator's field manager, forcing ownership (drift is reverted).
async fn apply<K>(api: &Api<K>, object: &K) -> Result<K, Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object
        .meta()
        .name
        .as_deref()
        .ok_or(Error::MissingField("metadata.name"))?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(name, &params, &Patch::Apply(object)).await?)
}

/// [`apply_child`] of `object` in `ns`, when there is one to apply.
async fn apply_if<K>(ctx: &Context, ns: &str, object: Option<&K>) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    match object {
        Some(object) => apply_child(&Api::namespaced(ctx.client.clone(), ns), object, ctx).await,
        None => Ok(()),
    }
}

/// [`apply`], then remembered so an unchanged child is not applied again.
async fn apply_child<K>(api: &Api<K>, object: &K, ctx: &Context) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    apply(api, object).await?;
    ctx.applied.record(&child_key(object), object);
    Ok(())
}

async fn write_status(
    client: &Client,
    ns: &str,
    name: &str,
    status: &GracefulServiceStatus,
) -> Result<(), Error> {
    let api: Api<GracefulService> = Api::namespaced(client.clone(), ns);
    let body = serde_json::json!({
        "apiVersion": "graceful.dev/v1alpha1",
        "kind": "GracefulService",
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(name, &params, &Patch::Apply(&body))
        .await?;
    Ok(())
}

/// Publishes one Event. An Event that cannot be written must not fail the reconcile: status
/// carries the same facts.
async fn publish(ctx: &Context, gsvc: &GracefulService, note: &Note) {
    let event = Event {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: note.reason.clone(),
        note: Some(note.note.clone()),
        action: note.action.clone(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &gsvc.object_ref(&())).await {
        tracing::warn!(%error, reason = %note.reason, "could not publish event");
    }
}
