//! The reconcile's I/O at its edges, against the scripted mock API server: what a reconcile
//! writes for a new GracefulService, a walk step (its precondition, and a 409 on it), a child of
//! someone else, an invalid spec (ours, or the API server's 422), an API error and its backoff,
//! and a GracefulService being deleted. Each script lists every request, in order: one more, one
//! fewer or one out of order fails the test.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use serde_json::Value;

use super::objects::*;
use super::{Exchange, MockApi, Script, chain};
use crate::act::CONFLICT_REQUEUE;
use crate::controller::error_policy;
use crate::crd::GracefulService;
use crate::decide::{self, REFUSED_REQUEUE};
use crate::drift::child_key;
use crate::error::Error;
use crate::planner::SETTLE_REQUEUE;

/// Asserts `body` carries the controller owner reference to the GracefulService.
fn owned(body: &Value) {
    let owner = &body["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "GracefulService", "owner in {body}");
    assert_eq!(owner["name"], NAME);
    assert_eq!(owner["uid"], UID);
    assert_eq!(owner["controller"], true);
}

/// The Event POST the reconcile must send: `type_`, `reason`, a note containing `note`.
fn event(type_: &'static str, reason: &'static str, note: &'static str) -> Exchange {
    Exchange::post(EVENTS).check(move |body| {
        assert_eq!(body["type"], type_, "event {body}");
        assert_eq!(body["reason"], reason, "event {body}");
        let text = body["note"].as_str().unwrap_or_default();
        assert!(text.contains(note), "event note {text:?} lacks {note:?}");
        assert_eq!(body["regarding"]["kind"], "GracefulService");
        assert_eq!(body["regarding"]["name"], NAME);
        assert_eq!(body["reportingController"], crate::FIELD_MANAGER);
    })
}

/// The status apply of a refused GracefulService: Degraded with `reason`.
fn refused_status(g: &GracefulService, reason: &'static str, message: &'static str) -> Exchange {
    Exchange::apply(STATUS)
        .check(move |body| {
            assert_eq!(body["kind"], "GracefulService");
            assert_eq!(body["status"]["phase"], "Degraded", "status {body}");
            let degraded = condition(body, "Degraded");
            assert_eq!(degraded["status"], "True");
            assert_eq!(degraded["reason"], reason);
            let text = degraded["message"].as_str().unwrap_or_default();
            assert!(
                text.contains(message),
                "Degraded {text:?} lacks {message:?}"
            );
            assert_eq!(condition(body, "Progressing")["reason"], reason);
        })
        .answer(stored(g))
}

/// The writes for a GracefulService of 3 replicas that has nothing yet: the three children,
/// applied, then the status; no Event.
fn writes_of_new(g: &GracefulService) -> Script {
    vec![
        Exchange::apply(DEPLOYMENT).check(|body| {
            owned(body);
            assert_eq!(body["kind"], "Deployment");
            assert_eq!(body["spec"]["replicas"], 3);
            assert_eq!(body["metadata"].get("resourceVersion"), None, "{body}");
            assert_eq!(body["metadata"].get("annotations"), None, "no walk: {body}");
        }),
        Exchange::apply(SERVICE).check(|body| {
            owned(body);
            assert_eq!(body["spec"]["selector"]["graceful.dev/service"], NAME);
        }),
        Exchange::apply(PDB).check(|body| {
            owned(body);
            assert_eq!(body["spec"]["maxUnavailable"], 1);
            assert_eq!(body["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
        }),
        Exchange::apply(STATUS)
            .check(|body| {
                let status = &body["status"];
                assert_eq!(status["phase"], "RollingOut", "status {body}");
                assert_eq!(status["stepTarget"], 3);
                assert_eq!(status["observedGeneration"], 1);
                assert_eq!(status["selector"], POD_SELECTOR);
                assert_eq!(condition(body, "Available")["status"], "False");
                assert_eq!(condition(body, "Progressing")["status"], "True");
                assert_eq!(condition(body, "Degraded")["status"], "False");
            })
            .answer(stored(g)),
    ]
}

#[tokio::test]
async fn a_new_gracefulservice_gets_its_three_children_and_a_status() {
    let g = gsvc(3);
    let mut api = MockApi::new(chain([reads_of_nothing(), writes_of_new(&g)]));
    let action = api.reconcile(&g).await.unwrap();
    assert_eq!(action, Action::requeue(SETTLE_REQUEUE));
    assert_eq!(api.ctx().metrics.steps.get(), 0);
    api.finish().await;
}

/// A walk 3 -> 2, settled at 3, Service and budget in the caches and already applied by this
/// process: the reads, then the step.
fn walk_reads(live: &k8s_openapi::api::apps::v1::Deployment) -> Script {
    reads(
        Some(live),
        Found::Cached,
        Found::Cached,
        &ready_pods(3),
        &[ready_slice(3)],
    )
}

/// A mock whose caches hold our Service and budget, remembered as applied.
fn walk_api(g: &GracefulService, script: Script) -> MockApi {
    let api = MockApi::with_cached(script, vec![our_service(g)], vec![our_budget()]);
    let applied = &api.ctx().applied;
    applied.record(&child_key(&our_service(g)), &our_service(g));
    applied.record(&child_key(&our_budget()), &our_budget());
    api
}

#[tokio::test]
async fn a_settled_walk_takes_one_step_under_a_precondition() {
    let g = gsvc(2);
    let live = walking_deployment(&g, 3, "41");
    let (started, previous_step) = (walk_started(&live), last_step(&live));
    let before = Timestamp::now();
    let step = Exchange::apply(DEPLOYMENT).check(move |body| {
        owned(body);
        assert_eq!(body["spec"]["replicas"], 2, "the step: {body}");
        assert_eq!(
            body["metadata"]["resourceVersion"], "41",
            "precondition: {body}"
        );
        assert_eq!(
            annotation(body, "graceful.dev/walk-started"),
            Some(&*started)
        );
        let stamp = annotation(body, "graceful.dev/last-step").unwrap();
        assert_ne!(stamp, previous_step, "the step's time is written with it");
        let stamp: Timestamp = stamp.parse().unwrap();
        assert!(stamp >= before && stamp <= Timestamp::now(), "{stamp}");
    });
    let status = Exchange::apply(STATUS)
        .check(|body| {
            let status = &body["status"];
            assert_eq!(status["phase"], "ScalingDown", "status {body}");
            assert_eq!(status["stepTarget"], 2);
            assert!(status["lastStepTime"].is_string(), "status {body}");
            let scaling = condition(body, "ScalingDown");
            assert_eq!(
                (&scaling["status"], &scaling["reason"]),
                (&"True".into(), &"Stepping".into())
            );
        })
        .answer(stored(&g));
    let script = chain([
        walk_reads(&live),
        vec![
            step,
            event(
                "Normal",
                "ScaleDownStep",
                "Deployment replicas 3 -> 2 (target 2)",
            )
            .check(|body| assert_eq!(body["action"], "ScaleDown3To2")),
            status,
        ],
    ]);
    let mut api = walk_api(&g, script);
    let action = api.reconcile(&g).await.unwrap();
    assert_eq!(action, Action::requeue(SETTLE_REQUEUE));
    assert_eq!(api.ctx().metrics.steps.get(), 1);
    assert_eq!(api.ctx().metrics.step_conflicts.get(), 0);
    api.finish().await;
}

#[tokio::test]
async fn a_status_just_written_is_not_written_again_while_the_cache_lags() {
    // A step from 3 to 2 settling: its pod terminates. The watch cache holds the GracefulService
    // without any status (`g`) in both reconciles, as right after a write of its own.
    let g = gsvc(1);
    let stepped = walking_deployment(&g, 2, "42");
    let mut pods = ready_pods(3);
    pods[2].metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
    );
    let settling = || {
        reads(
            Some(&stepped),
            Found::Cached,
            Found::Cached,
            &pods,
            &[ready_slice(2)],
        )
    };
    let first = chain([
        settling(),
        vec![
            Exchange::apply(DEPLOYMENT),
            Exchange::apply(STATUS).answer(stored(&g)),
        ],
    ]);
    let mut api = walk_api(&g, chain([first, settling()]));
    api.reconcile(&g).await.unwrap();
    // No status PATCH in the rest of the script: one would fail the mock.
    api.reconcile(&g).await.unwrap();
    assert_eq!(api.ctx().metrics.steps.get(), 0);
    api.finish().await;
}

#[tokio::test]
async fn a_step_answered_409_writes_nothing_else_and_reads_again_soon() {
    let g = gsvc(2);
    let live = walking_deployment(&g, 3, "41");
    let step = Exchange::apply(DEPLOYMENT)
        .check(|body| assert_eq!(body["metadata"]["resourceVersion"], "41"))
        .fail(409, "Conflict");
    // No Event, no status: the step was not taken.
    let mut api = walk_api(&g, chain([walk_reads(&live), vec![step]]));
    let action = api.reconcile(&g).await.unwrap();
    assert_eq!(action, Action::requeue(CONFLICT_REQUEUE));
    assert_eq!(CONFLICT_REQUEUE, Duration::from_millis(200));
    assert_eq!(api.ctx().metrics.step_conflicts.get(), 1);
    assert_eq!(api.ctx().metrics.steps.get(), 0);
    api.finish().await;
}

#[tokio::test]
async fn a_service_of_someone_else_is_left_alone_and_reported() {
    let g = gsvc(3);
    let reads = reads(
        None,
        Found::Object(someone_elses_service()),
        Found::Missing,
        &[],
        &[],
    );
    let what = "Service ns/web already exists and has no controller (managed by kubectl-create)";
    // No child is applied: not the Service, and not the Deployment or budget either.
    let writes = vec![
        event("Warning", "ChildConflict", what),
        refused_status(&g, "ChildConflict", what),
    ];
    let mut api = MockApi::new(chain([reads, writes]));
    let action = api.reconcile(&g).await.unwrap();
    assert_eq!(action, Action::requeue(decide::CONFLICT_REQUEUE));
    assert_eq!(api.ctx().metrics.child_conflicts.get(), 1);
    api.finish().await;
}

#[tokio::test]
async fn an_invalid_spec_writes_no_child_and_is_reported() {
    let mut g = gsvc(3);
    g.spec.env.push(k8s_openapi::api::core::v1::EnvVar {
        name: "GRACEFUL_PORT".into(),
        value: Some("1".into()),
        value_from: None,
    });
    let what = "env GRACEFUL_PORT is set by the operator";
    let writes = vec![
        event("Warning", "InvalidSpec", what),
        refused_status(&g, "InvalidSpec", what),
    ];
    let mut api = MockApi::new(chain([reads_of_nothing(), writes]));
    let action = api.reconcile(&g).await.unwrap();
    assert_eq!(action, Action::requeue(REFUSED_REQUEUE));
    assert_eq!(api.ctx().metrics.invalid_specs.get(), 1);
    api.finish().await;
}

#[tokio::test]
async fn a_child_the_api_server_refuses_as_invalid_is_reported_not_retried() {
    let g = gsvc(3);
    let refused = Exchange::apply(DEPLOYMENT).fail(422, "Invalid");
    // The Service and budget are not applied after the refusal.
    let writes = vec![
        refused,
        event("Warning", "InvalidSpec", "mock: Invalid"),
        refused_status(&g, "InvalidSpec", "mock: Invalid"),
    ];
    let mut api = MockApi::new(chain([reads_of_nothing(), writes]));
    let action = api.reconcile(&g).await.unwrap();
    assert_eq!(action, Action::requeue(REFUSED_REQUEUE));
    assert_eq!(api.ctx().metrics.invalid_specs.get(), 1);
    api.finish().await;
}

#[tokio::test]
async fn an_api_error_fails_the_reconcile_with_a_doubling_backoff_reset_by_success() {
    let g = gsvc(3);
    let failing = Exchange::get(DEPLOYMENT).fail(500, "InternalError");
    // After the failed GET nothing else is sent; the second reconcile succeeds.
    let mut api = MockApi::new(chain([
        vec![failing],
        reads_of_nothing(),
        writes_of_new(&g),
    ]));
    let error = api.reconcile(&g).await.unwrap_err();
    assert!(
        matches!(&error, Error::Kube(kube::Error::Api(s)) if s.code == 500),
        "{error:?}"
    );
    let retry = |api: &MockApi| error_policy(g.clone().into(), &error, api.ctx().clone());
    assert_eq!(retry(&api), Action::requeue(Duration::from_secs(1)));
    assert_eq!(retry(&api), Action::requeue(Duration::from_secs(2)));
    let kube_errors = crate::metrics::ErrorLabels {
        error: "kube".into(),
    };
    assert_eq!(
        api.ctx().metrics.failures.get_or_create(&kube_errors).get(),
        2
    );
    api.reconcile(&g).await.unwrap();
    let after_success = retry(&api);
    assert_eq!(after_success, Action::requeue(Duration::from_secs(1)));
    api.finish().await;
}

#[tokio::test]
async fn a_gracefulservice_being_deleted_sends_nothing() {
    let mut g = gsvc(3);
    g.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::now(),
    ));
    let mut api = MockApi::new(Vec::new());
    assert_eq!(api.reconcile(&g).await.unwrap(), Action::await_change());
    api.finish().await;
}
