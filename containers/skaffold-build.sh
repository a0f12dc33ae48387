#!/usr/bin/env bash
# Skaffold's custom builder for one volte image (skaffold.yaml: buildCommand).
#
#   containers/skaffold-build.sh TARGET      # TARGET: a Containerfile target (sbc, media, ...)
#
# Skaffold sets IMAGE (the full name:tag to build), PUSH_IMAGE (true to push) and
# BUILD_CONTEXT. The local bases, wheelhouse and BPF object are prepared by images.sh
# (--prepare); BASE / BUILDER pick other base images (e.g. python:3.11-slim).
set -euo pipefail
target=${1:?usage: skaffold-build.sh TARGET}
cd "${BUILD_CONTEXT:-$(dirname "$0")/..}"
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/containers/containers.conf}
eval "$(containers/images.sh --prepare | tail -n 1)"   # -> BASE=... BUILDER=...
podman build -f containers/Containerfile --target "$target" \
    --build-arg BASE="$BASE" --build-arg BUILDER="$BUILDER" -t "${IMAGE:?IMAGE is not set}" .
if [ "${PUSH_IMAGE:-false}" = true ]; then
    podman push "$IMAGE"
fi
