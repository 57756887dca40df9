#!/usr/bin/env bash
# Builds local-kms (a KMS speaking the AWS KMS API, for the KMS signing tests) from the version
# pinned in go.mod into a per-version cache outside the checkout, then links bin/local-kms to it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$here"

version=$(go list -m -f '{{.Version}}' github.com/nsmithuk/local-kms)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/bootstrap-token-operator/local-kms-$version"
stamp="$cache/.complete"

if [ ! -f "$stamp" ]; then
  mkdir -p "$cache"
  echo "building local-kms $version into $cache"
  go build -trimpath -ldflags "-s -w -X main.Version=$version" -o "$cache/local-kms" github.com/nsmithuk/local-kms
  echo "$version" > "$stamp"
fi

mkdir -p "$root/bin"
ln -sfn "$cache" "$root/bin/local-kms"
