#!/usr/bin/env bash
# Operator footprint and scale report (Markdown) on a testbed of its own:
#   operator RSS and reconcile latency p50/p99 with 100 GracefulServices,
#   API writes per scale-down step counted in the API server's audit log,
#   one large service (BENCH_LARGE_REPLICAS, default 200; BENCH_LARGE_STEP, default 1) down to 1.
# The report goes to stdout and to $OUT (default target/bench-operator/report.md).
# Needs root (the testbed) and the control plane built (testbed/scripts/build-controlplane.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-target/bench-operator/report.md}
mkdir -p "$(dirname "$out")"
cargo build --workspace --bins
# Build the test binary, then run it directly so the cargo lock is not held for the whole run.
bin=$(cargo test -p e2e --test footprint --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*footprint-[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "bench-operator: footprint test binary not found" >&2; exit 1; }
log=$(dirname "$out")/run.log
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
