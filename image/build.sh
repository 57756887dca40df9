#!/usr/bin/env bash
# Builds the release image localhost/bootstrap-token-operator:dev (or $IMAGE) offline: a static
# musl release binary, built on the host, copied onto an empty base (image/Containerfile).
# The container build is skipped while the binary and the Containerfile are unchanged, so the
# image test can call this on every run; cargo's own build is incremental.
# Engine: $CONTAINER_ENGINE, else podman, else docker when its daemon answers.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-musl
IMAGE=${IMAGE:-localhost/bootstrap-token-operator:dev}
CARGO=${CARGO:-cargo}
LABEL=dev.bootstraptoken.build-sha256
# The release build lives outside the checkout, so a fresh clone (CI) rebuilds only this crate,
# not every dependency; cargo's fingerprints keep it correct across versions and clones.
export CARGO_TARGET_DIR=${IMAGE_TARGET_DIR:-$HOME/.cache/bootstrap-token-operator/image-target}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/image/containers.conf}

engine=${CONTAINER_ENGINE:-}
if [ -z "$engine" ]; then
  if command -v podman >/dev/null; then
    engine=podman
  elif docker info >/dev/null 2>&1; then
    engine=docker
  else
    echo "image/build.sh: no container engine: apt-get install podman runc" >&2
    exit 1
  fi
fi

# musl's libc is linked in, so the binary runs on an empty base; aws-lc's C code is compiled
# with musl-gcc against musl's headers.
if ! rustup target list --installed | grep -qx "$TARGET"; then
  rustup target add "$TARGET"
fi
if ! command -v musl-gcc >/dev/null; then
  echo "image/build.sh: musl-gcc missing: apt-get install musl-tools" >&2
  exit 1
fi
CARGO_PROFILE_RELEASE_STRIP=true "$CARGO" build --release --locked --target "$TARGET" \
  --bin bootstrap-token-operator
binary=$CARGO_TARGET_DIR/$TARGET/release/bootstrap-token-operator

build_sha=$(cat "$binary" image/Containerfile | sha256sum | cut -d' ' -f1)
current=$("$engine" image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$IMAGE" 2>/dev/null || true)
if [ "$current" = "$build_sha" ]; then
  echo "$IMAGE is up to date ($LABEL=$build_sha)"
  exit 0
fi

# The build context is the binary alone, not the repository with its target/ directory.
context=$CARGO_TARGET_DIR/image-context
rm -rf "$context"
mkdir -p "$context"
cp "$binary" "$context/"
"$engine" build --label "$LABEL=$build_sha" -f image/Containerfile -t "$IMAGE" "$context"
echo "built $IMAGE ($LABEL=$build_sha)"
