//! Checks the API server's schema cannot make, run before anything is applied.
//!
//! A spec that fails them is reported as a `Degraded` condition with reason `InvalidSpec` plus a
//! Warning Event, and the operator waits for the spec to change (with a slow requeue) instead of
//! retrying. Objects the API server itself refuses when applied (HTTP 422, e.g. a node port that
//! another Service already holds) take the same path, see [`crate::controller`].

use std::collections::BTreeSet;

use crate::crd::GracefulServiceSpec;
use crate::manifests::pod::RESERVED_ENV;
use crate::planner::StepSize;

/// Problems found in `spec`, each a sentence; empty when the spec is usable.
pub fn check(spec: &GracefulServiceSpec) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for var in &spec.env {
        if RESERVED_ENV.contains(&var.name.as_str()) {
            problems.push(format!(
                "env {} is set by the operator from spec.ports/spec.shutdown; remove it",
                var.name
            ));
        }
        if !seen.insert(var.name.as_str()) {
            problems.push(format!("env {} is listed more than once", var.name));
        }
    }
    if let Some(problem) = image_problem(&spec.image) {
        problems.push(problem);
    }
    if let Err(problem) = StepSize::parse(&spec.scale_down.step_size) {
        problems.push(problem);
    }
    problems
}

/// A container image reference must have no whitespace and a lowercase repository.
fn image_problem(image: &str) -> Option<String> {
    if image.chars().any(char::is_whitespace) {
        return Some(format!("image {image:?} contains whitespace"));
    }
    let without_digest = image.split('@').next().unwrap_or(image);
    // The tag follows the last ':' unless that ':' belongs to a registry host:port.
    let repository = match without_digest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => without_digest,
    };
    if repository.is_empty() {
        return Some(format!("image {image:?} has no repository"));
    }
    if repository.chars().any(|c| c.is_ascii_uppercase()) {
        return Some(format!("image repository {repository:?} must be lowercase"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::EnvVar;

    fn var(name: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some("1".into()),
            value_from: None,
        }
    }

    #[test]
    fn default_spec_is_valid() {
        assert!(check(&GracefulServiceSpec::default()).is_empty());
    }

    #[test]
    fn reserved_and_duplicate_env_are_reported() {
        let spec = GracefulServiceSpec {
            env: vec![var("GRACEFUL_PORT"), var("A"), var("A")],
            ..GracefulServiceSpec::default()
        };
        let problems = check(&spec);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn image_references() {
        for ok in [
            "ghcr.io/graceful-dev/graceful-app:0.1.0",
            "localhost:5000/app",
            "app@sha256:abc",
            "registry:5000/team/app:v1",
        ] {
            assert_eq!(image_problem(ok), None, "{ok}");
        }
        for bad in ["Ghcr.io/App:1", "app :1", ":tag"] {
            assert!(image_problem(bad).is_some(), "{bad}");
        }
    }
}
