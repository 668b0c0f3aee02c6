#!/usr/bin/env bash
# Operator footprint and scale report (Markdown) on a testbed of its own with 1 real node and
# KWOK nodes (TESTBED_UP_ARGS, default "--nodes 1 --kwok-nodes 4"), on a release build:
#   GracefulServices created at once (BENCH_COUNTS, default 10,100,1000): RSS, CPU, reconcile
#     latency during the burst and when nothing changes;
#   walks to 1 (BENCH_WALKS, default 10:1,100:1,1000:1,1000:10%): time, CPU and API writes per
#     step, counted in the API server's audit log;
#   writes per step on the real node with the app, preferIdlePods on and off.
# The report goes to stdout and to $OUT (default target/bench-operator/report.md).
# Needs root (the testbed); builds what it lacks (control plane, node runtime, KWOK).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-target/bench-operator/report.md}
mkdir -p "$(dirname "$out")"
cargo build --release --workspace --bins
# Build the test binary, then run it directly so the cargo lock is not held for the whole run.
bin=$(cargo test --release -p e2e --test footprint --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*footprint-[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "bench-operator: footprint test binary not found" >&2; exit 1; }
log=$(dirname "$out")/run.log
export TESTBED_UP_ARGS=${TESTBED_UP_ARGS:---nodes 1 --kwok-nodes 4}
export GRACEFUL_OPERATOR_LOG=${GRACEFUL_OPERATOR_LOG:-info}
"$bin" --ignored --exact operator_footprint_report --nocapture >"$log" 2>&1 || {
  echo "bench-operator: the run failed; its log: $log" >&2
  tail -40 "$log" >&2
  exit 1
}
# The report is the last one printed (partial reports go to stderr as the run goes), from its
# title on; the test harness's own lines are dropped.
tac "$log" | sed '/^# Operator footprint/q' | tac |
  awk '!/^test result|^running|^test operator_footprint_report/' >"$out"
cat "$out"
