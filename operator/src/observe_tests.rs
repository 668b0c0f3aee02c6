use super::*;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, ObjectReference, PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use std::collections::BTreeMap;

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn condition(type_: &str, status: &str, since: &str, reason: Option<&str>) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        last_transition_time: Some(Time(at(since))),
        reason: reason.map(str::to_string),
        ..PodCondition::default()
    }
}

fn pod(conditions: Vec<PodCondition>, waiting: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web-1".into()),
            creation_timestamp: Some(Time(at("2026-12-02T10:00:00Z"))),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some("node-1".into()),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(conditions),
            container_statuses: waiting.map(|reason| {
                vec![ContainerStatus {
                    name: "app".into(),
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(reason.into()),
                            message: None,
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]
            }),
            ..PodStatus::default()
        }),
    }
}

#[test]
fn a_ready_pod_has_no_unready_time() {
    let v = pod_view(&pod(
        vec![condition("Ready", "True", "2026-12-02T10:00:05Z", None)],
        None,
    ));
    assert!(v.ready);
    assert_eq!(v.unready_since, None);
    assert_eq!(v.node.as_deref(), Some("node-1"));
}

#[test]
fn a_crash_looping_pod_says_so_and_since_when() {
    let v = pod_view(&pod(
        vec![condition(
            "Ready",
            "False",
            "2026-12-02T10:01:00Z",
            Some("ContainersNotReady"),
        )],
        Some("CrashLoopBackOff"),
    ));
    assert!(!v.ready);
    assert!(v.unready_by_itself);
    assert_eq!(v.unready_since, Some(at("2026-12-02T10:01:00Z")));
    assert_eq!(v.why, "CrashLoopBackOff");
}

#[test]
fn an_unschedulable_pod_is_unready_since_its_creation() {
    let mut p = pod(
        vec![condition(
            "PodScheduled",
            "False",
            "2026-12-02T10:00:01Z",
            Some("Unschedulable"),
        )],
        None,
    );
    if let Some(s) = p.status.as_mut() {
        s.phase = Some("Pending".into());
    }
    let v = pod_view(&p);
    assert!(v.unready_by_itself);
    assert_eq!(v.unready_since, Some(at("2026-12-02T10:00:00Z")));
    assert_eq!(v.why, "Pending: Unschedulable");
}

#[test]
fn a_pod_the_node_controller_marked_unready_is_not_unready_by_itself() {
    let v = pod_view(&pod(
        vec![condition("Ready", "False", "2026-12-02T10:01:00Z", None)],
        None,
    ));
    assert!(!v.ready);
    assert!(!v.unready_by_itself);
}

fn with_states(mut pod: Pod, app_terminated: bool, sidecar_terminated: Option<bool>) -> Pod {
    let state = |terminated: bool| {
        Some(if terminated {
            ContainerState {
                terminated: Some(ContainerStateTerminated::default()),
                ..ContainerState::default()
            }
        } else {
            ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..ContainerState::default()
            }
        })
    };
    let status = pod.status.get_or_insert_with(PodStatus::default);
    status.container_statuses = Some(vec![ContainerStatus {
        name: "app".into(),
        state: state(app_terminated),
        ..ContainerStatus::default()
    }]);
    status.init_container_statuses = sidecar_terminated.map(|t| {
        vec![ContainerStatus {
            name: "drain-proxy".into(),
            state: state(t),
            ..ContainerStatus::default()
        }]
    });
    pod
}

#[test]
fn a_pod_is_stopped_once_all_its_containers_and_sidecars_terminated() {
    let running = pod(vec![], None);
    assert!(!pod_view(&running).stopped, "no container status yet");
    assert!(!pod_view(&with_states(running.clone(), false, None)).stopped);
    assert!(pod_view(&with_states(running.clone(), true, None)).stopped);
    assert!(!pod_view(&with_states(running.clone(), true, Some(false))).stopped);
    assert!(pod_view(&with_states(running.clone(), true, Some(true))).stopped);
    let mut done = running;
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    assert!(pod_view(&done).stopped);
}

#[test]
fn the_clock_is_read_back_from_the_annotations() {
    let d = Deployment {
        metadata: ObjectMeta {
            annotations: Some(BTreeMap::from([
                (
                    WALK_STARTED.to_string(),
                    "2026-12-02T10:00:00.25Z".to_string(),
                ),
                (LAST_STEP.to_string(), "not a time".to_string()),
            ])),
            ..ObjectMeta::default()
        },
        ..Deployment::default()
    };
    let view = deployment_view(&d);
    assert_eq!(view.clock.walk_started, Some(at("2026-12-02T10:00:00.25Z")));
    assert_eq!(
        view.clock.last_step, None,
        "an unreadable stamp counts as none"
    );
}

fn endpoint(pod: &str, ready: Option<bool>) -> Endpoint {
    Endpoint {
        addresses: vec![format!("10.0.0.{}", pod.len())],
        conditions: Some(EndpointConditions {
            ready,
            ..EndpointConditions::default()
        }),
        target_ref: Some(ObjectReference {
            name: Some(pod.into()),
            ..ObjectReference::default()
        }),
        ..Endpoint::default()
    }
}

#[test]
fn ready_endpoints_count_pods_not_slice_entries() {
    let slice = |endpoints: Vec<Endpoint>| EndpointSlice {
        address_type: "IPv4".into(),
        endpoints,
        metadata: ObjectMeta::default(),
        ports: None,
    };
    let slices = [
        slice(vec![endpoint("a", Some(true)), endpoint("b", None)]),
        // `a` again, in a second slice while it moves; `c` not ready.
        slice(vec![endpoint("a", Some(true)), endpoint("c", Some(false))]),
    ];
    assert_eq!(ready_pods(&slices), 2);
}
