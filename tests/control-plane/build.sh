#!/usr/bin/env bash
# Builds etcd, kube-apiserver and kube-controller-manager from the versions pinned in go.mod
# into a per-version cache outside the checkout, then links bin/k8s to it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$here"

k8s=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
etcd=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/bootstrap-token-operator/control-plane-$k8s-etcd-$etcd"
stamp="$cache/.complete"

if [ ! -f "$stamp" ]; then
  mkdir -p "$cache"
  echo "building control plane $k8s (etcd $etcd) into $cache"
  # -X stamps the real release into /version; without it the binaries report v0.0.0.
  minor=$(echo "$k8s" | cut -d. -f2)
  kver="-X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  go build -trimpath -ldflags "-s -w $kver" -o "$cache/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  go build -trimpath -ldflags "-s -w $kver" -o "$cache/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager
  go build -trimpath -ldflags "-s -w" -o "$cache/etcd" go.etcd.io/etcd/server/v3
  echo "$k8s $etcd" > "$stamp"
fi

mkdir -p "$root/bin"
ln -sfn "$cache" "$root/bin/k8s"
