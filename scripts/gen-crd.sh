#!/usr/bin/env bash
# Regenerates crds/gracefulservice.yaml from the Rust types. Never edit that file by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --locked -p graceful-operator --bin crdgen > crds/gracefulservice.yaml
