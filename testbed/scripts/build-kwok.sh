#!/usr/bin/env bash
# Builds KWOK from the pinned Go module in testbed/go/kwok into a cache folder outside git and
# prints that folder. Next to the binary it writes stages.yaml: KWOK's own "fast" stages (nodes
# go Ready and renew their leases; pods go Ready at once and are removed once deleted), taken
# from the same module's source, which `kwok --config` loads. A second run with the same
# go.mod/go.sum finds the stamp and returns in well under a second.
set -euo pipefail
here=$(cd "$(dirname "$0")/../go/kwok" && pwd)
cache=${GRACEFUL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/graceful-operator}
key=$(cat "$here/go.mod" "$here/go.sum" "$0" | sha256sum | cut -c1-16)
out="$cache/kwok-$key"
if [[ -f "$out/.complete" ]]; then
  echo "$out"
  exit 0
fi
mkdir -p "$out"
cd "$here"
version=$(awk '$1=="sigs.k8s.io/kwok"{print $2}' go.mod | tail -1)
start=$(date +%s)
echo ">> building kwok $version; the first build on 2 cores takes minutes" >&2
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$version" \
  -o "$out/kwok.tmp" sigs.k8s.io/kwok/cmd/kwok >&2
mv "$out/kwok.tmp" "$out/kwok"
src="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$version/kustomize/stage"
{
  for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
    pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    echo "---"
    cat "$src/$stage.yaml"
  done
} >"$out/stages.yaml.tmp"
mv "$out/stages.yaml.tmp" "$out/stages.yaml"
echo ">> kwok built in $(( $(date +%s) - start ))s into $out" >&2
touch "$out/.complete"
echo "$out"
