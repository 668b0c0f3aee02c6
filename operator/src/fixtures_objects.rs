//! The objects and request paths the mock-API scenarios share: one GracefulService `ns/web`
//! (uid `uid-1`), its children as the operator builds them, ready pods and EndpointSlices, and
//! the reads every reconcile starts with ([`reads`]). Kept apart from the mock server so each file
//! reads on its own.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodCondition, PodStatus, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::{Exchange, Script};
use crate::crd::{GracefulService, GracefulServiceSpec, common_labels, selector_labels};
use crate::manifests::deployment::{LAST_STEP, WALK_STARTED};
use crate::manifests::{Owner, deployment, pdb, service};
use crate::planner::StepClock;

/// The GracefulService's name (and its children's).
pub const NAME: &str = "web";
/// Its namespace.
pub const NS: &str = "ns";
/// Its uid, which the children's owner reference carries.
pub const UID: &str = "uid-1";

/// Path of the Deployment `ns/web`.
pub const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/ns/deployments/web";
/// Path of the Service `ns/web`.
pub const SERVICE: &str = "/api/v1/namespaces/ns/services/web";
/// Path of the PodDisruptionBudget `ns/web`.
pub const PDB: &str = "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/web";
/// Path of the pods of `ns`.
pub const PODS: &str = "/api/v1/namespaces/ns/pods";
/// Path of the EndpointSlices of `ns`.
pub const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices";
/// Path of the events.k8s.io Events of `ns`.
pub const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";
/// Path of the status subresource of the GracefulService `ns/web`.
pub const STATUS: &str = "/apis/graceful.dev/v1alpha1/namespaces/ns/gracefulservices/web/status";

/// The label selector of the pods' LIST.
pub const POD_SELECTOR: &str = "graceful.dev/service=web";
/// The label selector of the EndpointSlices' LIST.
pub const SLICE_SELECTOR: &str = "kubernetes.io/service-name=web";

/// The GracefulService `ns/web` at generation 1, asking for `replicas`, without status.
pub fn gsvc(replicas: i32) -> GracefulService {
    let mut g = GracefulService::new(
        NAME,
        GracefulServiceSpec {
            replicas,
            ..GracefulServiceSpec::default()
        },
    );
    g.metadata.namespace = Some(NS.into());
    g.metadata.uid = Some(UID.into());
    g.metadata.generation = Some(1);
    g
}

/// Its identity as the builders take it.
pub fn owner() -> Owner {
    Owner::of(&gsvc(1)).unwrap()
}

/// The Deployment as the operator left it at `at` replicas, settled there, mid-walk (both clock
/// annotations set: the walk began 2 minutes ago, its last step 1 minute ago), at
/// resourceVersion `version`.
pub fn walking_deployment(g: &GracefulService, at: i32, version: &str) -> Deployment {
    let now = Timestamp::now();
    let clock = StepClock {
        walk_started: Some(now - k8s_openapi::jiff::SignedDuration::from_secs(120)),
        last_step: Some(now - k8s_openapi::jiff::SignedDuration::from_secs(60)),
    };
    let mut d = deployment::build(&owner(), &g.spec, at, &clock, "token").unwrap();
    d.metadata.generation = Some(2);
    d.metadata.resource_version = Some(version.into());
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

/// The clock annotation `key` of a Deployment (or an apply body) as JSON.
pub fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object["metadata"]["annotations"][key].as_str()
}

/// The walk-started annotation of `d`.
pub fn walk_started(d: &Deployment) -> String {
    d.metadata.annotations.as_ref().unwrap()[WALK_STARTED].clone()
}

/// The last-step annotation of `d`.
pub fn last_step(d: &Deployment) -> String {
    d.metadata.annotations.as_ref().unwrap()[LAST_STEP].clone()
}

/// The Service as the operator builds it for `g`.
pub fn our_service(g: &GracefulService) -> Service {
    service::build(&owner(), &g.spec)
}

/// The PodDisruptionBudget as the operator builds it.
pub fn our_budget() -> PodDisruptionBudget {
    pdb::build(&owner())
}

/// A Service `ns/web` someone created with kubectl: no owner reference, another selector.
pub fn someone_elses_service() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": NAME,
            "namespace": NS,
            "uid": "uid-theirs",
            "resourceVersion": "7",
            "managedFields": [{
                "manager": "kubectl-create",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2026-01-01T00:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:selector": {}}},
            }],
        },
        "spec": {
            "selector": {"app": "theirs"},
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
    })
}

/// Ready pod `name` of the service. It has no podIP, so a step's marking scrapes nothing and (a
/// pod whose load is unknown is never marked) writes nothing.
pub fn ready_pod(name: &str) -> Pod {
    let mut labels = common_labels(NAME);
    labels.extend(selector_labels(NAME));
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

/// `n` ready pods `web-0` ...
pub fn ready_pods(n: usize) -> Vec<Pod> {
    (0..n).map(|i| ready_pod(&format!("{NAME}-{i}"))).collect()
}

/// One EndpointSlice listing `n` ready endpoints, pods `web-0` ...
pub fn ready_slice(n: usize) -> EndpointSlice {
    EndpointSlice {
        address_type: "IPv4".into(),
        endpoints: (0..n)
            .map(|i| Endpoint {
                addresses: vec![format!("10.0.0.{i}")],
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(format!("{NAME}-{i}")),
                    namespace: Some(NS.into()),
                    ..ObjectReference::default()
                }),
                ..Endpoint::default()
            })
            .collect(),
        metadata: ObjectMeta {
            name: Some(format!("{NAME}-abcde")),
            namespace: Some(NS.into()),
            ..ObjectMeta::default()
        },
        ports: None,
    }
}

/// A LIST answer of `kind` holding `items`.
pub fn list_of<T: serde::Serialize>(kind: &str, api_version: &str, items: &[T]) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"resourceVersion": "100"},
        "items": items,
    })
}

/// What the reads find of one child: answered from the cache (no GET), by a GET, or missing.
pub enum Found {
    /// In the watch cache: no request.
    Cached,
    /// The GET answers this object.
    Object(Value),
    /// The GET answers 404.
    Missing,
}

impl Found {
    fn exchange(self, path: &str) -> Option<Exchange> {
        match self {
            Found::Cached => None,
            Found::Object(object) => Some(Exchange::get(path).answer(object)),
            Found::Missing => Some(Exchange::get(path).not_found()),
        }
    }
}

/// The reads every reconcile starts with, in order: GET the Deployment (`deployment`, None: 404),
/// the Service and the budget (unless cached), LIST the pods and the EndpointSlices.
pub fn reads(
    deployment: Option<&Deployment>,
    service: Found,
    budget: Found,
    pods: &[Pod],
    slices: &[EndpointSlice],
) -> Script {
    let deployment = match deployment {
        Some(d) => Exchange::get(DEPLOYMENT).answer(serde_json::to_value(d).unwrap()),
        None => Exchange::get(DEPLOYMENT).not_found(),
    };
    [
        Some(deployment),
        service.exchange(SERVICE),
        budget.exchange(PDB),
    ]
    .into_iter()
    .flatten()
    .chain([
        Exchange::list(PODS, POD_SELECTOR)
            .query("limit", &crate::observe::POD_PAGE.to_string())
            .answer(list_of("PodList", "v1", pods)),
        Exchange::list(SLICES, SLICE_SELECTOR).answer(list_of(
            "EndpointSliceList",
            "discovery.k8s.io/v1",
            slices,
        )),
    ])
    .collect()
}

/// The reads of a GracefulService that has nothing yet: every GET 404, no pod, no slice.
pub fn reads_of_nothing() -> Script {
    reads(None, Found::Missing, Found::Missing, &[], &[])
}

/// The condition of `type_` in a status PATCH body.
pub fn condition<'a>(body: &'a Value, type_: &str) -> &'a Value {
    body["status"]["conditions"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {body}"))
}

/// The answer to a status PATCH: the GracefulService (what the API server returns).
pub fn stored(g: &GracefulService) -> Value {
    serde_json::to_value(g).unwrap()
}
