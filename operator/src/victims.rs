//! Which pods a scale-down step should remove: the idlest ones. Pure, so the choice is unit- and
//! property-tested; the scrape of the app's metrics and the pod patches live in [`crate::marking`].
//!
//! The ReplicaSet controller, on scale-down, deletes the pods with the lowest
//! `controller.kubernetes.io/pod-deletion-cost` first (after pending and unready ones). Before a
//! step the operator gives that lowest cost ([`MARK_COST`]) to the `stepSize` pods with the fewest
//! requests in flight, and takes it back from any pod it marked earlier that is no longer chosen
//! (a step interrupted between marking and lowering the replicas). Pods whose load is unknown are
//! never marked: they count as busy. A cost somebody else set is left alone.

/// The annotation the ReplicaSet controller ranks pods by on scale-down (int32, beta since 1.22).
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The cost of a marked pod: the lowest int32, so a marked pod goes before any other.
pub const MARK_COST: &str = "-2147483648";
/// The app's gauge of requests being handled on its main listener (see app/src/metrics.rs).
pub const IN_FLIGHT_METRIC: &str = "graceful_requests_in_flight";

/// One running pod as the choice sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLoad {
    /// Pod name.
    pub name: String,
    /// Requests in flight, or None when the metrics could not be read (counts as busy).
    pub in_flight: Option<u64>,
    /// Current value of the deletion-cost annotation, if any.
    pub cost: Option<String>,
}

impl PodLoad {
    fn marked(&self) -> bool {
        self.cost.as_deref() == Some(MARK_COST)
    }
}

/// A write to one pod's deletion-cost annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CostChange {
    /// Set the annotation to [`MARK_COST`].
    Mark(String),
    /// Remove the annotation (it holds [`MARK_COST`] from an earlier step).
    Unmark(String),
}

/// The outcome of [`choose`]: the pods to remove and the annotation writes that make it so.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marking {
    /// Pods chosen for removal, idlest first.
    pub victims: Vec<String>,
    /// Only the writes that change something: a pod already marked is not written again.
    pub changes: Vec<CostChange>,
}

/// Chooses up to `count` pods with the fewest requests in flight. Ties go to a pod already marked
/// (no write needed), then to the smaller name, so the choice is deterministic.
pub fn choose(pods: &[PodLoad], count: usize) -> Marking {
    let mut known: Vec<&PodLoad> = pods.iter().filter(|p| p.in_flight.is_some()).collect();
    known.sort_by(|a, b| {
        (a.in_flight, !a.marked(), &a.name).cmp(&(b.in_flight, !b.marked(), &b.name))
    });
    let victims: Vec<String> = known.iter().take(count).map(|p| p.name.clone()).collect();
    let changes = pods
        .iter()
        .filter_map(|p| {
            let chosen = victims.contains(&p.name);
            match (chosen, p.marked()) {
                (true, false) => Some(CostChange::Mark(p.name.clone())),
                (false, true) => Some(CostChange::Unmark(p.name.clone())),
                _ => None,
            }
        })
        .collect();
    Marking { victims, changes }
}

/// Whether every pod's load is known and the same (all idle, typically): then any pod the
/// ReplicaSet controller takes is as idle as the one a mark would name, and marking is skipped.
/// It is not free: a pod whose annotations change gets a sync from its kubelet, and one that
/// is deleted right after waits for that sync before its preStop hook runs (a walk of idle
/// pods took 2.07 s a step with marks and 1.26 s without, drain delay 1 s, in
/// `scripts/bench-operator.sh`).
pub fn all_equally_idle(pods: &[PodLoad]) -> bool {
    let mut loads = pods.iter().map(|p| p.in_flight);
    match loads.next() {
        Some(Some(first)) => loads.all(|load| load == Some(first)),
        _ => false,
    }
}

/// Reads [`IN_FLIGHT_METRIC`] from a Prometheus text exposition. None when it is missing or not a
/// non-negative number.
pub fn parse_in_flight(exposition: &str) -> Option<u64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(IN_FLIGHT_METRIC)?;
        // The name must end here: `graceful_requests_in_flight_total` is another metric.
        let value = rest.strip_prefix(' ')?.split_whitespace().next()?;
        let value: f64 = value.parse().ok()?;
        (value.is_finite() && value >= 0.0).then_some(value as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pod(name: &str, in_flight: Option<u64>, cost: Option<&str>) -> PodLoad {
        PodLoad {
            name: name.into(),
            in_flight,
            cost: cost.map(String::from),
        }
    }

    #[test]
    fn the_idlest_pod_is_marked_and_the_busy_one_is_not() {
        let pods = [
            pod("a", Some(5), None),
            pod("b", Some(0), None),
            pod("c", Some(2), None),
        ];
        let m = choose(&pods, 1);
        assert_eq!(m.victims, ["b"]);
        assert_eq!(m.changes, [CostChange::Mark("b".into())]);
        assert_eq!(choose(&pods, 2).victims, ["b", "c"]);
    }

    #[test]
    fn unreadable_pods_count_as_busy_and_are_never_marked() {
        let pods = [pod("a", None, None), pod("b", Some(100), None)];
        assert_eq!(choose(&pods, 1).victims, ["b"]);
        assert_eq!(choose(&pods, 2).victims, ["b"]);
        let unreadable = [pod("a", None, None), pod("b", None, None)];
        assert_eq!(choose(&unreadable, 1), Marking::default());
    }

    #[test]
    fn an_earlier_mark_is_kept_on_a_tie_and_taken_back_otherwise() {
        let tie = [pod("a", Some(0), None), pod("b", Some(0), Some(MARK_COST))];
        assert_eq!(
            choose(&tie, 1),
            Marking {
                victims: vec!["b".into()],
                changes: vec![],
            }
        );
        let busier = [pod("a", Some(0), None), pod("b", Some(3), Some(MARK_COST))];
        assert_eq!(
            choose(&busier, 1).changes,
            [CostChange::Mark("a".into()), CostChange::Unmark("b".into())]
        );
        // Count 0 (the feature turned off) only takes earlier marks back.
        assert_eq!(choose(&busier, 0).changes, [CostChange::Unmark("b".into())]);
    }

    #[test]
    fn equally_idle_pods_need_no_mark_but_one_busier_or_unknown_pod_does() {
        assert!(all_equally_idle(&[
            pod("a", Some(0), None),
            pod("b", Some(0), None)
        ]));
        assert!(all_equally_idle(&[pod("a", Some(2), None)]));
        assert!(!all_equally_idle(&[
            pod("a", Some(0), None),
            pod("b", Some(1), None)
        ]));
        assert!(!all_equally_idle(&[
            pod("a", Some(0), None),
            pod("b", None, None)
        ]));
        assert!(!all_equally_idle(&[pod("a", None, None)]));
        assert!(!all_equally_idle(&[]));
    }

    #[test]
    fn a_cost_set_by_someone_else_is_left_alone() {
        let pods = [
            pod("a", Some(9), Some("100")),
            pod("b", Some(0), Some("-5")),
        ];
        let m = choose(&pods, 1);
        assert_eq!(m.victims, ["b"]);
        assert_eq!(m.changes, [CostChange::Mark("b".into())]);
        assert_eq!(choose(&pods, 0).changes, []);
    }

    #[test]
    fn parses_the_apps_gauge_only() {
        let text = "# HELP graceful_requests_in_flight Requests being handled\n\
                    # TYPE graceful_requests_in_flight gauge\n\
                    graceful_requests_in_flight_other 9\n\
                    graceful_requests_in_flight 3\n\
                    graceful_requests_total 12\n";
        assert_eq!(parse_in_flight(text), Some(3));
        assert_eq!(
            parse_in_flight("graceful_requests_in_flight 2.0\n"),
            Some(2)
        );
        assert_eq!(parse_in_flight("graceful_requests_in_flight -1\n"), None);
        assert_eq!(parse_in_flight("graceful_requests_in_flight NaN\n"), None);
        assert_eq!(parse_in_flight("graceful_requests_total 1\n"), None);
        assert_eq!(parse_in_flight(""), None);
    }

    fn pods_strategy() -> impl Strategy<Value = Vec<PodLoad>> {
        proptest::collection::btree_map(
            "[a-f]{1,3}",
            (
                proptest::option::weighted(0.8, 0u64..20),
                proptest::option::of(prop_oneof![
                    Just(MARK_COST.to_string()),
                    Just("7".to_string())
                ]),
            ),
            0..12,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(name, (in_flight, cost))| PodLoad {
                    name,
                    in_flight,
                    cost,
                })
                .collect()
        })
    }

    fn apply(pods: &[PodLoad], changes: &[CostChange]) -> Vec<PodLoad> {
        let mut out = pods.to_vec();
        for change in changes {
            let (name, cost) = match change {
                CostChange::Mark(n) => (n, Some(MARK_COST.to_string())),
                CostChange::Unmark(n) => (n, None),
            };
            if let Some(p) = out.iter_mut().find(|p| &p.name == name) {
                p.cost = cost;
            }
        }
        out
    }

    proptest! {
        #[test]
        fn victims_are_the_idlest_known_pods(pods in pods_strategy(), count in 0usize..6) {
            let m = choose(&pods, count);
            let known = pods.iter().filter(|p| p.in_flight.is_some()).count();
            prop_assert_eq!(m.victims.len(), count.min(known));
            let load = |n: &String| pods.iter().find(|p| &p.name == n).and_then(|p| p.in_flight);
            for v in &m.victims {
                let v_load = load(v);
                prop_assert!(v_load.is_some());
                for p in pods.iter().filter(|p| !m.victims.contains(&p.name)) {
                    if let Some(other) = p.in_flight {
                        prop_assert!(v_load <= Some(other), "{} busier than {}", v, p.name);
                    }
                }
            }
        }

        #[test]
        fn after_the_changes_exactly_the_victims_carry_the_mark(pods in pods_strategy(), count in 0usize..6) {
            let m = choose(&pods, count);
            let after = apply(&pods, &m.changes);
            for p in &after {
                prop_assert_eq!(p.marked(), m.victims.contains(&p.name), "pod {}", &p.name);
            }
            // Costs set by others survive.
            for (before, after) in pods.iter().zip(&after) {
                if before.cost.is_some() && !before.marked() && !m.victims.contains(&before.name) {
                    prop_assert_eq!(&before.cost, &after.cost);
                }
            }
            // Choosing again on the marked pods writes nothing: no rewrite at high rate.
            let mut again = choose(&after, count);
            let mut victims = m.victims.clone();
            again.victims.sort();
            victims.sort();
            prop_assert_eq!(again.victims, victims);
            prop_assert!(again.changes.is_empty(), "{:?}", again.changes);
        }
    }
}
