//! The testbed: a real local Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler built from the Go module in `go/`), a node agent in
//! place of kubelet and container runtime, and a service proxy in place of kube-proxy.
//! Test tooling only: nothing shipped depends on it.
//!
//! Tests use [`shared`]; people use `cargo run -p testbed -- up`.

pub mod agent;
pub mod binaries;
pub mod certs;
pub mod controlplane;
pub mod fixture;
pub mod kubeconfig;
pub mod network;
pub mod process;
pub mod proxy;
pub mod slot;
pub mod supervisor;

pub use fixture::{Testbed, bin_path, shared};
