"""Compile the call path (services/native.py MODULES) in place with mypyc: `make native`.

Nothing is done while every module has an extension newer than its .py (`native.stale()`,
the rule pytest enforces too). Without a C compiler or Python's headers this says so and
leaves the pure-Python modules to run; a compiler that fails on our code is an error (CI must
see it). `--clean` removes the extensions, and every build starts from a clean tree so that no
module dropped from MODULES keeps running compiled.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from services.native import GROUP, MODULES, ROOT, extensions, source, stale

BUILD_DIR = ROOT / "build" / "native"


def clean() -> list[Path]:
    removed = [ext for module in MODULES for ext in extensions(module)]
    removed += ROOT.glob(f"{GROUP}__mypyc.*")
    for path in removed:
        path.unlink()
    shutil.rmtree(BUILD_DIR, ignore_errors=True)
    return removed


def missing_toolchain() -> str | None:
    """Why nothing can be compiled here, or None."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler}); apt-get install gcc"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        return f"no Python headers ({headers}); apt-get install python3-dev"
    return None


def build() -> int:
    if all(extensions(module) for module in MODULES) and not stale():
        print(f"native: {len(MODULES)} call-path modules compiled and up to date")
        return 0
    clean()
    why_not = missing_toolchain()
    if why_not is not None:
        print(f"native: {why_not}; the services run pure Python", file=sys.stderr)
        return 0
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    # setuptools in a child process: mypyc runs mypy over the modules and may fork workers.
    script = (
        "import sys\n"
        "from setuptools import setup\n"
        "from mypyc.build import mypycify\n"
        "setup(name='volte-native', packages=[], py_modules=[], script_args=["
        f"'build_ext', '--inplace', '--build-temp', {str(BUILD_DIR / 'temp')!r}],\n"
        f"      ext_modules=mypycify(sys.argv[1:], opt_level='3', group_name={GROUP!r},\n"
        f"                           target_dir={str(BUILD_DIR / 'c')!r}))\n"
    )
    paths = [str(source(module).relative_to(ROOT)) for module in MODULES]
    env = {**os.environ, "MYPY_FORCE_COLOR": "0"}
    result = subprocess.run(
        [sys.executable, "-c", script, *paths], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        print(f"native: mypyc failed (exit {result.returncode}) on {', '.join(paths)}")
        return 1
    built = sum(bool(extensions(module)) for module in MODULES)
    print(f"native: compiled {built} of {len(MODULES)} call-path modules with mypyc")
    return 0 if built == len(MODULES) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled extensions")
    args = parser.parse_args(argv)
    if args.clean:
        print(f"native: removed {len(clean())} files; the services run pure Python")
        return 0
    return build()


if __name__ == "__main__":
    sys.exit(main())
