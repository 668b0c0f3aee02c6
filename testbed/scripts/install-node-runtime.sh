#!/usr/bin/env bash
# Installs what a real node needs beside kubelet and kube-proxy, from Debian 12 packages at pinned
# versions, and prints the folder that holds them:
#   - containerd, its runc shim and ctr; runc; the CNI plugins; umoci (builds the OCI images).
#     These are unpacked (apt-get download + dpkg-deb -x) into a private cache folder outside
#     git: no service is started, nothing is written to /etc or /usr.
#   - iptables, nftables and conntrack, which kube-proxy and kubelet call by name from PATH, are
#     installed with apt-get, as any node has them. They only change rules in the node's own
#     network namespace.
# A second run with the same pins finds the stamp and returns at once.
set -euo pipefail
cache=${GRACEFUL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/graceful-operator}

# Pinned Debian 12 (bookworm) versions.
unpacked=(
  containerd=1.6.20~ds1-1+deb12u3
  runc=1.1.5+ds1-1+deb12u1
  containernetworking-plugins=1.1.1+ds1-3+b5
  umoci=0.4.7+ds-3+b7
)
installed=(
  iptables=1.8.9-2
  nftables=1.0.6-2+deb12u2
  conntrack=1:1.4.7-1+b2
)

key=$(printf '%s\n' "${unpacked[@]}" "${installed[@]}" | cat - "$0" | sha256sum | cut -c1-16)
out="$cache/node-runtime-$key"

missing_tools() {
  local tool
  for tool in iptables iptables-restore nft conntrack; do
    command -v "$tool" >/dev/null || return 0
  done
  return 1
}

if [[ -f "$out/.complete" ]] && ! missing_tools; then
  echo "$out"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt_updated=false
apt_update() {
  if ! $apt_updated; then
    echo ">> apt-get update" >&2
    apt-get update -q >&2
    apt_updated=true
  fi
}

if missing_tools; then
  apt_update
  echo ">> installing ${installed[*]}" >&2
  apt-get install -y -q --no-install-recommends "${installed[@]}" >&2
fi

if [[ ! -f "$out/.complete" ]]; then
  rm -rf "$out.tmp"
  mkdir -p "$out.tmp/debs" "$out.tmp/root"
  apt_update
  echo ">> downloading ${unpacked[*]}" >&2
  # apt's sandbox user cannot write into root's cache folder; download as root, quietly.
  (cd "$out.tmp/debs" && apt-get download -q \
    -o APT::Sandbox::User=root "${unpacked[@]}" >&2)
  for deb in "$out.tmp"/debs/*.deb; do
    dpkg-deb -x "$deb" "$out.tmp/root"
  done
  mkdir -p "$out.tmp/bin" "$out.tmp/cni"
  for tool in containerd containerd-shim-runc-v2 ctr umoci; do
    cp "$out.tmp/root/usr/bin/$tool" "$out.tmp/bin/"
  done
  cp "$out.tmp/root/usr/sbin/runc" "$out.tmp/bin/"
  cp "$out.tmp"/root/usr/lib/cni/* "$out.tmp/cni/"
  rm -rf "$out.tmp/debs" "$out.tmp/root"
  printf '%s\n' "${unpacked[@]}" "${installed[@]}" >"$out.tmp/VERSIONS"
  touch "$out.tmp/.complete"
  rm -rf "$out"
  mv "$out.tmp" "$out"
fi
echo "$out"
