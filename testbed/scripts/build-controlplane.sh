#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, the node components kubelet
# and kube-proxy, and helm from the pinned Go module in testbed/go into a cache folder outside git,
# and prints that folder. It also compiles the pause container's program from the same module's
# source (build/pause/linux/pause.c, static, with gcc). A second run with
# the same go.mod/go.sum finds the stamp and returns in well under a second.
set -euo pipefail
here=$(cd "$(dirname "$0")/../go" && pwd)
cache=${GRACEFUL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/graceful-operator}
key=$(cat "$here/go.mod" "$here/go.sum" "$0" | sha256sum | cut -c1-16)
out="$cache/controlplane-$key"
if [[ -f "$out/.complete" ]]; then
  echo "$out"
  exit 0
fi
mkdir -p "$out"
k8s_version=$(awk '$1=="k8s.io/kubernetes"{print $2}' "$here/go.mod")
k8s_minor=$(echo "$k8s_version" | cut -d. -f2)
helm_version=$(awk '$1=="helm.sh/helm/v3"{print $2}' "$here/go.mod")
ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$k8s_minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X helm.sh/helm/v3/internal/version.version=$helm_version"
cd "$here"
export CGO_ENABLED=0
start=$(date +%s)
build() { # name package
  local name=$1 pkg=$2 t0
  if [[ -x "$out/$name" ]]; then return; fi
  t0=$(date +%s)
  echo ">> building $name ($pkg); the first build on 2 cores takes many minutes" >&2
  go build -trimpath -ldflags "$ldflags" -o "$out/$name.tmp" "$pkg" >&2
  mv "$out/$name.tmp" "$out/$name"
  echo ">> $name built in $(( $(date +%s) - t0 ))s" >&2
}
build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build kubelet k8s.io/kubernetes/cmd/kubelet
build kube-proxy k8s.io/kubernetes/cmd/kube-proxy
build kubectl k8s.io/kubernetes/cmd/kubectl
build helm helm.sh/helm/v3/cmd/helm
if [[ ! -x "$out/pause" ]]; then
  src="$(go env GOMODCACHE)/k8s.io/kubernetes@$k8s_version/build/pause/linux/pause.c"
  [[ -f "$src" ]] || go mod download k8s.io/kubernetes >&2
  gcc -static -O2 -DVERSION="$k8s_version" -o "$out/pause.tmp" "$src" >&2
  mv "$out/pause.tmp" "$out/pause"
  echo ">> pause built from $src" >&2
fi
echo ">> control plane built in $(( $(date +%s) - start ))s into $out" >&2
touch "$out/.complete"
echo "$out"
