//! The PodDisruptionBudget.
//!
//! `maxUnavailable: 1` lets voluntary disruptions (node drains, evictions) take one pod at a time,
//! the same pace as a scale-down step: each evicted pod runs its preStop drain while the others
//! keep serving. `maxUnavailable` rather than `minAvailable` so a one-replica service never blocks
//! a node drain forever (its single pod still drains gracefully). Unhealthy pods may always be
//! evicted (`unhealthyPodEvictionPolicy: AlwaysAllow`).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Owner;
use crate::crd::selector_labels;

/// The PodDisruptionBudget for the pods of `owner`.
pub fn build(owner: &Owner) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owner.child_meta(),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            // A crash-looping or never-ready pod serves nothing: evicting it must not wait for
            // the budget, or one broken pod blocks every node drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_string()),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&owner.name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::test_owner;

    #[test]
    fn one_pod_at_a_time() {
        let pdb = build(&test_owner("web"));
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None);
        assert_eq!(
            spec.unhealthy_pod_eviction_policy.as_deref(),
            Some("AlwaysAllow")
        );
        assert_eq!(
            spec.selector.unwrap().match_labels.unwrap()["graceful.dev/service"],
            "web"
        );
        assert_eq!(pdb.metadata.owner_references.unwrap().len(), 1);
    }
}
