#!/bin/sh
# Runs in the Containerfile's builder stage (working directory: a copy of the repository).
# Builds the volte wheel (`pip wheel .`), makes /opt/volte (a venv with volte and what the
# services need) and /opt/loadgen (what only loadgen needs, on loadgen's PYTHONPATH), trims
# them and byte-compiles everything, since the images run with a read-only root file system.
set -eu
# Extras: installed into /opt/extra/<group>, carried only by the images that need them
# (the Containerfile puts them on PYTHONPATH): S1AP for enb-agent and loadgen, loadgen's
# reports and plots for loadgen.
S1AP_DEPS=${S1AP_DEPS:-pycrate}
LOADGEN_DEPS=${LOADGEN_DEPS:-matplotlib,rich}

# Offline builds: containers/wheelhouse holds every wheel (make images fills it with
# `pip download` on the host). Empty: pip uses its index as usual.
if ls containers/wheelhouse/*.whl >/dev/null 2>&1; then
    export PIP_NO_INDEX=1 PIP_FIND_LINKS="$PWD/containers/wheelhouse"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore

python3 -m venv /tmp/pip
pip=/tmp/pip/bin/pip
$pip wheel -q --no-deps --wheel-dir /wheels .
mkdir -p /tmp/req
/tmp/pip/bin/python containers/split_requirements.py /wheels/volte-*.whl --out /tmp/req \
    --group "s1ap=$S1AP_DEPS" --group "loadgen=$LOADGEN_DEPS"

python3 -m venv --without-pip /opt/volte
$pip --python /opt/volte/bin/python install -q --no-compile -r /tmp/req/common.txt
$pip --python /opt/volte/bin/python install -q --no-compile --no-deps /wheels/volte-*.whl
for group in s1ap loadgen; do
    mkdir -p /opt/extra/$group
    if [ -s /tmp/req/$group.txt ]; then
        $pip install -q --no-compile --target /opt/extra/$group -r /tmp/req/$group.txt
    fi
done
rm -rf /opt/extra/*/bin

site=/opt/extra/s1ap
# pycrate ships compiled ASN.1 for about 90 protocols (250 MB); volte uses S1AP, and MAP
# (which pycrate_mobile imports for NAS).
find "$site/pycrate_asn1dir" -mindepth 1 -maxdepth 1 \
    ! -name __init__.py ! -name S1AP.py ! -name MAP.py -exec rm -rf {} +
# Those two are generated tables (3.7 MB of source): shipped compiled only (legacy .pyc
# beside the module), as nobody reads their source in a traceback.
(cd "$site/pycrate_asn1dir" && python3 -m compileall -q -b S1AP.py MAP.py >/dev/null \
    && rm S1AP.py MAP.py)
rm -rf "$site/pycrate_corenet" "$site/pycrate_diameter" \
    "$site/pycrate_gmr1" "$site/pycrate_gmr1_csn1" "$site/pycrate_osmo" \
    "$site/pycrate_media" "$site/pycrate_sys"
# Debug information in extension modules (uvloop alone carries about 10 MB of it).
if command -v strip >/dev/null; then
    find /opt/volte /opt/extra -name '*.so*' -type f -exec strip --strip-debug {} + || true
fi

# The XDP fast path's BPF object, compiled on the host (clang) by `make images`.
mkdir -p /opt/volte/share/volte
if [ -f containers/artifacts/relay.bpf.o ]; then
    cp containers/artifacts/relay.bpf.o /opt/volte/share/volte/
else
    echo "build-venv: no containers/artifacts/relay.bpf.o: the media image has no XDP object" >&2
fi
cp containers/media_entrypoint.py /opt/volte/bin/media_entrypoint.py

/opt/volte/bin/python -m compileall -q -j0 /opt/volte /opt/extra >/dev/null

# Smoke: each image's entry module imports with what that image carries.
check() {  # check PYTHONPATH MODULE
    (cd / && PYTHONPATH=$1 /opt/volte/bin/python -c "import $2") \
        || { echo "build-venv: import $2 failed with PYTHONPATH=$1" >&2; exit 1; }
}
check "" services.sbc.__main__
check "" services.state.__main__
check "" services.media.__main__
check /opt/extra/s1ap services.enb.__main__
check /opt/extra/s1ap:/opt/extra/loadgen loadgen.cli
du -sh /opt/volte /opt/extra/*
