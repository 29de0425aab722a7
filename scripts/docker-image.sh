#!/usr/bin/env bash
# Builds the `flotilla:local` Docker image without pulling anything: a release build of
# the `flotilla` binary linked statically against glibc (`+crt-static`; the musl target
# is not installed here), copied onto an empty base (`FROM scratch`, deploy/docker/
# Dockerfile). Prints the image's size.
#
#   scripts/docker-image.sh [TAG]          # default flotilla:local
#
# Needs a running Docker engine (`dockerd`). The build goes to $CARGO_TARGET_DIR (or
# target/) under x86_64-unknown-linux-gnu/release: a target of its own, so the usual
# dynamically linked build is not rebuilt.
set -euo pipefail
TAG=${1:-flotilla:local}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=x86_64-unknown-linux-gnu
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
echo "building a static flotilla binary ($TARGET, +crt-static)" >&2
(cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --target "$TARGET" -p flotilla)
BIN="$TARGET_DIR/$TARGET/release/flotilla"
# A dynamic executable lists the libraries it loads ("libc.so.6 => ...").
if ldd "$BIN" 2>&1 | grep -q "=>"; then
    echo "docker-image.sh: $BIN is dynamically linked; a FROM scratch image cannot run it" >&2
    exit 1
fi
CONTEXT=$(mktemp -d /tmp/flotilla-image.XXXXXX)
trap 'rm -rf "$CONTEXT"' EXIT
cp "$ROOT/deploy/docker/Dockerfile" "$CONTEXT/"
cp "$BIN" "$CONTEXT/flotilla"
strip "$CONTEXT/flotilla" 2>/dev/null || true
echo "building image $TAG" >&2
DOCKER_BUILDKIT=0 docker build -q -t "$TAG" "$CONTEXT" >/dev/null
SIZE=$(docker image inspect "$TAG" --format '{{.Size}}')
echo "image $TAG: $SIZE bytes ($((SIZE / 1024 / 1024)) MiB)"
