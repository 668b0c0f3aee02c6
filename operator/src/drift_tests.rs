use super::*;
use crate::crd::GracefulServiceSpec;
use crate::manifests::{deployment, pdb, service, test_owner};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use proptest::prelude::*;
use serde_json::json;

/// A Deployment as the API server returns it after an apply: the desired fields plus identity,
/// defaults and status.
fn live_deployment(desired: &Deployment) -> Value {
    let mut live = serde_json::to_value(desired).unwrap();
    let defaults = json!({
        "metadata": {
            "uid": "d-1", "resourceVersion": "42", "generation": 3,
            "creationTimestamp": "2026-11-25T03:00:00Z",
            "annotations": {"deployment.kubernetes.io/revision": "1"},
            "managedFields": [{"manager": "graceful-operator", "operation": "Apply"}],
            "labels": {"extra": "someone-else"}
        },
        "spec": {
            "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
            "template": {"metadata": {"creationTimestamp": null}, "spec": {
                "dnsPolicy": "ClusterFirst", "restartPolicy": "Always", "schedulerName": "default-scheduler",
                "securityContext": {}
            }}
        },
        "status": {"replicas": 3, "readyReplicas": 3, "observedGeneration": 3}
    });
    merge_into(&mut live, &defaults);
    live
}

/// Adds the keys of `extra` that `target` lacks, recursively; `target` wins on conflicts.
fn merge_into(target: &mut Value, extra: &Value) {
    if let (Value::Object(t), Value::Object(e)) = (target, extra) {
        for (key, value) in e {
            match t.get_mut(key) {
                Some(existing) => merge_into(existing, value),
                None => {
                    t.insert(key.clone(), value.clone());
                }
            }
        }
    }
}

fn container_mut(live: &mut Value) -> &mut Value {
    &mut live["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn live_deployment_with_defaults_and_status_matches() {
    let desired = deployment::build(
        &test_owner("web"),
        &GracefulServiceSpec::default(),
        3,
        &Default::default(),
        "token",
    )
    .unwrap();
    let live = live_deployment(&desired);
    assert!(object_is_subset(
        &serde_json::to_value(&desired).unwrap(),
        &live
    ));
    let live: Deployment = serde_json::from_value(live).unwrap();
    assert!(!differs(&desired, Some(&live)));
    assert!(differs(&desired, None));
}

#[test]
fn drift_of_grace_period_env_or_replicas_differs() {
    let desired = deployment::build(
        &test_owner("web"),
        &GracefulServiceSpec::default(),
        3,
        &Default::default(),
        "token",
    )
    .unwrap();
    let desired_value = serde_json::to_value(&desired).unwrap();
    let edits: [fn(&mut Value); 4] = [
        |live| live["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(5),
        |live| container_mut(live)["env"][0]["value"] = json!("1234"),
        |live| live["spec"]["replicas"] = json!(7),
        |live| {
            container_mut(live)["env"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "X", "value": "y"}))
        },
    ];
    for edit in edits {
        let mut live = live_deployment(&desired);
        edit(&mut live);
        assert!(!object_is_subset(&desired_value, &live));
    }
}

#[test]
fn metadata_is_compared_on_labels_annotations_and_owner_references_only() {
    let desired = json!({"metadata": {"name": "web", "namespace": "ns", "labels": {"a": "1"},
        "ownerReferences": [{"uid": "u1"}]}});
    let live = json!({"metadata": {"name": "web", "namespace": "ns", "labels": {"a": "1", "b": "2"},
        "ownerReferences": [{"uid": "u1", "kind": "GracefulService"}], "uid": "x"}});
    assert!(object_is_subset(&desired, &live));
    let lost_label =
        json!({"metadata": {"labels": {"b": "2"}, "ownerReferences": [{"uid": "u1"}]}});
    assert!(!object_is_subset(&desired, &lost_label));
    let other_owner =
        json!({"metadata": {"labels": {"a": "1"}, "ownerReferences": [{"uid": "u2"}]}});
    assert!(!object_is_subset(&desired, &other_owner));
    let two_owners = json!({"metadata": {"labels": {"a": "1"},
        "ownerReferences": [{"uid": "u1"}, {"uid": "u2"}]}});
    assert!(!object_is_subset(&desired, &two_owners));
}

#[test]
fn quantities_in_another_form_count_as_different() {
    let desired = json!({"limits": {"cpu": "0.5"}});
    assert!(!is_subset(
        &desired,
        Some(&json!({"limits": {"cpu": "500m"}}))
    ));
    assert!(!is_subset(&json!(1), Some(&json!(1.0))));
}

#[test]
fn empty_collections_match_a_missing_field_but_empty_scalars_do_not() {
    assert!(is_subset(&json!({"a": [], "b": {}}), Some(&json!({}))));
    assert!(!is_subset(&json!({"a": 0}), Some(&json!({}))));
    assert!(!is_subset(&json!({"a": ""}), Some(&json!({}))));
    assert!(!is_subset(&json!({"a": []}), Some(&json!({"a": [1]}))));
}

#[test]
fn service_and_pdb_match_themselves_with_server_additions() {
    let owner = test_owner("web");
    let svc =
        serde_json::to_value(service::build(&owner, &GracefulServiceSpec::default())).unwrap();
    let mut live = svc.clone();
    merge_into(
        &mut live,
        &json!({"spec": {"clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"], "sessionAffinity": "None",
        "ports": [{"targetPort": "http"}]}, "status": {"loadBalancer": {}}}),
    );
    assert!(object_is_subset(&svc, &live));
    let budget = serde_json::to_value(pdb::build(&owner)).unwrap();
    let mut live = budget.clone();
    merge_into(
        &mut live,
        &json!({"status": {"currentHealthy": 1}, "metadata": {"generation": 1}}),
    );
    assert!(object_is_subset(&budget, &live));
    live["spec"]["maxUnavailable"] = json!(2);
    assert!(!object_is_subset(&budget, &live));
}

#[test]
fn last_applied_applies_a_changed_desired_object_even_if_live_holds_it() {
    let memory = LastApplied::default();
    let owner = test_owner("web");
    let limits = |pairs: &[(&str, &str)]| GracefulServiceSpec {
        resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
            limits: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect(),
            ),
            ..Default::default()
        }),
        ..GracefulServiceSpec::default()
    };
    let first = deployment::build(
        &owner,
        &limits(&[("cpu", "1"), ("memory", "64Mi")]),
        2,
        &Default::default(),
        "token",
    )
    .unwrap();
    let live: Deployment = serde_json::from_value(live_deployment(&first)).unwrap();
    // Unknown to this process (fresh start): applied once.
    assert!(memory.needs_apply("d/ns/web", &first, Some(&live)));
    memory.record("d/ns/web", &first);
    assert!(!memory.needs_apply("d/ns/web", &first, Some(&live)));
    // The memory limit removed from the spec: a subset of live, yet applied so it is removed.
    let second = deployment::build(
        &owner,
        &limits(&[("cpu", "1")]),
        2,
        &Default::default(),
        "token",
    )
    .unwrap();
    assert!(!differs(&second, Some(&live)));
    assert!(memory.needs_apply("d/ns/web", &second, Some(&live)));
    memory.forget("d/ns/");
    assert!(memory.needs_apply("d/ns/web", &first, Some(&live)));
}

/// JSON values without nulls (a null is "not set", so changing one to another null is no change).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z0-9]{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-e]{1,2}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Number of scalar leaves.
fn leaves(value: &Value) -> usize {
    match value {
        Value::Array(items) => items.iter().map(leaves).sum(),
        Value::Object(map) => map.values().map(leaves).sum(),
        _ => 1,
    }
}

/// Changes the `index`-th scalar leaf (depth first); returns whether one was changed.
fn change_leaf(value: &mut Value, index: &mut usize) -> bool {
    match value {
        Value::Array(items) => items.iter_mut().any(|v| change_leaf(v, index)),
        Value::Object(map) => map.values_mut().any(|v| change_leaf(v, index)),
        leaf => {
            if *index > 0 {
                *index -= 1;
                return false;
            }
            *leaf = match leaf.take() {
                Value::Bool(b) => Value::Bool(!b),
                Value::Number(n) => Value::from(n.as_i64().unwrap_or(0).wrapping_add(1)),
                Value::String(s) => Value::String(format!("{s}~")),
                other => other,
            };
            true
        }
    }
}

proptest! {
    #[test]
    fn desired_is_a_subset_of_itself_merged_into_a_bigger_live_object(
        desired in json_value(), extra in json_value(),
    ) {
        let mut live = desired.clone();
        merge_into(&mut live, &extra);
        prop_assert!(is_subset(&desired, Some(&desired)));
        prop_assert!(is_subset(&desired, Some(&live)));
        let wrapped = json!({"metadata": {"labels": {"k": "v"}}, "spec": desired});
        let mut live_wrapped = json!({"metadata": {"labels": {"k": "v", "z": "1"}, "uid": "u"},
            "spec": live, "status": extra});
        merge_into(&mut live_wrapped, &json!({}));
        prop_assert!(object_is_subset(&wrapped, &live_wrapped));
    }

    #[test]
    fn changing_any_leaf_of_desired_makes_it_differ(
        desired in json_value(), extra in json_value(), pick in any::<prop::sample::Index>(),
    ) {
        let count = leaves(&desired);
        prop_assume!(count > 0);
        let mut live = desired.clone();
        merge_into(&mut live, &extra);
        let mut changed = desired.clone();
        let mut index = pick.index(count);
        prop_assert!(change_leaf(&mut changed, &mut index));
        prop_assert!(!is_subset(&changed, Some(&desired)));
        prop_assert!(!is_subset(&changed, Some(&live)));
    }
}
