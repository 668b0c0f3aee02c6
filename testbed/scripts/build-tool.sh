#!/usr/bin/env bash
# Builds a Go tool of the testbed from its own pinned module, testbed/go/<name> (the package is
# the module's `tool` line), into a cache folder outside git, and prints that folder:
#   kwok            KWOK, plus stages.yaml next to it: KWOK's own "fast" stages (nodes go Ready
#                   and renew their leases; pods go Ready at once and are removed once deleted),
#                   taken from the same module's source, which `kwok --config` loads.
#   metrics-server  the resource-metrics API that HorizontalPodAutoscalers read.
# A second run with the same go.mod/go.sum finds the stamp and returns in well under a second.
set -euo pipefail
name=${1:?usage: build-tool.sh kwok|metrics-server}
here=$(cd "$(dirname "$0")/../go/$name" && pwd)
cache=${GRACEFUL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/graceful-operator}
key=$(cat "$here/go.mod" "$here/go.sum" "$0" | sha256sum | cut -c1-16)
out="$cache/$name-$key"
if [[ -f "$out/.complete" ]]; then
  echo "$out"
  exit 0
fi
mkdir -p "$out"
cd "$here"
package=$(awk '$1=="tool"{print $2}' go.mod)
read -r version moddir < <(go list -f '{{.Module.Version}} {{.Module.Dir}}' "$package")
start=$(date +%s)
echo ">> building $name ($package $version); the first build on 2 cores takes minutes" >&2
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/$name.tmp" "$package" >&2
mv "$out/$name.tmp" "$out/$name"
if [[ $name == kwok ]]; then
  src="$moddir/kustomize/stage"
  for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
    pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    echo "---"
    cat "$src/$stage.yaml"
  done >"$out/stages.yaml.tmp"
  mv "$out/stages.yaml.tmp" "$out/stages.yaml"
fi
echo ">> $name built in $(( $(date +%s) - start ))s into $out" >&2
touch "$out/.complete"
echo "$out"
