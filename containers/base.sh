#!/usr/bin/env bash
# Build the local base images without any registry, from `debootstrap --variant=minbase`:
#
#   localhost/volte-base:bookworm     runtime: python3 (3.11), CA certificates, libusrsctp2 (SCTP
#                                     over UDP for the enb-agent and loadgen); apt, perl,
#                                     docs, locales and gconv removed (about 95 MB)
#   localhost/volte-builder:bookworm  the same tree plus python3-venv (pip), binutils (strip) and
#                                     redis-server, for the Containerfile's builder stages (the
#                                     `redis` target takes redis-server from there)
#
#   containers/base.sh            # builds both unless they exist (FORCE=1 rebuilds)
#
# Environment: MIRROR (default http://deb.debian.org/debian), SUITE (bookworm), BASE_IMAGE,
# BUILDER_IMAGE, FORCE. Needs root (debootstrap, chroot), debootstrap and podman; `make images`
# installs them. About 60 s, most of it debootstrap. Users with a registry skip this and pass
# BASE=python:3.11-slim BUILDER=python:3.11-slim to the build instead.
set -euo pipefail

SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BASE_IMAGE=${BASE_IMAGE:-localhost/volte-base:$SUITE}
BUILDER_IMAGE=${BUILDER_IMAGE:-localhost/volte-builder:$SUITE}

if [ "${FORCE:-0}" != 1 ] && podman image exists "$BASE_IMAGE" \
        && podman image exists "$BUILDER_IMAGE"; then
    echo "base: $BASE_IMAGE and $BUILDER_IMAGE exist (FORCE=1 rebuilds them)"
    exit 0
fi
for tool in debootstrap podman; do
    command -v "$tool" >/dev/null \
        || { echo "base: $tool is missing (make images installs it)" >&2; exit 1; }
done
if [ "$(id -u)" != 0 ]; then
    echo "base: debootstrap needs root" >&2
    exit 1
fi

work=$(mktemp -d /var/tmp/volte-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
start=$(date +%s)

debootstrap --variant=minbase --include=python3,python3-venv,binutils,ca-certificates,libusrsctp2,redis-server \
    "$SUITE" "$root" "$MIRROR" >/dev/null

trim() {  # what no container reads: caches, logs, docs, man pages, translations
    rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/* \
        "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/info/* \
        "$1"/usr/share/locale/* "$1"/usr/share/lintian "$1"/usr/share/common-licenses \
        "$1"/usr/share/bash-completion "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old
}

import() {  # import DIR IMAGE MESSAGE
    tar -C "$1" -c . | podman import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/usr/bin/python3"]' \
        --message "$3" - "$2" >/dev/null
    echo "base: $2 ($(podman image inspect --format '{{.Size}}' "$2" \
        | awk '{printf "%.0f MB", $1/1e6}'))"
}

# The standard library byte-compiled once, here: containers run with a read-only root file
# system and PYTHONDONTWRITEBYTECODE, so what is compiled now is what makes start-up fast.
chroot "$root" python3 -m compileall -q -j0 /usr/lib/python3.11 >/dev/null || true
trim "$root"
import "$root" "$BUILDER_IMAGE" "debootstrap --variant=minbase $SUITE + python3, venv, binutils"

# The runtime tree: no package manager, no perl, no compilers' tools. dpkg's database is kept
# (and told of each removal) so image scanners list what is really there.
chroot "$root" dpkg --purge --force-depends --force-remove-essential \
    binutils binutils-common binutils-x86-64-linux-gnu libbinutils libctf0 libctf-nobfd0 \
    libgprofng0 libjansson4 libsframe0 python3-venv python3.11-venv python3-pip-whl \
    python3-setuptools-whl apt libapt-pkg6.0 debconf perl-base e2fsprogs libext2fs2 logsave \
    gpgv debian-archive-keyring redis-server redis-tools liblzf1 libjemalloc2 \
    >/dev/null 2>&1 || true
rm -rf "$root"/usr/lib/x86_64-linux-gnu/gconv "$root"/usr/share/perl5 \
    "$root"/usr/lib/python3.11/ensurepip "$root"/usr/lib/python3.11/lib2to3 \
    "$root"/usr/lib/python3.11/pydoc_data "$root"/usr/lib/python3.11/idlelib \
    "$root"/usr/lib/python3.11/distutils "$root"/usr/lib/python3.11/test \
    "$root"/usr/share/zoneinfo/right "$root"/usr/share/zoneinfo/posix
trim "$root"
import "$root" "$BASE_IMAGE" "debootstrap --variant=minbase $SUITE + python3 (runtime)"
echo "base: built in $(( $(date +%s) - start )) s"
