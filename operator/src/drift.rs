//! Whether a child object must be applied: pure decisions, no I/O.
//!
//! Every reconcile used to server-side-apply all three children, and a scale-down step brings
//! about six reconciles, so a step cost six Deployment PATCHes where one changed anything
//! (`docs/hardening.md`). Now a child is applied only when the live object does not already hold
//! what the operator would write ([`differs`]) or when the desired object changed since this
//! process last applied it ([`LastApplied`]). Drift is still reverted: an edit of the live
//! object triggers a reconcile through the owned watch, the subset check sees it, the apply follows.
//!
//! The check is conservative: whatever it cannot be sure of (a quantity written in another form,
//! `1` against `1.0`, an extra owner reference) counts as a difference, which costs one
//! unnecessary apply, never a missed one.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;

/// Metadata fields the operator sets and therefore compares; the rest (name, namespace, uid,
/// resourceVersion, managedFields ...) identify the object or belong to the API server.
const COMPARED_METADATA: [&str; 3] = ["labels", "annotations", "ownerReferences"];

/// True when `live` is missing or does not hold every field `desired` sets (see [`object_is_subset`]);
/// also true when either cannot be serialized.
pub fn differs<K: Serialize>(desired: &K, live: Option<&K>) -> bool {
    let Some(live) = live else { return true };
    match (serde_json::to_value(desired), serde_json::to_value(live)) {
        (Ok(desired), Ok(live)) => !object_is_subset(&desired, &live),
        _ => true,
    }
}

/// [`is_subset`] for a whole object, with `metadata` compared only on the labels, annotations and
/// owner references `desired` sets.
pub fn object_is_subset(desired: &Value, live: &Value) -> bool {
    let (Value::Object(desired), Value::Object(live)) = (desired, live) else {
        return is_subset(desired, Some(live));
    };
    desired.iter().all(|(key, value)| {
        if key != "metadata" {
            return is_subset(value, live.get(key));
        }
        let live_meta = live.get("metadata");
        COMPARED_METADATA
            .iter()
            .all(|field| match value.get(field) {
                Some(wanted) => is_subset(wanted, live_meta.and_then(|m| m.get(field))),
                None => true,
            })
    })
}

/// Every field set in `desired` is present in `live` with an equal value: objects recursively
/// (extra live keys are fine: defaults, other managers' fields), arrays element by element with
/// equal length, scalars equal. A null in `desired` is a field not set; an empty array or object
/// in `desired` matches a missing live field because the API server omits empty collections.
pub fn is_subset(desired: &Value, live: Option<&Value>) -> bool {
    match (desired, live) {
        (Value::Null, _) => true,
        (Value::Array(d), None | Some(Value::Null)) => d.is_empty(),
        (Value::Object(d), None | Some(Value::Null)) => d.is_empty(),
        (_, None) => false,
        (Value::Object(d), Some(Value::Object(l))) => {
            d.iter().all(|(key, value)| is_subset(value, l.get(key)))
        }
        (Value::Array(d), Some(Value::Array(l))) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, Some(lv)))
        }
        (d, Some(l)) => d == l,
    }
}

/// Fingerprint of the desired object; None when it cannot be serialized (then always apply).
pub fn fingerprint<K: Serialize>(desired: &K) -> Option<u64> {
    let text = serde_json::to_string(desired).ok()?;
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    Some(hasher.finish())
}

/// Key of a child in [`LastApplied`]: `<owner uid>/<kind>`, so [`LastApplied::forget`] with the
/// owner's uid drops all of its children, and a re-created owner of the same name starts afresh.
pub fn child_key<K: kube::Resource<DynamicType = ()>>(child: &K) -> String {
    let owner = child
        .meta()
        .owner_references
        .as_ref()
        .and_then(|refs| refs.first())
        .map(|r| r.uid.as_str())
        .unwrap_or_default();
    format!("{owner}/{}", K::kind(&()))
}

/// What this process last applied, per child. A subset check alone cannot see a field the
/// operator stopped setting (an env var or a resource limit removed from the spec, a map key
/// gone): the smaller desired object is still a subset of the live one. So a desired object that
/// differs from the last one applied is applied regardless, and server-side apply removes the
/// fields the manager no longer sets. Empty after a restart, so a new operator version applies
/// each child once.
#[derive(Debug, Default)]
pub struct LastApplied {
    by_child: Mutex<HashMap<String, u64>>,
}

impl LastApplied {
    /// Whether `desired` for child `key` must be applied, given the `live` object if known.
    pub fn needs_apply<K: Serialize>(&self, key: &str, desired: &K, live: Option<&K>) -> bool {
        let known = match (self.by_child.lock(), fingerprint(desired)) {
            (Ok(map), Some(print)) => map.get(key) == Some(&print),
            _ => false,
        };
        !known || differs(desired, live)
    }

    /// Records a successful apply of `desired` to child `key`.
    pub fn record<K: Serialize>(&self, key: &str, desired: &K) {
        if let (Ok(mut map), Some(print)) = (self.by_child.lock(), fingerprint(desired)) {
            map.insert(key.to_string(), print);
        }
    }

    /// Forgets every child whose key starts with `prefix` (the owner is being deleted).
    pub fn forget(&self, prefix: &str) {
        if let Ok(mut map) = self.by_child.lock() {
            map.retain(|key, _| !key.starts_with(prefix));
        }
    }
}

#[cfg(test)]
#[path = "drift_tests.rs"]
mod tests;
