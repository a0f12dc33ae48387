"""Split the volte wheel's dependencies into the common set and per-image extras.

Used by the Containerfile's builder stage (containers/build-venv.sh): every image gets a
virtual environment with the common set; an extra group (e.g. `s1ap=pycrate` for enb-agent and
loadgen, `loadgen=matplotlib,rich` for loadgen's reports and plots) is installed into a folder
of its own that only the images needing it carry. A dependency named in no group is common, so
a new one lands in every image unless it is declared an extra.

    python3 split_requirements.py WHEEL --out DIR --group s1ap=pycrate \
        --group loadgen=matplotlib,rich      # writes DIR/common.txt, DIR/s1ap.txt, ...
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import zipfile
from collections.abc import Sequence
from email.parser import Parser

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(metadata: str) -> list[str]:
    """Requires-Dist entries of a METADATA text that apply without extras."""
    found = []
    for entry in Parser().parsestr(metadata).get_all("Requires-Dist") or []:
        requirement, _, marker = entry.partition(";")
        if "extra" in marker:
            continue
        found.append(entry.strip() if marker.strip() else requirement.strip())
    return found


def parse_group(text: str) -> tuple[str, set[str]]:
    """`name=project,project` -> (name, {canonical project names})."""
    name, sep, projects = text.partition("=")
    if not sep or not name.strip() or name.strip() == "common":
        raise argparse.ArgumentTypeError(f"expected NAME=project[,project...]: {text!r}")
    return name.strip(), {canonical(p) for p in projects.replace(" ", ",").split(",") if p}


def split(reqs: Sequence[str], groups: dict[str, set[str]]) -> dict[str, list[str]]:
    """Requirements by group: "common", then each group in `groups`."""
    owner = {project: group for group, projects in groups.items() for project in projects}
    found: dict[str, list[str]] = {"common": [], **{g: [] for g in groups}}
    for req in reqs:
        match = _NAME.match(req)
        if match is None:
            raise ValueError(f"cannot read a project name from {req!r}")
        found[owner.get(canonical(match.group(1)), "common")].append(req)
    return found


def wheel_metadata(path: str) -> str:
    with zipfile.ZipFile(path) as whl:
        names = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise ValueError(f"{path}: expected one .dist-info/METADATA, found {names}")
        return whl.read(names[0]).decode()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel")
    parser.add_argument("--out", required=True, help="folder for the requirements files")
    parser.add_argument("--group", type=parse_group, action="append", default=[],
                        help="NAME=project[,project...]: an extra group")
    args = parser.parse_args(argv)
    found = split(requirements(wheel_metadata(args.wheel)), dict(args.group))
    for group, reqs in found.items():
        with open(os.path.join(args.out, f"{group}.txt"), "w") as out:
            out.write("".join(f"{r}\n" for r in reqs))
        print(f"{group}: {', '.join(reqs) or '-'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
