#!/usr/bin/env bash
# How long after a pod's deletion new connections still reached it: the endpoint's propagation
# to node 0's kube-proxy rules, which the drain delay must cover. Runs one test of the `nodes`
# e2e binary (a walk under load through node 0's node port) on a kept testbed, logs every new
# TCP connection that node 0's conntrack sees, and prints, per pod the walk deleted, the time
# from its deletion (the API server's audit log) to the last new connection DNAT'd to it.
#   scripts/endpoint-lag.sh [test name]   (default: the restarts walk; needs root)
# Pods are paired with addresses in order (the n-th pod deleted with the n-th address to stop
# receiving), which holds for walks of one pod per step.
set -euo pipefail
cd "$(dirname "$0")/.."
test=${1:-kubelet_and_containerd_restarts_mid_scale_down_lose_nothing}
work=$(mktemp -d /tmp/endpoint-lag.XXXXXX)
before=$(ip netns list | awk '{print $1}')
(
  for _ in $(seq 1 600); do
    ns=$(ip netns list | awk '{print $1}' | grep -- '-node-0$' | grep -vxF "$before" | head -1 || true)
    [ -n "$ns" ] && exec timeout 900 ip netns exec "$ns" conntrack -E -e NEW -p tcp -o timestamp
    sleep 0.5
  done
) >"$work/conntrack.log" 2>/dev/null &
watcher=$!
trap 'kill $watcher 2>/dev/null || true' EXIT
TESTBED_UP_ARGS="${TESTBED_UP_ARGS:-} --keep" cargo test -p e2e --test nodes "$test" -- \
  --include-ignored --exact "$test" --nocapture >"$work/test.log" 2>&1 || true
grep -E "test result|load requests|failed at" "$work/test.log" || true
run=$(grep -o '/tmp/graceful-testbed-[0-9-]*' "$work/test.log" | head -1)
[ -n "$run" ] || { echo "endpoint-lag: no testbed run in $work/test.log" >&2; exit 1; }
python3 - "$work/conntrack.log" "$run/logs/audit.log" <<'EOF'
import datetime, json, re, sys
last = {}
pattern = re.compile(r"\[(\d+\.\d+)\]\s+\[NEW\] tcp .*? dport=(\d+) \[UNREPLIED\] src=(\S+) dst=\S+ sport=(\d+)")
for line in open(sys.argv[1]):
    m = pattern.match(line)
    if m and m.group(4) == "8080" and m.group(2) != "8080":
        last[m.group(3)] = float(m.group(1))
deleted = []
for line in open(sys.argv[2]):
    event = json.loads(line)
    ref = event.get("objectRef", {})
    if (event["verb"] == "delete" and ref.get("resource") == "pods"
            and event["user"]["username"].endswith(":replicaset-controller")
            and event.get("responseStatus", {}).get("code", 500) < 300):
        at = datetime.datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
        deleted.append((at.timestamp(), ref["name"]))
deleted.sort()
stopped = sorted(last.items(), key=lambda item: item[1])
for (at, name), (ip, seen) in zip(deleted, stopped):
    print(f"{name:28} {ip:15} last new connection {seen - at:+.3f} s after its deletion")
EOF
echo "logs: $work and $run (kept: remove them when done)"
