#!/usr/bin/env bash
# `make images`: build the five volte images with podman, from nothing but Debian and PyPI.
#
#   containers/images.sh [TARGET...]     # default: sbc state media enb-agent loadgen
#   containers/images.sh --prepare       # steps 1-5 only (skaffold-build.sh uses it)
#
# 1. podman, runc, debootstrap, catatonit and clang from apt when missing (apt-get update
#    first);
# 2. CONTAINERS_CONF=containers/containers.conf (runc, cgroupfs, ulimits) unless set;
# 3. the local bases (containers/base.sh) unless BASE is given (e.g. python:3.11-slim);
# 4. containers/wheelhouse: every wheel the build needs, fetched by `pip download` run with
#    the builder image's Python (host network), so the build itself needs no network;
# 5. the XDP BPF object compiled with the host's clang (installed when missing);
# 6. `podman build --target T` for each image, tagged $REGISTRY/volte-T:$TAG;
# 7. a table of image sizes.
#
# With the local bases the `redis` target (Redis + Sentinel, for registry-free labs and
# `make k8s-smoke`) is built as well.
#
# Environment: PYTHON (default .venv/bin/python, else python3), REGISTRY (localhost), TAG (dev),
# BASE / BUILDER (local debootstrap bases), NO_WHEELHOUSE=1 to let pip use the index inside
# the build instead.
set -euo pipefail
cd "$(dirname "$0")/.."

PREPARE_ONLY=0
if [ "${1:-}" = --prepare ]; then PREPARE_ONLY=1; shift; fi
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(sbc state media enb-agent loadgen)
REGISTRY=${REGISTRY:-localhost}
TAG=${TAG:-dev}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
SUDO=$( [ "$(id -u)" = 0 ] || echo sudo )
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/containers/containers.conf}

need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
[ -n "${BASE:-}" ] || command -v debootstrap >/dev/null || need+=(debootstrap)
command -v clang >/dev/null || need+=(clang)
command -v catatonit >/dev/null || need+=(catatonit)  # podman kube play's pause image
if [ ${#need[@]} -gt 0 ]; then
    echo "images: installing ${need[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need[@]}" </dev/null >/dev/null
fi

start=$(date +%s)
if [ -z "${BASE:-}" ]; then
    containers/base.sh
    BASE=localhost/volte-base:bookworm
    BUILDER=${BUILDER:-localhost/volte-builder:bookworm}
    [ $# -gt 0 ] || TARGETS+=(redis)
fi
BUILDER=${BUILDER:-$BASE}

mkdir -p containers/wheelhouse containers/artifacts
if [ "${NO_WHEELHOUSE:-0}" != 1 ]; then
    # The project's dependencies and its build requirements (hatchling, grpcio-tools),
    # resolved by the builder image's own Python (environment markers differ between Python
    # patch releases: redis wants async-timeout before 3.11.3). Host network and the host's
    # CA bundle, so this works behind a TLS-inspecting proxy too. pip skips what is there.
    mapfile -t reqs < <("$PYTHON" -c 'import tomllib
d = tomllib.load(open("pyproject.toml", "rb"))
print(*d["project"]["dependencies"], *d["build-system"]["requires"], sep="\n")')
    ca=/etc/ssl/certs/ca-certificates.crt
    podman run --rm --network host --user 0 \
        -v "$PWD/containers/wheelhouse:/wheelhouse" \
        $( [ -f $ca ] && echo "-v $ca:/etc/ssl/certs/ca-certificates.crt:ro" ) \
        "$BUILDER" sh -c 'python3 -m venv /tmp/pip >/dev/null &&
            /tmp/pip/bin/pip download -q --disable-pip-version-check --only-binary=:all: \
            -d /wheelhouse "$@" && /tmp/pip/bin/pip download -q --disable-pip-version-check \
            -d /wheelhouse pip' sh "${reqs[@]}"
else
    rm -f containers/wheelhouse/*.whl
fi
if command -v clang >/dev/null; then
    "$PYTHON" -m services.media.xdp --out containers/artifacts/relay.bpf.o >/dev/null
fi

if [ "$PREPARE_ONLY" = 1 ]; then
    echo "BASE=$BASE BUILDER=$BUILDER"
    exit 0
fi

# The shared builder stage first, tagged, so each target below reuses its layers.
t0=$(date +%s)
podman build --quiet -f containers/Containerfile --target builder \
    --build-arg BASE="$BASE" --build-arg BUILDER="$BUILDER" \
    -t "localhost/volte-build-cache:$TAG" . >/dev/null
echo "images: builder stage in $(( $(date +%s) - t0 )) s"
for target in "${TARGETS[@]}"; do
    t0=$(date +%s)
    podman build --quiet -f containers/Containerfile --target "$target" \
        --build-arg BASE="$BASE" --build-arg BUILDER="$BUILDER" \
        -t "$REGISTRY/volte-$target:$TAG" . >/dev/null
    echo "images: $REGISTRY/volte-$target:$TAG built in $(( $(date +%s) - t0 )) s"
done
echo "images: done in $(( $(date +%s) - start )) s"
printf '%-36s %8s\n' IMAGE SIZE
for target in "${TARGETS[@]}"; do
    size=$(podman image inspect --format '{{.Size}}' "$REGISTRY/volte-$target:$TAG")
    awk -v n="$REGISTRY/volte-$target:$TAG" -v s="$size" 'BEGIN { printf "%-36s %5.0f MB\n", n, s / 1e6 }'
done
