#!/usr/bin/env bash
# Measures `testbed up` three times: seconds until its KUBECONFIG line (API ready, nodes Ready),
# and seconds from SIGINT until the supervisor has torn everything down and exited.
# Usage: testbed/scripts/measure-startup.sh [path to the testbed binary]
set -euo pipefail
bin=${1:-/work/main/target/debug/testbed}
fifo=$(mktemp -u); mkfifo "$fifo"
for i in 1 2 3; do
  t0=$(date +%s.%N)
  "$bin" up >"$fifo" 2>/dev/null &
  pid=$!
  read -r line <"$fifo"
  t1=$(date +%s.%N)
  kill -INT "$pid"
  wait "$pid" || true
  t2=$(date +%s.%N)
  printf 'run %d: ready %.2f s, teardown %.2f s\n' "$i" "$(echo "$t1-$t0"|bc)" "$(echo "$t2-$t1"|bc)"
done
rm -f "$fifo"
