#!/usr/bin/env bash
# The project's test command: everything CI runs, in the order a failure is cheapest to find.
#   ./scripts/test.sh
# Needs root (the testbed creates network namespaces), Go and Rust. Build outputs are cached
# outside git (~/.cache/graceful-operator for the control plane, target/ for Rust).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*" >&2; }

step "formatting"
cargo fmt --all -- --check

step "control plane binaries (cached; the first build took 5 min 16 s on 2 cores)"
bin_dir=$(testbed/scripts/build-controlplane.sh)
export TESTBED_BIN_DIR="$bin_dir"

step "Rust binaries (app, operator, testbed tools)"
cargo build --locked --workspace --bins

step "generated CRD is up to date"
if ! diff -u crds/gracefulservice.yaml <(cargo run --quiet --locked -p graceful-operator --bin crdgen); then
  echo "crds/gracefulservice.yaml differs from what crdgen generates: run scripts/gen-crd.sh" >&2
  exit 1
fi

step "Helm chart lints and renders"
"$bin_dir/helm" lint charts/graceful-operator
"$bin_dir/helm" template graceful charts/graceful-operator --kube-version 1.34.3 >/dev/null

step "unit, property and end-to-end tests"
# One control plane per test binary; binaries run one after another.
cargo test --locked --workspace -- --test-threads="${TEST_THREADS:-2}"
