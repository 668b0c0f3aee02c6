#!/usr/bin/env bash
# Measures a testbed's real nodes: time until `testbed up` prints KUBECONFIG (3 nodes Ready),
# time until a 20-replica Deployment of the app image is Available, memory (RSS) of each node
# component, and memory per pod (its containerd shim and pause, PSS; the app itself apart).
# Usage: testbed/scripts/measure-nodes.sh [testbed binary]   (root; binaries built)
set -euo pipefail
bin=${1:-$(dirname "$0")/../../target/debug/testbed}
out=$(mktemp -d)
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$out"' EXIT
t0=$(date +%s.%N)
"$bin" up >"$out/up.out" 2>"$out/up.err" &
pid=$!
until grep -q '^KUBECONFIG=' "$out/up.out" 2>/dev/null; do
  kill -0 $pid || { cat "$out/up.err" >&2; exit 1; }
  sleep 0.1
done
t1=$(date +%s.%N)
export KUBECONFIG=$(sed -n 's/^KUBECONFIG=//p' "$out/up.out")
kubectl=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["controlplane_dir"])' "$(dirname "$KUBECONFIG")/testbed.json")/kubectl
printf 'testbed up until 3 nodes Ready: %.1f s\n' "$(echo "$t1-$t0" | bc)"
"$kubectl" create deployment web --image=ghcr.io/graceful-dev/graceful-app:0.1.0 --replicas=20 >/dev/null
t2=$(date +%s.%N)
"$kubectl" wait --for=condition=Available deployment/web --timeout=120s >/dev/null
t3=$(date +%s.%N)
printf '20 pods Available after the create: %.1f s\n' "$(echo "$t3-$t2" | bc)"
sleep 5
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
pss() { awk '/^Pss:/ {s+=$2} END {print s+0}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
for name in containerd kubelet kube-proxy; do
  total=0; n=0
  for p in $(pgrep -x "$name"); do total=$((total + $(rss "$p"))); n=$((n + 1)); done
  printf '%s: %d processes, %.1f MiB RSS each on average\n' "$name" "$n" "$(echo "$total/$n/1024" | bc -l)"
done
shims=0; pauses=0; apps=0
for p in $(pgrep -f containerd-shim-runc-v2); do shims=$((shims + $(pss "$p"))); done
for p in $(pgrep -x pause); do pauses=$((pauses + $(pss "$p"))); done
for p in $(pgrep -f /usr/local/bin/graceful-app); do apps=$((apps + $(rss "$p"))); done
pods=$("$kubectl" get pods -A --no-headers | wc -l)
printf 'per pod (%d pods): shim + pause %.2f MiB PSS; the app %.2f MiB RSS\n' "$pods" \
  "$(echo "($shims+$pauses)/$pods/1024" | bc -l)" "$(echo "$apps/20/1024" | bc -l)"
