//! The rollout's events on the same clock as the load's samples, so the plot can mark them.
//!
//! Everything is measured in milliseconds since one origin (`Timeline::origin`), the instant the
//! load started; the load generator's sample times use that same instant.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

/// What happened, in the words the plot's legend uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum EventKind {
    /// The load started (the time origin).
    LoadStarted,
    /// The warm-up ended: requests from here on make the table.
    WarmupEnded,
    /// The write that starts the change (new image tag, or replicas 20 -> 1).
    ChangeApplied { what: String },
    /// The Deployment's desired replica count moved (each step of a stepped scale-down).
    DeploymentReplicas { replicas: i32 },
    /// A pod got its deletion timestamp (the kubelet's shutdown and the endpoint removal start).
    PodDeletionStarted { pod: String },
    /// A pod object is gone.
    PodRemoved { pod: String },
    /// The Deployment reports the change done and no pod of it is terminating.
    RolloutComplete,
    /// The load stopped.
    LoadStopped,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Milliseconds since the load started.
    pub at_ms: f64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// A cheap, cloneable recorder shared by the watchers and the driver.
#[derive(Clone)]
pub struct Timeline {
    origin: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Timeline {
    pub fn new(origin: Instant) -> Self {
        Timeline {
            origin,
            events: Arc::default(),
        }
    }

    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// Records `kind` as happening now.
    pub fn record(&self, kind: EventKind) {
        let at_ms = self.origin.elapsed().as_secs_f64() * 1000.0;
        self.push(Event { at_ms, kind });
    }

    fn push(&self, event: Event) {
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
    }

    /// All events so far, in time order.
    pub fn events(&self) -> Vec<Event> {
        let mut events = self.events.lock().map(|e| e.clone()).unwrap_or_default();
        events.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
        events
    }

    /// The time of the first event matching `pred`, if any.
    pub fn first(&self, pred: impl Fn(&EventKind) -> bool) -> Option<f64> {
        self.events()
            .into_iter()
            .find(|e| pred(&e.kind))
            .map(|e| e.at_ms)
    }
}
