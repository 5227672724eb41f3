#!/usr/bin/env sh
# Unpack the envtest assets (kube-apiserver, kube-controller-manager, etcd; xz-compressed) of
# ../shared/envtest into a cache directory named by their checksum and print that directory, the value
# for KUBEBUILDER_ASSETS. Prints nothing (and succeeds) when the assets are not there: the real-API-server
# tests then skip, saying so. Used by `make test` and .ci/run.
#   usage: tools/envtest-assets.sh [SOURCE_DIR]   (default: ../shared/envtest beside the checkout)
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-$repo/../shared/envtest}
[ -f "$src/kube-apiserver.xz" ] && [ -f "$src/etcd.xz" ] || exit 0
sum=$(cat "$src"/*.xz | sha256sum | cut -c1-16)
dir=${MESHD_ENVTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshd-envtest}/$sum
if [ ! -f "$dir/.complete" ]; then
	mkdir -p "$dir"
	for xz in "$src"/*.xz; do
		name=$(basename "$xz" .xz)
		xz -dc "$xz" >"$dir/$name.tmp"
		chmod +x "$dir/$name.tmp"
		mv "$dir/$name.tmp" "$dir/$name"
	done
	touch "$dir/.complete"
fi
echo "$dir"
