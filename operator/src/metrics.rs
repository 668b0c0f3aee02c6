//! Prometheus metrics of the operator, served on `/metrics` by [`crate::http`].

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label of the failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Kind of error (see [`crate::Error::metric_label`]).
    pub error: String,
}

/// The operator's metrics; cheap to clone (each metric is shared).
#[derive(Clone)]
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconciles that returned an error, by kind.
    pub failures: Family<ErrorLabels, Counter>,
    /// Reconcile duration in seconds.
    pub duration: Histogram,
    /// Scale-down steps applied.
    pub steps: Counter,
    /// Specs refused as invalid (reported in status, not retried).
    pub invalid_specs: Counter,
    /// Reconciles refused because a child's name is taken by an object not controlled by the
    /// GracefulService.
    pub child_conflicts: Counter,
    /// Steps not taken because the Deployment changed between read and write (read again).
    pub step_conflicts: Counter,
    /// Errors of the watches feeding the controller (list/watch refused, CRD missing ...).
    pub watch_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            steps: Counter::default(),
            invalid_specs: Counter::default(),
            child_conflicts: Counter::default(),
            step_conflicts: Counter::default(),
            watch_errors: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `graceful_operator` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("graceful_operator");
        r.register("reconciles", "Reconciles started", self.reconciles.clone());
        r.register(
            "reconcile_failures",
            "Reconciles that failed, by error kind",
            self.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile",
            self.duration.clone(),
        );
        r.register(
            "scale_down_steps",
            "Scale-down steps applied to Deployments",
            self.steps.clone(),
        );
        r.register(
            "invalid_specs",
            "Reconciles that found a spec the operator refuses",
            self.invalid_specs.clone(),
        );
        r.register(
            "child_conflicts",
            "Reconciles refused because a child's name is taken by an object not controlled by the GracefulService",
            self.child_conflicts.clone(),
        );
        r.register(
            "step_conflicts",
            "Steps deferred because the Deployment changed between read and write",
            self.step_conflicts.clone(),
        );
        r.register(
            "watch_errors",
            "Errors of the watches feeding the controller",
            self.watch_errors.clone(),
        );
    }

    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn start_reconcile(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile.
    pub fn failed(&self, error: &crate::Error) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: error.metric_label().to_string(),
            })
            .inc();
    }
}

/// Observes the reconcile duration on drop.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_all_metrics() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        drop(metrics.start_reconcile());
        metrics.steps.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for name in [
            "graceful_operator_reconciles_total 1",
            "graceful_operator_scale_down_steps_total 1",
            "graceful_operator_reconcile_duration_seconds_count 1",
            "graceful_operator_invalid_specs_total 0",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
