//! The Helm chart as a user meets it: it lints and renders; `helm install` into the testbed
//! brings up an operator pod that a real kubelet runs from the operator image, with its
//! ServiceAccount's projected token, so the chart's RBAC is what the operator really gets (under
//! the OwnerReferencesPermissionEnforcement admission plugin); `kubectl auth can-i` shows that
//! account can do what the operator needs and nothing broad; a GracefulService applied after
//! install gets its Deployment, Service and PodDisruptionBudget. Everything is uninstalled at the
//! end of each test.
//!
//!     cargo build --workspace --bins && cargo test -p e2e --test chart -- --nocapture

#[allow(dead_code)]
#[path = "audit/mod.rs"]
mod audit;
#[path = "chart/common.rs"]
mod common;
#[path = "chart/crd_upgrade.rs"]
mod crd_upgrade;
#[path = "chart/install.rs"]
mod install;
#[path = "chart/namespaced.rs"]
mod namespaced;
#[allow(dead_code)]
#[path = "operator/recording.rs"]
mod recording;
#[path = "chart/render.rs"]
mod render;
#[allow(dead_code)]
#[path = "operator/support.rs"]
mod support;
#[path = "chart/upgrade_walk.rs"]
mod upgrade_walk;
