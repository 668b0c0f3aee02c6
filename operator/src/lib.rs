//! graceful-operator: reconciles `GracefulService` into a Deployment, a Service and a
//! PodDisruptionBudget, and walks scale-downs one settled step at a time.
//!
//! Pure decisions ([`manifests`], [`planner`], [`victims`], [`validation`], [`status`]) are
//! separate from the Kubernetes I/O in [`controller`], [`cluster`] and [`marking`].

pub mod cluster;
pub mod controller;
pub mod crd;
pub mod drift;
pub mod error;
pub mod http;
pub mod leader;
pub mod manifests;
pub mod marking;
pub mod metrics;
pub mod planner;
pub mod status;
pub mod telemetry;
pub mod validation;
pub mod victims;
pub mod watch_backoff;

/// The one field manager for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "graceful-operator";

pub use crd::{GracefulService, GracefulServiceSpec, GracefulServiceStatus};
pub use error::Error;
