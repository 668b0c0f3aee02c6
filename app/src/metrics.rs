//! Prometheus metrics of the app, rendered in the text exposition format on the admin /metrics.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Which listener a connection belongs to, used as the `listener` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    Main,
    Admin,
}

impl ListenerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Main => "main",
            ListenerKind::Admin => "admin",
        }
    }
}

type ListenerLabel = [(&'static str, &'static str); 1];

/// All metrics; cheap to clone (every metric is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Counter,
    in_flight: Gauge,
    open_connections: Family<ListenerLabel, Gauge>,
    draining: Gauge,
    ready: Gauge,
    prestop_refused: Counter,
    prestop_reverted: Counter,
    upstream_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("graceful");
        let requests = Counter::default();
        let in_flight = Gauge::default();
        let open_connections = Family::<ListenerLabel, Gauge>::default();
        let draining = Gauge::default();
        let ready = Gauge::default();
        let prestop_refused = Counter::default();
        let prestop_reverted = Counter::default();
        let upstream_errors = Counter::default();
        registry.register(
            "requests",
            "Requests answered on the main listener",
            requests.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests being handled on the main listener",
            in_flight.clone(),
        );
        registry.register(
            "open_connections",
            "Open TCP connections per listener",
            open_connections.clone(),
        );
        registry.register(
            "draining",
            "1 once draining started (preStop or SIGTERM), else 0",
            draining.clone(),
        );
        registry.register(
            "ready",
            "1 while /readyz answers 200, else 0",
            ready.clone(),
        );
        registry.register(
            "prestop_refused",
            "preStop calls refused for a missing or wrong token",
            prestop_refused.clone(),
        );
        registry.register(
            "prestop_reverted",
            "Drains started by preStop that no SIGTERM followed in time, so readiness came back",
            prestop_reverted.clone(),
        );
        registry.register(
            "proxy_upstream_errors",
            "Requests the drain proxy answered itself with 502 or 504 because the app failed or \
             took longer than the longest request (always 0 in graceful-app)",
            upstream_errors.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
            in_flight,
            open_connections,
            draining,
            ready,
            prestop_refused,
            prestop_reverted,
            upstream_errors,
        }
    }

    /// Counts one main-listener request in flight until the guard drops (also on cancellation).
    /// The guard owns its counters, so the proxy can keep it alive until the response body has
    /// been streamed to the end.
    pub fn request_started(&self) -> InFlightGuard {
        self.in_flight.inc();
        InFlightGuard {
            in_flight: self.in_flight.clone(),
            requests: self.requests.clone(),
        }
    }

    /// Main-listener requests answered since start (the drain logs it on exit).
    pub fn requests_answered(&self) -> u64 {
        self.requests.get()
    }

    /// Main-listener requests in flight right now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    pub fn upstream_error(&self) {
        self.upstream_errors.inc();
    }

    /// Counts one open connection until the guard drops.
    pub fn connection_opened(&self, listener: ListenerKind) -> ConnectionGuard {
        let gauge = self
            .open_connections
            .get_or_create(&[("listener", listener.as_str())])
            .clone();
        gauge.inc();
        ConnectionGuard { gauge }
    }

    pub fn set_phase_flags(&self, ready: bool, draining: bool) {
        self.ready.set(i64::from(ready));
        self.draining.set(i64::from(draining));
    }

    pub fn prestop_refused(&self) {
        self.prestop_refused.inc();
    }

    pub fn prestop_reverted(&self) {
        self.prestop_reverted.inc();
    }

    /// Open connections of one listener right now.
    pub fn open_connections(&self, listener: ListenerKind) -> i64 {
        self.open_connections
            .get_or_create(&[("listener", listener.as_str())])
            .get()
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Decrements the in-flight gauge and counts the request as served when dropped.
pub struct InFlightGuard {
    in_flight: Gauge,
    requests: Counter,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.in_flight.dec();
        self.requests.inc();
    }
}

/// Decrements the open-connections gauge of its listener when dropped.
pub struct ConnectionGuard {
    gauge: Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_metric_names() {
        let metrics = Metrics::new();
        {
            let _request = metrics.request_started();
            let _connection = metrics.connection_opened(ListenerKind::Main);
            metrics.set_phase_flags(false, true);
            let text = metrics.render().unwrap();
            assert!(text.contains("graceful_requests_in_flight 1"), "{text}");
            assert!(
                text.contains("graceful_open_connections{listener=\"main\"} 1"),
                "{text}"
            );
            assert!(text.contains("graceful_draining 1"), "{text}");
            assert!(text.contains("graceful_ready 0"), "{text}");
            assert!(text.contains("graceful_prestop_refused_total 0"), "{text}");
            assert!(text.contains("graceful_prestop_reverted_total 0"), "{text}");
            assert!(
                text.contains("graceful_proxy_upstream_errors_total 0"),
                "{text}"
            );
        }
        let text = metrics.render().unwrap();
        assert!(text.contains("graceful_requests_total 1"), "{text}");
        assert!(text.contains("graceful_requests_in_flight 0"), "{text}");
        assert!(
            text.contains("graceful_open_connections{listener=\"main\"} 0"),
            "{text}"
        );
    }
}
