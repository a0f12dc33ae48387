"""Compile relay.bpf.c with the system clang, once per source/compiler, into a cache directory.

The object is built at run time (about 0.3 s) rather than by the wheel build, so the package
stays pure Python; Debian's `clang` (which pulls in linux-libc-dev, the only headers used) is
the dependency. Where clang should not be in the runtime image, build the object when the image
is built and point VOLTE_XDP_OBJECT at it:

    python -m services.media.xdp --out /usr/lib/volte/relay.bpf.o

Environment:
    VOLTE_XDP_OBJECT  a prebuilt object: used as is, clang is not needed
    VOLTE_XDP_CLANG   the compiler (default: clang, then clang-19 .. clang-14 on PATH)
    VOLTE_XDP_CACHE   cache directory (default: $XDG_CACHE_HOME/volte/xdp or ~/.cache/volte/xdp)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from services.media.xdp.maps import KEY, VALUE

SOURCE = Path(__file__).with_name("relay.bpf.c")
_MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}


class BuildError(RuntimeError):
    """The BPF object could not be built; the message says why and what to install."""


def find_clang() -> str:
    explicit = os.environ.get("VOLTE_XDP_CLANG")
    if explicit:
        path = shutil.which(explicit)
        if path is None:
            raise BuildError(f"clang not found: VOLTE_XDP_CLANG={explicit} is not executable")
        return path
    for name in ("clang", *(f"clang-{v}" for v in range(19, 13, -1))):
        path = shutil.which(name)
        if path:
            return path
    raise BuildError(
        "clang not found on PATH: `apt-get install clang` (Debian), or set "
        "VOLTE_XDP_OBJECT to a prebuilt relay.bpf.o"
    )


def _include_dirs() -> list[str]:
    """The multiarch include dir for <asm/types.h>: -target bpf does not add it by itself."""
    candidates = [f"/usr/include/{_MULTIARCH.get(platform.machine(), '')}"]
    candidates += sorted(str(p.parent.parent) for p in Path("/usr/include").glob("*/asm/types.h"))
    for d in candidates:
        if Path(d, "asm", "types.h").is_file():
            return [f"-I{d}"]
    if Path("/usr/include/asm/types.h").is_file():
        return []
    raise BuildError("kernel headers not found (<asm/types.h>): `apt-get install linux-libc-dev`")


def flags() -> list[str]:
    return [
        "-O2", "-g", "-target", "bpf", "-Wall", "-Werror",
        f"-DVOLTE_KEY_SIZE={KEY.size}",
        f"-DVOLTE_VALUE_SIZE={VALUE.size}",
        *_include_dirs(),
    ]  # fmt: skip


def cache_dir() -> Path:
    if os.environ.get("VOLTE_XDP_CACHE"):
        return Path(os.environ["VOLTE_XDP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "volte", "xdp")


def _writable(d: Path) -> Path:
    try:
        d.mkdir(parents=True, exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir(), f"volte-xdp-{os.getuid()}")
    fallback.mkdir(mode=0o700, exist_ok=True)
    return fallback


def compile_to(out: Path, clang: str | None = None) -> Path:
    clang = clang or find_clang()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".relay-", suffix=".o")
    os.close(fd)
    cmd = [clang, *flags(), "-c", str(SOURCE), "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise BuildError(f"clang failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def object_path() -> Path:
    """The relay's BPF object: VOLTE_XDP_OBJECT, or a cached build of the current source."""
    prebuilt = os.environ.get("VOLTE_XDP_OBJECT")
    if prebuilt:
        path = Path(prebuilt)
        if not path.is_file():
            raise BuildError(f"VOLTE_XDP_OBJECT={prebuilt} does not exist")
        return path
    clang = find_clang()
    try:
        version = subprocess.run(
            [clang, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"{clang} --version failed: {exc}") from exc
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(flags()).encode(), version.encode()):
        digest.update(part)
        digest.update(b"\0")
    out = _writable(cache_dir()) / f"relay-{digest.hexdigest()[:16]}.bpf.o"
    if out.is_file():
        return out
    return compile_to(out, clang)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the media relay's XDP object.")
    parser.add_argument("--out", type=Path, help="write here instead of the cache")
    args = parser.parse_args(argv)
    path = compile_to(args.out) if args.out else object_path()
    print(path)
    return 0
