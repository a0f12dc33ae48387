"""The `loadgen` command. Scenarios (call setup, failover, scale-out) arrive as subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from services import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loadgen", description="Load generator for volte: simulated UEs and eNodeBs."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0
