//! Merges the user's partial pod template over the generated one.
//!
//! The rules are the ones `kubectl` users know from strategic merge patches, on the few list
//! kinds a pod template has: maps merge key by key, lists of named items (containers, init
//! containers, volumes, volume mounts, env, ports, image pull secrets) merge item by item on
//! `name`, anything else is replaced by the user's value. The fields the protocol owns are refused
//! by the schema before this runs (see [`crate::crd::PodTemplateOverlay`]), so a merge never
//! overrides them; the operator's labels are put back last all the same, because losing them would
//! lose track of the pods.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

use crate::crd::PodTemplateOverlay;

/// Lists whose items are merged on their `name`.
const NAMED_LISTS: [&str; 7] = [
    "containers",
    "initContainers",
    "volumes",
    "volumeMounts",
    "env",
    "ports",
    "imagePullSecrets",
];

/// `generated` with `overlay` merged over it; the generated labels win over the user's.
pub fn apply(
    generated: PodTemplateSpec,
    overlay: Option<&PodTemplateOverlay>,
) -> Result<PodTemplateSpec, serde_json::Error> {
    let Some(overlay) = overlay else {
        return Ok(generated);
    };
    let own_labels = generated
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut merged = serde_json::to_value(&generated)?;
    merge(&mut merged, serde_json::to_value(overlay)?);
    let mut template: PodTemplateSpec = serde_json::from_value(merged)?;
    let metadata = template.metadata.get_or_insert_with(Default::default);
    metadata
        .labels
        .get_or_insert_with(Default::default)
        .extend(own_labels);
    Ok(template)
}

/// Merges `patch` into `base` by the rules above.
fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                match base.get_mut(&key) {
                    Some(Value::Array(items)) if NAMED_LISTS.contains(&key.as_str()) => {
                        if let Value::Array(additions) = value {
                            merge_named(items, additions);
                        }
                    }
                    Some(existing) if value.is_object() => merge(existing, value),
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, patch) => *base = patch,
    }
}

/// Merges each of `additions` into the item of `items` with the same name, or appends it.
fn merge_named(items: &mut Vec<Value>, additions: Vec<Value>) {
    for addition in additions {
        let name = addition.get("name").cloned();
        let existing = name
            .as_ref()
            .and_then(|name| items.iter_mut().find(|item| item.get("name") == Some(name)));
        match existing {
            Some(item) => merge(item, addition),
            None => items.push(addition),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_merge_and_scalars_replace() {
        let mut base = json!({"a": {"x": 1, "y": 2}, "b": [1, 2], "c": "keep"});
        merge(&mut base, json!({"a": {"y": 3, "z": 4}, "b": [9]}));
        assert_eq!(
            base,
            json!({"a": {"x": 1, "y": 3, "z": 4}, "b": [9], "c": "keep"})
        );
    }

    #[test]
    fn named_lists_merge_on_name() {
        let mut base = json!({"containers": [{"name": "app", "image": "i", "env": [{"name": "A", "value": "1"}]}]});
        merge(
            &mut base,
            json!({"containers": [
                {"name": "app", "envFrom": [{"configMapRef": {"name": "cm"}}], "env": [{"name": "B", "value": "2"}]},
                {"name": "side", "image": "s"}
            ]}),
        );
        assert_eq!(
            base,
            json!({"containers": [
                {"name": "app", "image": "i", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                 "envFrom": [{"configMapRef": {"name": "cm"}}]},
                {"name": "side", "image": "s"}
            ]})
        );
    }

    #[test]
    fn an_empty_overlay_changes_nothing() {
        let mut base = json!({"spec": {"containers": [{"name": "app"}]}});
        let before = base.clone();
        merge(&mut base, json!({}));
        assert_eq!(base, before);
    }
}
