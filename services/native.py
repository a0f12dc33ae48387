"""The call path's modules compiled with mypyc: which ones, whether they are, and if stale.

`make native` (native_build.py) compiles MODULES in place when a C compiler and Python's
headers are present: each gets a C extension next to its .py, which Python imports in its
place. The .py files stay the source and run wherever nothing was compiled (a machine without
a compiler, the container images). Compiling takes about a fifth off the sbc's CPU per call.

An extension older than its .py would run old code: `stale()` finds those, pytest refuses
to start on them (tests/conftest.py) and `make native` rebuilds then.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

# SIP parsing, transactions and the endpoint; the sbc's routing script; the Redis client and
# what the state operations call. Their dependencies in that order are not required: mypyc
# compiles them as one group, which calls across modules natively.
MODULES = (
    "services.sip.errors",
    "services.sip.grammar",
    "services.sip.uri",
    "services.sip.headers",
    "services.sip.message",
    "services.sip.transaction",
    "services.sip.endpoint",
    "services.sbc.flowtoken",
    "services.sbc.core",
    "services.state.keys",
    "services.state.rules",
    "services.state.resp",
    "services.state.store",
)
# The shared library mypyc builds for the group (a top-level module next to services/).
GROUP = "volte_native"
ROOT = Path(__file__).resolve().parent.parent


def source(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def extensions(module: str, root: Path = ROOT) -> list[Path]:
    """The compiled extensions of `module` lying next to its source (normally none or one)."""
    src = source(module, root)
    candidates = (src.with_name(src.stem + s) for s in importlib.machinery.EXTENSION_SUFFIXES)
    return [path for path in candidates if path.exists()]


def compiled(module: str) -> bool:
    """Whether importing `module` loads a compiled extension rather than the .py."""
    spec = importlib.util.find_spec(module)
    return spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)


def stale(root: Path = ROOT) -> list[str]:
    """Modules whose extension is older than their .py (edited or checked out since)."""
    return [
        module
        for module in MODULES
        if any(
            ext.stat().st_mtime < source(module, root).stat().st_mtime
            for ext in extensions(module, root)
        )
    ]


def describe() -> str:
    """One line for logs: how much of the call path runs compiled."""
    count = sum(compiled(module) for module in MODULES)
    if count == 0:
        return "pure Python (`make native` compiles the call path with mypyc)"
    return f"compiled with mypyc: {count} of {len(MODULES)} call-path modules"
