//! The testbed: a real local Kubernetes cluster. The control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler) and the nodes' kubelet and kube-proxy are built
//! from the Go module in `go/`; containerd, runc and the CNI plugins come from Debian; the
//! images are built from this repository. The crate supervises them; it re-implements none.
//! Test tooling only: nothing shipped depends on it.
//!
//! Tests use [`shared`]; people use `cargo run -p testbed -- up`.

pub mod binaries;
pub mod certs;
pub mod control;
pub mod controlplane;
pub mod fixture;
pub mod images;
pub mod kubeconfig;
pub mod kwok;
pub mod metrics;
pub mod network;
pub mod node;
pub mod process;
pub mod slot;
pub mod supervisor;

pub use fixture::{Testbed, bin_path, shared, shared_with};
