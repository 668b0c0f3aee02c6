#!/usr/bin/env bash
# The demo, on a fresh machine (root, Go and Rust installed; no Docker needed):
#
#   ./scripts/demo.sh            # a few minutes: the rolling update, graceful vs naive
#   ./scripts/demo.sh --full     # the post's measurement at full length (1000 clients,
#                                # rolling update of 10 and scale-down 20 -> 1), ~15 minutes
#   ./scripts/demo.sh -- --clients 500 ...   # extra flags for the experiment command
#
# It builds what it needs (Kubernetes from the pinned Go module and the node runtime from
# Debian packages, both cached; the Rust binaries in release mode), starts a local testbed (a
# real control plane and 3 real nodes with containerd, kubelet and kube-proxy, running images
# built from this repository), installs the operator with its Helm chart, creates a
# GracefulService, then runs the rollout experiment with progress on stderr, prints the table
# and leaves the table, plot (SVG) and raw numbers in results/. Everything it started is torn
# down on exit, also on Ctrl-C or failure.
set -euo pipefail
cd "$(dirname "$0")/.."

full=0
extra=()
while (($#)); do
  case "$1" in
    --full) full=1 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; extra+=("$@"); break ;;
    *) echo "unknown flag: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
[[ $(id -u) -eq 0 ]] || { echo "the testbed creates network namespaces: run as root" >&2; exit 1; }
for tool in go cargo gcc ip; do
  command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done

step "Kubernetes binaries (cached; the first build on 2 cores takes about 5 minutes)"
bin_dir=$(testbed/scripts/build-controlplane.sh)
export TESTBED_CONTROLPLANE_DIR="$bin_dir"
export PATH="$bin_dir:$PATH" # the pinned kubectl and helm

step "node runtime: containerd, runc, CNI plugins, umoci (Debian packages, cached)"
TESTBED_NODE_RUNTIME_DIR=$(testbed/scripts/install-node-runtime.sh)
export TESTBED_NODE_RUNTIME_DIR

step "Rust binaries (release): testbed, app, operator, experiment"
cargo build --release --locked -p testbed -p graceful-app -p graceful-operator -p experiment

work=$(mktemp -d /tmp/graceful-demo.XXXXXX)
testbed_pid=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n "$testbed_pid" ]] && kill -0 "$testbed_pid" 2>/dev/null; then
    step "tearing down the testbed"
    kill -TERM "$testbed_pid" 2>/dev/null || true
    wait "$testbed_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "starting the testbed"
# --watch-parent: the supervisor also tears down if this script is killed outright.
target/release/testbed up --watch-parent $$ >"$work/testbed.out" 2>"$work/testbed.log" &
testbed_pid=$!
for _ in $(seq 1 600); do
  grep -q '^KUBECONFIG=' "$work/testbed.out" 2>/dev/null && break
  kill -0 "$testbed_pid" 2>/dev/null || { cat "$work/testbed.log" >&2; echo "the testbed did not start" >&2; exit 1; }
  sleep 0.5
done
kubeconfig=$(sed -n 's/^KUBECONFIG=//p' "$work/testbed.out" | head -n1)
[[ -n "$kubeconfig" ]] || { cat "$work/testbed.log" >&2; echo "the testbed did not start in time" >&2; exit 1; }
export KUBECONFIG="$kubeconfig"
export HELM_CONFIG_HOME="$work/helm/config" HELM_CACHE_HOME="$work/helm/cache" HELM_DATA_HOME="$work/helm/data"
kubectl get nodes

step "installing the operator: helm install graceful-operator charts/graceful-operator"
"$bin_dir/helm" install graceful-operator charts/graceful-operator \
  --namespace graceful-system --create-namespace --wait --timeout 180s
kubectl -n graceful-system get pods -o wide

step "creating a GracefulService (3 replicas of the bundled app, NodePort)"
kubectl create namespace demo
kubectl apply -f - <<'YAML'
apiVersion: graceful.dev/v1alpha1
kind: GracefulService
metadata:
  name: hello
  namespace: demo
spec:
  replicas: 3
  service:
    type: NodePort
YAML
# The operator creates the Deployment within a moment; kubectl wait needs it to exist first.
for _ in $(seq 1 120); do kubectl -n demo get deployment hello >/dev/null 2>&1 && break; sleep 0.5; done
kubectl -n demo wait --for=condition=Available deployment/hello --timeout=120s
kubectl -n demo get gsvc,deployment,service,pdb,pods
node_port=$(kubectl -n demo get service hello -o jsonpath='{.spec.ports[0].nodePort}')
node_ip=$(kubectl get node node-0 -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
sleep 2 # kube-proxy syncs at most once a second
echo "GET http://$node_ip:$node_port/ -> $(curl -s --max-time 5 "http://$node_ip:$node_port/" || echo "(curl failed)")"
kubectl delete namespace demo --wait=false

if ((full)); then
  args=(--scenario all --duration 120 --clients 1000 --work-ms 1000 --replicas 10 --scale-from 20 --scale-to 1)
  step "the experiment at full length: rolling update of 10 and scale-down 20 -> 1, graceful vs naive, 1000 clients"
else
  args=(--scenario rollout --duration 40 --clients 200 --work-ms 1000 --replicas 10)
  step "the experiment: rolling update of 10 replicas (1000 ms handler, 200 clients), graceful vs naive"
fi
target/release/experiment --kubeconfig "$kubeconfig" --operator installed --out results \
  "${args[@]}" "${extra[@]}"

step "results (table, plot, raw numbers) in results/"
ls -l results/
