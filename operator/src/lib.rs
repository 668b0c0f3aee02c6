//! graceful-operator: reconciles `GracefulService` into a Deployment, a Service and a
//! PodDisruptionBudget, and walks scale-downs one settled step at a time.
//!
//! A reconcile ([`controller`]) is a straight pipeline: [`observe`] reads, [`decide`] (pure)
//! returns the whole plan, [`act`] writes it. The decisions beneath `decide` are pure too
//! ([`manifests`], [`planner`], [`drift`], [`victims`], [`validation`], [`status`]); the only
//! other I/O is [`marking`] (the idlest pods' scrape and marks) and the process edges
//! ([`http`], [`leader`], [`telemetry`]).

pub mod act;
pub mod cache_sync;
pub mod controller;
pub mod crd;
pub mod decide;
pub mod drift;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod http;
pub mod leader;
pub mod manifests;
pub mod marking;
pub mod metrics;
pub mod observe;
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
