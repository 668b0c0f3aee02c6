#!/usr/bin/env bash
# The project's test command: everything CI runs, in the order a failure is cheapest to find.
#   ./scripts/test.sh
# Needs root (the testbed runs real nodes: network namespaces, cgroups, containerd), Go, Rust
# and gcc; Debian packages come from apt. Build outputs are cached
# outside git (~/.cache/graceful-operator for the control plane, target/ for Rust).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*" >&2; }

step "formatting"
cargo fmt --all -- --check

step "Kubernetes binaries (cached; the first build took 4 min 35 s on 2 cores)"
bin_dir=$(testbed/scripts/build-controlplane.sh)
export TESTBED_BIN_DIR="$bin_dir"

step "node runtime: containerd, runc, CNI plugins, umoci, iptables, nftables (cached)"
TESTBED_NODE_RUNTIME_DIR=$(testbed/scripts/install-node-runtime.sh)
export TESTBED_NODE_RUNTIME_DIR

step "python3 (the crash-loop walk squats a pod's port with it)"
if ! command -v python3 >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q --no-install-recommends python3
fi

step "metrics-server, for the HorizontalPodAutoscaler proof (cached)"
TESTBED_METRICS_SERVER_DIR=$(testbed/scripts/build-tool.sh metrics-server)
export TESTBED_METRICS_SERVER_DIR

step "Rust binaries (app, operator, testbed tools)"
cargo build --locked --workspace --bins

step "generated CRD (crds/ and the chart's template) is up to date"
scripts/gen-crd.sh --check

step "Helm chart lints and renders"
"$bin_dir/helm" lint charts/graceful-operator
"$bin_dir/helm" template graceful charts/graceful-operator --kube-version 1.34.3 >/dev/null

step "unit, property and end-to-end tests"
# One control plane per test binary; binaries run one after another.
cargo test --locked --workspace -- --test-threads="${TEST_THREADS:-2}"
