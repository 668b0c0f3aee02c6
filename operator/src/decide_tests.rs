use super::*;
use crate::crd::GracefulServiceSpec;
use crate::manifests::deployment::LAST_STEP;
use k8s_openapi::api::apps::v1::DeploymentStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    ManagedFieldsEntry, ObjectMeta, OwnerReference,
};

fn gsvc(replicas: i32) -> GracefulService {
    let mut g = GracefulService::new(
        "web",
        GracefulServiceSpec {
            replicas,
            ..GracefulServiceSpec::default()
        },
    );
    g.metadata.namespace = Some("ns".into());
    g.metadata.uid = Some("uid-1".into());
    g.metadata.generation = Some(1);
    g
}

fn now() -> Timestamp {
    "2026-12-02T12:00:00Z".parse().unwrap()
}

/// The Deployment as the operator would have left it at `at`, settled, with its status.
fn settled_deployment(g: &GracefulService, at: i32) -> Deployment {
    let owner = Owner::of(g).unwrap();
    let mut d = deployment::build(&owner, &g.spec, at, &Default::default(), "token").unwrap();
    d.metadata.generation = Some(2);
    d.metadata.resource_version = Some("41".into());
    d.status = Some(DeploymentStatus {
        observed_generation: Some(2),
        replicas: Some(at),
        ready_replicas: Some(at),
        updated_replicas: Some(at),
        available_replicas: Some(at),
        ..DeploymentStatus::default()
    });
    d
}

fn ready_slices(n: i32) -> Vec<k8s_openapi::api::discovery::v1::EndpointSlice> {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
    vec![EndpointSlice {
        address_type: "IPv4".into(),
        endpoints: (0..n)
            .map(|i| Endpoint {
                addresses: vec![format!("10.0.0.{i}")],
                target_ref: Some(ObjectReference {
                    name: Some(format!("web-{i}")),
                    ..ObjectReference::default()
                }),
                ..Endpoint::default()
            })
            .collect(),
        metadata: ObjectMeta::default(),
        ports: None,
    }]
}

fn settled_world(g: &GracefulService, at: i32) -> Observed {
    let owner = Owner::of(g).unwrap();
    Observed {
        deployment: Some(settled_deployment(g, at)),
        service: Some(service::build(&owner, &g.spec)),
        budget: Some(pdb::build(&owner)),
        pods: Vec::new(),
        slices: ready_slices(at),
        new_token: String::new(),
    }
}

#[test]
fn a_new_gsvc_creates_its_three_children_and_no_step() {
    let g = gsvc(3);
    let plan = decide(&g, &Observed::default(), &LastApplied::default(), now()).unwrap();
    assert!(plan.refusal.is_none());
    assert!(plan.step.is_none());
    let d = plan.applies.deployment.expect("deployment");
    assert_eq!(d.spec.unwrap().replicas, Some(3));
    assert!(plan.applies.service.is_some());
    assert!(plan.applies.budget.is_some());
    assert!(plan.status.is_some());
}

#[test]
fn a_settled_walk_steps_with_a_precondition_and_writes_the_step_time_with_it() {
    let g = gsvc(1);
    let world = settled_world(&g, 5);
    let plan = decide(&g, &world, &LastApplied::default(), now()).unwrap();
    let write = plan.step.expect("a step");
    assert_eq!((write.step.from, write.step.to), (5, 4));
    assert_eq!(write.resource_version.as_deref(), Some("41"));
    assert_eq!(write.deployment.spec.as_ref().unwrap().replicas, Some(4));
    let notes = write.deployment.metadata.annotations.unwrap();
    assert_eq!(notes[LAST_STEP], now().to_string());
    assert_eq!(write.mark, 1, "the idlest pod is marked");
    assert!(
        plan.applies.deployment.is_none(),
        "one Deployment write per step"
    );
    assert_eq!(plan.events[0].action, "ScaleDown5To4");
}

#[test]
fn a_step_is_not_decided_on_a_spec_about_to_change() {
    let mut g = gsvc(1);
    let world = settled_world(&g, 5);
    g.spec.image = "example/other:2".into();
    let plan = decide(&g, &world, &LastApplied::default(), now()).unwrap();
    assert!(plan.step.is_none());
    let d = plan.applies.deployment.expect("the new template");
    assert_eq!(
        d.spec.unwrap().replicas,
        Some(5),
        "the step in force is held"
    );
}

#[test]
fn a_second_reconcile_with_nothing_changed_writes_nothing() {
    let g = gsvc(5);
    let world = settled_world(&g, 5);
    let memory = LastApplied::default();
    let first = decide(&g, &world, &memory, now()).unwrap();
    if let Some(d) = &first.applies.deployment {
        memory.record(&child_key(d), d);
    }
    if let Some(s) = &first.applies.service {
        memory.record(&child_key(s), s);
    }
    if let Some(b) = &first.applies.budget {
        memory.record(&child_key(b), b);
    }
    let mut again = g.clone();
    again.status = first.status.clone();
    let second = decide(&again, &world, &memory, now()).unwrap();
    assert!(second.applies.deployment.is_none());
    assert!(second.applies.service.is_none());
    assert!(second.applies.budget.is_none());
    assert!(second.status.is_none(), "{:?}", second.status);
    assert!(second.events.is_empty());
}

#[test]
fn a_service_of_someone_else_is_refused_and_nothing_is_written() {
    let g = gsvc(3);
    let theirs = Service {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("ns".into()),
            managed_fields: Some(vec![ManagedFieldsEntry {
                manager: Some("kubectl-create".into()),
                ..ManagedFieldsEntry::default()
            }]),
            ..ObjectMeta::default()
        },
        ..Service::default()
    };
    let world = Observed {
        service: Some(theirs),
        ..Observed::default()
    };
    let plan = decide(&g, &world, &LastApplied::default(), now()).unwrap();
    assert_eq!(plan.refusal, Some(Refusal::ChildConflict));
    assert!(plan.applies.deployment.is_none() && plan.applies.service.is_none());
    assert!(plan.applies.budget.is_none() && plan.step.is_none());
    let note = &plan.events[0];
    assert_eq!(note.reason, "ChildConflict");
    assert!(
        note.note.contains(
            "Service ns/web already exists and has no controller (managed by kubectl-create)"
        ),
        "{}",
        note.note
    );
    let status = plan.status.unwrap();
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ChildConflict")
    );
    // Reported once: the same refusal again publishes no second Event.
    let mut again = g.clone();
    again.status = Some(status);
    let plan = decide(&again, &world, &LastApplied::default(), now()).unwrap();
    assert!(plan.events.is_empty() && plan.status.is_none());
}

#[test]
fn a_child_controlled_by_another_owner_or_an_older_incarnation_is_a_conflict() {
    let owner = Owner::of(&gsvc(1)).unwrap();
    let mut d = Deployment::default();
    d.metadata.owner_references = Some(vec![OwnerReference {
        controller: Some(true),
        uid: "uid-0".into(),
        kind: "GracefulService".into(),
        name: "web".into(),
        ..OwnerReference::default()
    }]);
    let found = conflict(&owner, Some(&d)).unwrap();
    assert!(
        found.contains("is controlled by GracefulService web"),
        "{found}"
    );
    d.metadata.owner_references = Some(vec![owner.reference.clone()]);
    assert_eq!(conflict(&owner, Some(&d)), None);
    assert_eq!(conflict::<Deployment>(&owner, None), None);
}

#[test]
fn an_invalid_spec_is_refused_before_anything_is_read_into_a_write() {
    let mut g = gsvc(1);
    g.spec.image = "Upper/Case".into();
    let plan = decide(&g, &settled_world(&g, 5), &LastApplied::default(), now()).unwrap();
    assert_eq!(plan.refusal, Some(Refusal::InvalidSpec));
    assert!(plan.step.is_none() && plan.applies.deployment.is_none());
    assert_eq!(plan.requeue_after, REFUSED_REQUEUE);
}

#[test]
fn new_children_block_owner_deletion_and_existing_ones_keep_their_reference() {
    let g = gsvc(3);
    let plan = decide(&g, &Observed::default(), &LastApplied::default(), now()).unwrap();
    let refs = plan
        .applies
        .service
        .unwrap()
        .metadata
        .owner_references
        .unwrap();
    assert_eq!(refs[0].block_owner_deletion, Some(true));
    // A Service created by an earlier version, our reference without blockOwnerDeletion: the
    // Service applied (once, by a process that has not applied it yet) keeps the reference so.
    let owner = Owner::of(&g).unwrap();
    let mut earlier = owner.clone();
    earlier.reference.block_owner_deletion = None;
    let mut world = settled_world(&g, 3);
    world.service = Some(service::build(&earlier, &g.spec));
    let plan = decide(&g, &world, &LastApplied::default(), now()).unwrap();
    let applied = plan.applies.service.expect("applied once by a new process");
    let refs = applied.metadata.owner_references.unwrap();
    assert_eq!(refs[0].block_owner_deletion, None);
}
